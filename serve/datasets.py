"""An owner's datasets as the API shows them: found by id (404 for another owner's), summed
up for listings, and whole (the manifest) for ``GET /v1/datasets/{id}`` and ingest jobs."""

from __future__ import annotations

import re

from datamodules.manifest import DatasetError, load_dataset

from .errors import not_found
from .owners import datasets_root

ID_RE = re.compile(r"^[a-z0-9_]{1,100}$")
HINT = "List your datasets with GET /v1/datasets."


def summary(ds) -> dict:
    m = ds.manifest
    return {
        "id": m.id,
        "name": m.name,
        "created": m.get("created"),
        "task": m.task,
        "classes": [c["name"] for c in m.classes],
        "bands": m.bands,
        "sensor": m.sensor,
        "shape": m.shape,
        "crs": m.get("crs"),
        "resolution": m.resolution,
        "links": {"self": f"/v1/datasets/{m.id}"},
    }


def detail(ds) -> dict:
    m = {k: v for k, v in ds.manifest.items() if k not in ("crs_wkt",)}
    return m | {"links": {"self": f"/v1/datasets/{m['id']}"}}


def get_dataset(owner: str, dataset_id: str):
    if not ID_RE.match(dataset_id or ""):
        raise not_found("dataset", dataset_id, HINT)
    try:
        ds = load_dataset(dataset_id, root=datasets_root(owner))
    except DatasetError:
        raise not_found("dataset", dataset_id, HINT) from None
    if ds.manifest.owner != owner:
        raise not_found("dataset", dataset_id, HINT)
    return ds
