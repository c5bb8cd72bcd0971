"""Datasets over HTTP: an upload becomes an ingest job that runs in a process of its own.

``POST /v1/datasets`` stores the files under names the server chooses, checks what is cheap to
check (file kinds, the pixels of every raster from its header, the options) and answers 202 with
a job. The job (``python -m serve.ingestion JOB_FOLDER``) is the only process that opens the
label files: it starts with GDAL's allow-list of drivers (:func:`serve.untrusted.job_env`), no
network and a memory cap (:func:`serve.untrusted.isolate`), unpacks a zipped shapefile itself,
counts features before it reads them and vertices before it rasterizes, then runs the same
:func:`datamodules.ingest.ingest` as ``geotune data add``. A bad upload costs one bounded
process, never the server; a client that disconnects does not matter; the dataset appears whole
or not at all.

The job folder holds ``inputs/`` (the uploads), ``request.json`` (what to ingest) and, when the
process succeeds, ``result.json`` (the dataset id and the ingest's warnings, in the client's
file names). The uploads are removed when the job ends, however it ends.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

from .jobs import JobFailed, JobKind, read_json, write_json
from .untrusted import Limits, job_env

REQUEST, RESULT, INPUTS = "request.json", "result.json", "inputs"


def ingest_argv(folder: Path) -> list[str]:
    return [sys.executable, "-m", "serve.ingestion", str(folder)]


def write_request(folder: Path, staging: Path, request: dict, limits: Limits) -> None:
    """Move the staged uploads into the job folder and write what the job ingests (called
    before the job record exists, so the scheduler never sees a half-prepared job)."""
    staging.rename(folder / INPUTS)
    write_json(folder / REQUEST, request | {"limits": asdict(limits)})


class IngestKind(JobKind):
    """Ingest jobs: their result is the dataset (as ``GET /v1/datasets/{id}`` shows it)."""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s

    @property
    def env(self) -> dict[str, str]:
        return job_env()

    def finalize(self, record: dict, folder: Path) -> dict:
        from .datasets import detail, get_dataset

        result = read_json(folder / RESULT)
        shutil.rmtree(folder / INPUTS, ignore_errors=True)
        if result is None:
            raise JobFailed("ingestion ended without a dataset; see the job's logs")
        ds = get_dataset(record["owner"], result["dataset"])
        return {"dataset": detail(ds), "warnings": result["warnings"]}

    def completed(self, record: dict, folder: Path) -> dict | None:
        return self.finalize(record, folder) if (folder / RESULT).is_file() else None

    def abandon(self, record: dict, folder: Path, state: str) -> None:
        if state != "interrupted":
            shutil.rmtree(folder / INPUTS, ignore_errors=True)

    def resume(self, record: dict, folder: Path) -> tuple[list[str], str] | None:
        """Ingestion builds its dataset under a temporary name, so it simply runs again."""
        if not (folder / INPUTS).is_dir():
            return None
        return record["argv"], "from the start (the dataset appears only when complete)"


# -- the job's process ----------------------------------------------------------------------------
def run(folder: Path) -> dict:
    """Ingest the request in ``folder``; returns the result (also written to ``result.json``)."""
    from . import untrusted

    req = read_json(folder / REQUEST)
    limits = Limits(**req["limits"])
    for note in untrusted.isolate(limits.memory_mb):
        print(f"note: {note}", flush=True)

    from datamodules.ingest import ingest
    from datamodules.manifest import load_dataset

    from .uploads import rename_in_message

    inputs = folder / INPUTS
    names = {inputs / f["file"]: f["shown"] for f in req["files"]}
    work = folder / "unpacked"

    def labels_path(entry: dict | None) -> Path | None:
        if entry is None:
            return None
        path = inputs / entry["file"]
        if entry["kind"] == "tif":
            return path
        ready = untrusted.prepare_labels(path, entry["kind"], entry["shown"], work, limits)
        names[ready] = entry["shown"]
        untrusted.check_vector_size(ready, entry["shown"], limits)
        return ready

    def check_vertices(gdf, path: Path) -> None:
        untrusted.check_vertices(gdf, names.get(path, path.name), limits)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opts = req["options"]
            ds = ingest(
                name=req["name"],
                dataset_id=req["dataset_id"],
                owner=req["owner"],
                root=Path(req["root"]),
                images=[inputs / f for f in req["images"]],
                labels=labels_path(req["labels"]),
                labels_after=labels_path(req["labels_after"]),
                progress=False,
                vector_check=check_vertices,
                **opts,
            )
        notes = [
            rename_in_message(str(w.message), names)
            for w in caught
            if issubclass(w.category, UserWarning)
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ds = load_dataset(ds.id, root=Path(req["root"]))
    result = {"dataset": ds.id, "warnings": notes}
    write_json(folder / RESULT, result)
    return result


def main(argv: list[str] | None = None) -> int:
    from datamodules.errors import UserError

    from .uploads import rename_in_message

    folder = Path((argv or sys.argv[1:])[0])
    try:
        result = run(folder)
    except UserError as e:
        req = read_json(folder / REQUEST) or {"files": []}
        names = {folder / INPUTS / f["file"]: f["shown"] for f in req["files"]}
        print(f"error: {rename_in_message(str(e), names)}", file=sys.stderr, flush=True)
        return 2
    except MemoryError:
        limit = (read_json(folder / REQUEST) or {}).get("limits", {}).get("memory_mb")
        print(
            f"error: ingesting these files needs more than this server's {limit} MB for one "
            "upload; simplify or split the labels, or crop the imagery",
            file=sys.stderr,
            flush=True,
        )
        return 2
    print(json.dumps({"dataset": result["dataset"], "warnings": len(result["warnings"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
