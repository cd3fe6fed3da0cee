"""alpr's mmdet pieces that need no training: the ground-truth mask rasterizer and to_detections."""

import numpy as np
import pytest
import torch
from mmdet.structures.mask import BitmapMasks, PolygonMasks
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
