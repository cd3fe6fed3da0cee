"""Labelme folders in, COCO splits out: validation, deterministic split, conversion."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from alpr.errors import AlprError, UsageError
from alpr.plates import BOARD_LABELS, CHARACTER_CLASSES, CLASSES, PlateFormatError, parse_plate

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


class AnnotationError(AlprError, ValueError):
    """One labelme file is unusable; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


class InvalidAnnotations(AlprError, ValueError):
    """Some files of a folder are unusable; lists every one with its problem."""

    def __init__(self, errors: list[AnnotationError]):
        self.errors = errors
        lines = "\n".join(f"  {e.path}: {e.problem}" for e in errors)
        super().__init__(f"{len(errors)} invalid annotation file(s):\n{lines}\n"
                         "Fix them, or pass --skip-invalid to record the valid files only.")


@dataclass(frozen=True, eq=False)
class Polygon:
    label: str
    points: np.ndarray  # (N, 2) float64, N >= 3
    group_id: int | None = None
    description: str = ""


@dataclass(frozen=True)
class AnnotatedImage:
    """One valid labelme file and its image."""

    json_path: Path
    image_path: Path
    name: str  # unique file name of the image inside the dataset
    width: int
    height: int
    image_sha256: str
    json_sha256: str
    polygons: tuple[Polygon, ...] = field(repr=False)

    @property
    def plate_count(self) -> int:
        return sum(p.label in BOARD_LABELS for p in self.polygons)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def _image_size(json_path: Path, image_path: Path, data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError

    where = f"image {image_path.name}"
    try:
        with Image.open(BytesIO(data)) as image:
            size, fmt = image.size, image.format
    except UnidentifiedImageError:
        raise AnnotationError(json_path, f"unreadable {where}: not a known image format") from None
    except OSError as error:
        raise AnnotationError(json_path, f"unreadable {where}: {error}") from None
    # JPEGs cut short still have a valid header; the end-of-image marker tells.
    if fmt == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise AnnotationError(json_path, f"unreadable {where}: truncated JPEG (no end-of-image marker)")
    return size


def _polygon(path: Path, index: int, shape: object) -> Polygon:
    where = f"shapes[{index}]"
    if not isinstance(shape, dict):
        raise AnnotationError(path, f"{where} is not an object")
    label = shape.get("label")
    if label not in CLASSES:
        raise AnnotationError(path, f"{where}: unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    kind = shape.get("shape_type", "polygon")
    try:
        points = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise AnnotationError(path, f"{where} ({label}): points must be a list of [x, y] numbers")
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif kind != "polygon":
        raise AnnotationError(path, f"{where} ({label}): shape_type {kind!r} is not supported; use polygon")
    if len(points) < 3:
        raise AnnotationError(path, f"{where} ({label}): polygon has {len(points)} point(s), needs at least 3")
    group = shape.get("group_id")
    return Polygon(label, points, group if isinstance(group, int) else None,
                   str(shape.get("description") or ""))


def _inside_any(point: np.ndarray, polygons: list[np.ndarray]) -> bool:
    xy = (float(point[0]), float(point[1]))
    return any(cv2.pointPolygonTest(polygon, xy, False) >= 0 for polygon in polygons)


def load_labelme(json_path: Path, source: Path) -> AnnotatedImage:
    """Reads and checks one labelme file against its image; raises AnnotationError."""
    raw = json_path.read_bytes()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(json_path, f"not valid JSON: {error}") from None
    required = {"shapes": list, "imagePath": str, "imageHeight": int, "imageWidth": int}
    if not isinstance(document, dict):
        raise AnnotationError(json_path, "not a labelme file: expected a JSON object")
    for key, kind in required.items():
        if not isinstance(document.get(key), kind):
            raise AnnotationError(json_path, f"not a labelme file: field {key!r} must be a {kind.__name__}")
    image_path = (json_path.parent / document["imagePath"]).resolve()
    if not image_path.is_file():
        raise AnnotationError(json_path, f"imagePath {document['imagePath']!r}: image not found at {image_path}")
    data = image_path.read_bytes()
    width, height = _image_size(json_path, image_path, data)
    if (width, height) != (document["imageWidth"], document["imageHeight"]):
        raise AnnotationError(json_path, f"imageWidth x imageHeight is {document['imageWidth']}x"
                                         f"{document['imageHeight']} but {image_path.name} is {width}x{height}")
    polygons = tuple(_polygon(json_path, i, shape) for i, shape in enumerate(document["shapes"]))
    everything = np.concatenate([p.points for p in polygons]) if polygons else np.zeros((0, 2))
    inside_image = not len(everything) or (everything.min() >= 0 and everything[:, 0].max() <= width
                                           and everything[:, 1].max() <= height)
    for i, polygon in enumerate(polygons if not inside_image else ()):  # find the culprit only when one exists
        pts = polygon.points
        if pts.min() < 0 or pts[:, 0].max() > width or pts[:, 1].max() > height:
            raise AnnotationError(json_path, f"shapes[{i}] ({polygon.label}): polygon lies outside the "
                                             f"{width}x{height} image")
    boards = [p.points.astype(np.float32) for p in polygons if p.label in BOARD_LABELS]
    for i, polygon in enumerate(polygons):
        if polygon.label in CHARACTER_CLASSES and not _inside_any(polygon.points.mean(0), boards):
            raise AnnotationError(json_path, f"shapes[{i}] ({polygon.label}): character lies outside every board")
    relative = image_path.relative_to(source.resolve()) if image_path.is_relative_to(source.resolve()) else Path(
        image_path.name)
    return AnnotatedImage(json_path, image_path, "__".join(relative.parts), width, height, sha256_bytes(data),
                          sha256_bytes(raw), polygons)


def _try_load(json_path: Path, source: Path) -> AnnotatedImage | AnnotationError:
    try:
        return load_labelme(json_path, source)
    except AnnotationError as error:
        return error


def _load_all(paths: list[Path], source: Path, progress: bool):
    """Loads files in file order, on every core when there are many, with a progress bar."""
    from rich.progress import Progress

    workers = min(os.cpu_count() or 1, 8) if len(paths) >= 200 else 1
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"validate {source}", total=len(paths))
        if workers == 1:
            results = (_try_load(p, source) for p in paths)
        else:
            pool = get_context("fork").Pool(workers)
            results = pool.imap(partial(_try_load, source=source), paths, chunksize=32)
        try:
            for path, item in zip(paths, results):
                bar.advance(task)
                yield path, item
        finally:
            if workers > 1:
                pool.terminate()


def scan(source: Path, progress: bool = False) -> tuple[list[AnnotatedImage], list[AnnotationError]]:
    """Every labelme file under source, valid ones and problems apart, in file-name order."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: source folder does not exist")
    valid, errors = [], []
    seen: dict[str, Path] = {}
    for json_path, item in _load_all(sorted(source.rglob("*.json")), source, progress):
        if isinstance(item, AnnotationError):
            errors.append(item)
            continue
        if item.name in seen:
            errors.append(AnnotationError(json_path, f"image {item.image_path} is already annotated by "
                                                     f"{seen[item.name]}"))
            continue
        seen[item.name] = json_path
        valid.append(item)
    return valid, errors


def split_of(name: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """Deterministic split by a hash of the file name, so adding files never moves old ones."""
    position = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions):
        cumulative += fraction
        if position < cumulative:
            return split
    return SPLITS[-1]


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise UsageError(f"--split {text!r}: expected three non-negative fractions train,val,test that sum to 1, "
                         "e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


def polygon_area(points: np.ndarray) -> float:
    return float(cv2.contourArea(points.astype(np.float32)))


def coco_categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "plate"} for i, name in enumerate(CLASSES)]


def _plate_attributes(polygon: Polygon) -> dict:
    try:
        return {"text": parse_plate(polygon.description).text}
    except PlateFormatError:
        return {}


def to_coco(items: list[tuple[int, AnnotatedImage]], first_annotation_id: int = 1) -> dict:
    """COCO instance-segmentation document; category id = class index + 1."""
    images, annotations = [], []
    next_id = first_annotation_id
    for image_id, item in items:
        images.append({"id": image_id, "file_name": item.name, "width": item.width, "height": item.height})
        for polygon in item.polygons:
            pts = polygon.points
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            annotation = {
                "id": next_id,
                "image_id": image_id,
                "category_id": CLASSES.index(polygon.label) + 1,
                "segmentation": [[round(v, 2) for v in pts.ravel().tolist()]],
                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                "area": round(polygon_area(pts), 2),
                "iscrowd": 0,
            }
            if polygon.group_id is not None:
                annotation["group_id"] = polygon.group_id
            if polygon.label in BOARD_LABELS:
                annotation.update(_plate_attributes(polygon))
            annotations.append(annotation)
            next_id += 1
    return {"images": images, "annotations": annotations, "categories": coco_categories()}


def content_sha256(items: list[AnnotatedImage], fractions: tuple[float, float, float]) -> str:
    """What a dataset version is: its files' bytes, the split and the class list."""
    canonical = {
        "classes": list(CLASSES),
        "split": list(fractions),
        "files": [[i.name, i.json_sha256, i.image_sha256] for i in items],
    }
    return sha256_bytes(json.dumps(canonical, sort_keys=True).encode())
