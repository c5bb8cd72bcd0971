"""Predictions: a folder per request, run by the streaming predictor, served to its owner.

``$GEOTUNE_HOME/serve/predictions/<id>/`` holds ``request.json`` (owner, model, version,
options, input names), the uploaded scene and ``outputs/`` (``classes.tif``,
``confidence.tif``, ``polygons.geojson``, ``summary.json`` from
:func:`trainer.predict.predict_scene`). Small requests run in the server
(:func:`run_prediction` with a cached model); large ones run the same function in a job
process: ``python -m serve.predictions <folder>``.

A finished prediction is kept ``keep_hours`` after it finished (``geotune serve
--keep-predictions``; 0 keeps them), or until its owner deletes it: past that it is gone for
every request, and its folder is removed at the next clean-up (at start and with new
predictions). A prediction still running is never removed.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ApiError
from .jobs import JobFailed, JobKind, now, read_json, write_json

PRED_ID_RE = re.compile(r"^pred-[0-9a-f]{12}$")
FILES = {
    "classes.tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    "confidence.tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    "polygons.geojson": "application/geo+json",
    "summary.json": "application/json",
}


class PredictionStore:
    def __init__(self, root: Path, keep_hours: float = 0.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep_s = keep_hours * 3600.0
        self._running: set[str] = set()  # predictions running in this process
        self._lock = threading.Lock()

    @contextmanager
    def running(self, pred_id: str):
        """Mark ``pred_id`` as running in the server process (clean-ups leave it alone)."""
        with self._lock:
            self._running.add(pred_id)
        try:
            yield
        finally:
            with self._lock:
                self._running.discard(pred_id)

    def is_running(self, pred_id: str) -> bool:
        """Whether ``pred_id`` is running in the server process (synchronously)."""
        with self._lock:
            return pred_id in self._running

    def finished_at(self, pred_id: str) -> float | None:
        """When the prediction finished (epoch seconds), or failed; None while it may run."""
        folder = self.root / pred_id
        for marker in ("done.json", "failed.json"):
            try:
                return (folder / marker).stat().st_mtime
            except FileNotFoundError:
                continue
        return None

    def expired(self, pred_id: str, now_s: float | None = None) -> bool:
        if not self.keep_s:
            return False
        t = self.finished_at(pred_id)
        return t is not None and (now_s or time.time()) - t > self.keep_s

    def delete(self, pred_id: str) -> None:
        shutil.rmtree(self.root / pred_id, ignore_errors=True)

    def clean(self, busy: set[str] = frozenset()) -> list[str]:
        """Remove expired predictions (never one in ``busy`` or running here); returns their ids.
        A folder without a request (a crash before it was written) goes once it is a day old."""
        removed, now_s = [], time.time()
        with self._lock:
            skip = set(busy) | self._running
        for folder in self.root.iterdir():
            pid = folder.name
            if not PRED_ID_RE.match(pid) or pid in skip:
                continue
            orphan = (
                not (folder / "request.json").exists() and now_s - folder.stat().st_mtime > 86400
            )
            if self.expired(pid, now_s) or orphan:
                self.delete(pid)
                removed.append(pid)
        return removed

    def new(self) -> tuple[str, Path]:
        pred_id = f"pred-{secrets.token_hex(6)}"
        folder = self.root / pred_id
        folder.mkdir()
        return pred_id, folder

    def folder(self, pred_id: str, owner: str) -> Path | None:
        """The folder of ``owner``'s prediction ``pred_id``; None for anyone else's or none."""
        if not PRED_ID_RE.match(pred_id or ""):
            return None
        req = read_json(self.root / pred_id / "request.json")
        if req is None or req.get("owner") != owner or self.expired(pred_id):
            return None
        return self.root / pred_id


class SyncLane:
    """Synchronous predictions: ``slots`` run at once, at most ``max_waiting`` wait for a slot,
    and any more are answered at once with 503 and ``Retry-After`` (the expected wait, from the
    recent run times), so requests never pile up in the server's worker threads."""

    def __init__(self, slots: int, max_waiting: int):
        self.slots, self.max_waiting = slots, max_waiting
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.waiting = 0
        self.seconds = 5.0  # a running average of one prediction's time

    def retry_after(self) -> int:
        return max(1, round(self.seconds * (self.waiting + self.slots) / self.slots))

    @contextmanager
    def slot(self):
        with self._lock:
            if self.waiting >= self.max_waiting:
                wait = self.retry_after()
                raise ApiError(
                    503,
                    "busy",
                    f"this server is running {self.slots} and queueing {self.waiting} synchronous "
                    f"predictions, its limit; retry in about {wait} s (Retry-After)",
                    headers={"Retry-After": str(wait)},
                    retry_after_s=wait,
                )
            self.waiting += 1
        try:
            self._free.acquire()
        finally:
            with self._lock:
                self.waiting -= 1
        start = time.monotonic()
        try:
            yield
        finally:
            self._free.release()
            with self._lock:
                self.seconds = 0.7 * self.seconds + 0.3 * (time.monotonic() - start)


def options_from(params: dict):
    from trainer.options import predict_options

    outputs = set(params["outputs"])
    return predict_options(
        params, polygons="polygons" in outputs, confidence="confidence" in outputs
    )


def run_prediction(
    folder: Path, model=None, progress: bool = False, cluster: str | None = None, report=None
) -> dict:
    """Predict the request in ``folder`` into ``folder/outputs``; returns the summary.
    ``cluster``: a Dask cluster's address to predict on; ``report(tiles_done, tiles_total)``."""
    from trainer.cluster import connect_or_none
    from trainer.loading import load_model
    from trainer.predict import predict_aoi, predict_scene

    req = read_json(folder / "request.json")
    if model is None:
        model = load_model(req["registered_name"], version=req["version"])
    provenance = {"model": req["model"], "version": req["version"], "inputs": req["input_names"]}
    common = {
        "bands": req.get("bands"),
        "options": options_from(req["params"]),
        "progress": progress,
        "provenance": provenance,
        "report": report,
    }
    with connect_or_none(cluster) as on:
        if req.get("aoi"):  # imagery by area and dates, from the STAC catalogue
            dates = req["start_date"], req["end_date"]
            summary = predict_aoi(
                model,
                req["aoi"],
                *dates,
                folder / "outputs",
                imagery_dir=folder / "imagery",
                sensor=req.get("sensor"),
                cluster=on,
                **common,
            )
        else:
            images = [folder / f for f in req["inputs"]]
            summary = predict_scene(
                model,
                images,
                folder / "outputs",
                sensor=req.get("sensor"),
                dates=req.get("dates"),
                cluster=on,
                **common,
            )
    write_json(folder / "done.json", {"finished": now()})
    return summary


def result(folder: Path, base_url: str) -> dict:
    """The answer to a prediction: the predictor's summary, the polygons and links to files
    (under ``base_url``, the server's configured public URL; relative when it has none: never
    built from a request's Host header)."""
    req = read_json(folder / "request.json")
    out = folder / "outputs"
    summary = read_json(out / "summary.json")
    if summary is None:
        raise FileNotFoundError(folder)
    polygons = read_json(out / "polygons.geojson") if (out / "polygons.geojson").is_file() else None
    base = f"{base_url.rstrip('/')}/v1/predictions/{folder.name}"
    files = ["summary.json", *summary["outputs"].values()]
    return {
        "prediction_id": folder.name,
        "model": {"name": req["model"], "version": req["version"], "alias": req.get("alias")},
        "n_pixels": summary["n_pixels"],
        "class_histogram": summary["class_histogram"],
        "polygons": polygons,
        "n_polygons": summary.get("n_polygons"),
        "crs": summary["crs"],
        "resolution": summary["resolution"],
        "shape": summary["shape"],
        "provenance": summary["provenance"],
        "input": _as_sent(summary.get("input"), req),
        "seconds": summary["seconds"],
        "links": {Path(f).stem: f"{base}/{f}" for f in files},
    }


def _as_sent(value, req: dict):
    """The summary's words about the input as the client sent it: its file names for the
    server's, form fields for CLI flags (:func:`serve.uploads.rename_in_message`)."""
    from .uploads import rename_in_message

    names = dict(zip(map(Path, req.get("inputs", [])), req.get("input_names", []), strict=False))

    def sent(v):
        if isinstance(v, str):
            return rename_in_message(v, names)
        if isinstance(v, list):
            return [sent(x) for x in v]
        if isinstance(v, dict):
            return {k: sent(x) for k, x in v.items()}
        return v

    return sent(value)


class PredictKind(JobKind):
    """Prediction jobs; with ``cluster`` (a Dask scheduler's address) their processes predict
    on that cluster (the server that runs the job decides, through ``GEOTUNE_CLUSTER``)."""

    def __init__(self, store: PredictionStore, cluster: str = ""):
        self.store, self.cluster = store, cluster

    @property
    def env(self) -> dict[str, str]:
        return {"GEOTUNE_CLUSTER": self.cluster} if self.cluster else {}

    def finalize(self, record: dict, folder: Path) -> dict:
        pred_id = record["params"]["prediction_id"]
        if not (self.store.root / pred_id / "outputs" / "summary.json").is_file():
            raise JobFailed(f"the prediction process ended without writing outputs for {pred_id}")
        return {"prediction_id": pred_id}

    def completed(self, record: dict, folder: Path) -> dict | None:
        pred = self.store.root / record["params"]["prediction_id"]
        return self.finalize(record, folder) if (pred / "done.json").is_file() else None

    def abandon(self, record: dict, folder: Path, state: str) -> None:
        """A failed or cancelled prediction job: its prediction ended now (for clean-ups)."""
        pred = self.store.root / record["params"]["prediction_id"]
        if pred.is_dir() and state != "interrupted":
            write_json(pred / "failed.json", {"state": state, "finished": now()})

    def resume(self, record: dict, folder: Path) -> tuple[list[str], str]:
        """An interrupted prediction runs again from the start (it is deterministic)."""
        return record["argv"], "from the start"


def predict_argv(folder: Path, job_folder: Path | None = None) -> list[str]:
    """The job's command: the prediction in ``folder``, its progress in ``job_folder``."""
    argv = [sys.executable, "-m", "serve.predictions", str(folder)]
    return argv + (["--progress", str(job_folder / "progress.json")] if job_folder else [])


def progress_writer(path: Path):
    """``report(done, total, stage)`` that writes a prediction job's progress for the
    scheduler: the composite's blocks (``stage="composite"``, an AOI's imagery), then the tiles
    predicted (``stage="predict"``)."""

    def report(done: int, total: int, stage: str = "predict") -> None:
        unit = "blocks" if stage == "composite" else "tiles"
        progress = {"stage": stage, f"{unit}_done": done, f"{unit}_total": total}
        write_json(path, progress | {"updated": now()})

    return report


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    from datamodules.errors import UserError
    from trainer.console import plain_warnings

    plain_warnings()
    parser = argparse.ArgumentParser(prog="python -m serve.predictions")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--progress", type=Path, default=None)
    args = parser.parse_args(argv)
    report = progress_writer(args.progress) if args.progress else None
    cluster = os.environ.get("GEOTUNE_CLUSTER") or None
    try:
        summary = run_prediction(args.folder, progress=True, cluster=cluster, report=report)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: summary[k] for k in ("n_pixels", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
