"""Synthetic plates drawn on background photos, written as labelme annotations.

Each plate is rendered flat on a small canvas, where every character's polygon
is the convex hull of the ink actually drawn; the canvas is then warped into
the photo with one homography, which carries all polygons along, so they stay
exact through rotation and perspective.
"""

from __future__ import annotations

import json
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from alpr.backgrounds import Backgrounds
from alpr.errors import AlprError, UsageError
from alpr.files import held_alone, write_atomic
from alpr.machine import available_cpus, memory_limit
from alpr.plates import DIGITS, VEHICLE_TYPES, Layout, PlateText, char_label
from alpr.progress import show_progress

LABELME_VERSION = "5.5.0"
MIN_SIDE = 8  # px: smaller images break the background noise and blur
MARK = ".alpr-synth"  # in each folder synth writes: it may write there again, and nowhere else that holds files
# a worker's peak: about 100 MB with the built-in backgrounds, more with up to 8 decoded photos of yours
WORKER_MEMORY = 400 * 2**20
# Canvas sizes keep the real plates' proportions (520x110 mm one-row, 335x170 mm two-row).
CANVAS = {Layout.ONE_ROW: (416, 88), Layout.TWO_ROW: (268, 136)}
# (board, text) colours in BGR: white, yellow (commercial), green (old), blue (electric), black.
PALETTES = (
    ((240, 240, 240), (20, 20, 20)),
    ((40, 200, 245), (20, 20, 20)),
    ((60, 120, 40), (235, 235, 235)),
    ((170, 110, 40), (245, 245, 245)),
    ((25, 25, 25), (235, 235, 235)),
)
HERSHEY_FACES = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)
PLATE_CHARACTERS = DIGITS + VEHICLE_TYPES
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")


@dataclass(frozen=True)
class SynthOptions:
    width: int = 1280
    height: int = 720
    max_plates: int = 4
    empty_fraction: float = 0.1

    def __post_init__(self):
        if min(self.width, self.height) < MIN_SIDE:
            raise UsageError(f"--width {self.width} --height {self.height}: an image is at least {MIN_SIDE} px a side")
        if self.max_plates < 1:
            raise UsageError(f"--max-plates {self.max_plates}: at least 1 (--empty-fraction 1 draws none)")
        if not 0 <= self.empty_fraction <= 1:
            raise UsageError(f"--empty-fraction {self.empty_fraction}: a share, from 0 to 1")


@dataclass(frozen=True)
class Shape:
    label: str
    points: np.ndarray  # (N, 2) float image coordinates
    group_id: int | None = None
    description: str = ""


# ---------------------------------------------------------------- fonts


def system_truetype_fonts() -> tuple[str, ...]:
    """TrueType fonts on this system, plus the DejaVu fonts matplotlib ships (always present)."""
    found: set[Path] = set()
    for folder in FONT_DIRS:
        found.update(Path(folder).expanduser().rglob("*.ttf"))
    try:
        import matplotlib

        found.update((Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf").glob("DejaVu*.ttf"))
    except ImportError:
        pass
    unique = {p.name: p for p in sorted(found, reverse=True)}  # one copy of each file name
    return tuple(str(unique[name]) for name in sorted(unique))


def _draws_plate_characters(font: str) -> bool:
    """Every plate character is in the font's character map and draws ink: a character it lacks would
    draw as its missing-glyph box, ink all the same, and be labelled as the character."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(font.removeprefix("ttf:"), lazy=True) as face:
            mapped = face.getBestCmap() or {}
        return all(ord(char) in mapped and glyph_ink(font, char).size > 0 for char in PLATE_CHARACTERS)
    except (OSError, ValueError, TTLibError):
        return False


@lru_cache(maxsize=1)
def font_ids() -> tuple[str, ...]:
    """Hershey faces and every TrueType font that really draws all plate characters."""
    truetype = (f"ttf:{path}" for path in system_truetype_fonts())
    return tuple(f"hershey:{face}" for face in HERSHEY_FACES) + tuple(filter(_draws_plate_characters, truetype))


@lru_cache(maxsize=4096)
def glyph_ink(font: str, char: str) -> np.ndarray:
    """The character's ink as a tight uint8 mask about 96 px tall (cached per font)."""
    size = 96
    canvas = np.zeros((size * 2, size * 2), np.uint8)
    kind, _, name = font.partition(":")
    if kind == "hershey":
        face = int(name)
        scale = cv2.getFontScaleFromHeight(face, size, 3)
        cv2.putText(canvas, char, (size // 3, int(size * 1.5)), face, scale, 255, 6, cv2.LINE_AA)
    else:
        from PIL import Image, ImageDraw, ImageFont

        image = Image.fromarray(canvas)
        ImageDraw.Draw(image).text((size // 3, size // 3), char, fill=255, font=ImageFont.truetype(name, size))
        canvas = np.asarray(image)
    ys, xs = np.nonzero(canvas > 40)
    if len(xs) == 0:
        raise ValueError(f"font {font} draws nothing for {char!r}")
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


# ---------------------------------------------------------------- one plate


@dataclass(frozen=True)
class FlatPlate:
    image: np.ndarray  # canvas, BGR
    chars: list[tuple[str, np.ndarray]]  # (label, hull polygon) in canvas coordinates
    sub_region: np.ndarray  # 4x2 rectangle around the sub text
    main_region: np.ndarray  # 4x2 rectangle around the serial


def _draw_text(canvas: np.ndarray, text: str, box: tuple[float, float, float, float], font: str,
               color: tuple[int, int, int], rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Draws text into box=(x0, y0, x1, y1), one equal cell per character; returns the hull of each glyph."""
    x0, y0, x1, y1 = box
    cell_w, height = (x1 - x0) / len(text), int(y1 - y0)
    stretch = rng.uniform(0.85, 1.15)
    polygons = []
    for i, char in enumerate(text):
        ink = glyph_ink(font, char)
        width = int(min(cell_w * 0.92, ink.shape[1] / ink.shape[0] * height * stretch))
        width = max(width, 2)
        mask = cv2.resize(ink, (width, height), interpolation=cv2.INTER_AREA)
        left = int(x0 + i * cell_w + (cell_w - width) / 2)
        top = int(y0)
        region = canvas[top:top + height, left:left + width]
        alpha = (mask[:region.shape[0], :region.shape[1]].astype(np.float32) / 255)[..., None]
        region[:] = (region * (1 - alpha) + np.float32(color) * alpha).astype(np.uint8)
        # COCO's and labelme's pixel x spans [x, x+1]: the hull of the ink pixels' corners, not of their indices
        points = cv2.findNonZero((mask > 100).astype(np.uint8)).reshape(-1, 1, 2)
        corners = (points + np.int32([[0, 0], [1, 0], [0, 1], [1, 1]])[None]).reshape(-1, 1, 2)
        hull = cv2.convexHull(corners).reshape(-1, 2).astype(np.float32)
        hull = cv2.approxPolyDP(hull, 0.8, True).reshape(-1, 2) if len(hull) > 8 else hull
        polygons.append((char_label(char), hull + np.float32([left, top])))
    return polygons


def _around(polygons: list[tuple[str, np.ndarray]], pad: float, limit: tuple[int, int]) -> np.ndarray:
    points = np.concatenate([p for _, p in polygons])
    (x0, y0), (x1, y1) = points.min(0) - pad, points.max(0) + pad
    x0, y0 = max(x0, 0.0), max(y0, 0.0)
    x1, y1 = min(x1, float(limit[0])), min(y1, float(limit[1]))
    return np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def render_flat_plate(text: PlateText, layout: Layout, font: str, rng: np.random.Generator) -> FlatPlate:
    width, height = CANVAS[layout]
    board, ink = PALETTES[rng.integers(len(PALETTES))]
    board = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in board)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = board
    border = int(rng.integers(1, 4))
    cv2.rectangle(canvas, (border, border), (width - 1 - border, height - 1 - border), ink, border)
    if layout is Layout.ONE_ROW:
        top, bottom = height * rng.uniform(0.12, 0.2), height * rng.uniform(0.8, 0.88)
        split = width * 0.43
        sub = _draw_text(canvas, text.sub_text, (width * 0.05, top, split, bottom), font, ink, rng)
        main = _draw_text(canvas, text.serial, (split + width * 0.03, top, width * 0.95, bottom), font, ink, rng)
    else:
        sub = _draw_text(canvas, text.sub_text, (width * 0.25, height * 0.08, width * 0.75, height * 0.4),
                         font, ink, rng)
        main = _draw_text(canvas, text.serial, (width * 0.06, height * 0.46, width * 0.94, height * 0.92),
                          font, ink, rng)
    pad = 2.0
    return FlatPlate(canvas, sub + main, _around(sub, pad, (width, height)), _around(main, pad, (width, height)))


def random_plate_text(rng: np.random.Generator) -> PlateText:
    digits = rng.choice(DIGITS, 6)
    return PlateText("".join(digits[:2]), str(rng.choice(VEHICLE_TYPES)), "".join(digits[2:]))


def _target_quad(rng: np.random.Generator, canvas_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Where the canvas corners land: a scaled, rotated, perspective-jittered quad at the origin."""
    cw, ch = canvas_size
    iw, ih = image_size
    width = rng.uniform(0.06, 0.3) * iw
    height = width * ch / cw * rng.uniform(0.85, 1.2)
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]]) - [width / 2, height / 2]
    corners += rng.uniform(-0.06, 0.06, (4, 2)).astype(np.float32) * [width, height]
    angle = np.deg2rad(rng.uniform(-8, 8))
    rotation = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    quad = corners @ rotation.T
    # sized by the picture's width, shrunk to fit its height (2 px clear a side): in a wide, low one (2000x60)
    # no plate fitted at all
    return quad * min(1.0, (ih - 5) / np.ptp(quad[:, 1]), (iw - 5) / np.ptp(quad[:, 0]))


def _overlaps(box: np.ndarray, taken: list[np.ndarray], margin: float) -> bool:
    return any(not (box[2] + margin < t[0] or t[2] + margin < box[0] or box[3] + margin < t[1]
                    or t[3] + margin < box[1]) for t in taken)


# pixel corners (labelme's, COCO's: pixel x spans [x, x+1]) to pixel centres (OpenCV's warps: pixel x is at x)
TO_CENTRES = np.float64([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
TO_CORNERS = np.linalg.inv(TO_CENTRES)


def paste_plate(image: np.ndarray, flat: FlatPlate, quad: np.ndarray) -> np.ndarray:
    """Warps the flat plate onto image where quad says; returns the homography canvas -> image, in the
    annotations' pixel-corner coordinates (the canvas spans [0, w] x [0, h] and lands on quad exactly)."""
    h, w = flat.image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    homography = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    local = cv2.getPerspectiveTransform(src, (quad - [x0, y0]).astype(np.float32))
    local = TO_CENTRES @ local @ TO_CORNERS  # else the ink lands half a pixel (times 1 - scale) off its outline
    size = (int(x1 - x0), int(y1 - y0))
    # the plate's edge pixels replicated outwards: black there, times alpha again, drew a dark ring round it
    warped = cv2.warpPerspective(flat.image, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpPerspective(np.full((h, w), 255, np.uint8), local, size, flags=cv2.INTER_LINEAR)
    region = image[y0:y1, x0:x1]
    a = (alpha.astype(np.float32) / 255)[..., None]
    region[:] = (region * (1 - a) + warped * a).astype(np.uint8)
    return homography


def _transform(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points.reshape(-1, 1, 2).astype(np.float64), homography).reshape(-1, 2)


def place_plates(image: np.ndarray, rng: np.random.Generator, count: int) -> list[Shape]:
    """Pastes up to count non-overlapping plates; returns their shapes in labelme order."""
    ih, iw = image.shape[:2]
    taken: list[np.ndarray] = []
    shapes: list[Shape] = []
    fonts = font_ids()
    for _ in range(count):
        layout = Layout.ONE_ROW if rng.random() < 0.5 else Layout.TWO_ROW
        text = random_plate_text(rng)
        flat = render_flat_plate(text, layout, fonts[rng.integers(len(fonts))], rng)
        quad = _target_quad(rng, CANVAS[layout], (iw, ih))
        low, high = 2 - quad.min(0), [iw - 2, ih - 2] - quad.max(0)  # offsets that keep the quad inside
        if np.any(low >= high):
            continue
        for _attempt in range(20):
            placed = quad + rng.uniform(low, high)
            box = np.concatenate([placed.min(0), placed.max(0)])
            if not _overlaps(box, taken, margin=4):
                break
        else:
            continue
        taken.append(box)
        homography = paste_plate(image, flat, placed)
        group = len(taken) - 1
        ch, cw = flat.image.shape[:2]
        board = np.float32([[0, 0], [cw, 0], [cw, ch], [0, ch]])
        shapes.append(Shape(layout.board_label, _transform(board, homography), group, text.text))
        shapes.append(Shape(layout.sub_label, _transform(flat.sub_region, homography), group))
        shapes.append(Shape(layout.main_label, _transform(flat.main_region, homography), group))
        shapes.extend(Shape(label, _transform(poly, homography), group) for label, poly in flat.chars)
    return shapes


# ---------------------------------------------------------------- the photo


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting, blur and sensor noise, as a camera would add them (uint8 OpenCV ops: fast)."""
    h, w = image.shape[:2]
    light = rng.uniform(0.55, 1.3, (3, 4, 1)).repeat(3, axis=2)  # a smooth gain field, same on each channel
    gain = cv2.resize((light * 128).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.multiply(image, gain, scale=1 / 128)
    offset = float(rng.uniform(-25, 25))
    out = cv2.add(out, (offset,) * 3) if offset > 0 else cv2.subtract(out, (-offset,) * 3)
    if rng.random() < 0.4:
        k = int(rng.choice([3, 5]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    elif rng.random() < 0.2:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1 / k
        out = cv2.filter2D(out, -1, kernel)
    sigma = rng.uniform(0, 8)
    if sigma > 1:
        noise = (rng.standard_normal((h // 2, w // 2), dtype=np.float32) * sigma).astype(np.int16)
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)
        noise = cv2.merge([noise, noise, noise])
        out = np.clip(cv2.add(out, noise, dtype=cv2.CV_16S), 0, 255).astype(np.uint8)
    return out


def synthesize(rng: np.random.Generator, backgrounds: Backgrounds, options: SynthOptions) -> tuple[np.ndarray, list[Shape]]:
    image = backgrounds.draw(rng, options.width, options.height)
    count = 0 if rng.random() < options.empty_fraction else int(rng.integers(1, options.max_plates + 1))
    shapes = place_plates(image, rng, count)
    return degrade(image, rng), shapes


def labelme_document(shapes: list[Shape], image_name: str, width: int, height: int) -> dict:
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": [
            {
                "label": s.label,
                "points": [[round(float(x), 2), round(float(y), 2)] for x, y in s.points],
                "group_id": s.group_id,
                "description": s.description,
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for s in shapes
        ],
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


# ---------------------------------------------------------------- the folder

_worker_state: dict = {}


def _init_pool_worker(*args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops handing out images
    _init_worker(*args)


def _init_worker(out: str, backgrounds: str | None, options: SynthOptions, seed: int) -> None:
    # One process per core already. 0, not 1: in a forked worker, 1 reconfigures the OpenCV thread
    # pool inherited from the parent, which hung once the parent had resized images (under pytest).
    cv2.setNumThreads(0)
    _worker_state.update(out=Path(out), backgrounds=Backgrounds(Path(backgrounds) if backgrounds else None),
                         options=options, seed=seed)


def _make_one(index: int) -> int:
    state = _worker_state
    rng = np.random.default_rng([state["seed"], index])
    options: SynthOptions = state["options"]
    image, shapes = synthesize(rng, state["backgrounds"], options)
    name = f"{index:06d}"
    quality = int(rng.integers(55, 96))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode image {name}")
    write_atomic(state["out"] / f"{name}.jpg", encoded.tobytes())
    document = labelme_document(shapes, f"{name}.jpg", options.width, options.height)
    write_atomic(state["out"] / f"{name}.json", json.dumps(document, indent=1).encode())
    return len({s.group_id for s in shapes})


def is_synth_name(path: Path) -> bool:
    """Named as generate names its files: 000000.jpg, 000000.json, ..."""
    return path.stem.isdigit() and len(path.stem) >= 6 and path.suffix in (".jpg", ".json")


def claim_folder(out: Path) -> None:
    """Makes out a folder synth writes, or refuses one that holds files of someone else's: synth would
    overwrite them, and record would take its images and theirs as one dataset."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: a file, not a folder; --out takes a folder to write images into")
    if out.is_dir() and not (out / MARK).exists():
        # unmarked files are not taken for synth's by their names: labelme frames are often 000001.jpg too
        files = sorted(p.name for p in out.iterdir())
        if files:
            raise UsageError(f"{out} holds files synth did not write ({files[0]}, {len(files)} in all); synth "
                             f"writes only into an empty folder or one it wrote before (marked {MARK}): choose "
                             "another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARK).write_text("alpr synth writes here\n")


def left_from_larger_runs(out: Path, count: int) -> list[Path]:
    """Files named as generate names them, numbered from ``count`` up: an earlier run's, which record would
    take along with this one's."""
    return sorted(p for p in out.iterdir() if is_synth_name(p) and int(p.stem) >= count)


def generate(out: Path, count: int, seed: int, backgrounds: Path | None = None,
             options: SynthOptions = SynthOptions(), workers: int | None = None, progress: bool = True) -> int:
    """Writes count images and labelme files into out; returns the number of plates drawn."""
    if count < 0:
        raise UsageError(f"--count must be >= 0, got {count}")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0 (0: one per core), got {workers}")
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if backgrounds is not None:
        Backgrounds(backgrounds).check()  # fail early, in this process, on a bad folder or photo
        if out.resolve().is_relative_to(Path(backgrounds).resolve()):
            raise UsageError(f"--out {out} lies in --backgrounds {backgrounds}: its images, plates and all, "
                             "would become backgrounds; write them elsewhere")
    claim_folder(out)
    # two runs into one folder would rename each other's partial files and mix their images
    with held_alone(out / MARK, f"{out}: another synth is writing into it; wait for it to end or choose another "
                    "--out"):
        return _generate(out, count, seed, backgrounds, options, workers, progress)


def _generate(out: Path, count: int, seed: int, backgrounds: Path | None, options: SynthOptions,
              workers: int | None, progress: bool) -> int:
    workers = workers or min(default_workers(), max(count, 1))
    args = (str(out), str(backgrounds) if backgrounds else None, options, seed)
    with show_progress(f"synth → {out}", count, progress, transient=False) as advance:
        if workers == 1:
            _init_worker(*args)
            return _tally(map(_make_one, range(count)), advance)
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_pool_worker,
                                 initargs=args) as pool:
            try:
                return _tally(pool.map(_make_one, range(count), chunksize=4), advance)
            except BrokenProcessPool:
                raise AlprError("a synth worker died (out of memory?); fewer --workers need less") from None
            except BaseException:  # Ctrl-C: the workers finish the image each is on, not the whole queue
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _tally(plates_per_image, advance) -> int:
    plates = 0
    for n in plates_per_image:
        plates += n
        advance()
    return plates


def default_workers() -> int:
    """One worker per core this process may use, as many as a container's memory limit holds: a pod
    given a CPU request but no limit (the pipeline's) sees every core of a 96-core node."""
    return max(1, min(available_cpus(), memory_limit() // WORKER_MEMORY))
