"""Detection ms per 1280x720 image without masks: masks computed and dropped (as before
``alpr.mmdet_ext.boxes_only``) against not computed, alternating on the same images.

    python benchmarks/boxes_only_speed.py CHECKPOINT [--images 10] [--rounds 3] [--device cpu]

Use a trained checkpoint: an untrained model's detections are few, or all of max_per_img.
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import alpr.mmdet_ext as mmdet_ext
from alpr.reader import PlateReader, load_image
from alpr.synth import generate


def median_ms(reader: PlateReader, images: list) -> float:
    reader.detect(images[:1], masks=False)  # warm-up
    times = []
    for image in images:
        start = time.perf_counter()
        reader.detect([image], masks=False)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        generate(Path(folder), args.images, seed=4242, progress=False, workers=1)
        images = [load_image(path) for path in sorted(Path(folder).glob("*.jpg"))]
    reader = PlateReader.from_checkpoint(args.checkpoint, device=args.device)
    skipping = mmdet_ext.boxes_only
    with_masks, boxes_only = [], []
    for _ in range(args.rounds):
        mmdet_ext.boxes_only = lambda model: contextlib.nullcontext()  # what detect(masks=False) did before
        with_masks.append(median_ms(reader, images))
        mmdet_ext.boxes_only = skipping
        boxes_only.append(median_ms(reader, images))
    print(f"detect without masks, {args.images} images 1280x720 on {args.device}, median per round:")
    print("masks_computed_and_dropped_ms=" + " ".join(f"{ms:.1f}" for ms in with_masks))
    print("boxes_only_ms=" + " ".join(f"{ms:.1f}" for ms in boxes_only))


if __name__ == "__main__":
    main()
