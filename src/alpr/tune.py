"""``alpr tune``: run a Katib Experiment's search on this machine with Optuna.

The experiment (katib/experiment.yaml) is read as Katib reads it: its parameters become an
Optuna search space, each trial's values go through ``trialTemplate.trialParameters`` into the
trial Workflow's parameters, the referenced WorkflowTemplate runs step by step with the local
runner (:mod:`alpr.local_run`), and the metrics are parsed from the output of the steps whose
pod carries ``primaryPodLabels`` with the StdOut collector's regex and metric strategies.
Trials run one after another; ``parallelTrialCount`` only matters in a cluster. The study is kept
in WORKDIR/tune/studies.db: ``resume`` goes on with the last one of the experiment, running the
trial that was cut short again under its run id (its training resumes from its checkpoints).

- Sampler: ``random`` is Optuna's RandomSampler, ``tpe`` its TPESampler set as Katib's Hyperopt
  TPE is (random for the first ``parallelTrialCount`` trials only, ``gamma``, ``prior_weight``,
  ``n_EI_candidates``), seeded with the algorithm setting ``random_state`` (unseeded without one,
  as in Katib). The study's direction is ``objective.type``.
- Metrics: every ``name=value`` a primary step prints is kept (Katib's default StdOut filter
  unless ``metricsFormat`` says otherwise); a trial's value of each metric is the max, min or
  latest of them as its ``metricStrategies`` say, else max for maximize and min for minimize
  (Katib's defaulter). For EIR that is the run's best validation, the one best.pth keeps.
- A trial whose step fails, or that prints no objective metric, is a failed trial: reported
  in the table, not the end of the study, unless ``maxFailedTrialCount`` trials have failed (at
  least one: Katib's rule).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from alpr.errors import AlprError, UsageError
from alpr.files import held_alone
from alpr.local_run import LocalRun, NotSupportedLocally, StepFailed, project_root

# Katib's StdOut collector default: `name=value` with a number.
DEFAULT_METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
TRIAL_PARAMETER = re.compile(r"\$\{trialParameters\.([^{}]+)\}")
OUTPUT_LINE = re.compile(r"\[(?P<task>[^\]]+)\] (?P<text>.*)")  # how LocalRun echoes a step's output
SAMPLERS = ("tpe", "multivariate-tpe", "random")
# the algorithm settings Katib takes for each: tpe is Hyperopt's (its defaults Optuna's, but gamma's 0.25),
# multivariate-tpe Optuna's own, with Optuna's defaults
SAMPLER_SETTINGS = {"random": {"random_state"}, "tpe": {"random_state", "gamma", "prior_weight", "n_EI_candidates"},
                    "multivariate-tpe": {"random_state", "n_startup_trials", "n_ei_candidates"}}
KATIB_PARALLEL_TRIALS = 3  # parallelTrialCount's default


class TrialFailed(AlprError):
    pass


class TuneFailed(AlprError):
    pass


INTERRUPTED = "interrupted"  # a trial's error when Ctrl-C cut it short: --resume runs it again


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C in a trial: the study so far, that its table is still shown."""

    def __init__(self, study):
        super().__init__()
        self.study = study


def project_path(path: Path) -> Path:
    """A relative path that is missing here but exists in the project (katib/..., workflows/...)."""
    if not path.exists() and not path.is_absolute() and (project_root() / path).exists():
        return project_root() / path
    return path


def load_experiment(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: experiment file not found")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or document.get("kind") != "Experiment":
        raise UsageError(f"{path}: not a Katib Experiment")
    spec = document.get("spec")
    missing = [key for key in ("objective", "parameters", "trialTemplate") if not (spec or {}).get(key)]
    if missing:
        raise UsageError(f"{path}: spec.{', spec.'.join(missing)} missing")
    check_space(document["spec"]["parameters"], path)
    return document


def check_space(parameters: list, path: Path) -> None:
    """Each parameter's type and feasible space, as Katib's validator checks them: at once, not in a trial."""
    for index, parameter in enumerate(parameters):
        name = f"{path}: parameter {parameter.get('name', index)}"
        kind, space = parameter.get("parameterType"), parameter.get("feasibleSpace") or {}
        if kind in ("categorical", "discrete"):
            if not space.get("list"):
                raise UsageError(f"{name}: feasibleSpace.list holds no values")
            continue
        if kind not in ("double", "int"):
            raise UsageError(f"{name}: parameterType {kind!r}; expected double, int, discrete or categorical")
        number = int if kind == "int" else float  # as suggest reads them: an int's "1.0" is no int to Katib
        try:
            low, high = number(str(space["min"])), number(str(space["max"]))
            step = number(str(space["step"])) if space.get("step") is not None else None
        except KeyError as key:
            raise UsageError(f"{name}: feasibleSpace.{key.args[0]} missing") from None
        except ValueError:
            what = "whole numbers" if kind == "int" else "numbers"
            raise UsageError(f"{name}: feasibleSpace min, max and step must be {what}, got {space['min']!r}, "
                             f"{space['max']!r} and {space.get('step')!r}") from None
        if step is not None and step < 0:
            raise UsageError(f"{name}: feasibleSpace step must not be negative, got {step:g}")
        if low > high:
            raise UsageError(f"{name}: feasibleSpace min {low:g} is above max {high:g}")
        if space.get("distribution") == "logUniform" and low <= 0:
            raise UsageError(f"{name}: logUniform needs a min above 0, got {low:g}")


def template_path(experiment: dict) -> Path:
    """The WorkflowTemplate YAML the trials reference: workflows/<workflowTemplateRef.name>.yaml."""
    return project_path(Path("workflows") / f"{workflow_template_name(experiment)}.yaml")


def workflow_template_name(experiment: dict) -> str:
    spec = experiment["spec"]["trialTemplate"].get("trialSpec", {})
    name = spec.get("spec", {}).get("workflowTemplateRef", {}).get("name")
    if spec.get("kind") != "Workflow" or not name:
        raise NotSupportedLocally("trialTemplate.trialSpec: only an Argo Workflow with spec.workflowTemplateRef "
                                  "runs locally")
    return name


# --- search space ----------------------------------------------------------------------------

def suggest(trial, parameter: dict):
    """One Katib ParameterSpec as an Optuna suggestion."""
    name, kind, space = parameter["name"], parameter["parameterType"], parameter.get("feasibleSpace", {})
    if kind in ("categorical", "discrete"):
        return trial.suggest_categorical(name, list(space["list"]))
    distribution = space.get("distribution", "uniform")
    if distribution not in ("uniform", "logUniform"):
        raise NotSupportedLocally(f"parameter {name}: distribution {distribution!r} (uniform or logUniform)")
    log = distribution == "logUniform"
    step = space.get("step")
    if log and step is not None and float(step) != (1 if kind == "int" else 0):
        raise NotSupportedLocally(f"parameter {name}: a step with logUniform (Optuna draws log-uniform values "
                                  "without one)")
    if kind == "double":
        step = float(step) if step is not None and not log else None
        return trial.suggest_float(name, float(space["min"]), float(space["max"]), step=step, log=log)
    if kind == "int":
        return trial.suggest_int(name, int(space["min"]), int(space["max"]), step=int(step or 1), log=log)
    raise UsageError(f"parameter {name}: parameterType {kind!r}; expected double, int, discrete or categorical")


def sampler(experiment: dict, seed_offset: int = 0):
    """The experiment's algorithm as an Optuna sampler; ``seed_offset`` moves a seed on (a resumed study)."""
    import optuna

    algorithm = experiment["spec"].get("algorithm", {})
    name = algorithm.get("algorithmName", "random")
    if name not in SAMPLERS:
        raise NotSupportedLocally(f"algorithm {name!r}: alpr tune runs {', '.join(SAMPLERS)}")
    settings = {s["name"]: s.get("value") for s in algorithm.get("algorithmSettings", [])}
    taken = SAMPLER_SETTINGS[name]
    if set(settings) - taken:
        raise NotSupportedLocally(f"algorithm {name!r}: settings {', '.join(sorted(set(settings) - taken))} "
                                  f"(alpr tune takes {', '.join(sorted(taken))})")
    number = partial(_setting, settings, name)
    seed = number("random_state", None, int)  # as Katib: unseeded without one
    seed = None if seed is None else seed + seed_offset
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "multivariate-tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=number("n_startup_trials", 10, int),
                                          n_ei_candidates=number("n_ei_candidates", 24, int))
    gamma = number("gamma", 0.25, float)
    # Katib's Hyperopt draws at random only its first request's trials (parallelTrialCount), where Optuna
    # would draw 10; its good trials are ceil(gamma * sqrt(n)), at most 25, where Optuna's are a tenth
    return optuna.samplers.TPESampler(
        seed=seed, gamma=lambda n: min(math.ceil(gamma * math.sqrt(n)), 25),
        n_startup_trials=experiment["spec"].get("parallelTrialCount", KATIB_PARALLEL_TRIALS),
        prior_weight=number("prior_weight", 1.0, float), n_ei_candidates=number("n_EI_candidates", 24, int))


def _setting(settings: dict, algorithm: str, name: str, default, kind: type):
    if settings.get(name) is None:
        return default
    try:
        return kind(settings[name])
    except ValueError:
        raise UsageError(f"algorithm {algorithm!r}: setting {name} {settings[name]!r} is not "
                         f"{'a whole number' if kind is int else 'a number'}") from None


def direction(experiment: dict) -> str:
    kind = experiment["spec"]["objective"]["type"]
    if kind not in ("maximize", "minimize"):
        raise UsageError(f"objective.type {kind!r}: expected maximize or minimize")
    return kind


# --- trial parameters ------------------------------------------------------------------------

def workflow_arguments(experiment: dict, assignments: dict[str, object]) -> dict[str, str]:
    """The trial Workflow's parameters, ${trialParameters.X} replaced by the assigned values."""
    template = experiment["spec"]["trialTemplate"]
    references = {p["name"]: p["reference"] for p in template.get("trialParameters", [])}

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in references:
            raise UsageError(f"trialSpec uses ${{trialParameters.{name}}}, which trialParameters does not define")
        if references[name] not in assignments:
            raise NotSupportedLocally(f"trial parameter {name}: reference {references[name]!r} is not a parameter "
                                      "of the search space")
        return str(assignments[references[name]])

    parameters = template["trialSpec"]["spec"].get("arguments", {}).get("parameters", [])
    return {p["name"]: TRIAL_PARAMETER.sub(value, str(p.get("value", ""))) for p in parameters}


def tuned_names(experiment: dict) -> set[str]:
    parameters = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"].get("arguments", {}).get("parameters", [])
    return {p["name"] for p in parameters if TRIAL_PARAMETER.search(str(p.get("value", "")))}


def check_overrides(experiment: dict, overrides: dict[str, str]) -> None:
    clash = set(overrides) & (tuned_names(experiment) | {"run-id"})
    if clash:
        raise UsageError(f"-p {', '.join(sorted(clash))}: set by alpr tune for every trial; leave it out")


# --- metrics ---------------------------------------------------------------------------------

def metric_names(experiment: dict) -> list[str]:
    objective = experiment["spec"]["objective"]
    return [objective["objectiveMetricName"], *objective.get("additionalMetricNames", [])]


def metric_filters(experiment: dict) -> list[re.Pattern]:
    spec = experiment["spec"].get("metricsCollectorSpec", {})
    kind = spec.get("collector", {}).get("kind", "StdOut")
    if kind != "StdOut":
        raise NotSupportedLocally(f"metrics collector {kind!r}: alpr tune reads StdOut only")
    formats = spec.get("source", {}).get("filter", {}).get("metricsFormat") or [DEFAULT_METRICS_FORMAT]
    filters = []
    for text in formats:
        try:
            pattern = re.compile(text)
        except re.error as error:
            raise UsageError(f"metricsFormat {text!r}: not a regular expression ({error})") from None
        if pattern.groups < 2:  # Katib's webhook refuses it too
            raise UsageError(f"metricsFormat {text!r}: needs two groups, the metric's name and its value")
        filters.append(pattern)
    return filters


def metric_strategies(experiment: dict) -> dict[str, str]:
    """min, max or latest for each metric; unset ones follow the objective type, as Katib's defaulter does."""
    objective = experiment["spec"]["objective"]
    default = {"maximize": "max", "minimize": "min"}.get(objective["type"], "latest")
    given = {s["name"]: s["value"] for s in objective.get("metricStrategies", [])}
    return {name: given.get(name, default) for name in metric_names(experiment)}


def parse_metrics(lines: list[str], names: list[str], filters: list[re.Pattern]) -> dict[str, list[float]]:
    """Every value of the named metrics in the lines, in order (what Katib's StdOut collector records)."""
    found: dict[str, list[float]] = {}
    for line in lines:
        for pattern in filters:
            for match in pattern.finditer(line):
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in names:
                    try:
                        found.setdefault(name, []).append(float(value))
                    except ValueError:
                        continue  # `name=` with no number
    return found


def observe(values: dict[str, list[float]], strategies: dict[str, str]) -> dict[str, float]:
    pick = {"min": min, "max": max, "latest": lambda v: v[-1]}
    return {name: pick[strategies.get(name, "latest")](found) for name, found in values.items() if found}


@dataclass(frozen=True)
class Collector:
    """Katib's StdOut metrics collector for one experiment: which steps, which metrics, which values."""

    tasks: set[str]
    names: list[str]
    filters: list[re.Pattern]
    strategies: dict[str, str]

    @classmethod
    def of(cls, experiment: dict, template: dict) -> Collector:
        labels = experiment["spec"]["trialTemplate"].get("primaryPodLabels")
        return cls(primary_tasks(template, labels), metric_names(experiment), metric_filters(experiment),
                   metric_strategies(experiment))

    @property
    def objective(self) -> str:
        return self.names[0]

    def metrics(self, lines: list[str]) -> dict[str, float]:
        return observe(parse_metrics(lines, self.names, self.filters), self.strategies)


# --- running trials --------------------------------------------------------------------------

def primary_tasks(template: dict, labels: dict[str, str] | None) -> set[str]:
    """The DAG tasks whose pods Katib's collector wraps: those with primaryPodLabels (all without them)."""
    spec = template["spec"]
    templates = {t["name"]: t for t in spec.get("templates", [])}
    tasks = templates.get(spec.get("entrypoint"), {}).get("dag", {}).get("tasks", [])

    def labelled(task: dict) -> bool:
        return labels.items() <= templates.get(task["template"], {}).get("metadata", {}).get("labels", {}).items()

    chosen = {t["name"] for t in tasks if not labels or labelled(t)}
    if not chosen:
        raise UsageError(f"no step of {template['metadata']['name']} carries primaryPodLabels {labels}: "
                         "Katib would collect no metrics")
    return chosen


def run_trial(template: dict, workdir: Path, parameters: dict[str, str], tasks: set[str], log: Path,
              on_line: Callable[[str, str], None] = lambda task, text: None) -> list[str]:
    """Runs the trial's WorkflowTemplate locally; returns the output lines of the primary tasks."""
    lines: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:  # a trial run again (--resume) adds to its log
        def echo(line: str) -> None:
            out.write(line + "\n")
            out.flush()
            match = OUTPUT_LINE.fullmatch(line)
            if match and match["task"] in tasks and not match["text"].startswith("$ "):
                lines.append(match["text"])
                on_line(match["task"], match["text"])

        try:
            LocalRun(template, workdir, parameters, echo=echo).run()
        except StepFailed as error:
            raise TrialFailed(f"{error} (log: {log})") from error
    return lines


def tune(experiment: dict, template: dict, workdir: Path, overrides: dict[str, str], max_trials: int | None = None,
         echo: Callable[[str], None] = print, resume: bool = False):
    """Runs the experiment's trials in turn; returns the Optuna study (failed trials are TrialState.FAIL)."""
    import optuna

    _check_inputs(experiment, template, overrides, max_trials)
    collect = Collector.of(experiment, template)
    total = max_trials or experiment["spec"].get("maxTrialCount", 10)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(workdir).resolve() / "tune"
    # a second tune's --resume would fail the first's running trial, whose result it could then not record
    with held_alone(folder / "tune.lock", f"another `alpr tune` is running in {workdir}; wait for it to end or "
                    "give another --workdir"):
        study = _study(experiment, folder, resume, echo)
        return _trials(experiment, template, workdir, overrides, collect, study, total, folder / study.study_name,
                       echo, resume)


def _trials(experiment: dict, template: dict, workdir: Path, overrides: dict[str, str], collect: Collector, study,
            total: int, logs: Path, echo: Callable[[str], None], resume: bool):
    import optuna

    spec = experiment["spec"]
    declared = {p["name"] for p in template["spec"].get("arguments", {}).get("parameters", [])}
    max_failed, goal = spec.get("maxFailedTrialCount"), spec["objective"].get("goal")
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) + failures(study)
    echo(f"tune {study.study_name}: {total} trials of {template['metadata']['name']}, {direction(experiment)} "
         f"{collect.objective}; logs in {logs}" + (f"; {done} done before" if resume else ""))
    if resume and ended(study, max_failed, goal, direction(experiment), echo):  # Katib restarts no ended experiment
        return study
    for _ in range(total - done):
        trial = study.ask()
        assignments = {p["name"]: suggest(trial, p) for p in spec["parameters"]}
        run_id = trial.user_attrs.get("run_id") or f"{study.study_name}-{trial.number}"  # a trial run again: its own
        trial.set_user_attr("run_id", run_id)
        echo(f"trial {trial.number}: {' '.join(f'{k}={_format(v)}' for k, v in assignments.items())}")
        parameters = {**workflow_arguments(experiment, assignments), **overrides}
        if "run-id" in declared:  # in a cluster run-id is the Workflow's name, unique per trial
            parameters["run-id"] = run_id
        try:
            metrics = _run(template, workdir, parameters, collect, logs / f"{run_id}.log", echo)
        except KeyboardInterrupt:
            trial.set_user_attr("error", INTERRUPTED)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise TuneInterrupted(study) from None
        except TrialFailed as error:
            trial.set_user_attr("error", str(error))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            echo(f"trial {trial.number} failed: {error}")
            failed = failures(study)
            if failed_enough(failed, max_failed):  # Katib fails the experiment here too
                echo(f"stopping: {failed} trials failed (maxFailedTrialCount {max_failed})")
                break
            continue
        trial.set_user_attr("metrics", metrics)
        study.tell(trial, metrics[collect.objective])
        echo(f"trial {trial.number}: {' '.join(f'{k}={v:.4f}' for k, v in metrics.items())}")
        if goal is not None and _reached(metrics[collect.objective], float(goal), direction(experiment)):
            echo(f"goal {collect.objective}={goal} reached")
            break
    return study


def ended(study, max_failed, goal, kind: str, echo: Callable[[str], None]) -> bool:
    """Whether a resumed study had ended: enough trials failed, or its best reached the goal."""
    import optuna

    failed = failures(study)
    if failed_enough(failed, max_failed):
        echo(f"the study had ended: {failed} trials failed (maxFailedTrialCount {max_failed})")
        return True
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if goal is not None and complete and _reached(study.best_value, float(goal), kind):
        echo(f"the study had ended: its best trial reached the goal {goal}")
        return True
    return False


def _study(experiment: dict, folder: Path, resume: bool, echo: Callable[[str], None]):
    """A new study of the experiment in folder/studies.db, or with ``resume`` its last one, whose trial cut
    short (by Ctrl-C, or a kill that left it running) is queued to run again under its run id."""
    import optuna

    from alpr.db import sqlite_url

    folder.mkdir(parents=True, exist_ok=True)
    storage = sqlite_url(folder / "studies.db")
    prefix = f"{experiment['metadata'].get('name', 'tune')}-"
    kind, seed_offset = direction(experiment), 0
    if resume:
        # the experiment's own: alpr-tune- also begins alpr-tune-mask-rcnn-swin-t-20261207...
        names = sorted(n for n in optuna.study.get_all_study_names(storage) if re.fullmatch(
            re.escape(prefix) + r"\d{14}", n))
        if not names:
            echo(f"nothing to resume in {folder / 'studies.db'}; starting a new study")
        else:
            study = optuna.load_study(study_name=names[-1], storage=storage)
            last = study.trials[-1] if study.trials else None
            if last is not None and (last.state == optuna.trial.TrialState.RUNNING or
                                     last.user_attrs.get("error") == INTERRUPTED):
                if last.state == optuna.trial.TrialState.RUNNING:
                    study.tell(last.number, state=optuna.trial.TrialState.FAIL)
                # under its run id, so that its training resumes; none if it was cut short before it had one
                study.enqueue_trial(last.params, user_attrs={k: v for k, v in last.user_attrs.items() if k == "run_id"})
            # a seeded sampler would draw its first values again
            study.sampler = sampler(experiment, seed_offset=len(study.trials))
            return study
    name = f"{prefix}{time.strftime('%Y%m%d%H%M%S')}"
    return optuna.create_study(study_name=name, storage=storage, direction=kind,
                               sampler=sampler(experiment, seed_offset))


def _check_inputs(experiment: dict, template: dict, overrides: dict[str, str], max_trials: int | None) -> None:
    if workflow_template_name(experiment) != template["metadata"]["name"]:
        raise UsageError(f"the experiment's trials run workflowTemplateRef {workflow_template_name(experiment)!r}, "
                         f"not {template['metadata']['name']!r}")
    if max_trials is not None and max_trials < 1:
        raise UsageError(f"--max-trials must be at least 1, got {max_trials}")
    check_overrides(experiment, overrides)


def _run(template: dict, workdir: Path, parameters: dict[str, str], collect: Collector, log: Path,
         echo: Callable[[str], None]) -> dict[str, float]:
    """One trial: its metrics, or TrialFailed when a step fails or the objective metric never shows."""
    def progress(task: str, text: str) -> None:
        if collect.metrics([text]):
            echo(f"  [{task}] {text}")

    metrics = collect.metrics(run_trial(template, workdir, parameters, collect.tasks, log, progress))
    if collect.objective not in metrics:
        raise TrialFailed(f"no {collect.objective}= line from {', '.join(sorted(collect.tasks))} (log: {log})")
    return metrics


def failures(study) -> int:
    """Trials that failed on their own: not those cut short (Ctrl-C, a kill), which --resume runs again."""
    import optuna

    return sum(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error", INTERRUPTED) != INTERRUPTED
               for t in study.trials)


def failed_enough(failed: int, limit: int | None) -> bool:
    """Katib's rule: the experiment fails once ``maxFailedTrialCount`` trials have, and at least one."""
    return limit is not None and failed > 0 and failed >= limit


def _reached(value: float, goal: float, kind: str) -> bool:
    return value >= goal if kind == "maximize" else value <= goal


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- report ----------------------------------------------------------------------------------

def trials_table(study, experiment: dict):
    from rich.table import Table

    parameters = [p["name"] for p in experiment["spec"]["parameters"]]
    metrics = metric_names(experiment)
    table = Table(title=f"{study.study_name}: {len(study.trials)} trials")
    for column in ("trial", "state", *parameters, *metrics):
        table.add_column(column, justify="right" if column != "state" else "left")
    for trial in study.trials:
        found = trial.user_attrs.get("metrics", {})
        table.add_row(str(trial.number), trial.state.name,
                      *(_format(trial.params.get(p, "")) for p in parameters),
                      *(f"{found[m]:.4f}" if m in found else "-" for m in metrics))
    return table


def report(study, experiment: dict, console=None) -> None:
    """Prints the trials and the best parameters; raises when no trial succeeded."""
    import optuna
    from rich.console import Console

    # Piped (CI logs, tests), rich would squeeze the table into 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    console.print(trials_table(study, experiment))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise TuneFailed(f"all {len(study.trials)} trials failed; the first: "
                         f"{study.trials[0].user_attrs.get('error', '?') if study.trials else 'none ran'}")
    best = study.best_trial
    objective = metric_names(experiment)[0]
    console.print(f"best trial {best.number} (run {best.user_attrs['run_id']}): {objective}={best.value:.4f}",
                  highlight=False)
    console.print("best parameters: " + " ".join(f"{k}={v}" for k, v in best.params.items()),
                  highlight=False, soft_wrap=True)
    failed = failures(study)
    limit = experiment["spec"].get("maxFailedTrialCount")
    if failed_enough(failed, limit):
        raise TuneFailed(f"{failed} trials failed, as many as maxFailedTrialCount {limit}: the experiment failed")
