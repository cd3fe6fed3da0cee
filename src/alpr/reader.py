"""``PlateReader``: a checkpoint in, plates out. Needs nothing but the checkpoint file.

Plates are read first where the model finds them in the whole image, then each again from
windows around its board, scaled so that the board is each of ``ReadOptions.zoom_widths`` px
wide. The model reads plates of about those widths best: the smallest plates' characters are
about 12 px tall in a 1280 px image, and plates wider than the 448 px training crops are seldom
whole in one. The widths are read in their order, and a board at no more of them once two of its
readings agree (the first reading and a window's, or two windows'), or one window reads it surely
(``ReadOptions.sure_score``): ``read_enough``. The surer of two readings that agree is kept, else
the surest window reading (``best_reading``); where no window reads it, the first reading stays.
Every reading's characters are read again by the checkpoint's glyph classifier, where it has one
(``alpr.glyphs``, ``postprocess.read_plates``).
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from alpr.errors import UsageError
from alpr.glyphs import glyph_reader, restored
from alpr.images import read
from alpr.plates import check_classes
from alpr.postprocess import BOX, Detection, Plate, ReadOptions, box_iou, read_plates, suppress

Image = Union[str, Path, np.ndarray]
Window = tuple[int, int, int, int]  # x1, y1, x2, y2 in the image's pixels
ZOOM_MARGIN = 0.25  # context around a board read again, as a fraction of its width on each side
ZOOM_BATCH = 16  # windows run through the model together
READ_BATCH = 4  # images the evaluate and test steps read together
SAME_PLATE_IOU = 0.5  # the second reading's board overlaps the first's this much
MIN_BOARD = 16  # px: no smaller box is enlarged further (an untrained model's boxes can be specks)


def load_image(image: Image) -> np.ndarray:
    """A BGR uint8 array from a path or an array; a clear error for anything else."""
    import cv2

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:  # the model takes 0-255: floats in 0-1 or 16-bit values read as nothing
            raise UsageError(f"image array of dtype {image.dtype}: expected uint8 (BGR, 0-255)")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UsageError(f"image array of shape {image.shape}: expected H x W x 3 (BGR)")
        return image[..., :3] if image.shape[2] == 4 else image
    return read(Path(image))


def check_image_size(image: np.ndarray, size: int, name: str = "image") -> None:
    """An error for an image too thin to read: scaled to ``size`` px on its long side (as the model
    takes it), its short side would be under a pixel."""
    height, width = image.shape[:2]
    if min(height, width) == 0:
        raise UsageError(f"{name}: {width}x{height} px, an empty image")
    if min(height, width) * size < max(height, width):
        raise UsageError(f"{name}: {width}x{height} px is too thin to read: scaled to {size} px on its long "
                         "side, its short side would be under 1 px")


def resolve_device(device: str) -> str:
    """--device auto, cpu, cuda or cuda:N as the torch device to read on; a typo or a GPU that is not
    there is a usage error, not torch's traceback."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not cuda:
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(cuda.group(1) or 0) >= visible:
        raise UsageError(f"--device {device}: {visible} CUDA device(s) visible")
    return device


def zoom_window(board: BOX, image_size: tuple[int, int], width: int) -> tuple[Window, float]:
    """The window around a board that is read again (inside the image), and the scale that makes
    the board ``width`` px wide. A plate is wider than tall; the scale of a box that is not makes
    its height ``width`` px (a window of any box is at most 1.5 ``width`` px on each side)."""
    x1, y1, x2, y2 = board
    pad = ZOOM_MARGIN * max(x2 - x1, MIN_BOARD)  # a speck on the image's edge still has a window
    image_width, image_height = image_size
    window = (max(0, math.floor(x1 - pad)), max(0, math.floor(y1 - pad)),
              min(image_width, math.ceil(x2 + pad)), min(image_height, math.ceil(y2 + pad)))
    return window, width / max(x2 - x1, y2 - y1, MIN_BOARD)


def window_image(image: np.ndarray, window: Window, scale: float) -> np.ndarray:
    import cv2

    x1, y1, x2, y2 = window
    size = (max(1, round((x2 - x1) * scale)), max(1, round((y2 - y1) * scale)))  # a sliver's window: not 0 px
    return cv2.resize(image[y1:y2, x1:x2], size, interpolation=cv2.INTER_LINEAR)


def from_window(detection: Detection, window: Window, scale: float) -> Detection:
    """A detection made in a scaled window, in the whole image's pixels (its mask dropped)."""
    x1, y1, x2, y2 = detection.bbox
    return replace(detection, bbox=(x1 / scale + window[0], y1 / scale + window[1],
                                    x2 / scale + window[0], y2 / scale + window[1]), mask=None)


def same_board(first: Plate, again: list[Plate]) -> Plate | None:
    """The plate of ``again`` read on the board read first: the one that overlaps it most, if
    that one is read and overlaps it at least SAME_PLATE_IOU; else None."""
    best = max(again, key=lambda plate: box_iou(plate.bbox, first.bbox), default=None)
    if best is not None and best.readable and box_iou(best.bbox, first.bbox) >= SAME_PLATE_IOU:
        return best
    return None


def surest(plate: Plate) -> float:
    """How sure a reading is: its least sure character's score (a plate is read only whole)."""
    return min(plate.char_scores, default=0.0)


def window_readings(first: Plate, windows: Sequence[list[Plate]]) -> list[Plate]:
    """The readings of the board read first, at most one per window around it."""
    return [plate for again in windows if (plate := same_board(first, again))]


def agreed_reading(first: Plate, windows: Sequence[list[Plate]]) -> Plate | None:
    """The surest of the readings of the board read first, its own among them, whose text another
    of them read too; None where no two agree. Two scales seldom make the same mistake."""
    readings = window_readings(first, windows) + ([first] if first.readable else [])
    agreed = [plate for plate in readings if sum(other.text == plate.text for other in readings) > 1]
    return max(agreed, key=surest, default=None)


def sure_enough(first: Plate, windows: Sequence[list[Plate]], sure_score: float | None) -> bool:
    """Whether one window read the board read first with every character scoring at least
    ``sure_score`` (never, where that is None)."""
    return sure_score is not None and any(surest(plate) >= sure_score for plate in window_readings(first, windows))


def read_enough(first: Plate, windows: Sequence[list[Plate]], sure_score: float | None) -> bool:
    """Whether the board read first needs no more windows: two readings of it agree (the first
    reading and a window's, or two windows'), or one window reads it surely."""
    return agreed_reading(first, windows) is not None or sure_enough(first, windows, sure_score)


def surest_reading(first: Plate, windows: Sequence[list[Plate]]) -> Plate:
    """The surest window reading of the board read first; the first reading where no window reads it."""
    return max(window_readings(first, windows), key=surest, default=first)


def best_reading(first: Plate, windows: Sequence[list[Plate]]) -> Plate:
    """Of the readings of the board read first, the surest that two agree on, else the surest
    window reading (``surest_reading``)."""
    return agreed_reading(first, windows) or surest_reading(first, windows)


def distinct_plates(plates: list[Plate]) -> list[Plate]:
    """One plate for each board: two pieces of one plate found apart can both take a window's
    reading of the whole of it, or overlap the board it reads. Read plates first, surest first,
    drop each that overlaps a kept one at SAME_PLATE_IOU; in the order of ``read_plates``."""
    kept = suppress(list(enumerate(plates)), lambda a, b: box_iou(a[1].bbox, b[1].bbox) >= SAME_PLATE_IOU,
                    rank=lambda item: (item[1].readable, surest(item[1]), item[1].score))
    return [plate for _, plate in sorted(kept, key=lambda item: item[0])]


class PlateReader:
    """Reads plates with a trained model: ``PlateReader.from_checkpoint(path).predict(image)``."""

    def __init__(self, model, options: ReadOptions = ReadOptions(), score_threshold: float = 0.05,
                 amp: bool = False, glyph_net=None):
        from mmcv.transforms import Compose

        from alpr.mmdet_ext import set_score_threshold

        self.model = model
        self._model_in_use = threading.Lock()  # a call patches the model for its length (boxes_only, amp)
        self.options = options
        self.amp = amp  # the model runs in bfloat16 on the CPU, float16 on CUDA (mmdet_ext.reduced_precision)
        self.glyph_net = glyph_net  # reads each character again (alpr.glyphs); None: the model's classes stand
        # Detections under the reading thresholds are never used; lower ones also serve COCO mAP.
        self.score_threshold = min(score_threshold, options.board_threshold, options.char_threshold,
                                   options.region_threshold)
        set_score_threshold(model, self.score_threshold)
        pipeline = [dict(step) for step in model.cfg.test_dataloader.dataset.pipeline]
        pipeline[0] = dict(type="mmdet.LoadImageFromNDArray")
        self.pipeline = Compose(pipeline)
        self.image_size = max(next(step["scale"] for step in pipeline if step["type"] == "Resize"))
        # windows to read again are scaled here, and the model takes them at that size
        self.window_pipeline = Compose([step for step in pipeline if step["type"] != "Resize"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", options: ReadOptions = ReadOptions(),
                        amp: bool = False) -> "PlateReader":
        from mmengine.config import Config

        from alpr.train import alpr_meta

        path = Path(path)
        meta = alpr_meta(path)
        check_classes(path, meta["alpr"].get("classes", ()))
        from mmdet.apis import init_detector

        from alpr.machine import fit_torch_threads
        from alpr.mmdet_ext import mixed_precision_pays  # importing it registers alpr's modules

        config = Config.fromstring(meta["cfg"], ".py")
        device = resolve_device(device)
        fit_torch_threads()
        amp = amp and mixed_precision_pays(device, "reading")
        with contextlib.redirect_stdout(sys.stderr):  # mmengine's loading chatter must not mix with results
            model = init_detector(config, str(path), device=device)
        if device == "cpu":  # oneDNN's convolutions are faster on channels-last tensors (RESULTS.md, "Channels last")
            import torch

            model.to(memory_format=torch.channels_last)
        glyphs = meta["alpr"].get("glyph_net")
        return cls(model, options, amp=amp, glyph_net=restored(glyphs) if glyphs else None)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.model.dataset_meta["classes"])

    def detect(self, images: list[Image], masks: bool = True) -> list[list[Detection]]:
        """Raw detections for a batch of images, those of one shape run through the model together; their masks as
        COCO RLEs, unless ``masks`` is False (reading plates needs only the boxes)."""
        if not images:
            return []
        return self._detect([self.pipeline(dict(img=self.load(image), img_id=i)) for i, image in enumerate(images)],
                            masks)

    def load(self, image: Image) -> np.ndarray:
        """The image as a BGR array, or an error naming it if it cannot be read or is too thin to read."""
        array = load_image(image)
        check_image_size(array, self.image_size, "image array" if isinstance(image, np.ndarray) else str(image))
        return array

    def _detect(self, data: list[dict], masks: bool, batch_size: int | None = None) -> list[list[Detection]]:
        """The model run on inputs of one shape at a time (``batch_size`` at most): a batch is padded
        to its largest input, with the mean colour, so an input read among larger ones, in a server's
        batch, say, would be read otherwise than alone."""
        import torch
        from mmengine.dataset import pseudo_collate

        from alpr.mmdet_ext import boxes_only, reduced_precision, to_detections

        by_shape = defaultdict(list)
        for index, item in enumerate(data):
            by_shape[tuple(item["inputs"].shape)].append(index)
        batches = [indices[start:start + (batch_size or len(indices))]
                   for indices in by_shape.values() for start in range(0, len(indices), batch_size or len(indices))]
        results = {}
        with (self._model_in_use, torch.no_grad(), contextlib.nullcontext() if masks else boxes_only(self.model),
              reduced_precision(self.model) if self.amp else contextlib.nullcontext()):
            for batch in batches:
                results.update(zip(batch, self.model.test_step(pseudo_collate([data[i] for i in batch]))))
        return [to_detections(results[i].pred_instances, self.score_threshold, masks) for i in range(len(data))]

    def read(self, images: list[Image], masks: bool = False) -> list[tuple[list[Detection], list[Plate]]]:
        """Each image's detections (from the whole image; with COCO RLE masks if ``masks``) and
        plates, each read again from a scaled window (the module's docstring)."""
        arrays = [self.load(image) for image in images]
        detections = self.detect(arrays, masks)
        glyphs = [self.glyphs(array) for array in arrays]
        plates = [read_plates(dets, self.options, image_glyphs) for dets, image_glyphs in zip(detections, glyphs)]
        return list(zip(detections, self._read_again(arrays, glyphs, plates)))

    def _read_again(self, arrays: list[np.ndarray], glyphs: list, plates: list[list[Plate]]) -> list[list[Plate]]:
        firsts = [(i, plate) for i, found in enumerate(plates) for plate in found]
        seen = [[] for _ in firsts]  # each board's readings, one list a window
        todo = list(range(len(firsts)))
        for width in self.options.zoom_widths:
            # one pass a width: its windows come in few shapes, so they batch
            found = self.detect_windows(arrays, [(firsts[k][0], firsts[k][1].bbox) for k in todo], width)
            for k, detections in zip(todo, found):
                seen[k].append(read_plates(detections, self.options, glyphs[firsts[k][0]]))
            todo = [k for k in todo if not read_enough(firsts[k][1], seen[k], self.options.sure_score)]
        best = iter(best_reading(first, windows) for (_, first), windows in zip(firsts, seen))
        return [distinct_plates([next(best) for _ in found]) for found in plates]

    def detect_windows(self, arrays: list[np.ndarray], boards: list[tuple[int, BOX]], width: int
                       ) -> list[list[Detection]]:
        """For each (image index, board box): the detections in a window around the board, scaled
        so that the board is ``width`` px wide, in the whole image's pixels and without masks."""
        windows = [(i, *zoom_window(box, arrays[i].shape[1::-1], width)) for i, box in boards]
        data = [self.window_pipeline(dict(img=window_image(arrays[i], window, scale), img_id=k,
                                          scale_factor=(1.0, 1.0))) for k, (i, window, scale) in enumerate(windows)]
        return [[from_window(d, window, scale) for d in dets]
                for (_, window, scale), dets in zip(windows, self._detect(data, masks=False, batch_size=ZOOM_BATCH))]

    def glyphs(self, image: np.ndarray):
        """The glyph classifier reading characters of ``image`` (``postprocess.Glyphs``), if the
        checkpoint has one."""
        return None if self.glyph_net is None else glyph_reader(self.glyph_net, image)

    def predict_batch(self, images: list[Image]) -> list[list[Plate]]:
        return [plates for _, plates in self.read(images)]

    def predict(self, image: Image) -> list[Plate]:
        return self.predict_batch([image])[0]
