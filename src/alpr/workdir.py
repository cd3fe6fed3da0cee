"""The shared work directory's layout (DESIGN.md): where each step finds and leaves its files."""

from pathlib import Path


def dataset_dir(workdir: Path, name: str, version: str) -> Path:
    return workdir / "datasets" / name / version


def annotations_dir(workdir: Path, name: str, version: str) -> Path:
    """The labelme files a dataset version was recorded from, as DVC tracks them."""
    return workdir / "annotations" / name / version


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "runs" / run_id


def train_dir(workdir: Path, run_id: str) -> Path:
    return run_dir(workdir, run_id) / "train"
