"""``alpr submit``: create a Workflow from a WorkflowTemplate on an Argo server (Hera's WorkflowsService).

Like the argo CLI, the server, token and namespace come from flags or ARGO_SERVER,
ARGO_TOKEN and ARGO_NAMESPACE (ARGO_SECURE=false: plain HTTP, ARGO_INSECURE_SKIP_VERIFY=true: TLS
unverified, ARGO_BASE_HREF: the server's base path behind a proxy, where its address has none). The
token is sent, never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from alpr.errors import AlprError, UsageError

TIMEOUT_SECONDS = 30.0  # to connect, and then between bytes of the reply


@dataclass(frozen=True)
class ArgoServer:
    host: str
    token: str | None = None
    namespace: str = "argo"
    verify_ssl: bool = True
    timeout: float = TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, host: str | None = None, token: str | None = None, namespace: str | None = None,
                 insecure: bool = False) -> "ArgoServer":
        host = host or os.environ.get("ARGO_SERVER")
        if not host:
            raise UsageError("no Argo server: pass --argo-server or set ARGO_SERVER (e.g. https://argo.example:2746)")
        if "://" not in host:  # the argo CLI's ARGO_SERVER is host:port, over TLS unless ARGO_SECURE=false
            secure = os.environ.get("ARGO_SECURE", "true").lower() not in ("0", "false")
            host = f"{'https' if secure else 'http'}://{host}"
        if not host.startswith(("http://", "https://")):
            raise UsageError(f"Argo server {host!r} (--argo-server or ARGO_SERVER): expected host:port or an "
                             "http:// or https:// URL")
        base = os.environ.get("ARGO_BASE_HREF", "").strip("/")
        if base and not urlsplit(host).path.strip("/"):  # an address with a path of its own keeps it
            host = f"{host.rstrip('/')}/{base}"
        token = token or os.environ.get("ARGO_TOKEN")
        if token and not token.startswith("Bearer "):
            token = f"Bearer {token}"
        insecure = insecure or os.environ.get("ARGO_INSECURE_SKIP_VERIFY", "").lower() in ("1", "true")
        return cls(host.rstrip("/") + "/", token, namespace or os.environ.get("ARGO_NAMESPACE", "argo"),
                   not insecure)


def workflow_from_template(template: str, parameters: dict[str, str], namespace: str):
    from hera.workflows import Parameter, Workflow
    from hera.workflows import models as m

    return Workflow(generate_name=f"{template}-", namespace=namespace,
                    workflow_template_ref=m.WorkflowTemplateRef(name=template),
                    arguments=[Parameter(name=k, value=v) for k, v in parameters.items()])


def check_parameters(template, parameters: dict[str, str]) -> None:
    """The names given are the template's: Argo takes an unknown one without a word, so a typo leaves
    its parameter at the default (argoproj/argo-workflows#10482)."""
    declared = {p.name for p in (template.spec.arguments.parameters or [])} if template.spec.arguments else set()
    unknown = set(parameters) - declared
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(sorted(unknown))}; workflowtemplate/"
                         f"{template.metadata.name} takes {', '.join(sorted(declared))}")


def _session(timeout: float):
    """A requests session whose calls give up after ``timeout`` seconds of silence: Hera sets no timeout."""
    import requests

    class Session(requests.Session):
        def request(self, *args, **kwargs):
            kwargs.setdefault("timeout", timeout)
            return super().request(*args, **kwargs)

    return Session()


def submit(server: ArgoServer, parameters: dict[str, str], template: str = "alpr-pipeline") -> str:
    """Creates the Workflow and returns its name."""
    from hera.exceptions import HeraException
    from hera.workflows import WorkflowsService
    from requests import RequestException

    workflow = workflow_from_template(template, parameters, server.namespace)
    service = WorkflowsService(host=server.host, token=server.token, namespace=server.namespace,
                               verify_ssl=server.verify_ssl, session=_session(server.timeout))
    workflow.workflows_service = service
    try:
        check_parameters(service.get_workflow_template(template, server.namespace), parameters)
        created = workflow.create()
    except HeraException as error:
        raise AlprError(f"Argo server {server.host} refused the workflow: {error}") from None
    except ValueError as error:  # not JSON, or not a Workflow: a login page or proxy answered, not the API
        reason = str(error).splitlines()[0]
        raise AlprError(f"Argo server {server.host} answered, but not as the Argo API does ({reason}): is it "
                        "the Argo server's address, with its base path if it has one?") from None
    except RequestException as error:
        raise AlprError(f"Argo server {server.host} could not be reached, or did not answer within "
                        f"{server.timeout:g} s: {error}") from None
    return created.metadata.name
