from dataclasses import replace

import pytest

from alpr.postprocess import Detection, ReadOptions, read_plates, usable
from handmade import plate_detections as _plate


def test_one_row_plate_is_read_left_to_right():
    dets = _plate("12A3456")
    [plate] = read_plates(dets[::-1])  # detection order must not matter
    assert (plate.text, plate.region, plate.vehicle_type, plate.serial) == ("12A3456", "12", "A", "3456")
    assert plate.layout == "one-row" and plate.reason is None and plate.bbox == (0, 0, 200, 40)
    assert plate.char_scores == pytest.approx((0.95, 0.94, 0.93, 0.92, 0.91, 0.9, 0.89))


def test_two_row_plate_reads_sub_text_then_serial():
    [plate] = read_plates(_plate("98E0001", layout="two-row"))
    assert plate.text == "98E0001" and plate.layout == "two-row"


@pytest.mark.parametrize("layout, label, box", [
    ("two-row", "r_s_n", (5, 3, 115, 55)),  # a loose sub-text box over the serial's centres
    ("two-row", "r_s_n", (5, 3, 115, 62)),  # ... over the serial's whole boxes
    ("two-row", "r_s_n", (5, 3, 115, 67)),  # ... over the whole main text
    ("two-row", "r_m_n", (5, 3, 115, 67)),  # a loose main-text box over the whole sub text
    ("one-row", "l_m_n", (2, 5, 195, 35)),
    ("one-row", "l_s_n", (5, 5, 195, 35)),
])
def test_a_character_both_regions_hold_goes_to_the_one_covering_more_of_it_else_the_smaller(layout, label, box):
    """Where a loose region box reaches over the other region's text, each character still reads in
    its own: the one covering more of its box, and of two covering all of it, the smaller."""
    text = "34B5678"
    loose = [Detection(label, 0.8, box) if d.label == label else d for d in _plate(text, layout=layout)]
    [plate] = read_plates(loose)
    assert plate.text == text and plate.layout == layout, plate.reason


@pytest.mark.parametrize("region", ["l_s_n", "l_m_n"])
def test_a_plate_unread_for_a_missing_region_gives_its_character_scores_left_to_right(region):
    """As every other plate does; the characters scoring higher to the right, score order is the reverse."""
    dets = [d for d in _plate("12A3456") if d.label != region]
    chars = sorted((d for d in dets if len(d.label) == 1), key=lambda d: d.centre[0])
    rescored = [replace(d, score=0.5 + 0.05 * i) for i, d in enumerate(chars)]
    [plate] = read_plates([d for d in dets if len(d.label) != 1] + rescored[::-1])
    assert plate.text is None and plate.reason.endswith("region not found")
    assert plate.char_scores == pytest.approx(tuple(0.5 + 0.05 * i for i in range(7)))


def test_missing_character_is_not_guessed():
    [plate] = read_plates(_plate("12A3456", drop=4))
    assert plate.text is None and not plate.readable
    assert "expected 3 sub-text and 4 main-text" in plate.reason and "'356'" in plate.reason


def test_extra_character_is_reported():
    extra = Detection("7", 0.9, (140, 8, 155, 32))  # a second glyph between two serial digits
    [plate] = read_plates(_plate("12A3456", extra=extra))
    assert plate.text is None and "'34756'" in plate.reason


def test_a_character_on_the_board_but_in_neither_text_region_is_reported():
    stray = Detection("7", 0.9, (84, 8, 96, 32))  # centred at x 90: between the sub text (5-85) and the main (95-195)
    [plate] = read_plates(_plate("12A3456", extra=stray))
    assert plate.text is None and plate.reason == "1 character(s) outside both text regions"


def test_duplicate_detection_of_one_character_is_merged():
    dup = Detection("4", 0.5, (128, 9, 143, 31))  # overlaps the '4' box heavily
    [plate] = read_plates(_plate("12A3456", extra=dup))
    assert plate.text == "12A3456"


def test_two_boxes_on_one_glyph_are_one_character_though_their_iou_is_low():
    dup = Detection("8", 0.5, (151, 20, 167, 27))  # a short box on the '5' glyph (152-168 x 8-32): IoU 0.27
    [plate] = read_plates(_plate("12A3456", extra=dup))
    assert plate.text == "12A3456" and len(plate.char_scores) == 7


def test_letter_in_the_wrong_place_is_rejected():
    [plate] = read_plates(_plate("1A23456"))
    assert plate.text is None and "region must be two digits" in plate.reason
    [plate] = read_plates(_plate("12A3B56"))
    assert plate.text is None and "serial must be four digits" in plate.reason


def test_two_plates_side_by_side_are_read_separately():
    dets = _plate("11B2222", x=0) + _plate("33C4444", x=260, layout="two-row")
    plates = read_plates(dets)
    assert sorted(p.text for p in plates) == ["11B2222", "33C4444"]


def test_two_plates_close_one_above_the_other_are_both_read():
    """A tilted plate's straight box takes in a close neighbour's characters, outside its own text
    regions: characters on another board are that board's, not strays that leave this one unread."""
    upper, lower = _plate("11B2222"), _plate("33C4444", y=25)
    first = next(i for i, d in enumerate(lower) if d.label == "3")  # the lower plate's raised end
    x1, y1, x2, y2 = lower[first].bbox
    lower[first] = replace(lower[first], bbox=(x1, y1 - 7, x2, y2 - 7))  # its centre on the upper board
    assert sorted(p.text for p in read_plates(upper + lower)) == ["11B2222", "33C4444"]
    stray = Detection("5", 0.9, (100, 34, 108, 40))  # below the upper's regions, on no other board
    [plate] = read_plates(upper + [stray])
    assert plate.reason == "1 character(s) outside both text regions"


def test_a_close_plates_character_reaching_into_a_row_is_another_glyph_not_a_better_copy():
    """The lower plate's raised end reaches into the upper plate's sub-text at its first character's x:
    sharing its width but little of its height, it is no second box on that glyph, which its higher
    score would have replaced (the upper plate read 31B2222). Now the row holds four: unread."""
    upper, lower = _plate("11B2222"), _plate("33C4444", y=25, char_score=0.97)
    first = next(i for i, d in enumerate(lower) if d.label == "3")
    x1, y1, x2, y2 = lower[first].bbox
    lower[first] = replace(lower[first], bbox=(x1, y1 - 12, x2, y2 - 12))  # its centre in the upper's sub text
    top, bottom = read_plates(upper + lower)
    assert top.text is None and top.reason.startswith("read '311B' + '2222'") and bottom.text == "33C4444"
    taller = Detection("1", 0.99, (x1, 0, x2, 22))  # a second, taller box on the upper's first glyph
    assert read_plates(_plate("11B2222") + [taller])[0].text == "11B2222"


def test_board_without_text():
    plates = read_plates([Detection("l_board", 0.9, (0, 0, 200, 40))])
    assert len(plates) == 1 and plates[0].reason == "no characters found on the board"


def test_low_scores_are_ignored_and_missing_region_reported():
    assert read_plates(_plate("12A3456", score=0.1)) == []
    dets = [d for d in _plate("12A3456") if d.label != "l_s_n"]
    [plate] = read_plates(dets)
    assert plate.reason == "sub-text (DDL) region not found"


def test_usable_keeps_each_kind_above_its_own_threshold():
    options = ReadOptions(board_threshold=0.5, char_threshold=0.4, region_threshold=0.3)
    kept = {(d.label, d.score) for d in usable([Detection(label, score, (0, 0, 10, 10))
                                                for label in ("l_board", "7", "l_s_n") for score in (0.35, 0.45)],
                                               options)}
    assert kept == {("7", 0.45), ("l_s_n", 0.35), ("l_s_n", 0.45)}


def test_plate_json_shape():
    [plate] = read_plates(_plate("12A3456"))
    data = plate.to_dict()
    assert set(data) == {"text", "region", "vehicle_type", "serial", "layout", "bbox", "score", "char_scores",
                         "reason"}
    assert data["bbox"] == [0, 0, 200, 40]


def _replace(dets: list[Detection], found: dict[int, list[tuple[str, float]]]) -> list[Detection]:
    """The plate's characters at the given positions (in reading order) replaced by what was found on their boxes."""
    chars = [d for d in dets if len(d.label) == 1]
    kept = [d for d in dets if not any(d is chars[i] for i in found)]
    return kept + [Detection(label, score, chars[i].bbox) for i, labels in found.items() for label, score in labels]


def test_a_position_reads_the_models_best_class_of_the_kind_the_format_puts_there():
    # 8 is the first choice on the letter's glyph, B the best letter there; on a serial digit, D before 0
    dets = _replace(_plate("12B3456"), {2: [("8", 0.7), ("b", 0.4), ("e", 0.1)], 3: [("d", 0.6), ("0", 0.5)]})
    [plate] = read_plates(dets)
    assert plate.text == "12B0456" and plate.reason is None
    assert plate.char_scores[2] == pytest.approx(0.4) and plate.char_scores[3] == pytest.approx(0.5)


def test_a_character_of_the_wrong_kind_with_no_alternative_there_leaves_the_plate_unread():
    # a detection under the character threshold on the same glyph is no alternative: a misread is worse
    # than a plate left unread (read, the 7 would make 72A3456 and the A 12A3456)
    [plate] = read_plates(_replace(_plate("12A3456"), {0: [("c", 0.8), ("7", 0.2)]}))
    assert plate.text is None and plate.reason == "'C2A3456': region must be two digits 0-9, got 'C2'"
    [plate] = read_plates(_replace(_plate("12A3456"), {2: [("5", 0.8), ("a", 0.2)]}))
    assert plate.text is None and plate.reason == "'1253456': vehicle type must be one of A-E, got '5'"
    [plate] = read_plates(_replace(_plate("12A3456"), {3: [("b", 0.95), ("8", 0.06)]}))
    assert plate.text is None and plate.reason == "'12AB456': serial must be four digits 0-9, got 'B456'"


def test_the_reading_api_is_importable_from_alpr_without_torch():
    """README's `from alpr import PlateReader, ReadOptions`; the package itself stays light."""
    import subprocess
    import sys

    code = ("import sys, alpr; from alpr import Plate, ReadOptions; from alpr.postprocess import ReadOptions as R; "
            "assert ReadOptions is R and 'torch' not in sys.modules; assert set(alpr.__all__) >= "
            "{'Plate', 'PlateReader', 'ReadOptions'}")
    subprocess.run([sys.executable, "-c", code], check=True)
