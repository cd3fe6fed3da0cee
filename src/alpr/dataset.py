"""Labelme folders in, COCO splits out: validation, deterministic split, conversion."""

from __future__ import annotations

import gc
import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, chain, count
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from alpr.errors import AlprError, UsageError
from alpr.files import missing
from alpr.images import InvalidImage, read_header
from alpr.machine import available_cpus
from alpr.plates import BOARD_LABELS, CHARACTER_CLASSES, CLASSES, PlateFormatError, parse_plate
from alpr.progress import show_progress

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
MAX_NAME_BYTES = 250  # filesystems take 255 bytes a name: room for its STEM.json beside it


class AnnotationError(AlprError, ValueError):
    """One labelme file is unusable; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem

    def __reduce__(self):
        # Pool workers send errors back pickled; the default would call __init__(message) and kill the pool.
        return type(self), (self.path, self.problem)


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
    # x0, y0, x1, y1, ... (COCO's flat order), at least 3 points; plain floats, since
    # pool workers pickle every polygon back and tiny numpy arrays cost more to pickle than to use
    points: tuple[float, ...]
    group_id: int | None = None
    description: str = ""


@dataclass(frozen=True)
class AnnotatedImage:
    """One valid labelme file and its image."""

    json_path: Path
    image_path: Path
    name: str  # unique file name of the image inside the dataset
    image_ref: str  # imagePath as the labelme file gives it
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
    """A file's sha256, read in chunks: a checkpoint may be hundreds of megabytes."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _image_size(json_path: Path, image_path: Path, data: bytes) -> tuple[int, int]:
    """The image's width and height as labelme showed it (and training reads it)."""
    try:
        header = read_header(data)
    except InvalidImage as error:
        raise AnnotationError(json_path, f"unreadable image {image_path.name}: {error}") from None
    return header.shown_size


def _flat_points(value: object) -> tuple[float, ...] | None:
    """[[x, y], ...] of finite numbers as a flat tuple of floats, or None.

    Checks whole lists with map/set (C loops): this runs for every point of every file.
    """
    if not isinstance(value, list) or set(map(type, value)) != {list} or set(map(len, value)) != {2}:
        return None
    flat = list(chain.from_iterable(value))
    if not set(map(type, flat)) <= {int, float}:  # not bool, not str
        return None
    try:
        points = tuple(map(float, flat))
    except OverflowError:  # an int too large for a float
        return None
    return points if all(map(math.isfinite, points)) else None


def _polygon(path: Path, index: int, shape: object) -> Polygon:
    where = f"shapes[{index}]"
    if not isinstance(shape, dict):
        raise AnnotationError(path, f"{where} is not an object")
    label = shape.get("label")
    if label not in CLASSES:
        raise AnnotationError(path, f"{where}: unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    kind = shape.get("shape_type", "polygon")
    points = _flat_points(shape.get("points"))
    if points is None:
        raise AnnotationError(path, f"{where} ({label}): points must be a list of [x, y] numbers")
    if kind == "rectangle":
        if len(points) != 4:
            raise AnnotationError(path, f"{where} ({label}): a rectangle has 2 points (two corners), this one "
                                        f"{len(points) // 2}")
        x0, y0, x1, y1 = points
        points = (x0, y0, x1, y0, x1, y1, x0, y1)
    elif kind != "polygon":
        raise AnnotationError(path, f"{where} ({label}): shape_type {kind!r} is not supported; use polygon "
                                    "or rectangle")
    if len(points) < 6:
        raise AnnotationError(path, f"{where} ({label}): polygon has {len(points) // 2} point(s), needs at least 3")
    group = shape.get("group_id")
    return Polygon(label, points, group if isinstance(group, int) else None,
                   str(shape.get("description") or ""))


def _outside(points: tuple[float, ...], width: int, height: int) -> bool:
    xs, ys = points[0::2], points[1::2]
    return min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height


def _centre(points: tuple[float, ...]) -> tuple[float, float]:
    n = len(points) // 2
    # summed in order, from -0.0 (adding to it changes nothing, not a zero's sign): numpy's mean(0) to the bit
    return sum(points[0::2], -0.0) / n, sum(points[1::2], -0.0) / n


def _inside_any(point: tuple[float, float], boards: list[np.ndarray]) -> bool:
    return any(cv2.pointPolygonTest(board, point, False) >= 0 for board in boards)


def load_labelme(json_path: Path, source: Path) -> AnnotatedImage:
    """Reads and checks one labelme file against its image; raises AnnotationError."""
    raw = json_path.read_bytes()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(json_path, f"not valid JSON: {error}") from None
    except RecursionError:  # arrays or objects nested thousands deep: no labelme file, and no reason to abort
        raise AnnotationError(json_path, "not a labelme file: JSON nested too deeply to read") from None
    required = {"shapes": list, "imagePath": str, "imageHeight": int, "imageWidth": int}
    if not isinstance(document, dict):
        raise AnnotationError(json_path, "not a labelme file: expected a JSON object")
    for key, kind in required.items():
        if not isinstance(document.get(key), kind):
            raise AnnotationError(json_path, f"not a labelme file: field {key!r} must be a {kind.__name__}")
    # labelme on Windows writes ..\images\a.jpg: its separators are ours
    try:
        image_path = (json_path.parent / document["imagePath"].replace("\\", "/")).resolve()
    except ValueError as error:  # a NUL or a lone surrogate: no file can have that name
        raise AnnotationError(json_path, f"imagePath {document['imagePath']!r}: not a file name ({error})") from None
    if not image_path.is_file():
        raise AnnotationError(json_path, f"imagePath {document['imagePath']!r}: image not found at {image_path}")
    data = image_path.read_bytes()
    width, height = _image_size(json_path, image_path, data)
    if (width, height) != (document["imageWidth"], document["imageHeight"]):
        raise AnnotationError(json_path, f"imageWidth x imageHeight is {document['imageWidth']}x"
                                         f"{document['imageHeight']} but {image_path.name} is {width}x{height}")
    polygons = tuple(_polygon(json_path, i, shape) for i, shape in enumerate(document["shapes"]))
    _check_placement(json_path, polygons, width, height)
    root = source.resolve()
    relative = image_path.relative_to(root) if image_path.is_relative_to(root) else Path(image_path.name)
    name = "__".join(relative.parts)
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a folder or file named in another encoding: no JSON file or database takes it
        raise AnnotationError(json_path, f"image {image_path} would be recorded as {name!r}, which is not UTF-8 "
                                         "text; rename it") from None
    if size > MAX_NAME_BYTES:  # a file name the filesystem refuses, halfway through writing
        raise AnnotationError(json_path, f"image {image_path} would be recorded as a name of {size} "
                                         f"bytes (its folders joined by __), over {MAX_NAME_BYTES}; shorten them")
    if name.endswith(" "):  # MySQL and MariaDB compare names padded with spaces: 'a ' would be a duplicate of 'a'
        raise AnnotationError(json_path, f"image {image_path} would be recorded as {name!r}, which ends in a "
                                         "space; MySQL and MariaDB take a name with trailing spaces for the one "
                                         "without: rename it")
    return AnnotatedImage(json_path, image_path, name, document["imagePath"], width, height,
                          sha256_bytes(data), sha256_bytes(raw), polygons)


def _check_placement(json_path: Path, polygons: tuple[Polygon, ...], width: int, height: int) -> None:
    """Every polygon inside the image, every character's centre inside a board."""
    for i, polygon in enumerate(polygons):
        if _outside(polygon.points, width, height):
            raise AnnotationError(json_path, f"shapes[{i}] ({polygon.label}): polygon lies outside the "
                                             f"{width}x{height} image")
    boards = [np.array(p.points, np.float32).reshape(-1, 2) for p in polygons if p.label in BOARD_LABELS]
    for i, polygon in enumerate(polygons):
        if polygon.label in CHARACTER_CLASSES and not _inside_any(_centre(polygon.points), boards):
            raise AnnotationError(json_path, f"shapes[{i}] ({polygon.label}): character lies outside every board")


def _try_load(json_path: Path, source: Path) -> AnnotatedImage | AnnotationError:
    try:
        return load_labelme(json_path, source)
    except AnnotationError as error:
        return error
    except OSError as error:  # a file it may not read, a folder named *.json: reported with the others
        return AnnotationError(json_path, f"cannot be read: {error.strerror} ({error.filename})")


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection for a while: building many small objects otherwise starts
    passes that walk every object and find no garbage (about a tenth of recording a folder)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_all(paths: list[Path], source: Path, progress: bool):
    """Loads files in file order, on every core when there are many, with a progress bar."""
    workers = min(available_cpus(), 8) if len(paths) >= 200 else 1
    with show_progress(f"validate {source}", len(paths), progress) as advance:
        if workers == 1:
            for path in paths:
                advance()
                yield path, _try_load(path, source)
            return
        pool = get_context("fork").Pool(workers)
        try:
            with paused_gc():  # while unpickling results; the workers, forked before, collect as usual
                for path, item in zip(paths, pool.imap(partial(_try_load, source=source), paths, chunksize=32)):
                    advance()
                    yield path, item
        finally:
            pool.terminate()


def scan(source: Path, progress: bool = False) -> tuple[list[AnnotatedImage], list[AnnotationError]]:
    """Every labelme file under source, valid ones and problems apart, in file-name order."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: {missing(source, folder=True)} (--source: the labelme folder to record)")
    valid, errors = [], []
    # Names are compared lower-cased: MySQL's default collation and some filesystems take A.jpg for a.jpg.
    # The recorded annotation of an image is STEM.json, as labelme names it: a.jpg and a.png would share one.
    names: dict[str, tuple[str, Path, Path]] = {}
    stems: dict[str, tuple[str, Path, Path]] = {}
    for json_path, item in _load_all(sorted(source.rglob("*.json")), source, progress):
        if isinstance(item, AnnotationError):
            errors.append(item)
            continue
        name, stem = item.name.lower(), Path(item.name).stem.lower()
        if name in names:
            other, annotated_by, image = names[name]
            if image == item.image_path:
                problem = f"image {item.image_path} is already annotated by {annotated_by}"
            else:  # A.JPG and a.jpg, or sub/a.png and sub__a.png (flattened)
                case = "" if other == item.name else " (names that differ only in case are one)"
                problem = (f"image {item.image_path} and {image} (annotated by {annotated_by}) would both be "
                           f"recorded as {other}{case}; rename one")
            errors.append(AnnotationError(json_path, problem))
            continue
        if stem in stems:
            other, annotated_by, _ = stems[stem]
            errors.append(AnnotationError(json_path, f"image {item.name} and {other} (annotated by {annotated_by}) "
                                                     f"differ only in their extension: both annotations would be "
                                                     f"recorded as {Path(item.name).stem}.json; rename one"))
            continue
        names[name] = stems[stem] = (item.name, json_path, item.image_path)
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
    if len(values) != 3 or not all(0 <= v <= 1 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise UsageError(f"{text!r}: expected three non-negative fractions train,val,test that sum to 1, "
                         "e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


def polygon_area(points: tuple[float, ...]) -> float:
    """Area of a flat x0, y0, x1, y1, ... polygon, as OpenCV computes it on float32 points."""
    return float(cv2.contourArea(np.array(points, np.float32).reshape(-1, 2)))


def coco_categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "plate"} for i, name in enumerate(CLASSES)]


def _plate_attributes(polygon: Polygon) -> dict:
    try:
        return {"text": parse_plate(polygon.description).text}
    except PlateFormatError:
        return {}


def _rounded(groups: list[tuple[float, ...]]) -> list[list[float]]:
    """[round(v, 2) for v in group] for every group, the same to the bit, in a fraction of the time.

    Labelme coordinates mostly have two decimals already, and such a v, the float nearest some
    k / 100, is what round(v, 2) returns; numpy finds those at once (v == rint(v * 100) / 100)
    and only the others go through round(). Rounding one value at a time was most of to_coco.
    """
    flat = np.fromiter(chain.from_iterable(groups), np.float64)
    values = flat.tolist()
    for i in np.flatnonzero(np.rint(flat * 100) / 100 != flat).tolist():
        values[i] = round(values[i], 2)
    ends = list(accumulate(map(len, groups)))
    return [values[start:end] for start, end in zip([0, *ends], ends)]


def _bounds(points: tuple[float, ...]) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1; of equal values the last wins, as in numpy, so -0.0 and 0.0 come out as before."""
    xs, ys = points[-2::-2], points[::-2]  # reversed
    return min(xs), min(ys), max(xs), max(ys)


def to_coco(items: list[tuple[int, AnnotatedImage]], first_annotation_id: int = 1) -> dict:
    """COCO instance-segmentation document; category id = class index + 1."""
    images, annotations = [], []
    polygons = [(image_id, polygon) for image_id, item in items for polygon in item.polygons]
    segmentations = _rounded([polygon.points for _, polygon in polygons])
    for image_id, item in items:
        images.append({"id": image_id, "file_name": item.name, "width": item.width, "height": item.height})
    for next_id, (image_id, polygon), segmentation in zip(count(first_annotation_id), polygons, segmentations):
        pts = polygon.points
        x0, y0, x1, y1 = _bounds(pts)
        annotation = {
            "id": next_id,
            "image_id": image_id,
            "category_id": CLASSES.index(polygon.label) + 1,
            "segmentation": [segmentation],
            "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
            "area": round(polygon_area(pts), 2),
            "iscrowd": 0,
        }
        if polygon.group_id is not None:
            annotation["group_id"] = polygon.group_id
        if polygon.label in BOARD_LABELS:
            annotation.update(_plate_attributes(polygon))
        annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": coco_categories()}


def content_sha256(items: list[AnnotatedImage], fractions: tuple[float, float, float]) -> str:
    """What a dataset version is: its files' bytes, the split and the class list."""
    canonical = {
        "classes": list(CLASSES),
        "split": list(fractions),
        "files": [[i.name, i.json_sha256, i.image_sha256] for i in items],
    }
    return sha256_bytes(json.dumps(canonical, sort_keys=True).encode())
