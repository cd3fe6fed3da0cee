"""The test step's pictures: masks tinted, boxes outlined, each plate's text or reason above its board."""

from dataclasses import replace

import numpy as np
from pycocotools import mask as mask_utils

from alpr.postprocess import read_plates
from alpr.visualize import draw
from handmade import plate_detections

BOARD_COLOUR = (0, 200, 255)  # BGR, as visualize draws boards


def test_a_picture_tints_masks_outlines_boxes_and_writes_each_plates_text_above_it():
    image = np.full((200, 480, 3), 100, np.uint8)
    read = plate_detections("12A3456", x=20, y=60)  # a board at (20, 60)-(220, 100)
    unread = plate_detections("12A3456", x=260, y=120, drop=2)  # its letter missing
    board_mask = np.zeros(image.shape[:2], np.uint8)
    board_mask[70:90, 30:60] = 1
    read[0] = replace(read[0], mask=mask_utils.encode(np.asfortranarray(board_mask)))  # as a model gives it: RLE
    detections = read + unread
    plates = read_plates(detections)
    assert [p.readable for p in plates] == [True, False]

    picture = draw(image, detections, plates)
    assert (image == 100).all()  # drawn on a copy
    tinted = picture[80, 45].astype(int)  # inside the mask, away from every box's outline
    assert tinted.tolist() == [int(100 * 0.6 + c * 0.4) for c in BOARD_COLOUR]
    assert picture[80, 20].tolist() == list(BOARD_COLOUR)  # the board's left edge
    above_read, above_unread = picture[40:59, 20:220], picture[100:119, 260:460]
    green, red = np.all(above_read == (0, 255, 0), axis=-1), np.all(above_unread == (0, 0, 255), axis=-1)
    assert green.sum() > 50 and red.sum() > 50  # the text in green, the reason in red, on black
    assert (above_read == 0).all(axis=-1).sum() > 100
    assert (picture[150:, :200] == 100).all()  # nothing drawn where nothing was found


def test_an_image_whose_file_name_is_not_utf8_is_read_and_drawn(tmp_path):
    """A name from a Windows archive (Korean CP949 bytes): OpenCV's own imread and imwrite die on it."""
    import os

    from alpr.reader import load_image
    from alpr.visualize import write_picture

    picture = np.full((20, 30, 3), (10, 120, 240), np.uint8)
    path = tmp_path / os.fsdecode(b"\xc7\xd1\xb1\xdb.png")
    write_picture(path, picture)
    assert (load_image(path) == picture).all()


def test_a_text_line_shows_a_file_name_that_is_not_utf8_with_its_bytes_escaped():
    import os

    from alpr.visualize import text_line

    name = os.fsdecode(b"cars/\xc7\xd1\xb1\xdb.jpg")  # lone surrogates, which print() cannot encode
    line = text_line(name, read_plates(plate_detections("12A3456")))
    assert line == "cars/\\xc7\u0471\\xdb.jpg: 12A3456" and line.encode()  # printable; D1 B1 is UTF-8's ѱ
    assert text_line("차량/1.jpg", []) == "차량/1.jpg: no plate"  # a UTF-8 name is shown as it is


def test_a_picture_keeps_its_images_path_and_format_or_is_a_jpeg_beside_it(tmp_path):
    import cv2

    from alpr.visualize import write_picture

    picture = np.full((20, 30, 3), (10, 120, 240), np.uint8)
    for name in ("sub/a.png", "a.gif", "frame_0001", "grey.pgm"):  # OpenCV writes no colour GIF, bare name or PGM
        write_picture(tmp_path / name, picture)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["a.gif.jpg", "frame_0001.jpg", "grey.pgm.jpg", "sub/a.png"]
    assert (cv2.imread(str(tmp_path / "sub" / "a.png")) == picture).all()  # PNG: lossless
