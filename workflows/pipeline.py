"""The alpr-pipeline WorkflowTemplate: synth -> record -> train -> evaluate -> test [-> deploy], with deploy=true
checking beside synth that the InferenceService can be deployed to.

Regenerate the YAML beside it with `make workflows`.
"""

import json

from hera.workflows import DAG, Parameter, Resource, WorkflowTemplate

from alpr.argo import (RUN_ID, WORK_MOUNT, common_parameters, evaluate_outputs, param, step, switch,
                       train_args, training_parameters, volumes, workflow_metadata)

DATASET = ["--dataset", param("dataset-name"), "--version", param("dataset-version")]

with WorkflowTemplate(
    name="alpr-pipeline",
    entrypoint="pipeline",
    arguments=[
        Parameter(name="dataset-name", value="plates", description="dataset name"),
        Parameter(name="dataset-version", value="1", description="dataset version to record"),
        Parameter(name="source", value=f"{WORK_MOUNT}/synth/plates",
                  description="labelme folder on the volume: synth writes here, or, with synth-count 0, yours"),
        Parameter(name="dvc-remote", value="",
                  description="DVC remote for the dataset versions, e.g. gs://bucket/dvc; empty: /work/dvc-remote, "
                              "on the volume beside DVC's cache"),
        Parameter(name="synth-count", value="1000", description="synthetic images to draw (0: none, synth skipped)"),
        Parameter(name="synth-seed", value="0", description="synthesis seed"),
        *training_parameters(),
        switch("deploy", "true: point the InferenceService at this run's best model in the store (a gs:// one)"),
        Parameter(name="inference-service", value="alpr", description="InferenceService the deploy step updates"),
        *common_parameters(),
    ],
    volumes=volumes(),
    **workflow_metadata(),
) as pipeline:
    workdir = ["--workdir", WORK_MOUNT]
    synth = step("synth", ["--out", param("source"), "--count", param("synth-count"),
                           "--seed", param("synth-seed"), "--no-progress"])
    record = step("record", ["--source", param("source"), *workdir, *DATASET, "--db-url", param("db-url"),
                             "--dvc-remote", param("dvc-remote"), "--store", param("store")])
    train = step("train", [*workdir, *DATASET, "--run-id", RUN_ID, *train_args()], gpu=True, retries=3, memory="8Gi")
    evaluate = step("evaluate", [*workdir, "--run-id", RUN_ID, "--db-url", param("db-url"),
                                 "--store", param("store"), "--require-store", param("deploy")],
                    gpu=True, outputs=evaluate_outputs())
    test = step("test", [*workdir, "--run-id", RUN_ID])
    # deploy=true: the InferenceService is there and this workflow may read it (and so patch it: the chart's
    # Role grants both, with kserve.enabled), found out before the training, not hours after it
    check_deploy = Resource(name="check-deploy", action="get", flags=["inferenceservice", param("inference-service")])
    # The chart's InferenceService serves STORAGE_URI (its first env var; the "test" op fails the
    # patch if that ever changes): point it at the checkpoint evaluate uploaded, and KServe rolls out.
    deploy = Resource(name="deploy", action="patch", merge_strategy="json",
                      flags=["inferenceservice", param("inference-service")],
                      inputs=[Parameter(name="model-uri")],
                      manifest=json.dumps([
                          {"op": "test", "path": "/spec/predictor/containers/0/env/0/name", "value": "STORAGE_URI"},
                          {"op": "replace", "path": "/spec/predictor/containers/0/env/0/value",
                           "value": "{{inputs.parameters.model-uri}}"}]))
    deploying = f"{param('deploy')} == true"
    with DAG(name="pipeline"):
        synthesized = synth(when=f"{param('synth-count')} != 0")
        recorded, trained, evaluated, tested = record(), train(), evaluate(), test()
        synthesized >> recorded
        [recorded, check_deploy(when=deploying)] >> trained >> evaluated >> tested >> deploy(
            when=deploying, arguments={"model-uri": evaluated.get_parameter("model-uri")})
