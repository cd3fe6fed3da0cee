"""alpr's mmdet pieces that need no training: the ground-truth mask rasterizer, the batched target
assignment and to_detections."""

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmengine.structures import InstanceData
from pycocotools import mask as mask_utils

from alpr.metrics import mask_rle
from alpr.mmdet_ext import (ChannelsLastMaxPool2d, CpuBFloat16OptimWrapper, FilledPolygonMasks,
                             UseFilledPolygonMasks, mask_centres, masks_rle, rle_from_run_changes, to_detections)
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


def test_picking_instances_keeps_the_drawn_pixels():
    polygons = [[np.array([x, 2, x + 6, 2, x + 6, 9, x, 9], float)] for x in (1, 10, 20, 30)]
    filled = FilledPolygonMasks(polygons, 12, 40)
    full = filled.to_tensor(torch.bool, "cpu")
    for index, rows in ((np.array([True, False, True, False]), [0, 2]), ([3, 1], [3, 1]), (2, [2]),
                        (slice(1, 3), [1, 2]), (torch.tensor([False, True, True, True]), [1, 2, 3]),
                        (np.array([], np.int64), [])):
        picked = filled[index]
        assert type(picked) is FilledPolygonMasks and picked.masks == [polygons[i] for i in rows]
        assert torch.equal(picked.to_tensor(torch.bool, "cpu"), full[rows])
    joined = FilledPolygonMasks.cat([filled[[2]], filled[[0, 1]]])
    assert type(joined) is FilledPolygonMasks and torch.equal(joined.to_tensor(torch.bool, "cpu"), full[[2, 0, 1]])
    # mmengine's InstanceData picks by a boolean tensor, slice by slice, then cat
    instances = InstanceData(masks=filled, labels=torch.arange(4))[torch.tensor([True, False, False, True])]
    assert type(instances.masks) is FilledPolygonMasks
    assert torch.equal(instances.masks.to_tensor(torch.bool, "cpu"), full[[0, 3]])


def test_centres_come_from_the_pixels_as_from_the_bitmaps():
    rng = np.random.default_rng(1)
    polygons = [[np.array([x, y, x + w, y, x + w * 0.8, y + h, x, y + h * 1.1])]
                for x, y, w, h in rng.uniform([0, 0, 2, 2], [90, 50, 30, 20], (12, 4))]
    polygons.append([np.array([200.0, 200, 210, 200, 210, 210])])  # outside the image: no pixels
    filled = FilledPolygonMasks(polygons, 60, 100)
    bitmaps = filled.to_tensor(torch.bool, "cpu")
    ys, xs = torch.meshgrid(torch.arange(60.0), torch.arange(100.0), indexing="ij")
    pixels = bitmaps.sum((1, 2)).clamp(min=1)
    expected = torch.stack([(bitmaps * xs).sum((1, 2)) / pixels, (bitmaps * ys).sum((1, 2)) / pixels], 1)
    assert pixels[:-1].min() > 1 and bitmaps[-1].sum() == 0
    centres = filled.centres()
    assert centres.dtype == torch.float32 and torch.allclose(centres, expected)
    assert torch.allclose(mask_centres([filled[:5], filled[5:]], bitmaps), expected)  # a batch of two images
    as_bitmaps = BitmapMasks(bitmaps.numpy().astype(np.uint8), 60, 100)  # any other mask type: the same
    assert torch.allclose(mask_centres([filled[:5], as_bitmaps[5:]], bitmaps), expected)
    assert FilledPolygonMasks([], 60, 100).centres().shape == (0, 2)


def test_fast_pooling_backbone_gives_cspnexts_features_and_gradients():
    config = dict(arch="P5", expand_ratio=0.5, deepen_factor=0.167, widen_factor=0.125, channel_attention=True)
    torch.manual_seed(0)
    plain, fast = MODELS.build(dict(type="CSPNeXt", **config)), MODELS.build(dict(type="FastPoolingCSPNeXt", **config))
    fast.load_state_dict(plain.state_dict())  # strict: the same keys, so checkpoints load either way
    pools = [m for m in fast.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [p.kernel_size for p in pools] == [5, 9, 13] and all(type(p) is ChannelsLastMaxPool2d for p in pools)
    results = []
    for model in (plain, fast):
        image = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(1), requires_grad=True)
        features = model(image)
        (gradient,) = torch.autograd.grad(sum((f * f).sum() for f in features), image)
        results.append((features, gradient))
    (want, want_gradient), (got, got_gradient) = results
    assert all(w.is_contiguous() == g.is_contiguous() and torch.allclose(w, g) for w, g in zip(want, got))
    assert torch.allclose(want_gradient, got_gradient) and got_gradient.abs().sum() > 0


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


HEAD = dict(num_classes=6, in_channels=8, feat_channels=8, stacked_convs=1,
            anchor_generator=dict(type="MlvlPointGenerator", offset=0, strides=[8, 16, 32]),
            bbox_coder=dict(type="DistancePointBBoxCoder"),
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_mask=dict(type="DiceLoss", loss_weight=2.0, eps=5e-6, reduction="mean"),
            train_cfg=dict(assigner=dict(type="DynamicSoftLabelAssigner", topk=13), allowed_border=-1,
                           pos_weight=-1, debug=False))


@pytest.mark.parametrize("seed, objects", [(0, [3, 12, 0, 25]), (1, [1]), (2, [0, 0]), (3, [40, 40])])
def test_batched_head_gives_mmdets_losses_and_gradients(seed, objects):
    results = []
    for head_type in ("RTMDetInsSepBNHead", "BatchedRTMDetInsHead"):
        outputs, gt, metas = _head_inputs(seed, objects)
        leaves = [t.requires_grad_() for level in outputs[:3] for t in level] + [outputs[3].requires_grad_()]
        losses = MODELS.build(dict(type=head_type, **HEAD)).loss_by_feat(*outputs, gt, metas)
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


@pytest.mark.parametrize("rescale", [True, False])
def test_batched_head_predicts_mmdets_masks_a_few_at_a_time(monkeypatch, rescale):
    """The same detections and masks as mmdet's head, made a few masks at a time: but for a pixel whose logit,
    computed in another batch, rounds to the other side of the threshold."""
    import alpr.mmdet_ext

    from mmengine.config import ConfigDict

    monkeypatch.setattr(alpr.mmdet_ext, "MASK_CHUNK_PIXELS", 3 * 128 * 128)  # masks of 1 or 3 at a time
    outputs, _, _ = _head_inputs(5, [0])
    # the image was about 3 times the input's size (128 px), as a photo read at the model's size; the two scales
    # differ, as mmdet's rounding makes them, so that its (odd) use of the first for the height is followed too
    metas = [dict(img_shape=(128, 120), pad_shape=(128, 128), ori_shape=(397, 372), scale_factor=(1 / 3.1, 1 / 3.05))]
    cfg = ConfigDict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                     max_per_img=100, mask_thr_binary=0.5)
    predicted = []
    for head_type in ("RTMDetInsSepBNHead", "BatchedRTMDetInsHead"):
        torch.manual_seed(0)
        head = MODELS.build(dict(type=head_type, **HEAD)).eval()
        with torch.no_grad():
            predicted.append(head.predict_by_feat(*outputs, batch_img_metas=metas, cfg=cfg, rescale=rescale)[0])
    expected, got = predicted
    assert len(got) == len(expected) > 20
    assert torch.equal(got.bboxes, expected.bboxes) and torch.equal(got.labels, expected.labels)
    assert got.masks.shape == expected.masks.shape == ((len(got), 397, 372) if rescale else (len(got), 128, 128))
    assert int((got.masks ^ expected.masks).sum()) <= expected.masks.sum() * 1e-6 and expected.masks.any()


def test_capped_mask_priors_train_a_random_sample_whose_mean_loss_is_the_full_loss():
    outputs, gt, metas = _head_inputs(0, [3, 12, 0, 25])
    full = MODELS.build(dict(type="BatchedRTMDetInsHead", **HEAD)).loss_by_feat(*outputs, gt, metas)
    capped_head = MODELS.build(dict(type="BatchedRTMDetInsHead", mask_priors_per_image=2, **HEAD))
    kernels = outputs[2]
    torch.manual_seed(0)
    draws = []
    for _ in range(200):
        for level in kernels:
            level.requires_grad_().grad = None
        losses = capped_head.loss_by_feat(*outputs, gt, metas)
        losses["loss_mask"].backward()
        trained = sum(int(level.grad.abs().sum(1).gt(0).sum()) for level in kernels)  # priors whose mask was trained
        assert 0 < trained <= 2 * len(metas)
        assert torch.equal(losses["loss_cls"], full["loss_cls"]) and torch.equal(losses["loss_bbox"], full["loss_bbox"])
        draws.append(losses["loss_mask"].item())
    assert len(set(draws)) > 1  # a new sample each time
    assert np.mean(draws) == pytest.approx(full["loss_mask"].item(), rel=0.02)


def test_to_detections_drops_low_scores_and_keeps_each_mask():
    masks = torch.zeros((3, 12, 16), dtype=torch.bool)
    masks[0, 1:4, 2:6] = masks[1, 5:9, 3:12] = masks[2, 0:2, 0:2] = True
    fields = dict(scores=torch.tensor([0.9, 0.01, 0.5]), bboxes=torch.tensor([[2.0, 1, 6, 4], [3, 5, 12, 9], [0, 0, 2, 2]]),
                  labels=torch.tensor([0, 3, 5]), masks=masks)
    detections = to_detections(fields, score_threshold=0.05)
    assert [d.label for d in detections] == [CLASSES[0], CLASSES[5]]
    assert [round(d.score, 3) for d in detections] == [0.9, 0.5] and detections[1].bbox == (0.0, 0.0, 2.0, 2.0)
    for detection, expected in zip(detections, masks[[0, 2]].numpy()):
        assert np.array_equal(mask_utils.decode(detection.mask), expected)
    assert [d.mask for d in to_detections(fields, score_threshold=0.05, masks=False)] == [None, None]


def test_masks_are_encoded_a_few_at_a_time_each_the_one_picked():
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand((21, 9, 13), generator=generator) > 0.5  # more than MASKS_COPIED_AT_ONCE, picked or not
    picked = torch.tensor([20, 0, 3, 4, 5, 6, 7, 8, 9, 11, 1])
    expected = [mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in masks[picked]]
    assert [rle["counts"] for rle in masks_rle(masks, picked)] == [rle["counts"].decode() for rle in expected]
    assert len(masks_rle(masks)) == 21 and masks_rle(masks)[20] == masks_rle(masks, torch.tensor([20]))[0]


def test_rle_from_run_changes_equals_pycocotools():
    generator = torch.Generator().manual_seed(0)
    for shape in ((40, 7, 5), (30, 33, 41), (3, 1, 1), (0, 4, 4)):
        masks = torch.rand(shape, generator=generator) < torch.rand((shape[0], 1, 1), generator=generator)
        masks[: shape[0] // 3] = False  # empty masks too
        if shape[0]:
            masks[-1] = True  # and a full one
        expected = [mask_rle(mask.numpy().astype(np.uint8)) for mask in masks]
        assert rle_from_run_changes(masks) == expected == masks_rle(masks)


def _plate_sample(boards: list[tuple[float, float, float, float]], labels: list[str]) -> dict:
    from mmdet.structures.bbox import HorizontalBoxes

    polygons = [[np.array([x1, y1, x2, y1, x2, y2, x1, y2], np.float64)] for x1, y1, x2, y2 in boards]
    return dict(img=np.zeros((720, 1280, 3), np.uint8), img_shape=(720, 1280),
                gt_bboxes=HorizontalBoxes(torch.tensor(boards, dtype=torch.float32)),
                gt_bboxes_labels=np.array([CLASSES.index(label) for label in labels]),
                gt_ignore_flags=np.zeros(len(boards), bool), gt_masks=PolygonMasks(polygons, 720, 1280))


def test_plate_crop_keeps_a_whole_board_in_every_window():
    from alpr.mmdet_ext import PlateCrop

    crop = PlateCrop(crop_size=(320, 320), recompute_bbox=True, allow_negative_crop=True)
    np.random.seed(0)
    boards = [(100.0, 600.0, 300.0, 650.0), (1000.0, 40.0, 1100.0, 90.0)]
    offsets = set()
    for _ in range(60):
        result = crop(_plate_sample(boards + [(110.0, 610.0, 120.0, 640.0)], ["l_board", "r_board", "7"]))
        x0, y0 = -result["homography_matrix"][:2, 2]
        offsets.add((x0, y0))
        assert result["img"].shape[:2] == (320, 320)
        assert any(x0 <= x1 and y0 <= y1 and x2 <= x0 + 320 and y2 <= y0 + 320 for x1, y1, x2, y2 in boards)
        kept = result["gt_bboxes_labels"]
        assert CLASSES.index("l_board") in kept or CLASSES.index("r_board") in kept
    assert len(offsets) > 20  # still random: anywhere that holds the board


def test_plate_crop_centres_a_board_larger_than_the_window_and_crops_anywhere_without_one():
    from alpr.mmdet_ext import PlateCrop

    crop = PlateCrop(crop_size=(320, 320), recompute_bbox=True, allow_negative_crop=True)
    x0, y0 = -crop(_plate_sample([(200.0, 300.0, 700.0, 400.0)], ["l_board"]))["homography_matrix"][:2, 2]
    assert x0 == 290 and 80 <= y0 <= 300  # centred across the board's width; its whole height inside
    np.random.seed(1)
    starts = {tuple(-crop(_plate_sample([(0.0, 0.0, 10.0, 10.0)], ["7"]))["homography_matrix"][:2, 2])
              for _ in range(20)}
    assert len(starts) > 10


def _random_polygons(rng, count: int, centre_low: float, centre_high: float) -> list[list[np.ndarray]]:
    """Star-shaped (so valid) polygons of 3-8 corners, one per object."""
    objects = []
    for _ in range(count):
        cx, cy = rng.uniform(centre_low, centre_high, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 9)))
        radii = rng.uniform(2, 60) * rng.uniform(0.5, 1, len(angles))
        objects.append([np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).ravel()])
    return objects


def test_window_crop_moves_objects_inside_and_clips_those_across_the_edge_as_mmdet_does():
    from alpr.mmdet_ext import WindowPolygonMasks

    rng = np.random.default_rng(0)
    window = np.array([100, 100, 548, 548])
    counts = {True: 0, False: 0}
    for _ in range(20):
        objects = _random_polygons(rng, 12, 60, 600)
        ours, mmdets = (masks(objects, 720, 1280).crop(window) for masks in (WindowPolygonMasks, PolygonMasks))
        assert (ours.height, ours.width) == (mmdets.height, mmdets.width) == (448, 448)
        uncropped = PolygonMasks(objects, 720, 1280).to_ndarray()[:, 100:548, 100:548]
        for k, (polygon,) in enumerate(objects):
            inside = 100 <= polygon.min() and polygon.max() <= 548
            counts[inside] += 1
            if inside:  # exactly the uncropped mask (mmdet's shapely round trip moves a few edge pixels)
                assert (ours.to_ndarray()[k] == uncropped[k]).all()
            else:  # mmdet's own clipping
                assert all(np.array_equal(a, b) for a, b in zip(ours.masks[k], mmdets.masks[k]))
    assert min(counts.values()) > 20
    assert type(WindowPolygonMasks(objects, 720, 1280)[[0, 2]]) is WindowPolygonMasks


def test_plate_crop_with_a_scale_cuts_the_window_of_the_resized_image_then_resizes_only_it():
    from alpr.mmdet_ext import PlateCrop

    crop = PlateCrop(crop_size=(320, 320), scale=(1280, 1280), ratio_range=(0.5, 0.5), recompute_bbox=True,
                     allow_negative_crop=True)
    np.random.seed(2)
    board = (400.0, 300.0, 600.0, 360.0)  # 100 x 30 px once the 1280 px image is resized to 640
    for _ in range(10):
        sample = _plate_sample([board], ["l_board"])
        sample["img"][300:360, 400:600] = 255
        result = crop(sample)
        assert result["img"].shape[:2] == (320, 320)  # a 640 px window, resized to half
        to_window = result["homography_matrix"]  # the crop's move, then the resize
        x1, y1, x2, y2 = (to_window @ np.array([[400, 600], [300, 360], [1, 1]]))[:2].T.ravel()[[0, 1, 2, 3]]
        assert (x2 - x1, y2 - y1) == (100, 30)
        assert np.allclose(result["gt_bboxes"].numpy(), [[x1, y1, x2, y2]], atol=1)
        assert np.allclose(result["gt_masks"].get_bboxes("hbox").numpy(), [[x1, y1, x2, y2]], atol=1)
        inner = result["img"][int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2]
        assert inner.size and (inner == 255).all()  # the painted board, where its box says
        assert result["img"].mean() < 255 * 3000 / 320**2 + 1  # and nothing else painted


def test_plate_crop_with_a_board_width_scales_the_picked_board_to_it_in_that_share_of_windows():
    from alpr.mmdet_ext import PlateCrop

    boards = [(100.0, 500.0, 164.0, 532.0), (700.0, 100.0, 1100.0, 300.0)]  # 64 and 400 px wide
    widths = {share: [] for share in (1.0, 0.5)}
    np.random.seed(3)
    for share, found in widths.items():
        crop = PlateCrop(crop_size=(448, 448), scale=(1280, 1280), ratio_range=(1.0, 1.0), board_width=(256, 400),
                         board_share=share, recompute_bbox=True, allow_negative_crop=True)
        for _ in range(40):
            to_window = crop(_plate_sample(boards, ["l_board", "l_board"]))["homography_matrix"]
            corners = [(to_window @ np.array([[x1, x2], [y1, y2], [1, 1]]))[:2] for x1, y1, x2, y2 in boards]
            whole = [xs[1] - xs[0] for xs, ys in corners if xs.min() >= 0 and ys.min() >= 0 and max(xs.max(),
                     ys.max()) <= 448.01]  # the boards inside the window, as wide as they are there
            found.append(round(max(whole), 3))
    assert all(255 <= width <= 401 for width in widths[1.0])  # the small board enlarged, the large one shrunk
    assert min(widths[1.0]) < 300 and max(widths[1.0]) > 360  # drawn across the range
    unscaled = sum(width in (64, 400) for width in widths[0.5])  # ratio_range 1: the image's own sizes
    assert 8 <= unscaled <= 32


def test_a_collated_batch_holds_one_block_of_memory_per_dtype_and_the_same_values():
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmengine.dataset import pseudo_collate
    from mmengine.structures import InstanceData

    from alpr.mmdet_ext import shared_storage_collate

    def sample(objects: int) -> dict:
        data = DetDataSample()
        data.gt_instances = InstanceData(bboxes=HorizontalBoxes(torch.rand(objects, 4) * 100),
                                         labels=torch.randint(0, 40, (objects,)))
        data.ignored_instances = InstanceData(bboxes=HorizontalBoxes(torch.zeros(0, 4)),
                                              labels=torch.zeros(0, dtype=torch.long))
        return dict(inputs=torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8), data_samples=data)

    samples = [sample(n) for n in (3, 0, 7)]
    ours, plain = shared_storage_collate(samples), pseudo_collate(samples)
    tensors = list(ours["inputs"])
    for mine, theirs in zip(ours["data_samples"], plain["data_samples"]):
        for kind in ("gt_instances", "ignored_instances"):
            a, b = mine.get(kind), theirs.get(kind)
            assert torch.equal(a.labels, b.labels) and torch.equal(a.bboxes.tensor, b.bboxes.tensor)
            assert type(a.bboxes) is HorizontalBoxes
            tensors += [a.labels, a.bboxes.tensor]
    assert all(torch.equal(a, b) for a, b in zip(ours["inputs"], plain["inputs"]))
    blocks = {(t.dtype, t.untyped_storage().data_ptr()) for t in tensors}
    assert {dtype for dtype, _ in blocks} == {torch.uint8, torch.float32, torch.int64} and len(blocks) == 3


def test_cpu_mixed_precision_computes_in_bfloat16_and_updates_float32_weights():
    layer = torch.nn.Conv2d(3, 4, 3)
    wrapper = CpuBFloat16OptimWrapper(torch.optim.SGD(layer.parameters(), lr=0.1))
    before = layer.weight.detach().clone()
    with wrapper.optim_context(layer):
        out = layer(torch.ones(1, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert layer.weight.dtype == torch.float32 and not torch.equal(layer.weight, before)
    assert layer(torch.ones(1, 3, 8, 8)).dtype == torch.float32  # autocast ends with the context


def test_reduced_precision_autocasts_the_features_and_hands_them_on_in_float32():
    """A stand-in detector: extract_feat and a one-stage head, as mmdet's have them."""
    from alpr.mmdet_ext import reduced_precision

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 2, 1)

        def forward(self, features):
            return [self.conv(f) for f in features], (torch.arange(3),)

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.bbox_head = torch.nn.Conv2d(3, 4, 3), Head()

        def extract_feat(self, images):
            return (self.backbone(images),)

    detector, images = Detector(), torch.rand(1, 3, 16, 16)
    seen = []
    detector.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    detector.bbox_head.conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    expected = detector.bbox_head(detector.extract_feat(images))
    with reduced_precision(detector):
        features = detector.extract_feat(images)
        scores, (indices,) = detector.bbox_head(features)
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]
    assert features[0].dtype == scores[0].dtype == torch.float32 and indices.dtype == torch.int64
    assert torch.allclose(scores[0], expected[0][0], atol=0.05)
    assert "extract_feat" not in vars(detector) and "forward" not in vars(detector.bbox_head)


@pytest.mark.parametrize("device, has_bfloat16, pays", [("cpu", False, False), ("cpu", True, True),
                                                       ("cuda", False, True)])
def test_amp_runs_in_float32_only_on_a_cpu_without_bfloat16_instructions_and_says_so(monkeypatch, capsys, device,
                                                                                     has_bfloat16, pays):
    import alpr.mmdet_ext

    monkeypatch.setattr(alpr.mmdet_ext, "cpu_has_bfloat16", lambda: has_bfloat16)
    assert alpr.mmdet_ext.mixed_precision_pays(device, "reading") is pays
    note = capsys.readouterr().err
    assert ("--amp: this CPU has no bfloat16 instructions" in note and "reading in float32" in note) is not pays


def test_training_loads_an_image_as_reading_does_a_turned_webp_turned(tmp_path):
    """mmcv's LoadImageFromFile would give the detector a phone's turned WebP on its side, as labelme did
    not show it and as predict does not read it."""
    from PIL import Image

    from mmdet.registry import TRANSFORMS

    from alpr.reader import load_image

    picture = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(picture).save(tmp_path / "turned.webp", exif=exif.tobytes(), lossless=True)
    loaded = TRANSFORMS.build(dict(type="LoadImageAsRead"))(dict(img_path=str(tmp_path / "turned.webp")))
    assert loaded["img_shape"] == loaded["ori_shape"] == (6, 4)
    assert np.array_equal(loaded["img"], load_image(tmp_path / "turned.webp"))
    unturned = TRANSFORMS.build(dict(type="LoadImageFromFile"))(dict(img_path=str(tmp_path / "turned.webp")))
    assert unturned["img_shape"] == (4, 6)  # what training read before


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A disk that fills during a save leaves the checkpoint before (mmengine wrote into the file itself: a run
    whose first checkpoint was cut short could not be resumed at all)."""
    from pathlib import Path

    from mmengine.runner.checkpoint import save_checkpoint

    from alpr.mmdet_ext import LatestBestCheckpointHook

    hook = LatestBestCheckpointHook(interval=2, by_epoch=False, save_best="EIR", rule="greater_or_equal")
    target = tmp_path / "iter_4.pth"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(target), backend_args=hook.backend_args)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))

    def disk_full(path, data):
        with open(path, "wb") as file:
            file.write(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, str(target), backend_args=hook.backend_args)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["iter_4.pth"]  # nor a partial file left beside it


def test_time_up_by_the_end_of_a_validation_ends_the_run_at_its_iteration():
    """Else one more iteration would be trained, checkpointed and validated again."""
    import time
    from types import SimpleNamespace

    from alpr.mmdet_ext import TimeBudgetHook

    hook = TimeBudgetHook(minutes=1, warmup_iters=2, start_factor=0.1, min_lr_ratio=0.05)
    runner = SimpleNamespace(iter=40, train_loop=SimpleNamespace(_max_iters=80))
    hook.started = time.monotonic() - 30  # half the time left: training goes on
    hook.after_val_epoch(runner, {"EIR": 0.5})
    assert runner.train_loop._max_iters == 80
    hook.started = time.monotonic() - 61
    hook.after_val_epoch(runner, {"EIR": 0.5})
    assert runner.train_loop._max_iters == 40


def test_cpu_mixed_precision_trains_a_two_stage_detector():
    """mmcv's CPU RoIAlign and NMS take no bfloat16: under autocast, Mask R-CNN's loss failed; its
    backbone and neck alone run in bfloat16."""
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    from alpr.model import TrainSettings, model_config

    register_all_modules()
    torch.manual_seed(0)
    detector = MODELS.build(ConfigDict(model_config(TrainSettings(model="mask-rcnn-swin-t", window_size=4))))
    sample = DetDataSample(metainfo={"img_shape": (64, 96), "ori_shape": (64, 96), "pad_shape": (64, 96),
                                     "batch_input_shape": (64, 96), "scale_factor": (1.0, 1.0)})
    masks = np.zeros((2, 64, 96), np.uint8)
    masks[0, 10:30, 10:60], masks[1, 12:28, 14:24] = 1, 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10.0, 10, 60, 30], [14, 12, 24, 28]]),
                                       labels=torch.tensor([0, 3]), masks=BitmapMasks(masks, 64, 96))
    seen = []
    detector.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output[0].dtype))
    wrapper = CpuBFloat16OptimWrapper(torch.optim.SGD(detector.parameters(), lr=0.01))
    with wrapper.optim_context(detector):
        losses = detector.loss(torch.rand(1, 3, 64, 96) * 255, [sample])
    assert seen == [torch.bfloat16]
    assert all(torch.isfinite(v).all() for value in losses.values() for v in (value if isinstance(value, list)
                                                                                else [value]))
    assert "extract_feat" not in vars(detector)  # autocast ends with the context
