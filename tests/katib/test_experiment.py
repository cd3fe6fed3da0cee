"""The committed Katib Experiment: in sync with katib/experiment.py, valid for Katib's schema and
webhook, and wired to the alpr-train-trial WorkflowTemplate its trials run."""

import copy
import importlib.util
import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from schemas import SCHEMAS, argo_validator, crd_validator, errors

ROOT = Path(__file__).parents[2]
EXPERIMENT = ROOT / "katib" / "experiment.yaml"
TRIAL_TEMPLATE = ROOT / "workflows" / "alpr-train-trial.yaml"
USES = re.compile(r"\$\{trialParameters\.([^{}]+)\}")
ARGO_SUCCEEDED = 'status.[@this].#(phase=="Succeeded")#'
ARGO_FAILED = 'status.[@this].#(phase!="Succeeded")#|#(phase!%"*ing")#'
ARGO_PHASES = {"Pending": None, "Running": None, "Succeeded": "succeeded", "Failed": "failed", "Error": "failed"}
QUERY = re.compile(r'#\((\w+)(==|!=|%|!%)"([^"]*)"\)#')


def _generator():
    """katib/experiment.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("katib_experiment", ROOT / "katib" / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _generator()
# The committed YAML, and the other model's search space with the other algorithm.
VARIANTS = {"committed": None, "swin-random": {"model": "mask-rcnn-swin-t", "algorithm": "random"}}


@pytest.fixture(scope="module", params=list(VARIANTS))
def experiment(request) -> dict:
    if VARIANTS[request.param] is None:
        return yaml.safe_load(EXPERIMENT.read_text())
    return yaml.safe_load(generator.render(generator.experiment(**VARIANTS[request.param])))


@pytest.fixture(scope="module")
def trial_template() -> dict:
    return yaml.safe_load(TRIAL_TEMPLATE.read_text())


def _generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "katib/experiment.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_committed_yaml_matches_its_generator():
    generated = _generate()
    assert generated.returncode == 0, generated.stderr
    assert EXPERIMENT.is_file(), "katib/experiment.yaml missing: run `make workflows`"
    assert yaml.safe_load(generated.stdout) == yaml.safe_load(EXPERIMENT.read_text()), \
        "katib/experiment.yaml is out of date with katib/experiment.py: run `make workflows`"


def test_generator_options():
    spec = generator.experiment(objective="mAP", algorithm="random", objective_type="minimize")["spec"]
    assert spec["algorithm"]["algorithmName"] == "random"
    assert spec["objective"]["type"] == "minimize" and spec["objective"]["objectiveMetricName"] == "mAP"
    assert set(spec["objective"]["additionalMetricNames"]) == {"EIR", "dv_mAP"}
    assert {s["value"] for s in spec["objective"]["metricStrategies"]} == {"min"}

    swin = generator.experiment(model="mask-rcnn-swin-t")
    assert swin["metadata"]["name"] == "alpr-tune-mask-rcnn-swin-t"
    assert {p["name"] for p in swin["spec"]["parameters"]} == {
        "lr", "weight-decay", "drop-path-rate", "window-size", "mlp-ratio"}
    passed = swin["spec"]["trialTemplate"]["trialSpec"]["spec"]["arguments"]["parameters"]
    assert {p["name"]: p["value"] for p in passed}["model"] == "mask-rcnn-swin-t"

    for option, value, allowed in (("algorithm", "grid", "tpe, random"), ("model", "yolo", "rtmdet-ins-tiny"),
                                   ("objective", "loss", "mAP, dv_mAP, EIR"), ("objective_type", "max", "maximize")):
        with pytest.raises(SystemExit, match=f"{value!r}: expected one of {allowed}"):
            generator.experiment(**{option: value})
    bad = _generate("--model", "yolo")
    assert bad.returncode != 0 and "--model 'yolo': expected one of" in bad.stderr


def _strict(node):
    """The schema with additionalProperties: false on every object that lists its properties."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def test_validates_against_katib_openapi_schema(experiment):
    path = SCHEMAS / "katib" / "katib-openapi-v3.json"
    if not path.is_file():
        pytest.fail(f"{path} missing: the upstream schemas must sit in ../shared/schemas beside the repo")
    schema = json.loads(path.read_text())
    # Types and, made strict here, field names (a misspelt field would be pruned by the API server).
    validator = jsonschema.Draft202012Validator({**_strict(schema), "$ref": "#/components/schemas/v1beta1.Experiment"})
    assert errors(validator, experiment) == []


def test_required_fields_and_experiment_rules(experiment):
    """What the schema cannot say: required fields and the webhook's checks of the spec."""
    assert experiment["apiVersion"] == "kubeflow.org/v1beta1" and experiment["kind"] == "Experiment"
    assert experiment["metadata"]["name"] and "namespace" not in experiment["metadata"]  # kubectl -n picks it
    spec = experiment["spec"]
    objective = spec["objective"]
    assert objective["type"] == "maximize" and objective["objectiveMetricName"] == "EIR"
    assert set(objective["additionalMetricNames"]) == {"mAP", "dv_mAP"}
    assert {s["name"] for s in objective["metricStrategies"]} == {"EIR", "mAP", "dv_mAP"}
    assert {s["value"] for s in objective["metricStrategies"]} <= {"min", "max", "latest"}
    assert spec["algorithm"]["algorithmName"] in ("tpe", "random")
    assert 1 <= spec["parallelTrialCount"] <= spec["maxTrialCount"]
    assert 0 <= spec["maxFailedTrialCount"] <= spec["maxTrialCount"]
    assert spec["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"
    for fmt in spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]:
        assert re.compile(fmt).groups >= 2  # the webhook wants a name group and a value group
    names = [p["name"] for p in spec["parameters"]]
    assert names and len(set(names)) == len(names)
    for parameter in spec["parameters"]:
        space = parameter["feasibleSpace"]
        if parameter["parameterType"] in ("double", "int"):
            assert float(space["min"]) < float(space["max"]), parameter
            if space.get("distribution") == "logUniform":
                assert float(space["min"]) > 0, parameter
        else:
            assert parameter["parameterType"] in ("discrete", "categorical") and space["list"], parameter
            if parameter["parameterType"] == "discrete":
                [float(v) for v in space["list"]]
    assert spec["trialTemplate"]["trialSpec"]


def test_trial_template_follows_the_webhook_rules_for_argo_workflows(experiment):
    template = experiment["spec"]["trialTemplate"]
    assert template["primaryContainerName"] == "main"
    assert template["successCondition"] == ARGO_SUCCEEDED and template["failureCondition"] == ARGO_FAILED
    trial_spec = template["trialSpec"]
    assert trial_spec["apiVersion"] == "argoproj.io/v1alpha1" and trial_spec["kind"] == "Workflow"
    assert not {"name", "namespace"} & set(trial_spec.get("metadata", {}))
    used = set(USES.findall(json.dumps(trial_spec)))
    defined = [p["name"] for p in template["trialParameters"]]
    assert len(set(defined)) == len(defined)
    assert used == set(defined), f"used but not defined: {used - set(defined)}; unused: {set(defined) - used}"
    parameters = {p["name"] for p in experiment["spec"]["parameters"]}
    assert {p["reference"] for p in template["trialParameters"]} == parameters


def test_trial_spec_is_a_valid_argo_workflow(experiment):
    workflow = copy.deepcopy(experiment["spec"]["trialTemplate"]["trialSpec"])
    workflow["metadata"] = {"name": "alpr-tune-x7k2p9qd", "namespace": "alpr"}  # what Katib adds
    assert errors(argo_validator("Workflow"), workflow) == []
    assert errors(crd_validator("argo/argoproj.io_workflows.yaml"), workflow) == []


def test_trials_run_alpr_train_trial_with_parameters_it_declares(experiment, trial_template):
    trial_spec = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]
    assert trial_spec["workflowTemplateRef"]["name"] == trial_template["metadata"]["name"] == "alpr-train-trial"
    declared = {p["name"] for p in trial_template["spec"]["arguments"]["parameters"]}
    passed = [p["name"] for p in trial_spec["arguments"]["parameters"]]
    assert len(set(passed)) == len(passed) and set(passed) <= declared, set(passed) - declared
    # Each tuned value reaches the workflow parameter of the same name.
    references = {p["name"]: p["reference"] for p in experiment["spec"]["trialTemplate"]["trialParameters"]}
    for parameter in trial_spec["arguments"]["parameters"]:
        for name in USES.findall(parameter["value"]):
            assert references[name] == parameter["name"]


def test_what_a_trial_tunes_the_pipeline_trains_with_too(experiment, trial_template):
    """The best trial's values are submitted to alpr-pipeline (`-p weight-decay=...`): each is one of its
    parameters, reaching its train step as the same flag as in the trial (Argo ignores unknown ones)."""
    pipeline = yaml.safe_load((ROOT / "workflows" / "alpr-pipeline.yaml").read_text())
    declared = {p["name"] for p in pipeline["spec"]["arguments"]["parameters"]}
    tuned = {p["name"] for p in experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["arguments"]["parameters"]}
    assert tuned - {"dataset-name", "dataset-version"} <= declared

    for document in (pipeline, trial_template):
        args = _templates(document)["train"]["container"]["args"]
        for name in tuned - {"dataset-name", "dataset-version"}:
            assert f"--{name}={{{{workflow.parameters.{name}}}}}" in args


def _templates(document: dict) -> dict:
    return {t["name"]: t for t in document["spec"]["templates"]}


def test_primary_pod_labels_mark_the_pod_that_prints_the_metrics(experiment, trial_template):
    labels = experiment["spec"]["trialTemplate"]["primaryPodLabels"]
    assert labels
    labelled = [t for t in trial_template["spec"]["templates"]
                if labels.items() <= t.get("metadata", {}).get("labels", {}).items()]
    assert [t["name"] for t in labelled] == ["train"]
    container = labelled[0]["container"]
    assert container["command"] == ["python", "steps/train.py"]
    assert container.get("name", "main") == experiment["spec"]["trialTemplate"]["primaryContainerName"]


def test_the_collector_reads_the_metric_lines_the_train_step_prints(experiment):
    from alpr.metrics import metric_lines

    printed = metric_lines({"mAP": 0.25, "dv_mAP": 0.125, "EIR": 0.5, "plate_recall": 0.75})
    spec = experiment["spec"]
    wanted = {spec["objective"]["objectiveMetricName"], *spec["objective"]["additionalMetricNames"]}
    found = {}
    for fmt in spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]:
        for match in re.finditer(fmt, printed):
            found[match.group(1)] = float(match.group(2))
    assert {k: v for k, v in found.items() if k in wanted} == {"mAP": 0.25, "dv_mAP": 0.125, "EIR": 0.5}


def _matches(condition: str, status: dict) -> bool:
    """Katib's reading of a condition `status.[@this].#(...)#|#(...)#` on a Workflow: a non-empty array
    once each gjson query has filtered it (only the comparisons used here; `%` is a glob)."""
    prefix = "status.[@this]."
    assert condition.startswith(prefix)
    kept = [status]
    for key, op, value in QUERY.findall(condition[len(prefix):]):
        test = {"==": str.__eq__, "!=": str.__ne__, "%": fnmatch.fnmatchcase,
                "!%": lambda a, b: not fnmatch.fnmatchcase(a, b)}[op]
        kept = [s for s in kept if key in s and test(s[key], value)]  # gjson: a missing key never matches
    return bool(kept)


def test_conditions_end_a_trial_in_each_terminal_argo_phase(experiment):
    template = experiment["spec"]["trialTemplate"]
    for phase, outcome in [*ARGO_PHASES.items(), (None, None)]:
        status = {} if phase is None else {"phase": phase}  # no phase yet: just created
        # Katib tries the failure condition first.
        ended = "failed" if _matches(template["failureCondition"], status) else \
            "succeeded" if _matches(template["successCondition"], status) else None
        assert ended == outcome, phase


def _katib_argv(container: dict, values: dict[str, str]) -> list[str]:
    """The train step's argv in a Katib trial. Argo substitutes the parameters; Katib's StdOut collector then
    runs the primary container as `sh -c` with command and args joined by spaces, and the shell splits them."""
    args = [re.sub(r"\{\{workflow\.parameters\.([\w-]+)\}\}", lambda m: values[m.group(1)], a)
            for a in container["args"]]
    words = shlex.split(" ".join([*container["command"], *args]))
    assert words[:2] == container["command"]
    return words[2:]


def test_train_flags_survive_katibs_shell_with_the_templates_defaults(trial_template):
    """Empty defaults (img-size, lr, widen-factor: the model's own) reach the train step as values."""
    from alpr.steps.train import get_args_parser

    values = {p["name"]: p["value"] for p in trial_template["spec"]["arguments"]["parameters"]}
    values["run-id"] = "trial-1"
    parsed = get_args_parser().parse_args(_katib_argv(_templates(trial_template)["train"]["container"], values))
    assert (parsed.img_size, parsed.lr, parsed.widen_factor) == (None, None, None)
    assert (parsed.dataset, parsed.version, parsed.run_id, parsed.epochs) == ("plates", "1", "trial-1", 30)


def test_search_space_values_are_accepted_by_the_train_step(experiment, trial_template):
    """Each tuned workflow parameter feeds a train flag whose parser takes every value of the space,
    as the step gets it in a Katib trial."""
    from alpr.steps.train import get_args_parser

    container = _templates(trial_template)["train"]["container"]
    defaults = {p["name"]: p["value"] for p in trial_template["spec"]["arguments"]["parameters"]}
    for parameter in experiment["spec"]["parameters"]:
        name = parameter["name"]
        assert f"--{name}={{{{workflow.parameters.{name}}}}}" in container["args"], name
        space = parameter["feasibleSpace"]
        for value in space.get("list") or [space["min"], space["max"]]:
            parsed = get_args_parser().parse_args(_katib_argv(container, {**defaults, name: value}))
            assert float(getattr(parsed, name.replace("-", "_"))) == float(value)
