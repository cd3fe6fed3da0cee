"""The alpr-train-trial WorkflowTemplate: train + evaluate on a recorded dataset version.

Katib trials run it with their hyperparameters as workflow parameters; the train pod
carries the label Katib's metrics collector looks for. Regenerate with `make workflows`.
"""

from hera.workflows import DAG, Parameter, WorkflowTemplate

from alpr.argo import RUN_ID, WORK_MOUNT, common_parameters, evaluate_outputs, param, step, volumes, workflow_metadata

KATIB_LABEL = {"katib.kubeflow.org/model-training": "true"}

with WorkflowTemplate(
    name="alpr-train-trial",
    entrypoint="trial",
    arguments=[
        Parameter(name="dataset-name", value="plates", description="recorded dataset name"),
        Parameter(name="dataset-version", value="1", description="recorded dataset version"),
        Parameter(name="model", value="rtmdet-ins-tiny", description="rtmdet-ins-tiny, mask-rcnn-swin-t or smoke"),
        Parameter(name="epochs", value="30", description="training epochs"),
        Parameter(name="batch-size", value="8", description="images per batch"),
        Parameter(name="img-size", value="",
                  description="image size (longest side) for training and test; empty: the model's own"),
        Parameter(name="amp", value="false",
                  description="true: mixed precision (float16 on GPUs, bfloat16 on CPUs with AVX512-BF16 or AMX)"),
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
    workdir = ["--workdir", WORK_MOUNT]
    train = step("train", [*workdir, "--dataset", param("dataset-name"), "--version", param("dataset-version"),
                           "--model", param("model"), "--run-id", RUN_ID, "--epochs", param("epochs"),
                           "--batch-size", param("batch-size"), "--img-size", param("img-size"), "--lr", param("lr"),
                           "--weight-decay", param("weight-decay"), "--widen-factor", param("widen-factor"),
                           "--drop-rate", param("drop-rate"), "--drop-path-rate", param("drop-path-rate"),
                           "--window-size", param("window-size"), "--mlp-ratio", param("mlp-ratio"),
                           "--amp", param("amp")],
                 gpu=True, retries=3, memory="8Gi", labels=KATIB_LABEL)
    evaluate = step("evaluate", [*workdir, "--run-id", RUN_ID, "--db-url", param("db-url"),
                                 "--store", param("store")], gpu=True, outputs=evaluate_outputs())
    with DAG(name="trial"):
        train() >> evaluate()
