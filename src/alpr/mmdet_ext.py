"""alpr's pieces registered in mmdetection's registries: the plate metric, the run and time-budget
hooks, the training crop and mask transforms, RTMDet-ins's head with a batched training loss, its
backbone with faster pooling on the CPU, and mixed precision on the CPU, in training and in reading.

Imported by the training config (``custom_imports``), never by editing mmdet itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import RandomCrop, Resize
from mmdet.models.backbones import CSPNeXt
from mmdet.models.backbones.csp_darknet import SPPBottleneck
from mmdet.models.dense_heads import RTMDetInsSepBNHead
from mmdet.registry import HOOKS, METRICS, MODELS, OPTIM_WRAPPERS, TRANSFORMS
from mmdet.structures.bbox import BaseBoxes, bbox_overlaps, distance2bbox
from mmdet.structures.mask import PolygonMasks, polygon_to_bitmap
from mmdet.utils import reduce_mean
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import BaseMetric
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import OptimWrapper
from mmengine.registry import FUNCTIONS
from mmengine.runner import IterBasedTrainLoop
from pycocotools import mask as mask_utils
from torch.nn.utils.rnn import pad_sequence

from alpr.errors import AlprError
from alpr.files import copy_atomic, write_atomic
from alpr.glyphs import GLYPH_NET, glyph_reader, saved_glyph_net
from alpr.images import read, read_recorded
from alpr.metrics import KEY_METRICS, evaluate, load_ground_truth, mask_rle, metric_lines, scalar_metrics
from alpr.model import WARMUP_SHARE
from alpr.plates import BOARD_LABELS, CLASSES
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

BOARD_IDS = [CLASSES.index(label) for label in BOARD_LABELS]


def set_score_threshold(model, threshold: float) -> None:
    """Sets the score below which the model's heads drop detections (RTMDet's head, Mask R-CNN's RoI head)."""
    for module in model.modules():
        test_cfg = getattr(module, "test_cfg", None)
        if test_cfg is not None and "score_thr" in test_cfg:
            test_cfg.score_thr = threshold


def to_detections(pred_instances, score_threshold: float = 0.05, masks: bool = True) -> list[Detection]:
    """mmdet predictions (bboxes, scores, labels[, masks]) as Detections, masks as COCO RLEs
    (none when ``masks`` is False).

    pred_instances is an InstanceData, or the dict the evaluator turns it into. Low scores are
    dropped where the tensors are: an early model's 100 full-size masks are ~90 MB.
    """
    fields = pred_instances if isinstance(pred_instances, dict) else pred_instances.to_dict()
    keep = fields["scores"] >= score_threshold
    scores, bboxes, labels = (fields[key][keep].cpu().numpy() for key in ("scores", "bboxes", "labels"))
    rles = masks_rle(fields["masks"], keep.nonzero().flatten()) if masks and "masks" in fields else \
        [None] * len(scores)
    return [Detection(CLASSES[int(label)], float(score), tuple(float(v) for v in box), rle)
            for box, label, score, rle in zip(bboxes, labels, scores, rles)]


def masks_rle(masks: torch.Tensor, picked: torch.Tensor | None = None) -> list[dict]:
    """(N, H, W) masks as COCO RLEs, of those at the indices ``picked`` only where given. From a GPU, only
    the positions where runs change leave it (a few kB, not ~1 MB a mask); on the CPU, pycocotools'
    encoder is the faster."""
    picked = torch.arange(len(masks), device=masks.device) if picked is None else picked.to(masks.device)
    if masks.device.type != "cpu":
        return rle_from_run_changes(masks[picked])
    rles = []
    for start in range(0, len(picked), MASKS_COPIED_AT_ONCE):  # a few masks copied at a time, not all of them
        # transposed, so that each mask is column-major: COCO's encoder then copies nothing
        columns = masks[picked[start:start + MASKS_COPIED_AT_ONCE]].transpose(1, 2).contiguous().numpy()
        columns = columns.view(np.uint8) if columns.dtype == bool else columns.astype(np.uint8)
        rles += [mask_rle(column.T) for column in columns]
    return rles


MASKS_COPIED_AT_ONCE = 8


def rle_from_run_changes(masks: torch.Tensor) -> list[dict]:
    """COCO RLEs of (N, H, W) masks, computed where the masks are: the flat column-major
    positions where a mask's value changes are its run boundaries."""
    count, height, width = masks.shape
    if count == 0:
        return []
    flat = masks.bool().transpose(1, 2).reshape(count, -1)
    changes = torch.empty_like(flat)
    changes[:, 0] = flat[:, 0]  # a run of 0 background pixels where a mask starts at its first pixel
    torch.ne(flat[:, 1:], flat[:, :-1], out=changes[:, 1:])
    which, where = (t.cpu().numpy() for t in changes.nonzero(as_tuple=True))
    bounds = np.searchsorted(which, np.arange(count + 1))
    runs = [{"counts": np.diff(where[a:b], prepend=0, append=height * width).tolist(), "size": [height, width]}
            for a, b in zip(bounds[:-1], bounds[1:])]
    rles = mask_utils.frPyObjects(runs, height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode()
    return rles


class FilledPolygonMasks(PolygonMasks):
    """PolygonMasks rasterized when made, each instance inside its bounding box only, as flat pixel
    indices; to_tensor sets those pixels in a tensor made on the target device. mmdet's own
    rasterizer draws them, so the masks are mmdet's, but for float rounding at a few edge pixels
    (about 1 in 10,000).

    RTMDet-ins turns the ground-truth polygons into full-size bitmaps on the training process
    every iteration; plates bring about ten small instances each, and writing hundreds of
    full-size bitmaps in host memory then takes longer than the GPU's whole step. Made by the
    transform below, these are rasterized in the data loader's workers instead.
    """

    def __init__(self, masks, height, width, pixels: list[np.ndarray] | None = None):
        super().__init__(masks, height, width)
        # each instance's pixels as flat indices into one height x width plane
        self.pixels = [self._pixels(polygons) for polygons in self.masks] if pixels is None else pixels

    def __getitem__(self, index) -> "FilledPolygonMasks":
        # mmdet's PackDetInputs and mmengine's InstanceData pick instances by indexing: the pixels
        # go along (PolygonMasks would return plain polygons, drawn again in the training process)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        chosen = np.atleast_1d(np.arange(len(self.masks))[index]).tolist()
        return FilledPolygonMasks([self.masks[i] for i in chosen], self.height, self.width,
                                  [self.pixels[i] for i in chosen])

    @classmethod
    def cat(cls, masks: list["FilledPolygonMasks"]) -> "FilledPolygonMasks":
        if not masks:
            raise ValueError("masks should not be an empty list.")
        return cls([p for m in masks for p in m.masks], masks[0].height, masks[0].width,
                   [p for m in masks for p in m.pixels])

    def to_tensor(self, dtype, device):
        masks = torch.zeros((len(self.masks), self.height, self.width), dtype=torch.bool, device=device)
        if self.pixels:
            plane = self.height * self.width
            flat = np.concatenate([pixels + np.int64(i * plane) for i, pixels in enumerate(self.pixels)])
            masks.view(-1)[torch.from_numpy(flat).to(device)] = True
        return masks.to(dtype)

    def centres(self) -> torch.Tensor:
        """(x, y) of each instance's pixels ((0, 0) for one without any), float32: the centre of mass
        mmdet's assigner takes as an object's centre. From the pixel indices, where the same sums over
        full-size bitmaps took about an eighth of a CPU training iteration."""
        counts = np.array([len(pixels) for pixels in self.pixels], np.int64)
        if not counts.sum():
            return torch.zeros((len(counts), 2))
        ys, xs = np.divmod(np.concatenate(self.pixels), self.width)
        owner = np.repeat(np.arange(len(counts)), counts)
        sums = [np.bincount(owner, coordinate, len(counts)) for coordinate in (xs, ys)]
        return torch.from_numpy(np.stack(sums, 1) / np.maximum(counts, 1)[:, None]).float()

    def _pixels(self, polygons: list) -> np.ndarray:
        """Flat indices into a height x width plane of one instance's pixels (int32: half the bytes
        that a loader worker sends the training process, some 200 kB a sample)."""
        polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons]
        corners = np.concatenate(polygons)
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, (self.width, self.height))
        if x1 <= x0 or y1 <= y0:
            return np.zeros(0, np.int32)
        # mmdet's rasterizer on the polygons shifted by whole pixels
        patch = polygon_to_bitmap([(p - (x0, y0)).ravel() for p in polygons], y1 - y0, x1 - x0)
        ys, xs = np.nonzero(patch)
        return ((ys + y0) * self.width + (xs + x0)).astype(np.int32)


class WindowPolygonMasks(PolygonMasks):
    """PolygonMasks whose crop moves the objects that lie inside the window and clips only those
    that cross its edge. mmdet clips every polygon with shapely, about 3 ms an image (a seventh of
    the training pipeline), though PlateCrop's windows cut few objects: a polygon inside the
    window is the same polygon, moved."""

    def __getitem__(self, index) -> "WindowPolygonMasks":
        picked = super().__getitem__(index)  # a plain PolygonMasks
        return WindowPolygonMasks(picked.masks, picked.height, picked.width)

    def crop(self, bbox: np.ndarray) -> PolygonMasks:
        x1, y1, x2, y2 = np.clip(bbox, 0, [self.width, self.height] * 2)
        inside = [all(_within(p, (x1, y1, x2, y2)) for p in polygons) for polygons in self.masks]
        crossing = PolygonMasks([m for m, whole in zip(self.masks, inside) if not whole], self.height, self.width)
        clipped = iter(crossing.crop(bbox).masks)
        masks = [[p - np.tile([x1, y1], len(p) // 2) for p in polygons] if whole else next(clipped)
                 for polygons, whole in zip(self.masks, inside)]
        return PolygonMasks(masks, max(y2 - y1, 1), max(x2 - x1, 1))


def _within(polygon: np.ndarray, box: tuple) -> bool:
    xs, ys = polygon[0::2], polygon[1::2]
    return box[0] <= xs.min() and xs.max() <= box[2] and box[1] <= ys.min() and ys.max() <= box[3]


@FUNCTIONS.register_module()
def shared_storage_collate(data_batch: list) -> dict:
    """mmengine's pseudo_collate, with every tensor of the batch made a view into one block of
    memory per dtype. A loader worker hands each tensor's memory to the training process on its
    own (shared memory and a file descriptor): about 0.7 ms a tensor in the training process on
    the development machine, and a sample holds five (the image, and the boxes and labels of the
    objects and of the ignored ones). One block per dtype costs that once a batch."""
    batch = pseudo_collate(data_batch)
    places = [(image, partial(batch["inputs"].__setitem__, i)) for i, image in enumerate(batch["inputs"])]
    for sample in batch["data_samples"]:
        for instances in (sample.get("gt_instances"), sample.get("ignored_instances")):
            for key, value in instances.items() if instances is not None else ():
                if isinstance(value, torch.Tensor):
                    places.append((value, partial(setattr, instances, key)))
                elif isinstance(value, BaseBoxes):
                    places.append((value.tensor, partial(setattr, value, "tensor")))
    for dtype in {tensor.dtype for tensor, _ in places}:
        group = [(tensor, put) for tensor, put in places if tensor.dtype == dtype]
        block = torch.cat([tensor.reshape(-1) for tensor, _ in group])
        for (tensor, put), part in zip(group, block.split([tensor.numel() for tensor, _ in group])):
            put(part.view(tensor.shape))
    return batch


@TRANSFORMS.register_module()
class LoadImageAsRead(BaseTransform):
    """The image at ``img_path`` decoded as alpr reads every image (``alpr.images.read_recorded``):
    training and validation see the pixels predict and the server see; a turned WebP, which mmcv's
    LoadImageFromFile would read unturned, turned too."""

    def transform(self, results: dict) -> dict:
        image = read_recorded(Path(results["img_path"]))
        results.update(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2])
        return results


@TRANSFORMS.register_module()
class UseFilledPolygonMasks(BaseTransform):
    """Last before packing: ground-truth polygons become FilledPolygonMasks (mmdet's own
    transforms return plain PolygonMasks, so this comes after them)."""

    def transform(self, results: dict) -> dict:
        masks = results.get("gt_masks")
        if isinstance(masks, PolygonMasks):
            results["gt_masks"] = FilledPolygonMasks(masks.masks, masks.height, masks.width)
        return results


@TRANSFORMS.register_module()
class PlateCrop(RandomCrop):
    """RandomCrop whose window holds a whole plate board, one of the image's picked at random
    (anywhere, where the image has none; centred on the board, where it is larger than the window).

    On 1280 px synthetic images, a 640 px window placed anywhere holds under one whole plate of
    the 2.3 an image has and cuts others through their characters
    (``benchmarks/crop_plates.py``); this one holds at least one whole plate each time.

    With ``scale``, the window is one of the image resized at random as mmdet's RandomResize
    does it (keeping its ratio, to about ``scale`` times a factor drawn from ``ratio_range``),
    but cut before resizing: only the window is resized, a fifth of the pixels of a 1280 px image
    for a 448 px window.

    With ``board_width``, a ``board_share`` of the windows are resized instead so that the picked
    board's longer side is drawn from ``board_width``: the size at which ``PlateReader`` reads
    each plate a second time, whatever its size in the image.
    """

    def __init__(self, *args, scale: tuple[int, int] | None = None, ratio_range: tuple[float, float] = (1.0, 1.0),
                 board_width: tuple[float, float] | None = None, board_share: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale, self.ratio_range, self._factor = scale, ratio_range, 1.0
        self.board_width, self.board_share = board_width, board_share

    def transform(self, results: dict) -> dict | None:
        boards = results["gt_bboxes"].numpy()[np.isin(results["gt_bboxes_labels"], BOARD_IDS)]
        self._board = boards[np.random.randint(len(boards))] if len(boards) else None
        self._factor = self._resize_factor(results["img"].shape[:2])
        results = super().transform(results)
        if results is None or self._factor == 1.0:
            return results
        return Resize(scale_factor=self._factor, keep_ratio=True)(results)

    def _resize_factor(self, image_size: tuple[int, int]) -> float:
        if self.board_width and self._board is not None and np.random.uniform() < self.board_share:
            x1, y1, x2, y2 = self._board
            return np.random.uniform(*self.board_width) / max(x2 - x1, y2 - y1, 1.0)
        if not self.scale:
            return 1.0
        h, w = image_size
        return (min(max(self.scale) / max(h, w), min(self.scale) / min(h, w))
                * np.random.uniform(*self.ratio_range))

    def _get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        # the window in the image's own pixels that resizing makes crop_size (or less: Pad fills it)
        h, w = image_size
        return min(int(self.crop_size[1] / self._factor), h), min(int(self.crop_size[0] / self._factor), w)

    def _crop_data(self, results: dict, crop_size: tuple[int, int], allow_negative_crop: bool) -> dict | None:
        self._window = crop_size  # (h, w), as RandomCrop chose it for this image
        masks = results.get("gt_masks")
        if type(masks) is PolygonMasks:
            results["gt_masks"] = WindowPolygonMasks(masks.masks, masks.height, masks.width)
        return super()._crop_data(results, crop_size, allow_negative_crop)

    def _rand_offset(self, margin: tuple[int, int]) -> tuple[int, int]:
        if self._board is None:
            return super()._rand_offset(margin)
        x1, y1, x2, y2 = self._board
        return (self._offset(y1, y2, self._window[0], margin[0]), self._offset(x1, x2, self._window[1], margin[1]))

    @staticmethod
    def _offset(low: float, high: float, window: int, margin: int) -> int:
        """A random window start along one axis that keeps [low, high) inside, or centres it there."""
        first, last = max(int(np.ceil(high)) - window, 0), min(int(low), margin)
        if first > last:
            return int(np.clip((low + high - window) / 2, 0, margin))
        return np.random.randint(first, last + 1)


def _padded(parts) -> torch.Tensor:
    """(B, G + 1, ...) from B tensors of (count, ...): zeros after each image's objects, and at least one
    padding column, so that a batch without objects takes the same path."""
    stacked = pad_sequence(list(parts), batch_first=True)
    return torch.cat([stacked, stacked.new_zeros((stacked.shape[0], 1, *stacked.shape[2:]))], 1)


def mask_centres(gt_masks: list, bitmaps: torch.Tensor) -> torch.Tensor:
    """(x, y) of each instance mask's pixels, the images' instances one after another; what mmdet's
    assigner takes as an object's centre. From FilledPolygonMasks' pixel indices (what alpr's training
    pipeline makes), else summed over ``bitmaps``, the same masks as one (N, H, W) tensor."""
    if all(isinstance(masks, FilledPolygonMasks) for masks in gt_masks):
        return torch.cat([masks.centres() for masks in gt_masks]).to(bitmaps.device)
    return _centre_of_mass(bitmaps)


def _centre_of_mass(masks: torch.Tensor) -> torch.Tensor:
    """(x, y) of each (N, H, W) mask's pixels."""
    per_column, per_row = masks.sum(1), masks.sum(2)  # (N, W), (N, H): two passes over the masks
    pixels = per_column.sum(1).float().clamp(min=1e-7)
    x = (per_column * torch.arange(masks.shape[2], device=masks.device)).sum(1) / pixels
    y = (per_row * torch.arange(masks.shape[1], device=masks.device)).sum(1) / pixels
    return torch.stack([x, y], 1)


class ChannelsLastMaxPool2d(torch.nn.MaxPool2d):
    """MaxPool2d that pools a channels-last copy on the CPU, where PyTorch's kernel for contiguous
    (NCHW) tensors takes 6 to 8 times as long: CSPNeXt's pyramid pooling (5, 9 and 13 px windows)
    took 44 ms of a training iteration of 8 crops, and 26 ms of reading one 1280x720 image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


@MODELS.register_module()
class FastPoolingCSPNeXt(CSPNeXt):
    """CSPNeXt with its spatial pyramid pooling in ChannelsLastMaxPool2d: the same weights, keys and
    results."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for module in self.modules():
            if isinstance(module, SPPBottleneck):
                module.poolings = torch.nn.ModuleList(
                    ChannelsLastMaxPool2d(p.kernel_size, p.stride, p.padding) for p in module.poolings)


@MODELS.register_module()
class BatchedRTMDetInsHead(RTMDetInsSepBNHead):
    """RTMDetInsSepBNHead whose training loss treats the whole batch in one set of tensor operations.

    mmdet's head assigns targets and computes mask losses image by image and object by object:
    some 400 small GPU operations per image, each launched from Python, and a few hundred
    waits for the GPU per batch (a tensor read as a number). A batch of 32 then keeps the
    training process busy for about half a second while the GPU idles. This head computes the
    same assignment (dynamic soft labels, with the settings of ``train_cfg.assigner``), the same
    losses and the same normalization on padded (image, prior, object) tensors instead.

    Assumes every prior is valid, as alpr's training pipeline pads each image to the same size.

    ``mask_priors_per_image`` caps the positive priors whose masks are trained at that many times
    the batch's images, drawn at random (as CondInst caps its instances). Each mask is computed at
    a quarter of the input's size, forward and back, and as a model learns, the assigner gives each
    object more priors: several masks of one object, each costing as much as the first. None trains
    every positive's mask, as mmdet does.
    """

    boxes_only = False  # set by ``boxes_only(model)``: predictions without masks

    def __init__(self, *args, mask_priors_per_image: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_priors_per_image = mask_priors_per_image

    def loss_by_feat(self, cls_scores, bbox_preds, kernel_preds, mask_feat, batch_gt_instances, batch_img_metas,
                     batch_gt_instances_ignore=None):
        num_imgs, device = len(batch_img_metas), cls_scores[0].device
        sizes = [score.shape[-2:] for score in cls_scores]
        priors = torch.cat(self.prior_generator.grid_priors(sizes, device=device, with_stride=True))  # x, y, stride

        def flat(maps):  # (B, C, H, W) per level -> (B, priors, C)
            return torch.cat([m.permute(0, 2, 3, 1).reshape(num_imgs, -1, m.shape[1]) for m in maps], 1)

        scores, kernels, distances = flat(cls_scores), flat(kernel_preds), flat(bbox_preds)
        boxes = distance2bbox(priors, distances)
        counts = [len(g) for g in batch_gt_instances]
        masks = torch.cat([g.masks.to_tensor(torch.bool, device) for g in batch_gt_instances])
        gt_boxes, gt_labels, gt_centres = (_padded(torch.split(values, counts)) for values in (
            torch.cat([g.bboxes for g in batch_gt_instances]), torch.cat([g.labels for g in batch_gt_instances]),
            mask_centres([g.masks for g in batch_gt_instances], masks)))
        real = torch.arange(gt_boxes.shape[1], device=device) < torch.tensor(counts, device=device)[:, None]
        with torch.no_grad():  # in float32 whatever the autocast: costs span many orders of magnitude
            positive, gt_index, ious = self._assign(priors, scores.detach().float(), boxes.detach().float(),
                                                    gt_boxes.float(), gt_labels, gt_centres, real)
        labels = torch.where(positive, gt_labels.gather(1, gt_index), self.num_classes)
        metrics = torch.where(positive, ious, 0.0)
        # normalized by the sum of the positives' IoUs, as mmdet's RTMDet head does
        avg_factor = reduce_mean(metrics.sum()).clamp_(min=1).item()
        loss_cls = self.loss_cls(scores.reshape(-1, self.cls_out_channels), (labels.reshape(-1), metrics.reshape(-1)),
                                 avg_factor=1.0) / avg_factor
        image_index, prior_index = positive.nonzero(as_tuple=True)
        matched = gt_index[image_index, prior_index]
        loss_bbox = self.loss_bbox(boxes[image_index, prior_index], gt_boxes[image_index, matched],
                                   weight=metrics[image_index, prior_index], avg_factor=1.0) / avg_factor
        image_index, prior_index, matched = self._mask_sample(num_imgs, image_index, prior_index, matched)
        first_gt = torch.tensor([0, *counts], device=device).cumsum(0)
        step = self.mask_loss_stride
        # the matched masks at the loss's stride: only those pixels are copied
        gt_masks = masks[:, step // 2::step, step // 2::step][first_gt[image_index] + matched]
        loss_mask = self._mask_loss(mask_feat, kernels[image_index, prior_index], priors[prior_index], image_index,
                                    gt_masks)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_mask=loss_mask)

    def _mask_sample(self, num_imgs: int, *indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The positives whose masks are trained: all, or a random ``mask_priors_per_image`` times the images."""
        if self.mask_priors_per_image is None:
            return indices
        limit = self.mask_priors_per_image * num_imgs
        if len(indices[0]) <= limit:
            return indices
        chosen = torch.randperm(len(indices[0]), device=indices[0].device)[:limit]
        return tuple(index[chosen] for index in indices)

    def _assign(self, priors, scores, boxes, gt_boxes, gt_labels, gt_centres, real):
        """Dynamic soft-label assignment for every image at once: (positive, object index, IoU), each (B, N)."""
        num_priors, num_gt = priors.shape[0], gt_boxes.shape[1]
        settings = self.assigner
        centres, strides = priors[:, :2], priors[:, 2]
        inside = ((centres[None, :, None] > gt_boxes[:, None, :, :2]) &
                  (centres[None, :, None] < gt_boxes[:, None, :, 2:])).all(-1) & real[:, None]  # (B, N, G)
        candidate = inside.any(2, keepdim=True)  # only priors inside some object are assigned at all
        ious = bbox_overlaps(boxes, gt_boxes)  # (B, N, G)
        distance = (centres[None, :, None] - gt_centres[:, None]).pow(2).sum(-1).sqrt() / strides[None, :, None]
        # binary cross-entropy against the soft label (IoU for the object's class, 0 for the others),
        # weighted by the squared error: all classes as negatives, then the object's class corrected
        probability = scores.sigmoid()
        as_negative = F.binary_cross_entropy_with_logits(scores, torch.zeros_like(scores), reduction="none") \
            * probability.pow(2)  # (B, N, classes)
        own_class = gt_labels[:, None].expand(-1, num_priors, -1)  # (B, N, G)
        own, own_probability = scores.gather(2, own_class), probability.gather(2, own_class)
        cls_cost = (as_negative.sum(-1, keepdim=True) - as_negative.gather(2, own_class)
                    + F.binary_cross_entropy_with_logits(own, ious, reduction="none") * (ious - own_probability).pow(2))
        cost = (cls_cost - torch.log(ious + 1e-7) * settings.iou_weight
                + torch.pow(10, distance - settings.soft_center_radius))
        usable = candidate & real[:, None]
        cost = cost.masked_fill(~usable, float("inf"))
        # each object takes its k cheapest priors, k = the sum of its best IoUs
        k = min(settings.topk, num_priors)
        dynamic_ks = torch.topk(ious * candidate, k, dim=1).values.sum(1).int().clamp(min=1)  # (B, G)
        cheapest = torch.topk(cost, k, dim=1, largest=False).indices  # (B, k, G)
        taken = (torch.arange(k, device=cost.device)[None, :, None] < dynamic_ks[:, None]) & usable.gather(1, cheapest)
        matching = torch.zeros_like(usable).scatter_(1, cheapest, taken)
        # a prior taken by several objects goes to the one it costs least
        contested = matching.sum(2, keepdim=True) > 1
        matching = torch.where(contested, F.one_hot(cost.argmin(2), num_gt).bool(), matching)
        return matching.any(2), matching.byte().argmax(2), (matching * ious).sum(2)

    def _mask_loss(self, mask_feat, kernels, priors, image_index, gt_masks):
        """Dice loss of every positive prior's mask. The dynamic convolutions are 1x1, so each is one
        batched matrix product over all images' instances."""
        num_pos = reduce_mean(mask_feat.new_tensor([len(kernels)])).clamp_(min=1).item()
        if len(kernels) == 0:
            return mask_feat.sum() * 0
        h, w = mask_feat.shape[-2:]
        grid = self.prior_generator.single_level_grid_priors((h, w), level_idx=0, device=mask_feat.device)
        relative = (priors[:, None, :2] - grid[None]).permute(0, 2, 1) / (priors[:, 2, None, None] * 8)
        x = torch.cat([relative, mask_feat[image_index].flatten(2)], 1)  # (instances, 2 + prototypes, h * w)
        weights, biases = self.parse_dynamic_params(kernels)
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            x = torch.baddbmm(bias.reshape(len(kernels), -1, 1), weight.reshape(len(kernels), -1, x.shape[1]), x)
            if layer < len(weights) - 1:
                x = F.relu(x)
        scale = self.prior_generator.strides[0][0] // self.mask_loss_stride
        logits = F.interpolate(x.reshape(1, -1, h, w), scale_factor=scale, mode="bilinear", align_corners=False)[0]
        return self.loss_mask(logits, gt_masks, weight=None, avg_factor=num_pos)

    def _mask_predict_by_feat_single(self, mask_feat, kernels, priors):
        if self.boxes_only:  # one logit per detection: what follows makes 8 px specks, not full-size masks
            return mask_feat.new_zeros((len(kernels), 1, 1))
        return super()._mask_predict_by_feat_single(mask_feat, kernels, priors)

    def _bbox_mask_post_process(self, results, mask_feat, cfg, rescale=False, with_nms=True, img_meta=None):
        """mmdet's detections and masks, the masks made a few at a time: mmdet upsamples every detection's
        logits to the whole image at once, in float32, twice over (a 12-megapixel photo's 100 detections
        took 10 GB); here they take a byte a pixel, and about MASK_CHUNK_PIXELS floats at a time."""
        if self.boxes_only:
            return super()._bbox_mask_post_process(results, mask_feat, cfg, rescale, with_nms, img_meta)
        self.boxes_only = True  # mmdet's boxes, scores and labels, with specks for masks
        try:
            results = super()._bbox_mask_post_process(results, mask_feat, cfg, rescale, with_nms, img_meta)
        finally:
            self.boxes_only = False
        if len(results):
            results.masks = self._masks(results, mask_feat, cfg.mask_thr_binary, img_meta if rescale else None)
        return results

    def _masks(self, results, mask_feat, threshold: float, img_meta: dict | None) -> torch.Tensor:
        """The detections' binary masks, at the input's padded size or, given ``img_meta``, the image's:
        mmdet's sizes and interpolation, a few masks at a time. Computed in other batches, a logit can round
        otherwise in its last bit: a pixel right at the threshold may differ from mmdet's (1 of 7.7 million
        in the test)."""
        stride = self.prior_generator.strides[0][0]
        height, width = (stride * n for n in mask_feat.shape[-2:])
        if img_meta is not None:
            # mmdet scales the height by the first of scale_factor's (w, h): the same where the ratio is kept
            to_image = [1 / s for s in img_meta["scale_factor"]]
            size = (math.ceil(height * to_image[0]), math.ceil(width * to_image[1]))
            height, width = min(size[0], img_meta["ori_shape"][0]), min(size[1], img_meta["ori_shape"][1])
        masks = torch.empty((len(results), height, width), dtype=torch.bool, device=mask_feat.device)
        chunk = max(1, MASK_CHUNK_PIXELS // (height * width))
        for start in range(0, len(results), chunk):
            part = slice(start, start + chunk)
            logits = super()._mask_predict_by_feat_single(mask_feat, results.kernels[part], results.priors[part])
            logits = F.interpolate(logits.unsqueeze(0), scale_factor=stride, mode="bilinear")
            if img_meta is not None:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :height, :width]
            masks[part] = logits.squeeze(0).sigmoid() > threshold
        return masks


# mask pixels upsampled at once: 128 MB of float32, and as much again, or a little more, for the upsampling
# of the input's padding and the sigmoid
MASK_CHUNK_PIXELS = 2**25


@contextlib.contextmanager
def boxes_only(model):
    """Within it, RTMDet-ins heads skip their masks, each upsampled to the whole image, which
    reading plates does not use; detections then carry masks of no use, to be dropped. Other
    models' masks are computed as usual."""
    heads = [module for module in model.modules() if isinstance(module, BatchedRTMDetInsHead)]
    for head in heads:
        head.boxes_only = True
    try:
        yield
    finally:
        for head in heads:
            head.boxes_only = False


@OPTIM_WRAPPERS.register_module()
class CpuBFloat16OptimWrapper(OptimWrapper):
    """``--amp`` on the CPU: a one-stage detector's forward pass and loss under bfloat16 autocast (as
    RESULTS.md's bfloat16 figures were trained); a two-stage one's backbone and neck alone
    (``reduced_precision``), for mmcv's CPU RoIAlign and NMS take no bfloat16 (Mask R-CNN failed at its
    first iteration).

    mmengine's AmpOptimWrapper runs on accelerators only. bfloat16 has float32's range, so unlike
    float16 it needs no loss scaling; the weights, gradients and optimizer stay float32.
    """

    @contextlib.contextmanager
    def optim_context(self, model):
        detector = getattr(model, "module", model)  # within a distributed wrapper
        two_stage = hasattr(detector, "roi_head")
        with super().optim_context(model), (reduced_precision(detector) if two_stage else
                                            torch.autocast("cpu", dtype=torch.bfloat16)):
            yield


def cpu_has_bfloat16() -> bool:
    """AVX512-BF16 or AMX: the instructions that make bfloat16 faster than float32 on a CPU."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))


def mixed_precision_pays(device: str, work: str) -> bool:
    """Whether ``--amp`` runs in reduced precision here: on CUDA, and on CPUs with bfloat16 instructions.
    Other CPUs emulate bfloat16 at many times float32's cost (an AVX2-only AMD EPYC read a 1280x720
    image in 28 s against 0.5-0.7, and trained 9 times slower: RESULTS.md), so there ``--amp`` runs in
    float32 and says so. ``work``: what runs, for the note ("training", "reading")."""
    if device == "cpu" and not cpu_has_bfloat16():
        print(f"note: --amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), without which bfloat16 is "
              f"many times slower than float32; {work} in float32", file=sys.stderr)
        return False
    return True


def _as_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(item) for item in value)
    return value


@contextlib.contextmanager
def reduced_precision(model):
    """Within it, the model's backbone, neck and one-stage head run under autocast: bfloat16 on the
    CPU, float16 on CUDA. Their outputs come back as float32, for what follows takes float32 only
    (mmcv's NMS refuses bfloat16) and boxes and masks keep their precision. The model is unchanged
    outside it."""
    device = next(model.parameters()).device.type
    dtype = torch.bfloat16 if device == "cpu" else torch.float16

    def autocast(forward):
        def run(*args, **kwargs):
            with torch.autocast(device, dtype=dtype):
                return _as_float32(forward(*args, **kwargs))
        return run

    owners = [(model, "extract_feat")]
    if hasattr(model, "bbox_head"):  # a one-stage detector's head (two-stage heads stay float32)
        owners.append((model.bbox_head, "forward"))
    for owner, name in owners:
        setattr(owner, name, autocast(getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name in owners:
            delattr(owner, name)  # the class's own method shows through again


@METRICS.register_module()
class PlateMetric(BaseMetric):
    """COCO mAP, dv_mAP, EIR and the plate metrics of :mod:`alpr.metrics`, during validation.

    Plates are read where the model found them in the whole image, each character read again by the
    run's glyph classifier where it has one (``glyph_net``: the file the training step saves it to).
    The evaluate step's reader also reads each plate again at the size it reads best
    (:mod:`alpr.reader`), so its EIR is the higher."""

    default_prefix = None  # keys are plain: "EIR", "mAP", ... (what --best-metric and Katib name)

    def __init__(self, ann_file: str, glyph_net: str | None = None, collect_device: str = "cpu",
                 prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file = ann_file
        self.glyph_net = glyph_net

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            self.results.append((sample["img_id"], sample["img_path"], to_detections(sample["pred_instances"])))

    def compute_metrics(self, results: list) -> dict:
        gt = load_ground_truth(self.ann_file)
        # loaded at each validation: the training step writes the file before the runner starts
        net = saved_glyph_net(Path(self.glyph_net)) if self.glyph_net else None
        detections = {image_id: dets for image_id, _, dets in results}
        plates = {image_id: read_plates(dets, glyphs=glyph_reader(net, read(Path(path))) if net is not None else None)
                  for image_id, path, dets in results}
        metrics = evaluate(gt, detections, plates)
        return scalar_metrics(metrics)  # mmengine logs numbers only


def environment_line() -> str:
    """The versions and device a run trained with, in one line."""
    import platform

    import mmcv
    import mmdet
    import mmengine
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return (f"environment: Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmengine {mmengine.__version__}; {device}")


@register_backend("alpr_whole_files")
class WholeFileBackend(LocalBackend):
    """mmengine's local file backend, whose files are written whole or not at all (alpr.files.write_atomic).
    mmengine writes a checkpoint straight into its file, and again in place when it scores a new best: a kill
    or a full disk left it cut short, and where it was a run's first, a run no retry could resume."""

    def put(self, obj: bytes, filepath) -> None:
        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(filepath), obj)

    def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


@HOOKS.register_module()
class LatestBestCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook whose best, of checkpoints that score the same, is the latest (evaluate
    too picks the later of equals, after mAP): with rule "greater", a score of 0 at every early
    validation, or 1 on a small validation set, kept the least trained as best.pth. Its checkpoints and
    ``last_checkpoint`` are written whole (WholeFileBackend)."""

    rule_map = {**CheckpointHook.rule_map, "greater_or_equal": lambda x, y: x >= y}
    init_value_map = {**CheckpointHook.init_value_map, "greater_or_equal": -math.inf}

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("backend_args", dict(backend="alpr_whole_files"))
        super().__init__(*args, **kwargs)


@HOOKS.register_module()
class AlprRunHook(Hook):
    """Checks the model head before training, stamps checkpoints, prints Katib lines, keeps best.pth."""

    priority = "LOWEST"  # after CheckpointHook, so best_ckpt is already this validation's

    def __init__(self, run_meta: dict):
        self.run_meta = json.loads(json.dumps(run_meta))  # plain dicts, not ConfigDicts, in checkpoints
        self.glyph_net = None

    def before_run(self, runner) -> None:
        import logging

        import torch

        for logger in (runner.logger, *runner.logger.handlers):  # built quietly (alpr.model): training logs
            logger.setLevel(logging.INFO)
        runner.logger.info(environment_line())  # what the quiet build left out that a bug report needs
        # trained before the detector (alpr.train), kept in every checkpoint so that reading needs nothing else

        path = Path(runner.work_dir) / GLYPH_NET
        self.glyph_net = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def before_train(self, runner) -> None:
        # the dataset's classes are checked before the runner is built (alpr.train.check_dataset)
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        head = getattr(model, "bbox_head", None) or model.roi_head.bbox_head
        if head.num_classes != len(CLASSES):
            raise AlprError(f"model head predicts {head.num_classes} classes, the dataset has {len(CLASSES)}")
        # A checkpoint is saved just before its validation: a run stopped during one (the pod killed, out of
        # memory) resumes past it, so that checkpoint is validated first, or it never would be.
        step = training_step(runner)
        # Resumed: Katib's collector reads this pod's output alone, and the run's best validation may have
        # been printed by a pod before (a retried trial, or a finished one started again) only.
        if step and (best := best_validation(Path(runner.work_dir) / "log.json",
                                             self.run_meta["settings"]["best_metric"])):
            print(metric_lines(best), flush=True)
        if step and validated_step(Path(runner.work_dir), step) < step:
            runner.logger.info(f"validating the checkpoint of step {step}: its validation never ended")
            checkpointer = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
            # as after a validation in the loop: a new best is also written into the checkpoint it was saved in
            checkpointer.last_ckpt = runner.message_hub.get_info("last_ckpt")
            runner.val_loop.run()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # mmengine keeps the best and last checkpoints' absolute paths and, on a new best, deletes the
        # old one: in a copied run folder, that would be the original's. They are this folder's files.
        info = checkpoint.get("message_hub", {}).get("runtime_info", {})
        for key in ("best_ckpt", "last_ckpt"):
            if info.get(key):
                info[key] = str(Path(runner.work_dir) / Path(info[key]).name)
        # A resumed run is seeded anew (model.build_config), or its sampler and crops would replay the
        # start's first iterations; mmengine would reseed with the checkpoint's seed, warning, if it differed.
        checkpoint.setdefault("meta", {})["seed"] = runner.seed

    def before_train_epoch(self, runner) -> None:
        # A resumed iteration-based loop next draws and drops every batch already trained, to reach
        # the same place in the data: minutes of loading and augmenting for a long run. A fresh pass
        # of random crops serves training as well, so those draws are made free.
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter:
            loop.dataloader_iterator = itertools.chain(itertools.repeat(None, loop.iter), loop.dataloader_iterator)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # mmengine logs GPU memory only; this puts the process's RAM on the same progress line.
        import psutil

        runner.message_hub.update_scalar("train/host_memory_mb", psutil.Process().memory_info().rss / 2**20)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        glyphs = {"glyph_net": self.glyph_net} if self.glyph_net else {}
        checkpoint.setdefault("meta", {})["alpr"] = {**self.run_meta, "classes": list(CLASSES), **glyphs}

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        if not metrics:
            return
        print(metric_lines(metrics), flush=True)
        best = runner.message_hub.get_info("best_ckpt")
        if best and Path(best).is_file():
            copy_atomic(Path(best), Path(runner.work_dir) / "best.pth")
        # last: this validation's best checkpoints are saved
        write_atomic(Path(runner.work_dir) / VALIDATED_STEP, f"{training_step(runner)}\n")


VALIDATED_STEP = "validated_step"  # in a run folder: the iteration (or epoch) of the last validation that ended


def training_step(runner) -> int:
    """Where a run stands: its iteration when it trains by iterations, else its epoch."""
    return runner.iter if isinstance(runner.train_loop, IterBasedTrainLoop) else runner.epoch


def validated_step(work: Path, step: int) -> int:
    """The step of the run's last validation that ended. A run from before alpr kept it counts as
    validated up to ``step`` if it logged any validation, as alpr then assumed."""
    marker = work / VALIDATED_STEP
    if marker.is_file():
        text = marker.read_text().strip()
        return int(text) if text.isdigit() else 0  # damaged: validated again
    return step if last_validation(work / "log.json") else 0


def validations(log: Path) -> list[dict]:
    """The metrics of each validation in a run's JSON-lines log (mmengine's scalars), oldest first."""
    found = []
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short when the run was stopped
            continue
        if isinstance(record, dict) and all(key in record for key in KEY_METRICS):
            found.append(record)
    return found


def last_validation(log: Path) -> dict | None:
    return (validations(log) or [None])[-1]


def best_validation(log: Path, metric: str) -> dict | None:
    """The validation scoring the most ``metric`` (the later of equals, as best.pth is), if any."""
    return max(reversed(validations(log)), key=lambda record: record.get(metric, -math.inf), default=None)


def time_budget_lr_factor(fraction: float, iteration: int, warmup_iters: int, start_factor: float,
                          min_lr_ratio: float) -> float:
    """The learning rate, as a fraction of the peak, once ``fraction`` of the time budget is spent:
    a linear warm-up over the first ``warmup_iters`` iterations (or the first tenth of the time, if
    that ends sooner; 0 or 1: none, as by iterations), times a cosine from 1 to ``min_lr_ratio``
    over the time."""
    warmed = max(iteration / warmup_iters, fraction / WARMUP_SHARE) if warmup_iters >= 2 else 1.0
    warmup = start_factor + (1 - start_factor) * min(1.0, warmed)
    cosine = min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * min(fraction, 1.0))) / 2
    return warmup * cosine


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Trains for ``minutes`` of wall-clock time (validations included), whatever the pace.

    The cosine schedule follows the time spent, not the iterations, so it ends annealed when the time
    is up; the iteration then running is the last: it is checkpointed and validated (where the time
    ends in a validation, the iteration validated is the last). It spans the
    detector's own time, from its first iteration: what the step spent before (the glyph classifier's
    training, a tenth of 30 minutes or more) would otherwise have used up the warm-up. A run resumed
    carries on from the time its checkpoint had spent (kept in the message hub, which checkpoints hold),
    on the schedule it started with: given more minutes, it trains the added ones at the schedule's floor,
    as a resumed run given more epochs or iterations does, rather than warming the rate up again.
    The iteration count shown, and with it the ETA, is the one projected from the pace so far.
    """

    priority = "HIGHEST"  # the learning rate is set before RuntimeInfoHook logs it

    def __init__(self, minutes: float, warmup_iters: int, start_factor: float, min_lr_ratio: float,
                 spent_seconds: float = 0.0):
        self.seconds = minutes * 60
        self.warmup_iters, self.start_factor, self.min_lr_ratio = warmup_iters, start_factor, min_lr_ratio
        self.spent_seconds = spent_seconds  # by the training step before the runner (the glyph classifier's)

    def before_train(self, runner) -> None:
        self.started = time.monotonic() - runner.message_hub.get_info("train_seconds", self.spent_seconds)
        self.schedule_seconds = runner.message_hub.get_info("schedule_seconds", self.seconds)
        self.schedule_start = runner.message_hub.get_info("schedule_start_seconds", self._spent())
        self.iteration_cap = runner.train_loop.max_iters  # --iters, if given
        for group in runner.optim_wrapper.param_groups:
            group.setdefault("initial_lr", group["lr"])  # restored from the optimizer's state on resume
        if runner.iter and self._spent() >= self.seconds:  # a finished run, resumed: nothing left to do
            runner.train_loop._max_iters = runner.iter

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        spent = self._spent()
        runner.message_hub.update_info("train_seconds", spent)
        runner.message_hub.update_info("schedule_seconds", self.schedule_seconds)
        runner.message_hub.update_info("schedule_start_seconds", self.schedule_start)
        share = (spent - self.schedule_start) / max(self.schedule_seconds - self.schedule_start, 1.0)
        factor = time_budget_lr_factor(share, runner.iter, self.warmup_iters, self.start_factor, self.min_lr_ratio)
        fraction = spent / self.seconds
        for group in runner.optim_wrapper.param_groups:
            group["lr"] = group["initial_lr"] * factor
        # mmengine's loop has no other way to end early and still checkpoint and validate its last iteration
        projected = runner.iter / fraction if runner.iter and fraction else runner.iter + 2
        last = runner.iter + 1 if fraction >= 1 else max(runner.iter + 2, round(projected))
        runner.train_loop._max_iters = min(self.iteration_cap, last)

    def after_val_epoch(self, runner, metrics=None) -> None:
        # time up by a scheduled validation's end: its iteration, checkpointed and now validated, is the last
        # (else one more would be trained, checkpointed and validated, minutes on a CPU)
        if self._spent() >= self.seconds:
            runner.train_loop._max_iters = min(runner.train_loop._max_iters, runner.iter)

    def after_train(self, runner) -> None:
        runner.logger.info(f"time budget: {self._spent() / 60:.1f} of {self.seconds / 60:g} minutes spent, "
                           f"{runner.iter} iterations")

    def _spent(self) -> float:
        return time.monotonic() - self.started
