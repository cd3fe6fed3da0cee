"""`alpr run`: the local runner executes WorkflowTemplates as Argo would, step by step."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alpr.errors import UsageError
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
    check = (f"import pathlib, sys; fixed = pathlib.Path({str(flag)!r}).exists(); "
             "print('working'); fixed or print('error: not fixed yet\\n'); sys.exit(0 if fixed else 3)")
    workflow = _template(
        tasks=[{"name": "a", "template": "count"}, {"name": "b", "template": "check", "dependencies": ["a"]}],
        templates=[_python("count", APPEND, ["/work/count.txt", "a"]), _python("check", check)])
    with pytest.raises(StepFailed, match="^step 'b' failed with exit code 3: error: not fixed yet$"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    flag.touch()
    with pytest.raises(UsageError, match=r"cannot --resume t-\d+: its parameters differ from this run's in greeting "):
        LocalRun(workflow, tmp_path, {"greeting": "bye"}, resume=True, echo=lambda _: None).run()
    # the template has gained a parameter since: the run cut short took its default as well
    workflow["spec"]["arguments"]["parameters"].append({"name": "new", "value": "1"})
    with pytest.raises(UsageError, match=r"its parameters differ from this run's in new "):
        LocalRun(workflow, tmp_path, {"new": "2"}, resume=True, echo=lambda _: None).run()
    LocalRun(workflow, tmp_path, {}, resume=True, echo=lambda _: None).run()
    assert (tmp_path / "count.txt").read_text() == "a\n"  # step a ran once


def test_resume_after_a_new_run_fails_in_its_first_step_resumes_that_run_not_an_older_one(tmp_path):
    """The state is saved as a run starts: an older run's finished steps are not taken for this one's."""
    broken, fixed = tmp_path / "broken", tmp_path / "fixed"
    count_or_fail = (f"import pathlib, sys; open(sys.argv[1], 'a').write('a\\n'); "
                     f"sys.exit(3 if pathlib.Path({str(broken)!r}).exists() else 0)")
    check = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(fixed)!r}).exists() else 3)"
    workflow = _template(
        tasks=[{"name": "a", "template": "a"}, {"name": "b", "template": "b", "dependencies": ["a"]}],
        templates=[_python("a", count_or_fail, ["/work/count.txt"]), _python("b", check)])
    with pytest.raises(StepFailed, match="step 'b'"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    broken.touch()
    with pytest.raises(StepFailed, match="step 'a'"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    broken.unlink()
    fixed.touch()
    lines = []
    LocalRun(workflow, tmp_path, {}, resume=True, echo=lines.append).run()
    assert (tmp_path / "count.txt").read_text() == "a\n" * 3  # a ran again: the run resumed had not done it
    assert not any("already succeeded" in line for line in lines)


def test_a_task_taking_outputs_of_a_task_it_does_not_depend_on_is_refused_before_any_step(tmp_path):
    """Argo would run the two at once; locally the file's order would hide it."""
    workflow = _template(
        tasks=[{"name": "first", "template": "produce"},
               {"name": "second", "template": "consume",
                "arguments": {"parameters": [{"name": "msg", "value": "{{tasks.first.outputs.parameters.word}}"}]}}],
        templates=[_python("produce", WRITE, ["/work/word.txt", "hi"], outputs=["word"]),
                   _python("consume", APPEND, ["/work/log.txt", "{{inputs.parameters.msg}}"], inputs=["msg"])])
    with pytest.raises(UsageError, match="task second takes task first's outputs but does not depend on it"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert not (tmp_path / "word.txt").exists()
    workflow["spec"]["templates"][0]["dag"]["tasks"][1]["depends"] = "first"
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "log.txt").read_text() == "hi\n"


def test_numbers_in_a_when_compare_as_numbers_as_argo_compares_them(tmp_path):
    workflow = _template(
        tasks=[{"name": "a", "template": "a", "when": "{{workflow.parameters.count}} != 0"}],
        templates=[_python("a", APPEND, ["/work/ran.txt", "a"])], parameters=[{"name": "count", "value": "00"}])
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert not (tmp_path / "ran.txt").exists()
    with pytest.raises(UsageError, match="a when ' != 0': a side is empty"):
        LocalRun(workflow, tmp_path, {"count": ""}, echo=lambda _: None).run()


def test_a_step_killed_by_a_signal_is_named_so_not_by_its_last_line(tmp_path):
    killed = "import os; print('epoch 3', flush=True); os.kill(os.getpid(), 9)"
    workflow = _template(tasks=[{"name": "a", "template": "f"}], templates=[_python("f", killed)])
    with pytest.raises(StepFailed, match=r"^step 'a' was killed by SIGKILL \(out of memory\?\); its last output: "
                                         "epoch 3$"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    real_time = "import os, signal; os.kill(os.getpid(), signal.SIGRTMIN + 6)"  # Python names none of these
    workflow = _template(tasks=[{"name": "a", "template": "f"}], templates=[_python("f", real_time)])
    with pytest.raises(StepFailed, match=r"^step 'a' was killed by signal \d+$"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


def test_a_mount_of_a_volume_not_declared_is_refused_before_a_step_runs(tmp_path):
    """Kubernetes refuses the pod; here its --out=/work/... was left the host's /work."""
    template = _python("one", APPEND, ["/work/ran.txt", "a"])
    template["container"]["volumeMounts"] = [{"name": "wrok", "mountPath": "/work"}]
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[template])
    with pytest.raises(UsageError, match="template one: volume mount /work names volume 'wrok', which spec.volumes"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


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


def test_a_step_that_fails_every_try_is_named_with_its_last_trys_reason(tmp_path):
    """The first try says why; the last, killed silently (out of memory), says nothing: no reason is
    made up from the first."""
    noisy_then_silent = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); first = not p.exists(); p.touch(); "
                         "first and print('error: the first try'); sys.exit(1 if first else 9)")
    workflow = _template(tasks=[{"name": "a", "template": "f"}],
                         templates=[_python("f", noisy_then_silent, ["/work/tried"], retries=1)])
    with pytest.raises(StepFailed, match="^step 'a' failed with exit code 9$"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


@pytest.mark.parametrize("change, message", [
    (lambda w: w["spec"]["templates"][0]["dag"]["tasks"][0].update(when="1 < 2"), "when expressions other than"),
    (lambda w: w["spec"]["templates"][1].update(script={"source": "print(1)"}), "script not supported"),
    (lambda w: w["spec"].update(onExit="cleanup"), "onExit not supported"),
    (lambda w: w["spec"]["templates"][1]["container"]["args"].append("{{steps.x.outputs.result}}"),
     "cannot resolve {{steps.x.outputs.result}}"),
    (lambda w: w["spec"]["templates"][1].update(outputs={"artifacts": [{"name": "m", "path": "/work/m"}]}),
     "a outputs: artifacts not supported"),
    (lambda w: w["spec"]["templates"][0]["dag"]["tasks"][0].update(arguments={"artifacts": []}),
     "a arguments: artifacts not supported"),
    (lambda w: w["spec"]["templates"][0]["dag"]["tasks"][0].update(
        arguments={"parameters": [{"name": "x", "valueFrom": {"expression": "'zero'"}}]}),
     "task a argument x: valueFrom not supported"),
    (lambda w: w["spec"]["templates"][1]["container"]["volumeMounts"][0].update(subPath="datasets"),
     "volume mount /work: subPath not supported"),
    (lambda w: w["spec"]["templates"][0]["dag"].update(target="a", failFast=False),
     "template main: failFast, target not supported"),
])
def test_features_it_cannot_run_are_errors_not_skips(tmp_path, change, message):
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")])
    change(workflow)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(workflow))
    with pytest.raises(NotSupportedLocally, match=message.replace("{", r"\{").replace("}", r"\}")):
        LocalRun(load_workflow(path), tmp_path / "work", {}, echo=lambda _: None).run()


def test_depends_and_dependencies_together_are_refused_as_argo_refuses_them(tmp_path):
    workflow = _template(tasks=[{"name": "a", "template": "one"},
                                {"name": "b", "template": "one", "depends": "a", "dependencies": ["a"]}],
                         templates=[_python("one", "print(1)")])
    with pytest.raises(UsageError, match="task b: both depends and dependencies"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


def test_unknown_parameter_and_bad_pairs_are_rejected(tmp_path):
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")])
    with pytest.raises(UsageError, match="unknown parameter"):
        LocalRun(workflow, tmp_path, {"nope": "1"})
    with pytest.raises(UsageError, match="expected name=value"):
        parse_parameters(["novalue"])
    with pytest.raises(UsageError, match="expected name=value") as refused:  # db-url= forgotten
        parse_parameters(["mysql+pymysql://alpr:hunter2@db/alpr"])
    assert "hunter2" not in str(refused.value)
    chosen = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")],
                       parameters=[{"name": "model", "value": "small", "enum": ["small", "large"]}])
    with pytest.raises(UsageError, match="^-p model=smal: expected one of small, large$"):
        LocalRun(chosen, tmp_path, {"model": "smal"})
    LocalRun(chosen, tmp_path, {"model": "large"})
    flag = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")],
                     parameters=[{"name": "amp", "value": False, "enum": [True, False]}])  # unquoted in YAML
    LocalRun(flag, tmp_path, {"amp": "true"})  # as Argo reads them: strings true and false
    with pytest.raises(UsageError, match="^-p amp=yes: expected one of true, false$"):
        LocalRun(flag, tmp_path, {"amp": "yes"})
    tiny = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")],
                     parameters=[{"name": "lr", "value": 0.00001}, {"name": "big", "value": 2e21},
                                 {"name": "small", "value": 1e-7}])
    assert LocalRun(tiny, tmp_path, {}).values == {"lr": "0.00001", "big": "2e+21", "small": "1e-7"}  # as Go writes
    unset = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")],
                      parameters=[{"name": "store", "value": None}])
    with pytest.raises(UsageError, match="^parameter store: null, where Argo takes a string"):
        LocalRun(unset, tmp_path, {})


def test_the_whole_dag_is_checked_before_the_first_step(tmp_path):
    """A problem in the last task stops the run before the first one starts, as Argo refuses it at submission."""
    tasks = [{"name": "a", "template": "log"}, {"name": "b", "template": "late", "depends": "a"}]
    problems = {
        "cannot resolve {{workflow.parameters.greting}}":
            _python("late", APPEND, ["/work/ran.txt", "{{workflow.parameters.greting}}"]),
        "resource not supported": {"name": "late", "resource": {"action": "patch", "manifest": "{}"}},
        "retryStrategy: no limit": {**_python("late", "print(1)"), "retryStrategy": {"retryPolicy": "Always"}},
    }
    for message, late in problems.items():
        workflow = _template(tasks=tasks, templates=[_python("log", APPEND, ["/work/ran.txt", "a"]), late])
        with pytest.raises(NotSupportedLocally, match=re.escape(message)):
            LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
        assert not (tmp_path / "ran.txt").exists()
    workflow = _template(tasks=[*tasks, {"name": "c", "template": "missing", "depends": "b"}],
                         templates=[_python("log", APPEND, ["/work/ran.txt", "a"]), _python("late", "print(1)")])
    with pytest.raises(UsageError, match="task c: no template 'missing'"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert not (tmp_path / "ran.txt").exists()


@pytest.mark.parametrize("depends, ran", [("a", ["b", "c"]), ("a.Succeeded", []), ("a.Succeeded && a", []),
                                          ("a && a.Succeeded", [])])
def test_depends_on_a_skipped_task_runs_only_a_bare_dependency(tmp_path, depends, ran):
    """Argo: a bare `a` is satisfied by a skipped a, `a.Succeeded` is not: b is then omitted, and an
    omitted task satisfies no dependency, so c, after b, is omitted too."""
    workflow = _template(
        tasks=[{"name": "a", "template": "log-a", "when": "{{workflow.parameters.greeting}} == bye"},
               {"name": "b", "template": "log-b", "depends": depends},
               {"name": "c", "template": "log-c", "depends": "b"}],
        templates=[_python(f"log-{n}", APPEND, ["/work/ran.txt", n]) for n in "abc"])
    lines = []
    LocalRun(workflow, tmp_path, {}, echo=lines.append).run()
    ran_file = tmp_path / "ran.txt"
    assert (ran_file.read_text().split() if ran_file.exists() else []) == ran
    if not ran:
        assert "[b] omitted: it depends on a.Succeeded and a was skipped" in lines
        assert "[c] omitted: it depends on b and b was omitted" in lines


def test_template_inputs_take_their_defaults_and_a_missing_one_is_named(tmp_path):
    template = _python("log", APPEND, ["/work/ran.txt", "{{inputs.parameters.msg}}"])
    template["inputs"] = {"parameters": [{"name": "msg", "default": "fallback"}]}
    workflow = _template(tasks=[{"name": "a", "template": "log"}], templates=[template])
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "ran.txt").read_text() == "fallback\n"
    del template["inputs"]["parameters"][0]["default"]
    with pytest.raises(UsageError, match="task a: input msg of template log is not given and has no default"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


def test_a_parameter_without_a_value_must_be_given(tmp_path):
    workflow = _template(tasks=[{"name": "a", "template": "one"}], templates=[_python("one", "print(1)")],
                         parameters=[{"name": "need"}, {"name": "greeting", "value": "hello"}])
    with pytest.raises(UsageError, match="need have no default: give -p NAME=VALUE"):
        LocalRun(workflow, tmp_path, {})
    LocalRun(workflow, tmp_path, {"need": "1"}, echo=lambda _: None).run()


@pytest.mark.parametrize("policy, tries", [("Always", 3), ("OnFailure", 3), ("OnError", 1), (None, 3)])
def test_retry_policy_decides_whether_a_failed_step_is_retried(tmp_path, policy, tries):
    """A step's non-zero exit is a failure, not an Argo error: OnError does not retry it. Argo's default is
    OnFailure."""
    count = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.write_text(str(int(p.read_text() or 0) + 1) " \
            "if p.exists() else '1'); sys.exit(1)"
    template = _python("fail", count, ["/work/tries"], retries=2)
    if policy:
        template["retryStrategy"]["retryPolicy"] = policy
    workflow = _template(tasks=[{"name": "a", "template": "fail"}], templates=[template])
    with pytest.raises(StepFailed):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "tries").read_text() == str(tries)


def test_paths_in_flags_and_working_dirs_map_to_the_workdir(tmp_path):
    show = "import os, sys; open(sys.argv[1].split('=', 1)[1], 'w').write(os.getcwd())"
    template = _python("show", show, ["--out=/work/cwd.txt"])
    template["container"]["workingDir"] = "/work/sub/new"  # made, as the container runtime makes it
    workflow = _template(tasks=[{"name": "a", "template": "show"}], templates=[template])
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "cwd.txt").read_text() == str(tmp_path / "sub" / "new")
    template["container"]["workingDir"] = "/app"
    with pytest.raises(NotSupportedLocally, match="a workingDir outside the volumes"):
        LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()


def test_urls_of_files_on_the_volume_map_to_the_workdir(tmp_path):
    """A cluster's parameters as they are: file:///work/... and sqlite:////work/... name the workdir here."""
    code = "import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))"
    template = _python("show", code, ["/work/args.txt", "{{workflow.parameters.store}}", "--db-url",
                                      "{{workflow.parameters.db}}", "file:///elsewhere/x"])
    workflow = _template(tasks=[{"name": "a", "template": "show"}], templates=[template],
                         parameters=[{"name": "store", "value": "file:///work/bucket"},
                                     {"name": "db", "value": "sqlite:////work/alpr.db"}])
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "args.txt").read_text() == \
        f"file://{tmp_path}/bucket --db-url sqlite:///{tmp_path}/alpr.db file:///elsewhere/x"


def test_a_password_in_a_parameter_is_neither_echoed_nor_saved(tmp_path):
    url = "mysql+pymysql://alpr:hunter2@db:3306/alpr"
    workflow = _template(tasks=[{"name": "a", "template": "echo"}],
                         templates=[_python("echo", "import sys; print(sys.argv[1])", ["{{workflow.parameters.db}}"])],
                         parameters=[{"name": "db", "value": ""}])
    lines = []
    LocalRun(workflow, tmp_path, {"db": url}, echo=lines.append).run()
    assert any("mysql+pymysql://alpr:***@db:3306/alpr" in line for line in lines)
    assert not any("hunter2" in line for line in lines)
    assert "hunter2" not in (tmp_path / ".alpr-run" / "t.json").read_text()
    lines.clear()
    LocalRun(workflow, tmp_path, {"db": url}, resume=True, echo=lines.append).run()  # resumable all the same
    assert "[a] already succeeded; not run again (--resume)" in lines
    from alpr.errors import redact

    assert redact("redis://:pw@cache:6379") == "redis://:***@cache:6379"
    assert redact("--db-url mysql+pymysql://alpr:ab/cd@db/alpr -v") == "--db-url mysql+pymysql://alpr:***@db/alpr -v"
    assert redact("mysql+pymysql://root:p@ss@db/alpr") == "mysql+pymysql://root:***@db/alpr"
    assert redact("http://host:8080/a?x=1 b@c") == "http://host:8080/a?x=1 b@c"  # a port, then a path: no password
    assert redact("clone https://ghp_x1@github.com/o/r.git") == "clone https://***@github.com/o/r.git"  # a token
    assert redact("https://host/a b@c") == "https://host/a b@c"


@pytest.mark.parametrize("text, message", [
    ("kind: Workflow\nspec: [unclosed", "not valid YAML"),
    ("kind: Workflow\nmetadata: {name: x}\n", "no spec"),
    ("kind: Workflow\nspec: {}\n", "metadata has neither name nor generateName"),
])
def test_a_broken_workflow_file_is_named_with_its_problem(tmp_path, text, message):
    path = tmp_path / "w.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(f"{path}: {message}")):
        load_workflow(path)


def test_a_workflow_with_generate_name_runs(tmp_path):
    workflow = _template(tasks=[{"name": "a", "template": "log"}],
                         templates=[_python("log", APPEND, ["/work/ran.txt", "{{workflow.name}}"])])
    workflow["metadata"] = {"generateName": "hello-"}
    LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "ran.txt").read_text().startswith("hello-")


def test_alpr_run_executes_the_pipeline_template_end_to_end(tmp_path):
    """The committed alpr-pipeline.yaml, run locally with small parameters: synth to test."""
    result = subprocess.run(
        [sys.executable, "-m", "alpr.cli", "run", "workflows/alpr-pipeline.yaml", "--workdir", str(tmp_path),
         "-p", "synth-count=24", "-p", "model=smoke", "-p", "epochs=1", "-p", "img-size=256", "-p", "batch-size=2",
         "-p", "run-id=e2e", "-p", "source=/work/synth/e2e"],
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
    assert set(state["outputs"]) == {"synth", "record", "train", "evaluate", "test", "check-deploy", "deploy"}
    assert "[deploy] skipped: when '{{workflow.parameters.deploy}} == true' is false" in result.stdout
    assert "[deploy] $ " not in result.stdout


def test_output_that_is_not_utf8_is_shown_not_fatal(tmp_path):
    code = "import sys; sys.stdout.buffer.write(b'caf\\xe9 \\xff\\n'); sys.stdout.flush()"
    workflow = _template(tasks=[{"name": "a", "template": "latin"}], templates=[_python("latin", code)])
    lines = []
    LocalRun(workflow, tmp_path, {}, echo=lines.append).run()
    assert "[a] caf\ufffd \ufffd" in lines


def test_alpr_run_names_a_failed_steps_error_and_how_to_go_on(tmp_path):
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(_template(tasks=[{"name": "x", "template": "x"}],
                                             templates=[_python("x", "import sys; sys.exit('boom')")])))
    result = subprocess.run([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path / "w")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: step 'x' failed with exit code 1: boom\nfix it and rerun with --resume" in result.stderr


def test_a_run_whose_output_is_closed_stops_its_step_too(tmp_path):
    """`alpr run | head`: the runner ends (141, as SIGPIPE ends a command) and takes the step with it,
    rather than leave it writing on in the workdir, unlocked, between its prints."""
    code = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "for i in range(3000): print('line', i)\n"
            "time.sleep(60)")  # a silent stretch, as training's between two prints
    path = tmp_path / "talk.yaml"
    path.write_text(yaml.safe_dump(_template(tasks=[{"name": "talk", "template": "talk"}],
                                             templates=[_python("talk", code, ["/work/pid.txt"])])))
    run = subprocess.Popen([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path / "w")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in run.stdout:
        if line.startswith("[talk] line"):
            break
    run.stdout.close()  # as head does, having its line
    assert run.wait(timeout=30) == 141
    _assert_ends(int((tmp_path / "w" / "pid.txt").read_text()), "the step went on after the run ended")


def _assert_ends(pid: int, failure: str) -> None:
    """The process ends within 10 s (else it is killed and the test fails)."""
    import os

    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail(failure)


SLOW = """
import signal, sys, time
def interrupted(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupted)  # a step that stops cleanly on either
try:
    print('started', flush=True)  # inside: the signal may come as soon as it is printed
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(0.5)  # saving what it has
    print('saved', flush=True)
    sys.exit(1)
"""


@pytest.mark.parametrize("signal_name, to_group", [("SIGINT", True), ("SIGINT", False), ("SIGTERM", False)])
def test_ctrl_c_or_a_kill_lets_the_running_step_stop_and_names_it_for_resume(tmp_path, signal_name, to_group):
    """Ctrl-C reaches the runner's whole process group; a kill (SIGTERM), or a SIGINT from a program (a
    notebook's interrupt), the runner alone: the runner passes each on to the step, once."""
    import os
    import signal

    from conftest import interruptible

    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(_template(tasks=[{"name": "slow", "template": "slow"}],
                                             templates=[_python("slow", SLOW)])))
    run = subprocess.Popen([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path / "w")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
                           preexec_fn=interruptible)
    for line in run.stdout:
        if line.strip() == "[slow] started":
            (os.killpg if to_group else os.kill)(run.pid, getattr(signal, signal_name))
            break
    rest = run.stdout.read()
    assert run.wait(timeout=30) == 130
    assert "[slow] saved" in rest and "interrupted in step 'slow'\nrerun with --resume" in rest


SAVING = """
import pathlib, signal, sys, time
def stop(*_):
    print('stopping', flush=True)  # to a runner whose terminal has closed
    time.sleep(0.5)
    pathlib.Path(sys.argv[1]).write_text('saved')
    sys.exit(1)
signal.signal(signal.SIGTERM, stop)
print('started', flush=True)
time.sleep(60)
"""


def test_a_closed_terminal_lets_the_step_stop_cleanly(tmp_path):
    """SIGHUP: the runner passes on SIGTERM and reads the step's last lines while it saves; echoed to the
    closed terminal they would fail (EIO), and the step be killed before it saved."""
    import os
    import pty
    import signal

    from conftest import interruptible

    path = tmp_path / "saving.yaml"
    path.write_text(yaml.safe_dump(_template(tasks=[{"name": "s", "template": "s"}],
                                             templates=[_python("s", SAVING, ["/work/saved.txt"])])))
    terminal, runner_side = pty.openpty()
    run = subprocess.Popen([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path / "w")],
                           cwd=ROOT, stdout=runner_side, stderr=runner_side, start_new_session=True,
                           preexec_fn=interruptible)
    os.close(runner_side)
    seen = b""
    while b"[s] started" not in seen:
        seen += os.read(terminal, 1024)
    os.close(terminal)  # the terminal goes
    run.send_signal(signal.SIGHUP)
    assert run.wait(timeout=30) == 130
    assert (tmp_path / "w" / "saved.txt").read_text() == "saved"


STUBBORN = """
import pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a step that will not stop, with a process of its own
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
print('started', flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 130)])
def test_a_second_ctrl_c_or_sigterm_kills_the_step_and_its_own_processes(tmp_path, signal_name, status):
    """Not the runner alone: the step would write on in the workdir, its lock let go."""
    import os
    import signal

    from conftest import interruptible

    path = tmp_path / "stubborn.yaml"
    path.write_text(yaml.safe_dump(_template(tasks=[{"name": "s", "template": "s"}],
                                             templates=[_python("s", STUBBORN, ["/work/child.txt"])])))
    run = subprocess.Popen([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path / "w")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, preexec_fn=interruptible)
    for line in run.stdout:
        if line.strip() == "[s] started":
            break
    for _ in range(2):
        os.killpg(run.pid, getattr(signal, signal_name))
        time.sleep(0.5)
    assert run.wait(timeout=30) == status
    _assert_ends(int((tmp_path / "w" / "child.txt").read_text()), "the step's own process went on after the run ended")


def test_a_second_run_of_a_template_while_one_runs_in_the_same_workdir_is_refused(tmp_path):
    """They would share the state file that --resume reads; once the first ends, the template runs again."""
    workflow = _template(tasks=[{"name": "slow", "template": "slow"}], templates=[_python("slow", SLOW)])
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    first = subprocess.Popen([sys.executable, "-m", "alpr.cli", "run", str(path), "--workdir", str(tmp_path)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert any(line.strip() == "[slow] started" for line in first.stdout)
        with pytest.raises(UsageError, match=r"another `alpr run` of t is running in .*; wait for it"):
            LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    finally:
        first.terminate()
        first.wait(timeout=30)
    quick = _template(tasks=[{"name": "a", "template": "count"}],
                      templates=[_python("count", APPEND, ["/work/n", "a"])])
    LocalRun(quick, tmp_path, {}, echo=lambda _: None).run()
    assert (tmp_path / "n").read_text() == "a\n"


def test_unquoted_yaml_values_and_outputs_read_as_argo_reads_them(tmp_path):
    workflow = _template(
        tasks=[{"name": "a", "template": "write", "when": "{{workflow.parameters.flag}} == true"}],
        templates=[_python("write", WRITE, ["/work/word.txt", " {{workflow.parameters.n}} \n\n"], outputs=["word"])],
        parameters=[{"name": "flag", "value": True}, {"name": "n", "value": 1.0}])
    outputs = LocalRun(workflow, tmp_path, {}, echo=lambda _: None).run()
    assert outputs["a"]["word"] == " 1 \n"  # YAML's true and 1.0 as JSON has them; one trailing newline cut


def test_a_working_folder_is_made_when_its_step_runs_not_when_the_run_is_checked(tmp_path):
    """check() prepares every step with stand-ins for outputs not made yet: a folder was made for those."""
    write = _python("make", WRITE, ["/work/dir.txt", "made"], outputs=["dir"])
    show = _python("show", "import os; print('in', os.getcwd())", inputs=["d"])
    show["container"]["workingDir"] = "/work/{{inputs.parameters.d}}"
    tasks = [{"name": "a", "template": "make"},
             {"name": "b", "template": "show", "depends": "a",
              "arguments": {"parameters": [{"name": "d", "value": "{{tasks.a.outputs.parameters.dir}}"}]}},
             {"name": "c", "template": "missing", "depends": "b"}]
    with pytest.raises(UsageError, match="no template 'missing'"):
        LocalRun(_template(tasks=tasks, templates=[write, show]), tmp_path, {}, echo=lambda _: None).run()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    lines = []
    LocalRun(_template(tasks=tasks[:2], templates=[write, show]), tmp_path, {}, echo=lines.append).run()
    assert f"[b] in {tmp_path / 'made'}" in lines


def test_env_values_take_parameters_and_a_null_is_empty_as_in_kubernetes(tmp_path):
    show = _python("show", "import os; print('env', repr(os.environ['GREETING']), repr(os.environ['NOTHING']))")
    show["container"]["env"] = [{"name": "GREETING", "value": "{{workflow.parameters.greeting}}"},
                                {"name": "NOTHING", "value": None}]
    lines = []
    LocalRun(_template(tasks=[{"name": "a", "template": "show"}], templates=[show]), tmp_path, {},
             echo=lines.append).run()
    assert "[a] env 'hello' ''" in lines
