"""Background photos for synthetic plates: a user's folder, or built-in ones.

Built-ins are procedural scenes (sky, walls, road, boxes that stand in for cars
and buildings) plus the sample photos scikit-image ships inside its package,
so nothing is downloaded.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from alpr.errors import UsageError
from alpr.images import IMAGE_SUFFIXES, check_jpeg_whole, list_images

MIN_CROP = 8  # px a side of the crop a background is cut from


def bundled_photos() -> list[Path]:
    """Sample photos inside the installed scikit-image package (no network needed)."""
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    return [p for p in list_images(folder) if p.stat().st_size > 20_000]


@lru_cache(maxsize=8)  # in each worker: a 12 MP photo is 36 MB decoded
def _read_photo(path: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = _eight_bit(ImageOps.exif_transpose(image))  # a phone's photo as it is seen
            photo = np.ascontiguousarray(np.asarray(upright.convert("RGB"))[..., ::-1])
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise UsageError(f"{path}: not a readable image ({error})") from None
    if min(photo.shape[:2]) < MIN_CROP:
        raise UsageError(f"{path}: {photo.shape[1]}x{photo.shape[0]} px, too small for a background "
                         f"(at least {MIN_CROP} px a side)")
    return photo


def _eight_bit(image):
    """16-bit and floating-point grey images scaled to 8 bits: Pillow's convert("RGB") would clip them
    (a 16-bit photo comes out almost white, one of floats from 0 to 1 almost black). Integers are
    scaled by the bits their largest value needs: a 12-bit camera's in 16-bit words is not dark."""
    from PIL import Image

    if image.mode.startswith("I"):
        values = np.asarray(image, np.float32)
        top = 2.0 ** max(8, math.ceil(math.log2(max(float(values.max()), 1) + 1))) - 1
        return Image.fromarray((values * (255 / top)).clip(0, 255).round().astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, np.float32)
        return Image.fromarray((values * (255 if values.max() <= 1 else 1)).clip(0, 255).astype(np.uint8))
    return image


class Backgrounds:
    """Draws a background of a given size for a random generator."""

    def __init__(self, folder: Path | None = None, procedural_fraction: float = 0.5):
        if folder is not None:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: backgrounds folder does not exist" if not folder.exists()
                                        else f"{folder}: not a folder; --backgrounds takes a folder of photos")
            self.photos = list_images(folder)
            if not self.photos:
                raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found for backgrounds")
            self.procedural_fraction = 0.0
        else:
            self.photos = bundled_photos()
            self.procedural_fraction = procedural_fraction if self.photos else 1.0

    def check(self) -> None:
        """Every photo's header, before the first image: a bad one is named at once, with any others,
        not when a draw first picks it, deep into a run and with images written."""
        from PIL import Image

        problems = []
        for path in self.photos:
            try:
                with Image.open(path) as image:
                    if min(image.size) < MIN_CROP:
                        problems.append(f"{path.name}: {image.width}x{image.height} px, under {MIN_CROP} px a side")
                    elif image.format == "JPEG":  # one cut short opens, and fails only when a draw decodes it
                        check_jpeg_whole(path.read_bytes())
            except Exception as error:  # Pillow's parsers raise OSError, ValueError, SyntaxError on bad bytes
                problems.append(f"{path.name}: not a readable image ({error})")
        if problems:
            raise UsageError(f"{self.photos[0].parent}: {len(problems)} background(s) not usable: "
                             + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))

    def draw(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        if rng.random() < self.procedural_fraction:
            return procedural_scene(rng, width, height)
        photo = _read_photo(str(self.photos[rng.integers(len(self.photos))]))
        return random_crop(rng, photo, width, height)


def random_crop(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A random crop with the output's aspect ratio, resized to width x height."""
    ph, pw = photo.shape[:2]
    scale = min(pw / width, ph / height) * rng.uniform(0.5, 1.0)
    cw, ch = max(MIN_CROP, int(width * scale)), max(MIN_CROP, int(height * scale))
    x0, y0 = rng.integers(0, pw - cw + 1), rng.integers(0, ph - ch + 1)
    crop = photo[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


def _texture(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """A low-frequency gain field in [0.7, 1.3] x 128, as uint8 BGR (coarse noise, upscaled)."""
    coarse = rng.uniform(0.7, 1.3, (max(2, cells * height // width), cells, 1)).repeat(3, axis=2)
    return cv2.resize((coarse * 128).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)


def procedural_scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A street-like scene: sky/wall gradient, road, and boxes as cars and buildings."""
    ends = rng.integers(0, 256, (2, 1, 3)).astype(np.uint8)  # top and bottom colours
    image = cv2.resize(ends, (width, height), interpolation=cv2.INTER_LINEAR)
    horizon = int(height * rng.uniform(0.3, 0.7))
    road = rng.integers(40, 140)
    image[horizon:] = np.clip(road + rng.integers(-15, 16, 3), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 12)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 20, width // 2), rng.integers(height // 20, height // 2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), color, -1)
    for _ in range(rng.integers(0, 6)):
        p0 = tuple(int(v) for v in (rng.integers(0, width), rng.integers(horizon, height)))
        p1 = tuple(int(v) for v in (rng.integers(0, width), rng.integers(horizon, height)))
        cv2.line(image, p0, p1, (220, 220, 220), int(rng.integers(2, 8)))
    return cv2.multiply(image, _texture(rng, width, height, int(rng.integers(4, 40))), scale=1 / 128)
