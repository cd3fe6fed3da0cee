"""``alpr run``: execute an Argo WorkflowTemplate's DAG on this machine, step by step.

The template's own command and args run as local processes: ``python`` is this
interpreter, the work PVC's mount path maps to the local workdir, Secret-backed env
vars come from this environment. Images, resources, pod GC and TTL only matter in a
cluster (as do podSpecPatch's resource limits) and are ignored here; any other feature the runner cannot honour stops the run
with a "not supported locally" error instead of being skipped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alpr.errors import AlprError, UsageError

EXPRESSION = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
CLUSTER_ONLY_SPEC = {"podGC", "ttlStrategy", "serviceAccountName", "podMetadata", "workflowMetadata",
                     "activeDeadlineSeconds", "parallelism"}
SPEC_KEYS = {"entrypoint", "arguments", "templates", "volumes"} | CLUSTER_ONLY_SPEC
TEMPLATE_KEYS = {"name", "container", "dag", "inputs", "outputs", "retryStrategy", "metadata", "podSpecPatch"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "volumeMounts", "resources",
                  "workingDir"}
TASK_KEYS = {"name", "template", "dependencies", "depends", "arguments", "when"}
COMPARISON = re.compile(r"^\s*(\S+?)\s*(==|!=)\s*(\S+?)\s*$")


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
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or document.get("kind") not in ("WorkflowTemplate", "Workflow"):
        raise UsageError(f"{path}: not an Argo Workflow or WorkflowTemplate")
    extra = set(document.get("spec", {})) - SPEC_KEYS
    if extra:
        _unsupported(f"{path} spec", extra)
    return document


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"-p {pair!r}: expected name=value")
        values[name] = value
    return values


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
    left, operator, right = (part.strip("'\"") for part in match.groups())
    return (left == right) == (operator == "==")


def dependencies(task: dict) -> list[str]:
    if "depends" in task:
        names = re.split(r"\s*&&\s*", task["depends"].strip())
        if any(not re.fullmatch(r"[\w-]+(\.Succeeded)?", n) for n in names):
            _unsupported(f"task {task['name']} depends {task['depends']!r}", ["depends expressions"])
        return [n.split(".")[0] for n in names]
    return list(task.get("dependencies", []))


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
        self.state_file = self.workdir / ".alpr-run" / f"{self.workflow['metadata']['name']}.json"
        defaults = {p["name"]: str(p.get("value", "")) for p in self.spec.get("arguments", {}).get("parameters", [])}
        unknown = set(self.parameters) - set(defaults)
        if unknown:
            raise UsageError(f"unknown parameter(s) {', '.join(sorted(unknown))}; this workflow takes "
                             f"{', '.join(sorted(defaults))}")
        self.values = {**defaults, **self.parameters}
        state = self._load_state() if self.resume else None
        self.name = state["name"] if state else f"{self.workflow['metadata']['name']}-{time.strftime('%Y%m%d%H%M%S')}"
        self.outputs = state["outputs"] if state else {}
        if state and state["parameters"] != self.values:
            raise UsageError(f"cannot --resume {self.name}: its parameters differ from this run's "
                             f"({self.state_file})")
        self.mounts = self._mounts()

    def _load_state(self) -> dict | None:
        if not self.state_file.is_file():
            self.echo(f"nothing to resume in {self.state_file}; starting a new run")
            return None
        return json.loads(self.state_file.read_text())

    def _save_state(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".partial")
        tmp.write_text(json.dumps({"name": self.name, "parameters": self.values, "outputs": self.outputs}, indent=1))
        tmp.replace(self.state_file)

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

    def scope(self, inputs: dict[str, str]) -> dict[str, str]:
        scope = {"workflow.name": self.name, **{f"workflow.parameters.{k}": v for k, v in self.values.items()},
                 **{f"inputs.parameters.{k}": v for k, v in inputs.items()}}
        for task, outputs in self.outputs.items():
            scope.update({f"tasks.{task}.outputs.parameters.{k}": v for k, v in outputs.items()})
        return scope

    def run(self) -> dict[str, dict[str, str]]:
        entry = self.templates.get(self.spec.get("entrypoint"))
        if entry is None or "dag" not in entry:
            raise NotSupportedLocally(f"entrypoint {self.spec.get('entrypoint')!r}: only a DAG entrypoint is "
                                      "supported locally")
        self.echo(f"run {self.name} in {self.workdir}")
        for task in topological(entry["dag"]["tasks"]):
            extra = set(task) - TASK_KEYS
            if extra:
                _unsupported(f"task {task['name']}", extra)
            if task["name"] in self.outputs:
                self.echo(f"[{task['name']}] already succeeded; skipped (--resume)")
                continue
            when = task.get("when")
            if when is not None and not condition_holds(substitute(when, self.scope({}), task["name"]), task["name"]):
                self.echo(f"[{task['name']}] skipped: when {when!r} is false")
                self.outputs[task["name"]] = {}
            else:
                self.outputs[task["name"]] = self.run_task(task)
            self._save_state()
        return self.outputs

    def run_task(self, task: dict) -> dict[str, str]:
        template = self.templates.get(task["template"])
        if template is None:
            raise UsageError(f"task {task['name']}: no template {task['template']!r}")
        extra = set(template) - TEMPLATE_KEYS
        if extra or "container" not in template:
            _unsupported(f"template {template['name']}", extra or {"non-container templates"})
        scope = self.scope({p["name"]: substitute(str(p.get("value", "")), self.scope({}), task["name"])
                            for p in task.get("arguments", {}).get("parameters", [])})
        container = template["container"]
        extra = set(container) - CONTAINER_KEYS
        if extra:
            _unsupported(f"template {template['name']} container", extra)
        command = [self._local(substitute(str(a), scope, task["name"]), container)
                   for a in [*container.get("command", []), *container.get("args", [])]]
        if command and command[0] in ("python", "python3"):
            command[0] = sys.executable
        env = self._env(container, scope, task["name"])
        retries = int(substitute(str(template.get("retryStrategy", {}).get("limit", 0)), scope, task["name"]))
        for attempt in range(retries + 1):
            code = self._execute(task["name"], command, env)
            if code == 0:
                return self._read_outputs(template, scope, container, task["name"])
            if attempt < retries:
                self.echo(f"[{task['name']}] exited {code}; retry {attempt + 1}/{retries}")
        raise StepFailed(f"step {task['name']!r} failed with exit code {code}; fix it and rerun with --resume "
                         "to continue from this step")

    def _local(self, value: str, container: dict) -> str:
        """Maps a path under a volume mount to its local folder."""
        for mount in container.get("volumeMounts", []):
            local = self.mounts.get(mount["name"])
            path = mount["mountPath"].rstrip("/")
            if local is not None and (value == path or value.startswith(path + "/")):
                local.mkdir(parents=True, exist_ok=True)
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
            value = substitute(str(var.get("value", "")), scope, where)
            if self._under_secret(value, container):
                continue  # a file from a Secret: locally the environment's own setting, if any
            env[name] = self._local(value, container)
        return env

    def _execute(self, name: str, command: list[str], env: dict[str, str]) -> int:
        self.echo(f"[{name}] $ {' '.join(command)}")
        process = subprocess.Popen(command, cwd=project_root(), env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            self.echo(f"[{name}] {line.rstrip()}")
        return process.wait()

    def _read_outputs(self, template: dict, scope: dict, container: dict, where: str) -> dict[str, str]:
        outputs = {}
        for parameter in template.get("outputs", {}).get("parameters", []):
            source = parameter.get("valueFrom", {})
            if set(source) != {"path"}:
                _unsupported(f"output {parameter['name']} of {where}", set(source) or {"value"})
            path = Path(self._local(substitute(source["path"], scope, where), container))
            if not path.is_file():
                raise StepFailed(f"step {where!r} succeeded but did not write its output {parameter['name']} "
                                 f"({path})")
            outputs[parameter["name"]] = path.read_text().strip()
        return outputs
