"""The Katib Experiment that tunes alpr-train-trial: each trial is an Argo Workflow of that template.

Katib samples the search space below, puts each value into the trial Workflow through
``${trialParameters.X}``, and reads the metrics the train pod prints as ``name=value`` lines
(StdOut collector). ``alpr tune`` runs the same experiment on one machine with Optuna.

    python katib/experiment.py [--objective EIR] [--type maximize] [--algorithm tpe]
        [--model rtmdet-ins-tiny] [--to katib/experiment.yaml]

Regenerate the committed YAML with `make workflows`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from alpr.argo import KEY_METRICS

NAME = "alpr-tune"
TRIAL_TEMPLATE = "alpr-train-trial"  # the WorkflowTemplate every trial runs (workflows/alpr-train-trial.yaml)
METRICS = KEY_METRICS  # what the train step prints after every validation
OBJECTIVE = "EIR"
OBJECTIVE_TYPES = ("maximize", "minimize")
ALGORITHMS = ("tpe", "random")
ALGORITHM = "tpe"
SEED = "42"
PARALLEL_TRIALS = 2
MAX_TRIALS = 12
MAX_FAILED_TRIALS = 3
# The label of the train pod in alpr-train-trial (workflows/train_trial.py KATIB_LABEL): only that
# pod gets Katib's metrics collector sidecar.
PRIMARY_POD_LABELS = {"katib.kubeflow.org/model-training": "true"}
# Katib's StdOut default, stated explicitly: `name=value` with a number.
METRICS_FORMAT = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
# Values for the trial that are not tuned; `alpr tune -p` overrides them.
FIXED = {"dataset-name": "plates", "dataset-version": "1"}


def _log(low: str, high: str) -> dict:
    return {"min": low, "max": high, "distribution": "logUniform"}


def _uniform(low: str, high: str) -> dict:
    return {"min": low, "max": high, "distribution": "uniform"}


# Per model: (alpr-train-trial parameter = train flag, trial parameter name, Katib parameterType,
# feasibleSpace). Both models train from scratch with AdamW (src/alpr/model.py).
SEARCH_SPACES = {
    # defaults: lr 2e-3, weight decay 0.05, widen 0.375, batch 8
    "rtmdet-ins-tiny": (
        ("lr", "learningRate", "double", _log("0.0001", "0.01")),
        ("weight-decay", "weightDecay", "double", _log("0.005", "0.1")),
        ("widen-factor", "widenFactor", "discrete", {"list": ["0.25", "0.375", "0.5"]}),
        ("batch-size", "batchSize", "discrete", {"list": ["4", "8", "16"]}),
    ),
    # defaults: lr 1e-4, weight decay 0.05, drop path 0.2, window 7, MLP ratio 4, batch 8
    "mask-rcnn-swin-t": (
        ("lr", "learningRate", "double", _log("0.00001", "0.001")),
        ("weight-decay", "weightDecay", "double", _log("0.01", "0.1")),
        ("drop-path-rate", "dropPathRate", "double", _uniform("0.0", "0.4")),
        # No pretrained weights are loaded, so any window fits; Swin pads feature maps to it.
        ("window-size", "windowSize", "discrete", {"list": ["7", "8", "12"]}),
        ("mlp-ratio", "mlpRatio", "discrete", {"list": ["2", "3", "4"]}),
    ),
}
MODEL = "rtmdet-ins-tiny"


def trial_spec(model: str) -> dict:
    """An Argo Workflow of the trial template; Katib names it and fills in ${trialParameters.X}."""
    fixed = [{"name": name, "value": value} for name, value in {**FIXED, "model": model}.items()]
    tuned = [{"name": name, "value": "${trialParameters.%s}" % trial_name}
             for name, trial_name, _, _ in SEARCH_SPACES[model]]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "spec": {
            "workflowTemplateRef": {"name": TRIAL_TEMPLATE},
            "arguments": {"parameters": fixed + tuned},
        },
    }


def _check(option: str, value: str, allowed) -> None:
    if value not in allowed:
        raise SystemExit(f"{option} {value!r}: expected one of {', '.join(allowed)}")


def experiment(objective: str = OBJECTIVE, algorithm: str = ALGORITHM, model: str = MODEL,
               objective_type: str = "maximize") -> dict:
    _check("--objective", objective, METRICS)
    _check("--algorithm", algorithm, ALGORITHMS)
    _check("--model", model, tuple(SEARCH_SPACES))
    _check("--type", objective_type, OBJECTIVE_TYPES)
    additional = [m for m in METRICS if m != objective]
    # Katib's defaulter would pick these too (max for maximize, min for minimize); stated so
    # `alpr tune` and readers need not know it. For EIR and mAP: the best validation of a run.
    strategy = "max" if objective_type == "maximize" else "min"
    space = SEARCH_SPACES[model]
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": NAME if model == MODEL else f"{NAME}-{model}",
                     "labels": {"app.kubernetes.io/name": "alpr"}},
        "spec": {
            "objective": {
                "type": objective_type,
                "objectiveMetricName": objective,
                "additionalMetricNames": additional,
                "metricStrategies": [{"name": m, "value": strategy} for m in (objective, *additional)],
            },
            "algorithm": {"algorithmName": algorithm,
                          "algorithmSettings": [{"name": "random_state", "value": SEED}]},
            "parallelTrialCount": PARALLEL_TRIALS,
            "maxTrialCount": MAX_TRIALS,
            "maxFailedTrialCount": MAX_FAILED_TRIALS,
            "parameters": [{"name": name, "parameterType": kind, "feasibleSpace": feasible}
                           for name, _, kind, feasible in space],
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "trialTemplate": {
                "retain": True,  # keep trial Workflows for the Argo UI; the template's ttlStrategy removes them
                "primaryContainerName": "main",  # Argo runs a template's container as `main`
                "primaryPodLabels": PRIMARY_POD_LABELS,
                "successCondition": 'status.[@this].#(phase=="Succeeded")#',
                # An Argo Workflow ends Failed, or Error (a pod deleted, the template missing): any
                # phase but Succeeded that is not still Pending or Running.
                "failureCondition": 'status.[@this].#(phase!="Succeeded")#|#(phase!%"*ing")#',
                "trialParameters": [{"name": trial_name, "reference": name} for name, trial_name, _, _ in space],
                "trialSpec": trial_spec(model),
            },
        },
    }


def render(document: dict) -> str:
    return "# Generated by katib/experiment.py (`make workflows`); edit that, not this.\n" + \
        yaml.safe_dump(document, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the Katib Experiment for alpr-train-trial.")
    parser.add_argument("--objective", default=OBJECTIVE, help=f"objective metric ({', '.join(METRICS)})")
    parser.add_argument("--type", default="maximize", help=f"objective type ({', '.join(OBJECTIVE_TYPES)})")
    parser.add_argument("--algorithm", default=ALGORITHM, help=f"Katib algorithm ({', '.join(ALGORITHMS)})")
    parser.add_argument("--model", default=MODEL, help=f"model whose search space to use ({', '.join(SEARCH_SPACES)})")
    parser.add_argument("--to", type=Path, default=None, help="write the YAML here (default: stdout)")
    args = parser.parse_args(argv)
    text = render(experiment(args.objective, args.algorithm, args.model, args.type))
    if args.to is None:
        sys.stdout.write(text)
        return
    partial = args.to.with_name(f".{args.to.name}.partial")  # written whole, then renamed
    partial.write_text(text)
    partial.replace(args.to)


if __name__ == "__main__":
    main()
