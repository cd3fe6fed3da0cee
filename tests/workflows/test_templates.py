"""The committed WorkflowTemplates: in sync with their Hera modules and valid for Argo."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from schemas import argo_validator, crd_validator, errors

ROOT = Path(__file__).parents[2]
MODULES = sorted((ROOT / "workflows").glob("*.py"))


def yaml_for(module: Path) -> Path:
    return module.with_name(f"alpr-{module.stem.replace('_', '-')}.yaml")


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_committed_yaml_matches_its_hera_module(module):
    generated = subprocess.run([str(Path(sys.executable).with_name("hera")), "generate", "yaml", str(module)],
                               capture_output=True, text=True, cwd=ROOT)
    assert generated.returncode == 0, generated.stderr
    committed = yaml_for(module)
    assert committed.is_file(), f"{committed.name} missing: run `make workflows`"
    assert yaml.safe_load(generated.stdout) == yaml.safe_load(committed.read_text()), \
        f"{committed.name} is out of date with {module.name}: run `make workflows`"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_template_validates_against_argo_schemas(module):
    document = yaml.safe_load(yaml_for(module).read_text())
    assert document["kind"] == "WorkflowTemplate"
    assert errors(argo_validator("WorkflowTemplate"), document) == []
    assert errors(crd_validator("argo/argoproj.io_workflowtemplates.yaml"), document) == []


def _templates(document):
    return {t["name"]: t for t in document["spec"]["templates"]}


def test_pipeline_dag_and_step_contract():
    document = yaml.safe_load((ROOT / "workflows" / "alpr-pipeline.yaml").read_text())
    templates = _templates(document)
    tasks = {t["name"]: t for t in templates["pipeline"]["dag"]["tasks"]}
    assert [tasks[n].get("depends") for n in ("synth", "record", "train", "evaluate", "test")] == \
        [None, "synth", "record && check-deploy", "train", "evaluate"]
    for name in ("synth", "record", "train", "evaluate", "test"):
        container = templates[name]["container"]
        assert container["command"] == ["python", f"steps/{name}.py"]
        assert (ROOT / "steps" / f"{name}.py").is_file()
        assert {"name": "work", "mountPath": "/work"} in container["volumeMounts"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        env = {e["name"]: e for e in container["env"]}
        assert env["ALPR_DB_URL"]["valueFrom"]["secretKeyRef"]["key"] == "db-url"
        assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"].startswith("/var/secrets/")
    record_args = templates["record"]["container"]["args"]
    for flag in ("--dvc-remote", "--store"):  # a cluster's datasets and models off the volume, when given
        assert record_args[record_args.index(flag) + 1] == f"{{{{workflow.parameters.{flag[2:]}}}}}"
    assert templates["train"]["retryStrategy"]["limit"] == "3"
    for name in ("train", "evaluate"):
        patch = json.loads(templates[name]["podSpecPatch"])
        assert patch["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{workflow.parameters.gpus}}"
    outputs = {p["name"] for p in templates["evaluate"]["outputs"]["parameters"]}
    assert outputs == {"mAP", "dv_mAP", "EIR", "model-uri"}
    spec = document["spec"]
    assert spec["podGC"]["strategy"] and spec["ttlStrategy"]["secondsAfterCompletion"] > 0
    # a fresh volume's root is root's: the group that owns it must be the images' user's
    user = {re.search(r"^USER (\d+)$", (ROOT / "images" / f).read_text(), re.M).group(1)
            for f in ("cpu.Dockerfile", "cuda.Dockerfile")}
    assert user == {str(spec["securityContext"]["fsGroup"])} == {str(spec["securityContext"]["runAsUser"])}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == "{{workflow.parameters.work-pvc}}"
    assert "secret" in volumes["secrets"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"  # more than the runtime's 64 MiB /dev/shm
    text = yaml_for(ROOT / "workflows" / "pipeline.py").read_text()
    assert "password" not in text.lower()


@pytest.mark.parametrize("count, skipped", [("0", True), ("1000", False)])
def test_synth_count_0_skips_synth_and_records_the_source_as_it_is(count, skipped):
    from alpr.local_run import LocalRun

    document = yaml.safe_load((ROOT / "workflows" / "alpr-pipeline.yaml").read_text())
    tasks = {t["name"]: t for t in _templates(document)["pipeline"]["dag"]["tasks"]}
    scope = {"workflow.parameters.synth-count": count}
    assert bool(LocalRun.skip_reason(tasks["synth"], scope, set(), set())) is skipped
    assert LocalRun.skip_reason(tasks["record"], scope, {"synth"} if skipped else set(), set()) is None


def test_the_defaults_are_one_setup_a_cpu_cluster_runs():
    for path in (ROOT / "workflows").glob("alpr-*.yaml"):
        defaults = {p["name"]: p["value"] for p in yaml.safe_load(path.read_text())["spec"]["arguments"]["parameters"]}
        assert defaults["image"].endswith("-cpu") and defaults["gpus"] == "0", path.name
        assert defaults["lr"] == defaults["img-size"] == "", path.name  # each model's own


def test_optional_deploy_patches_the_inference_service_with_the_uploaded_model():
    document = yaml.safe_load((ROOT / "workflows" / "alpr-pipeline.yaml").read_text())
    templates = _templates(document)
    task = next(t for t in templates["pipeline"]["dag"]["tasks"] if t["name"] == "deploy")
    assert task["depends"] == "test" and task["when"] == "{{workflow.parameters.deploy}} == true"
    defaults = {p["name"]: p["value"] for p in document["spec"]["arguments"]["parameters"]}
    assert defaults["deploy"] == "false"
    resource = templates["deploy"]["resource"]
    assert resource["action"] == "patch" and resource["mergeStrategy"] == "json"
    assert resource["flags"] == ["inferenceservice", "{{workflow.parameters.inference-service}}"]
    test, replace = json.loads(resource["manifest"])
    assert test == {"op": "test", "path": "/spec/predictor/containers/0/env/0/name", "value": "STORAGE_URI"}
    # the very URL evaluate uploaded the best checkpoint to, as it reports it
    assert replace["value"] == "{{inputs.parameters.model-uri}}"
    assert task["arguments"]["parameters"] == [{"name": "model-uri",
                                                "value": "{{tasks.evaluate.outputs.parameters.model-uri}}"}]
    assert templates["deploy"]["inputs"]["parameters"] == [{"name": "model-uri"}]
    # before the training, not hours after it: the InferenceService is there and the workflow may read it
    check = next(t for t in templates["pipeline"]["dag"]["tasks"] if t["name"] == "check-deploy")
    assert "depends" not in check and check["when"] == task["when"]
    assert templates["check-deploy"]["resource"] == {"action": "get", "flags": resource["flags"]}
    train = next(t for t in templates["pipeline"]["dag"]["tasks"] if t["name"] == "train")
    assert "check-deploy" in train["depends"].split(" && ")


def test_every_step_flag_in_the_template_exists():
    """Each --flag the templates pass is one the step's own parser accepts."""
    import importlib

    for path in (ROOT / "workflows").glob("alpr-*.yaml"):
        for template in yaml.safe_load(path.read_text())["spec"]["templates"]:
            if "container" not in template:
                continue
            step = template["container"]["command"][1].removeprefix("steps/").removesuffix(".py")
            parser = importlib.import_module(f"alpr.steps.{step}").get_args_parser()
            known = {s for action in parser._actions for s in action.option_strings}
            used = {a.partition("=")[0] for a in template["container"]["args"] if a.startswith("--")}
            assert used <= known, f"{path.name} {step}: unknown flags {used - known}"


@pytest.mark.parametrize("name", ["alpr-pipeline", "alpr-train-trial"])
def test_parameters_with_a_fixed_set_of_values_name_it(name):
    """Argo refuses another value at submission, and `alpr run` before its first step."""
    from alpr.model import MODELS

    declared = {p["name"]: p for p in yaml.safe_load((ROOT / "workflows" / f"{name}.yaml").read_text())
                ["spec"]["arguments"]["parameters"]}
    assert declared["model"]["enum"] == list(MODELS) and declared["model"]["value"] in MODELS
    switches = {"amp", "deploy"} & set(declared)
    assert switches and all(declared[s]["enum"] == ["true", "false"] for s in switches)
