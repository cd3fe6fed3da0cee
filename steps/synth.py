"""Synthesize plate images on backgrounds, with labelme annotations.

    python steps/synth.py --out DIR --count N --seed S [--backgrounds DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alpr.cli import HelpWithDefaults
from alpr.synth import SynthOptions, generate, left_from_larger_runs


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw synthetic plates on photos; write labelme files.",
                                     add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--out", type=Path, required=True, help="folder for the images and labelme JSON files")
    parser.add_argument("--count", type=int, default=100, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--backgrounds", type=Path, default=None,
                        help="folder of background photos (default: built-in scenes and sample photos)")
    parser.add_argument("--width", type=int, default=1280, help="image width in pixels")
    parser.add_argument("--height", type=int, default=720, help="image height in pixels")
    parser.add_argument("--max-plates", type=int, default=4, help="most plates in one image")
    parser.add_argument("--empty-fraction", type=float, default=0.1, help="share of images with no plate")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(args: argparse.Namespace) -> None:
    options = SynthOptions(args.width, args.height, args.max_plates, args.empty_fraction)
    plates = generate(args.out, args.count, args.seed, args.backgrounds, options, args.workers or None,
                      progress=not args.no_progress)
    print(f"wrote {args.count} images with {plates} plates to {args.out}")
    left = left_from_larger_runs(args.out, args.count)
    if left:
        print(f"warning: {len(left)} files of an earlier, larger run remain in {args.out} ({left[0].name}, ...); "
              "record would take them too: remove them or write to a new folder", file=sys.stderr)


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
