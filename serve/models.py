"""An owner's registered models: listing, details, aliases, version resolution, loading.

The operations are :mod:`trainer.models` (which ``geotune models`` renders too); this module
applies the owner's namespace (see :mod:`serve.owners`) so every route sees only the caller's
models, and answers in the API's names.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from trainer import models as registry

from .errors import ApiError, not_found
from .owners import LOCAL, SEP, api_name, mlflow_name, owns

if TYPE_CHECKING:
    from trainer.record import ModelRecord

LIST_HINT = "List your models with GET /v1/models."


def _rm(client, owner: str, name: str):
    rm = registry.find(client, mlflow_name(owner, name))
    if rm is None or not owns(client, owner, rm):
        query = None if owner == LOCAL else f"name LIKE '{owner}{SEP}%'"
        owned = registry.names(client, query, lambda m: owns(client, owner, m))
        yours = [api_name(owner, n) for n in owned]
        have = f" Your models: {', '.join(yours)}." if yours else " You have no models yet."
        raise not_found("model", name, LIST_HINT + have)
    return rm


def _versions(client, registered: str) -> list:
    return registry.versions(client, registered)


def list_models(client, owner: str) -> list[dict]:
    query = None if owner == LOCAL else f"name LIKE '{owner}{SEP}%'"
    found = registry.list_models(client, query, lambda rm: owns(client, owner, rm))
    return [{"name": api_name(owner, m["registered_name"])} | m for m in found]


def model_record(client, registered: str, version: int) -> ModelRecord:
    """The model record (backbone, bands, classes, ...) of one version; versions never change."""
    return registry.record(client, registered, version)


def model_detail(client, owner: str, name: str) -> dict:
    rm = _rm(client, owner, name)
    return (
        {"name": name}
        | registry.detail(client, rm)
        | {"links": {"predict": f"/v1/models/{name}/predict"}}
    )


def set_alias(client, owner: str, name: str, alias: str, version: int) -> dict:
    rm = _rm(client, owner, name)
    known = [int(v.version) for v in _versions(client, rm.name)]
    if version not in known:
        raise not_found("version", str(version), f"Model {name!r} has versions {known}.")
    return {"name": name} | registry.set_alias(client, rm, alias, version)


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
    """Loaded models for synchronous predictions, least recently used first out. Concurrent
    requests for one version share one loaded model: the first loads it, the others wait."""

    def __init__(self, size: int):
        self.size = max(1, size)
        self.models: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.lock = threading.Lock()
        self._loading: dict[tuple[str, int], threading.Lock] = {}

    def get(self, registered: str, version: int):
        from trainer.loading import load_model

        key = (registered, version)
        with self.lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self.lock:
                if key in self.models:
                    self.models.move_to_end(key)
                    return self.models[key]
            model = load_model(registered, version=version)
            with self.lock:
                self.models[key] = model
                while len(self.models) > self.size:
                    self.models.popitem(last=False)
                self._loading.pop(key, None)
        return model
