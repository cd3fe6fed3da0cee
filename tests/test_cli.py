"""alpr.cli: what a user sees of an error."""

import pytest

from alpr.cli import _guarded, user_message
from alpr.errors import AlprError


class _GoneImage:
    """A dataset whose one image went missing after record, as a training step's loader meets it."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise AlprError("/work/datasets/plates/1/images/000001.jpg: No such file or directory")


class _Raising(_GoneImage):
    def __init__(self, error: Exception):
        self.error = error

    def __getitem__(self, index):
        raise self.error


def test_an_error_in_a_data_loader_worker_is_shown_as_the_worker_raised_it(capsys):
    from torch.utils.data import DataLoader

    with pytest.raises(AlprError) as raised:
        next(iter(DataLoader(_GoneImage(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)  # torch's wrapping, which the user is spared
    assert user_message(raised.value) == "/work/datasets/plates/1/images/000001.jpg: No such file or directory"
    with pytest.raises(SystemExit) as exited:
        _guarded(lambda: next(iter(DataLoader(_GoneImage(), num_workers=1))))
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: /work/datasets/plates/1/images/000001.jpg: No such file or directory\n"
    assert user_message(AlprError("a: b\nc: d")) == "a: b\nc: d"  # anything else as it is
    with pytest.raises(FileNotFoundError) as raised:  # a builtin's, and a message of several lines
        next(iter(DataLoader(_Raising(FileNotFoundError("a.json: bad\nb.json: size 3: wrong")), num_workers=1)))
    assert user_message(raised.value) == "a.json: bad\nb.json: size 3: wrong"


def test_a_sigterm_ends_a_command_through_its_cleanup(tmp_path):
    """Argo and Kubernetes stop a step with SIGTERM: its partial folders and temporary files must go,
    as after an error, and it exits as a command SIGTERM ends (143)."""
    import subprocess
    import sys

    scratch = tmp_path / ".partial"
    code = ("import os, pathlib, signal, sys, time\n"
            "from alpr.cli import _guarded\n"
            "def step():\n"
            f"    scratch = pathlib.Path({str(scratch)!r}); scratch.mkdir()\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
            "    finally:\n"
            "        scratch.rmdir()\n"
            "_guarded(step)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 143 and "terminated" in result.stderr
    assert not scratch.exists()
