"""Validators for generated manifests, from the upstream schemas in ../shared/schemas (see its README)."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"


def _path(relative: str) -> Path:
    path = SCHEMAS / relative
    if not path.is_file():
        pytest.fail(f"{path} missing: the upstream schemas must sit in ../shared/schemas beside the repo")
    return path


@lru_cache(maxsize=None)
def argo_validator(kind: str = "WorkflowTemplate") -> jsonschema.Validator:
    schema = json.loads(_path("argo/schema.json").read_text())
    # Upstream types IntOrString as string only; a valid `limit: 3` would fail.
    schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {
        "anyOf": [{"type": "string"}, {"type": "integer"}]}
    schema = {**schema, "$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}"}
    schema.pop("oneOf", None)
    return jsonschema.Draft202012Validator(schema)


@lru_cache(maxsize=None)
def crd_validator(relative: str) -> jsonschema.Validator:
    crd = yaml.safe_load(_path(relative).read_text())
    return jsonschema.Draft7Validator(copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))


def errors(validator: jsonschema.Validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
