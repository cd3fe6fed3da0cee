"""The test step's pictures: masks tinted, boxes outlined, each plate's text or reason above its board
(below it at the top edge), whole."""

from dataclasses import replace

import numpy as np
from pycocotools import mask as mask_utils

from alpr.postprocess import read_plates
from alpr.visualize import draw
from handmade import plate_detections

BOARD_COLOUR = (0, 200, 255)  # BGR, as visualize draws boards


RED = (0, 0, 255)  # BGR: an unread plate's reason, which no box is drawn in


def _red_text(pixels: np.ndarray) -> np.ndarray:
    """Where red text is on black: RED, or smoothed into the black (thin, small text has few pure-red pixels)."""
    pixels = pixels.astype(int)
    return (pixels[..., 2] > 64) & (pixels[..., :2] == 0).all(axis=-1)


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
    # the unread plate's long reason is drawn smaller, to fit the picture's width, and moved left
    above_read, above_unread = picture[40:60, 20:220], picture[100:120]
    green, red = np.all(above_read == (0, 255, 0), axis=-1), _red_text(above_unread)
    assert green.sum() > 50 and red.sum() > 50  # the text in green, the reason in red, on black
    assert (above_read == 0).all(axis=-1).sum() > 100
    assert (picture[150:, :200] == 100).all()  # nothing drawn where nothing was found


def _label_box(picture: np.ndarray) -> tuple[int, int, int, int]:
    """Top, bottom, left and right of the black box the label is drawn on (nothing else is black)."""
    rows, cols = np.nonzero(np.all(picture == 0, axis=-1))
    return rows.min(), rows.max(), cols.min(), cols.max()


def _unread_picture(width: int, x: float, y: float) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 200 px high picture of one unread plate's board at (x, y); the reason says 'read '12' + '3456': ...'."""
    detections = plate_detections("12A3456", x=x, y=y, drop=2)
    [plate] = read_plates(detections)
    assert plate.reason.startswith("read '12' + '3456'")  # a long reason: about 700 px at the label's size
    return draw(np.full((200, width, 3), 100, np.uint8), detections, [plate]), tuple(map(int, plate.bbox))


def test_a_label_at_the_right_edge_moves_left_whole_and_one_at_the_top_goes_below_its_board():
    room, _ = _unread_picture(1000, x=20, y=100)
    top, bottom, left, right = _label_box(room)
    assert bottom == 99 and left == 20  # above its board, at its left
    label = room[top:bottom + 1, left:right + 1]
    assert np.all(label == RED, axis=-1).sum() > 200
    for x, y in ((790, 100), (20, 0), (790, 0)):  # at the right edge, the top edge, and both
        picture, (x1, y1, x2, y2) = _unread_picture(1000, x, y)
        top, bottom, left, right = _label_box(picture)
        assert right <= 999 and (picture[top:bottom + 1, left:right + 1] == label).all(), (x, y)  # all of it
        assert bottom < y1 or top > y2, (x, y)  # above the board, or below it
        board = picture[y1:y2 + 1, x1:x2 + 1]
        assert not np.all(board == 0, axis=-1).any() and not np.all(board == RED, axis=-1).any(), (x, y)
        assert (left, top) == {(790, 100): (1000 - label.shape[1], 100 - label.shape[0]), (20, 0): (20, 41),
                               (790, 0): (1000 - label.shape[1], 41)}[x, y]


def test_a_label_wider_than_the_picture_is_drawn_smaller_and_whole():
    picture, _ = _unread_picture(320, x=100, y=100)  # the synthetic images' width
    top, bottom, left, right = _label_box(picture)
    red_cols = np.nonzero(_red_text(picture[top:bottom + 1]).any(axis=0))[0]
    assert 0 <= left and right <= 319 and red_cols.size > 100
    assert left < red_cols.min() and red_cols.max() < right  # the text ends inside its box, not at the edge


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
