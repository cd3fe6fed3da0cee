"""``alpr run``: execute an Argo WorkflowTemplate's DAG on this machine, step by step.

The template's own command and args run as local processes: ``python`` is this
interpreter, the work PVC's mount path maps to the local workdir, Secret-backed env
vars come from this environment. Images, resources, pod GC, TTL, deadlines and parallelism only
matter in a cluster (as do podSpecPatch's resource limits) and are ignored here; any other feature the
runner cannot honour stops the run with a "not supported locally" error instead of being
skipped. As Argo does at submission, the whole DAG is checked before the first step runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from alpr.errors import AlprError, UsageError, read_json, redact
from alpr.files import held_alone, write_atomic

EXPRESSION = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
TASK_OUTPUT = re.compile(r"\{\{\s*tasks\.([\w-]+)\.")
CLUSTER_ONLY_SPEC = {"podGC", "ttlStrategy", "serviceAccountName", "podMetadata", "workflowMetadata",
                     "activeDeadlineSeconds", "parallelism", "securityContext", "tolerations", "nodeSelector",
                     "affinity"}
SPEC_KEYS = {"entrypoint", "arguments", "templates", "volumes"} | CLUSTER_ONLY_SPEC
TEMPLATE_KEYS = {"name", "container", "dag", "inputs", "outputs", "retryStrategy", "metadata", "podSpecPatch"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "volumeMounts", "resources",
                  "workingDir"}
TASK_KEYS = {"name", "template", "dependencies", "depends", "arguments", "when"}
MOUNT_KEYS = {"name", "mountPath", "readOnly"}
COMPARISON = re.compile(r"^\s*(\S*?)\s*(==|!=)\s*(\S*?)\s*$")
DEPENDENCY = re.compile(r"([\w-]+)(?:\.(Succeeded))?")
# Whether a step that exits non-zero is retried: locally every failure is the step's own, never
# an Argo error (a pod that could not start), so OnError and OnTransientError never retry here.
RETRIED_ON_EXIT = {"Always": True, "OnFailure": True, "OnError": False, "OnTransientError": False}
LOCAL_FILE_URLS = ("file://", "sqlite:///")  # then an absolute path: file:///work/x, sqlite:////work/x.db


class NotSupportedLocally(AlprError):
    pass


class StepFailed(AlprError):
    pass


def _unsupported(where: str, keys) -> None:
    raise NotSupportedLocally(f"{where}: {', '.join(sorted(keys))} not supported locally by `alpr run`; "
                              "submit it to Argo instead")


def project_root() -> Path:
    """The folder holding steps/, where step commands run (as in the step image)."""
    import alpr.steps

    return Path(alpr.steps.__file__).resolve().parents[1]


def load_workflow(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: workflow file not found")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict) or document.get("kind") not in ("WorkflowTemplate", "Workflow"):
        raise UsageError(f"{path}: not an Argo Workflow or WorkflowTemplate")
    metadata = document.get("metadata") or {}
    if not (metadata.get("name") or metadata.get("generateName")):
        raise UsageError(f"{path}: metadata has neither name nor generateName")
    if not isinstance(document.get("spec"), dict):
        raise UsageError(f"{path}: no spec")
    extra = set(document["spec"]) - SPEC_KEYS
    if extra:
        _unsupported(f"{path} spec", extra)
    return document


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:  # redacted: a URL given without its name= may hold a password
            raise UsageError(redact(f"-p {pair!r}: expected name=value"))
        values[name] = value
    return values


def as_argo_string(value) -> str:
    """A YAML value as Argo reads it (through Go's JSON): true, not True; 1, not 1.0; 0.00001, not 1e-05."""
    if value is None:
        raise UsageError("null, where Argo takes a string: quote it, or leave the value out")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, float) and 1e-6 <= abs(value) < 1e21:  # Go writes these without an exponent
        return format(Decimal(repr(value)), "f")
    if isinstance(value, float):  # and the others' exponents without a leading 0: 1e-7, not 1e-07
        return re.sub(r"e([+-])0(\d)$", r"e\1\2", repr(value))
    return str(value)


def substitute(text: str, scope: dict[str, str], where: str) -> str:
    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in scope:
            raise NotSupportedLocally(f"{where}: cannot resolve {{{{{key}}}}} locally")
        return scope[key]

    for _ in range(5):  # parameters may refer to others, e.g. run-id = {{workflow.name}}
        if not EXPRESSION.search(text):
            return text
        text = EXPRESSION.sub(replace, text)
    return text


def condition_holds(when: str, where: str) -> bool:
    """A substituted ``when`` of the form ``A == B`` or ``A != B``, as Argo compares simple values."""
    match = COMPARISON.match(when)
    if not match:
        _unsupported(f"{where} when {when!r}", ["when expressions other than A == B or A != B"])
    if "" in match.groups():  # Argo refuses it too: `!= 0` is no expression
        raise UsageError(f"{where} when {when!r}: a side is empty (is a parameter in it empty? quote it)")
    left, operator, right = (part.strip("'\"") for part in match.groups())
    return (_as_value(left) == _as_value(right)) == (operator == "==")


def _as_value(text: str) -> float | str:
    """A number as a number, as Argo's expression language compares them: 00 == 0."""
    try:
        return float(text)
    except ValueError:
        return text


def _signal_name(number: int) -> str:
    """SIGKILL, or "signal 40" for one Python has no name for (the real-time ones)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def dependencies(task: dict) -> dict[str, bool]:
    """Task name -> whether it must have succeeded (``a.Succeeded``); a bare ``a`` may also have been skipped."""
    if "depends" in task and "dependencies" in task:
        raise UsageError(f"task {task['name']}: both depends and dependencies; Argo takes one or the other")
    if "depends" not in task:
        return dict.fromkeys(task.get("dependencies", []), False)
    found = {}
    for term in re.split(r"\s*&&\s*", task["depends"].strip()):
        match = DEPENDENCY.fullmatch(term)
        if not match:
            _unsupported(f"task {task['name']} depends {task['depends']!r}", ["depends expressions"])
        found[match[1]] = found.get(match[1], False) or bool(match[2])  # `a.Succeeded && a`: it must succeed
    return found


def topological(tasks: list[dict]) -> list[dict]:
    by_name = {t["name"]: t for t in tasks}
    ordered, done = [], set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in trail:
            raise UsageError(f"DAG cycle: {' -> '.join((*trail, name))}")
        if name not in by_name:
            raise UsageError(f"task {trail[-1]} depends on unknown task {name}")
        for dep in dependencies(by_name[name]):
            visit(dep, (*trail, name))
        done.add(name)
        ordered.append(by_name[name])

    for task in tasks:
        visit(task["name"], ())
    return ordered


@dataclass(frozen=True)
class Step:
    """A task made ready to run: every parameter substituted, every path mapped to this machine."""
    command: list[str]
    env: dict[str, str]
    cwd: Path
    retries: int
    outputs: dict[str, Path]


@dataclass
class LocalRun:
    workflow: dict
    workdir: Path
    parameters: dict[str, str]
    resume: bool = False
    echo: callable = print
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self):
        self.workdir = self.workdir.resolve()
        self.spec = self.workflow["spec"]
        self.templates = {t["name"]: t for t in self.spec.get("templates", [])}
        metadata = self.workflow["metadata"]
        base = metadata.get("name") or metadata["generateName"].rstrip("-")
        self.state_file = self.workdir / ".alpr-run" / f"{base}.json"
        declared = self.spec.get("arguments", {}).get("parameters", [])
        defaults = {}
        for parameter in declared:
            if "value" in parameter or "default" in parameter:
                try:
                    defaults[parameter["name"]] = as_argo_string(parameter.get("value", parameter.get("default")))
                except UsageError as error:
                    raise UsageError(f"parameter {parameter['name']}: {error}") from None
        unknown = set(self.parameters) - {p["name"] for p in declared}
        if unknown:
            raise UsageError(f"unknown parameter(s) {', '.join(sorted(unknown))}; this workflow takes "
                             f"{', '.join(sorted(p['name'] for p in declared))}")
        missing = {p["name"] for p in declared} - set(defaults) - set(self.parameters)
        if missing:
            raise UsageError(f"parameter(s) {', '.join(sorted(missing))} have no default: give -p NAME=VALUE")
        self.values = {**defaults, **self.parameters}
        self.defaults = defaults
        for parameter in declared:  # as Argo checks them at submission: not hours in, when a step reads it
            allowed = [as_argo_string(value) for value in parameter.get("enum", [])]  # true, not True
            if allowed and self.values.get(parameter["name"]) not in allowed:
                raise UsageError(f"-p {parameter['name']}={self.values.get(parameter['name'])}: expected one of "
                                 f"{', '.join(allowed)}")
        self.name = f"{base}-{time.strftime('%Y%m%d%H%M%S')}"
        self.last_line: dict[str, str] = {}  # each step's last output line
        self.skipped: set[str] = set()  # their `when` was false
        self.omitted: set[str] = set()  # a dependency was not as asked
        self.mounts = self._mounts()

    def _restore_state(self) -> None:
        """--resume: the name, outputs and skipped tasks of the last run of this template in the workdir."""
        if not self.state_file.is_file():
            self.echo(f"nothing to resume in {self.state_file}; starting a new run")
            return
        state = read_json(self.state_file)
        # a parameter the template gained since that run took its default there too, as it has here
        before = {**_redacted(self.defaults), **_redacted(state["parameters"])}
        now = _redacted(self.values)
        if before != now:
            changed = sorted(name for name in {*before, *now} if before.get(name) != now.get(name))
            raise UsageError(f"cannot --resume {state['name']}: its parameters differ from this run's in "
                             f"{', '.join(changed)} ({self.state_file})")
        self.name, self.outputs = state["name"], state["outputs"]
        self.skipped, self.omitted = set(state.get("skipped", [])), set(state.get("omitted", []))

    def _save_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.state_file, json.dumps({"name": self.name, "parameters": _redacted(self.values),
                                                  "outputs": self.outputs, "skipped": sorted(self.skipped),
                                                  "omitted": sorted(self.omitted)}, indent=1))

    def _mounts(self) -> dict[str, Path | None]:
        """Volume name -> local folder (None for Secrets: their values come from the environment)."""
        mounts = {}
        for volume in self.spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                mounts[volume["name"]] = self.workdir
            elif "emptyDir" in volume:
                mounts[volume["name"]] = self.workdir / ".alpr-run" / "tmp" / volume["name"]
            elif "secret" in volume:
                mounts[volume["name"]] = None
            else:
                _unsupported(f"volume {volume['name']}", set(volume) - {"name"})
        return mounts

    def scope(self) -> dict[str, str]:
        scope = {"workflow.name": self.name, **{f"workflow.parameters.{k}": v for k, v in self.values.items()}}
        for task, outputs in self.outputs.items():
            scope.update({f"tasks.{task}.outputs.parameters.{k}": v for k, v in outputs.items()})
        return scope

    def run(self) -> dict[str, dict[str, str]]:
        entry = self.templates.get(self.spec.get("entrypoint"))
        if entry is None or "dag" not in entry:
            raise NotSupportedLocally(f"entrypoint {self.spec.get('entrypoint')!r}: only a DAG entrypoint is "
                                      "supported locally")
        extra = (set(entry) - TEMPLATE_KEYS) | (set(entry["dag"]) - {"tasks"})  # failFast, target, ...
        if extra or "tasks" not in entry["dag"]:
            _unsupported(f"template {entry['name']}", extra or {"a dag without tasks"})
        tasks = topological(entry["dag"]["tasks"])
        with self._only_run_of_this_template():  # before reading the state: another run may still write it
            if self.resume:
                self._restore_state()
            self.check(tasks)
            return self._run(tasks)

    def _only_run_of_this_template(self):
        """A lock beside the state file, held while the run lasts: a second run of the same template
        in the same workdir would share its state file and scratch folders, so it is refused."""
        return held_alone(self.state_file.with_suffix(".lock"), f"another `alpr run` of {self.state_file.stem} is "
                          f"running in {self.workdir}; wait for it to end or give another --workdir")

    def _run(self, tasks: list[dict]) -> dict[str, dict[str, str]]:
        for local in filter(None, self.mounts.values()):
            local.mkdir(parents=True, exist_ok=True)
        self.echo(f"run {self.name} in {self.workdir}")
        self._save_state()  # a --resume after this run fails in its first step resumes this run, not an older one
        for task in tasks:
            name = task["name"]
            if name in self.outputs:
                done = "skipped" if name in self.skipped else "omitted" if name in self.omitted else "succeeded"
                self.echo(f"[{name}] already {done}; not run again (--resume)")
                continue
            reason = self.skip_reason(task, self.scope(), self.skipped, self.omitted)
            if reason:
                self.echo(f"[{name}] {reason}")
                (self.omitted if reason.startswith("omitted") else self.skipped).add(name)
                self.outputs[name] = {}
            else:
                self.outputs[name] = self.run_step(name, self.prepare(task, self.scope()))
            self._save_state()
        return self.outputs

    def check(self, tasks: list[dict]) -> None:
        """Prepares every task that may run with stand-ins for the outputs of the tasks before it, so that
        an unsupported feature, a missing template or an unresolvable parameter stops the run before its
        first step, not hours into it. A task that a ``when`` on workflow parameters skips is not checked
        (locally, the pipeline's deploy step)."""
        scope = self.scope() | {f"tasks.{t['name']}.outputs.parameters.{p['name']}": f"<{t['name']}.{p['name']}>"
                                for t in tasks if t["name"] not in self.outputs
                                for p in self.templates.get(t.get("template"), {}).get("outputs", {})
                                .get("parameters", [])}
        skipped, omitted = set(self.skipped), set(self.omitted)
        before: dict[str, set[str]] = {}  # each task's ancestors, in topological order
        for task in tasks:
            extra = set(task) - TASK_KEYS
            if extra:
                _unsupported(f"task {task['name']}", extra)
            before[task["name"]] = set().union(*({name} | before[name] for name in dependencies(task)))
            for other in sorted(set(TASK_OUTPUT.findall(json.dumps(task))) - before[task["name"]]):
                raise UsageError(f"task {task['name']} takes task {other}'s outputs but does not depend on it: "
                                 "Argo refuses it too, as the two would run at once (add it to depends)")
            if task["name"] in self.outputs:
                continue
            reason = self.skip_reason(task, scope, skipped, omitted)
            if reason and not TASK_OUTPUT.search(task.get("when", "")):
                (omitted if reason.startswith("omitted") else skipped).add(task["name"])
                continue
            self.prepare(task, scope)

    @staticmethod
    def skip_reason(task: dict, scope: dict[str, str], skipped: set[str], omitted: set[str]) -> str | None:
        """Why the task does not run: "omitted: ..." where a dependency is not as it asks (Argo omits it, and
        a task depending on it is omitted too), "skipped: ..." where its ``when`` is false; None: it runs."""
        for name, must_succeed in dependencies(task).items():
            if name in omitted or (must_succeed and name in skipped):
                wanted = f"{name}.Succeeded" if must_succeed else name
                return f"omitted: it depends on {wanted} and {name} was {'omitted' if name in omitted else 'skipped'}"
        when = task.get("when")
        if when is not None and not condition_holds(substitute(when, scope, task["name"]), task["name"]):
            return f"skipped: when {when!r} is false"
        return None

    def prepare(self, task: dict, scope: dict[str, str]) -> Step:
        where = task["name"]
        template = self._template(task)
        for part, node in (("inputs", template), ("outputs", template), ("arguments", task)):
            if set(node.get(part, {})) - {"parameters"}:  # artifacts
                _unsupported(f"{where} {part}", set(node[part]) - {"parameters"})
        container = template["container"]
        scope = scope | self._inputs(task, template, scope)
        command = [self._local(substitute(str(a), scope, where), container)
                   for a in [*container.get("command", []), *container.get("args", [])]]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        return Step(command, self._env(container, scope, where), self._working_dir(container, scope, where),
                    self._retries(template, scope, where), self._output_paths(template, container, scope, where))

    def _template(self, task: dict) -> dict:
        template = self.templates.get(task["template"])
        if template is None:
            raise UsageError(f"task {task['name']}: no template {task['template']!r}")
        extra = set(template) - TEMPLATE_KEYS
        if extra or "container" not in template:
            _unsupported(f"template {template['name']}", extra or {"non-container templates"})
        extra = set(template["container"]) - CONTAINER_KEYS
        if extra:
            _unsupported(f"template {template['name']} container", extra)
        for mount in template["container"].get("volumeMounts", []):
            if set(mount) - MOUNT_KEYS:
                _unsupported(f"template {template['name']} volume mount {mount['mountPath']}", set(mount) - MOUNT_KEYS)
            if mount["name"] not in self.mounts:  # Kubernetes refuses the pod; here its paths would be the host's
                raise UsageError(f"template {template['name']}: volume mount {mount['mountPath']} names volume "
                                 f"{mount['name']!r}, which spec.volumes does not declare")
        return template

    @staticmethod
    def _inputs(task: dict, template: dict, scope: dict[str, str]) -> dict[str, str]:
        """The template's declared inputs: the task's arguments, else the inputs' own defaults."""
        arguments = task.get("arguments", {}).get("parameters", [])
        for argument in arguments:
            if "value" not in argument:  # valueFrom: an expression, a ConfigMap, ...
                _unsupported(f"task {task['name']} argument {argument['name']}",
                             set(argument) - {"name"} or {"no value"})
        given = {p["name"]: p["value"] for p in arguments}
        inputs = {}
        for parameter in template.get("inputs", {}).get("parameters", []):
            name = parameter["name"]
            value = given.get(name, parameter.get("value", parameter.get("default")))
            if value is None:
                raise UsageError(f"task {task['name']}: input {name} of template {template['name']} is not given "
                                 "and has no default")
            inputs[f"inputs.parameters.{name}"] = substitute(as_argo_string(value), scope, task["name"])
        return inputs

    @staticmethod
    def _retries(template: dict, scope: dict[str, str], where: str) -> int:
        strategy = template.get("retryStrategy")
        if not strategy:
            return 0
        extra = set(strategy) - {"limit", "retryPolicy"}
        if extra or "limit" not in strategy:
            _unsupported(f"template {template['name']} retryStrategy", extra or ["no limit (Argo retries forever)"])
        policy = strategy.get("retryPolicy", "OnFailure")
        if policy not in RETRIED_ON_EXIT:
            raise UsageError(f"template {template['name']}: unknown retryPolicy {policy!r}; "
                             f"Argo takes {', '.join(RETRIED_ON_EXIT)}")
        limit = substitute(str(strategy["limit"]), scope, where)
        if not limit.isdigit():
            raise UsageError(f"template {template['name']}: retryStrategy limit must be a whole number, got {limit!r}")
        return int(limit) if RETRIED_ON_EXIT[policy] else 0

    def _working_dir(self, container: dict, scope: dict[str, str], where: str) -> Path:
        """Steps run where the step image runs them; a workingDir must lie on a volume to mean anything here."""
        if "workingDir" not in container:
            return project_root()
        path = substitute(container["workingDir"], scope, where)
        local = self._local(path, container)
        if local == path:
            _unsupported(f"{where} workingDir {path}", ["a workingDir outside the volumes"])
        return Path(local)

    def _output_paths(self, template: dict, container: dict, scope: dict[str, str], where: str) -> dict[str, Path]:
        paths = {}
        for parameter in template.get("outputs", {}).get("parameters", []):
            source = parameter.get("valueFrom", {})
            if set(source) != {"path"}:
                _unsupported(f"output {parameter['name']} of {where}", set(source) or {"value"})
            paths[parameter["name"]] = Path(self._local(substitute(source["path"], scope, where), container))
        return paths

    def run_step(self, name: str, step: Step) -> dict[str, str]:
        for attempt in range(step.retries + 1):
            code = self._execute(name, step)
            if code == 0:
                return self._read_outputs(name, step.outputs)
            if attempt < step.retries:
                self.echo(f"[{name}] exited {code}; retry {attempt + 1}/{step.retries}")
        last = self.last_line.get(name)
        if code < 0:  # a signal, not the step, ended it: its last line is no reason
            killer = _signal_name(-code) + (" (out of memory?)" if -code == signal.SIGKILL else "")
            raise StepFailed(f"step {name!r} was killed by {killer}" + (f"; its last output: {last}" if last else ""))
        raise StepFailed(f"step {name!r} failed with exit code {code}" + (f": {last}" if last else ""))

    def _local(self, value: str, container: dict) -> str:
        """Maps a path under a volume mount to its local folder, alone, as a flag's value (--out=/work/x)
        or as the path of a URL to a local file (file:///work/x, sqlite:////work/x.db)."""
        flag, sep, rest = value.partition("=")
        if sep and flag.startswith("-"):
            return f"{flag}={self._local(rest, container)}"
        for scheme in LOCAL_FILE_URLS:
            if value.startswith(scheme):
                return scheme + self._local(value[len(scheme):], container)
        for mount in container.get("volumeMounts", []):
            local = self.mounts.get(mount["name"])
            path = mount["mountPath"].rstrip("/")
            if local is not None and (value == path or value.startswith(path + "/")):
                return str(local) + value[len(path):]
        return value

    def _under_secret(self, value: str, container: dict) -> bool:
        return any(self.mounts.get(m["name"], "") is None and value.startswith(m["mountPath"])
                   for m in container.get("volumeMounts", []))

    def _env(self, container: dict, scope: dict, where: str) -> dict[str, str]:
        env = dict(os.environ)
        for var in container.get("env", []):
            name = var["name"]
            if "valueFrom" in var:
                if set(var["valueFrom"]) != {"secretKeyRef"}:
                    _unsupported(f"env {name}", set(var["valueFrom"]))
                continue  # a Secret's value: locally it is whatever this environment holds
            given = var.get("value")
            value = substitute(as_argo_string("" if given is None else given), scope, where)  # Kubernetes: null is ""
            if self._under_secret(value, container):
                continue  # a file from a Secret: locally the environment's own setting, if any
            env[name] = self._local(value, container)
        return env

    def _execute(self, name: str, step: Step) -> int:
        step.cwd.mkdir(parents=True, exist_ok=True)  # a workingDir on the volume, as the container runtime makes it
        self.echo(redact(f"[{name}] $ {' '.join(step.command)}"))
        self.last_line.pop(name, None)  # this attempt's reason, not an earlier one's
        # in a session of its own, the step hears a signal once, from the runner: not twice (Ctrl-C to
        # the terminal's process group) nor never (a signal to the runner alone)
        process = subprocess.Popen(step.command, cwd=step.cwd, env=step.env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                   bufsize=1, start_new_session=True)
        with _stopping_if_unheard(process):
            try:
                with _on_signals(lambda signum: _pass_on(process, signum)):
                    self._echo_output(name, process)
            except KeyboardInterrupt:
                # the step heard it too: its output is read on while it stops (and saves what it does), or
                # its prints would break; a second signal kills it, with its own processes (data loaders).
                try:
                    with _on_signals(lambda signum: os.killpg(process.pid, signal.SIGKILL)):
                        self._echo_output(name, process)
                except KeyboardInterrupt:
                    pass
                self.echo(f"interrupted in step {name!r}")
                raise
        return process.wait()

    def _echo_output(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            line = redact(line.rstrip())
            self.echo(f"[{name}] {line}")
            if line.strip():
                self.last_line[name] = line.strip()  # a failed step's error, as a failure's reason
        process.wait()

    def _read_outputs(self, name: str, paths: dict[str, Path]) -> dict[str, str]:
        outputs = {}
        for output, path in paths.items():
            if not path.is_file():
                raise StepFailed(f"step {name!r} succeeded but did not write its output {output} ({path})")
            outputs[output] = path.read_text().removesuffix("\n")  # as Argo's executor reads it
        return outputs


@contextlib.contextmanager
def _stopping_if_unheard(process: subprocess.Popen):
    """The runner's own output closed (`alpr run | head`, a `tee` that Ctrl-C ended): the step stops too,
    rather than write on in the workdir, unlocked, once the runner is gone."""
    try:
        yield
    except BrokenPipeError:
        process.terminate()
        process.communicate()  # its last lines, unshown, until it ends
        raise


def _pass_on(process: subprocess.Popen, signum: int) -> None:
    """Ctrl-C, a SIGTERM or a SIGHUP to the runner (a CI timeout, a kill, a notebook's interrupt, a closed
    terminal) is passed on to the step, instead of leaving it to write on in the workdir, unlocked. A
    SIGHUP is passed on as SIGTERM, which steps stop cleanly on; the step's last lines then go nowhere:
    written to a closed terminal they would fail."""
    if signum == signal.SIGHUP:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (for the rest of the process)
        signum = signal.SIGTERM
    process.send_signal(signum)


@contextlib.contextmanager
def _on_signals(action: Callable[[int], None]):
    """While the block runs, SIGINT, SIGTERM and SIGHUP call ``action`` and raise KeyboardInterrupt, so that
    the runner goes on as after Ctrl-C. A signal the runner ignores (SIGINT in the background of a shell,
    SIGHUP under nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def handle(signum, frame):
        action(signum)
        raise KeyboardInterrupt

    heard = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handle) for s in heard}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _redacted(values: dict[str, str]) -> dict[str, str]:
    return {name: redact(value) for name, value in values.items()}
