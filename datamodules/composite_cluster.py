"""Composites on a Dask cluster (``geotune predict --aoi ... --cluster``): the workers read,
mask and reduce the blocks of the output grid; the driver writes the files as one process does.

The blocks (``block_size``, row-major as :func:`datamodules.imagery.iter_windows` lists them) are
grouped into strips of whole block rows (:func:`datamodules.cluster_tasks.plan`), one task each.
A worker gets the composite's :class:`~datamodules.composite_write.Writer` (its reader: catalog,
access hooks, observations, grid, AOI) with the task, reads the strip's blocks from the sources
through the same access code as one process (:mod:`datamodules.stac_access`, so the same URL
and driver rules), computes each block's outputs with the same code
(:meth:`~datamodules.composite_write.Writer.outputs`: median or best-dates values, clear counts),
and writes them to a file of the strip next to the composite (storage the driver reads). Only
the strip's counts (pixels per item, harmonisation notes, resampling, clear pixels) come back.
The driver takes the strips in order and writes their blocks into the GeoTIFFs in the order of
a one-process run: the same bytes.

A strip that raises is run again, a worker that dies is replaced and its strip run elsewhere;
a strip that fails for good fails the composite, and no file is left: with the message one
process gives when the error is the user's to fix (a missing asset, credentials), else with the
strip, its block rows and the last error.
"""

from __future__ import annotations

import copy
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

from .cluster_tasks import Progress, in_order, killed, plan
from .errors import UserError
from .stac import StacError


@dataclass(frozen=True)
class BlockJob:
    """What a worker needs to compute any strip of one pass over the blocks."""

    run: str  # names this pass's tasks, files and progress events
    writer: object  # a Writer without its cluster
    kind: str  # median, frames or rank
    obs: list  # the observations, in the order the outputs follow
    windows: tuple  # the blocks of each strip, row-major
    folder: str

    def path(self, i: int) -> Path:
        return Path(self.folder) / f"blocks-{i:05d}.npy"


def n_arrays(kind: str, obs) -> int:
    """Arrays per block: the values and the count (frames: one values array per frame)."""
    return {"median": 2, "rank": 1}.get(kind, len(obs) + 1)


def composite_strip(job: BlockJob, i: int) -> dict:
    """Compute strip ``i`` into its file; returns what the driver's reader records."""
    w = job.writer
    w.reset_counts()
    progress = Progress(job.run, i)
    part = job.path(i).with_name(f".{job.path(i).name}.{uuid.uuid4().hex}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # as one process
        with ThreadPoolExecutor(w.read.workers) as pool, open(part, "wb") as f:
            for _win, arrays in w.outputs(job.kind, pool, job.obs, job.windows[i]):
                for a in arrays:
                    np.save(f, a, allow_pickle=False)
                progress.update(1)
    os.replace(part, job.path(i))
    return w.counts()


class BlockRun:
    """One pass over a composite's blocks on the writer's cluster."""

    def __init__(self, writer, kind: str, obs, windows, size: int, folder: Path):
        self.writer, self.client = writer, writer.cluster.client
        rows = plan(len({w.row_off for w in windows}), writer.cluster.n_workers())
        strips = tuple(tuple(w for w in windows if a <= w.row_off // size < b) for a, b in rows)
        sent = copy.copy(writer)
        sent.cluster = None  # the client stays here
        blocks = Path(folder) / f".blocks-{kind}"
        blocks.mkdir(exist_ok=True)
        self.rows = rows
        self.job = BlockJob(
            f"geotune-composite-{uuid.uuid4().hex[:12]}", sent, kind, list(obs), strips, str(blocks)
        )

    def blocks(self, bar):
        """``(window, arrays)`` of every block in row-major order, as strips finish."""
        job = self.job
        strips = in_order(self.client, composite_strip, job, len(job.windows), job.run, bar)
        with closing(strips):
            for i, fut, _waited in strips:
                self.writer.add_counts(self._result(i, fut))
                yield from self._read(i)

    def _result(self, i: int, fut) -> dict:
        if fut.status == "finished":
            return fut.result()
        exc = fut.exception()
        if isinstance(exc, UserError):
            raise exc  # what one process says (a missing asset, credentials to set, ...)
        a, b = self.rows[i]
        why = (
            "the workers running it died (killed, or over their memory limit: give workers more "
            "memory)"
            if killed(exc)
            else f"{type(exc).__name__}: {exc}"
        )
        raise StacError(
            f"compositing strip {i + 1} of {len(self.rows)} (block rows {a}-{b - 1}) failed for "
            f"good, so nothing was written: {why}"
        )

    def _read(self, i: int):
        path, n = self.job.path(i), n_arrays(self.job.kind, self.job.obs)
        with open(path, "rb") as f:
            for win in self.job.windows[i]:
                yield win, [np.load(f, allow_pickle=False) for _ in range(n)]
        path.unlink()


__all__ = ["BlockJob", "BlockRun", "composite_strip"]
