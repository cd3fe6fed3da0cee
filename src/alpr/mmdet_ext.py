"""alpr's pieces registered in mmdetection's registries: the plate metric and the run hook.

Imported by the training config (``custom_imports``), never by editing mmdet itself.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from mmdet.registry import HOOKS, METRICS
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

    pred_instances is an InstanceData, or the dict the evaluator turns it into.
    """
    fields = pred_instances if isinstance(pred_instances, dict) else pred_instances.to_dict()
    scores = fields["scores"].cpu().numpy()
    keep = scores >= score_threshold
    bboxes = fields["bboxes"].cpu().numpy()[keep]
    labels = fields["labels"].cpu().numpy()[keep]
    masks = fields["masks"].cpu().numpy()[keep] if "masks" in fields else None
    detections = []
    for i, (box, label, score) in enumerate(zip(bboxes, labels, scores[keep])):
        mask = None
        if masks is not None:
            mask = masks[i].astype(np.uint8)
            if rle:
                mask = mask_utils.encode(np.asfortranarray(mask))
                mask["counts"] = mask["counts"].decode()
        detections.append(Detection(CLASSES[int(label)], float(score), tuple(float(v) for v in box), mask))
    return detections


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
