"""Building blocks of alpr's Argo WorkflowTemplates, shared by the Hera modules in ``workflows/``.

Every step runs ``python steps/<name>.py`` in the step image with the work volume mounted at
WORK_MOUNT; the GCS key is a file from the Secret, database credentials an env var from it.
"""

from __future__ import annotations

import json

from hera.workflows import Container, Env, Parameter, RetryStrategy, SecretEnv
from hera.workflows import models as m

from alpr import __version__

WORK_MOUNT = "/work"
SECRET_MOUNT = "/var/secrets/alpr"
GCS_KEY_FILE = "gcs-key.json"
SECRET_PARAM = "{{workflow.parameters.secret-name}}"
IMAGE = "{{workflow.parameters.image}}:{{workflow.parameters.image-tag}}"
RUN_ID = "{{workflow.parameters.run-id}}"
KEY_METRICS = ("mAP", "dv_mAP", "EIR")


def param(name: str) -> str:
    return "{{workflow.parameters.%s}}" % name


def switch(name: str, description: str) -> Parameter:
    """A true/false parameter, false unless set: Argo refuses another value at submission, `alpr run`
    before the first step."""
    return Parameter(name=name, value="false", enum=["true", "false"], description=description)


# The training settings the pipeline and the Katib trial both take, each passed to the train step as the flag
# of its name (train_args): what a tuning experiment found trains the pipeline's model too.
TRAIN_SETTINGS = {
    "epochs": "training epochs",
    "minutes": "train for this many minutes instead, the learning rate annealed over the time; empty: by epochs",
    "seed": "random seed",
    "batch-size": "images per batch",
    "img-size": "image size (longest side) for training and test; empty: the model's own",
    "lr": "learning rate; empty: the model's own",
    "weight-decay": "AdamW weight decay",
    "widen-factor": "RTMDet width multiplier; empty: the model's own",
    "drop-rate": "Swin dropout rate",
    "drop-path-rate": "Swin drop path rate",
    "window-size": "Swin window size",
    "mlp-ratio": "Swin MLP ratio",
}


def training_parameters() -> list[Parameter]:
    """The model, its training settings (TrainSettings' defaults; empty: the model's own) and mixed precision."""
    from alpr.model import MODELS, TrainSettings

    defaults = TrainSettings()

    def default(name: str) -> str:
        value = getattr(defaults, name.replace("-", "_"))
        return "" if value is None else str(value)

    return [
        Parameter(name="model", value=defaults.model, enum=list(MODELS), description=", ".join(MODELS)),
        *(Parameter(name=name, value=default(name), description=text) for name, text in TRAIN_SETTINGS.items()),
        switch("amp", "true: mixed precision (float16 on GPUs, bfloat16 on CPUs with AVX512-BF16 or AMX)"),
    ]


def train_args() -> list[str]:
    """The train step's flags for the training parameters. Katib's StdOut collector reruns the train
    container as `sh -c` with its args joined by spaces, where an empty value given as a word of its own
    would vanish: each flag and value is one word."""
    return [f"--{name}={param(name)}" for name in ("model", *TRAIN_SETTINGS, "amp")]


def common_parameters() -> list[Parameter]:
    """Parameters every alpr template takes: image, volume, secret, database and store."""
    return [
        Parameter(name="image", value="ghcr.io/alpr-dev/alpr-cpu", description="step image repository"),
        Parameter(name="image-tag", value=__version__, description="step image tag (the package version)"),
        Parameter(name="work-pvc", value="alpr-work", description="PVC mounted at /work in every step"),
        Parameter(name="secret-name", value="alpr-secrets",
                  description="Secret with gcs-key.json and db-url"),
        Parameter(name="db-url", value="",
                  description="SQLAlchemy URL of a database that needs no credentials, used instead of the "
                              "Secret's (parameters are visible: a URL with credentials goes in the Secret's db-url "
                              "and this stays empty); empty: the Secret's db-url, else SQLite on the volume"),
        Parameter(name="store", value="", description="object store URL (gs://bucket/prefix); empty: none"),
        Parameter(name="gpus", value="0",
                  description="GPUs for train and evaluate; with a CUDA image, e.g. image=ghcr.io/alpr-dev/alpr-cuda"),
        Parameter(name="run-id", value="{{workflow.name}}", description="run folder under /work/runs"),
    ]


def volumes() -> list[m.Volume]:
    return [
        m.Volume(name="work", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
            claim_name=param("work-pvc"))),
        m.Volume(name="secrets", secret=m.SecretVolumeSource(secret_name=SECRET_PARAM, optional=True, items=[
            m.KeyToPath(key=GCS_KEY_FILE, path=GCS_KEY_FILE)])),
        # DataLoader workers hand batches over in shared memory, and a pod's own /dev/shm is 64 MiB:
        # a few batches of 32 training crops. It counts against the step's memory limit.
        m.Volume(name="dshm", empty_dir=m.EmptyDirVolumeSource(medium="Memory", size_limit="2Gi")),
    ]


def _env() -> list:
    return [
        Env(name="GOOGLE_APPLICATION_CREDENTIALS", value=f"{SECRET_MOUNT}/{GCS_KEY_FILE}"),
        SecretEnv(name="ALPR_DB_URL", secret_name=SECRET_PARAM, secret_key="db-url", optional=True),
        Env(name="PYTHONUNBUFFERED", value="1"),
    ]


def step(name: str, args: list[str], gpu: bool = False, retries: int = 0, outputs: list[Parameter] = (),
         cpu: str = "1", memory: str = "4Gi", labels: dict[str, str] | None = None) -> Container:
    """One pipeline step: ``python steps/NAME.py ARGS`` in the step image on the shared volume."""
    # A GPU count from a parameter is not a valid Quantity in the template itself; Argo
    # substitutes it in podSpecPatch, so gpus=0 runs the same template on a CPU cluster.
    patch = json.dumps({"containers": [{"name": "main", "resources": {"limits": {"nvidia.com/gpu": param("gpus")}}}]})
    return Container(
        name=name,
        image=IMAGE,
        command=["python", f"steps/{name}.py"],
        args=args,
        env=_env(),
        volume_mounts=[m.VolumeMount(name="work", mount_path=WORK_MOUNT),
                       m.VolumeMount(name="secrets", mount_path=SECRET_MOUNT, read_only=True),
                       m.VolumeMount(name="dshm", mount_path="/dev/shm")],
        resources=m.ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits={"memory": memory}),
        pod_spec_patch=patch if gpu else None,
        labels=labels,
        retry_strategy=RetryStrategy(limit=str(retries), retry_policy="Always") if retries else None,
        outputs=list(outputs),
    )


def evaluate_outputs() -> list[Parameter]:
    """The evaluate step's mAP, dv_mAP and EIR, and model-uri (where it uploaded the best checkpoint; empty
    without a store), read from the files it writes."""
    return [Parameter(name=key, value_from=m.ValueFrom(path=f"{WORK_MOUNT}/runs/{RUN_ID}/eval/{key}"))
            for key in (*KEY_METRICS, "model-uri")]


STEP_USER = 1000  # the step images' USER


def workflow_metadata() -> dict:
    return dict(
        # a fresh volume's root belongs to root; fsGroup makes it writable by the steps' user (its files
        # are chowned only while the root's group differs, not at every pod start)
        security_context=m.PodSecurityContext(run_as_user=STEP_USER, run_as_group=STEP_USER, fs_group=STEP_USER,
                                              fs_group_change_policy="OnRootMismatch", run_as_non_root=True),
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
        ttl_strategy=m.TTLStrategy(seconds_after_completion=7 * 24 * 3600),
        labels={"app.kubernetes.io/name": "alpr", "app.kubernetes.io/version": __version__},
        service_account_name="alpr-workflow",
    )
