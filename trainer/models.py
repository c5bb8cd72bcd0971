"""Registered models: list, show, alias. The one implementation of these operations: the
``geotune models`` commands and the ``/v1/models`` routes only render what it returns (the HTTP
layer first maps its owner onto MLflow names, see :mod:`serve.owners`).

Every version is described by the same row: version, aliases, task, backbone, dataset,
creation time (UTC, ISO 8601), run id and its ``test/*`` and ``val/*`` metrics.
"""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from datamodules.errors import UserError

if TYPE_CHECKING:
    from .record import ModelRecord


class ModelNotFoundError(UserError):
    """No registered model (or version) of that name; the message lists what exists."""


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def find(client, registered: str):
    """The registered model ``registered``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(registered)
    except MlflowException:
        return None


def versions(client, registered: str) -> list:
    return sorted(
        client.search_model_versions(f"name='{registered}'"), key=lambda v: int(v.version)
    )


def aliases(rm) -> dict[str, int]:
    return {a: int(v) for a, v in (rm.aliases or {}).items()}


def version_row(client, version, alias_map: dict[str, int]) -> dict:
    """One version: aliases, task, backbone, dataset, created, run and its metrics."""
    tags = dict(version.tags or {})
    run_tags, metrics = {}, {}
    if version.run_id:
        run = client.get_run(version.run_id)
        run_tags = run.data.tags
        metrics = {
            k: round(x, 6)
            for k, x in sorted(run.data.metrics.items())
            if k.startswith(("test/", "val/"))
        }
    number = int(version.version)
    return {
        "version": number,
        "aliases": sorted(a for a, n in alias_map.items() if n == number),
        "task": tags.get("task") or run_tags.get("task"),
        "backbone": tags.get("backbone") or run_tags.get("backbone"),
        "dataset_id": tags.get("dataset_id") or run_tags.get("dataset_id"),
        "created": _iso(version.creation_timestamp),
        "run_id": version.run_id,
        "metrics": metrics,
    }


def summary(client, rm) -> dict:
    """A registered model with every version's row."""
    alias_map = aliases(rm)
    rows = [version_row(client, v, alias_map) for v in versions(client, rm.name)]
    return {
        "registered_name": rm.name,
        "aliases": alias_map,
        "versions": rows,
        "latest_version": max((r["version"] for r in rows), default=None),
    }


def names(client, filter_string: str | None = None, visible=None) -> list[str]:
    """The registered names matching ``filter_string`` that ``visible(rm)`` accepts, sorted."""
    found = client.search_registered_models(filter_string=filter_string, max_results=1000)
    return sorted(rm.name for rm in found if visible is None or visible(rm))


def list_models(client, filter_string: str | None = None, visible=None) -> list[dict]:
    """Registered models matching MLflow's ``filter_string`` that ``visible(rm)`` accepts."""
    out = []
    for found in client.search_registered_models(filter_string=filter_string, max_results=1000):
        rm = client.get_registered_model(found.name)  # search results carry no aliases
        if visible is None or visible(rm):
            out.append(summary(client, rm))
    return sorted(out, key=lambda m: m["registered_name"])


@lru_cache(maxsize=256)
def _record(download_uri: str) -> ModelRecord:
    import mlflow

    from .record import ModelRecord

    text = mlflow.artifacts.load_text(f"{download_uri}/artifacts/model.json")
    return ModelRecord.from_dict(json.loads(text))


def record(client, registered: str, version: int) -> ModelRecord:
    """The model record (upgraded to today's version) of one version; versions never change."""
    return _record(client.get_model_version_download_uri(registered, str(version)))


def detail(client, rm) -> dict:
    """:func:`summary` plus what the ``champion`` (else the latest) version predicts."""
    out = summary(client, rm)
    shown = out["aliases"].get("champion") or out["latest_version"]
    rec = record(client, rm.name, shown) if shown else None
    norm = (rec.normalization if rec else None) or {}
    return out | {
        "described_version": shown,
        "task": rec.task if rec else None,
        "backbone": rec.backbone["name"] if rec else None,
        "classes": [
            {k: c.get(k) for k in ("id", "name", "color", "value")}
            for c in (rec.classes if rec else [])
        ],
        "bands": rec.bands if rec else [],
        "sensor": rec.sensor if rec else None,
        "resolution": rec.resolution if rec else None,
        "normalization": {k: norm.get(k) for k in ("statistics", "source", "sensor", "conversion")},
    }


def set_alias(client, rm, alias: str, version: int) -> dict:
    known = [int(v.version) for v in versions(client, rm.name)]
    if version not in known:
        raise ModelNotFoundError(
            f"model {rm.name!r} has no version {version}; its versions: "
            f"{', '.join(map(str, known))}"
        )
    client.set_registered_model_alias(rm.name, alias, str(version))
    return {"alias": alias, "version": version}


def not_found_message(name: str, known: list[str], how_to_list: str) -> str:
    """``name`` does not exist: say which names do (the closest first) and how to list them."""
    if not known:
        return f"no registered model {name!r}: there are no registered models yet. {how_to_list}"
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    return f"no registered model {name!r}.{hint} Registered models: {shown}."


__all__ = [
    "ModelNotFoundError",
    "detail",
    "find",
    "list_models",
    "names",
    "not_found_message",
    "record",
    "set_alias",
    "summary",
    "version_row",
]
