"""Peak memory of reading one photo with masks (the evaluate and test steps), at several photo sizes.

    python benchmarks/mask_memory.py --model work/runs/r1/train/best.pth [--sizes 1280 4000 8000]

Each size runs in a process of its own: a 4:3 image that wide, made from a synthetic plate image,
read with masks (``PlateReader.read(masks=True)``) with every score threshold at 0, so that the
model keeps as many detections as it may (``max_per_img``): an early checkpoint's worst case.
Prints the detections, the process's peak resident memory above what it held before reading,
and the seconds the reading took.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model: str, width: int) -> None:
    import cv2

    from alpr.mmdet_ext import set_score_threshold
    from alpr.reader import PlateReader
    from alpr.synth import SynthOptions, generate

    reader = PlateReader.from_checkpoint(model, "cpu")
    set_score_threshold(reader.model, 0.0)
    reader.score_threshold = 0.0
    with tempfile.TemporaryDirectory() as folder:
        generate(Path(folder), 1, seed=0, options=SynthOptions(1280, 960), progress=False)
        image = cv2.resize(cv2.imread(str(next(Path(folder).glob("*.jpg")))), (width, width * 3 // 4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    [(detections, _)] = reader.read([image], masks=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{width}x{width * 3 // 4}: detections={len(detections)} peak_mb_above_before={peak - before:.0f} "
          f"seconds={seconds:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an alpr checkpoint")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1280, 4000], help="image widths (4:3)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: this width alone
    args = parser.parse_args()
    if args.one:
        return measure(args.model, args.one)
    for width in args.sizes:
        subprocess.run([sys.executable, __file__, "--model", args.model, "--one", str(width)], check=True)


if __name__ == "__main__":
    main()
