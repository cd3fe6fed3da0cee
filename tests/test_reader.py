"""PlateReader's second reading of small plates, from an enlarged window around each board."""

import numpy as np
import pytest

from alpr.postprocess import Detection, Plate, ReadOptions
from alpr.reader import ZOOM_MARGIN, enlarge, from_window, second_reading, zoom_window


def _painted_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """The box of the image's bright pixels, in the continuous coordinates boxes use."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0


@pytest.mark.parametrize("board", [(400, 300, 460, 313), (5, 700, 90, 718), (1200, 2, 1279, 40)])
def test_an_enlarged_board_is_as_wide_as_asked_and_maps_back_to_where_it_was(board):
    image = np.zeros((720, 1280, 3), np.uint8)
    x1, y1, x2, y2 = board
    image[y1:y2, x1:x2] = 255
    window, scale = zoom_window(board, (1280, 720), 320)
    assert 0 <= window[0] and 0 <= window[1] and window[2] <= 1280 and window[3] <= 720  # inside the image
    assert window[0] <= max(0, x1 - ZOOM_MARGIN * (x2 - x1)) and window[2] >= min(1280, x2 + ZOOM_MARGIN * (x2 - x1))
    window_image = enlarge(image, window, scale)
    found = _painted_box(window_image)
    assert found[2] - found[0] == pytest.approx(320, abs=2)
    back = from_window(Detection("board", 0.9, found, mask={"counts": "x"}), window, scale)
    assert back.bbox == pytest.approx(board, abs=0.5) and back.mask is None


def _plate(text, bbox, score=0.9) -> Plate:
    reason = None if text else "no characters found on the board"
    return Plate(text, text and text[:2], text and text[2], text and text[3:], "one_row", bbox, score, (), reason)


def test_the_second_reading_is_kept_only_when_it_reads_the_same_board():
    first = _plate("12A3456", (100, 100, 160, 113))
    same_board = _plate("12B3456", (101, 100, 161, 114))
    unread_there = _plate(None, (100, 100, 160, 113))
    neighbour = _plate("98C7654", (150, 100, 210, 113))
    assert second_reading(first, [neighbour, same_board]) is same_board
    assert second_reading(first, [unread_there]) is first  # an unread second look keeps the first reading
    assert second_reading(first, [neighbour]) is first  # a board beside it is another plate
    assert second_reading(first, []) is first
    unread = _plate(None, (100, 100, 160, 113))
    assert second_reading(unread, [same_board]) is same_board


def test_small_boards_are_read_again_at_the_zoom_width(smoke_workdir, smoke_training, synth_dir):
    """With every detection a board (thresholds at 0), each board narrower than zoom_width is run
    again through the model, in a window enlarged so that the board is zoom_width wide."""
    from alpr.reader import PlateReader

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0, zoom_width=96)
    reader = PlateReader.from_checkpoint(best, device="cpu", options=options)
    windows = []
    detect = reader._detect

    def recording(data, masks):
        windows.extend(d["inputs"].shape[1:] for d in data if d["data_samples"].metainfo.get("scale_factor") == (1.0, 1.0))
        return detect(data, masks)

    reader._detect = recording
    image = synth_dir / "000001.jpg"
    (detections, plates), = reader.read([image])
    unzoomed = PlateReader(reader.model, ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0,
                                                     zoom_width=0)).predict(image)
    seen = reader.image_size / 320  # synth_dir's SMALL images are 320 px wide
    small = [p for p in unzoomed if (p.bbox[2] - p.bbox[0]) * seen < 96]
    assert small, "the smoke model found no small board to read again"
    assert len(windows) == len(small) and len(plates) == len(unzoomed)
    for height, width in windows:
        assert width % 32 == 0 and width >= 96  # the board alone is 96 px wide there
