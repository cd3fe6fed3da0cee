"""Score a run's checkpoints on a split, plot, pick the best, record the run, upload the best model.

    python steps/evaluate.py --workdir W --run-id R [--split val|test] [--store URL]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpr import db
from alpr.evaluate import EvaluateOptions, evaluate_run
from alpr.metrics import metric_lines, misread_summary


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a training run; writes WORKDIR/runs/RUN/eval.",
                                     add_help=add_help)
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="shared work directory")
    parser.add_argument("--run-id", required=True, help="the run to evaluate")
    parser.add_argument("--split", default="val", choices=("val", "test"), help="dataset split to score on")
    parser.add_argument("--metric", default="EIR", help="key metric that picks the best checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--db-url", default=None,
                        help=f"SQLAlchemy URL (default ${db.DB_URL_ENV}, else sqlite in the workdir)")
    parser.add_argument("--store", default=None, help="object store URL for the best checkpoint and metrics")
    return parser


def main(args: argparse.Namespace) -> dict:
    report = evaluate_run(EvaluateOptions(args.workdir, args.run_id, args.split, args.metric, args.device,
                                          args.db_url, args.store))
    print(metric_lines(report["best"]))
    print(f"best checkpoint: {report['best_checkpoint']} ({args.metric}={report['best'][args.metric]:.4f})")
    print("plates: " + ", ".join(f"{n} {outcome}" for outcome, n in report["best"]["outcomes"].items()))
    print(f"misread characters (true->read): {misread_summary(report['best'])}")
    print(f"metrics and plots: {Path(args.workdir) / 'runs' / args.run_id / 'eval'}")
    if "uploaded" in report:
        print(f"uploaded: {report['uploaded']}")
    return report


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
