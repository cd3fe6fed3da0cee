"""``PlateReader``: a checkpoint in, plates out. Needs nothing but the checkpoint file."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Union

import numpy as np

from alpr.errors import AlprError, UsageError
from alpr.plates import check_classes
from alpr.postprocess import Detection, Plate, ReadOptions, read_plates

Image = Union[str, Path, np.ndarray]


def load_image(image: Image) -> np.ndarray:
    """A BGR uint8 array from a path or an array; a clear error for anything else."""
    import cv2

    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UsageError(f"image array of shape {image.shape}: expected H x W x 3 (BGR)")
        return image[..., :3] if image.shape[2] == 4 else image
    path = Path(image)
    if not path.is_file():
        raise UsageError(f"{path}: image not found")
    array = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if array is None:
        raise UsageError(f"{path}: not a readable image")
    return array


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: no CUDA device is visible")
    return device


class PlateReader:
    """Reads plates with a trained model: ``PlateReader.from_checkpoint(path).predict(image)``."""

    def __init__(self, model, options: ReadOptions = ReadOptions(), score_threshold: float = 0.05):
        from mmcv.transforms import Compose

        from alpr.mmdet_ext import set_score_threshold

        self.model = model
        self.options = options
        # Detections under the reading thresholds are never used; lower ones also serve COCO mAP.
        self.score_threshold = min(score_threshold, options.board_threshold, options.char_threshold,
                                   options.region_threshold)
        set_score_threshold(model, self.score_threshold)
        pipeline = [dict(step) for step in model.cfg.test_dataloader.dataset.pipeline]
        pipeline[0] = dict(type="mmdet.LoadImageFromNDArray")
        self.pipeline = Compose(pipeline)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", options: ReadOptions = ReadOptions()
                        ) -> "PlateReader":
        import torch
        from mmengine.config import Config

        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: checkpoint not found")
        meta = torch.load(path, map_location="cpu", weights_only=False).get("meta", {})
        if "cfg" not in meta or "alpr" not in meta:
            raise AlprError(f"{path}: not an alpr checkpoint (no training config or class list in its meta)")
        check_classes(path, meta["alpr"].get("classes", ()))
        import alpr.mmdet_ext  # noqa: F401  (registers alpr's modules)
        from mmdet.apis import init_detector

        config = Config.fromstring(meta["cfg"], ".py")
        with contextlib.redirect_stdout(sys.stderr):  # mmengine's loading chatter must not mix with results
            model = init_detector(config, str(path), device=resolve_device(device))
        return cls(model, options)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.model.dataset_meta["classes"])

    def detect(self, images: list[Image], masks: bool = True) -> list[list[Detection]]:
        """Raw detections for a batch of images, run through the model together; their masks as
        COCO RLEs, unless ``masks`` is False (reading plates needs only the boxes)."""
        import torch
        from mmengine.dataset import pseudo_collate

        from alpr.mmdet_ext import to_detections

        if not images:
            return []
        data = [self.pipeline(dict(img=load_image(image), img_id=i)) for i, image in enumerate(images)]
        with torch.no_grad():
            results = self.model.test_step(pseudo_collate(data))
        return [to_detections(r.pred_instances, self.score_threshold, masks) for r in results]

    def predict_batch(self, images: list[Image]) -> list[list[Plate]]:
        return [read_plates(dets, self.options) for dets in self.detect(images, masks=False)]

    def predict(self, image: Image) -> list[Plate]:
        return self.predict_batch([image])[0]
