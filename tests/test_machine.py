"""What a process may use of the machine, read from a container's cgroup files."""

from __future__ import annotations


def test_torch_threads_fit_the_containers_cpu_quota_not_the_nodes_cores(tmp_path, monkeypatch):
    """A pod limited to 2 cores of a 96-core node: torch would start a thread a core of the node."""
    import torch

    from alpr import machine

    monkeypatch.setattr(machine, "CGROUP", tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: one whole core
        assert machine.available_cpus() == 1 and machine.fit_torch_threads() == 1 == torch.get_num_threads()
        torch.set_num_threads(1)
        (tmp_path / "cpu.max").write_text("max 100000\n")
        assert machine.fit_torch_threads() == 1  # fewer than the cores: left as set
    finally:
        torch.set_num_threads(before)
