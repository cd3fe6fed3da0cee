"""Record throughput: prints labelme files recorded per second (target >= 500), without the DVC push.

Measures validation, split, COCO conversion, writing the dataset and the database rows
(--no-dvc), and separately the same with `dvc add` + git tags but no push.

    python benchmarks/record_speed.py [--count 1000]
"""

import argparse
import tempfile
import time
from pathlib import Path

from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate


def _timed(options: RecordOptions) -> float:
    start = time.perf_counter()
    record(options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source, work = Path(folder) / "labelme", Path(folder) / "work"
        generate(source, args.count, seed=0, options=SynthOptions(640, 480), progress=False)
        plain = _timed(RecordOptions(source, work, "bench", "1", dvc=False))
        tracked = _timed(RecordOptions(source, work, "bench", "2", push=False))
    print(f"record {args.count} labelme files (640x480): {plain:.2f} s without DVC, {tracked:.2f} s with dvc add")
    print(f"files_per_second={args.count / plain:.0f}")
    print(f"files_per_second_with_dvc_add={args.count / tracked:.0f}")


if __name__ == "__main__":
    main()
