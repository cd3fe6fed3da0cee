"""The alpr-train-trial WorkflowTemplate: train + evaluate on a recorded dataset version.

Katib trials run it with their hyperparameters as workflow parameters; the train pod
carries the label Katib's metrics collector looks for. Regenerate with `make workflows`.
"""

from hera.workflows import DAG, Parameter, WorkflowTemplate

from alpr.argo import (RUN_ID, WORK_MOUNT, common_parameters, evaluate_outputs, param, step,
                       train_args, training_parameters, volumes, workflow_metadata)

KATIB_LABEL = {"katib.kubeflow.org/model-training": "true"}

with WorkflowTemplate(
    name="alpr-train-trial",
    entrypoint="trial",
    arguments=[
        Parameter(name="dataset-name", value="plates", description="recorded dataset name"),
        Parameter(name="dataset-version", value="1", description="recorded dataset version"),
        *training_parameters(),
        *common_parameters(),
    ],
    volumes=volumes(),
    **workflow_metadata(),
) as trial:
    train = step("train", [f"--workdir={WORK_MOUNT}", f"--dataset={param('dataset-name')}",
                           f"--version={param('dataset-version')}", f"--run-id={RUN_ID}", *train_args()],
                 gpu=True, retries=3, memory="8Gi", labels=KATIB_LABEL)
    evaluate = step("evaluate", ["--workdir", WORK_MOUNT, "--run-id", RUN_ID, "--db-url", param("db-url"),
                                 "--store", param("store")], gpu=True, outputs=evaluate_outputs())
    with DAG(name="trial"):
        train() >> evaluate()
