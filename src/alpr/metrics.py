"""Detection and plate-reading metrics, shared by validation during training and the evaluate step.

- ``bbox_mAP`` / ``segm_mAP``: COCO AP over IoU 0.50:0.95 (pycocotools); ``mAP`` is ``segm_mAP``.
- ``dv_mAP``: the same AP, but a detection's overlap with a ground-truth instance is the
  *dv-IoU* of their masks (see :func:`dv_iou`), so a right box with a wrong shape scores low.
- ``EIR``, the exact inference rate: ground-truth plates read exactly (every character right,
  board matched at box IoU >= 0.5) / ground-truth plates.
- ``char_accuracy``: ground-truth characters whose detection, of any class and score, matched to
  it (box IoU >= 0.5, surest detections first, as for the confusion matrix) has its class /
  ground-truth characters. A figure of the detector: the glyph classifier reads the characters of
  plates again (``misread_characters`` counts what the reading got wrong).
- ``plate_precision`` / ``plate_recall``: plate boards found, at box IoU >= 0.5.
- ``outcomes``: what became of each ground-truth plate: read exactly, misread, not found, or
  unread and why.
- ``misread_characters``: in the misread plates, each wrong character as ``"true->read"`` and
  how often (``"8->B": 3``), most frequent first.
- ``EIR_by_width``: the EIR of the ground-truth plates by their width in the image (``"96-128 px":
  {"plates": 40, "EIR": 0.95}``), bins of :data:`WIDTH_BINS` that hold plates, narrowest first.
- ``misses``: each ground-truth plate not read exactly: its image, box, layout, true text, the
  text read (None where none was) and its outcome, in the images' order.
The APs, EIR, character accuracy and plate precision and recall are also reported per layout
(``EIR_one_row``, ``dv_mAP_two_row``, ...): ground-truth plates and their characters by their own
layout, predicted plates (for precision) by the layout they were read as; a layout's APs ignore
the other layout's plates (see :func:`_layout_aps`).
:func:`metric_names` lists them all.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from alpr.errors import UsageError, read_json
from alpr.plates import (BOARD_LABELS, CHARACTER_CLASSES, CLASSES, MAIN_LABELS, SUB_LABELS, Layout, PlateFormatError,
                         parse_plate)
from alpr.postprocess import Detection, Plate, box_iou, read_board

MATCH_IOU = 0.5


# ---------------------------------------------------------------- dv-IoU


def third_boxes(mask) -> np.ndarray:
    """Six boxes that describe a mask's shape: (6, 4) as x1, y1, x2, y2. The mask is an array or
    a COCO RLE.

    Take the mask's boundary points (every pixel on its outer contours). Slice the mask's
    y extent into three equal thirds; the points in each third get their bounding box (pixel
    boxes: max + 1). Do the same along x. A rectangle and a slanted quad with the same
    bounding box get different thirds, so they differ here.

    Each row's and each column's outermost pixels lie on the outer contour, and every contour
    point is a pixel of the mask, so each third's box is the box of the mask's pixels in it:
    computed here from the RLE's runs, without drawing the mask or tracing its contours.
    """
    column, top, bottom = _column_segments(mask if isinstance(mask, dict) else mask_rle(mask))
    if len(column) == 0:
        return np.zeros((6, 4))
    left, right, low, high = column[0], column[-1] + 1, top.min(), bottom.max()
    whole = (left, low, right, high)  # the box of a third without points (a mask one or two pixels thin)
    boxes = []
    row_thirds = _thirds(np.arange(low, high), low, high)
    for first, last in zip(np.searchsorted(row_thirds, range(3)), np.searchsorted(row_thirds, range(3), "right")):
        a, b = low + first, low + last
        hit = (top < b) & (bottom > a)
        boxes.append((column[hit].min(), max(top[hit].min(), a), column[hit].max() + 1, min(bottom[hit].max(), b))
                     if hit.any() else whole)
    cuts = np.searchsorted(_thirds(column, left, right), range(4))  # segments come column by column
    for a, b in zip(cuts[:-1], cuts[1:]):
        boxes.append((column[a], top[a:b].min(), column[b - 1] + 1, bottom[a:b].max()) if b > a else whole)
    return np.asarray(boxes, dtype=np.float64)


def _thirds(positions: np.ndarray, low: int, high: int) -> np.ndarray:
    """Which third of [low, high) each position falls in."""
    return np.minimum(((positions - low) * 3 / (high - low)).astype(int), 2)


def _column_segments(rle: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An RLE mask's pixels as vertical segments: each one's column, first row and the row after
    its last, column by column."""
    height = rle["size"][0]
    counts = rle["counts"]
    bounds = np.cumsum(rle_counts(counts) if isinstance(counts, (str, bytes)) else counts)
    # runs alternate: background first, then mask; a mask run can wrap into the next column
    starts, ends = bounds[0:len(bounds) - 1:2], bounds[1::2]
    first, last = starts // height, (ends - 1) // height
    columns = last - first + 1
    run = np.repeat(np.arange(len(starts)), columns)
    column = first[run] + np.arange(columns.sum()) - np.repeat(np.cumsum(columns) - columns, columns)
    top = np.where(column == first[run], starts[run] - first[run] * height, 0)
    bottom = np.where(column == last[run], ends[run] - last[run] * height, height)
    return column, top, bottom


def rle_counts(text: str | bytes) -> list[int]:
    """The run lengths in a compressed COCO RLE string: each count is 5-bit groups, low first, one
    character each (value + 48, bit 6 set while more follow, bit 5 of the last the sign); from the
    fourth count on, each is stored as its difference from the count two before."""
    data = text.encode() if isinstance(text, str) else text
    counts: list[int] = []
    position = 0
    while position < len(data):
        value = shift = 0
        while True:
            chunk = data[position] - 48
            position += 1
            value |= (chunk & 0x1F) << shift
            shift += 5
            if not chunk & 0x20:
                break
        if chunk & 0x10:
            value -= 1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def dv_iou(a: np.ndarray, b: np.ndarray):
    """dv-IoU of two masks' third boxes, (6, 4) each: the mean of the six box IoUs, pair by pair.
    Given stacks of them, (D, 6, 4) and (G, 6, 4), the (D, G) matrix of every pair's."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim == 3:
        a, b = a[:, None], b[None]
    inter = np.prod(np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None), -1)
    union = np.prod(a[..., 2:] - a[..., :2], -1) + np.prod(b[..., 2:] - b[..., :2], -1) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).mean(-1)
    return float(iou) if iou.ndim == 0 else iou


class DvCOCOeval(COCOeval):
    """COCOeval whose instance overlap is dv-IoU of segmentation masks."""

    def __init__(self, gt: COCO, dt: COCO):
        super().__init__(gt, dt, "segm")
        self._boxes: dict[tuple[str, int], np.ndarray] = {}

    def _third_boxes(self, kind: str, ann: dict) -> np.ndarray:
        key = (kind, ann["id"])
        if key not in self._boxes:
            coco = self.cocoGt if kind == "gt" else self.cocoDt
            self._boxes[key] = third_boxes(coco.annToRLE(ann))
        return self._boxes[key]

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: self.params.maxDets[-1]]
        g = np.stack([self._third_boxes("gt", x) for x in gts])
        d = np.stack([self._third_boxes("dt", x) for x in dts])
        return dv_iou(d, g)


# ---------------------------------------------------------------- COCO AP


def load_ground_truth(path) -> COCO:
    """A split's COCO file, without pycocotools' chatter on stdout (where the metric lines go); an
    error naming the file where it is no COCO file (pycocotools' own names neither file nor place)."""
    document = read_json(Path(path))
    gt = COCO()
    gt.dataset = document
    try:
        if not isinstance(document, dict):
            raise TypeError(f"a JSON {type(document).__name__}, not an object")
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
    except (KeyError, TypeError, AttributeError) as error:
        raise UsageError(f"{path}: not a COCO file: an object whose images, annotations and categories are "
                         f"lists of objects with ids ({type(error).__name__}: {error})") from None
    return gt


def mask_rle(mask) -> dict:
    """A mask as COCO RLE with text counts; an RLE dict is returned as it is. A column-major uint8
    mask (what :func:`alpr.mmdet_ext.to_detections` gives) is encoded without a copy."""
    if isinstance(mask, dict):
        return mask
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode()
    return rle


def coco_results(gt: COCO, detections: dict[int, list[Detection]]) -> list[dict]:
    results = []
    for image_id, dets in detections.items():
        for det in dets:
            x1, y1, x2, y2 = det.bbox
            result = {"image_id": image_id, "category_id": CLASSES.index(det.label) + 1,
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(det.score)}
            if det.mask is not None:
                result["segmentation"] = mask_rle(det.mask)
            results.append(result)
    return results


def _ap(evaluator: COCOeval) -> float:
    """AP at IoU 0.50:0.95 of an evaluator whose images are evaluated."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def _layout_aps(evaluator: COCOeval, gt_layout: dict[int, Layout | None],
                dt_layout: dict[int, Layout | None]) -> dict[Layout, float]:
    """AP per layout from one evaluation. Other layouts' plates are ignored as COCO ignores crowd
    regions: their ground truth, and the detections matched to it or, unmatched, lying on such a plate
    (:func:`annotation_layouts`). A detection on no plate counts against both layouts."""
    evaluated, aps = evaluator.evalImgs, {}
    for layout in Layout:
        other_gt = _flags(gt_layout, lambda of: of != layout)
        other_dt = _flags(dt_layout, lambda of: of not in (None, layout))  # on no plate: against both

        def ignored(e: dict) -> np.ndarray:
            matched = e["dtMatches"].astype(int)  # by annotation id; id 0 is "no match"
            return e["dtIgnore"] | other_gt[matched] | ((matched == 0) & other_dt[np.asarray(e["dtIds"], int)])

        evaluator.evalImgs = [e and {**e, "gtIgnore": np.logical_or(e["gtIgnore"], other_gt[e["gtIds"]]),
                                     "dtIgnore": ignored(e)} for e in evaluated]
        aps[layout] = _ap(evaluator)
    evaluator.evalImgs = evaluated
    return aps


def _flags(layouts: dict[int, Layout | None], flagged) -> np.ndarray:
    """A lookup by annotation id (0: no annotation) of whether ``flagged(layout)`` holds."""
    flags = np.zeros(max(layouts, default=0) + 1, bool)
    flags[[i for i, of in layouts.items() if flagged(of)]] = True
    return flags


def annotation_layouts(coco: COCO, truth: dict[int, list[TruePlate]]) -> dict[int, Layout | None]:
    """The layout of each annotation in ``coco`` (the ground truth or detections on its images, whose
    plates are ``truth``): a region's by its class, a character's by its plate (``character_layout``)."""
    layouts, groups = {}, board_groups(coco)
    for ann in coco.anns.values():
        label = CLASSES[ann["category_id"] - 1]
        region = BOARD_LABELS.get(label) or SUB_LABELS.get(label) or MAIN_LABELS.get(label)
        layouts[ann["id"]] = region or character_layout(ann, truth[ann["image_id"]], groups)
    return layouts


def board_groups(coco: COCO) -> dict[tuple[int, int], Layout]:
    """(image id, group id) -> layout of the boards that record their group (labelme's group_id: the
    shapes of one plate); a group of two boards (a group_id used again) is left to the boxes."""
    boards = [((ann["image_id"], ann["group_id"]), BOARD_LABELS[label]) for ann in coco.anns.values()
              if ann.get("group_id") is not None and (label := CLASSES[ann["category_id"] - 1]) in BOARD_LABELS]
    per_group = Counter(group for group, _ in boards)
    return {group: layout for group, layout in boards if per_group[group] == 1}


def character_layout(ann: dict, truth: list[TruePlate], groups: dict[tuple[int, int], Layout]) -> Layout | None:
    """A character's plate's layout: its group's board where it records one, else the ground-truth plate
    that holds its centre (a tilted plate's straight box may hold its neighbour's character too)."""
    grouped = groups.get((ann["image_id"], ann.get("group_id")))
    return grouped or _layout_at(truth, _xyxy(ann["bbox"]))


AP_METRICS = ("bbox_mAP", "segm_mAP", "dv_mAP")


def layout_suffix(layout: Layout) -> str:
    return "_" + layout.value.replace("-", "_")


SUFFIXES = ("", *map(layout_suffix, Layout))  # a metric overall, then per layout


def coco_aps(gt: COCO, detections: dict[int, list[Detection]]) -> dict[str, float]:
    """bbox_mAP, segm_mAP and dv_mAP, overall and per layout (``dv_mAP_one_row``, ...)."""
    results = coco_results(gt, detections)
    scores = {f"{key}{suffix}": 0.0 for key in AP_METRICS for suffix in SUFFIXES}
    if not results:
        return scores
    masked = all("segmentation" in r for r in results)  # before loadRes, which gives boxes a rectangle
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
    truth = {image_id: true_plates(gt, image_id) for image_id in gt.getImgIds()}
    gt_layout, dt_layout = annotation_layouts(gt, truth), annotation_layouts(dt, truth)
    for key, evaluator in (("bbox_mAP", COCOeval(gt, dt, "bbox")), ("segm_mAP", COCOeval(gt, dt, "segm")),
                           ("dv_mAP", DvCOCOeval(gt, dt))):
        if key != "bbox_mAP" and not masked:
            continue
        evaluator.params.imgIds = sorted(detections)
        # only AP over all sizes is reported: the small, medium and large ranges would cost 3 times more
        evaluator.params.areaRng, evaluator.params.areaRngLbl = evaluator.params.areaRng[:1], ["all"]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
        scores[key] = _ap(evaluator)
        for layout, ap in _layout_aps(evaluator, gt_layout, dt_layout).items():
            scores[key + layout_suffix(layout)] = ap
    return scores


# ---------------------------------------------------------------- plates


@dataclass(frozen=True)
class TruePlate:
    text: str | None
    layout: Layout
    bbox: tuple[float, float, float, float]


def _xyxy(bbox: list[float]) -> tuple[float, float, float, float]:
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


def true_plates(gt: COCO, image_id: int) -> list[TruePlate]:
    """Ground-truth plates: the board's recorded text, else the text its characters spell."""
    anns = gt.imgToAnns.get(image_id, [])
    as_detections = [Detection(CLASSES[a["category_id"] - 1], 1.0, _xyxy(a["bbox"])) for a in anns]
    plates = []
    for ann, det in zip(anns, as_detections):
        if det.label not in BOARD_LABELS:
            continue
        # as read_plates does: a tilted neighbour's characters inside this board's box are not stray
        others = [d.bbox for d in as_detections if d.label in BOARD_LABELS and d is not det]
        try:
            text = (parse_plate(ann["text"]).text if "text" in ann else
                    read_board(det, as_detections, others=others).text)
        except PlateFormatError:
            text = None
        plates.append(TruePlate(text, BOARD_LABELS[det.label], det.bbox))
    return plates


def _match(predicted: list, truth: list, box_of_pred, box_of_true) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by box IoU >= MATCH_IOU, best-scoring predictions first."""
    pairs, used = [], set()
    for i, pred in enumerate(predicted):
        best, best_iou = None, MATCH_IOU
        for j, true in enumerate(truth):
            iou = box_iou(box_of_pred(pred), box_of_true(true))
            if j not in used and iou >= best_iou:
                best, best_iou = j, iou
        if best is not None:
            used.add(best)
            pairs.append((i, best))
    return pairs


# A plate's width in its image, in px: the fewer pixels a character has, the harder it is to read.
WIDTH_EDGES = (96, 128, 192, 256)
WIDTH_BINS = (f"<{WIDTH_EDGES[0]} px", *(f"{a}-{b} px" for a, b in zip(WIDTH_EDGES, WIDTH_EDGES[1:])),
              f">={WIDTH_EDGES[-1]} px")


def width_bin(width: float) -> str:
    """The name of the WIDTH_BINS bin a plate of this width falls in."""
    return WIDTH_BINS[int(np.searchsorted(WIDTH_EDGES, width, side="right"))]


def _read_exactly(read: Plate, true: TruePlate) -> bool:
    """What EIR counts: a plate read, every character as the truth (a truth that breaks the format matches none)."""
    return read.text is not None and read.text == true.text


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


PER_LAYOUT = (*AP_METRICS, "mAP", "EIR", "plate_precision", "plate_recall", "char_accuracy", "plates")


def metric_names() -> tuple[str, ...]:
    """The names of every number :func:`evaluate` returns (what ``--best-metric`` may name)."""
    return tuple(f"{name}{suffix}" for name in PER_LAYOUT for suffix in SUFFIXES)


def check_metric(flag: str, name: str, split: Path | None = None) -> None:
    """A metric to pick checkpoints by: a score, higher is better (``plates`` counts ground truth). A
    layout's score needs plates of that layout in the ``split`` it is taken on: without them it is 0
    for every checkpoint, and the pick would be the first, least trained one."""
    scores = [m for m in metric_names() if not m.startswith("plates")]
    if name not in scores:
        raise UsageError(f"{flag} {name!r}: not a score to pick checkpoints by; choose from {', '.join(scores)}")
    layout = next((layout for layout in Layout if name.endswith(layout_suffix(layout))), None)
    if layout is None or split is None:
        return
    board = CLASSES.index(layout.board_label) + 1
    document = read_json(split)
    if not any(a.get("category_id") == board for a in document.get("annotations", [])):
        overall = name.removesuffix(layout_suffix(layout))
        raise UsageError(f"{flag} {name}: {split} has no {layout.value} plates, so {name} would be 0 for every "
                         f"checkpoint; choose a score of the plates it has (e.g. {overall})")


def _layout_at(truth: list[TruePlate], box) -> Layout | None:
    """The layout of the ground-truth plate that holds the box's centre."""
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return next((t.layout for t in truth if t.bbox[0] <= x <= t.bbox[2] and t.bbox[1] <= y <= t.bbox[3]), None)


def plate_metrics(gt: COCO, plates: dict[int, list[Plate]], detections: dict[int, list[Detection]]) -> dict:
    """EIR, plate precision/recall and character accuracy, overall and per layout."""
    counts = {key: Counter() for key in ("all", *Layout)}

    def tally(layout: Layout | None, name: str, n: int = 1) -> None:
        for key in ("all", layout) if layout else ("all",):
            counts[key][name] += n

    outcomes: Counter[str] = Counter()
    misread: Counter[str] = Counter()
    widths = {name: Counter() for name in WIDTH_BINS}  # per bin: exact (True) and not
    misses = []
    confusion = np.zeros((len(CHARACTER_CLASSES), len(CHARACTER_CLASSES) + 1), dtype=np.int64)  # last: missed
    groups = board_groups(gt)
    for image_id in gt.getImgIds():
        truth = true_plates(gt, image_id)
        predicted = sorted(plates.get(image_id, []), key=lambda p: -p.score)
        for plate in truth:
            tally(plate.layout, "true")
        for plate in predicted:
            tally(Layout(plate.layout), "predicted")
        found = {j: predicted[i] for i, j in _match(predicted, truth, lambda p: p.bbox, lambda t: t.bbox)}
        for j, true in enumerate(truth):
            read = found.get(j)
            exact = read is not None and _read_exactly(read, true)
            outcome = "not found" if read is None else _outcome(read, exact)
            outcomes[outcome] += 1
            widths[width_bin(true.bbox[2] - true.bbox[0])][exact] += 1
            if not exact:
                misses.append({"image": gt.imgs[image_id]["file_name"], "bbox": [round(v, 1) for v in true.bbox],
                               "layout": true.layout.value, "true": true.text, "read": read.text if read else None,
                               "outcome": outcome})
            if read is None:
                continue
            misread.update(_wrong_characters(true.text, read.text))
            tally(true.layout, "found")  # recall: by the true layout
            tally(true.layout, "exact", exact)
            tally(Layout(read.layout), "found_as_read")  # precision: by the layout read
        true_chars = [a for a in gt.imgToAnns.get(image_id, []) if CLASSES[a["category_id"] - 1] in CHARACTER_CLASSES]
        pred_chars = sorted((d for d in detections.get(image_id, []) if d.label in CHARACTER_CLASSES),
                            key=lambda d: -d.score)
        matched = dict((j, i) for i, j in _match(pred_chars, true_chars, lambda d: d.bbox,
                                                  lambda a: _xyxy(a["bbox"])))
        for j, ann in enumerate(true_chars):
            row = CHARACTER_CLASSES.index(CLASSES[ann["category_id"] - 1])
            column = CHARACTER_CLASSES.index(pred_chars[matched[j]].label) if j in matched else -1
            confusion[row, column] += 1
            layout = character_layout(ann, truth, groups)
            tally(layout, "chars")
            tally(layout, "chars_right", column == row)
    metrics = {}
    for key, c in counts.items():
        suffix = "" if key == "all" else layout_suffix(key)
        metrics[f"EIR{suffix}"] = _ratio(c["exact"], c["true"])
        metrics[f"plate_precision{suffix}"] = _ratio(c["found_as_read"], c["predicted"])
        metrics[f"plate_recall{suffix}"] = _ratio(c["found"], c["true"])
        metrics[f"char_accuracy{suffix}"] = _ratio(c["chars_right"], c["chars"])
        metrics[f"plates{suffix}"] = c["true"]
    metrics["confusion"] = confusion.tolist()
    metrics["outcomes"] = {outcome: n for outcome, n in outcomes.most_common() if n}
    metrics["misread_characters"] = dict(misread.most_common())
    metrics["EIR_by_width"] = {name: {"plates": c.total(), "EIR": _ratio(c[True], c.total())}
                               for name, c in widths.items() if c.total()}
    metrics["misses"] = misses
    return metrics


def misread_summary(metrics: dict, top: int = 12) -> str:
    """The most frequent wrong characters of the misread plates: ``8->B 3, 0->D 2`` (or ``none``)."""
    return ", ".join(f"{pair} {n}" for pair, n in list(metrics["misread_characters"].items())[:top]) or "none"


def width_summary(metrics: dict) -> str:
    """EIR by plate width: ``<96 px 0.850 of 40, 96-128 px 0.962 of 52, ...``."""
    return ", ".join(f"{name} {b['EIR']:.3f} of {b['plates']}"
                     for name, b in metrics["EIR_by_width"].items()) or "no plates"


def _wrong_characters(true: str | None, read: str | None) -> list[str]:
    """``"true->read"`` for each position where a read plate differs from the truth (both
    follow the one format, so positions line up)."""
    if true is None or read is None:
        return []
    return [f"{t}->{r}" for t, r in zip(true, read) if t != r]


def _outcome(plate: Plate, exact: bool) -> str:
    """What became of a found plate: read, misread, or why it was not read (the reason without
    its particulars, so that like reasons count together)."""
    if plate.text is not None:
        return "read exactly" if exact else "misread"
    return "unread: " + re.sub(r"\d+", "N", re.sub(r"'[^']*'", "...", plate.reason or ""))


def evaluate(gt: COCO, detections: dict[int, list[Detection]], plates: dict[int, list[Plate]]) -> dict:
    """Every metric for one split: COCO APs, dv_mAP and the plate metrics."""
    metrics = coco_aps(gt, detections)
    for suffix in SUFFIXES:
        metrics[f"mAP{suffix}"] = metrics[f"segm_mAP{suffix}"]
    metrics.update(plate_metrics(gt, plates, detections))
    return metrics


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of :func:`evaluate`'s result, without its tables (confusion, outcomes, misreads, widths, misses)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


KEY_METRICS = ("mAP", "dv_mAP", "EIR")


def metric_lines(metrics: dict, keys=KEY_METRICS) -> str:
    """``name=value`` lines, the format Katib's StdOut collector parses."""
    return "\n".join(f"{k}={metrics[k]:.6f}" for k in keys if k in metrics)


def plate_pr_curve(gt: COCO, plates: dict[int, list[Plate]]) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of exact reads as the board score threshold falls (one point per plate)."""
    outcomes, total = [], 0
    for image_id in gt.getImgIds():
        truth = true_plates(gt, image_id)
        total += len(truth)
        predicted = sorted(plates.get(image_id, []), key=lambda p: -p.score)
        exact = {i for i, j in _match(predicted, truth, lambda p: p.bbox, lambda t: t.bbox)
                 if _read_exactly(predicted[i], truth[j])}
        outcomes.extend((p.score, i in exact) for i, p in enumerate(predicted))
    outcomes.sort(key=lambda o: -o[0])
    hits = np.cumsum([hit for _, hit in outcomes]) if outcomes else np.zeros(0)
    precision = hits / np.arange(1, len(outcomes) + 1) if outcomes else np.zeros(0)
    recall = hits / total if total else np.zeros(len(outcomes))
    return precision, recall
