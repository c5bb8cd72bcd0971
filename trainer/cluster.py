"""Dask clusters that predict: ``--cluster local:N`` or ``--cluster tcp://scheduler:8786``.

``local:N`` starts N worker processes on this machine (one task at a time each) and stops them
at the end; an address connects to a running scheduler (``dask scheduler``, ``dask worker
ADDRESS`` on each machine, or dask-jobqueue / dask-cuda clusters). The workers need geotune
installed, the scene and output folder at the same paths, and the MLflow store the driver uses
(its tracking URI is passed to them).

Torch threads are set deliberately on every worker (Dask's nanny starts workers with
``OMP_NUM_THREADS=1``): a worker of ``local:N`` takes its share of this machine's cores, a worker
of another cluster its machine's cores divided by its task slots, unless ``--threads`` says.

Optional: ``pip install 'geotune[cluster]'`` (dask and distributed).
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from datamodules.errors import UserError

LOCAL_RE = re.compile(r"^local:(\d+)$")
ADDRESS_RE = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
HELP = "local:N (N worker processes on this machine) or a scheduler address, tcp://HOST:8786"


class ClusterError(UserError):
    pass


def check_spec(spec: str) -> str:
    """``spec`` if it names a cluster, else a :class:`ClusterError` saying what would."""
    m = LOCAL_RE.match(spec)
    if (m and int(m.group(1)) >= 1) or ADDRESS_RE.match(spec):
        return spec
    raise ClusterError(f"--cluster {spec!r} is not a cluster: give {HELP}")


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


@dataclass
class Cluster:
    """A connected Dask client and what predictions need to know of its cluster."""

    client: object  # distributed.Client
    address: str
    local: bool  # started here (local:N)
    threads: int | None  # torch threads per task; None: each worker's share of its machine

    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            "--cluster needs Dask: pip install 'geotune[cluster]' (dask and distributed)"
        ) from None
    return distributed


def connect_or_none(spec: str | None, threads: int | None = None):
    """:func:`connect` for a spec, else a block with no cluster (None)."""
    return connect(spec, threads) if spec else nullcontext()


@contextmanager
def connect(spec: str, threads: int | None = None):
    """A :class:`Cluster` for ``spec`` while the block runs (a local one is stopped after)."""
    distributed = _distributed()
    check_spec(spec)
    m = LOCAL_RE.match(spec)
    cluster = None
    if m:
        n = int(m.group(1))
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster)
        threads = threads or max(1, cores() // n)
    else:
        try:
            client = distributed.Client(spec, timeout="20s")
        except OSError as e:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {spec} ({e}); start one with `dask scheduler` "
                f"and workers with `dask worker {spec}`, or use --cluster local:N"
            ) from None
    try:
        from .strips import TorchWorker

        plugin = TorchWorker(threads)
        plugin.idempotent = cluster is None  # a cluster started elsewhere keeps its owner's
        client.register_plugin(plugin)
        yield Cluster(client, client.scheduler.address, cluster is not None, threads)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
