"""Training runs: checks, config, and the mmengine Runner that resumes by itself."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from alpr.errors import AlprError, UsageError
from alpr.model import TrainSettings, build_config
from alpr.plates import CLASSES
from alpr.record import check_name

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainOptions:
    workdir: Path
    dataset: str
    version: str
    run_id: str
    settings: TrainSettings = TrainSettings()
    device: str = "auto"
    load_from: Path | None = None


def dataset_dir(workdir: Path, name: str, version: str) -> Path:
    return workdir / "datasets" / name / version


def train_dir(workdir: Path, run_id: str) -> Path:
    return workdir / "runs" / run_id / "train"


def check_dataset(folder: Path) -> dict:
    """The recorded dataset's manifest, after checking its splits use alpr's classes in order."""
    if not (folder / "manifest.json").is_file():
        raise UsageError(f"{folder}: no recorded dataset here (manifest.json missing); run `alpr record` first")
    for split in ("train", "val", "test"):
        path = folder / f"{split}.json"
        if not path.is_file():
            raise UsageError(f"{path}: split file missing")
        document = json.loads(path.read_text())
        if split in ("train", "val") and not document.get("images"):
            raise UsageError(f"{path}: the {split} split has no images; record more images or change --split")
        categories = document.get("categories", [])
        names = tuple(c["name"] for c in sorted(categories, key=lambda c: c["id"]))
        if names != CLASSES:
            raise UsageError(f"{path}: categories {list(names)} do not match alpr's classes in order "
                             f"{list(CLASSES)}; re-record the dataset with this alpr version")
    return json.loads((folder / "manifest.json").read_text())


def checkpoint_meta(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise UsageError(f"{path}: checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint.get("meta", {})


def check_start_checkpoint(path: Path) -> None:
    classes = checkpoint_meta(path).get("alpr", {}).get("classes")
    if classes is not None and tuple(classes) != CLASSES:
        raise UsageError(f"{path}: trained for classes {classes}, not alpr's {list(CLASSES)}")


def select_device(device: str, amp: bool = False) -> str:
    """Applies --device before torch touches CUDA; returns the device used."""
    if device not in DEVICES:
        raise UsageError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UsageError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    chosen = "cuda" if available and device != "cpu" else "cpu"
    if amp and chosen != "cuda":
        raise UsageError("--amp needs a CUDA device")
    return chosen


def train(options: TrainOptions) -> Path:
    """Trains (or resumes) runs/RUN/train; returns the path of best.pth."""
    check_name("run id", options.run_id)
    data = dataset_dir(options.workdir.resolve(), options.dataset, options.version)
    manifest = check_dataset(data)
    device = select_device(options.device, options.settings.amp)
    work = train_dir(options.workdir.resolve(), options.run_id)
    work.mkdir(parents=True, exist_ok=True)
    resume = (work / "last_checkpoint").is_file()
    if options.load_from and not resume:
        check_start_checkpoint(options.load_from)
    from mmengine.config import Config
    from mmengine.runner import Runner

    import alpr.mmdet_ext  # noqa: F401  (registers PlateMetric and AlprRunHook)

    dataset = {"name": options.dataset, "version": options.version, "content_sha256": manifest["content_sha256"],
               "tag": manifest.get("dataset_tag")}
    config = build_config(options.settings, data, work, dataset,
                          load_from=None if resume else (str(options.load_from) if options.load_from else None),
                          resume=resume)
    config["alpr"] = {"device": device, "run_id": options.run_id}
    runner = Runner.from_cfg(Config(config))
    runner.train()
    best = work / "best.pth"
    if not best.is_file():
        raise AlprError(f"training finished without a best checkpoint in {work}; was validation ever run?")
    return best
