"""Strict validation of custom resources against the vendored upstream CRD schemas (``tests/crds/``).

A CRD's ``openAPIV3Schema`` is turned into a JSON schema the way the API server reads it, then made strict:
every object schema that lists ``properties`` rejects any other field (the API server would prune or, with
``kubectl --validate=strict``, reject them), unless the CRD marks it ``x-kubernetes-preserve-unknown-fields``.
So a misspelled or removed field (e.g. Trainer v2.2's ``mlPolicy.torch.numProcPerNode``) fails here.
"""

from __future__ import annotations

import copy
import functools
import gzip
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).parent / "crds"


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.cache
def _validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    found = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            # metadata is validated by the API server itself, not by the CRD schema
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            found[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return found


def known_kinds() -> set[tuple[str, str]]:
    return set(_validators())


def validate_custom(obj: dict[str, Any]) -> None:
    """Raise AssertionError naming the first offending field when ``obj`` does not fit its pinned CRD."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    validator = _validators().get(key)
    assert validator is not None, f"no vendored CRD for {key}; have {sorted(_validators())}"
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        raise AssertionError(f"{obj['kind']} {obj.get('metadata', {}).get('name')}: {where}: {e.message[:300]}")
