"""`alpr run`: the local runner executes WorkflowTemplates as Argo would, step by step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alpr.local_run import LocalRun, NotSupportedLocally, StepFailed, load_workflow, parse_parameters

ROOT = Path(__file__).parents[1]


def _template(tasks, templates, parameters=None, volumes=True) -> dict:
    spec = {
        "entrypoint": "main",
        "arguments": {"parameters": parameters or [{"name": "greeting", "value": "hello"},
                                                   {"name": "run-id", "value": "{{workflow.name}}"}]},
        "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates],
    }
    if volumes:
        spec["volumes"] = [{"name": "work", "persistentVolumeClaim": {"claimName": "x"}}]
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "t"},
            "spec": spec}


def _python(name, code, args=(), outputs=(), inputs=(), retries=None):
    template = {"name": name, "container": {
        "image": "ignored:1", "command": ["python", "-c", code], "args": list(args),
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        "resources": {"limits": {"memory": "1Gi"}}}}
    if outputs:
        template["outputs"] = {"parameters": [{"name": o, "valueFrom": {"path": f"/work/{o}.txt"}} for o in outputs]}
    if inputs:
        template["inputs"] = {"parameters": [{"name": i} for i in inputs]}
    if retries is not None:
        template["retryStrategy"] = {"limit": str(retries)}
    return template


WRITE = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2]); print('wrote', sys.argv[1])"
APPEND = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"


def test_parameters_outputs_and_dependency_order(tmp_path):
    workflow = _template(
        tasks=[{"name": "second", "template": "consume", "depends": "first",
                "arguments": {"parameters": [{"name": "msg", "value": "{{tasks.first.outputs.parameters.word}}"}]}},
               {"name": "first", "template": "produce"}],
        templates=[_python("produce", WRITE, ["/work/word.txt", "{{workflow.parameters.greeting}}-{{workflow.parameters.run-id}}"],
                           outputs=["word"]),
                   _python("consume", APPEND, ["/work/log.txt", "got {{inputs.parameters.msg}}"], inputs=["msg"])])
    lines = []
    outputs = LocalRun(workflow, tmp_path, {"greeting": "hi"}, echo=lines.append).run()
    assert outputs["first"]["word"].startswith("hi-t-")
    assert (tmp_path / "log.txt").read_text() == f"got {outputs['first']['word']}\n"
    assert any(line.startswith("[first] wrote ") and str(tmp_path) in line for line in lines)


def test_failure_names_the_step_and_resume_skips_what_succeeded(tmp_path):
    flag = tmp_path / "fixed"
    check = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(flag)!r}).exists() else 3)"
    workflow = _template(
        tasks=[{"name": "a", "template": "count"}, {"name": "b", "template": "check", "dependencies": ["a"]}],
        templates=[_python("count", APPEND, ["/work/count.txt", "a"]), _python("check", check)])
    with pytest.raises(StepFailed, match="step 'b' failed with exit code 3"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    flag.touch()
    LocalRun(workflow, tmp_path, {}, resume=True, echo=lambda _: None).run()
    assert (tmp_path / "count.txt").read_text() == "a\n"  # step a ran once


@pytest.mark.parametrize("greeting, ran", [("hello", ["yes"]), ("bye", ["no"])])
def test_when_runs_a_task_only_if_its_condition_holds(tmp_path, greeting, ran):
    workflow = _template(
        tasks=[{"name": "yes", "template": "yes", "when": "{{workflow.parameters.greeting}} == hello"},
               {"name": "no", "template": "no", "when": "'{{workflow.parameters.greeting}}' != 'hello'"}],
        templates=[_python("yes", APPEND, ["/work/ran.txt", "yes"]), _python("no", APPEND, ["/work/ran.txt", "no"])])
    lines = []
    LocalRun(workflow, tmp_path, {"greeting": greeting}, echo=lines.append).run()
    assert (tmp_path / "ran.txt").read_text().split() == ran
    assert any("skipped: when" in line for line in lines)


def test_retry_strategy_retries_a_failing_step(tmp_path):
    flaky = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
             "p.write_text(str(n + 1)); sys.exit(0 if n >= 2 else 1)")
    workflow = _template(tasks=[{"name": "a", "template": "flaky"}],
                         templates=[_python("flaky", flaky, ["/work/tries"], retries=3)])
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "tries").read_text() == "3"


@pytest.mark.parametrize("change, message", [
    (lambda w: w["spec"]["templates"][0]["dag"]["tasks"][0].update(when="1 < 2"), "when expressions other than"),
    (lambda w: w["spec"]["templates"][1].update(script={"source": "print(1)"}), "script not supported"),
    (lambda w: w["spec"].update(onExit="cleanup"), "onExit not supported"),
    (lambda w: w["spec"]["templates"][1]["container"]["args"].append("{{steps.x.outputs.result}}"),
     "cannot resolve {{steps.x.outputs.result}}"),
])
def test_features_it_cannot_run_are_errors_not_skips(tmp_path, change, message):
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")])
    change(workflow)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(workflow))
    with pytest.raises(NotSupportedLocally, match=message.replace("{", r"\{").replace("}", r"\}")):
        LocalRun(load_workflow(path), tmp_path / "work", {}, echo=lambda _: None).run()


def test_unknown_parameter_and_bad_pairs_are_rejected(tmp_path):
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")])
    with pytest.raises(Exception, match="unknown parameter"):
        LocalRun(workflow, tmp_path, {"nope": "1"})
    with pytest.raises(Exception, match="expected name=value"):
        parse_parameters(["novalue"])


def test_alpr_run_executes_the_pipeline_template_end_to_end(tmp_path):
    """The committed alpr-pipeline.yaml, run locally with small parameters: synth to test."""
    result = subprocess.run(
        [sys.executable, "-m", "alpr.cli", "run", "workflows/alpr-pipeline.yaml", "--workdir", str(tmp_path),
         "-p", "synth-count=24", "-p", "model=smoke", "-p", "epochs=1", "-p", "img-size=256", "-p", "batch-size=2",
         "-p", "run-id=e2e", "-p", f"source=/work/synth/e2e"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for step in ("synth", "record", "train", "evaluate", "test"):
        assert f"[{step}] $ " in result.stdout
    assert "EIR=" in result.stdout.splitlines()[-1] or any(l.startswith("EIR=") for l in result.stdout.splitlines())
    run = tmp_path / "runs" / "e2e"
    assert (run / "train" / "best.pth").is_file() and (run / "eval" / "metrics.json").is_file()
    assert (run / "test" / "predictions.jsonl").is_file()
    assert (tmp_path / "datasets" / "plates" / "1" / "manifest.json").is_file()
    state = json.loads((tmp_path / ".alpr-run" / "alpr-pipeline.json").read_text())
    assert set(state["outputs"]) == {"synth", "record", "train", "evaluate", "test", "deploy"}
    assert "[deploy] skipped: when '{{workflow.parameters.deploy}} == true' is false" in result.stdout
    assert "[deploy] $ " not in result.stdout
