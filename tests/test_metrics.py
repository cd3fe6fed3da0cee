import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alpr.metrics import (coco_aps, dv_iou, evaluate, mask_rle, metric_lines, metric_names, misread_summary,
                          plate_metrics, rle_counts, third_boxes, width_bin, width_summary)
from alpr.plates import CLASSES
from alpr.postprocess import Detection, Plate

H, W = 100, 200


def _mask(polygon) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.int32(polygon)], 1)
    return mask


RECT = [(20, 20), (120, 20), (120, 60), (20, 60)]
SLANT = [(20, 20), (40, 20), (120, 60), (100, 60)]  # same bounding box as RECT, other shape


def _gt(anns) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": W, "height": H, "file_name": "a.jpg"}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
        "annotations": [{"id": k + 1, "image_id": 1, "iscrowd": 0, **a} for k, a in enumerate(anns)],
    }
    coco.createIndex()
    return coco


def _ann(label, polygon, **extra):
    """A ground-truth annotation whose mask is rasterised exactly as _mask does it (RLE)."""
    mask = _mask(polygon)
    ys, xs = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    return {"category_id": CLASSES.index(label) + 1, "segmentation": rle,
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())],
            "area": float(mask.sum()), **extra}


def test_third_boxes_of_a_rectangle():
    boxes = third_boxes(_mask(RECT))
    assert boxes.shape == (6, 4)
    assert dv_iou(boxes, boxes) == 1.0
    # every third spans the rectangle's full extent along the other axis
    assert boxes[0][0] == 20 and boxes[0][2] == 121 and boxes[3][1] == 20 and boxes[3][3] == 61


def _third_boxes_by_contours(mask: np.ndarray) -> np.ndarray:
    """DESIGN.md's definition, literally: boxes around thirds of the outer contour points."""
    padded = np.pad(mask, 1)  # contours of pixels on the image's edge
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(-1, -1))
    if not contours:
        return np.zeros((6, 4))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
    boxes = []
    for axis in (1, 0):
        low, high = points[:, axis].min(), points[:, axis].max() + 1
        third = np.minimum(((points[:, axis] - low) * 3 / (high - low)).astype(int), 2)
        for k in range(3):
            part = points[third == k] if (third == k).any() else points
            boxes.append((*part.min(0), *(part.max(0) + 1)))
    return np.asarray(boxes)


def _random_mask(rng, height: int, width: int) -> np.ndarray:
    """Blobs, outlines, rings with a dot inside, speckle: shapes with holes, gaps and thin parts."""
    mask = np.zeros((height, width), np.uint8)
    kind = rng.integers(0, 4)
    for _ in range(rng.integers(1, 4)):
        points = rng.integers(0, (width, height), size=(rng.integers(3, 7), 2)).astype(np.int32)
        if kind == 0:
            cv2.fillPoly(mask, [points], 1)
        elif kind == 1:
            cv2.polylines(mask, [points], True, 1, 1)
        elif kind == 2:
            cv2.fillPoly(mask, [points], 1)
            cv2.fillPoly(mask, [points // 2 + 2], 0)
            mask[min(points[0, 1] // 2 + 3, height - 1), min(points[0, 0] // 2 + 3, width - 1)] = 1
        else:
            mask[rng.random((height, width)) < 0.03] = 1
    return mask


def test_third_boxes_from_runs_equal_the_contour_definition():
    rng = np.random.default_rng(7)
    for _ in range(600):
        mask = _random_mask(rng, int(rng.integers(1, 50)), int(rng.integers(1, 50)))
        expected = _third_boxes_by_contours(mask)
        assert np.array_equal(third_boxes(mask), expected), mask
        assert np.array_equal(third_boxes(mask_rle(mask)), expected)


def test_rle_counts_reads_pycocotools_strings():
    rng = np.random.default_rng(3)
    for _ in range(200):
        mask = _random_mask(rng, int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        changes = np.flatnonzero(np.diff(mask.T.ravel(), prepend=0))  # column-major, background first
        expected = np.diff(changes, prepend=0, append=mask.size).tolist()
        assert rle_counts(mask_rle(mask)["counts"]) == expected


def test_dv_iou_tells_shapes_apart_that_box_iou_does_not():
    rect, slant = third_boxes(_mask(RECT)), third_boxes(_mask(SLANT))
    assert 0.2 < dv_iou(rect, slant) < 0.8


def test_dv_iou_by_hand_and_as_a_matrix():
    square, shifted = np.tile([0.0, 0, 2, 2], (6, 1)), np.tile([1.0, 0, 3, 2], (6, 1))
    assert dv_iou(square, shifted) == pytest.approx(1 / 3)  # each box: overlap 2, union 6
    assert dv_iou(np.zeros((6, 4)), np.zeros((6, 4))) == 0.0  # empty masks overlap nothing
    stack = np.stack([square, shifted, third_boxes(_mask(RECT)), third_boxes(_mask(SLANT))])
    matrix = dv_iou(stack[:3], stack)
    assert matrix.shape == (3, 4)
    assert np.allclose(matrix, [[dv_iou(x, y) for y in stack] for x in stack[:3]])


def test_dv_map_is_one_for_the_right_shape_and_low_for_a_wrong_one():
    gt = _gt([_ann("l_board", RECT)])
    right = {1: [Detection("l_board", 0.9, (20, 20, 121, 61), _mask(RECT))]}
    wrong = {1: [Detection("l_board", 0.9, (20, 20, 121, 61), _mask(SLANT))]}
    good, bad = coco_aps(gt, right), coco_aps(gt, wrong)
    assert good["dv_mAP"] == pytest.approx(1.0) and good["bbox_mAP"] > 0.9
    assert bad["bbox_mAP"] > 0.9 and bad["dv_mAP"] < 0.5


def test_eir_counts_only_exact_reads_and_reports_layouts():
    gt = _gt([_ann("l_board", [(0, 0), (90, 0), (90, 30), (0, 30)], text="12A3456"),
              _ann("r_board", [(100, 0), (190, 0), (190, 60), (100, 60)], text="34B5678"),
              _ann("1", [(5, 5), (15, 5), (15, 25), (5, 25)])])
    plates = {1: [Plate("12A3456", "12", "A", "3456", "one-row", (0, 0, 90, 30), 0.9, (0.9,) * 7),
                  Plate("34B5679", "34", "B", "5679", "two-row", (100, 0, 190, 60), 0.8, (0.9,) * 7)]}
    chars = {1: [Detection("7", 0.9, (5, 5, 15, 25))]}  # right place, wrong class
    metrics = plate_metrics(gt, plates, chars)
    assert metrics["EIR"] == 0.5
    assert metrics["EIR_one_row"] == 1.0 and metrics["EIR_two_row"] == 0.0
    assert metrics["plate_precision"] == 1.0 and metrics["plate_recall"] == 1.0
    assert metrics["char_accuracy"] == 0.0
    assert metrics["confusion"][1][7] == 1
    assert metrics["outcomes"] == {"read exactly": 1, "misread": 1}
    assert metrics["misread_characters"] == {"8->9": 1}  # the misread plate's one wrong character
    assert misread_summary(metrics) == "8->9 1"
    assert misread_summary(plate_metrics(gt, {1: plates[1][:1]}, chars)) == "none"


def test_plates_not_read_exactly_are_listed_and_counted_by_width():
    gt = _gt([_ann("l_board", [(0, 0), (90, 0), (90, 30), (0, 30)], text="12A3456"),  # 91 px wide
              _ann("r_board", [(60, 40), (190, 40), (190, 90), (60, 90)], text="34B5678"),  # 131 px
              _ann("l_board", [(100, 0), (190, 0), (190, 30), (100, 30)], text="56C7890")])  # 91 px, not found
    plates = {1: [Plate("12A3456", "12", "A", "3456", "one-row", (0, 0, 91, 31), 0.9, (0.9,) * 7),
                  Plate("34B5679", "34", "B", "5679", "two-row", (60, 40, 191, 91), 0.8, (0.9,) * 7)]}
    metrics = plate_metrics(gt, plates, {})
    assert metrics["EIR_by_width"] == {"<96 px": {"plates": 2, "EIR": 0.5}, "128-192 px": {"plates": 1, "EIR": 0.0}}
    assert width_summary(metrics) == "<96 px 0.500 of 2, 128-192 px 0.000 of 1"
    assert metrics["misses"] == [
        {"image": "a.jpg", "bbox": [60.0, 40.0, 191.0, 91.0], "layout": "two-row", "true": "34B5678",
         "read": "34B5679", "outcome": "misread"},
        {"image": "a.jpg", "bbox": [100.0, 0.0, 191.0, 31.0], "layout": "one-row", "true": "56C7890",
         "read": None, "outcome": "not found"}]
    assert [width_bin(w) for w in (95.9, 96, 127, 128, 255.5, 256, 1000)] == [
        "<96 px", "96-128 px", "96-128 px", "128-192 px", "192-256 px", ">=256 px", ">=256 px"]
    assert width_summary(plate_metrics(_gt([]), {}, {})) == "no plates"


def test_plots_leave_no_picture_of_misses_where_every_plate_was_read(tmp_path):
    from alpr.evaluate import plot

    gt = _gt([_ann("r_board", RECT, text="12A3456")])
    read = {1: [Plate("12A3456", "12", "A", "3456", "two-row", (20, 20, 121, 61), 0.9, (0.9,) * 7)]}
    (tmp_path / "misses.png").write_bytes(b"an earlier evaluation's")
    written = plot(tmp_path, gt, read, evaluate(gt, {1: []}, read), tmp_path)
    assert [p.name for p in written] == ["precision_recall.png", "confusion.png", "layouts.png", "widths.png"]
    assert not (tmp_path / "misses.png").exists()


def test_aps_per_layout_ignore_the_other_layouts_plates_but_not_stray_detections():
    one_row, char = [(0, 0), (90, 0), (90, 30), (0, 30)], [(5, 5), (15, 5), (15, 25), (5, 25)]
    two_row, stray = [(100, 0), (190, 0), (190, 60), (100, 60)], [(50, 60), (60, 60), (60, 80), (50, 80)]
    gt = _gt([_ann("l_board", one_row, text="12A3456"), _ann("1", char), _ann("r_board", two_row, text="34B5678")])

    def detection(label, polygon, score):
        x, y, w, h = _ann(label, polygon)["bbox"]
        return Detection(label, score, (x, y, x + w, y + h), _mask(polygon))

    # the two-row board is missed, and a "1" on no plate outscores the true one
    found = {1: [detection("l_board", one_row, 0.9), detection("1", char, 0.9), detection("1", stray, 0.95)]}
    aps = coco_aps(gt, found)
    for kind in ("bbox_mAP", "segm_mAP", "dv_mAP"):
        # per class: l_board 1, "1" 0.5 (its first detection is wrong), r_board 0
        assert aps[kind] == pytest.approx(0.5, abs=1e-6), kind
        assert aps[kind + "_one_row"] == pytest.approx(0.75, abs=1e-6), kind
        assert aps[kind + "_two_row"] == pytest.approx(0.0), kind


def test_a_layouts_aps_ignore_detections_on_the_other_layouts_plates_at_every_threshold():
    one_row, char = [(0, 0), (90, 0), (90, 30), (0, 30)], [(5, 5), (15, 5), (15, 25), (5, 25)]
    two_row, other_char = [(100, 0), (190, 0), (190, 60), (100, 60)], [(105, 5), (115, 5), (115, 25), (105, 25)]
    sloppy = [(x, y + 3) for x, y in other_char]  # box IoU 0.75: a match at IoU 0.5-0.75 only
    gt = _gt([_ann("l_board", one_row, text="12A3456"), _ann("1", char),
              _ann("r_board", two_row, text="34B5678"), _ann("1", other_char)])

    def detection(label, polygon, score):
        x, y, w, h = _ann(label, polygon)["bbox"]
        return Detection(label, score, (x, y, x + w, y + h), _mask(polygon))

    found = {1: [detection("l_board", one_row, 0.9), detection("1", char, 0.9),
                 detection("r_board", two_row, 0.9), detection("1", sloppy, 0.95)]}
    aps = coco_aps(gt, found)
    for kind in ("bbox_mAP", "segm_mAP", "dv_mAP"):
        assert aps[kind + "_one_row"] == pytest.approx(1.0), kind  # the one-row plate's detections are exact
    # two-row: r_board 1, its "1" matched at 6 of the 10 IoU thresholds
    assert aps["bbox_mAP_two_row"] == pytest.approx(0.8, abs=1e-6)


def test_segm_and_dv_map_are_not_scored_on_detections_without_masks():
    gt = _gt([_ann("l_board", RECT, text="12A3456")])
    x, y, w, h = gt.anns[1]["bbox"]
    aps = coco_aps(gt, {1: [Detection("l_board", 0.9, (x, y, x + w, y + h))]})
    assert aps["bbox_mAP"] == pytest.approx(1.0)
    assert aps["segm_mAP"] == aps["dv_mAP"] == 0.0


def test_per_layout_precision_counts_plates_by_the_layout_read_and_characters_by_their_plate():
    one_row = [(0, 0), (90, 0), (90, 30), (0, 30)]
    other_one_row = [(100, 0), (190, 0), (190, 30), (100, 30)]
    gt = _gt([_ann("l_board", one_row, text="12A3456"), _ann("l_board", other_one_row, text="34B5678"),
              _ann("1", [(5, 5), (15, 5), (15, 25), (5, 25)]), _ann("3", [(105, 5), (115, 5), (115, 25), (105, 25)])])
    plates = {1: [Plate("12A3456", "12", "A", "3456", "one-row", (0, 0, 90, 30), 0.9, (0.9,) * 7),
                  Plate("34B5678", "34", "B", "5678", "two-row", (100, 0, 190, 30), 0.8, (0.9,) * 7)]}
    chars = {1: [Detection("1", 0.9, (5, 5, 15, 25)), Detection("8", 0.9, (105, 5, 115, 25))]}
    metrics = plate_metrics(gt, plates, chars)
    # both true plates are one-row; one was read as two-row: each layout's precision is 1 of its 1
    assert metrics["plate_recall_one_row"] == 1.0 and metrics["plates_two_row"] == 0
    assert metrics["plate_precision_one_row"] == metrics["plate_precision_two_row"] == 1.0
    assert metrics["char_accuracy"] == metrics["char_accuracy_one_row"] == 0.5
    assert metrics["char_accuracy_two_row"] == 0.0


def test_a_character_counts_for_its_own_plate_where_a_neighbours_box_holds_it_too():
    """A tilted two-row plate's character inside its one-row neighbour's straight box: by its group_id, as
    record writes it, it is the two-row plate's; by the first box holding its centre it was the one-row's."""
    from alpr.metrics import annotation_layouts, true_plates

    one_row, two_row = _rect((0, 0, 100, 30)), _rect((80, 10, 160, 70))
    char = _ann("7", _rect((85, 15, 95, 28)), group_id=2)  # its centre on both boards
    gt = _gt([_ann("l_board", one_row, text="12A3456", group_id=1), _ann("r_board", two_row, group_id=2), char])
    metrics = plate_metrics(gt, {}, {1: [Detection("7", 0.9, (85, 15, 95, 28))]})
    assert metrics["char_accuracy_two_row"] == 1.0 and metrics["char_accuracy_one_row"] == 0.0
    layouts = annotation_layouts(gt, {1: true_plates(gt, 1)})
    assert layouts[3].value == "two-row"
    ungrouped = _gt([_ann("l_board", one_row, text="12A3456"), _ann("r_board", two_row), {**char, "group_id": None}])
    assert annotation_layouts(ungrouped, {1: true_plates(ungrouped, 1)})[3].value == "one-row"  # the box's
    reused = _gt([_ann("l_board", one_row, text="12A3456", group_id=2), _ann("r_board", two_row, group_id=2), char])
    assert annotation_layouts(reused, {1: true_plates(reused, 1)})[3].value == "one-row"  # one group, two boards


def test_metric_names_are_the_numbers_evaluate_returns():
    gt = _gt([_ann("r_board", RECT, text="12A3456")])
    metrics = evaluate(gt, {1: [Detection("r_board", 0.9, (20, 20, 121, 61), _mask(RECT))]}, {1: []})
    assert {k for k, v in metrics.items() if isinstance(v, (int, float))} == set(metric_names())


def test_unmatched_and_unread_plates():
    gt = _gt([_ann("l_board", [(0, 0), (90, 0), (90, 30), (0, 30)], text="12A3456")])
    far = {1: [Plate("12A3456", "12", "A", "3456", "one-row", (100, 60, 190, 90), 0.9, ())]}
    unread = {1: [Plate(None, None, None, None, "one-row", (0, 0, 90, 30), 0.9, (), "no characters")]}
    assert plate_metrics(gt, far, {})["EIR"] == 0.0 and plate_metrics(gt, far, {})["plate_precision"] == 0.0
    assert plate_metrics(gt, unread, {})["EIR"] == 0.0 and plate_metrics(gt, unread, {})["plate_recall"] == 1.0
    assert plate_metrics(gt, far, {})["outcomes"] == {"not found": 1}
    assert plate_metrics(gt, unread, {})["outcomes"] == {"unread: no characters": 1}
    short = {1: [Plate(None, None, None, None, "one-row", (0, 0, 90, 30), 0.9, (),
                       "read '12' + '3456': expected 3 sub-text and 4 main-text characters")]}
    # like reasons count together: their particulars are left out
    assert plate_metrics(gt, short, {})["outcomes"] == {
        "unread: read ... + ...: expected N sub-text and N main-text characters": 1}


def _rect(box):
    return [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]


def test_a_board_without_recorded_text_is_what_its_characters_spell_and_text_off_the_format_is_never_read():
    """Hand-labelled data may name no text on its boards; a text that is no plate can never be read exactly."""
    from handmade import plate_detections

    spelled = _gt([_ann(d.label, _rect(d.bbox)) for d in plate_detections("12A3456")])
    read = Plate("12A3456", "12", "A", "3456", "one-row", (0, 0, 200, 40), 0.9, (0.9,) * 7)
    misread = Plate("12A3457", "12", "A", "3457", "one-row", (0, 0, 200, 40), 0.9, (0.9,) * 7)
    assert plate_metrics(spelled, {1: [read]}, {})["EIR"] == 1.0
    assert plate_metrics(spelled, {1: [misread]}, {})["EIR"] == 0.0
    bogus = _gt([_ann("l_board", _rect((0, 0, 199, 40)), text="bogus")])
    assert plate_metrics(bogus, {1: [read]}, {})["EIR"] == 0.0
    assert plate_metrics(bogus, {1: [read]}, {})["outcomes"] == {"misread": 1}


def test_boards_without_recorded_text_one_above_the_other_are_both_spelled():
    """A tilted plate's straight box takes in its neighbour's raised end: on another board, that character is
    the neighbour's, as when reading (postprocess), not a stray that left the truth unspelled."""
    from dataclasses import replace

    from handmade import plate_detections

    from alpr.metrics import true_plates

    upper, lower = plate_detections("11B2222"), plate_detections("33C4444", y=25)
    first = next(i for i, d in enumerate(lower) if d.label == "3")
    x1, y1, x2, y2 = lower[first].bbox
    lower[first] = replace(lower[first], bbox=(x1, y1 - 7, x2, y2 - 7))  # its centre on the upper board
    gt = _gt([_ann(d.label, _rect(d.bbox)) for d in upper + lower])
    assert sorted(p.text for p in true_plates(gt, 1)) == ["11B2222", "33C4444"]


def test_a_split_file_that_is_no_coco_file_is_named_in_the_error(tmp_path):
    from alpr.errors import AlprError
    from alpr.metrics import load_ground_truth

    cut = tmp_path / "val.json"
    cut.write_text('{"images": [{"id": 1, ')
    with pytest.raises(AlprError, match=f"{cut}: not valid JSON"):
        load_ground_truth(cut)
    for text in ('{"images": [{"width": 5}], "annotations": [], "categories": []}', '[{"id": 1}]', '"x"'):
        cut.write_text(text)
        with pytest.raises(AlprError, match=f"{cut}: not a COCO file"):
            load_ground_truth(cut)


def test_the_precision_recall_curve_of_exact_reads_falls_with_the_board_score():
    from alpr.metrics import plate_pr_curve

    boxes = [(0, 0, 60, 20), (70, 0, 130, 20), (140, 0, 199, 20)]
    gt = _gt([_ann("l_board", _rect(box), text="12A3456") for box in boxes])
    plates = {1: [Plate("12A3456", "12", "A", "3456", "one-row", boxes[0], 0.9, (0.9,) * 7),  # read exactly
                  Plate("12A3457", "12", "A", "3457", "one-row", boxes[1], 0.8, (0.9,) * 7)]}  # misread
    precision, recall = plate_pr_curve(gt, plates)
    assert precision.tolist() == [1.0, 0.5] and recall.tolist() == pytest.approx([1 / 3, 1 / 3])


def test_metric_lines_parse_with_katibs_default_regex():
    import re

    katib = re.compile(r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)")
    gt = _gt([_ann("l_board", RECT, text="12A3456")])
    metrics = evaluate(gt, {1: [Detection("l_board", 0.9, (20, 20, 121, 61), _mask(RECT))]}, {1: []})
    found = {m.group(1): float(m.group(2)) for m in katib.finditer(metric_lines(metrics))}
    assert set(found) == {"mAP", "dv_mAP", "EIR"} and found["dv_mAP"] == pytest.approx(1.0, abs=1e-6)
