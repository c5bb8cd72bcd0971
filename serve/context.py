"""What every request handler shares: settings, key store, job store and scheduler, predictions,
the MLflow client and the model cache. One per app (``app.state.ctx``)."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from datamodules.paths import home

from .embeddings import EmbedKind
from .ingestion import IngestKind
from .jobs import JobStore, Scheduler
from .keys import KeyStore
from .models import ModelCache
from .predictions import PredictionStore, PredictKind, SyncLane
from .settings import Settings, serve_dir
from .training import FinetuneKind


def mlflow_client():
    from trainer.registry import setup_mlflow

    return setup_mlflow()


@dataclass
class Context:
    settings: Settings
    keys: KeyStore = field(init=False)
    jobs: JobStore = field(init=False)
    predictions: PredictionStore = field(init=False)
    scheduler: Scheduler = field(init=False)
    models: ModelCache = field(init=False)
    lane: SyncLane = field(init=False)

    def __post_init__(self):
        self._last_clean = -float("inf")
        self._cluster = None
        root = serve_dir()
        root.mkdir(parents=True, exist_ok=True)
        self.lock = HomeLock(root)
        if self.lock.alone:  # no other server receives uploads: those there were left by a crash
            shutil.rmtree(root / "uploads", ignore_errors=True)
        self.lock.downgrade()
        self.keys = KeyStore(root / "keys.db")
        self.jobs = JobStore(root / "jobs", db=root / "jobs.db")
        self.predictions = PredictionStore(
            root / "predictions", keep_hours=self.settings.keep_predictions_hours
        )
        self.models = ModelCache(self.settings.model_cache)
        # one lane per core: a prediction's forward passes use every core but go one at a time
        # per model (trainer.inference.lane); reading, writing and polygons run beside them
        self.lane = SyncLane(len(os.sched_getaffinity(0)), self.settings.max_queued_predictions)
        env = dict(os.environ, GEOTUNE_HOME=str(home()), PYTHONUNBUFFERED="1")
        self.scheduler = Scheduler(
            self.jobs,
            kinds={
                "finetune": FinetuneKind(mlflow_client),
                "predict": PredictKind(self.predictions),
                "ingest": IngestKind(self.settings.ingest_timeout_s),
                "embed": EmbedKind(),
            },
            limits={
                "finetune": self.settings.max_training_jobs,
                "predict": self.settings.max_predict_jobs,
                "ingest": self.settings.max_ingest_jobs,
                "embed": self.settings.max_predict_jobs,  # model runs over scenes, as predictions
            },
            poll_seconds=self.settings.poll_seconds,
            env=env,
        )

    def start(self) -> None:
        """Start what runs beside the requests: the cluster (local:N), then the job scheduler."""
        if self.settings.cluster:
            from trainer.cluster import connect

            self._cluster = connect(self.settings.cluster)
            cluster = self._cluster.__enter__()
            self.scheduler.kinds["predict"].cluster = cluster.address
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        if self._cluster is not None:
            self._cluster.__exit__(None, None, None)

    @property
    def limits(self):
        return self.settings.limits

    @staticmethod
    def client():
        return mlflow_client()

    def prediction_jobs(self) -> dict[str, dict]:
        """The queued or running jobs that produce predictions, by prediction id."""
        from .jobs import ACTIVE

        return {
            r["params"]["prediction_id"]: r
            for r in self.jobs.all()
            if r["kind"] == "predict" and r["state"] in ACTIVE
        }

    def clean_predictions(self, at_most_every_s: float = 0.0) -> list[str]:
        """Remove expired predictions, except those an unfinished job is producing (skipped when
        the last clean-up was less than ``at_most_every_s`` ago)."""
        t = time.monotonic()
        if t - self._last_clean < at_most_every_s:
            return []
        self._last_clean = t
        return self.predictions.clean(set(self.prediction_jobs()))


class HomeLock:
    """Held by every server on a GEOTUNE_HOME while it runs: a ``flock`` on
    ``serve/server.lock``, exclusive at first when no other server holds it (then ``alone`` is
    true), shared after :meth:`downgrade`. Several servers may share a home and its job queue;
    they must run on one machine, as SQLite's WAL mode needs."""

    def __init__(self, root: Path):
        self.file = open(root / "server.lock", "a+")  # noqa: SIM115 (held for the lifetime)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.alone = True
        except BlockingIOError:
            fcntl.flock(self.file, fcntl.LOCK_SH)
            self.alone = False

    def downgrade(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_SH)

    def close(self) -> None:
        self.file.close()


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx
