"""Run the best model of a run on images; write predictions.jsonl and annotated pictures.

    python steps/test.py --workdir W --run-id R [--images DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpr.cli import HelpWithDefaults
from alpr.visualize import TestOptions, test_run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Test a run's best model; writes WORKDIR/runs/RUN/test.",
                                     add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="shared work directory")
    parser.add_argument("--run-id", required=True,
                        help="the run whose model to use: the checkpoint its evaluate step picked, else its best.pth")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default: the dataset's test split)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint (default: the one evaluate picked, else the run's best.pth)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def main(args: argparse.Namespace) -> Path:
    out = test_run(TestOptions(args.workdir, args.run_id, args.images, args.device, args.checkpoint))
    print(f"predictions: {out / 'predictions.jsonl'}")
    print(f"pictures: {out / 'images'}")
    return out


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
