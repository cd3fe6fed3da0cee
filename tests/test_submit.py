"""`alpr submit` against a real HTTP server on 127.0.0.1 that records what it receives."""

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from schemas import argo_validator, errors

ROOT = Path(__file__).parents[1]


class Recorder(BaseHTTPRequestHandler):
    requests: list = []
    status = 200
    page = None  # what answers instead of the API, e.g. a proxy's login page

    def _answer(self, status: int, reply: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Recorder.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        workflow = {**body["workflow"], "metadata": {**body["workflow"]["metadata"], "name": "alpr-pipeline-abc12"}}
        if Recorder.page is not None:
            return self._answer(200, Recorder.page.encode(), "text/html")
        reply = json.dumps(workflow if Recorder.status == 200 else {"code": 3, "message": "bad things"}).encode()
        self._answer(Recorder.status, reply, "application/json")

    def do_GET(self):  # noqa: N802  (the WorkflowTemplate, whose parameters submit checks)
        Recorder.requests.append({"path": self.path, "headers": dict(self.headers)})
        if Recorder.page is not None:
            return self._answer(200, Recorder.page.encode(), "text/html")
        template = yaml.safe_load((ROOT / "workflows" / f"{self.path.rsplit('/', 1)[1]}.yaml").read_text())
        reply = json.dumps(template if Recorder.status == 200 else {"code": 3, "message": "bad things"}).encode()
        self._answer(Recorder.status, reply, "application/json")

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_base_href(monkeypatch):
    """A developer's own ARGO_BASE_HREF would move every path these tests expect: set only where a test does."""
    monkeypatch.delenv("ARGO_BASE_HREF", raising=False)


@pytest.fixture
def argo_server():
    Recorder.requests, Recorder.status, Recorder.page = [], 200, None
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _submit(server, *extra, env=None, base_href=None):
    import os

    env = {**(env or os.environ), **({"ARGO_BASE_HREF": base_href} if base_href else {})}
    return subprocess.run([sys.executable, "-m", "alpr.cli", "submit", "--argo-server", server, "-p",
                           "dataset-version=7", "-p", "gpus=0", *extra], cwd=ROOT, capture_output=True, text=True,
                          env=env)


def test_submit_creates_a_valid_workflow_from_the_template(argo_server, monkeypatch):
    import os

    env = {**os.environ, "ARGO_TOKEN": "s3cr3t-token", "ARGO_NAMESPACE": "ml"}
    result = _submit(argo_server, env=env)
    assert result.returncode == 0, result.stderr
    assert "submitted alpr-pipeline-abc12" in result.stdout and "s3cr3t" not in result.stdout + result.stderr
    looked_up, request = Recorder.requests
    assert looked_up["path"] == "/api/v1/workflow-templates/ml/alpr-pipeline"
    assert request["path"] == "/api/v1/workflows/ml"
    assert request["headers"]["Authorization"] == "Bearer s3cr3t-token"
    workflow = request["body"]["workflow"]
    assert workflow["spec"]["workflowTemplateRef"] == {"name": "alpr-pipeline"}
    assert workflow["metadata"]["generateName"] == "alpr-pipeline-"
    assert {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]} == \
        {"dataset-version": "7", "gpus": "0"}
    assert errors(argo_validator("Workflow"), {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                                               **workflow}) == []


def test_the_base_path_of_a_server_behind_a_proxy_comes_from_argo_base_href_as_for_the_argo_cli(argo_server):
    result = _submit(argo_server, base_href="/argo/")
    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in Recorder.requests] == ["/argo/api/v1/workflow-templates/argo/alpr-pipeline",
                                                      "/argo/api/v1/workflows/argo"]
    Recorder.requests.clear()  # an address with its own path keeps it
    result = _submit(f"{argo_server}/own", base_href="/argo/")
    assert [r["path"] for r in Recorder.requests][-1] == "/own/api/v1/workflows/argo"


def test_a_parameter_the_template_does_not_take_is_refused_before_anything_is_submitted(argo_server):
    """Argo would take it without a word, leaving the parameter meant at its default."""
    result = _submit(argo_server, "-p", "epoch=30")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "unknown parameter(s) epoch; workflowtemplate/alpr-pipeline takes" in result.stderr
    assert "epochs" in result.stderr and [r["path"] for r in Recorder.requests] == [
        "/api/v1/workflow-templates/argo/alpr-pipeline"]


def test_server_errors_and_missing_server_are_clear(argo_server, monkeypatch):
    Recorder.status = 400
    result = _submit(argo_server)
    assert result.returncode == 1 and "refused the workflow" in result.stderr and "Traceback" not in result.stderr
    assert "bad things" in result.stderr  # the server's own reason
    import os

    env = {k: v for k, v in os.environ.items() if k != "ARGO_SERVER"}
    result = subprocess.run([sys.executable, "-m", "alpr.cli", "submit"], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    assert result.returncode == 1 and "set ARGO_SERVER" in result.stderr



def test_a_server_that_does_not_answer_is_given_up_on(monkeypatch):
    from alpr.errors import AlprError
    from alpr.submit import ArgoServer, submit

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(AlprError, match="did not answer within 0.5 s"):
            submit(ArgoServer(host + "/", timeout=0.5), {})
    finally:
        silent.close()


@pytest.mark.parametrize("secure, scheme", [(None, "https"), ("false", "http"), ("true", "https")])
def test_a_server_given_as_host_and_port_is_tls_unless_argo_secure_is_false(monkeypatch, secure, scheme):
    from alpr.submit import ArgoServer

    monkeypatch.delenv("ARGO_SECURE", raising=False)
    if secure is not None:
        monkeypatch.setenv("ARGO_SECURE", secure)
    assert ArgoServer.from_env("argo.example:2746").host == f"{scheme}://argo.example:2746/"


def test_a_server_url_of_another_scheme_is_refused_by_name():
    from alpr.errors import UsageError
    from alpr.submit import ArgoServer

    with pytest.raises(UsageError, match=r"'ftp://argo.example:2746' \(--argo-server or ARGO_SERVER\): expected"):
        ArgoServer.from_env("ftp://argo.example:2746")


@pytest.mark.parametrize("page", ["<html><body>Sign in</body></html>", '{"kind": "Status"}'])
def test_a_page_that_is_not_the_api_is_named_as_such(argo_server, page):
    Recorder.page = page
    result = _submit(argo_server)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Argo server {argo_server}/ answered, but not as the Argo API does" in result.stderr
