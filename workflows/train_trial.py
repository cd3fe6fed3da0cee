"""The alpr-train-trial WorkflowTemplate: train + evaluate on a recorded dataset version.

Katib trials run it with their hyperparameters as workflow parameters; the train pod
carries the label Katib's metrics collector looks for. Regenerate with `make workflows`.
"""

from hera.workflows import DAG, Parameter, WorkflowTemplate

from alpr.argo import (RUN_ID, WORK_MOUNT, common_parameters, evaluate_outputs, param, step,
                       training_parameters, volumes, workflow_metadata)

KATIB_LABEL = {"katib.kubeflow.org/model-training": "true"}
# Workflow parameters passed to the train step as the flag of the same name.
TRAIN_SETTINGS = ("model", "epochs", "batch-size", "img-size", "lr", "weight-decay", "widen-factor", "drop-rate",
                  "drop-path-rate", "window-size", "mlp-ratio", "amp")

with WorkflowTemplate(
    name="alpr-train-trial",
    entrypoint="trial",
    arguments=[
        Parameter(name="dataset-name", value="plates", description="recorded dataset name"),
        Parameter(name="dataset-version", value="1", description="recorded dataset version"),
        *training_parameters(),
        Parameter(name="epochs", value="30", description="training epochs"),
        Parameter(name="batch-size", value="8", description="images per batch"),
        Parameter(name="img-size", value="",
                  description="image size (longest side) for training and test; empty: the model's own"),
        Parameter(name="lr", value="", description="learning rate; empty: the model's own"),
        Parameter(name="weight-decay", value="0.05", description="AdamW weight decay"),
        Parameter(name="widen-factor", value="", description="RTMDet width multiplier; empty: the model's own"),
        Parameter(name="drop-rate", value="0", description="Swin dropout rate"),
        Parameter(name="drop-path-rate", value="0.2", description="Swin drop path rate"),
        Parameter(name="window-size", value="7", description="Swin window size"),
        Parameter(name="mlp-ratio", value="4", description="Swin MLP ratio"),
        *common_parameters(),
    ],
    volumes=volumes(),
    **workflow_metadata(),
) as trial:
    # Katib's StdOut collector reruns the train container as `sh -c` with its args joined by spaces,
    # where an empty value given as a word of its own would vanish: each flag and value is one word.
    train = step("train", [f"--workdir={WORK_MOUNT}", f"--dataset={param('dataset-name')}",
                           f"--version={param('dataset-version')}", f"--run-id={RUN_ID}",
                           *(f"--{name}={param(name)}" for name in TRAIN_SETTINGS)],
                 gpu=True, retries=3, memory="8Gi", labels=KATIB_LABEL)
    evaluate = step("evaluate", ["--workdir", WORK_MOUNT, "--run-id", RUN_ID, "--db-url", param("db-url"),
                                 "--store", param("store")], gpu=True, outputs=evaluate_outputs())
    with DAG(name="trial"):
        train() >> evaluate()
