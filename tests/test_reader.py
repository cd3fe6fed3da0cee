"""PlateReader's second reading of each plate, from a window scaled to the plate's best size, and
its detections without masks."""

from dataclasses import replace

import numpy as np
import pytest

from alpr.postprocess import Detection, Plate, ReadOptions
from alpr.errors import UsageError
from alpr.reader import (ZOOM_MARGIN, agreed_reading, best_reading, distinct_plates, from_window, read_enough,
                         resolve_device, sure_enough, window_image, zoom_window)
from handmade import plate_detections


def _painted_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """The box of the image's bright pixels, in the continuous coordinates boxes use."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0


@pytest.mark.parametrize("board", [(400, 300, 460, 313), (5, 700, 90, 718), (1200, 2, 1279, 40), (100, 100, 600, 300)])
def test_a_scaled_board_is_as_wide_as_asked_and_maps_back_to_where_it_was(board):
    image = np.zeros((720, 1280, 3), np.uint8)
    x1, y1, x2, y2 = board
    image[y1:y2, x1:x2] = 255
    window, scale = zoom_window(board, (1280, 720), 320)
    assert 0 <= window[0] and 0 <= window[1] and window[2] <= 1280 and window[3] <= 720  # inside the image
    assert window[0] <= max(0, x1 - ZOOM_MARGIN * (x2 - x1)) and window[2] >= min(1280, x2 + ZOOM_MARGIN * (x2 - x1))
    found = _painted_box(window_image(image, window, scale))
    assert found[2] - found[0] == pytest.approx(320, abs=2)
    back = from_window(Detection("board", 0.9, found, mask={"counts": "x"}), window, scale)
    assert back.bbox == pytest.approx(board, abs=0.5) and back.mask is None


def test_the_window_of_a_box_taller_than_wide_or_a_speck_is_no_larger_than_a_plates():
    for box in [(100, 100, 101, 700), (100, 100, 100.5, 100.5), (1280, 720, 1280, 720)]:
        window, scale = zoom_window(box, (1280, 720), 320)
        assert 0 < (window[2] - window[0]) * scale <= 1.5 * 320 and 0 < (window[3] - window[1]) * scale <= 1.5 * 320


def test_a_slivers_window_scales_to_pixels_not_to_nothing():
    window, scale = zoom_window((0, 0, 1, 4000), (4096, 4096), 192)  # its width scales under one pixel
    assert min(window_image(np.zeros((4096, 4096, 3), np.uint8), window, scale).shape[:2]) >= 1


def _plate(text, bbox, score=0.9, char_scores=()) -> Plate:
    reason = None if text else "no characters found on the board"
    return Plate(text, text and text[:2], text and text[2], text and text[3:], "one-row", bbox, score,
                 tuple(char_scores), reason)


def test_a_window_reading_is_kept_only_when_it_reads_the_same_board():
    first = _plate("12A3456", (100, 100, 160, 113))
    same_board = _plate("12B3456", (101, 100, 161, 114))
    unread_there = _plate(None, (100, 100, 160, 113))
    neighbour = _plate("98C7654", (150, 100, 210, 113))
    assert best_reading(first, [[neighbour, same_board]]) is same_board
    assert best_reading(first, [[unread_there]]) is first  # an unread second look keeps the first reading
    assert best_reading(first, [[neighbour]]) is first  # a board beside it is another plate
    assert best_reading(first, [[]]) is first and best_reading(first, []) is first
    unread = _plate(None, (100, 100, 160, 113))
    assert best_reading(unread, [[same_board]]) is same_board


def test_of_the_windows_readings_the_one_whose_least_sure_character_is_surest_is_kept():
    board = (100, 100, 160, 113)
    first = _plate("12A3456", board, char_scores=[0.99] * 7)  # the first reading is only a fallback
    even = _plate("12B3456", board, char_scores=[0.8] * 7)
    one_doubt = _plate("12C3456", board, char_scores=[0.99] * 6 + [0.4])
    neighbour = _plate("98D7654", (150, 100, 210, 113), char_scores=[1.0] * 7)
    assert best_reading(first, [[one_doubt], [neighbour, even], [_plate(None, board)]]) is even
    assert best_reading(first, [[one_doubt], [neighbour]]) is one_doubt


def test_two_windows_that_read_a_board_alike_outvote_a_surer_lone_reading():
    board = (100, 100, 160, 113)
    first = _plate("12A3456", board, char_scores=[0.99] * 7)
    lone = _plate("12B3456", board, char_scores=[0.95] * 7)
    agreed_low, agreed_high = (_plate("12C3456", board, char_scores=[score] * 7) for score in (0.5, 0.6))
    neighbour = _plate("12C3456", (150, 100, 210, 113), char_scores=[1.0] * 7)  # another board does not vote
    assert agreed_reading(first, [[lone], [neighbour]]) is None and not read_enough(first, [[lone], [neighbour]], None)
    windows = [[agreed_low], [lone], [agreed_high]]
    assert agreed_reading(first, windows) is agreed_high and best_reading(first, windows) is agreed_high
    assert read_enough(first, windows, None) and not read_enough(first, windows[:2], None)
    assert best_reading(first, windows[:2]) is lone  # no two agree: the surest window reading


def test_the_first_reading_agreeing_with_one_window_is_enough():
    board = (100, 100, 160, 113)
    first = _plate("12A3456", board, char_scores=[0.9] * 7)
    echo, other = _plate("12A3456", board, char_scores=[0.7] * 7), _plate("12B3456", board, char_scores=[0.95] * 7)
    assert read_enough(first, [[echo]], None) and best_reading(first, [[other], [echo]]) is first  # the surer
    assert not read_enough(first, [[other]], None)
    assert not read_enough(_plate(None, board), [[echo]], None)  # an unread first reading has no say


def test_a_board_is_read_surely_when_one_window_reads_it_with_every_character_at_the_sure_score():
    board = (100, 100, 160, 113)
    first = _plate("12A3456", board, char_scores=[0.99] * 7)  # the first reading does not count
    doubt = _plate("12C3456", board, char_scores=[0.99] * 6 + [0.6])
    sure = _plate("12B3456", board, char_scores=[0.9] * 7)
    neighbour = _plate("98D7654", (150, 100, 210, 113), char_scores=[1.0] * 7)
    assert not sure_enough(first, [[doubt], [neighbour]], 0.8)
    assert sure_enough(first, [[doubt], [neighbour, sure]], 0.8) and sure_enough(first, [[doubt]], 0.6)
    assert not sure_enough(first, [[sure]], None)  # None: every width is read


def test_two_pieces_of_one_plate_that_both_take_a_windows_reading_are_one_plate():
    """Boards found apart (IoU 0.4, both kept by suppression) each overlap a window's reading of the whole."""
    left, right = _plate(None, (0, 0, 140, 40)), _plate(None, (60, 0, 200, 40))
    whole = _plate("12A3456", (20, 0, 180, 40))
    plates = [best_reading(left, [[whole]]), best_reading(right, [[whole]])]
    assert plates == [whole, whole] and distinct_plates(plates) == [whole]
    # an unread piece gives way to the reading that covers it; plates apart all stay, in their order
    beside = _plate("98C7654", (300, 0, 440, 40))
    assert distinct_plates([left, beside, whole]) == [beside, whole]
    assert distinct_plates([left, beside]) == [left, beside]


def test_reading_options_out_of_range_are_usage_errors():
    for flag, value in (("char threshold", 30), ("board threshold", -0.1), ("duplicate IoU", 0)):
        with pytest.raises(UsageError, match=f"{flag} {value}"):
            ReadOptions(**{flag.replace(" ", "_").replace("IoU", "iou"): value})
    with pytest.raises(UsageError, match=r"\(224, 0\)"):
        ReadOptions(zoom_widths=(224, 0))
    for score in (0, 1.5):
        with pytest.raises(UsageError, match=f"sure score {score}"):
            ReadOptions(sure_score=score)


def test_a_device_that_is_no_device_or_not_there_is_a_usage_error():
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if visible else "cpu")
    for typo in ("gpu", "CPU", "cuda:", "cuda:x"):
        with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
            resolve_device(typo)
    with pytest.raises(UsageError, match=f"{visible} CUDA device"):
        resolve_device(f"cuda:{visible}")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels and holds none."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("image, message", [
    (np.zeros((4, 4, 3), np.float64), "dtype float64: expected uint8"),
    (np.zeros((4, 4), np.uint16), "dtype uint16: expected uint8"),
    (np.zeros((4, 4, 3), bool), "dtype bool: expected uint8"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\): expected H x W x 3"),
])
def test_an_array_the_model_cannot_take_is_a_usage_error(image, message):
    from alpr.reader import load_image

    with pytest.raises(UsageError, match=message):
        load_image(image)


def test_a_grey_array_with_a_channel_axis_reads_as_one_without(synth_dir):
    from alpr.reader import load_image

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(load_image(grey[..., None]), load_image(grey))
    assert load_image(grey[..., None]).shape == (3, 4, 3)


def test_a_truncated_jpeg_is_refused_as_the_server_refuses_it(synth_dir, tmp_path):
    """OpenCV reads it without a word, its missing rows grey; phone trailers after the end still read."""
    from alpr.reader import load_image

    data = (synth_dir / "000001.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="cut.jpg: truncated JPEG"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "trailer.jpg").write_bytes(data + b"MotionPhoto_Data")
    assert load_image(tmp_path / "trailer.jpg").shape == load_image(synth_dir / "000001.jpg").shape


def test_an_image_file_that_claims_too_many_pixels_or_holds_none_is_a_usage_error(tmp_path, monkeypatch):
    from PIL import Image

    from alpr.reader import check_image_size, load_image

    (tmp_path / "huge.png").write_bytes(_png_header(40_000, 40_000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's own: labelme, which tests import, lifts it
    with pytest.raises(UsageError, match=r"huge.png: image of more than 178956970 pixels \(Pillow's limit\)"):
        load_image(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(UsageError, match="huge.png: PNG image could not be decoded"):
        load_image(tmp_path / "huge.png")
    with pytest.raises(UsageError, match="crop: 0x0 px, an empty image"):
        check_image_size(np.zeros((0, 0, 3), np.uint8), 1280, "crop")


def test_each_board_is_read_again_at_each_zoom_width(smoke_workdir, smoke_training, synth_dir):
    """Each plate found first is run through the model again, in windows scaled so that its board
    is each of the zoom widths wide (the plates here are given: a 4-iteration model's boards are chance)."""
    import itertools
    import math

    from alpr.reader import PlateReader, load_image

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    reader = PlateReader.from_checkpoint(best, device="cpu", options=ReadOptions(zoom_widths=(96, 128)))
    windows = []
    detect = reader._detect

    def recording(data, masks, batch_size=None):  # the windows come with scale 1: scaled before the pipeline
        windows.extend(d["inputs"].shape[1:] for d in data if d["data_samples"].metainfo["scale_factor"] == (1.0, 1.0))
        return detect(data, masks, batch_size)

    reader._detect = recording
    image = load_image(synth_dir / "000001.jpg")
    boards = [(100.0, 100.0, 160.0, 113.0), (300.0, 200.0, 364.0, 240.0), (0.0, 0.0, 40.0, 20.0)]
    first = [_plate(None, board) for board in boards]
    plates, = reader._read_again([image], [reader.glyphs(image)], [first])
    assert len(plates) == len(first)
    expected = []
    for width, board in itertools.product((96, 128), boards):  # one pass a width
        (x1, y1, x2, y2), scale = zoom_window(board, image.shape[1::-1], width)
        expected.append((32 * math.ceil(round((y2 - y1) * scale) / 32), 32 * math.ceil(round((x2 - x1) * scale) / 32)))
    assert [tuple(window) for window in windows] == expected  # padded to the model's stride


def test_an_image_or_a_window_reads_the_same_among_others_of_other_shapes_as_alone(smoke_workdir, smoke_training,
                                                                                   synth_dir):
    """A batch is padded to its largest input: one read among larger ones (in a server's batch, or
    another board's window) read otherwise than alone. Inputs of one shape run together."""
    from alpr.reader import PlateReader, load_image

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0)
    reader = PlateReader.from_checkpoint(best, device="cpu", options=options)
    image = load_image(synth_dir / "000001.jpg")
    taller = np.concatenate([image, image])  # read at another shape
    alone, = reader.detect([image], masks=False)
    assert reader.detect([image, taller], masks=False)[0] == alone
    wide, square = (100.0, 100.0, 160.0, 113.0), (200.0, 100.0, 240.0, 140.0)
    window_alone, = reader.detect_windows([image], [(0, wide)], 128)
    assert reader.detect_windows([image], [(0, wide), (0, square)], 128)[0] == window_alone


def test_detections_without_masks_are_the_same_boxes_and_skip_the_mask_computation(smoke_workdir, smoke_training,
                                                                                  synth_dir):
    import torch
    from mmengine.dataset import pseudo_collate

    from alpr.mmdet_ext import boxes_only
    from alpr.reader import PlateReader, load_image

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0)
    reader = PlateReader.from_checkpoint(best, device="cpu", options=options)
    image = synth_dir / "000001.jpg"
    without, = reader.detect([image], masks=False)
    with_masks, = reader.detect([image])  # after the boxes-only call: masks are back
    assert without and all(d.mask is None for d in without) and all(d.mask for d in with_masks)
    assert without == [replace(d, mask=None) for d in with_masks]
    data = pseudo_collate([reader.pipeline(dict(img=load_image(image), img_id=0))])
    with torch.no_grad(), boxes_only(reader.model):
        result, = reader.model.test_step(data)
    # an 8 px speck rescaled to the image's size (240x320 read at 256 px), not a 240x320 mask
    assert max(result.pred_instances.masks.shape[1:]) <= 8 * 320 / 256


def test_a_board_is_read_at_no_more_widths_once_two_windows_agree_or_one_is_sure(smoke_workdir, smoke_training,
                                                                                synth_dir):
    """The windows' detections are scripted here (a 4-iteration model reads nothing): one board
    reads surely at the first width, one alike at the first two, and the last differently at each."""
    from alpr.reader import PlateReader, load_image

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(zoom_widths=(96, 128, 160), sure_score=0.8)
    reader = PlateReader.from_checkpoint(best, device="cpu", options=options)
    sure, alike, doubtful = (100.0, 100.0, 300.0, 140.0), (500.0, 300.0, 700.0, 340.0), (100.0, 500.0, 300.0, 540.0)
    texts = {sure: lambda width: "12A3456", alike: lambda width: "56C7890",
             doubtful: lambda width: f"34B567{width % 10}"}
    asked = []

    def scripted(arrays, boards, width):
        asked.append((width, [box for _, box in boards]))
        return [plate_detections(texts[box](width), *box[:2], char_score=0.95 if box == sure else 0.6 + width / 1000)
                for _, box in boards]

    reader.detect_windows = scripted
    # read with the scripted classes: a 4-iteration model's glyph classifier reads noise
    plates, = reader._read_again([load_image(synth_dir / "000001.jpg")], [None], [[_plate(None, box) for box in texts]])
    assert asked == [(96, [sure, alike, doubtful]), (128, [alike, doubtful]), (160, [doubtful])]
    assert [plate.text for plate in plates] == ["12A3456", "56C7890", "34B5670"]
    assert min(plates[1].char_scores) == pytest.approx(0.6 + 0.128 - 0.06)  # the surer of the two alike
    assert min(plates[2].char_scores) == pytest.approx(0.6 + 0.160 - 0.06)  # the surest of its three readings


def test_reading_in_mixed_precision_runs_the_network_in_bfloat16_and_leaves_the_model_as_it_was(
        smoke_workdir, smoke_training, synth_dir, monkeypatch):
    import torch

    import alpr.mmdet_ext
    from alpr.reader import PlateReader

    monkeypatch.setattr(alpr.mmdet_ext, "cpu_has_bfloat16", lambda: True)  # on any CPU: bfloat16 is what is tested

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0)
    plain = PlateReader.from_checkpoint(best, device="cpu", options=options)
    mixed = PlateReader.from_checkpoint(best, device="cpu", options=options, amp=True)
    convolutions = [module for module in mixed.model.modules() if isinstance(module, torch.nn.Conv2d)]
    computed = []
    convolutions[0].register_forward_hook(lambda module, inputs, output: computed.append(output.dtype))
    image = synth_dir / "000001.jpg"
    ours, = mixed.detect([image])
    assert computed == [torch.bfloat16]
    assert ours and all(d.mask for d in ours)  # boxes, scores and masks come out of float32 post-processing
    theirs, = plain.detect([image])
    assert max(d.score for d in ours) == pytest.approx(max(d.score for d in theirs), abs=0.05)
    mixed.amp = False
    mixed.detect([image])
    assert computed == [torch.bfloat16, torch.float32]  # the model is float32 again outside the reading


def test_the_reader_reads_each_image_s_characters_again_with_its_glyph_classifier(smoke_workdir, smoke_training,
                                                                                 synth_dir):
    """The model's detections and the glyph classifier's readings are scripted (a 4-iteration model
    reads nothing), each image's classifier reading every digit as that image's number: each image's
    characters, in the whole image and in its windows, are read again from that image."""
    from alpr.reader import PlateReader, load_image

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    reader = PlateReader.from_checkpoint(best, device="cpu", options=ReadOptions(zoom_widths=(320,)))
    reader.detect = lambda arrays, masks=False: [plate_detections("12A3456") for _ in arrays]
    reader.detect_windows = lambda arrays, boards, width: [plate_detections("12A3456") for _ in boards]
    images = [synth_dir / "000001.jpg", synth_dir / "000002.jpg"]
    read_by = []

    def glyphs(image):
        read_by.append(image.shape)
        digit = len(read_by)  # 1 for the first image, 2 for the second
        return lambda boxes: np.eye(15, dtype=np.float32)[[digit, digit, 10, digit, digit, digit, digit]]

    reader.glyphs = glyphs
    assert [[plate.text for plate in plates] for plates in reader.predict_batch(images)] == [["11A1111"], ["22A2222"]]
    assert read_by == [load_image(image).shape for image in images]
    assert reader.glyph_net is not None  # and the real one is there to read with


def test_threads_sharing_a_reader_run_the_model_one_at_a_time(smoke_workdir, smoke_training, synth_dir):
    """A call patches the shared model for its length (boxes only, reduced precision): a second thread's
    call inside it would read with the first one's patch. Each call here lingers in the model, so that
    without the lock the other thread's would overlap it."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from alpr.reader import PlateReader

    best = smoke_workdir / "runs" / "r1" / "train" / "best.pth"
    options = ReadOptions(board_threshold=0.0, char_threshold=0.0, region_threshold=0.0, zoom_widths=())
    reader = PlateReader.from_checkpoint(best, device="cpu", options=options)
    inside, most_inside, step = [], [], reader.model.test_step

    def lingering_step(data):
        inside.append(1)
        most_inside.append(len(inside))
        time.sleep(0.3)
        try:
            return step(data)
        finally:
            inside.pop()

    reader.model.test_step = lingering_step
    with ThreadPoolExecutor(2) as pool:
        masked, boxed = pool.submit(reader.detect, [synth_dir / "000001.jpg"]), pool.submit(
            reader.detect, [synth_dir / "000001.jpg"], False)
        masked, boxed = masked.result()[0], boxed.result()[0]
    assert max(most_inside) == 1 and len(most_inside) == 2
    assert masked and boxed and all(d.mask for d in masked) and all(d.mask is None for d in boxed)
