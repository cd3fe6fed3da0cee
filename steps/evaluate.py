"""Score a run's checkpoints on val, plot, pick the best, record the run, upload the best model; or score
the picked model on test.

    python steps/evaluate.py --workdir W --run-id R [--split val|test] [--store URL] [--require-store true|false]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpr import db
from alpr.cli import HelpWithDefaults, true_or_false
from alpr.errors import UsageError
from alpr.evaluate import SELECTION_SPLIT, EvaluateOptions, eval_dir, evaluate_run
from alpr.metrics import metric_lines, misread_summary, width_summary


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a training run; writes WORKDIR/runs/RUN/eval "
                                     "(eval-test with --split test).",
                                     add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="shared work directory")
    parser.add_argument("--run-id", required=True, help="the run to evaluate")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="val: score every checkpoint and pick the best; test: score the one val picked")
    parser.add_argument("--metric", default=None,
                        help="key metric that picks the best checkpoint (default: the run's --best-metric, "
                             "which picked its best.pth)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--db-url", default=None,
                        help=f"SQLAlchemy URL (default ${db.DB_URL_ENV}, else sqlite in the workdir)")
    parser.add_argument("--store", default=None, help="object store URL for the best checkpoint and metrics")
    parser.add_argument("--require-store", type=true_or_false, default=False, metavar="true|false",
                        help="fail before scoring unless --store is a gs:// one: the pipeline's deploy=true "
                             "serves the model from it (default: false)")
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.require_store and not (args.store or "").startswith("gs://"):
        raise UsageError(f"{'--store ' + args.store if args.store else 'no --store'}, and deploy=true serves the "
                         "model from it: give the workflow a gs:// store (the InferenceService mounts no volume)")
    report = evaluate_run(EvaluateOptions(args.workdir, args.run_id, args.split, args.metric, args.device,
                                          args.db_url, args.store))
    print(metric_lines(report["best"]))
    picked = "best checkpoint" if args.split == SELECTION_SPLIT else f"checkpoint {SELECTION_SPLIT} picked"
    key = report["key_metric"]
    print(f"{picked}: {report['best_checkpoint']} ({key}={report['best'][key]:.4f})")
    print("plates: " + ", ".join(f"{n} {outcome}" for outcome, n in report["best"]["outcomes"].items()))
    print(f"misread characters (true->read): {misread_summary(report['best'])}")
    print(f"EIR by plate width: {width_summary(report['best'])}")
    print(f"metrics and plots: {eval_dir(Path(args.workdir), args.run_id, args.split)}")
    if "uploaded" in report:
        print(f"uploaded: {report['uploaded']}")
    return report


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
