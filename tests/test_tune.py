"""``alpr tune``: a Katib Experiment's search run locally with Optuna, on a toy trial template
whose one step prints ``EIR=f(lr)`` (no mmdet needed)."""

import math
import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

from alpr import cli
from alpr.local_run import NotSupportedLocally, load_workflow
from alpr.tune import (Collector, TuneFailed, load_experiment, report, sampler, suggest, template_path,
                       workflow_arguments)

ROOT = Path(__file__).parents[1]
LABELS = {"katib.kubeflow.org/model-training": "true"}

# The toy train step: EIR peaks at lr = 0.01. It prints a worse value after the best one, so the
# trial's EIR shows the metric strategy (max) at work, and it fails while WORK/fail-first exists
# (the file is removed by the failing run, so only the first trial fails); while WORK/hold-second
# exists, the second trial waits a minute (one to interrupt).
TRAIN = """
import math, os, sys, time
lr, work = float(sys.argv[1]), sys.argv[2]
if os.path.exists(work + '/fail-first'):
    os.remove(work + '/fail-first')
    sys.exit('cannot train')
if os.path.exists(work + '/hold-second'):
    if os.path.exists(work + '/first-done'):
        time.sleep(60)
    open(work + '/first-done', 'w').close()
eir = 1 - (math.log10(lr) + 2) ** 2
print(f'epoch 1: mAP={eir / 2:.6f} dv_mAP={eir / 4:.6f} EIR={eir:.6f}')
print(f'epoch 2: mAP={eir / 2 - 1:.6f} dv_mAP={eir / 4 - 1:.6f} EIR={eir - 1:.6f}')
"""


def best_eir(lr: float) -> float:
    return 1 - (math.log10(lr) + 2) ** 2


def toy_template() -> dict:
    """A trial WorkflowTemplate: a labelled train step, and an unlabelled step whose output Katib ignores."""
    mount = [{"name": "work", "mountPath": "/work"}]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "toy-trial"},
        "spec": {
            "entrypoint": "trial",
            "arguments": {"parameters": [{"name": "lr", "value": "0.1"}, {"name": "run-id", "value": "x"}]},
            "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}],
            "templates": [
                {"name": "train", "metadata": {"labels": LABELS},
                 "container": {"image": "toy", "command": ["python", "-c", TRAIN],
                               "args": ["{{workflow.parameters.lr}}", "/work"], "volumeMounts": mount}},
                {"name": "report", "container": {"image": "toy", "command": ["python", "-c", "print('EIR=99')"]}},
                {"name": "trial", "dag": {"tasks": [{"name": "train", "template": "train"},
                                                    {"name": "report", "template": "report", "depends": "train"}]}},
            ],
        },
    }


def toy_experiment(algorithm: str = "random", max_failed: int = 3) -> dict:
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": "toy"},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": "EIR", "additionalMetricNames": ["mAP"]},
            "algorithm": {"algorithmName": algorithm, "algorithmSettings": [{"name": "random_state", "value": "7"}]},
            "maxTrialCount": 6,
            "maxFailedTrialCount": max_failed,
            "parameters": [{"name": "lr", "parameterType": "double",
                            "feasibleSpace": {"min": "0.0001", "max": "1", "distribution": "logUniform"}}],
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": "main",
                "primaryPodLabels": LABELS,
                "trialParameters": [{"name": "learningRate", "reference": "lr"}],
                "trialSpec": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                              "spec": {"workflowTemplateRef": {"name": "toy-trial"},
                                       "arguments": {"parameters": [
                                           {"name": "lr", "value": "${trialParameters.learningRate}"}]}}},
            },
        },
    }


def write(tmp_path: Path, experiment: dict) -> list[str]:
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(toy_template()))
    return ["tune", "--experiment", str(tmp_path / "experiment.yaml"), "--template", str(tmp_path / "template.yaml"),
            "--workdir", str(tmp_path / "work")]


def test_each_trial_runs_its_values_and_the_best_is_reported(tmp_path, capsys):
    cli.main([*write(tmp_path, toy_experiment()), "--max-trials", "5"])
    out = capsys.readouterr().out

    rows = [line for line in out.splitlines() if "COMPLETE" in line]
    assert len(rows) == 5
    trials = {}
    for row in rows:  # │ trial │ state │ lr │ EIR │ mAP │
        number, _, lr, eir, map_ = [cell.strip() for cell in row.strip("│ ").split("│")]
        trials[int(number)] = float(lr)
        # The value the step saw is the value Optuna chose; EIR is its best (max) validation,
        # not the unlabelled step's EIR=99.
        assert float(eir) == pytest.approx(best_eir(float(lr)), abs=5e-3)
        assert float(map_) == pytest.approx(best_eir(float(lr)) / 2, abs=5e-3)
    best = max(trials, key=lambda n: best_eir(trials[n]))
    assert f"best trial {best} " in out
    assert "best parameters: lr=" in out
    best_lr = float(out.split("best parameters: lr=")[1].split()[0])
    assert best_lr == pytest.approx(trials[best], rel=1e-3)
    assert "trial 0: lr=" in out and "[train] epoch 1: mAP=" in out  # progress: values and metric lines


def test_the_study_stops_once_a_trial_reaches_the_objectives_goal(tmp_path, capsys):
    experiment = toy_experiment()
    experiment["spec"]["objective"]["goal"] = -10.0  # every trial's EIR is above -3
    cli.main([*write(tmp_path, experiment), "--max-trials", "5"])
    out = capsys.readouterr().out
    assert "goal EIR=-10.0 reached" in out
    assert len([line for line in out.splitlines() if "COMPLETE" in line]) == 1
    cli.main([*write(tmp_path, experiment), "--max-trials", "5", "--resume"])  # Katib restarts no ended experiment
    out = capsys.readouterr().out
    assert "the study had ended: its best trial reached the goal -10.0" in out and "trial 1:" not in out


def test_a_failed_trial_is_reported_and_the_study_goes_on(tmp_path, capsys):
    args = write(tmp_path, toy_experiment())
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "fail-first").touch()
    cli.main([*args, "--max-trials", "3"])
    out = capsys.readouterr().out
    assert "trial 0 failed: step 'train' failed with exit code 1: cannot train" in out
    assert "--resume" not in out  # alpr run's, not tune's
    assert len([line for line in out.splitlines() if "FAIL " in line]) == 1
    assert len([line for line in out.splitlines() if "COMPLETE" in line]) == 2
    assert "best trial" in out
    logs = list((tmp_path / "work" / "tune").glob("toy-*/*-0.log"))
    assert logs and "cannot train" in logs[0].read_text()


def test_all_trials_failing_stops_at_max_failed_and_exits_1(tmp_path, capsys, monkeypatch):
    experiment = toy_experiment(max_failed=0)
    experiment["spec"]["objective"]["objectiveMetricName"] = "recall"  # never printed: every trial fails
    with pytest.raises(SystemExit) as exit:
        cli.main(write(tmp_path, experiment))
    assert exit.value.code == 1
    captured = capsys.readouterr()
    assert "trial 0 failed: no recall= line from train" in captured.out
    assert "stopping: 1 trials failed (maxFailedTrialCount 0)" in captured.out
    assert "trial 1" not in captured.out
    assert "error: all 1 trials failed" in captured.err


def test_the_study_stops_when_max_failed_trials_have_failed_as_katib_stops(tmp_path, capsys):
    """Katib fails the experiment once maxFailedTrialCount trials have failed (not one more)."""
    experiment = toy_experiment(max_failed=2)
    experiment["spec"]["objective"]["objectiveMetricName"] = "recall"  # never printed: every trial fails
    with pytest.raises(SystemExit):
        cli.main(write(tmp_path, experiment))
    out = capsys.readouterr().out
    assert "stopping: 2 trials failed (maxFailedTrialCount 2)" in out and "trial 2" not in out


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec["parameters"][0]["feasibleSpace"].pop("min"), "parameter lr: feasibleSpace.min missing"),
    (lambda spec: spec["parameters"][0]["feasibleSpace"].update(min="abc"), "min, max and step must be numbers"),
    (lambda spec: spec["parameters"][0].update(parameterType="int", feasibleSpace={"min": "1.0", "max": "4"}),
     "min, max and step must be whole numbers"),  # the first trial failed on int("1.0")
    (lambda spec: spec["parameters"][0]["feasibleSpace"].update(step="abc"), "min, max and step must be numbers"),
    (lambda spec: spec["parameters"][0]["feasibleSpace"].update(step="-0.1"), "step must not be negative"),
    (lambda spec: spec.setdefault("metricsCollectorSpec", {}).update(
        source={"filter": {"metricsFormat": ["([a-z]+)=.*"]}}), "needs two groups"),  # IndexError mid-trial
    (lambda spec: spec.setdefault("metricsCollectorSpec", {}).update(
        source={"filter": {"metricsFormat": ["(["]}}), "not a regular expression"),
    (lambda spec: spec["parameters"][0]["feasibleSpace"].update(min="0"), "logUniform needs a min above 0"),
    (lambda spec: spec["parameters"][0]["feasibleSpace"].update(min="2"), "min 2 is above max 1"),
    (lambda spec: spec["parameters"][0].update(parameterType="int", feasibleSpace={"list": ["1"]}),
     "feasibleSpace.min missing"),
    (lambda spec: spec["parameters"][0].update(parameterType="categorical", feasibleSpace={}),
     "feasibleSpace.list holds no values"),
    (lambda spec: spec.pop("trialTemplate"), "spec.trialTemplate missing"),
    (lambda spec: spec["algorithm"]["algorithmSettings"][0].update(value="abc"),
     "setting random_state 'abc' is not a whole number"),
    (lambda spec: spec["algorithm"]["algorithmSettings"].append({"name": "n_startup", "value": "3"}),
     "settings n_startup"),
])
def test_a_bad_experiment_is_named_with_its_problem_before_any_trial(tmp_path, capsys, change, message):
    experiment = toy_experiment()
    change(experiment["spec"])
    with pytest.raises(SystemExit):
        cli.main(write(tmp_path, experiment))
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and "trial 0" not in captured.out


def test_an_experiment_file_that_is_not_yaml_is_named(tmp_path, capsys):
    args = write(tmp_path, toy_experiment())
    (tmp_path / "experiment.yaml").write_text("kind: Experiment\nspec: [")
    with pytest.raises(SystemExit):
        cli.main(args)
    assert "experiment.yaml: not valid YAML" in capsys.readouterr().err


def test_tpe_is_guided_after_the_first_parallel_trials_as_katibs_hyperopt_is():
    """Katib's TPE draws at random only its first request (parallelTrialCount trials); Optuna's default
    would draw the first 10 so, the same values as the random search."""
    def draws(algorithm: str) -> list[float]:
        experiment = toy_experiment(algorithm)
        experiment["spec"]["parallelTrialCount"] = 2
        study = optuna.create_study(direction="maximize", sampler=sampler(experiment))
        values = []
        for _ in range(6):
            trial = study.ask()
            values.append(suggest(trial, experiment["spec"]["parameters"][0]))
            study.tell(trial, -abs(math.log10(values[-1]) + 2))  # best at lr 0.01
        return values

    guided, random = draws("tpe"), draws("random")
    assert guided[:2] == random[:2] and guided[2:] != random[2:]


def test_multivariate_tpe_takes_katibs_optuna_settings():
    """Katib runs multivariate-tpe with Optuna (n_startup_trials, n_ei_candidates), tpe with Hyperopt (gamma)."""
    experiment = toy_experiment("multivariate-tpe")
    experiment["spec"]["algorithm"]["algorithmSettings"] += [{"name": "n_startup_trials", "value": "4"}]
    chosen = sampler(experiment)
    assert chosen._multivariate and chosen._n_startup_trials == 4
    experiment["spec"]["algorithm"]["algorithmSettings"] += [{"name": "gamma", "value": "0.3"}]
    with pytest.raises(NotSupportedLocally, match="settings gamma"):
        sampler(experiment)


def test_ctrl_c_in_a_trial_shows_the_trials_so_far_and_resume_goes_on_with_the_study(tmp_path):
    import subprocess
    import sys

    from conftest import interruptible

    args = write(tmp_path, toy_experiment())
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hold-second").touch()
    tune = subprocess.Popen([sys.executable, "-m", "alpr.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, preexec_fn=interruptible)
    seen = []
    for line in tune.stdout:
        seen.append(line)
        if line.startswith("trial 1: lr="):
            time.sleep(2)  # into its step, which waits
            os.killpg(tune.pid, signal.SIGINT)
            break
    rest = tune.stdout.read()
    assert tune.wait(timeout=60) == 130
    assert re.search(r"│ +0 │ COMPLETE", rest) and re.search(r"│ +1 │ FAIL", rest) and "best trial 0 " in rest
    assert "rerun with --resume" in rest
    interrupted = re.search(r"trial 1: lr=(\S+)", line).group(1)

    (tmp_path / "work" / "hold-second").unlink()
    resumed = subprocess.run([sys.executable, "-m", "alpr.cli", *args, "--resume"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 done before" not in resumed.stdout and "1 done before" in resumed.stdout
    assert f"trial 2: lr={interrupted}" in resumed.stdout  # the trial cut short, again, under its run id
    runs = sorted(log.name for log in (tmp_path / "work" / "tune").glob("toy-*/*.log"))
    assert len(runs) == 6 and runs[1].endswith("-1.log")  # 0, 1 (twice), 3 to 6: no run-id of trial 2
    assert len(re.findall(r"│ +\d+ │ COMPLETE", resumed.stdout)) == 6  # maxTrialCount, the interrupted not counted
    first = re.search(r"trial 0: lr=(\S+)", "".join(seen)).group(1)
    assert first not in [lr for n, lr in re.findall(r"trial (\d+): lr=(\S+)", resumed.stdout) if int(n) > 2]


def test_resume_takes_the_experiments_own_study_and_a_trial_cut_short_before_its_run_id(tmp_path):
    """alpr-tune- also begins the other model's alpr-tune-mask-rcnn-swin-t-...: --resume of one took the
    other's newest study (and resumed its trial's training); a trial killed between ask() and its run id
    made --resume fail on the missing id."""
    from alpr.tune import _study

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    experiment = toy_experiment()
    other = optuna.create_study(study_name="toy-two-20991231000000", storage=storage)
    other.enqueue_trial({"lr": 0.5}, user_attrs={"run_id": "toy-two-20991231000000-0"})
    other.ask()
    own = optuna.create_study(study_name="toy-20261207000000", storage=storage, direction="maximize")
    own.ask()  # killed before it had a run id
    resumed = _study(experiment, tmp_path, resume=True, echo=print)
    assert resumed.study_name == "toy-20261207000000"
    assert resumed.trials[0].state == optuna.trial.TrialState.FAIL and "run_id" not in resumed.trials[-1].user_attrs
    assert resumed.trials[-1].state == optuna.trial.TrialState.WAITING  # run again


def test_a_second_tune_in_one_workdir_is_refused_at_once(tmp_path, capsys):
    """Its --resume would mark the first's running trial failed, and the first could not record it."""
    from alpr.files import held_alone

    args = write(tmp_path, toy_experiment())
    with held_alone(tmp_path / "work" / "tune" / "tune.lock", "held by this test"):
        with pytest.raises(SystemExit):
            cli.main([*args, "--resume"])
    assert "another `alpr tune` is running in" in capsys.readouterr().err
    assert not (tmp_path / "work" / "tune" / "studies.db").exists()


def test_bad_options_are_usage_errors(tmp_path, capsys):
    args = write(tmp_path, toy_experiment())
    for extra, message in ((["-p", "lr=0.1"], "-p lr: set by alpr tune for every trial"),
                           (["--max-trials", "0"], "--max-trials must be at least 1")):
        with pytest.raises(SystemExit):
            cli.main([*args, *extra])
        assert message in capsys.readouterr().err


def test_search_space_maps_to_optuna():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    trial = optuna.create_study().ask()
    spaces = [
        {"name": "a", "parameterType": "int", "feasibleSpace": {"min": "2", "max": "8", "step": "2"}},
        {"name": "b", "parameterType": "discrete", "feasibleSpace": {"list": ["4", "8"]}},
        {"name": "c", "parameterType": "categorical", "feasibleSpace": {"list": ["x", "y"]}},
        {"name": "d", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.2"}},
        {"name": "e", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5", "step": "0.1"}},
        {"name": "f", "parameterType": "double",
         "feasibleSpace": {"min": "1e-4", "max": "1", "distribution": "logUniform"}},
        {"name": "g", "parameterType": "int",
         "feasibleSpace": {"min": "1", "max": "64", "step": "1", "distribution": "logUniform"}},
    ]
    for space in spaces:
        suggest(trial, space)
    assert trial.distributions == {
        "a": IntDistribution(2, 8, step=2), "b": CategoricalDistribution(["4", "8"]),
        "c": CategoricalDistribution(["x", "y"]), "d": FloatDistribution(0.1, 0.2),
        "e": FloatDistribution(0.1, 0.5, step=0.1), "f": FloatDistribution(1e-4, 1, log=True),
        "g": IntDistribution(1, 64, log=True)}
    logarithmic = {"name": "h", "parameterType": "int",
                   "feasibleSpace": {"min": "1", "max": "64", "step": "2", "distribution": "logUniform"}}
    with pytest.raises(NotSupportedLocally, match="parameter h: a step with logUniform"):
        suggest(trial, logarithmic)


@pytest.mark.parametrize("algorithm, kind", [("random", optuna.samplers.RandomSampler),
                                             ("tpe", optuna.samplers.TPESampler),
                                             ("multivariate-tpe", optuna.samplers.TPESampler)])
def test_the_samplers_random_state_makes_the_draws_repeatable(algorithm, kind):
    def draws(experiment: dict) -> list[float]:
        study = optuna.create_study(sampler=sampler(experiment))
        values = []
        for _ in range(3):
            trial = study.ask()
            values.append(suggest(trial, experiment["spec"]["parameters"][0]))
            study.tell(trial, values[-1])
        return values

    seeded = toy_experiment(algorithm)
    assert isinstance(sampler(seeded), kind)
    assert draws(seeded) == draws(seeded)
    other = toy_experiment(algorithm)
    other["spec"]["algorithm"]["algorithmSettings"] = [{"name": "random_state", "value": "8"}]
    assert draws(other) != draws(seeded)


def test_a_minimized_objective_takes_each_metric_by_its_strategy(tmp_path, capsys):
    """The toy prints EIR=e then EIR=e-1: the max strategy takes e, minimize's default (min) takes e-1
    for mAP; the best trial is the one with the lowest EIR."""
    experiment = toy_experiment()
    experiment["spec"]["objective"].update(type="minimize", metricStrategies=[{"name": "EIR", "value": "max"}])
    cli.main([*write(tmp_path, experiment), "--max-trials", "4"])
    out = capsys.readouterr().out
    trials = {}
    for row in (line for line in out.splitlines() if "COMPLETE" in line):
        number, _, lr, eir, map_ = [cell.strip() for cell in row.strip("│ ").split("│")]
        trials[int(number)] = float(lr)
        assert float(eir) == pytest.approx(best_eir(float(lr)), abs=5e-3)
        assert float(map_) == pytest.approx(best_eir(float(lr)) / 2 - 1, abs=5e-3)
    assert len(trials) == 4
    assert f"best trial {min(trials, key=lambda n: best_eir(trials[n]))} " in out


def test_the_committed_experiment_runs_the_real_trial_template():
    """What `alpr tune` would run for katib/experiment.yaml, without training."""
    experiment = load_experiment(ROOT / "katib" / "experiment.yaml")
    template = load_workflow(template_path(experiment))
    assert template["metadata"]["name"] == "alpr-train-trial"
    assert Collector.of(experiment, template).tasks == {"train"}
    assignments = {p["name"]: "0.5" for p in experiment["spec"]["parameters"]}
    arguments = workflow_arguments(experiment, assignments)
    declared = {p["name"] for p in template["spec"]["arguments"]["parameters"]}
    assert set(arguments) <= declared
    assert {arguments[name] for name in assignments} == {"0.5"}
    assert "${" not in str(arguments)
    assert arguments["model"] == "rtmdet-ins-tiny"


def test_report_without_successful_trials_raises(capsys):
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(TuneFailed, match="all 1 trials failed"):
        report(study, toy_experiment())


@pytest.mark.parametrize("name", ["a%41b", "q?x"])
def test_the_study_file_is_in_the_folder_named_whatever_its_name(tmp_path, name):
    """An f-string URL read a%41b as aAb, and q?x as q with a query."""
    from alpr.tune import _study

    _study(toy_experiment(), tmp_path / name, resume=False, echo=print)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name / "studies.db").is_file()
