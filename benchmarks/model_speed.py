"""Training images/s and inference ms per 1280x720 image for a model, on this machine's device.

    python benchmarks/model_speed.py [--model rtmdet-ins-tiny] [--iters 20] [--runs 30] [--batch 1 16]
        [--batch-size 8] [--workers 2] [--amp] [--images 64] [--img-size N] [--crop-size N] [--device auto]
        [--checkpoint PATH [--zoom-widths W ...] [--sure-score S] [--read-amp]]

Synthesizes a small 1280x720 dataset, trains --iters iterations (after 3 warm-up ones are
excluded via the timer in the log), then times PlateReader on single images (median of --runs)
and on batches. A model trained that briefly finds few plates, so its reading skips most of the
work a real model's does (the second reading of each plate): ``--checkpoint`` times a trained
model's reading instead, and trains nothing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alpr import cli
from alpr.model import TrainSettings
from alpr.postprocess import ReadOptions
from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate

ROOT = Path(__file__).parents[1]


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """The reading's flags, as ``alpr predict`` and ``alpr serve`` have them, and --read-amp (their --amp)."""
    cli.add_reading_arguments(parser)
    parser.add_argument("--read-amp", action="store_true",
                        help="read in bfloat16 on the CPU, float16 on CUDA (alpr predict/serve --amp)")


def second_reading(options: ReadOptions) -> str:
    """How plates are read again, for a figure's label: "320+256 px wide, until two agree or one is sure at 0.5"."""
    if not options.zoom_widths:
        return "no px wide"
    until = "until two agree" + (f" or one is sure at {options.sure_score:g}" if options.sure_score else "")
    return f"{'+'.join(map(str, options.zoom_widths))} px wide" + (f", {until}" if len(options.zoom_widths) > 1 else "")


def bench_images(folder: Path, count: int) -> None:
    """Writes ``count`` synthetic 1280x720 images in ``FOLDER/synth`` (seed 1)."""
    generate(folder / "synth", count, seed=1, options=SynthOptions(1280, 720), progress=False)


def bench_image_paths(folder: Path) -> list[Path]:
    """The images ``bench_images`` wrote in ``folder``, in name order."""
    return sorted((folder / "synth").glob("*.jpg"))


def train_bench_model(folder: Path, model: str, iters: int, batch_size: int, device: str = "auto",
                      extra: tuple[str, ...] = (), images: int = 64) -> Path:
    """``images`` synthetic 1280x720 images recorded and trained on for ``iters`` iterations; returns the workdir.

    The checkpoint is ``WORK/runs/bench/train/best.pth`` and the images are ``FOLDER/synth/*.jpg``.
    """
    work = folder / "work"
    bench_images(folder, images)
    record(RecordOptions(folder / "synth", work, "bench", "1", dvc=False))
    command = [sys.executable, str(ROOT / "steps/train.py"), "--workdir", str(work), "--dataset", "bench",
               "--version", "1", "--model", model, "--run-id", "bench", "--iters", str(iters),
               "--val-interval", str(iters), "--batch-size", str(batch_size), "--device", device,
               "--log-interval", "1", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"training failed ({' '.join(command)}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return work


def _sizes(args: argparse.Namespace) -> str:
    sizes = TrainSettings(model=args.model, img_size=args.img_size, crop_size=args.crop_size)
    return f"resized to {sizes.image_size}, {sizes.train_crop_size} px crops"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtmdet-ins-tiny")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="inference batch sizes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision training: float16 on CUDA, bfloat16 on the CPU")
    parser.add_argument("--images", type=int, default=64,
                        help="training images (drawn again and again as the iterations need)")
    parser.add_argument("--img-size", type=int, default=None, help="size images are resized to (default: the model's)")
    parser.add_argument("--crop-size", type=int, default=None, help="training crops (default: the model's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="time this trained model's reading; train nothing")
    add_reading_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if args.checkpoint:
            bench_images(folder, args.images)
        checkpoint = args.checkpoint or time_training(folder, args)
        time_reading(checkpoint, bench_image_paths(folder), args)


def logged_times(log: Path) -> list[float]:
    """The training iterations' logged times (each a log interval's mean) after the first three entries,
    which hold the start-up."""
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [entry["time"] for entry in entries if "loss" in entry and "time" in entry][3:]


def time_training(folder: Path, args: argparse.Namespace) -> Path:
    extra = ("--workers", str(args.workers), *["--amp"] * args.amp,
             *(["--img-size", str(args.img_size)] if args.img_size else []),
             *(["--crop-size", str(args.crop_size)] if args.crop_size else []))
    work = train_bench_model(folder, args.model, args.iters, args.batch_size, args.device, extra, args.images)
    times = logged_times(work / "runs/bench/train/log.json")
    per_iter = statistics.median(times)
    print(f"train {args.model}: median {per_iter:.2f} s per iteration of {args.batch_size} images "
          f"(iterations 4-{args.iters}, 1280x720 {_sizes(args)})")
    print(f"train_images_per_second={args.batch_size / per_iter:.2f}")
    # the median leaves out the iterations that waited for the data loader; the mean counts them
    print(f"train_images_per_second_mean={args.batch_size * len(times) / sum(times):.2f}")
    return work / "runs/bench/train/best.pth"


def time_reading(checkpoint: Path, images: list[Path], args: argparse.Namespace) -> None:
    from alpr import PlateReader

    options = cli.reading_options(args)
    reader = PlateReader.from_checkpoint(checkpoint, args.device, options, args.read_amp)
    plates = 0
    for batch in args.batch:
        reader.predict_batch(images[:batch])  # warm-up
        times = []
        for run in range(args.runs):
            chosen = [images[(run * batch + k) % len(images)] for k in range(batch)]
            start = time.perf_counter()
            plates += sum(map(len, reader.predict_batch(chosen)))
            times.append((time.perf_counter() - start) / batch * 1000)
        print(f"infer_ms_per_image_batch{batch}={statistics.median(times):.1f} "
              f"(median of {args.runs}, 1280x720, {next(reader.model.parameters()).device}"
              f"{', mixed precision' if args.read_amp else ''})")
    print(f"plates_found_per_image={plates / (args.runs * sum(args.batch)):.2f} (read again with the board "
          f"{second_reading(options)})")


if __name__ == "__main__":
    main()
