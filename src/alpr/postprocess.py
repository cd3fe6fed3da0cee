"""Detections to plates: group characters into boards, read them, validate the format.

A board owns the sub-text and main-text regions and the characters whose centres
fall inside it. Each character goes to the region that holds its centre (where both do, the
one covering more of it) and is read left to right, one per glyph: two detections that share
most of their width in one row are one character. Given a glyph classifier (``alpr.glyphs``), each of a board's seven
characters is read again by it, as the likeliest character of the kind the format puts there,
scored by its probability among that kind; one scoring under the character threshold leaves the
plate unread.
Without one, where the model's first choice at a position is a letter where the format puts
a digit (or the reverse), its best choice of the right kind there is read. A
plate is returned read only when the sub text is two digits and a letter A-E and the main
text four digits; otherwise it carries the reason and no text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from alpr.errors import UsageError
from alpr.plates import (
    BOARD_LABELS,
    CHARACTER_CLASSES,
    MAIN_LABELS,
    SUB_LABELS,
    Layout,
    PlateFormatError,
    label_char,
    parse_plate,
)

BOX = tuple[float, float, float, float]
TEXT_KINDS = ("DDL", "DDDD")  # the format, position by position: sub text, main text (D digit, L letter)
DIGIT_IDS = range(10)  # CHARACTER_CLASSES: the digits, then the letters
LETTER_IDS = range(10, 15)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    bbox: BOX  # x1, y1, x2, y2
    mask: dict | np.ndarray | None = field(default=None, compare=False, repr=False)  # COCO RLE from a model

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.bbox
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True)
class Plate:
    """One plate found in an image. Unread plates have text None and say why in reason."""

    text: str | None
    region: str | None
    vehicle_type: str | None
    serial: str | None
    layout: str
    bbox: BOX
    score: float
    char_scores: tuple[float, ...]
    reason: str | None = None

    @property
    def readable(self) -> bool:
        return self.text is not None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bbox"] = [round(v, 1) for v in self.bbox]
        data["score"] = round(self.score, 4)
        data["char_scores"] = [round(v, 4) for v in self.char_scores]
        return data


@dataclass(frozen=True)
class ReadOptions:
    board_threshold: float = 0.3
    char_threshold: float = 0.3
    region_threshold: float = 0.2
    duplicate_iou: float = 0.5  # two characters overlapping this much are one character
    # each board is read again from windows around it, scaled so that the board is each of these
    # many px wide, in this order, until two of its readings agree, the first one's included
    # (PlateReader); () reads each board only where it was found. The best single width moves with the
    # model (320 for short-trained ones, 224-256 for better ones); reading until two agree read better
    # than a vote of all four, in under half its windows (benchmarks/RESULTS.md, "Reading until two agree").
    zoom_widths: tuple[int, ...] = (320, 256, 224, 192)
    # or until one window reads it with every character scoring at least this (None: only agreement
    # stops). Off by default: faster, but the order then decides (RESULTS.md, "Reading until sure").
    sure_score: float | None = None

    def __post_init__(self):
        for name in ("board_threshold", "char_threshold", "region_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name.replace('_', ' ')} {getattr(self, name)}: a score, from 0 to 1")
        if not 0 < self.duplicate_iou <= 1:
            raise UsageError(f"duplicate IoU {self.duplicate_iou}: an overlap, above 0 and at most 1")
        if any(width <= 0 for width in self.zoom_widths):
            raise UsageError(f"zoom widths are board widths in px, above 0: not {tuple(self.zoom_widths)}")
        if self.sure_score is not None and not 0 < self.sure_score <= 1:
            raise UsageError(f"sure score {self.sure_score}: a character score, above 0 and at most 1")


def intersection(a: BOX, b: BOX) -> float:
    """The area the two boxes share."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def area(box: BOX) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def box_iou(a: BOX, b: BOX) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _inside(point: tuple[float, float], box: BOX) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def suppress(items: list, same: Callable, rank: Callable = lambda d: d.score) -> list:
    """Class-agnostic non-maximum suppression: keeps the best (highest ``rank``) of items that ``same``
    pairs, best first; of equal rank, the earlier."""
    kept = []
    for item in sorted(items, key=rank, reverse=True):
        if not any(same(item, k) for k in kept):
            kept.append(item)
    return kept


def _overlapping(iou: float) -> Callable[[Detection, Detection], bool]:
    return lambda a, b: box_iou(a.bbox, b.bbox) >= iou


def _best(detections: list[Detection], labels: dict, board: BOX, layout: Layout) -> Detection | None:
    """The highest-scoring region of the board's layout centred inside the board."""
    candidates = [d for d in detections if d.label in labels and labels[d.label] is layout and _inside(d.centre, board)]
    return max(candidates, key=lambda d: d.score, default=None)


def _left_to_right(chars: list[Detection]) -> list[Detection]:
    return sorted(chars, key=lambda d: d.centre[0])


# two characters sharing this much of the narrower's width and of the shorter's height are one glyph
GLYPH_OVERLAP = 0.5


def _same_glyph(a: Detection, b: Detection) -> bool:
    """Neighbours in a row barely overlap sideways; two boxes on one glyph can differ in height
    and offset (so their IoU is low) but share most of their width, and most of the shorter's
    height: a close plate's character above or below, reaching into the row, is another glyph."""
    def shares_most(axis: int) -> bool:
        low, high = axis, axis + 2
        shared = min(a.bbox[high], b.bbox[high]) - max(a.bbox[low], b.bbox[low])
        return shared > GLYPH_OVERLAP * min(a.bbox[high] - a.bbox[low], b.bbox[high] - b.bbox[low])

    return shares_most(0) and shares_most(1)


def _of_kind(char: Detection, found: list[Detection], kind: str, iou: float) -> Detection:
    """The character at a position, of the kind the format puts there (D digit, L letter): where
    the model's first choice is of the other kind, its best choice of the right kind in the same
    place (as mmdet suppresses overlaps per class, a 8 and a B can both be found on one glyph).
    ``found`` holds only confident detections: a weak guess never turns an unread plate into a read."""
    def fits(c: Detection) -> bool:
        return label_char(c.label).isdigit() == (kind == "D")

    if fits(char):
        return char
    others = [c for c in found if fits(c) and box_iou(c.bbox, char.bbox) >= iou]
    return max(others, key=lambda c: c.score, default=char)


def _row_of(char: Detection, regions: tuple[Detection, Detection]) -> int | None:
    """The text region (0: sub, 1: main) holding the character's centre; where both do (a loose
    region box, regions that touch), the one covering more of the character's box, and of two that
    cover all of it, the smaller (the loose one reaches over the other's text); None: neither."""
    holders = [k for k, region in enumerate(regions) if _inside(char.centre, region.bbox)]
    return max(holders, key=lambda k: (intersection(char.bbox, regions[k].bbox), -area(regions[k].bbox)),
               default=None)


def _unread(layout: Layout, board: Detection, reason: str, scores: list[float] = ()) -> Plate:
    return Plate(None, None, None, None, layout.value, board.bbox, board.score, tuple(scores), reason)


Glyphs = Callable[[list[BOX]], np.ndarray]  # boxes in the image -> class probabilities (N x 15), alpr.glyphs
# A glyph whose place's kind (digit or letter) holds less of its probability is of the other kind:
# a letter where a digit belongs, not a look-alike to read as one
OTHER_KIND = 0.2


def _reread(rows: list[list[Detection]], glyphs: Glyphs) -> list[list[Detection]]:
    """Each character read again by the glyph classifier: its likeliest class of the kind the
    format puts at its place, scored by its probability among that kind. The format is known, so a
    glyph surely a B or an 8 is surely an 8 where a digit belongs; a flat guess still scores low.
    A glyph whose place's kind holds under OTHER_KIND of its probability keeps that class's own
    probability as its score, under any usual character threshold: the plate is left unread."""
    probabilities = iter(glyphs([c.bbox for row in rows for c in row]))
    reread = []
    for row, kinds in zip(rows, TEXT_KINDS):
        reread.append([])
        for char, kind in zip(row, kinds):
            allowed = DIGIT_IDS if kind == "D" else LETTER_IDS
            p = next(probabilities)
            best = max(allowed, key=lambda i: p[i])
            of_kind = float(sum(p[i] for i in allowed))
            score = float(p[best]) / of_kind if of_kind >= OTHER_KIND else float(p[best])
            reread[-1].append(replace(char, label=CHARACTER_CLASSES[best], score=score))
    return reread


def usable(detections: list[Detection], options: ReadOptions = ReadOptions()) -> list[Detection]:
    """The detections reading uses: boards, characters and text regions above their thresholds."""
    def threshold(label: str) -> float:
        return options.board_threshold if label in BOARD_LABELS else \
            options.char_threshold if label in CHARACTER_CLASSES else options.region_threshold
    return [d for d in detections if d.score >= threshold(d.label)]


def read_board(board: Detection, detections: list[Detection], options: ReadOptions = ReadOptions(),
               glyphs: Glyphs | None = None, others: Sequence[BOX] = ()) -> Plate:
    """The plate on ``board``, or why it is not read. A character on it outside both its text
    regions leaves it unread (a region found wrong), unless it lies on another board (``others``):
    the straight box of a tilted plate takes in a close neighbour's characters."""
    layout = BOARD_LABELS[board.label]
    kept = usable(detections, options)
    sub = _best(kept, SUB_LABELS, board.bbox, layout)
    main = _best(kept, MAIN_LABELS, board.bbox, layout)
    confident = [d for d in kept if d.label in CHARACTER_CLASSES and _inside(d.centre, board.bbox)]
    chars = suppress(confident, _overlapping(options.duplicate_iou))
    if not chars:
        return _unread(layout, board, "no characters found on the board")
    if sub is None or main is None:
        missing = "sub-text (DDL)" if sub is None else "main-text (DDDD)"
        # no rows to read by: left to right, as every other plate's scores run (suppress put them best first)
        return _unread(layout, board, f"{missing} region not found", [c.score for c in _left_to_right(chars)])
    rows_of = [_row_of(c, (sub, main)) for c in chars]
    sub_chars, main_chars = ([c for c, row in zip(chars, rows_of) if row == k] for k in (0, 1))
    rows = [_left_to_right(suppress(row, _same_glyph)) for row in (sub_chars, main_chars)]
    if [len(row) for row in rows] == [len(kinds) for kinds in TEXT_KINDS]:
        rows = _reread(rows, glyphs) if glyphs else [
            [_of_kind(c, confident, kind, options.duplicate_iou) for c, kind in zip(row, kinds)]
            for row, kinds in zip(rows, TEXT_KINDS)]
    sub_text, main_text = ("".join(label_char(c.label) for c in row) for row in rows)
    scores = [c.score for row in rows for c in row]
    stray = sum(row is None and not any(_inside(c.centre, other) for other in others)
                for c, row in zip(chars, rows_of))
    if stray:
        return _unread(layout, board, f"{stray} character(s) outside both text regions", scores)
    if len(sub_text) != 3 or len(main_text) != 4:
        return _unread(layout, board, f"read {sub_text!r} + {main_text!r}: expected 3 sub-text and 4 main-text "
                                      "characters", scores)
    unsure = [f"{label_char(c.label)!r} at {c.score:.2f}" for row in rows for c in row
              if c.score < options.char_threshold]  # only a re-read character can be
    if unsure:
        return _unread(layout, board, f"characters read again unsure: {', '.join(unsure)}", scores)
    try:
        text = parse_plate(sub_text + main_text)
    except PlateFormatError as error:
        return _unread(layout, board, str(error), scores)
    return Plate(text.text, text.region, text.vehicle_type, text.serial, layout.value, board.bbox,
                 board.score, tuple(scores))


def read_plates(detections: list[Detection], options: ReadOptions = ReadOptions(), glyphs: Glyphs | None = None
                ) -> list[Plate]:
    """Every board above the threshold becomes a plate, read or with the reason it was not; its
    characters read again by ``glyphs`` where given."""
    boards = suppress([d for d in usable(detections, options) if d.label in BOARD_LABELS],
                       _overlapping(options.duplicate_iou))
    plates = [read_board(board, detections, options, glyphs, [b.bbox for b in boards if b is not board])
              for board in boards]
    return sorted(plates, key=lambda p: (p.bbox[1], p.bbox[0]))
