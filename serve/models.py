"""An owner's registered models: listing, details, aliases, version resolution, loading.

Thin over MLflow and :mod:`trainer.registry`; the owner's namespace is applied here (see
:mod:`serve.owners`) so every route sees only the caller's models.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from functools import lru_cache

from .errors import ApiError, not_found
from .owners import LOCAL, SEP, api_name, mlflow_name, owns

LIST_HINT = "List your models with GET /v1/models."


def _rm(client, owner: str, name: str):
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(mlflow_name(owner, name))
    except MlflowException:
        rm = None
    if rm is None or not owns(client, owner, rm):
        raise not_found("model", name, LIST_HINT)
    return rm


def _versions(client, registered: str) -> list:
    return sorted(
        client.search_model_versions(f"name='{registered}'"), key=lambda v: int(v.version)
    )


def list_models(client, owner: str) -> list[dict]:
    query = None if owner == LOCAL else f"name LIKE '{owner}{SEP}%'"
    out = []
    for rm in client.search_registered_models(filter_string=query, max_results=1000):
        rm = client.get_registered_model(rm.name)  # search results carry no aliases
        if not owns(client, owner, rm):
            continue
        versions = [int(v.version) for v in _versions(client, rm.name)]
        out.append(
            {
                "name": api_name(owner, rm.name),
                "registered_name": rm.name,
                "versions": versions,
                "latest_version": max(versions, default=None),
                "aliases": {a: int(v) for a, v in (rm.aliases or {}).items()},
            }
        )
    return sorted(out, key=lambda m: m["name"])


@lru_cache(maxsize=256)
def _record(download_uri: str) -> dict:
    import mlflow

    return json.loads(mlflow.artifacts.load_text(f"{download_uri}/artifacts/model.json"))


def model_record(client, registered: str, version: int) -> dict:
    """The model record (backbone, bands, classes, ...) of one version; versions never change."""
    return _record(client.get_model_version_download_uri(registered, str(version)))


def _iso(ms: int | None) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def model_detail(client, owner: str, name: str) -> dict:
    rm = _rm(client, owner, name)
    aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
    versions = []
    for v in _versions(client, rm.name):
        metrics = {}
        if v.run_id:
            run = client.get_run(v.run_id)
            metrics = {
                k: round(x, 6) for k, x in sorted(run.data.metrics.items())
                if k.startswith(("test/", "val/"))
            }  # fmt: skip
        versions.append(
            {
                "version": int(v.version),
                "created": _iso(v.creation_timestamp),
                "run_id": v.run_id,
                "dataset_id": (v.tags or {}).get("dataset_id"),
                "backbone": (v.tags or {}).get("backbone"),
                "aliases": sorted(a for a, n in aliases.items() if n == int(v.version)),
                "metrics": metrics,
            }
        )
    shown = aliases.get("champion") or (versions[-1]["version"] if versions else None)
    rec = model_record(client, rm.name, shown) if shown else {}
    return {
        "name": name,
        "registered_name": rm.name,
        "aliases": aliases,
        "versions": versions,
        "described_version": shown,
        "task": rec.get("task"),
        "backbone": rec.get("backbone", {}).get("name"),
        "classes": [
            {k: c.get(k) for k in ("id", "name", "color", "value")} for c in rec.get("classes", [])
        ],
        "bands": rec.get("bands", []),
        "sensor": rec.get("sensor"),
        "resolution": rec.get("resolution"),
        "links": {"predict": f"/v1/models/{name}/predict"},
    }


def set_alias(client, owner: str, name: str, alias: str, version: int) -> dict:
    rm = _rm(client, owner, name)
    known = [int(v.version) for v in _versions(client, rm.name)]
    if version not in known:
        raise not_found("version", str(version), f"Model {name!r} has versions {known}.")
    client.set_registered_model_alias(rm.name, alias, str(version))
    return {"name": name, "alias": alias, "version": version}


def resolve(client, owner: str, name: str, alias: str | None, version: int | None):
    """``(registered name, version)`` for ``?alias=`` or ``?version=`` (default alias champion)."""
    rm = _rm(client, owner, name)
    if alias and version:
        raise ApiError(422, "invalid_request", "give either ?alias= or ?version=, not both")
    known = [int(v.version) for v in _versions(client, rm.name)]
    if version is not None:
        if version not in known:
            raise not_found("version", str(version), f"Model {name!r} has versions {known}.")
        return rm.name, version
    alias = alias or "champion"
    aliases = {a: int(v) for a, v in (rm.aliases or {}).items()}
    if alias not in aliases:
        have = ", ".join(f"{a} → {v}" for a, v in aliases.items()) or "none"
        raise not_found(
            "alias",
            alias,
            f"Model {name!r} has aliases: {have}; versions {known}. Ask for ?version=N, or set "
            f"the alias with PUT /v1/models/{name}/aliases/{alias}.",
        )
    return rm.name, aliases[alias]


class ModelCache:
    """Loaded models for synchronous predictions, least recently used first out."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.models: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, registered: str, version: int):
        from trainer.registry import load_model

        key = (registered, version)
        with self.lock:
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
        model = load_model(registered, version=version)
        with self.lock:
            self.models[key] = model
            while len(self.models) > self.size:
                self.models.popitem(last=False)
        return model
