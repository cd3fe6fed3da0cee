"""Image files as the model reads them: one decoding for predict, test, evaluate, the server, and
training (the detector's, through ``mmdet_ext.LoadImageAsRead``, and the glyph classifier's).

OpenCV decodes. Pillow reads the header first (for training, once, at record: ``decode_recorded``), to
refuse what OpenCV would read wrong without a word (a truncated JPEG: its missing rows grey; 32-bit
float samples: 0s and 1s) or not at all (TIFFs of 32-bit integers). OpenCV turns JPEG, PNG and TIFF
as their EXIF orientation says; a turned WebP is turned here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpr.errors import UsageError

# Pillow names a JPEG with a multi-picture extension (phones' HDR and gain-map photos) MPO: a JPEG to OpenCV.
JPEG_FORMATS = ("JPEG", "MPO")
READ_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM")  # what OpenCV decodes, as Pillow names them
TURNED_BY_OPENCV = (*JPEG_FORMATS, "PNG", "TIFF")
EXIF_ORIENTATION = 0x0112  # values 5-8: the photo is shown turned by a quarter
WIDE_SAMPLES = {"F": "32-bit float", "I": "32-bit integer"}  # Pillow modes of images OpenCV reads wrong or not at all
# the files in a folder that are its images: those of READ_FORMATS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pbm", ".pgm", ".ppm", ".pnm")


class InvalidImage(ValueError):
    """An encoded image that is not read; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class Header:
    width: int  # as stored: a photo turned a quarter is shown the other way round
    height: int
    kind: str  # the format, as Pillow names it
    orientation: int  # EXIF's, 1 where it has none

    @property
    def shown_size(self) -> tuple[int, int]:
        """Width and height as a viewer, labelme and OpenCV show the image."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def read_header(data: bytes, max_pixels: int | None = None, turned_by_opencv_too: bool = True) -> Header:
    """What the image file says of itself; InvalidImage where it would be read wrong or not at all. Its
    size and format are checked before anything is decoded. Pillow decodes a whole PNG to find its EXIF:
    ``turned_by_opencv_too=False`` reads the orientation only of formats OpenCV does not turn (1 for others);
    True (record's reading) also refuses an image labelme would show turned otherwise (``_orientation``)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidImage("empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, kind = image.width, image.height, image.format
            if kind == "TIFF":  # Pillow 11 and later give a turned TIFF's size as shown: its tags say as stored
                width, height = image.tag_v2.get(256, width), image.tag_v2.get(257, height)
            if max_pixels is not None and width * height > max_pixels:
                raise InvalidImage(f"image of {width}x{height} pixels is over the limit of {max_pixels} pixels")
            if kind not in READ_FORMATS + JPEG_FORMATS:
                raise InvalidImage(f"{kind} images are not read; use {', '.join(READ_FORMATS)}")
            if image.mode == "F" or (kind == "TIFF" and image.mode == "I"):  # a 16-bit PGM is "I" too
                raise InvalidImage(f"{kind} of {WIDE_SAMPLES[image.mode]} samples is not read; "
                                   "save it with 8- or 16-bit samples")
            if kind == "WEBP" and getattr(image, "is_animated", False):
                raise InvalidImage("animated WEBP images are not read; send one frame")
            orientation = (_orientation(image, labelme_too=turned_by_opencv_too)
                           if turned_by_opencv_too or kind not in TURNED_BY_OPENCV else 1)
    except UnidentifiedImageError:
        raise InvalidImage("not an image file (no known image format)") from None
    except Image.DecompressionBombError:  # Pillow's own limit
        most = 2 * Image.MAX_IMAGE_PIXELS
        over = f"is over the limit of {max_pixels} pixels" if max_pixels else "(Pillow's limit)"
        raise InvalidImage(f"image of more than {most} pixels {over}") from None
    except InvalidImage:
        raise
    except Exception as error:  # what Pillow's parsers raise on corrupt bytes: OSError, ValueError, SyntaxError
        raise InvalidImage(f"not a readable image file ({error})") from None
    if kind in JPEG_FORMATS:
        check_jpeg_whole(data)
    return Header(width, height, kind, orientation)


def _orientation(image, labelme_too: bool) -> int:
    """The orientation in the image's EXIF, which OpenCV and viewers apply. ``labelme_too``: InvalidImage
    where labelme shows the image otherwise: it turns it as Pillow does, which also takes an orientation
    from a PNG's text chunk (where ImageMagick keeps EXIF) and, where the EXIF has none, from XMP."""
    from PIL import Image

    if image.format == "TIFF":  # its EXIF is its tags; Pillow turns a TIFF as it loads it
        by_exif, labelme_turns = image.tag_v2.get(EXIF_ORIENTATION, 1), True
    else:
        if image.format == "PNG" and "exif" not in image.info:
            image.load()  # a PNG's EXIF chunk may follow its pixels
        exif = Image.Exif()
        if "exif" in image.info:
            exif.load(image.info["exif"])
        by_exif = exif.get(EXIF_ORIENTATION, 1)
        labelme_turns = "exif" in image.info or "Raw profile type exif" in image.info  # labelme's _getexif()
    if labelme_too and labelme_turns and image.getexif().get(EXIF_ORIENTATION, 1) != by_exif:
        in_text = image.format == "PNG" and "exif" not in image.info
        source = "a text chunk, as ImageMagick writes it" if in_text else "XMP metadata"
        raise InvalidImage(f"{image.format} whose orientation is in {source}, which labelme applies and "
                           "OpenCV does not; save it turned")
    return by_exif


def decode(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """A BGR uint8 array, shown as a viewer shows the file, or InvalidImage."""
    import cv2

    header = read_header(data, max_pixels, turned_by_opencv_too=False)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as error:  # OpenCV raises, rather than returning None, for a header of over 2**30 pixels
        raise InvalidImage(f"{header.kind} image could not be decoded ({error.err})") from None
    if image is None:
        raise InvalidImage(f"{header.kind} image could not be decoded (truncated or corrupt)")
    image = eight_bit(image)
    return image if header.kind in TURNED_BY_OPENCV else turned(image, header.orientation)


def eight_bit(samples: np.ndarray) -> np.ndarray:
    """uint8 samples as they are; wider integers scaled by the bits their largest value needs: a 12-bit
    camera's in 16-bit words, cut to their top 8 bits as OpenCV's IMREAD_COLOR cuts them, is almost black."""
    if samples.dtype == np.uint8:
        return samples
    import cv2

    top = 2.0 ** max(8, math.ceil(math.log2(max(float(samples.max()), 1) + 1))) - 1
    if samples.dtype == np.uint16:  # straight to uint8: no float32 copy, 7 times the image's bytes
        return cv2.convertScaleAbs(samples, alpha=255 / top)
    return (samples.astype(np.float32) * (255 / top)).clip(0, 255).round().astype(np.uint8)


def decode_recorded(data: bytes) -> np.ndarray:
    """An image of a recorded dataset (record checked its header: ``read_header``) decoded as ``decode``
    decodes it, without Pillow's parse again: training decodes each image many times, and on a GPU its
    data loader bounds the pace (benchmarks/RESULTS.md, "Training loads images as reading does"). A JPEG
    is still checked whole (a byte scan): record links its source's files, which may change since."""
    import cv2

    if data[:2] == b"\xff\xd8":
        check_jpeg_whole(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data else None
    except cv2.error as error:
        raise InvalidImage(f"could not be decoded ({error.err})") from None
    if image is None:
        raise InvalidImage("could not be decoded (empty, truncated or corrupt)")
    image = eight_bit(image)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # of the formats read, the one with EXIF OpenCV ignores
        return turned(image, read_header(data, turned_by_opencv_too=False).orientation)
    return image


def read(path: Path) -> np.ndarray:
    """The image file at ``path`` decoded (``decode``); an error naming the file where it is not read."""
    if not path.is_file():
        raise UsageError(f"{path}: " + ("a folder, not an image file" if path.is_dir() else "image not found"))
    return _decoded_file(path, decode)


def read_recorded(path: Path) -> np.ndarray:
    """An image file of a recorded dataset decoded (``decode_recorded``); an error naming the file where
    it is not read (gone since record, no permission, a lost mount, changed)."""
    return _decoded_file(path, decode_recorded)


def _decoded_file(path: Path, decoder: Callable[[bytes], np.ndarray]) -> np.ndarray:
    """Python reads the file: OpenCV's imread dies (SIGSEGV) on a name that is not UTF-8, as one from a
    Windows archive can be."""
    try:
        return decoder(path.read_bytes())
    except OSError as error:
        raise UsageError(f"{path}: {error.strerror}") from None
    except InvalidImage as error:
        raise UsageError(f"{path}: {error}") from None


def list_images(folder: Path) -> list[Path]:
    """The image files under ``folder`` (by their suffix), hidden ones left out (macOS's ``._IMG.jpg`` are no
    images, and ``.x.partial`` folders are work in progress)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def turned(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image as shown with that EXIF orientation (1-8; others are shown as stored)."""
    if orientation in (5, 6, 7, 8):  # a quarter turn: 5 and 7 mirror too
        image = np.rot90(image, -1 if orientation in (5, 6) else 1)
        return np.ascontiguousarray(image[:, ::-1] if orientation in (5, 7) else image)
    if orientation in (2, 3, 4):
        return np.ascontiguousarray(image[::-1 if orientation in (3, 4) else 1, ::-1 if orientation in (2, 3) else 1])
    return image


def check_jpeg_whole(data: bytes) -> None:
    """InvalidImage for a JPEG cut short (``jpeg_reaches_its_end``)."""
    if not jpeg_reaches_its_end(data):
        raise InvalidImage("truncated JPEG: no end-of-image marker after its image data")


def jpeg_reaches_its_end(data: bytes) -> bool:
    """Whether a JPEG's image data runs up to its end-of-image marker. Decoders read a truncated JPEG
    without a word, its missing rows grey. Phones append data after the marker (Motion Photos, Samsung's
    trailer), and an EXIF thumbnail holds one of its own, so the marker is looked for where it belongs:
    segments are skipped by their length, entropy-coded data scanned for the next marker."""
    position = 2  # after the start-of-image marker
    while (start := data.find(b"\xff", position)) >= 0 and start + 1 < len(data):
        marker = data[start + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            position = start + 1
        elif marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # a stuffed 0xff, TEM, restart markers
            position = start + 2
        else:  # a segment: its two-byte length counts itself
            position = start + 2 + int.from_bytes(data[start + 2:start + 4], "big")
    return False
