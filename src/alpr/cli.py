"""The ``alpr`` command: one subcommand per pipeline step, plus reading (predict), running the
workflow here (run, tune) or on Argo (submit), and data management.

``alpr <step>`` reuses the step script's own parser and ``main(args)``, so
``alpr record ...`` and ``python steps/record.py ...`` are the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from alpr.errors import AlprError

STEPS = ("synth", "record", "train", "evaluate", "test", "serve")

# Errors that mean "bad input or state", reported as one clear message, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (AlprError, FileNotFoundError, PermissionError, IsADirectoryError,
                                               NotADirectoryError)


def run_step(get_args_parser: Callable[..., argparse.ArgumentParser], main: Callable, argv=None) -> None:
    """Entry point of a step script: parse, run, and turn user errors into exit code 1."""
    args = get_args_parser().parse_args(argv)
    _guarded(lambda: main(args))


def user_message(error: BaseException) -> str:
    """The error's message; of one a data-loader worker raised (an image gone mid-training), the worker's
    own, without the worker's traceback that torch wraps it in."""
    text = str(error)
    if "\nOriginal Traceback (most recent call last):" not in text:
        return text
    kind = type(error)  # the traceback ends "alpr.errors.AlprError: MESSAGE", which may span lines
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    at = text.rfind(f"\n{name}: ")
    return text[at + len(name) + 3:].rstrip() if at >= 0 else text


def _terminated(signum: int, frame) -> None:
    """SIGTERM (how Argo and Kubernetes stop a step) as an exit that runs ``finally`` and ``with`` exits:
    a record's partial folders and the temporary files of atomic writes are removed, not left behind."""
    print("terminated", file=sys.stderr)
    raise SystemExit(128 + signum)  # the status a command SIGTERM ends has


def _guarded(action: Callable[[], object]) -> None:
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        action()
    except USER_ERRORS as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `alpr predict --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes
        sys.exit(141)  # as a command SIGPIPE ends
    finally:
        signal.signal(signal.SIGTERM, previous)


def true_or_false(text: str) -> bool:
    """An argparse type for a switch a workflow sets from a parameter: ``--amp true`` or ``--amp false``."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() == "true"


def checked_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser that raises our errors: argparse shows the error's own message
    (it replaces a ValueError's with "invalid ... value")."""
    def checked(text: str) -> object:
        try:
            return parse(text)
        except AlprError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    checked.__name__ = parse.__name__
    return checked


def or_default(kind: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type where an empty value means the default (None): a workflow parameter left empty."""
    def parse(text: str) -> object:
        return kind(text) if text.strip() else None
    parse.__name__ = kind.__name__
    return parse


class HelpWithDefaults(argparse.HelpFormatter):
    """``--help`` names each flag's default, unless its help already says it or there is none to name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # by identity: a default of 0 is one to name, where None and a switch's False are not
        none = action.default is None or action.default is False or action.default in ([], (), argparse.SUPPRESS)
        if action.required or none or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


_SubcommandParser = partial(argparse.ArgumentParser, formatter_class=HelpWithDefaults)


def add_reading_arguments(parser: argparse.ArgumentParser, before_images: bool = False) -> None:
    """How plates are read from detections: the same flags for ``alpr predict``, ``alpr serve`` and the
    benchmarks (``ReadOptions``). ``before_images``: the command takes image paths after its flags."""
    from alpr.postprocess import ReadOptions

    parser.add_argument("--board-threshold", type=float, default=ReadOptions.board_threshold,
                        help="lowest score of a plate board that is reported")
    parser.add_argument("--char-threshold", type=float, default=ReadOptions.char_threshold,
                        help="lowest score of a character that is read")
    parser.add_argument("--zoom-widths", type=int, nargs="*", default=list(ReadOptions.zoom_widths),
                        help="each plate is read again, scaled to these widths (px) in this order, until two "
                             "readings agree; none given: never" + (" (before images, end its list with --)"
                                                                    if before_images else ""))
    parser.add_argument("--sure-score", type=float, default=ReadOptions.sure_score,
                        help="also stop once one reading has every character scoring at least this "
                             "(default: only agreement stops)")


def reading_options(args: argparse.Namespace):
    """The ``ReadOptions`` that ``add_reading_arguments``'s flags ask for."""
    from alpr.postprocess import ReadOptions

    return ReadOptions(board_threshold=args.board_threshold, char_threshold=args.char_threshold,
                       zoom_widths=tuple(args.zoom_widths), sure_score=args.sure_score)


def _data_pull(args: argparse.Namespace) -> None:
    from alpr.versioning import pull_dataset

    target = pull_dataset(args.data_repo, args.dataset, args.version, args.workdir)
    print(f"restored {args.dataset} v{args.version} into {target}")


def image_files(paths: list[Path]) -> list[Path]:
    """The images to read: files as given, folders as the images in them; a missing one fails before the
    model loads."""
    from alpr.images import IMAGE_SUFFIXES, list_images
    from alpr.errors import UsageError

    images = []
    for path in paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise UsageError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise UsageError(f"{path}: image not found")
    return images


def _predict(args: argparse.Namespace) -> None:
    from alpr.reader import PlateReader
    from alpr.visualize import error_line, prediction_line, text_line

    images = image_files(args.images)
    reader = PlateReader.from_checkpoint(args.model, args.device, reading_options(args), amp=args.amp)
    failed = 0
    for image in images:
        try:
            plates = reader.predict(image)
        except AlprError as error:  # one unreadable image: said, and the others still read
            print(f"error: {error}", file=sys.stderr, flush=True)
            if args.json:
                print(error_line(str(image), error), flush=True)
            failed += 1
            continue
        if args.json:
            print(prediction_line(str(image), plates), flush=True)
        else:
            print(text_line(str(image), plates), flush=True)
    if failed:
        raise AlprError(f"{failed} of {len(images)} images could not be read (above)")


def _run(args: argparse.Namespace) -> None:
    from alpr.local_run import LocalRun, StepFailed, load_workflow, parse_parameters, project_root

    path = args.workflow
    if not path.is_file() and not path.is_absolute() and (project_root() / path).is_file():
        path = project_root() / path
    try:
        outputs = LocalRun(load_workflow(path), args.workdir, parse_parameters(args.parameter), args.resume).run()
    except StepFailed as error:
        raise StepFailed(f"{error}\nfix it and rerun with --resume to continue from this step (with the same -p "
                         "values: other values start a new run, without --resume)") from None
    except KeyboardInterrupt:
        print("rerun with --resume to go on from the interrupted step", file=sys.stderr)
        raise
    print(f"workflow {path.name} succeeded")
    for task, values in outputs.items():
        for name, value in values.items():
            print(f"{name}={value}  ({task})")


def _tune(args: argparse.Namespace) -> None:
    from alpr.local_run import load_workflow, parse_parameters
    from alpr.tune import TuneFailed, TuneInterrupted, load_experiment, project_path, report, template_path, tune

    experiment = load_experiment(project_path(args.experiment))
    template = load_workflow(project_path(args.template) if args.template else template_path(experiment))
    try:
        study = tune(experiment, template, args.workdir, parse_parameters(args.parameter), args.max_trials,
                     resume=args.resume)
    except TuneInterrupted as stopped:  # the trials so far, their runs and the best, before exit 130
        with contextlib.suppress(TuneFailed):
            report(stopped.study, experiment)
        print("rerun with --resume to go on with this study", file=sys.stderr)
        raise
    report(study, experiment)


def _submit(args: argparse.Namespace) -> None:
    from alpr.local_run import parse_parameters
    from alpr.submit import ArgoServer, submit

    server = ArgoServer.from_env(args.argo_server, args.token, args.namespace, args.insecure_skip_verify)
    name = submit(server, parse_parameters(args.parameter), args.template)
    print(f"submitted {name} from workflowtemplate/{args.template} in namespace {server.namespace}")
    print(f"watch: argo watch -n {server.namespace} {name}   or the Argo UI at {server.host}")


def _command(commands, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` also says what it does (argparse shows ``help`` only in the list)."""
    kwargs.setdefault("description", help)
    return commands.add_parser(name, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from alpr import __version__

    parser = argparse.ArgumentParser(prog="alpr", description="Automatic license plate recognition pipeline.")
    parser.add_argument("--version", action="version", version=f"alpr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_SubcommandParser)
    for name in STEPS:
        module = importlib.import_module(f"alpr.steps.{name}")
        arguments = module.get_args_parser(add_help=False)
        step = _command(commands, name, " ".join((module.__doc__ or "").strip().split("\n\n")[0].split()),
                        parents=[arguments], description=arguments.description)
        step.set_defaults(handler=module.main)

    predict = _command(commands, "predict", "read the plates in images with a trained checkpoint")
    predict.add_argument("images", nargs="+", type=Path, help="image files, or folders of them")
    predict.add_argument("--model", type=Path, required=True, help="checkpoint (e.g. runs/RUN/train/best.pth)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--amp", action="store_true",
                         help="run the model in bfloat16 on the CPU (float16 on CUDA): faster where the CPU has "
                         "AVX512-BF16 or AMX")
    predict.add_argument("--json", action="store_true", help="one JSON line per image")
    add_reading_arguments(predict, before_images=True)
    predict.set_defaults(handler=_predict)

    run = _command(commands, "run", "run an Argo WorkflowTemplate's DAG locally, step by step")
    run.add_argument("workflow", nargs="?", type=Path, default=Path("workflows/alpr-pipeline.yaml"),
                     help="WorkflowTemplate YAML (default: workflows/alpr-pipeline.yaml)")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                     help="workflow parameter (repeatable)")
    run.add_argument("--workdir", type=Path, default=Path("work"), help="local folder for the work volume")
    run.add_argument("--resume", action="store_true", help="skip the steps that already succeeded")
    run.set_defaults(handler=_run)

    tune = _command(commands, "tune", "run a Katib Experiment's search locally with Optuna")
    tune.add_argument("--experiment", type=Path, default=Path("katib/experiment.yaml"),
                      help="Katib Experiment YAML (default: katib/experiment.yaml)")
    tune.add_argument("--max-trials", type=int, default=None, help="trials to run (default: its maxTrialCount)")
    tune.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                      help="trial workflow parameter that is not tuned, e.g. dataset-version=2 (repeatable)")
    tune.add_argument("--template", type=Path, default=None,
                      help="the trials' WorkflowTemplate YAML (default: workflows/<its workflowTemplateRef>.yaml)")
    tune.add_argument("--workdir", type=Path, default=Path("work"), help="local folder for the work volume")
    tune.add_argument("--resume", action="store_true",
                      help="go on with the experiment's last study in the workdir, the trial cut short run again")
    tune.set_defaults(handler=_tune)

    submit = _command(commands, "submit", "create a Workflow from a WorkflowTemplate on an Argo server")
    submit.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="workflow parameter (repeatable)")
    submit.add_argument("--template", default="alpr-pipeline", help="WorkflowTemplate name")
    submit.add_argument("--argo-server", default=None, help="Argo server URL (default $ARGO_SERVER)")
    submit.add_argument("--token", default=None, help="bearer token (default $ARGO_TOKEN)")
    submit.add_argument("--namespace", default=None, help="namespace (default $ARGO_NAMESPACE, else argo)")
    submit.add_argument("--insecure-skip-verify", action="store_true", help="skip TLS verification")
    submit.set_defaults(handler=_submit)

    data = _command(commands, "data", "dataset versions: pull an exact version from the DVC remote")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION",
                                        parser_class=_SubcommandParser)
    pull = _command(data_commands, "pull", "restore datasets/NAME/VERSION into a workdir")
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
