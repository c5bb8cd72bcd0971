"""Strip tasks on a Dask cluster, taken in order: what predictions (:mod:`trainer.strips`) and
composites (:mod:`datamodules.composite_cluster`) share.

Work is cut into strips of whole rows (of tiles, of blocks), about ``STRIPS_PER_WORKER`` per
worker: few tasks, each writing its arrays to a file on storage the driver reads, so only
small numbers and progress events pass through the scheduler. :func:`in_order` submits one task
per strip (run again ``RETRIES`` times if it raises; a worker that dies is replaced and its
strip run elsewhere), forwards the workers' progress events to the caller's bar and hands the
strips back in order, so the driver writes its files in the order of a one-process run.
"""

from __future__ import annotations

import math
import time

RETRIES = 2  # a strip that raises runs again up to this many times
STRIPS_PER_WORKER = 3  # enough to balance the workers and overlap the driver's writing


def plan(n_rows: int, n_workers: int) -> tuple[tuple[int, int], ...]:
    """Strips of whole rows (first, last + 1), about ``STRIPS_PER_WORKER`` per worker, all of
    one height but the last."""
    n = max(1, min(n_rows, STRIPS_PER_WORKER * n_workers))
    per = math.ceil(n_rows / n)
    return tuple((a, min(a + per, n_rows)) for a in range(0, n_rows, per))


class Progress:
    """A strip's progress on a worker: ``update(n)`` sends the strip's running total as a small
    event on the run's topic (the driver counts a strip run again once)."""

    def __init__(self, run: str, strip: int):
        from distributed import get_worker

        self.worker, self.run, self.strip, self.done = get_worker(), run, strip, 0

    def update(self, n: int) -> None:
        self.done += n
        self.worker.log_event(self.run, {"strip": self.strip, "done": self.done})


def in_order(client, fn, job, n: int, run: str, bar):
    """Submit ``fn(job, i)`` for the ``n`` strips (task keys ``run-strip-i``) and yield
    ``(i, future, seconds waited)`` in strip order once each is done (finished or failed for
    good: the caller decides). ``bar.update`` receives the :class:`Progress` of the workers."""
    from distributed import wait

    done: dict[int, int] = {}

    def progress(event) -> None:  # on the client's event loop
        msg = event[1]
        k = msg["done"] - done.get(msg["strip"], 0)
        if k > 0:  # a strip run again reports its work again: counted once
            done[msg["strip"]] = msg["done"]
            bar.update(k)

    client.subscribe_topic(run, progress)
    futures = [
        client.submit(fn, job, i, key=f"{run}-strip-{i}", retries=RETRIES, pure=False)
        for i in range(n)
    ]
    try:
        for i in range(n):
            t = time.time()
            wait(futures[i])
            yield i, futures[i], time.time() - t
            futures[i] = None  # released: not run again if its worker dies later
    finally:
        client.cancel([f for f in futures if f is not None])
        client.unsubscribe_topic(run)


def killed(exc) -> bool:
    """Did the strip fail because the workers running it died?"""
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker)


__all__ = ["RETRIES", "STRIPS_PER_WORKER", "Progress", "in_order", "killed", "plan"]
