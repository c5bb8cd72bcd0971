"""Composites on a real Dask cluster (two worker processes): the workers read and reduce strips
of blocks of a local static STAC catalog, the driver writes the files: the same bytes as one
process (median and best dates); a strip that fails for good leaves nothing."""

import json
import os
import pickle
import re
import signal
import threading
import time

import distributed
import pytest
import strip_faults
from stac_synth import aoi, write_items, write_static_catalog

from datamodules.composite import composite_for_aoi
from datamodules.stac import StacError
from datamodules.stac_access import AccessError, PlanetaryComputer
from trainer.cluster import connect

BANDS = ["blue", "green", "red", "nir08"]
BLOCK = 64  # 4 rows of 4 blocks, one strip a row on two workers


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    return str(write_static_catalog(tmp, write_items(tmp)))


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc


def composite(url, out, cluster=None, **kw):
    args = dict(
        bands=BANDS, catalog="earth_search", catalog_url=url, block_size=BLOCK, progress=False
    )
    return composite_for_aoi(
        aoi(), "2021-01-01", "2023-12-31", "sentinel-2-l2a", out, cluster=cluster, **(args | kw)
    )


def on_cluster(cluster, url, out, **kw):
    with connect(cluster.scheduler_address) as c:
        return composite(url, out, c, **kw)


def assert_same_files(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".tif"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((a / "provenance.json").read_text()) == json.loads(
        (b / "provenance.json").read_text()
    )


@pytest.mark.parametrize("frames", [1, 3])
def test_a_composite_on_two_workers_equals_one_process(catalog, cluster, tmp_path, frames):
    one = composite(catalog, tmp_path / "one", frames=frames)
    two = on_cluster(cluster, catalog, tmp_path / "two", frames=frames)
    assert one.provenance["clear_fraction"] > 0.9 and len(one.images) == frames
    assert len(one.provenance["items"]) >= 3  # harmonisation notes and pixels merged back
    assert_same_files(tmp_path / "one", tmp_path / "two")
    assert two.provenance == one.provenance and two.dates == one.dates


def test_a_worker_killed_mid_strip_is_replaced(catalog, cluster, tmp_path):
    one = composite(catalog, tmp_path / "one")
    client = distributed.Client(cluster.scheduler_address)
    marker = tmp_path / "hang.pid"
    client.run(strip_faults.hang_composite, 2 * BLOCK, str(marker))
    result = {}
    runner = threading.Thread(
        target=lambda: result.update(r=on_cluster(cluster, catalog, tmp_path / "two"))
    )
    runner.start()
    try:
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(int(marker.read_text()), signal.SIGKILL)  # mid-strip: after its first block
        runner.join(timeout=600)
    finally:
        client.run(strip_faults.mend_composites)
        client.close()
    assert_same_files(tmp_path / "one", tmp_path / "two")
    assert result["r"].provenance == one.provenance


def test_progress_reaches_the_callers_bar(catalog, cluster, tmp_path, capsys):
    with connect(cluster.scheduler_address) as c:
        r = composite(catalog, tmp_path / "out", c, progress=True)
    n = -(-r.grid.height // BLOCK) * -(-r.grid.width // BLOCK)
    err = capsys.readouterr().err
    assert f"composite: 100%|██████████| {n}/{n} " in err
    done = [int(k) for k in re.findall(rf"\| (\d+)/{n} ", err)]
    assert any(0 < k < n for k in done)  # the workers' blocks, before the end


def test_a_strip_failing_for_good_leaves_nothing(catalog, cluster, tmp_path):
    client = distributed.Client(cluster.scheduler_address)
    client.run(strip_faults.break_composites)
    bad = tmp_path / "bad"
    try:
        msg = r"strip 1 of \d+ \(block rows 0-0\) failed for good.*injected read"
        with pytest.raises(StacError, match=msg):
            on_cluster(cluster, catalog, bad)
    finally:
        client.run(strip_faults.mend_composites)
        client.close()
    assert not bad.exists()


def test_an_error_the_user_fixes_keeps_its_message(catalog, cluster, tmp_path):
    client = distributed.Client(cluster.scheduler_address)
    client.run(strip_faults.break_composites, True)
    try:
        with pytest.raises(AccessError, match="^injected: set EARTHDATA_TOKEN$"):
            on_cluster(cluster, catalog, tmp_path / "bad")
    finally:
        client.run(strip_faults.mend_composites)
        client.close()
    assert not (tmp_path / "bad").exists()


def test_access_hooks_travel_to_workers():
    pc = PlanetaryComputer()
    pc._tokens["c"] = ("secret", 1e12)
    copy = pickle.loads(pickle.dumps(pc))
    assert copy._tokens == {} and copy.hosts == pc.hosts and copy._lock is not pc._lock
