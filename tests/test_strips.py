"""Prediction on a real Dask cluster (two worker processes): the demo scene with small tiles in
several strips gives the same files as one process, bit for bit; a strip that raises once is run
again; a worker killed with SIGKILL mid-strip is replaced; a strip failing for good fails the
prediction and leaves no output."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import distributed
import pytest
import rasterio
import strip_faults
from test_predict import model  # noqa: F401 (a tiny registered model, module fixture)
from test_serve import servers  # noqa: F401 (fixture)

from trainer.cluster import ClusterError, check_spec, connect
from trainer.demo import sample_image
from trainer.predict import PredictError, PredictOptions, predict_scene

# 96-px chips (28 a batch), 128-px tiles: 6 rows of 6 tiles on the 768-px scene, 6 strips
OPTIONS = PredictOptions(chip_size=96, overlap=16, tile_size=128, threads=1, precision="fp32")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc


@pytest.fixture
def model_home(model, monkeypatch):  # noqa: F811
    """The registered model's store is the one the driver (and so its workers) use."""
    monkeypatch.setenv("GEOTUNE_HOME", str(model.tmp / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return model


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("one-process")
    summary = predict_scene(model, [sample_image()], out, options=OPTIONS, progress=False)
    return out, summary


def outputs(folder):
    files = {}
    for name in ("classes.tif", "confidence.tif"):
        with rasterio.open(folder / name) as src:
            files[name] = (
                src.read(1),
                src.profile,
                src.colormap(1) if name == "classes.tif" else 0,
            )
    return files


def assert_same(folder, summary, reference):
    ref_dir, ref = reference
    a, b = outputs(folder), outputs(ref_dir)
    for name in a:
        assert (a[name][0] == b[name][0]).all(), name
        assert a[name][1:] == b[name][1:], name
        assert (folder / name).read_bytes() == (ref_dir / name).read_bytes(), name
    assert (folder / "polygons.geojson").read_text() == (ref_dir / "polygons.geojson").read_text()
    assert summary["class_histogram"] == ref["class_histogram"]  # pixels and areas, exactly
    assert summary["n_pixels"] == ref["n_pixels"] and summary["n_polygons"] == ref["n_polygons"]
    assert json.loads((folder / "summary.json").read_text())["cluster"] == summary["cluster"]


def run(cluster, model, tmp_path, report=None) -> dict:  # noqa: F811
    with connect(cluster.scheduler_address) as c:
        return predict_scene(
            model,
            [sample_image()],
            tmp_path / "out",
            options=OPTIONS,
            cluster=c,
            progress=False,
            report=report,
        )


def test_strips_on_two_workers_equal_one_process(cluster, model_home, reference, tmp_path):
    ticks = []
    s = run(cluster, model_home, tmp_path, report=lambda done, total: ticks.append((done, total)))
    assert_same(tmp_path / "out", s, reference)
    info = s["cluster"]
    assert info["workers"] == 2 and info["strips"] == 6 and info["retried"] == []
    assert info["threads"] == [1] and len(info["peak_rss_mb"]) == 2
    assert ticks[-1] == (36, 36) and all(d <= t for d, t in ticks)
    assert not list((tmp_path / "out").glob("tmp*"))  # strip files went with the temp folder


def test_a_strip_that_raises_once_is_run_again(cluster, model_home, reference, tmp_path):
    client = distributed.Client(cluster.scheduler_address)
    marker = str(tmp_path / "fault")
    client.run(strip_faults.install, "raise", 256, marker)
    try:
        s = run(cluster, model_home, tmp_path)
    finally:
        client.run(strip_faults.remove)
        client.close()
    assert_same(tmp_path / "out", s, reference)
    assert s["cluster"]["retried"] == [
        {"strip": 2, "attempts": 2, "errors": ["RuntimeError: injected fault"], "workers_died": 0}
    ]


def test_a_worker_killed_mid_strip_is_replaced(cluster, model_home, reference, tmp_path):
    client = distributed.Client(cluster.scheduler_address)
    marker = str(tmp_path / "hang")
    client.run(strip_faults.install, "hang", 384, marker)
    result = {}
    runner = threading.Thread(target=lambda: result.update(s=run(cluster, model_home, tmp_path)))
    runner.start()
    try:
        deadline = time.time() + 300
        while not os.path.exists(f"{marker}.pid") and time.time() < deadline:
            time.sleep(0.1)
        pid = int(open(f"{marker}.pid").read())
        os.kill(pid, signal.SIGKILL)  # mid-strip: the worker hangs in strip 3
        runner.join(timeout=600)
    finally:
        client.run(strip_faults.remove)
        client.close()
    s = result["s"]
    assert_same(tmp_path / "out", s, reference)
    retried = {r["strip"]: r for r in s["cluster"]["retried"]}
    assert retried[3]["workers_died"] >= 1 and retried[3]["errors"] == []
    assert s["cluster"]["workers"] == 2  # the nanny started a new worker


def test_a_strip_failing_for_good_fails_and_writes_nothing(cluster, model_home, tmp_path):
    client = distributed.Client(cluster.scheduler_address)
    client.run(strip_faults.install, "raise", 128, str(tmp_path / "fault"), 99)
    try:
        with pytest.raises(PredictError, match=r"strip 2 of 6 \(tile rows 1-1\) failed for good"):
            run(cluster, model_home, tmp_path)
    finally:
        client.run(strip_faults.remove)
        client.close()
    assert not list((tmp_path / "out").iterdir())


def test_cluster_specs():
    assert check_spec("local:2") == "local:2" and check_spec("tcp://10.0.0.5:8786")
    for bad in ("local:0", "local", "10.0.0.5:8786", "http://x"):
        with pytest.raises(ClusterError, match="local:N"):
            check_spec(bad)


def test_a_prediction_job_runs_on_the_servers_cluster(cluster, model_home, tmp_path):
    """The job process of an asynchronous prediction (``python -m serve.predictions``) predicts
    on the cluster its server names (GEOTUNE_CLUSTER) and writes its progress for the job."""
    from serve.jobs import write_json
    from serve.predictions import PredictKind, predict_argv

    folder = tmp_path / "pred-0123456789ab"
    folder.mkdir()
    shutil.copy(sample_image(), folder / "input1.tif")
    write_json(
        folder / "request.json",
        {
            "owner": "local",
            "model": "p",
            "alias": "champion",
            "registered_name": "p",
            "version": 1,
            "inputs": ["input1.tif"],
            "input_names": ["demo.tif"],
            "bands": None,
            "sensor": None,
            "dates": None,
            "pixels": 768 * 768,
            "params": {
                "outputs": ["classes", "confidence", "polygons"],
                "min_area_m2": 0.0,
                "simplify": 0.0,
                "sieve_pixels": 0,
                "confidence_threshold": None,
            },
        },
    )
    env = os.environ | PredictKind(None, cluster.scheduler_address).env
    p = subprocess.run(
        predict_argv(folder, tmp_path), env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((folder / "outputs" / "summary.json").read_text())
    assert summary["cluster"]["address"] == cluster.scheduler_address
    assert summary["cluster"]["strips"] == 1 and summary["n_pixels"] > 0
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["tiles_done"] == progress["tiles_total"] == 1


def test_cluster_flags():
    from datamodules.errors import UserError
    from serve.cli import settings_from
    from trainer.cli import build_parser

    assert settings_from(build_parser().parse_args(["serve", "--cluster", "local:2"])).cluster
    with pytest.raises(UserError, match="local:N"):
        settings_from(build_parser().parse_args(["serve", "--cluster", "8786"]))
    args = build_parser().parse_args(["predict", "--model", "m@c", "--out", "o", "--cluster", "x"])
    from trainer.cli import cmd_predict

    with pytest.raises(ClusterError, match="is not a cluster"):
        cmd_predict(args)


def children(pid: int) -> set[int]:
    """Live descendants of ``pid``, from /proc."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(kids - found)
            found |= kids
    return found


def test_the_servers_cluster_starts_with_it_and_dies_with_it(servers):  # noqa: F811
    from serve.jobs import proc_start_time

    srv = servers("--dev", "--cluster", "local:1")
    assert srv.client().get("/readyz").status_code == 200
    workers = children(srv.proc.pid)
    assert workers  # the worker process of local:1 (and its helpers)
    srv.stop(signal.SIGKILL)
    deadline = time.time() + 30
    while any(proc_start_time(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(proc_start_time(p) for p in workers)
