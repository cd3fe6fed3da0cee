"""Time of turning a training batch's ground-truth polygons into mask tensors, as RTMDet-ins does each iteration.

    python benchmarks/mask_speed.py [--images 32] [--size 640] [--runs 5] [--device auto]

Synthesizes 1280x720 images, scales their polygons to the training size and times mmdet's
PolygonMasks against alpr's FilledPolygonMasks on the device (median of --runs): making them
(alpr's rasterize then, in the data loader's workers) and to_tensor (in the training process).
Counts the pixels where the two disagree.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmdet.structures.mask import PolygonMasks

from alpr.mmdet_ext import FilledPolygonMasks
from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate


def batch_polygons(count: int, size: int) -> tuple[list[list], int, int]:
    """Each image's polygons, scaled as the training pipeline scales 1280x720 to fit ``size``,
    and the mask size after its padding to size x size."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        generate(folder / "synth", count, seed=5, options=SynthOptions(1280, 720), progress=False)
        record(RecordOptions(folder / "synth", folder / "work", "masks", "1", fractions=(1.0, 0.0, 0.0), dvc=False))
        document = json.loads((folder / "work/datasets/masks/1/train.json").read_text())
    scale = size / 1280
    images = {image["id"]: [] for image in document["images"]}
    for annotation in document["annotations"]:
        images[annotation["image_id"]].append([np.array(annotation["segmentation"][0]) * scale])
    return list(images.values()), size, size


def time_masks(kind, batch: list[list], height: int, width: int, device: str, runs: int):
    """Median ms to make each image's masks and to turn them into tensors, and the tensors."""
    making, converting, tensors = [], [], []
    for _ in range(runs):
        start = time.perf_counter()
        masks = [kind(polygons, height, width) for polygons in batch]
        made = time.perf_counter()
        tensors = [m.to_tensor(torch.bool, device) for m in masks]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        making.append((made - start) * 1000)
        converting.append((time.perf_counter() - made) * 1000)
    return statistics.median(making), statistics.median(converting), tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the batch")
    parser.add_argument("--size", type=int, default=640, help="training image size")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    batch, height, width = batch_polygons(args.images, args.size)
    instances = sum(map(len, batch))
    time_masks(FilledPolygonMasks, batch[:1], height, width, device, 1)  # warm-up: CUDA context
    mmdet_make, mmdet_convert, expected = time_masks(PolygonMasks, batch, height, width, device, args.runs)
    alpr_make, alpr_convert, filled = time_masks(FilledPolygonMasks, batch, height, width, device, args.runs)
    differing = sum(int((a ^ b).sum()) for a, b in zip(expected, filled))
    total = sum(int(a.sum()) for a in expected)
    print(f"{args.images} images, {instances} instances, {width}x{height} masks on {device} (median of {args.runs})")
    print(f"mmdet_polygon_masks_ms={mmdet_make + mmdet_convert:.1f}  (all in the training process)")
    print(f"alpr_filled_polygon_masks_ms={alpr_convert:.1f}  (training process; "
          f"plus {alpr_make:.1f} ms in the loader workers)")
    print(f"differing_pixels={differing} of {total}")


if __name__ == "__main__":
    main()
