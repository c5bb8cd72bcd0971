"""Prediction on a Dask cluster in strips of whole tile rows (``geotune predict --cluster``).

The output tiles of a scene (``tile_size``, row-major, as :func:`trainer.predict.tiles` lists
them) are grouped into strips of whole tile rows, one task each (a few per worker: hundreds of
tasks for a country, not one per tile). A worker loads the model once per (model, version) and
keeps the scene open between its strips, predicts the strip's tiles in order, chips shared by
its tiles running once (:func:`trainer.predict.predicted_tiles`), and writes each tile's outcome
(classes, top probability, validity) to a file of the strip on storage the driver reads: arrays
never pass through the scheduler, only the progress of each tile and a few numbers per strip.
The driver takes the strips in order and hands their tiles, in row-major order, to the same
writing, counting and polygon joining as a one-process run (:func:`trainer.predict.predict_scene`).

The outputs are those of a one-process run with the same torch threads per forward: a chip's
probabilities depend only on (model, chip) (:meth:`trainer.predict.Predictor.batches`), and the
driver finishes the tiles in the same order. The chips across a strip's top edge run in both
strips (one or two chip rows per seam).

A strip that raises is run again (:data:`datamodules.cluster_tasks.RETRIES` times); a worker
that dies is replaced by its nanny and its strip run elsewhere; the summary lists the strips
that took more than one attempt. A strip that fails for good fails the prediction, before any output is written.
"""

from __future__ import annotations

import os
import resource
import socket
import time
import uuid
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from datamodules.cluster_tasks import Progress, in_order, killed, plan
from datamodules.imagery import bound_block_cache

from .cluster import Cluster, cores
from .predict import ChipCache, PredictError, PredictOptions, open_predictor, predicted_tiles

FIELDS = ("classes", "conf", "valid")
CLASSIFY_FIELDS = FIELDS + ("pixels", "area")


@dataclass(frozen=True)
class StripJob:
    """What a worker needs to predict any strip of one scene (small: sent with each task)."""

    run: str  # names this prediction's tasks, files and progress events
    model: str  # models:/NAME/VERSION
    tracking_uri: str  # the driver's MLflow store
    images: tuple[str, ...]
    scene: dict  # bands, sensor, dates as open_predictor takes them
    options: PredictOptions
    tile: int
    strips: tuple[tuple[int, int], ...]  # first and last+1 tile row of each strip
    fields: tuple[str, ...]  # what is kept of each tile (see trainer.predict.tile_outcome)
    folder: str  # where strip files go (storage the driver reads)

    def path(self, i: int) -> Path:
        return Path(self.folder) / f"strip-{i:05d}.npy"

    def attempts(self, i: int) -> Path:
        return Path(self.folder) / f"strip-{i:05d}.attempts"


# -- on the workers -------------------------------------------------------------------------------
class TorchWorker(WorkerPlugin):
    """Torch threads and GDAL's block cache set on every worker, on new ones too (a worker that
    died is replaced by its nanny): ``threads``, else the machine's cores divided by the
    worker's task slots; the cache bounded as in one process (:func:`bound_block_cache`)."""

    name = "geotune-torch"

    def __init__(self, threads: int | None):
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        bound_block_cache()
        torch.set_num_threads(self.threads or max(1, cores() // worker.state.nthreads))


_MODELS: OrderedDict = OrderedDict()  # (tracking URI, model URI) → loaded model; 2 kept
_SCENE: dict = {}  # run → the Predictor of that run's scene; 1 kept


def _model(job: StripJob):
    key = (job.tracking_uri, job.model)
    if key not in _MODELS:
        from .loading import load_model

        os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
        _MODELS[key] = load_model(job.model)
        while len(_MODELS) > 2:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return _MODELS[key]


def _predictor(job: StripJob):
    if job.run not in _SCENE:
        for old in _SCENE.values():
            old.close()
        _SCENE.clear()
        o = job.options
        _SCENE[job.run], _ = open_predictor(_model(job), list(job.images), options=o, **job.scene)
    return _SCENE[job.run]


def predict_strip(job: StripJob, i: int) -> dict:
    """Predict strip ``i`` into its file; returns a few numbers (times, memory, threads)."""
    import torch

    t0 = time.time()
    worker = get_worker()
    with open(job.attempts(i), "a") as log:  # one line per attempt, whatever ends it
        log.write(f"{worker.address} pid {os.getpid()}\n")
    try:
        pred = _predictor(job)
        windows = _windows(job, pred, i)
        limit = worker.memory_manager.memory_limit
        cache_bytes = int(job.options.cache_mb * 2**20)
        if limit:
            cache_bytes = min(cache_bytes, limit // 8)  # the strip's share of the worker's memory
        cache = None
        if pred.task != "classification":
            cache = ChipCache(pred, job.tile, cache_bytes, first=windows[0])
        events = Progress(job.run, i)
        part = job.path(i).with_name(f".{job.path(i).name}.{uuid.uuid4().hex}")
        write_s = 0.0
        with open(part, "wb") as f:
            tiles = predicted_tiles(pred, windows, cache, events, threads=job.options.threads)
            for _, out in tiles:
                t = time.time()
                for k in job.fields:
                    np.save(f, out[k], allow_pickle=False)
                write_s += time.time() - t
        os.replace(part, job.path(i))
    except BaseException as e:
        with open(job.attempts(i), "a") as log:
            log.write(f"error: {type(e).__name__}: {e}\n")
        raise
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "strip": i,
        "tiles": len(windows),
        "seconds": round(time.time() - t0, 3),
        "write_seconds": round(write_s, 3),
        "worker": worker.address,
        "host": socket.gethostname(),
        "threads": job.options.threads or torch.get_num_threads(),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def _windows(job: StripJob, pred, i: int):
    from .predict import tiles

    g = pred.scenes[0].grid
    return in_strip(tiles(g.width, g.height, job.tile), job.strips[i], job.tile)


def in_strip(windows, rows: tuple[int, int], tile: int) -> list:
    """The windows of the tile rows ``rows`` (first, last + 1)."""
    return [w for w in windows if rows[0] <= w.row_off // tile < rows[1]]


# -- on the driver --------------------------------------------------------------------------------
def pinned_model(model) -> str:
    """``models:/NAME/VERSION`` of a loaded registered model (an alias resolved now, so every
    worker loads the same version even if the alias moves meanwhile)."""
    from .registry import setup_mlflow

    uri = getattr(model, "uri", None) or ""
    if not uri.startswith("models:/"):
        raise PredictError(
            "a prediction on a cluster needs a registered model (its workers load it from "
            "MLflow): pass --model NAME@ALIAS or NAME --version N"
        )
    ref = uri[len("models:/") :]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return f"models:/{name}/{setup_mlflow().get_model_version_by_alias(name, alias).version}"
    return uri


class StripRun:
    """One scene predicted on a cluster: strip tasks submitted, their tiles read back in order."""

    def __init__(self, cluster: Cluster, model, images, scene: dict, pred, windows, tile, tmp):
        """``scene``: bands, sensor and dates as :func:`trainer.predict.open_predictor` takes
        them; ``windows``: the output tiles of edge ``tile``; ``tmp``: where strip files go."""
        from datamodules.paths import tracking_uri

        self.cluster, self.windows = cluster, windows
        folder = Path(tmp) / "strips"
        folder.mkdir()
        self.job = StripJob(
            run=f"geotune-predict-{uuid.uuid4().hex[:12]}",
            model=pinned_model(model),
            tracking_uri=tracking_uri(),
            images=tuple(str(Path(p).resolve()) for p in images),
            scene=scene,
            options=pred.o,
            tile=tile,
            strips=plan(len({w.row_off for w in windows}), cluster.n_workers()),
            fields=CLASSIFY_FIELDS if pred.task == "classification" else FIELDS,
            folder=str(folder),
        )
        self.results: list[dict] = []
        self.retried: list[dict] = []
        self.wait_s = 0.0

    @property
    def threads(self) -> list[int]:
        """The torch threads the workers' forward passes used."""
        return sorted({r["threads"] for r in self.results})

    def tiles(self, bar):
        """``(window, outcome)`` of every tile in row-major order, as strips finish."""
        job = self.job
        strips = in_order(self.cluster.client, predict_strip, job, len(job.strips), job.run, bar)
        with closing(strips):  # a strip failed for good: the others are cancelled now
            for i, fut, waited in strips:
                self.wait_s += waited
                self.results.append(self._result(i, fut))
                yield from self._read(i)

    def _result(self, i: int, fut) -> dict:
        """The strip's numbers, or a :class:`PredictError` saying why it failed for good."""
        path = self.job.attempts(i)
        lines = path.read_text().splitlines() if path.is_file() else []
        attempts = [ln for ln in lines if not ln.startswith("error: ")]
        errors = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
        rows = self.job.strips[i]
        if fut.status != "finished":
            exc = fut.exception()
            if killed(exc):
                why = (
                    f"the workers running it died {len(attempts)} times (killed, or over their "
                    "memory limit: give workers more memory or use a smaller --tile-size)"
                )
            else:
                why = f"it raised {len(errors)} times; last: {errors[-1] if errors else exc!r}"
            raise PredictError(
                f"strip {i + 1} of {len(self.job.strips)} (tile rows {rows[0]}-{rows[1] - 1}) "
                f"failed for good, so nothing was written: {why}"
            )
        result = fut.result()
        if len(attempts) > 1:
            died = len(attempts) - 1 - len(errors)
            self.retried.append(
                {"strip": i, "attempts": len(attempts), "errors": errors, "workers_died": died}
            )
        return result

    def _read(self, i: int):
        """The tiles of strip ``i`` from its file, which is then removed."""
        wins = in_strip(self.windows, self.job.strips[i], self.job.tile)
        path = self.job.path(i)
        with open(path, "rb") as f:
            for win in wins:
                yield win, {k: np.load(f, allow_pickle=False) for k in self.job.fields}
        path.unlink()

    def summary(self) -> dict:
        """What the summary records of the cluster run."""
        rss: dict[str, float] = {}
        for r in self.results:
            rss[r["worker"]] = max(rss.get(r["worker"], 0.0), r["peak_rss_mb"])
        return {
            "address": self.cluster.address,
            "workers": self.cluster.n_workers(),
            "strips": len(self.job.strips),
            "tile_rows_per_strip": self.job.strips[0][1] - self.job.strips[0][0],
            "threads": self.threads,
            "retried": self.retried,
            "strip_seconds": round(sum(r["seconds"] for r in self.results), 2),
            "write_seconds": round(sum(r["write_seconds"] for r in self.results), 2),
            "driver_wait_seconds": round(self.wait_s, 2),
            "peak_rss_mb": rss,
        }
