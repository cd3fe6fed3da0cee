"""What a training crop holds: whole plates and cut characters per crop, for a window placed
anywhere (mmdet's RandomCrop) and for alpr's PlateCrop.

    python benchmarks/crop_plates.py [--images 200] [--img-size 1280] [--crop-size 640] [--repeats 5]

Synthesizes 1280x720 images, loads and randomly resizes them, then runs each crop --repeats
times per image (training's PlateCrop cuts its window before resizing, to the same effect). A plate counts as whole when its board box lies inside the
window; a character is cut when its box crosses the window's edge (it is trained on as a piece).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from mmcv.transforms import Compose

import alpr.mmdet_ext  # noqa: F401  (registers PlateCrop and LoadImageAsRead)
from alpr.mmdet_ext import BOARD_IDS
from alpr.plates import CHARACTER_CLASSES, CLASSES
from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate

CHARACTER_IDS = [CLASSES.index(c) for c in CHARACTER_CLASSES]


def resized_samples(folder: Path, count: int, size: int) -> list[dict]:
    """The dataset's images loaded and randomly resized at the scales training draws."""
    generate(folder / "synth", count, seed=11, options=SynthOptions(1280, 720), progress=False)
    record(RecordOptions(folder / "synth", folder / "work", "crops", "1", fractions=(1.0, 0.0, 0.0), dvc=False))
    data = folder / "work/datasets/crops/1"
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules

    register_all_modules()  # mmdet's transforms by their plain names
    dataset = CocoDataset(data_root=str(data), ann_file="train.json", data_prefix=dict(img="images/"),
                          metainfo=dict(classes=CLASSES), pipeline=[
                              dict(type="LoadImageAsRead"),
                              dict(type="LoadAnnotations", with_bbox=True, with_mask=True, poly2mask=False),
                              dict(type="RandomResize", scale=(size, size), ratio_range=(0.8, 1.25), keep_ratio=True)])
    return [dataset[i] for i in range(len(dataset))]


def crop_contents(sample: dict, crop: dict, window: int) -> tuple[int, int]:
    """Whole plates and cut characters in one crop of ``sample``."""
    boxes, labels = sample["gt_bboxes"].numpy().copy(), sample["gt_bboxes_labels"].copy()
    cropped = Compose([crop])({**sample, "gt_bboxes": sample["gt_bboxes"].clone(), "homography_matrix": None})
    x0, y0 = -cropped["homography_matrix"][:2, 2]
    inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x0 + window) & (boxes[:, 3] <= y0 + window)
    overlaps = (boxes[:, 2] > x0) & (boxes[:, 0] < x0 + window) & (boxes[:, 3] > y0) & (boxes[:, 1] < y0 + window)
    whole = int((inside & np.isin(labels, BOARD_IDS)).sum())
    cut = int((overlaps & ~inside & np.isin(labels, CHARACTER_IDS)).sum())
    return whole, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--img-size", type=int, default=1280)
    parser.add_argument("--crop-size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as folder:
        samples = resized_samples(Path(folder), args.images, args.img_size)
    per_image = [int(np.isin(s["gt_bboxes_labels"], BOARD_IDS).sum()) for s in samples]
    print(f"{len(samples)} images with {sum(per_image)} plates ({np.mean(per_image):.2f} each, "
          f"{per_image.count(0)} images with none), resized to about {args.img_size} px, "
          f"{args.repeats} crops of {args.crop_size} px each")
    window = (args.crop_size, args.crop_size)
    for name in ("RandomCrop", "PlateCrop"):
        crop = dict(type=name, crop_size=window, recompute_bbox=True, allow_negative_crop=True)
        counts = np.array([crop_contents(s, crop, args.crop_size) for s in samples for _ in range(args.repeats)])
        print(f"{name}: whole_plates_per_crop={counts[:, 0].mean():.2f} cut_characters_per_crop={counts[:, 1].mean():.2f}"
              f" crops_without_a_whole_plate={(counts[:, 0] == 0).mean():.1%}")


if __name__ == "__main__":
    main()
