"""alpr's mmdet pieces that need no training: the ground-truth mask rasterizer, the batched target
assignment and to_detections."""

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmengine.structures import InstanceData
from pycocotools import mask as mask_utils

from alpr.mmdet_ext import FilledPolygonMasks, UseFilledPolygonMasks, to_detections
from alpr.plates import CLASSES


def _tensors(polygons: list, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    expected = PolygonMasks(polygons, height, width).to_tensor(torch.bool, "cpu")
    return expected, FilledPolygonMasks(polygons, height, width).to_tensor(torch.bool, "cpu")


def test_whole_pixel_polygons_give_mmdets_masks_exactly():
    polygons = [
        [np.array([10, 10, 30, 12, 28, 25, 9, 22], float)],  # a quadrilateral
        [np.array([0, 0, 15, 0, 15, 7, 0, 7], float)],  # on the image's top-left corner
        [np.array([50, 30, 63, 30, 63, 47, 50, 47], float)],  # on the bottom-right corner
        [np.array([35, 5, 40, 5, 40, 9], float), np.array([42, 20, 47, 20, 45, 26], float)],  # two parts
    ]
    expected, filled = _tensors(polygons, 48, 64)
    assert filled.shape == (4, 48, 64) and filled.dtype == torch.bool
    assert torch.equal(expected, filled) and expected.sum() > 0


def test_fractional_polygons_differ_from_mmdets_only_at_a_few_edge_pixels():
    rng = np.random.default_rng(0)
    polygons = []
    for _ in range(60):
        centre, size = rng.uniform(20, 300, 2), rng.uniform(3, 40, 2)
        corners = centre + size * np.array([[-1, -1], [1, -0.8], [0.9, 1], [-1.1, 0.9]]) / 2
        polygons.append([np.clip(corners, 0, 320).ravel()])
    expected, filled = _tensors(polygons, 320, 320)
    assert (expected ^ filled).sum() <= 0.002 * expected.sum()


def test_no_instances_and_requested_dtype():
    empty = FilledPolygonMasks([], 20, 30).to_tensor(torch.float32, "cpu")
    assert empty.shape == (0, 20, 30) and empty.dtype == torch.float32
    square = FilledPolygonMasks([[np.array([2, 2, 8, 2, 8, 8, 2, 8], float)]], 10, 10).to_tensor(torch.uint8, "cpu")
    assert square.dtype == torch.uint8 and square.sum() == 36


def test_transform_swaps_only_polygon_masks():
    polygons = PolygonMasks([[np.array([1, 1, 5, 1, 5, 5], float)]], 8, 8)
    converted = UseFilledPolygonMasks()(dict(gt_masks=polygons))["gt_masks"]
    assert type(converted) is FilledPolygonMasks and converted.masks == polygons.masks
    bitmaps = BitmapMasks(np.zeros((1, 8, 8), np.uint8), 8, 8)
    assert UseFilledPolygonMasks()(dict(gt_masks=bitmaps))["gt_masks"] is bitmaps
    assert UseFilledPolygonMasks()(dict(img=None)) == dict(img=None)


def _head_inputs(seed: int, objects: list[int], size: int = 128, num_classes: int = 6):
    """Random RTMDet-ins head outputs for len(objects) images and ground truth with masks."""
    rng = torch.Generator().manual_seed(seed)
    levels = [(size // s, size // s, s) for s in (8, 16, 32)]
    params = 169  # RTMDetInsHead's dynamic-conv parameters for 8 prototypes, 8 channels, 3 layers
    batch = len(objects)
    cls_scores = [torch.randn(batch, num_classes, h, w, generator=rng) - 2 for h, w, _ in levels]
    bbox_preds = [(0.5 + torch.rand(batch, 4, h, w, generator=rng) * 3) * s for h, w, s in levels]
    kernels = [torch.randn(batch, params, h, w, generator=rng) * 0.3 for h, w, _ in levels]
    mask_feat = torch.randn(batch, 8, size // 8, size // 8, generator=rng)
    gt = []
    for count in objects:
        corner = torch.rand(count, 2, generator=rng) * size * 0.7
        boxes = torch.cat([corner, (corner + 6 + torch.rand(count, 2, generator=rng) * size * 0.3).clamp(max=size)], 1)
        polygons = [[np.array([x0, y0, x1, y0, x1, y1, x0, y1])] for x0, y0, x1, y1 in boxes.tolist()]
        gt.append(InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (count,), generator=rng),
                               masks=FilledPolygonMasks(polygons, size, size)))
    metas = [dict(img_shape=(size, size), pad_shape=(size, size))] * batch
    return [cls_scores, bbox_preds, kernels, mask_feat], gt, metas


@pytest.mark.parametrize("seed, objects", [(0, [3, 12, 0, 25]), (1, [1]), (2, [0, 0]), (3, [40, 40])])
def test_batched_head_gives_mmdets_losses_and_gradients(seed, objects):
    config = dict(num_classes=6, in_channels=8, feat_channels=8, stacked_convs=1,
                  anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
                  bbox_coder=dict(type="DistancePointBBoxCoder"),
                  loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
                  loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                  loss_mask=dict(type="DiceLoss", loss_weight=2.0, eps=5e-6, reduction="mean"),
                  train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1,
                                 pos_weight=-1, debug=False))
    results = []
    for head_type in ("RTMDetInsSepBNHead", "BatchedRTMDetInsHead"):
        outputs, gt, metas = _head_inputs(seed, objects)
        leaves = [t.requires_grad_() for level in outputs[:3] for t in level] + [outputs[3].requires_grad_()]
        losses = MODELS.build(dict(type=head_type, **config)).loss_by_feat(*outputs, gt, metas)
        total = {name: sum(value) if isinstance(value, list) else value for name, value in losses.items()}
        gradients = torch.autograd.grad(sum(total.values()), leaves, allow_unused=True)
        results.append((total, gradients))
    (expected, expected_grads), (batched, batched_grads) = results
    assert expected.keys() == batched.keys() == {"loss_cls", "loss_bbox", "loss_mask"}
    for name in expected:
        assert torch.allclose(expected[name], batched[name], rtol=1e-5, atol=1e-7), name
    if sum(objects):
        assert expected["loss_bbox"] > 0 and expected["loss_mask"] > 0  # objects were assigned priors
    for want, got in zip(expected_grads, batched_grads):
        want = torch.zeros(1) if want is None else want
        got = torch.zeros(1) if got is None else got
        assert torch.allclose(want, got, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rle", [False, True])
def test_to_detections_drops_low_scores_and_keeps_each_mask(rle):
    masks = torch.zeros((3, 12, 16), dtype=torch.bool)
    masks[0, 1:4, 2:6] = masks[1, 5:9, 3:12] = masks[2, 0:2, 0:2] = True
    fields = dict(scores=torch.tensor([0.9, 0.01, 0.5]), bboxes=torch.tensor([[2.0, 1, 6, 4], [3, 5, 12, 9], [0, 0, 2, 2]]),
                  labels=torch.tensor([0, 3, 5]), masks=masks)
    detections = to_detections(fields, score_threshold=0.05, rle=rle)
    assert [d.label for d in detections] == [CLASSES[0], CLASSES[5]]
    assert [round(d.score, 3) for d in detections] == [0.9, 0.5] and detections[1].bbox == (0.0, 0.0, 2.0, 2.0)
    for detection, expected in zip(detections, masks[[0, 2]].numpy()):
        mask = mask_utils.decode(detection.mask) if rle else detection.mask
        assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
