"""The test step: the best model on a folder of images, predictions.jsonl and pictures of what it read."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from alpr.dataset import sha256_file
from alpr.errors import AlprError, UsageError, read_json
from alpr.files import missing, write_image
from alpr.images import IMAGE_SUFFIXES, list_images
from alpr.plates import BOARD_LABELS, CHARACTER_CLASSES
from alpr.postprocess import Detection, Plate, usable
from alpr.progress import show_progress
from alpr.workdir import dataset_dir, run_dir, train_dir


@dataclass(frozen=True)
class TestOptions:
    workdir: Path
    run_id: str
    images: Path | None = None  # default: the dataset's test split
    device: str = "auto"
    checkpoint: Path | None = None  # default: the one evaluate picked, else runs/RUN/train/best.pth


def prediction_line(image: str, plates: list[Plate]) -> str:
    """One line of ``alpr predict --json``."""
    return json.dumps({"image": image, "plates": [p.to_dict() for p in plates]})


def shown(path: str) -> str:
    """A path as text any UTF-8 output takes: the bytes of a name that are not UTF-8 (which Python holds as
    lone surrogates, and printing them raises) as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def text_line(image: str, plates: list[Plate]) -> str:
    """One line of ``alpr predict`` without --json: the image and its plates' text, or why each is unread."""
    found = ", ".join(p.text or f"unread ({p.reason})" for p in plates) or "no plate"
    return f"{shown(image)}: {found}"


def error_line(image: str, error: Exception) -> str:
    """The line of ``alpr predict --json`` for an image that could not be read."""
    return json.dumps({"image": image, "error": str(error)})


def _colour(label: str) -> tuple[int, int, int]:
    if label in BOARD_LABELS:
        return (0, 200, 255)
    if label in CHARACTER_CLASSES:
        return (0, 255, 0)
    return (255, 128, 0)


def _dense(mask) -> np.ndarray | None:
    if isinstance(mask, dict):
        mask = mask_utils.decode(mask)
    return None if mask is None else mask.astype(bool)


LABEL_FONT, LABEL_SCALE, LABEL_MARGIN = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2


def _label_font(text: str, image_width: int) -> tuple[float, int, int, int, int]:
    """Scale, thickness, and the text's width, height and baseline: at LABEL_SCALE, or smaller where the
    label would be wider than the image (a long reason on a small picture), so that all of it shows."""
    scale, thickness = LABEL_SCALE, 2
    while True:
        (width, height), baseline = cv2.getTextSize(text, LABEL_FONT, scale, thickness)
        if width + 2 * LABEL_MARGIN <= image_width or scale < 0.05:
            return scale, thickness, width, height, baseline
        scale *= 0.9
        thickness = 2 if scale >= 0.45 else 1  # thin strokes keep small letters apart


def _draw_label(canvas: np.ndarray, plate: Plate) -> None:
    """The plate's text, or why it is unread, on black above its board; below it where the image has no
    room above, and moved left where it would pass the image's right edge: all of it shown, the board not
    covered."""
    image_height, image_width = canvas.shape[:2]
    text = plate.text or f"? {plate.reason}"
    colour = (0, 255, 0) if plate.readable else (0, 0, 255)
    scale, thickness, width, height, baseline = _label_font(text, image_width)
    label_width, label_height = width + 2 * LABEL_MARGIN, height + baseline + 2 * LABEL_MARGIN
    x1, y1, _, y2 = (int(round(v)) for v in plate.bbox)  # as the board's outline is drawn
    left = max(0, min(x1, image_width - label_width))
    if y1 >= label_height:
        top = y1 - label_height  # its last row just above the outline's
    elif y2 + 1 + label_height <= image_height:
        top = y2 + 1
    else:  # a board as tall as the image: over its top, as nowhere else would it show
        top = 0
    cv2.rectangle(canvas, (left, top), (left + label_width - 1, top + label_height - 1), (0, 0, 0), -1)
    cv2.putText(canvas, text, (left + LABEL_MARGIN, top + LABEL_MARGIN + height), LABEL_FONT, scale, colour,
                thickness, cv2.LINE_AA)


def draw(image: np.ndarray, detections: list[Detection], plates: list[Plate]) -> np.ndarray:
    """Masks tinted, boxes outlined, and each plate's text (or why it is unread) above its board, or below it
    at the image's top edge."""
    canvas = image.copy()
    for det in detections:
        colour = _colour(det.label)
        mask = _dense(det.mask)
        if mask is not None and mask.any():
            canvas[mask] = (canvas[mask].astype(np.float32) * 0.6 + np.float32(colour) * 0.4).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in det.bbox)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 1)
    for plate in plates:
        _draw_label(canvas, plate)
    return canvas


def default_images(workdir: Path, dataset: dict) -> tuple[Path, list[Path]]:
    """The images folder of the dataset version and its test split's images."""
    folder = dataset_dir(workdir, dataset["name"], dataset["version"])
    split = read_json(folder / "test.json")
    return folder / "images", [folder / "images" / image["file_name"] for image in split["images"]]


def best_checkpoint(workdir: Path, run_id: str) -> Path:
    """The checkpoint the evaluate step picked, where it has run, else the training's best.pth."""
    from alpr.evaluate import eval_dir

    train, report = train_dir(workdir, run_id), eval_dir(workdir, run_id) / "metrics.json"
    if not report.is_file():
        return train / "best.pth"
    named = read_json(report)
    if not isinstance(named, dict) or not named.get("best_checkpoint"):
        raise UsageError(f"{report}: names no best_checkpoint; run `alpr evaluate` again")
    picked = train / Path(named["best_checkpoint"]).name
    if not picked.is_file():  # another model would be tested in its place
        raise UsageError(f"{picked}: the checkpoint `alpr evaluate` picked ({report}) is gone, deleted by "
                         "later training; run `alpr evaluate` again")
    if named.get("best_sha256") not in (None, sha256_file(picked)):  # training went on
        raise UsageError(f"{picked}: saved again since `alpr evaluate` picked it ({report}), so perhaps other "
                         "weights; run `alpr evaluate` again")
    return picked


def write_picture(path: Path, picture: np.ndarray) -> None:
    """Writes one picture at its image's path and in its format, so no two images share a picture; as
    NAME.jpg where OpenCV writes no colour picture in that format (a GIF, a PGM, a name without suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not write_image(path, picture) and not write_image(path.with_name(f"{path.name}.jpg"), picture):
        raise AlprError(f"{path}.jpg: could not write the picture")


def _load(reader, paths: list[Path]) -> tuple[dict[Path, np.ndarray], dict[Path, AlprError]]:
    """Each image as an array, or the error that says why it cannot be read."""
    arrays, errors = {}, {}
    for path in paths:
        try:
            arrays[path] = reader.load(path)
        except AlprError as error:
            errors[path] = error
    return arrays, errors


def _read_all(reader, images: list[Path], root: Path, pictures: Path, partial: Path, progress: bool) -> list[str]:
    """Writes each image's line to ``partial`` and its picture under ``pictures``; returns the images' errors."""
    from alpr.reader import READ_BATCH

    failed = []
    with partial.open("w") as lines, show_progress("test", len(images), progress) as advance:
        for start in range(0, len(images), READ_BATCH):
            batch = images[start:start + READ_BATCH]
            arrays, errors = _load(reader, batch)
            read = dict(zip(arrays, reader.read(list(arrays.values()), masks=True) if arrays else []))
            for path in batch:  # in the images' order, each image's line or error
                if path in errors:
                    failed.append(str(errors[path]))
                    lines.write(error_line(str(path), errors[path]) + "\n")
                    continue
                dets, plates = read[path]
                lines.write(prediction_line(str(path), plates) + "\n")
                drawn = usable(dets, reader.options)  # what reading used, not the weaker ones kept for mAP
                write_picture(pictures / path.relative_to(root), draw(arrays[path], drawn, plates))
            advance(len(batch))
    return failed


def test_run(options: TestOptions, progress: bool = True) -> Path:
    """Writes runs/RUN/test/predictions.jsonl and one annotated picture per image; returns the folder. An
    image that cannot be read gets an ``{"image", "error"}`` line, the others are read, and then the step
    fails naming it. Both outputs replace an earlier test's only when this one is written whole."""
    from alpr.reader import PlateReader
    from alpr.record import check_name
    from alpr.train import alpr_meta

    check_name("run id", options.run_id)
    workdir = options.workdir.resolve()
    checkpoint = options.checkpoint or best_checkpoint(workdir, options.run_id)
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint}: --checkpoint {missing(checkpoint, folder=False)}" if options.checkpoint else
                         f"{checkpoint}: no best checkpoint; train (and evaluate) run {options.run_id} first")
    if options.images is not None:
        if not options.images.is_dir():
            raise UsageError(f"{options.images}: --images {missing(options.images, folder=True)} (a folder of images)")
        root, images = options.images, list_images(options.images)
    else:
        root, images = default_images(workdir, alpr_meta(checkpoint)["alpr"]["dataset"])
    if not images and options.images:
        raise UsageError(f"{options.images}: no images ({', '.join(IMAGE_SUFFIXES)}) to test on")
    if not images:  # a small dataset's may be: record warned of it, and the pipeline's deploy comes after this
        print(f"warning: the test split of the dataset {checkpoint} was trained on has no images; nothing to "
              "test (pass --images DIR)", file=sys.stderr)
    reader = PlateReader.from_checkpoint(checkpoint, options.device)
    out = run_dir(workdir, options.run_id) / "test"
    pictures = out / ".images.partial"
    shutil.rmtree(pictures, ignore_errors=True)
    pictures.mkdir(parents=True)
    partial = out / ".predictions.jsonl.partial"
    try:
        failed = _read_all(reader, images, root, pictures, partial, progress)
    except BaseException:  # an error or Ctrl-C: the earlier test's outputs stand, nothing half-written beside them
        shutil.rmtree(pictures, ignore_errors=True)
        partial.unlink(missing_ok=True)
        raise
    shutil.rmtree(out / "images", ignore_errors=True)  # an earlier test's pictures, maybe of other images
    pictures.replace(out / "images")
    partial.replace(out / "predictions.jsonl")
    if failed:
        raise AlprError(f"{len(failed)} of {len(images)} images could not be read ({failed[0]}); the others' "
                        f"predictions are in {out / 'predictions.jsonl'}")
    return out
