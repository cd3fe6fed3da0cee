"""Record a labelme folder as a versioned COCO dataset (validated, split, DVC, database, store).

    python steps/record.py --source DIR --workdir W --dataset NAME --version V
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alpr import db
from alpr.cli import HelpWithDefaults, checked_type
from alpr.dataset import DEFAULT_FRACTIONS, parse_fractions
from alpr.record import RecordOptions, RecordResult, record


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Validate a labelme folder and record it as a COCO dataset "
                                                 "version.", add_help=add_help, formatter_class=HelpWithDefaults)
    parser.add_argument("--source", type=Path, required=True, help="labelme folder (images + .json)")
    parser.add_argument("--workdir", type=Path, default=Path("work"), help="shared work directory")
    parser.add_argument("--dataset", required=True, help="dataset name")
    parser.add_argument("--version", required=True, help="dataset version, e.g. 1 or 2026.11")
    parser.add_argument("--split", type=checked_type(parse_fractions), default=DEFAULT_FRACTIONS,
                        help=f"train,val,test fractions (default {','.join(map(str, DEFAULT_FRACTIONS))})")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="record the valid files and report the invalid ones instead of failing")
    parser.add_argument("--db-url", default=None,
                        help=f"SQLAlchemy URL (default ${db.DB_URL_ENV}, else sqlite in the workdir)")
    parser.add_argument("--data-repo", type=Path, default=None,
                        help="git + DVC repository holding datasets/ (default: the workdir)")
    parser.add_argument("--dvc-remote", default=None,
                        help="DVC remote: a folder or gs://bucket/path (default: WORKDIR/dvc-remote)")
    parser.add_argument("--no-dvc", action="store_true", help="do not track the version with git + DVC")
    parser.add_argument("--no-push", action="store_true", help="track with DVC but do not push to the remote")
    parser.add_argument("--store", default=None,
                        help="object store URL (file:///dir or gs://bucket/prefix) for the manifest and splits")
    return parser


def summary(result: RecordResult, tracked: bool = True) -> str:
    m = result.manifest
    lines = [f"dataset {m['name']} version {m['version']} at {result.path}"
             + ("" if result.created else " (already recorded, unchanged)")]
    for split, c in m["counts"].items():
        lines.append(f"  {split:5s} {c['images']:6d} images {c['plates']:6d} plates {c['annotations']:7d} annotations")
    lines.append(f"  tags: {m['dataset_tag']} (dataset), {m['annotations']['tag']} (labelme source)" if tracked
                 else "  not tracked with git + DVC (--no-dvc): no tags")
    lines.append("  database rows: " + ", ".join(f"{k}={v}" for k, v in sorted(result.db_rows.items())))
    if result.skipped:  # invalid.json lists those of the run that wrote the version
        listed = f"see {result.path / 'invalid.json'}" if result.created else \
            ", ".join(result.skipped[:3]) + (", ..." if len(result.skipped) > 3 else "")
        lines.append(f"  skipped {len(result.skipped)} invalid file(s): {listed}")
    lines.extend(f"  uploaded {url}" for url in result.uploaded)
    lines.extend(f"  warning: {warning}" for warning in result.warnings)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> RecordResult:
    result = record(RecordOptions(
        source=args.source, workdir=args.workdir, dataset=args.dataset, version=args.version,
        fractions=args.split, skip_invalid=args.skip_invalid, db_url=args.db_url, data_repo=args.data_repo,
        dvc_remote=args.dvc_remote, dvc=not args.no_dvc, push=not args.no_push, store=args.store, progress=True))
    print(summary(result, tracked=not args.no_dvc))
    return result


if __name__ == "__main__":
    from alpr.cli import run_step

    run_step(get_args_parser, main)
