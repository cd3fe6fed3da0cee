"""The evaluate step: score a run's checkpoints on a split, plot, pick the best, record, upload."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from alpr.dataset import sha256_file
from alpr.errors import AlprError, UsageError
from alpr.files import write_atomic, written_whole
from alpr.metrics import (KEY_METRICS, check_metric, evaluate, layout_suffix, load_ground_truth, plate_pr_curve,
                          scalar_metrics)
from alpr.plates import CHARACTER_CLASSES, Layout
from alpr.postprocess import Detection, Plate
from alpr.progress import show_progress
from alpr.reader import READ_BATCH
from alpr.workdir import dataset_dir, run_dir, train_dir


@dataclass(frozen=True)
class EvaluateOptions:
    workdir: Path
    run_id: str
    split: str = "val"
    key_metric: str | None = None  # None: the run's own --best-metric, which picked its best.pth
    device: str = "auto"
    db_url: str | None = None
    store: str | None = None


SAVED_NAME = re.compile(r"(?:iter|epoch)_(\d+)\.pth$")  # what mmengine's CheckpointHook names a checkpoint


def saved_copies(train: Path) -> list[list[Path]]:
    """The run's saved weight sets, oldest first (by step: a copied folder loses the files' times), each as
    the files that hold it: its best_METRIC_iter_N.pth copies, then iter_N.pth (best.pth is one more). A
    best copy holds the weights alone, a third of iter_N.pth's size, which adds the optimizer's state:
    the one to upload and serve."""
    steps: dict[str, list[Path]] = {}
    for path in train.glob("*.pth"):
        if saved := SAVED_NAME.search(path.name):
            steps.setdefault(saved.group(), []).append(path)
    if not steps:
        raise UsageError(f"{train}: no checkpoints; run `alpr train` for this run first")
    return [sorted(files, key=lambda p: (p.name == name, p.name))
            for name, files in sorted(steps.items(), key=lambda item: int(SAVED_NAME.search(item[0]).group(1)))]


def checkpoints(train: Path) -> list[Path]:
    """A readable file of each saved weight set, oldest first, a best copy where there is one (where
    iter_N.pth was cut short, in a run from before checkpoints were written whole, the copy stands in).
    Unreadable files are named in a warning; an error where none can be read."""
    from alpr.train import alpr_meta

    kept = []
    for copies in saved_copies(train):
        for path in copies:
            try:
                alpr_meta(path)
            except UsageError as error:
                print(f"warning: {error}; skipped", file=sys.stderr)
                continue
            kept.append(path)
            break
    if not kept:
        raise UsageError(f"{train}: no readable checkpoint to score")
    return kept


def predict_split(reader, dataset: Path, split: str, progress: bool = True
                  ) -> tuple[object, dict[int, list[Detection]], dict[int, list[Plate]]]:
    """Runs the reader over a split; returns the ground truth, detections (RLE masks) and plates."""
    ann_file = dataset / f"{split}.json"
    if not ann_file.is_file():
        raise UsageError(f"{ann_file}: split not found")
    gt = load_ground_truth(ann_file)
    image_ids = sorted(gt.getImgIds())
    if not image_ids:  # every figure would read 0, as if the model had found nothing
        raise UsageError(f"{ann_file}: no images in the {split} split to score; record the dataset with some")
    detections: dict[int, list[Detection]] = {}
    plates: dict[int, list[Plate]] = {}
    with show_progress(f"predict {split}", len(image_ids), progress) as advance:
        for start in range(0, len(image_ids), READ_BATCH):
            ids = image_ids[start:start + READ_BATCH]
            paths = [dataset / "images" / gt.imgs[i]["file_name"] for i in ids]
            for image_id, (dets, found) in zip(ids, reader.read(paths, masks=True)):
                detections[image_id], plates[image_id] = dets, found
            advance(len(ids))
    return gt, detections, plates


def plot(folder: Path, gt, plates: dict[int, list[Plate]], metrics: dict, images: Path) -> list[Path]:
    """precision_recall.png, confusion.png, layouts.png, widths.png and, where a plate was not read exactly,
    misses.png (the images' folder holds the pictures it cuts them from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    precision, recall = plate_pr_curve(gt, plates)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.set(xlabel="recall (exact reads)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"plates: EIR={metrics['EIR']:.3f}")
    written.append(_save(fig, folder / "precision_recall.png"))

    confusion = np.asarray(metrics["confusion"])
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(confusion.shape[1]), [*CHARACTER_CLASSES, "missed"], rotation=90)
    ax.set_yticks(range(confusion.shape[0]), CHARACTER_CLASSES)
    for (row, col), value in np.ndenumerate(confusion):
        if value:
            ax.text(col, row, str(value), ha="center", va="center", fontsize=6)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"the detector's characters: accuracy={metrics['char_accuracy']:.3f}")
    written.append(_save(fig, folder / "confusion.png"))

    names = ("mAP", "dv_mAP", "EIR", "plate_precision", "plate_recall", "char_accuracy")
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, layout in enumerate(Layout):
        suffix = layout_suffix(layout)
        ax.bar(np.arange(len(names)) + k * 0.4, [metrics[n + suffix] for n in names], 0.4,
               label=f"{layout.value} ({metrics['plates' + suffix]} plates)")
    ax.set_xticks(np.arange(len(names)) + 0.2, names)
    ax.set(ylim=(0, 1.05), title="per layout")
    ax.legend()
    written.append(_save(fig, folder / "layouts.png"))

    by_width = metrics["EIR_by_width"]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(list(by_width), [b["EIR"] for b in by_width.values()])
    ax.bar_label(bars, [f"{b['plates']} plates" for b in by_width.values()], fontsize=8)
    ax.set(xlabel="plate width in the image", ylabel="EIR", ylim=(0, 1.1), title="exact reads by plate width")
    written.append(_save(fig, folder / "widths.png"))
    if metrics["misses"]:
        written.append(miss_sheet(folder / "misses.png", images, metrics["misses"]))
    else:  # an earlier evaluation's would show misses this model does not make
        (folder / "misses.png").unlink(missing_ok=True)
    return written


MISS_SHEET = 40  # plates drawn in misses.png


def miss_sheet(path: Path, images: Path, misses: list[dict]) -> Path:
    """The first MISS_SHEET plates not read exactly, each cut from its image in the window the reader reads it
    again in, and titled with its true text and what was read: the pictures behind the misread counts."""
    import matplotlib.pyplot as plt

    from alpr.reader import load_image, zoom_window

    shown = misses[:MISS_SHEET]
    columns = min(len(shown), 5)
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, miss in zip(axes.flat, shown):
        image = load_image(images / miss["image"])
        # the window the reader reads the board again in (its scale, for the model, is not wanted here)
        (x1, y1, x2, y2), _ = zoom_window(miss["bbox"], (image.shape[1], image.shape[0]), width=1)
        ax.imshow(image[y1:y2, x1:x2, ::-1])
        read = miss["read"] or miss["outcome"].split(":")[0]  # "not found", "unread"
        ax.set_title(f"{miss['true']} -> {read}\n{int(miss['bbox'][2] - miss['bbox'][0])} px wide", fontsize=8)
    fig.suptitle(f"plates not read exactly: {len(shown)} of {len(misses)}", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        with written_whole(path) as partial:
            fig.savefig(partial, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def write_json(path: Path, document: dict) -> None:
    write_atomic(path, json.dumps(document, indent=2) + "\n")


# The split that picks the run's model (the test step's, the uploaded and deployed one). On another split
# (test) only that model is scored, reported beside the pick in eval-SPLIT/: a model chosen on its test
# set would make that set's figures optimistic.
SELECTION_SPLIT = "val"


def eval_dir(workdir: Path, run_id: str, split: str = SELECTION_SPLIT) -> Path:
    return run_dir(workdir, run_id) / ("eval" if split == SELECTION_SPLIT else f"eval-{split}")


def evaluate_run(options: EvaluateOptions, progress: bool = True) -> dict:
    """Scores every checkpoint of the run on val, picks the best, writes eval/metrics.json and plots, records
    and uploads it; on test, scores the checkpoint val picked into eval-test/. Returns the report."""
    from alpr import db, storage
    from alpr.reader import PlateReader
    from alpr.record import check_name
    from alpr.train import alpr_meta
    from alpr.visualize import best_checkpoint

    check_name("run id", options.run_id)
    if options.key_metric:
        check_metric("--metric", options.key_metric)
    workdir = options.workdir.resolve()
    engine = db.connect(options.db_url or db.default_db_url(workdir))  # both fail now, not after the scoring
    if options.store:
        storage.check_url(options.store)
    train = train_dir(workdir, options.run_id)
    picks = options.split == SELECTION_SPLIT
    candidates = checkpoints(train) if picks else [best_checkpoint(workdir, options.run_id)]
    meta = alpr_meta(candidates[-1])["alpr"]
    key_metric = options.key_metric or meta.get("settings", {}).get("best_metric") or "EIR"
    dataset = dataset_dir(workdir, meta["dataset"]["name"], meta["dataset"]["version"])
    if picks:
        check_metric("--metric", key_metric, dataset / f"{options.split}.json")
    scored, gts, digests = {}, {}, {}
    for checkpoint in candidates:
        digests[checkpoint.name] = sha256_file(checkpoint)  # what was scored, by its bytes
        reader = PlateReader.from_checkpoint(checkpoint, options.device)
        gt, detections, plates = predict_split(reader, dataset, options.split, progress)
        scored[checkpoint.name] = (evaluate(gt, detections, plates), plates)
        gts[checkpoint.name] = gt
    # Ties on the key metric (EIR is often 0 early on) go to the better mAP, then the later checkpoint.
    order = list(scored)
    best = max(order, key=lambda name: (scored[name][0][key_metric], scored[name][0]["mAP"],
                                        order.index(name)))
    best_metrics, best_plates = scored[best]
    out = eval_dir(workdir, options.run_id, options.split)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*KEY_METRICS, "model-uri"):  # an earlier evaluation's, should this one fail before writing them
        (out / name).unlink(missing_ok=True)
    report = {
        "run_id": options.run_id, "split": options.split, "key_metric": key_metric,
        "dataset": meta["dataset"], "best_checkpoint": str(train / best), "best_sha256": digests[best],
        "best": best_metrics,
        "checkpoints": {name: scalar_metrics(m) for name, (m, _) in scored.items()},
        "plots": [],
    }
    write_json(out / "metrics.json", report)  # the scores stand, should plotting or the upload fail
    report["plots"] = [p.name for p in plot(out, gts[best], best_plates, best_metrics, dataset / "images")]
    write_json(out / "metrics.json", report)
    base = storage.join(options.store, "runs", options.run_id) if options.store else None
    if base and picks:  # uploaded before the run is recorded: a recorded run's model is in the store
        if sha256_file(train / best) != digests[best]:
            raise AlprError(f"{train / best}: saved again while it was scored; run `alpr evaluate` again")
        # Under its sha256's first 12 hex digits: a pick of other weights (training went on in the same
        # run) gets another URL, so a redeploy changes the InferenceService's storageUri and KServe rolls
        # it out; one URL for ever would change nothing it sees.
        report["uploaded"] = storage.join(base, digests[best][:12], "best.pth")
        storage.upload_file(train / best, report["uploaded"])
        write_json(out / "metrics.json", report)
    for key in KEY_METRICS:  # one file each: Argo output parameters read them
        write_atomic(out / key, f"{best_metrics[key]:.6f}\n")
    if base:
        storage.upload_file(out / "metrics.json", storage.join(base, "metrics.json" if picks else
                                                               f"metrics-{options.split}.json"))
    write_atomic(out / "model-uri", report.get("uploaded", "") + "\n")  # the deploy step serves it (empty: none)
    settings = meta.get("settings", {})
    db.record_run(engine, options.run_id, settings.get("model", "?"), meta["dataset"]["name"],
                  meta["dataset"]["version"], settings, str(train / best) if picks else None, options.split,
                  report["checkpoints"])
    return report
