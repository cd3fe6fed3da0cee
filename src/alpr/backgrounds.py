"""Background photos for synthetic plates: a user's folder, or built-in ones.

Built-ins are procedural scenes (sky, walls, road, boxes that stand in for cars
and buildings) plus the sample photos scikit-image ships inside its package,
so nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from alpr.errors import UsageError
from alpr.images import IMAGE_SUFFIXES, JPEG_FORMATS, check_jpeg_whole, eight_bit, list_images

MIN_CROP = 8  # px a side of the crop a background is cut from


def bundled_photos() -> list[Path]:
    """Sample photos inside the installed scikit-image package (no network needed)."""
    try:
        import skimage
    except ImportError:
        return []
    folder = Path(skimage.__file__).parent / "data"
    return [p for p in list_images(folder) if p.stat().st_size > 20_000]


# Crops take half the photo's shorter fit at least, so one kept at twice the output's size gives crops
# of the output's size or more: a 48 MP photo, 146 MB decoded, kept whole in each worker's cache of 8,
# would take 1.2 GB a worker.
MAX_PHOTO_SCALE = 2.0


@lru_cache(maxsize=8)
def _read_photo(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """The photo upright, in BGR, shrunk to MAX_PHOTO_SCALE times the output's size (width, height)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            upright = _eight_bit(ImageOps.exif_transpose(image))  # a phone's photo as it is seen
            photo = np.ascontiguousarray(np.asarray(upright.convert("RGB"))[..., ::-1])
    except Exception as error:  # Pillow's parsers raise OSError, ValueError, SyntaxError on bad bytes
        raise UsageError(f"{path}: not a readable image ({error})") from None
    if min(photo.shape[:2]) < MIN_CROP:
        raise UsageError(f"{path}: {photo.shape[1]}x{photo.shape[0]} px, too small for a background "
                         f"(at least {MIN_CROP} px a side)")
    fit = min(photo.shape[1] / size[0], photo.shape[0] / size[1]) if size else 0
    if fit > MAX_PHOTO_SCALE:
        shrunk = (round(photo.shape[1] * MAX_PHOTO_SCALE / fit), round(photo.shape[0] * MAX_PHOTO_SCALE / fit))
        photo = cv2.resize(photo, shrunk, interpolation=cv2.INTER_AREA)
    return photo


def _eight_bit(image):
    """16-bit and floating-point grey images scaled to 8 bits: Pillow's convert("RGB") would clip them
    (a 16-bit photo comes out almost white, one of floats from 0 to 1 almost black). Integers are
    scaled by the bits their largest value needs: a 12-bit camera's in 16-bit words is not dark."""
    from PIL import Image

    if image.mode.startswith("I"):
        return Image.fromarray(eight_bit(np.asarray(image).clip(0, None).astype(np.uint32)))
    if image.mode == "F":  # floats from 0 to 1, or to their largest value
        values = np.asarray(image, np.float32)
        return Image.fromarray((values * (255 / max(float(values.max()), 1.0))).clip(0, 255).astype(np.uint8))
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
            self.folder = folder
            if not self.photos:
                raise UsageError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found for backgrounds")
            self.procedural_fraction = 0.0
        else:
            self.photos = bundled_photos()
            self.folder = None
            self.procedural_fraction = procedural_fraction if self.photos else 1.0

    def check(self) -> None:
        """Every photo's header, before the first image: a bad one is named at once, with any others,
        not when a draw first picks it, deep into a run and with images written."""
        from PIL import Image

        problems = []
        for path in self.photos:
            name = path.relative_to(self.folder) if self.folder else path
            try:
                with Image.open(path) as image:
                    if min(image.size) < MIN_CROP:
                        problems.append(f"{name}: {image.width}x{image.height} px, under {MIN_CROP} px a side")
                    elif image.format in JPEG_FORMATS:  # one cut short opens, and fails only when a draw decodes it
                        check_jpeg_whole(path.read_bytes())
                    else:  # a PNG's broken data shows only when decoded
                        image.load()
            except Exception as error:  # Pillow's parsers raise OSError, ValueError, SyntaxError on bad bytes
                problems.append(f"{name}: not a readable image ({error})")
        if problems:
            raise UsageError(f"{self.folder or 'built-in backgrounds'}: {len(problems)} background(s) not usable: "
                             + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))

    def draw(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        if rng.random() < self.procedural_fraction:
            return procedural_scene(rng, width, height)
        photo = _read_photo(str(self.photos[rng.integers(len(self.photos))]), (width, height))
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
