"""Time of scoring detections: the model head's output to Detections with COCO RLE masks
(``to_detections``, where the masks are), then the metrics (COCO bbox/segm mAP, dv_mAP, EIR).

    python benchmarks/score_speed.py [--images 50] [--extra 10] [--device auto]

Synthesizes 1280x720 images and turns each one's ground truth into detections: every instance's
mask drawn full size on the device, as the model's head gives them, plus --extra stray masks per
image, as an early model's low-scoring guesses. Prints ms per image for each part.
"""

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alpr.metrics import evaluate
from alpr.mmdet_ext import to_detections
from alpr.postprocess import read_plates
from alpr.plates import CLASSES
from alpr.reader import resolve_device
from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate


def ground_truth(folder: Path, count: int) -> COCO:
    generate(folder / "synth", count, seed=3, options=SynthOptions(1280, 720), progress=False)
    record(RecordOptions(folder / "synth", folder / "work", "score", "1", fractions=(0.0, 0.0, 1.0), dvc=False))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(folder / "work/datasets/score/1/test.json"))


def predictions(gt: COCO, image_id: int, extra: int, rng: np.random.Generator, device: str) -> dict:
    """The image's instances as the model's head gives them: scores, boxes, labels and full-size
    masks on the device; strays last, scored under the reading thresholds, as such guesses are."""
    anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
    size = gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]
    masks = [gt.annToMask(a) for a in anns]
    labels = [a["category_id"] - 1 for a in anns]
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in anns)]
    for _ in range(extra):  # a random blob somewhere: what an untrained model scatters
        stray = np.zeros(size, np.uint8)
        x, y = rng.integers(0, 1200), rng.integers(0, 660)
        stray[y:y + rng.integers(5, 60), x:x + rng.integers(5, 80)] = 1
        masks.append(stray)
        labels.append(int(rng.integers(len(CLASSES))))
        boxes.append((float(x), float(y), x + 10.0, y + 10.0))
    return dict(scores=torch.tensor([0.9] * len(anns) + [0.1] * extra, device=device),
                bboxes=torch.tensor(boxes, device=device), labels=torch.tensor(labels, device=device),
                masks=torch.from_numpy(np.array(masks, bool).reshape(-1, *size)).to(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--extra", type=int, default=10, help="stray masks per image")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        gt = ground_truth(Path(folder), args.images)
    detections, encoding, count = {}, 0.0, 0
    to_detections(predictions(gt, min(gt.getImgIds()), args.extra, np.random.default_rng(1), device))  # warm-up:
    # the first call's start-up (CUDA kernels loaded) is not the per-image time
    for image_id in sorted(gt.getImgIds()):
        fields = predictions(gt, image_id, args.extra, rng, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        detections[image_id] = to_detections(fields)
        encoding += time.perf_counter() - start
        count += len(detections[image_id])
        if detections[image_id]:
            assert np.array_equal(mask_utils.decode(detections[image_id][-1].mask), fields["masks"][-1].cpu().numpy())
    start = time.perf_counter()
    plates = {i: read_plates(d) for i, d in detections.items()}
    metrics = evaluate(gt, detections, plates)
    scoring = time.perf_counter() - start
    print(f"{args.images} images, {count} masks of 1280x720 ({count / args.images:.0f} each) on {device}; "
          f"the ground truth scored as detections: mAP={metrics['mAP']:.3f} dv_mAP={metrics['dv_mAP']:.3f} "
          f"EIR={metrics['EIR']:.3f}")
    print(f"to_detections_ms_per_image={encoding / args.images * 1000:.1f}")
    print(f"metrics_ms_per_image={scoring / args.images * 1000:.1f}")


if __name__ == "__main__":
    main()
