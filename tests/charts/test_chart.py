"""The Helm chart charts/alpr: renders, lints and validates offline for every ci/ scenario, no cluster needed."""

from __future__ import annotations

import base64
import importlib
import re
from collections import Counter
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from schemas import argo_validator, crd_validator, errors

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "alpr"
CHART_WORKFLOWS = CHART / "files" / "workflows"
SCENARIOS = sorted(CHART.glob("ci/*-values.yaml"))
RELEASE, NAMESPACE = "alpr", "ml"
KUBE_VERSION = "1.29.0"
BUILTIN_KINDS = {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "ServiceAccount", "Role",
                 "RoleBinding", "StatefulSet"}
CRDS = {"InferenceService": "kserve/serving.kserve.io_inferenceservices.yaml",
        "WorkflowTemplate": "argo/argoproj.io_workflowtemplates.yaml"}
# Parameters whose defaults the chart points at its own objects and values; nothing else in a template changes.
ADJUSTED_PARAMETERS = {"work-pvc", "secret-name", "image", "image-tag", "gpus", "store", "dvc-remote",
                       "inference-service"}
ARGO_EXPRESSION = re.compile(r"\{\{.*?\}\}")
TEMPLATES = len(list((ROOT / "workflows").glob("alpr-*.yaml")))
# The objects each scenario must render, and no others.
EXPECTED_KINDS = {
    "default": {"PersistentVolumeClaim": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1,
                "Service": 1, "WorkflowTemplate": TEMPLATES},
    "existing-secret": {"PersistentVolumeClaim": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1,
                        "Deployment": 1, "Service": 1, "WorkflowTemplate": TEMPLATES},
    "values-secret": {"Secret": 1, "PersistentVolumeClaim": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1,
                      "Deployment": 1, "Service": 1, "WorkflowTemplate": TEMPLATES},
    "mysql": {"Secret": 2, "PersistentVolumeClaim": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1,
              "Deployment": 1, "Service": 2, "StatefulSet": 1, "WorkflowTemplate": TEMPLATES},
    "external": {"Service": 1, "StatefulSet": 1, "WorkflowTemplate": TEMPLATES},
    "gpu-kserve": {"PersistentVolumeClaim": 1, "ServiceAccount": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1,
                   "Service": 1, "WorkflowTemplate": TEMPLATES, "InferenceService": 1},
}


def scenario_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


def scenario(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values: dict | None = None, name: str = RELEASE) -> list[dict]:
    manifests = chart.render(values or {}, name=name, namespace=NAMESPACE)
    return [doc for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert found, f"no {kind} named {name}"
    return found[0]


def parameters(template: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in template["spec"]["arguments"]["parameters"]}


def decoded(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# --- every scenario: lint, render, validate -------------------------------------------------------------------

@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_id)
def test_lints_strictly(path):
    report = helm.lint(CHART, scenario(scenario_id(path)), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_id)
def test_every_object_validates(chart, path):
    docs = render(chart, scenario(scenario_id(path)))
    assert Counter(doc["kind"] for doc in docs) == EXPECTED_KINDS[scenario_id(path)]
    names = Counter((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert [key for key, count in names.items() if count > 1] == []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, f"{kind}/{name} unlabelled"
        if kind in BUILTIN_KINDS:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind}/{name}: {'/'.join(map(str, error.path))}: {error.message}")
        else:
            assert kind in CRDS, f"{kind}/{name}: no schema to validate it against"
            if kind == "WorkflowTemplate":
                # The full CRD schema takes ~4 s a document: test_workflow_templates_match_the_crd runs it once.
                assert errors(argo_validator("WorkflowTemplate"), doc) == [], f"{kind}/{name}"
            else:
                assert errors(crd_validator(CRDS[kind]), doc) == [], f"{kind}/{name}"


def test_workflow_templates_match_the_crd(chart):
    """Helm's YAML round trip of the templates keeps them valid for the (stricter) CRD schema."""
    for template in of_kind(render(chart, scenario("gpu-kserve")), "WorkflowTemplate"):
        assert errors(crd_validator(CRDS["WorkflowTemplate"]), template) == [], template["metadata"]["name"]


def test_every_scenario_is_expected():
    assert {scenario_id(path) for path in SCENARIOS} == set(EXPECTED_KINDS)


# --- WorkflowTemplates: the generated YAML, unchanged but for the parameter defaults -------------------------

def test_chart_workflows_are_the_generated_yaml():
    generated = {path.name: path.read_bytes() for path in (ROOT / "workflows").glob("alpr-*.yaml")}
    copied = {path.name: path.read_bytes() for path in CHART_WORKFLOWS.glob("*.yaml")}
    assert generated, "no workflows/alpr-*.yaml"
    assert sorted(copied) == sorted(generated), \
        f"charts/alpr/files/workflows has {sorted(copied)}, workflows/ has {sorted(generated)}: run `make workflows`"
    stale = sorted(name for name in generated if copied[name] != generated[name])
    assert stale == [], f"charts/alpr/files/workflows/{stale} differ from workflows/: run `make workflows`"


def test_argo_expressions_survive_helm(chart):
    """Each rendered WorkflowTemplate is workflows/alpr-*.yaml parsed, Argo's {{...}} untouched by Helm."""
    rendered = {t["metadata"]["name"]: t for t in of_kind(render(chart), "WorkflowTemplate")}
    assert len(rendered) == TEMPLATES
    for path in sorted((ROOT / "workflows").glob("alpr-*.yaml")):
        original = yaml.safe_load(path.read_text())
        template = rendered[original["metadata"]["name"]]
        expressions = Counter(e for s in strings(original) for e in ARGO_EXPRESSION.findall(s))
        assert any(e.startswith("{{workflow.parameters.") for e in expressions)
        assert Counter(e for s in strings(template) for e in ARGO_EXPRESSION.findall(s)) == expressions, path.name
        # Undo the documented adjustments: what is left must be the file itself.
        defaults = parameters(original)
        for parameter in template["spec"]["arguments"]["parameters"]:
            if parameter["name"] in ADJUSTED_PARAMETERS:
                parameter["value"] = defaults[parameter["name"]]
        template["spec"]["serviceAccountName"] = original["spec"].get("serviceAccountName")
        assert original["metadata"]["labels"].items() <= template["metadata"]["labels"].items()
        template["metadata"]["labels"] = original["metadata"]["labels"]
        assert template == original, f"{path.name}: the chart changed more than the parameter defaults"


def test_templates_point_at_the_release(chart):
    docs = render(chart, {"workflows": {"gpus": 2, "store": "gs://bucket/alpr", "dvcRemote": "gs://bucket/dvc"}},
                  name="team")
    pvc = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert (pvc, account) == ("team-alpr-work", "team-alpr-workflow")
    expected = {"work-pvc": pvc, "secret-name": "team-alpr-secrets", "image": chart.values["image"]["repository"],
                "image-tag": chart.metadata["appVersion"], "gpus": "2", "store": "gs://bucket/alpr"}
    for template in of_kind(docs, "WorkflowTemplate"):
        assert {name: parameters(template)[name] for name in expected} == expected
        assert template["spec"]["serviceAccountName"] == account
        if template["metadata"]["name"] == "alpr-pipeline":  # its record and deploy steps
            assert parameters(template)["inference-service"] == "team-alpr"
            assert parameters(template)["dvc-remote"] == "gs://bucket/dvc"


def test_workflow_pods_take_the_tolerations_and_node_selector_given(chart):
    """GPU nodes are tainted where the cluster adds no toleration for a GPU request itself."""
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    docs = render(chart, {"workflows": {"tolerations": [gpu], "nodeSelector": {"pool": "gpu"}}})
    for template in of_kind(docs, "WorkflowTemplate"):
        assert template["spec"]["tolerations"] == [gpu] and template["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert all("tolerations" not in t["spec"] for t in of_kind(render(chart), "WorkflowTemplate"))


def test_release_alpr_uses_the_names_the_templates_default_to(chart):
    """Release `alpr`: the chart's objects carry the names the Hera modules default to (and `alpr run` uses)."""
    docs = render(chart, scenario("values-secret"))
    names = {kind: one(docs, kind)["metadata"]["name"] for kind in ("PersistentVolumeClaim", "Secret", "ServiceAccount")}
    for path in sorted(CHART_WORKFLOWS.glob("*.yaml")):
        original = yaml.safe_load(path.read_text())
        defaults = parameters(original)
        assert names == {"PersistentVolumeClaim": defaults["work-pvc"], "Secret": defaults["secret-name"],
                         "ServiceAccount": original["spec"]["serviceAccountName"]}, path.name


# --- secrets ----------------------------------------------------------------------------------------------------

def test_no_secret_has_a_default(chart):
    secretish = {path: value for path, value in leaves(chart.values)
                 if re.search(r"password|secret|key|token|url|uri", path.rsplit(".", 1)[-1], re.I)}
    assert {"secrets.gcsKey", "secrets.dbUrl", "mysql.auth.rootPassword"} <= secretish.keys()
    assert {path: value for path, value in secretish.items() if value} == {}
    assert of_kind(render(chart), "Secret") == [], "the defaults must not render any Secret"


def test_secret_values_land_in_the_secret(chart):
    values = scenario("values-secret")
    secret = one(render(chart, values), "Secret")
    assert decoded(secret) == {"gcs-key.json": values["secrets"]["gcsKey"], "db-url": values["secrets"]["dbUrl"]}


def test_existing_secret_renders_no_secret_and_is_used(chart):
    docs = render(chart, scenario("existing-secret"))
    assert of_kind(docs, "Secret") == []
    for template in of_kind(docs, "WorkflowTemplate"):
        assert parameters(template)["secret-name"] == "alpr-prod-secrets"
        refs = [s for s in strings(template["spec"]["templates"]) if "secret-name" in s]
        assert refs and set(refs) == {"{{workflow.parameters.secret-name}}"}


def test_external_objects_are_used_not_rendered(chart):
    docs = render(chart, scenario("external"))
    for template in of_kind(docs, "WorkflowTemplate"):
        assert parameters(template)["work-pvc"] == "shared-work"
        assert template["spec"]["serviceAccountName"] == "argo-workflow"
    env = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    password = next(e for e in env if e["name"] == "MYSQL_ROOT_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "alpr-mysql-root", "key": "mysql-root-password"}


# --- MySQL --------------------------------------------------------------------------------------------------------

def test_mysql_db_url_points_at_it(chart):
    password = "p@ss word/+%:"  # every character a URL would otherwise mangle
    docs = render(chart, {"mysql": {"enabled": True, "auth": {"rootPassword": password}}})
    statefulset = one(docs, "StatefulSet")
    service = named(docs, "Service", statefulset["spec"]["serviceName"])
    pod = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 3306
    url = make_url(decoded(named(docs, "Secret", "alpr-secrets"))["db-url"])
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == \
        ("mysql+pymysql", "root", password, service["metadata"]["name"], 3306, "alpr")
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    ref = env["MYSQL_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert decoded(named(docs, "Secret", ref["name"]))[ref["key"]] == password
    assert env["MYSQL_DATABASE"]["value"] == "alpr"
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == [pod["spec"]["containers"][0]["volumeMounts"][0]["name"]]


def test_given_db_url_wins_over_mysql(chart):
    docs = render(chart, {"secrets": {"dbUrl": "mysql+pymysql://u:p@elsewhere/alpr"},
                          "mysql": {"enabled": True, "auth": {"rootPassword": "x"}}})
    assert decoded(named(docs, "Secret", "alpr-secrets"))["db-url"] == "mysql+pymysql://u:p@elsewhere/alpr"


@pytest.mark.parametrize("values, message", [
    ({"mysql": {"enabled": True}}, "mysql.auth.rootPassword is required"),
    ({"mysql": {"enabled": True, "auth": {"existingSecret": "root-pw"}}}, "give the database URL in secrets.dbUrl"),
    ({"kserve": {"enabled": True}}, "kserve.storageUri is required"),
    ({"kserve": {"enabled": True, "storageUri": "gs://b/best.pth", "minReplicas": 3, "maxReplicas": 2}},
     "kserve.minReplicas (3) must not exceed kserve.maxReplicas (2)"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required with serviceAccount.create=false"),
], ids=["mysql-password", "mysql-existing-secret-needs-url", "kserve-storage-uri", "kserve-replicas",
        "rbac-default-account"])
def test_missing_required_values_fail_clearly(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- TensorBoard, RBAC, KServe ------------------------------------------------------------------------------------

def test_tensorboard_reads_runs_on_the_work_volume(chart):
    docs = render(chart)
    pod = one(docs, "Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    command = container["command"] + container["args"]
    assert command[0] == "tensorboard" and "--bind_all" in command
    assert command[command.index("--logdir") + 1] == "/work/runs" and command[command.index("--port") + 1] == "6006"
    assert container["image"] == f"{chart.values['image']['repository']}:{chart.metadata['appVersion']}"
    assert {"name": "work", "mountPath": "/work", "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "work")
    assert volume["persistentVolumeClaim"]["claimName"] == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 6006
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["alpr/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{service['metadata']['name']} 6006:6006" in notes
    custom = one(render(chart, scenario("gpu-kserve")), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert custom["image"] == "tensorflow/tensorflow:2.17.0"
    long = render(chart, name="a-release-named-at-length-by-a-team-of-fifty-chars")  # -tensorboard passed 63
    assert len(one(long, "Service")["metadata"]["name"]) <= 63
    assert one(long, "Service")["metadata"]["name"] == one(long, "Deployment")["metadata"]["name"]


def test_rbac_grants_what_the_argo_executor_needs(chart):
    docs = render(chart)
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("", "pods", v) for v in ("get", "watch", "patch")} | {("", "pods/log", v) for v in ("get", "watch")} \
        | {("argoproj.io", "workflowtaskresults", v) for v in ("create", "patch")}
    assert needed <= granted
    assert not any(group == "serving.kserve.io" for group, _, _ in granted)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(docs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": NAMESPACE}]


def test_inference_service_runs_the_serve_step(chart):
    values = scenario("gpu-kserve")
    docs = render(chart, values)
    service = one(docs, "InferenceService")
    predictor = service["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 3)
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"] == "ghcr.io/alpr-dev/alpr-cuda:0.1.0"
    assert container["command"] == ["python", "steps/serve.py"] and (ROOT / "steps" / "serve.py").is_file()
    args = container["args"]
    assert args[args.index("--http-port") + 1] == "8080" and container["ports"][0]["containerPort"] == 8080
    assert args[args.index("--model") + 1] == "/mnt/models"
    assert args[-len(values["kserve"]["args"]):] == values["kserve"]["args"] == ["--amp"]  # kserve.args, last
    assert {"name": "STORAGE_URI", "value": values["kserve"]["storageUri"]} in container["env"]
    assert container["resources"] == values["kserve"]["resources"]
    # Ready once the model is loaded: the V1 model endpoint answers 200 (tests/test_serve.py waits on it too).
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/alpr", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == container["readinessProbe"]["httpGet"]  # unready long: restarted
    # The pipeline's deploy step (deploy=true) JSON-patches env/0 of this InferenceService, by name.
    assert container["env"][0]["name"] == "STORAGE_URI"
    role, pipeline = one(docs, "Role"), named(docs, "WorkflowTemplate", "alpr-pipeline")
    assert parameters(pipeline)["inference-service"] == service["metadata"]["name"]
    assert {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
            "resourceNames": [service["metadata"]["name"]], "verbs": ["get", "patch"]} in role["rules"]
    parser = importlib.import_module("alpr.steps.serve").get_args_parser()
    known = {flag for action in parser._actions for flag in action.option_strings}
    assert {a for a in args if a.startswith("--")} <= known


# --- values.yaml and values.schema.json ---------------------------------------------------------------------------

@pytest.mark.parametrize("values, where", [
    ({"tensorbord": {"enabled": False}}, "at '': additional properties 'tensorbord' not allowed"),
    ({"workflows": {"gpus": -1}}, "at '/workflows/gpus'"),
    ({"workflows": {"gpus": "two"}}, "at '/workflows/gpus'"),
    ({"workflows": {"store": "s3://bucket"}}, "at '/workflows/store'"),
    ({"workflows": {"dvcRemote": "s3://bucket/dvc"}}, "at '/workflows/dvcRemote'"),
    ({"persistence": {"size": "lots"}}, "at '/persistence/size'"),
    ({"persistence": {"accessModes": ["ReadWriteSometimes"]}}, "at '/persistence/accessModes/0'"),
    ({"secrets": {"existingSecret": "Not_A_Name"}}, "at '/secrets/existingSecret'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    ({"kserve": {"storageUri": "best.pth"}}, "at '/kserve/storageUri'"),
    ({"kserve": {"maxReplicas": 0}}, "at '/kserve/maxReplicas'"),
    ({"tensorboard": {"nodeSelector": {"gpu": True}}}, "at '/tensorboard/nodeSelector/gpu'"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_schema_rejects_bad_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.validate_schema(values)


@pytest.mark.parametrize("path", SCENARIOS, ids=scenario_id)
def test_schema_accepts_the_scenarios(chart, path):
    chart.validate_schema(scenario(scenario_id(path)))


def test_every_value_has_a_doc_comment():
    """argo-helm style: `# --` above every value; a documented map covers the defaults nested in it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing, covered_below = [], None
    for number, line in enumerate(lines):
        key = re.match(r"^(\s*)([\w.-]+):", line)
        if not key:
            continue
        indent = len(key.group(1))
        if covered_below is not None and indent > covered_below:
            continue
        covered_below = None
        comments = []
        for previous in reversed(lines[:number]):
            if not previous.strip().startswith("#"):
                break
            comments.append(previous.strip())
        if any(c.startswith("# --") for c in comments):
            covered_below = indent
            continue
        following = next((l for l in lines[number + 1:] if l.strip() and not l.strip().startswith("#")), "")
        is_section = line.rstrip().endswith(":") and len(following) - len(following.lstrip()) > indent
        if not is_section:
            missing.append(f"values.yaml:{number + 1}: {line.strip()}")
    assert missing == []


@pytest.mark.parametrize("modes, warned", [(["ReadWriteOnce"], True), (["ReadWriteMany"], False)])
def test_notes_warn_that_tensorboard_holds_a_read_write_once_volume(chart, modes, warned):
    manifests = chart.render({"persistence": {"accessModes": modes}}, name=RELEASE, namespace=NAMESPACE)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert ("TensorBoard holds the ReadWriteOnce work volume" in notes) is warned
