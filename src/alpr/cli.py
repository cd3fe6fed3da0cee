"""The ``alpr`` command: one subcommand per pipeline step, plus data management.

``alpr <step>`` reuses the step script's own parser and ``main(args)``, so
``alpr record ...`` and ``python steps/record.py ...`` are the same program.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from alpr.errors import AlprError

STEPS = ("synth", "record")

# Errors that mean "bad input or state", reported as one clear message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (AlprError, FileNotFoundError)


def run_step(get_args_parser: Callable[..., argparse.ArgumentParser], main: Callable, argv=None) -> None:
    """Entry point of a step script: parse, run, and turn user errors into exit code 1."""
    args = get_args_parser().parse_args(argv)
    _guarded(lambda: main(args))


def _guarded(action: Callable[[], object]) -> None:
    try:
        action()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _data_pull(args: argparse.Namespace) -> None:
    from alpr.versioning import pull_dataset

    target = pull_dataset(args.data_repo, args.dataset, args.version, args.workdir)
    print(f"restored {args.dataset} v{args.version} into {target}")


def build_parser() -> argparse.ArgumentParser:
    from alpr import __version__

    parser = argparse.ArgumentParser(prog="alpr", description="Automatic license plate recognition pipeline.")
    parser.add_argument("--version", action="version", version=f"alpr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STEPS:
        module = importlib.import_module(f"alpr.steps.{name}")
        step = commands.add_parser(name, parents=[module.get_args_parser(add_help=False)],
                                   help=(module.__doc__ or "").strip().splitlines()[0])
        step.set_defaults(handler=module.main)

    data = commands.add_parser("data", help="dataset versions: pull an exact version from the DVC remote")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pull = data_commands.add_parser("pull", help="restore datasets/NAME/VERSION into a workdir")
    pull.add_argument("--dataset", required=True, help="dataset name")
    pull.add_argument("--version", required=True, help="dataset version")
    pull.add_argument("--workdir", type=Path, default=Path("work"), help="workdir to restore into")
    pull.add_argument("--data-repo", required=True,
                      help="the git + DVC data repository (path or git URL) that recorded the version")
    pull.set_defaults(handler=_data_pull)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _guarded(lambda: args.handler(args))


if __name__ == "__main__":
    main()
