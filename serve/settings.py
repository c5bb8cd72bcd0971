"""The server's settings (``geotune serve`` flags) and where it keeps things.

``$GEOTUNE_HOME/serve/`` holds ``keys.db`` (hashed API keys), ``jobs.db`` (job records, shared
by every server on the home), ``jobs/<id>/`` (job log, progress, the training run folder),
``predictions/<id>/`` (uploaded scene, outputs) and ``datasets/<owner>/`` (datasets of keyed
owners; the single local user's datasets are the CLI's, in ``$GEOTUNE_HOME/datasets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datamodules.paths import home

from .untrusted import Limits


def serve_dir() -> Path:
    return home() / "serve"


@dataclass(frozen=True)
class Settings:
    dev: bool = False  # single user 'local', no API keys (loopback only)
    max_training_jobs: int = 1  # training processes running at once; the rest wait in the queue
    max_predict_jobs: int = 1  # asynchronous prediction processes running at once
    max_upload_mb: float = 2048.0  # request body limit (413 above it)
    sync_pixels: int = 4_000_000  # predictions up to this many pixels answer at once, larger → 202
    max_pixels: int = 400_000_000  # scenes larger than this are refused (422)
    max_aoi_km2: float = 10_000.0  # AOI predictions larger than this are refused (422)
    model_cache: int = 2  # loaded models kept in memory for synchronous predictions
    public_url: str = ""  # links in answers start with it; relative links when empty
    max_queued_predictions: int = 8  # synchronous predictions waiting; more are 503 + Retry-After
    poll_seconds: float = 0.5  # how often the scheduler looks at running jobs
    keep_predictions_hours: float = 168.0  # finished predictions are deleted after this; 0 keeps
    max_ingest_jobs: int = 1  # dataset uploads ingested at once; the rest wait in the queue
    ingest_timeout_s: float = 3600.0  # an ingest job running longer is stopped and fails
    max_features: int = 200_000  # label features per uploaded file
    max_vertices: int = 20_000_000  # label vertices per uploaded file
    max_unpacked_mb: float = 1024.0  # a zipped shapefile's members, unpacked
    job_memory_mb: int = 8192  # address space of a process that reads uploaded files
    basemap_url: str | None = None  # the Lab's online basemap ({z}/{x}/{y} template); off: None
    cluster: str = ""  # prediction jobs on this Dask cluster (local:N or an address); "": none

    @property
    def limits(self) -> Limits:
        return Limits(
            max_pixels=self.max_pixels,
            max_unpacked_mb=self.max_unpacked_mb,
            max_features=self.max_features,
            max_vertices=self.max_vertices,
            memory_mb=self.job_memory_mb,
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
