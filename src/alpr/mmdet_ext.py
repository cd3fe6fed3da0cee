"""alpr's pieces registered in mmdetection's registries: the plate metric, the run hook and a mask transform.

Imported by the training config (``custom_imports``), never by editing mmdet itself.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmdet.registry import HOOKS, METRICS, TRANSFORMS
from mmdet.structures.mask import PolygonMasks, polygon_to_bitmap
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alpr.errors import AlprError
from alpr.metrics import evaluate, metric_lines
from alpr.plates import CLASSES
from alpr.postprocess import Detection, read_plates

# mmengine 0.10 calls torch.load without weights_only, and torch >= 2.6 then refuses the
# ConfigDicts and log buffers in mmengine's own checkpoints. Checkpoints are pickles: load
# only ones you trust (your runs, your store), as with any PyTorch checkpoint.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
# Deprecation notes from mmdet/mmcv/mmengine on this torch, and the notice of the setting above:
# they say nothing about the run and bury its log.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(mmdet|mmcv|mmengine)\.")
warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", category=UserWarning)


def set_score_threshold(model, threshold: float) -> None:
    """Sets the score below which the model's heads drop detections (RTMDet's head, Mask R-CNN's RoI head)."""
    for module in model.modules():
        test_cfg = getattr(module, "test_cfg", None)
        if test_cfg is not None and "score_thr" in test_cfg:
            test_cfg.score_thr = threshold


def to_detections(pred_instances, score_threshold: float = 0.05, rle: bool = False) -> list[Detection]:
    """mmdet predictions (bboxes, scores, labels[, masks]) as Detections; masks as RLE when rle.

    pred_instances is an InstanceData, or the dict the evaluator turns it into. Low scores are
    dropped where the tensors are: an early model's 100 full-size masks are ~90 MB to copy.
    """
    fields = pred_instances if isinstance(pred_instances, dict) else pred_instances.to_dict()
    keep = fields["scores"] >= score_threshold
    scores, bboxes, labels = (fields[key][keep].cpu().numpy() for key in ("scores", "bboxes", "labels"))
    masks = [None] * len(scores)
    if "masks" in fields:
        masks = [_rle(mask) if rle else mask.astype(np.uint8) for mask in fields["masks"][keep].cpu().numpy()]
    return [Detection(CLASSES[int(label)], float(score), tuple(float(v) for v in box), mask)
            for box, label, score, mask in zip(bboxes, labels, scores, masks)]


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    encoded["counts"] = encoded["counts"].decode()
    return encoded


class FilledPolygonMasks(PolygonMasks):
    """PolygonMasks whose to_tensor rasterizes each instance inside its bounding box only and sets
    those pixels in a tensor made on the target device. mmdet's own rasterizer draws them, so
    the masks are mmdet's, but for float rounding at a few edge pixels (about 1 in 10,000).

    RTMDet-ins turns the ground-truth polygons into full-size bitmaps on the training process
    every iteration; plates bring about ten small instances each, and writing hundreds of
    full-size bitmaps in host memory then takes longer than the GPU's whole step.
    """

    def to_tensor(self, dtype, device):
        masks = torch.zeros((len(self.masks), self.height, self.width), dtype=torch.bool, device=device)
        pixels = [self._pixels(i, polygons) for i, polygons in enumerate(self.masks)]
        if pixels:
            masks.view(-1)[torch.from_numpy(np.concatenate(pixels)).to(device)] = True
        return masks.to(dtype)

    def _pixels(self, index: int, polygons: list) -> np.ndarray:
        """Flat indices into the (N, H, W) masks of instance ``index``'s pixels."""
        polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons]
        corners = np.concatenate(polygons)
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, (self.width, self.height))
        if x1 <= x0 or y1 <= y0:
            return np.zeros(0, np.int64)
        # mmdet's rasterizer on the polygons shifted by whole pixels
        patch = polygon_to_bitmap([(p - (x0, y0)).ravel() for p in polygons], y1 - y0, x1 - x0)
        ys, xs = np.nonzero(patch)
        return (index * self.height + ys + y0) * self.width + (xs + x0)


@TRANSFORMS.register_module()
class UseFilledPolygonMasks(BaseTransform):
    """Last before packing: ground-truth polygons become FilledPolygonMasks (mmdet's own
    transforms return plain PolygonMasks, so this comes after them)."""

    def transform(self, results: dict) -> dict:
        masks = results.get("gt_masks")
        if isinstance(masks, PolygonMasks):
            results["gt_masks"] = FilledPolygonMasks(masks.masks, masks.height, masks.width)
        return results


@METRICS.register_module()
class PlateMetric(BaseMetric):
    """COCO mAP, dv_mAP, EIR and the plate metrics of :mod:`alpr.metrics`, during validation."""

    default_prefix = None  # keys are plain: "EIR", "mAP", ... (what --best-metric and Katib name)

    def __init__(self, ann_file: str, collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            detections = to_detections(sample["pred_instances"], rle=True)
            self.results.append((sample["img_id"], detections))

    def compute_metrics(self, results: list) -> dict:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(self.ann_file)
        detections = dict(results)
        plates = {image_id: read_plates(dets) for image_id, dets in detections.items()}
        metrics = evaluate(gt, detections, plates)
        metrics.pop("confusion")
        return metrics


@HOOKS.register_module()
class AlprRunHook(Hook):
    """Checks classes before training, stamps checkpoints, prints Katib lines, keeps best.pth."""

    priority = "LOWEST"  # after CheckpointHook, so best_ckpt is already this validation's

    def __init__(self, run_meta: dict):
        self.run_meta = json.loads(json.dumps(run_meta))  # plain dicts, not ConfigDicts, in checkpoints

    def before_train(self, runner) -> None:
        classes = tuple(runner.train_dataloader.dataset.metainfo["classes"])
        if classes != CLASSES:
            raise AlprError(f"dataset classes {classes} differ from alpr's class order {CLASSES}")
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        head = getattr(model, "bbox_head", None) or model.roi_head.bbox_head
        if head.num_classes != len(CLASSES):
            raise AlprError(f"model head predicts {head.num_classes} classes, the dataset has {len(CLASSES)}")

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # mmengine logs GPU memory only; this puts the process's RAM on the same progress line.
        import psutil

        runner.message_hub.update_scalar("train/host_memory_mb", psutil.Process().memory_info().rss / 2**20)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})["alpr"] = {**self.run_meta, "classes": list(CLASSES)}

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if not metrics:
            return
        print(metric_lines(metrics), flush=True)
        best = runner.message_hub.get_info("best_ckpt")
        if best and Path(best).is_file():
            target = Path(runner.work_dir) / "best.pth"
            partial = target.with_name(".best.pth.partial")
            shutil.copyfile(best, partial)
            partial.replace(target)
