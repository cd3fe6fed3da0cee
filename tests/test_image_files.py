"""alpr.images: image files decoded as a viewer shows them, or refused with the reason."""

import io
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from alpr.errors import UsageError
from alpr.images import EXIF_ORIENTATION, InvalidImage, decode, jpeg_reaches_its_end, turned


def _saved(array: np.ndarray, kind: str, orientation: int = 1, **options) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, kind, exif=exif.tobytes(), **options)
    return buffer.getvalue()


def _asymmetric() -> np.ndarray:
    """Every turn and mirror of it differs: distinct values, not square."""
    return np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_turned_as_opencv_turns_a_png(orientation):
    picture = _asymmetric()
    by_opencv = cv2.imdecode(np.frombuffer(_saved(picture, "PNG", orientation), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(turned(picture[..., ::-1], orientation), by_opencv)


def test_a_turned_webp_is_read_turned_as_a_turned_png(tmp_path):
    """OpenCV does not turn a WebP: a phone's photo sent as one would be read on its side."""
    from alpr.reader import load_image
    from alpr.serve import decode_image

    picture = _asymmetric()
    png = decode(_saved(picture, "PNG", 6))
    webp = _saved(picture, "WEBP", 6, lossless=True)
    assert png.shape == (6, 4, 3) and np.array_equal(decode(webp), png)
    (tmp_path / "turned.webp").write_bytes(webp)
    assert np.array_equal(load_image(tmp_path / "turned.webp"), png)
    assert np.array_equal(decode_image(webp, len(webp), 24), png)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "TIFF", "WEBP", "BMP", "PPM"])
def test_the_size_a_header_gives_is_the_size_of_the_image_decoded(kind):
    """Record checks labelme's size against the header's (Pillow gives a turned TIFF's size as shown), and
    training decodes a recorded image as reading decodes it, without the checks."""
    from alpr.images import decode_recorded, read_header

    for orientation in (1, 6) if kind not in ("BMP", "PPM") else (1,):  # these two keep no EXIF
        data = _saved(_asymmetric(), kind, orientation, **({"lossless": True} if kind == "WEBP" else {}))
        assert read_header(data).shown_size == decode(data).shape[1::-1] == ((6, 4) if orientation == 1 else (4, 6))
        assert np.array_equal(decode_recorded(data), decode(data))


def test_a_recorded_image_cut_short_or_emptied_since_is_refused_by_training(tmp_path, synth_dir):
    """Record links its source's files: one may change after record checked it."""
    from mmdet.registry import TRANSFORMS

    import alpr.mmdet_ext  # noqa: F401  (registers LoadImageAsRead)
    from alpr.errors import AlprError

    load = TRANSFORMS.build(dict(type="LoadImageAsRead"))
    data = (synth_dir / "000001.jpg").read_bytes()
    for name, content, problem in (("cut.jpg", data[:len(data) // 2], "truncated JPEG"),
                                   ("empty.jpg", b"", "could not be decoded (empty")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AlprError, match=f"{name}: {re.escape(problem)}"):
            load(dict(img_path=str(tmp_path / name)))
    with pytest.raises(AlprError, match="gone.jpg: No such file or directory"):
        load(dict(img_path=str(tmp_path / "gone.jpg")))


XMP_TURNED = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
              '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


def _saved_with_xmp_orientation(kind: str, exif_too: bool) -> bytes:
    """An image whose orientation (6) is only in its XMP; ``exif_too``: with EXIF that has none."""
    from PIL import PngImagePlugin

    options = {"PNG": {}, "TIFF": {"tiffinfo": {700: XMP_TURNED.encode()}}}.get(kind, {"xmp": XMP_TURNED.encode()})
    if kind == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", XMP_TURNED)
    if exif_too:
        exif = Image.Exif()
        exif[0x010F] = "maker"  # Make
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(_asymmetric()).save(buffer, kind, **options, **({"lossless": True} if kind == "WEBP" else {}))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP"])
def test_an_orientation_only_in_xmp_is_not_applied(kind):
    """Pillow takes an orientation from XMP where the EXIF has none; OpenCV, viewers and (for a file
    without EXIF) labelme do not: record took its size turned, and a WebP was read turned."""
    from alpr.images import read_header

    data = _saved_with_xmp_orientation(kind, exif_too=False)
    assert read_header(data).shown_size == decode(data).shape[1::-1] == (6, 4)  # as stored


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_an_orientation_only_labelme_applies_is_refused_by_record(kind):
    """labelme turns an image as Pillow does: by XMP's orientation where the file has EXIF without one
    (a TIFF: always), and by a PNG's EXIF text chunk (as ImageMagick writes it). OpenCV reads it as
    stored, so its annotations would be trained on the wrong pixels."""
    from alpr.images import read_header

    data = _saved_with_xmp_orientation(kind, exif_too=True)
    with pytest.raises(InvalidImage, match=f"{kind} whose orientation is in XMP metadata, which labelme applies"):
        read_header(data)
    assert decode(data).shape[:2] == (4, 6)  # reading, unlike recording, takes it as OpenCV does


def test_a_png_whose_orientation_is_in_a_text_chunk_is_refused_by_record():
    from PIL import PngImagePlugin

    from alpr.images import read_header

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    raw = b"Exif\x00\x00" + exif.tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n")
    buffer = io.BytesIO()
    Image.fromarray(_asymmetric()).save(buffer, "PNG", pnginfo=text)
    with pytest.raises(InvalidImage, match="PNG whose orientation is in a text chunk, as ImageMagick writes it"):
        read_header(buffer.getvalue())
    assert read_header(_saved(_asymmetric(), "PNG", 6)).shown_size == (4, 6)  # an eXIf chunk OpenCV applies


def test_images_opencv_would_not_read_say_why_and_name_the_file(tmp_path):
    from alpr.reader import load_image

    floats = _saved(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "TIFF")
    with pytest.raises(InvalidImage, match="TIFF of 32-bit float samples is not read; save it with 8- or 16-bit"):
        decode(floats)
    (tmp_path / "depth.tiff").write_bytes(floats)
    with pytest.raises(UsageError, match="depth.tiff: TIFF of 32-bit float samples"):
        load_image(tmp_path / "depth.tiff")
    pfm = cv2.imencode(".pfm", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))[1].tobytes()
    with pytest.raises(InvalidImage, match="PPM of 32-bit float samples is not read"):  # OpenCV: all 0 or 1
        decode(pfm)
    sixteen = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 4000)
    assert decode(_saved(sixteen, "PNG")).shape == (3, 4, 3)  # 16-bit samples are read (OpenCV scales them)
    gif = io.BytesIO()
    Image.new("P", (4, 4)).save(gif, "GIF")
    with pytest.raises(InvalidImage, match="GIF images are not read; use JPEG, PNG, BMP, WEBP, TIFF, PPM"):
        decode(gif.getvalue())


def test_size_and_format_are_checked_before_anything_is_decoded():
    """A server's pixel limit guards its memory only if it holds before decoding: Pillow decodes a whole
    PNG to find its EXIF, so a PNG's orientation is left to OpenCV, which turns PNGs itself."""
    from test_reader import _png_header

    with pytest.raises(InvalidImage, match="image of 5000x5000 pixels is over the limit of 1000000 pixels"):
        decode(_png_header(5000, 5000), max_pixels=10**6)
    with pytest.raises(InvalidImage, match="PNG image could not be decoded"):  # Pillow did not decode it first
        decode(_png_header(100, 100))


def test_a_corrupt_file_is_an_invalid_image_whatever_pillow_raises(tmp_path):
    from alpr.reader import load_image

    png = bytearray(cv2.imencode(".png", np.arange(64 * 48 * 3, dtype=np.uint8).reshape(64, 48, 3))[1].tobytes())
    at = png.index(b"IDAT") - 4
    png[at:at + 4] = (int.from_bytes(png[at:at + 4], "big") // 2).to_bytes(4, "big")  # Pillow: SyntaxError
    (tmp_path / "broken.png").write_bytes(bytes(png))
    with pytest.raises(UsageError, match="broken.png: "):
        load_image(tmp_path / "broken.png")
    from alpr.images import read_header

    with pytest.raises(InvalidImage, match="not a readable image file"):
        read_header(bytes(png))  # record reads a PNG's EXIF, which decodes it


def test_a_folder_s_images_are_those_of_a_format_read_and_not_hidden(tmp_path):
    from alpr.images import list_images

    for name in ("a.JPG", "b.pgm", "sub/c.webp", "._d.jpg", ".partial/e.png", "notes.txt", "f.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "album.jpg").mkdir()  # a folder named like an image is none
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.JPG", "b.pgm", "sub/c.webp"]


def test_netpbm_images_are_read_and_animated_webps_refused():
    picture = _asymmetric()
    for suffix, flags in ((".ppm", cv2.IMREAD_COLOR), (".pgm", cv2.IMREAD_GRAYSCALE)):
        data = cv2.imencode(suffix, picture if flags == cv2.IMREAD_COLOR else picture[..., 0])[1].tobytes()
        assert np.array_equal(decode(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    sixteen = cv2.imencode(".pgm", np.arange(12, dtype=np.uint16).reshape(3, 4) * 4000)[1].tobytes()
    assert decode(sixteen).shape == (3, 4, 3)  # Pillow's mode "I", as a 32-bit TIFF's: read
    frames = [Image.fromarray(picture), Image.fromarray(picture[::-1].copy())]
    animated = io.BytesIO()
    frames[0].save(animated, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with pytest.raises(InvalidImage, match="animated WEBP images are not read; send one frame"):
        decode(animated.getvalue())


def test_a_jpeg_is_complete_only_up_to_its_own_end_marker(synth_dir):
    good = (synth_dir / "000001.jpg").read_bytes()
    assert jpeg_reaches_its_end(good) and jpeg_reaches_its_end(good + b"trailer \xff\xd8 no end")
    assert not jpeg_reaches_its_end(good[:len(good) // 2])
    # an EXIF thumbnail's end marker, inside an APP1 segment, is not the image's
    thumbnail = b"Exif\x00\x00" + b"\xff\xd8 thumbnail \xff\xd9"
    with_thumbnail = good[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + good[2:]
    assert jpeg_reaches_its_end(with_thumbnail)
    assert not jpeg_reaches_its_end(with_thumbnail[:len(with_thumbnail) // 2])


@pytest.mark.parametrize("suffix", [".png", ".pgm", ".tiff"])
def test_16_bit_samples_are_scaled_by_the_bits_they_use(suffix):
    """A 12-bit camera's samples in 16-bit words: cut to their top 8 bits (OpenCV's IMREAD_COLOR), a ramp to
    4095 read 0 to 15, a plate in it no plate. Full 16-bit ones read as before; the recorded path agrees."""
    from alpr.images import decode_recorded

    for bits in (12, 16):
        ramp = np.tile(np.linspace(0, 2 ** bits - 1, 64).astype(np.uint16), (8, 1))
        data = cv2.imencode(suffix, ramp)[1].tobytes()
        image = decode(data)
        assert image.dtype == np.uint8 and image.shape == (8, 64, 3)
        assert np.abs(image[..., 0].astype(int) - np.linspace(0, 255, 64).round()).max() <= 1, (suffix, bits)
        assert np.array_equal(decode_recorded(data), image)
    eight = cv2.imencode(suffix, np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)[1].tobytes()
    assert np.array_equal(decode(eight)[..., 0], np.arange(64).reshape(8, 8) * 3)  # 8-bit samples untouched
