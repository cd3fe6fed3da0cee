"""Training runs: checks, config, and the mmengine Runner that resumes by itself."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from alpr.errors import AlprError, UsageError, read_json
from alpr.files import missing, written_whole
from alpr.glyphs import GLYPH_NET, train_glyphs
from alpr.machine import fit_torch_threads
from alpr.model import TrainSettings, build_config, warmup_end, with_val_interval
from alpr.plates import CLASSES, check_classes
from alpr.record import check_name
from alpr.workdir import dataset_dir, train_dir

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


def check_dataset(folder: Path) -> dict:
    """The recorded dataset's manifest, after checking its splits use alpr's classes in order."""
    if not (folder / "manifest.json").is_file():
        recorded = sorted(p.parent.name for p in folder.parent.glob("*/manifest.json"))
        raise UsageError(f"{folder}: no recorded dataset here (manifest.json missing); " +
                         (f"versions recorded: {', '.join(recorded)}" if recorded else "run `alpr record` first"))
    for split in ("train", "val", "test"):
        path = folder / f"{split}.json"
        if not path.is_file():
            raise UsageError(f"{path}: split file missing")
        document = read_json(path)
        if not isinstance(document, dict):
            raise UsageError(f"{path}: not a COCO file (a JSON object of images, annotations and categories)")
        if split in ("train", "val") and not document.get("images"):
            raise UsageError(f"{path}: the {split} split has no images; record more images or change --split")
        if split in ("train", "val") and not document.get("annotations"):  # nothing to learn or score
            raise UsageError(f"{path}: the {split} split has no plates (no annotations); synthesize images "
                             "with plates (--empty-fraction below 1) and record them")
        check_annotations(path, document.get("annotations", []))
        try:
            # in this order too: mmdet numbers its labels in the file's order of categories, not by id
            found = [(c["id"], c["name"]) for c in document.get("categories", [])]
        except (KeyError, TypeError):
            raise UsageError(f"{path}: each category needs an id (a whole number) and a name") from None
        if found != list(enumerate(CLASSES, start=1)):  # the metrics take category id N for CLASSES[N - 1]
            raise UsageError(f"{path}: categories {found} are not alpr's classes with ids 1 to {len(CLASSES)} "
                             f"in order {list(CLASSES)}; re-record the dataset with this alpr version")
    manifest = read_json(folder / "manifest.json")
    if not isinstance(manifest, dict) or not {"counts", "content_sha256"} <= manifest.keys():
        raise UsageError(f"{folder / 'manifest.json'}: not a manifest `alpr record` wrote (no counts or "
                         "content_sha256); re-record the dataset")
    return manifest


def check_annotations(path: Path, annotations) -> None:
    """Each annotation an object of a whole-number image_id and a category_id of alpr's classes: else
    a KeyError deep in training, or category 0 read as the last class."""
    if not isinstance(annotations, list):
        raise UsageError(f"{path}: annotations is a JSON {type(annotations).__name__}, not a list")
    for index, annotation in enumerate(annotations):
        ids = (annotation.get("image_id"), annotation.get("category_id")) if isinstance(annotation, dict) else None
        if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) \
                or not 1 <= ids[1] <= len(CLASSES):
            raise UsageError(f"{path}: annotation {index} is not an object of a whole-number image_id and a "
                             f"category_id from 1 to {len(CLASSES)}: {json.dumps(annotation)[:200]}")


def checkpoint_meta(path: Path) -> dict:
    """A checkpoint's meta, or an error naming the file if it is missing or not a checkpoint at all."""
    import torch

    if not path.is_file():
        raise UsageError(f"{path}: checkpoint {missing(path, folder=False)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch says "invalid load key" or "failed finding central directory"
        raise UsageError(f"{path}: not a readable checkpoint, truncated or not one at all "
                         f"({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict):
        raise UsageError(f"{path}: not a checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint.get("meta", {})


def alpr_meta(path: Path) -> dict:
    """The meta of a checkpoint alpr trained: its training config (``cfg``), and its classes, settings and
    dataset (``alpr``); an error naming the file for any other checkpoint."""
    meta = checkpoint_meta(path)
    if "cfg" not in meta or "alpr" not in meta:
        raise UsageError(f"{path}: not an alpr checkpoint (no training config or class list in its meta)")
    return meta


def trained_images(folder: Path) -> int:
    """The images of a recorded dataset's train split that training reads: those with annotations
    (mmdet's filter_empty_gt leaves out the rest)."""
    return len({annotation["image_id"] for annotation in read_json(folder / "train.json")["annotations"]})


def check_start_checkpoint(path: Path, settings: TrainSettings) -> None:
    """A --load-from checkpoint: alpr's classes, and, if alpr trained it, the network this run trains (a
    foreign checkpoint, such as COCO weights, loads what fits)."""
    meta = checkpoint_meta(path)
    check_classes(path, meta.get("alpr", {}).get("classes", CLASSES))
    if "settings" not in meta.get("alpr", {}):
        return
    before, now = network(as_trained(meta)), network(settings.to_dict())
    if before != now:  # mmengine would skip each mismatched tensor with a warning and train from scratch
        raise UsageError(f"{path}: its weights are of {before}, this run trains {now}: none would fit; train "
                         "that network (--model, --widen-factor), or without --load-from")


def check_weights_fit(path: Path, settings: TrainSettings, config: dict) -> None:
    """A --load-from checkpoint alpr did not train holds weights of this run's network, some at least:
    mmengine loads those that fit, and where none does it would train from scratch, warning only in its log."""
    import torch
    from mmdet.apis import init_detector
    from mmengine.config import Config

    import alpr.mmdet_ext  # noqa: F401  (registers alpr's modules)

    saved = torch.load(path, map_location="cpu", weights_only=False)
    weights = saved.get("state_dict", saved) if isinstance(saved, dict) else {}
    with contextlib.redirect_stdout(sys.stderr):
        wanted = init_detector(Config(config), device="cpu").state_dict()
    fitting = [key for key, value in weights.items() if isinstance(value, torch.Tensor)
               and getattr(wanted.get(key.removeprefix("module.")), "shape", None) == value.shape]
    if not fitting:
        raise UsageError(f"{path}: none of its {len(weights)} weights fit {network(settings.to_dict())} (names "
                         "and shapes): it would train from scratch; train without --load-from, or load weights "
                         "of this network")
    print(f"--load-from {path}: {len(fitting)} of this network's {len(wanted)} weights", flush=True)


def network(settings: dict) -> str:
    """The network a run's resolved settings build, as far as it shapes every weight: smoke and rtmdet-ins-tiny
    are one network at two widths; Swin's window and MLP ratio shape only some of its weights (the rest load,
    as when fine-tuning at another window)."""
    if settings.get("model") == "mask-rcnn-swin-t":
        return "a Swin-T Mask R-CNN"
    return f"an RTMDet-Ins at widen factor {settings.get('widen_factor')}"


# What a resumed run may change: how long it trains (in the unit it started with: its schedule is restored
# as saved), how often it validates, and how it loads and logs.
RESUMABLE_CHANGES = {"epochs", "iters", "minutes", "val_interval", "num_workers", "log_interval"}


SAVED_CHECKPOINT = re.compile(r"(?:iter|epoch)_(\d+)\.pth")


def resume_point(work: Path) -> tuple[Path, dict] | None:
    """The checkpoint a run resumes from and its meta; None for a fresh start (no checkpoint yet).

    It is the one mmengine names in ``last_checkpoint``, by absolute path: where that went stale (the
    workdir moved: another mount point, a copied volume), the file of that name in this run folder.
    Where it cannot be read, or the name is empty, it is the newest readable iter_N.pth or epoch_N.pth
    here: checkpoints are written whole (mmdet_ext.WholeFileBackend), but a run from before that, or a
    copied folder, may hold one cut short. ``last_checkpoint`` is rewritten to name it before mmengine
    reads it."""
    marker = work / "last_checkpoint"
    named = marker.read_text().strip() if marker.is_file() else ""
    saved = sorted((p for p in work.glob("*.pth") if SAVED_CHECKPOINT.fullmatch(p.name)),
                   key=lambda p: int(SAVED_CHECKPOINT.fullmatch(p.name)[1]), reverse=True)
    if named:
        last = Path(named)
        if last.parent != work and (work / last.name).is_file():
            last = work / last.name
        saved = [last, *(p for p in saved if p != last)]
    elif not saved:
        return None
    for path in saved:
        try:
            meta = checkpoint_meta(path)
        except UsageError as error:
            print(f"warning: {error}; resuming from the checkpoint before it", file=sys.stderr)
            continue
        if named != str(path):
            marker.write_text(str(path))
        return path, meta
    raise UsageError(f"{work}: no readable checkpoint to resume from; train with another --run-id to start over")


def as_trained(meta: dict) -> dict:
    """A checkpoint's settings with the values they resolved to and the schedule they followed: epochs,
    iterations or minutes. Older checkpoints kept None for "the model's own"; their learning rate, a
    default that has changed, is read from their training config."""
    stored = dict(meta.get("alpr", {}).get("settings", {}))
    if "lr" in stored and stored["lr"] is None and "cfg" in meta:
        from mmengine.config import Config

        stored["lr"] = Config.fromstring(meta["cfg"], ".py").optim_wrapper.optimizer.lr
    known = {f.name for f in fields(TrainSettings)}
    try:
        settings = TrainSettings(**{k: v for k, v in stored.items() if k in known})
    except (TypeError, UsageError):
        return stored  # compared as stored
    return {**stored, **settings.to_dict(), "schedule": settings.schedule}


def check_resumable(work: Path, meta: dict, settings: TrainSettings, dataset: dict) -> None:
    """A run resumes (from a checkpoint of this ``meta``) with the model, data and optimization it was
    started with, or not at all: mmengine would load mismatched weights leniently and train on silently."""
    trained_on = meta.get("alpr", {}).get("dataset", {})
    named = ("name", "version", "content_sha256") if "content_sha256" in trained_on else ("name", "version")
    before = {**as_trained(meta), "dataset": {k: trained_on.get(k) for k in named}}
    now = {**settings.to_dict(), "schedule": settings.schedule, "dataset": {k: dataset[k] for k in named}}
    changed = [f"{key} {before[key]!r} -> {now[key]!r}" for key in now
               if key not in RESUMABLE_CHANGES and key in before and before[key] != now[key]]
    if changed:
        raise UsageError(f"{work}: this run was started with other settings ({'; '.join(changed)}); resume it "
                         f"with its own, or start a new run with another --run-id")


def note_new_length(meta: dict, settings: TrainSettings) -> None:
    """A resumed run may train longer or shorter than it was started to (RESUMABLE_CHANGES): said, as a flag
    left out takes its default, not the run's own."""
    unit = settings.schedule
    before = as_trained(meta).get(unit)
    if before is not None and before != getattr(settings, unit):
        print(f"note: this run was started to train {before} {unit}; resumed, it trains {getattr(settings, unit)} "
              f"(--{unit})", flush=True)


def restore_glyph_net(kept: dict, path: Path) -> None:
    import torch

    with written_whole(path) as partial:
        torch.save(kept, partial)


def select_device(device: str) -> str:
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
    return chosen


def train(options: TrainOptions) -> Path:
    """Trains (or resumes) runs/RUN/train; returns the path of best.pth."""
    from alpr.metrics import check_metric

    check_name("run id", options.run_id)
    data = dataset_dir(options.workdir.resolve(), options.dataset, options.version)
    manifest = check_dataset(data)
    check_metric("--best-metric", options.settings.best_metric, data / "val.json")
    images = trained_images(data)
    settings = with_val_interval(options.settings, images)
    device = select_device(options.device)
    fit_torch_threads()  # before the glyph classifier and the detector train
    from alpr.mmdet_ext import mixed_precision_pays

    amp = settings.amp and mixed_precision_pays(device, "training")
    work = train_dir(options.workdir.resolve(), options.run_id)
    dataset = {"name": options.dataset, "version": options.version, "content_sha256": manifest["content_sha256"],
               "tag": manifest.get("dataset_tag")}
    resumed = resume_point(work)
    resume = resumed is not None
    if resume:
        check_resumable(work, resumed[1], settings, dataset)
        note_new_length(resumed[1], settings)
        if options.load_from:  # its weights started the run; the run's own now go on
            print(f"note: --load-from {options.load_from} is not loaded: run {options.run_id} resumes from "
                  f"{resumed[0].name} (a new --run-id starts from it)", flush=True)
    elif options.load_from:
        check_start_checkpoint(options.load_from, settings)
        check_weights_fit(options.load_from, settings, build_config(settings, data, work, dataset))
    warmup = warmup_end(settings, images)
    if not resume and not settings.minutes and warmup < settings.warmup_iters:
        print(f"warm-up: {f'the first {warmup} iterations' if warmup else 'none'} (--warmup-iters "
              f"{settings.warmup_iters}: at most a tenth of the run or 2, none under 2)", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if not resume:  # one from a start cut short before its first checkpoint may be of other settings or data
        (work / GLYPH_NET).unlink(missing_ok=True)
    elif not (work / GLYPH_NET).is_file() and "glyph_net" in resumed[1].get("alpr", {}):
        restore_glyph_net(resumed[1]["alpr"]["glyph_net"], work / GLYPH_NET)  # the one its weights read with
    if settings.glyph_epochs and not (work / GLYPH_NET).is_file():  # a resumed run has it
        train_glyphs(data, work / GLYPH_NET, settings.glyph_epochs, settings.seed, device)
    from mmengine.config import Config
    from mmengine.runner import Runner

    import alpr.mmdet_ext  # noqa: F401  (registers PlateMetric and AlprRunHook)

    config = build_config(settings, data, work, dataset,
                          load_from=None if resume else (str(options.load_from) if options.load_from else None),
                          resumed_at=resumed[1].get("iter", 0) if resume else None, device=device, amp=amp,
                          spent_seconds=time.monotonic() - started, train_images=images)
    config["alpr"] = {"device": device, "run_id": options.run_id}
    runner = Runner.from_cfg(Config(config))
    runner.train()
    best = work / "best.pth"
    if not best.is_file():
        raise AlprError(f"training finished without a best checkpoint in {work}; was validation ever run?")
    return best
