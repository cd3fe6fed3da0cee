"""Synthetic image throughput at 1280x720: prints images per second (target >= 30 on 2 cores).

    python benchmarks/synth_speed.py [--count 300] [--workers 0]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from alpr.synth import SynthOptions, font_ids, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    args = parser.parse_args()
    font_ids()  # warm the font scan, as a long run would amortise it
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        plates = generate(Path(folder), args.count, seed=0, options=SynthOptions(1280, 720),
                          workers=args.workers or None, progress=False)
        elapsed = time.perf_counter() - start
    print(f"synth 1280x720: {args.count} images, {plates} plates in {elapsed:.1f} s on {os.cpu_count()} cores")
    print(f"images_per_second={args.count / elapsed:.1f}")


if __name__ == "__main__":
    main()
