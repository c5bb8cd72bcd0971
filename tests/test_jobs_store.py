"""The job store shared by several servers: SQLite with an atomic claim, migration of the JSON
job folders, recovery of only the jobs whose server is gone, and two real `geotune serve`
processes on one GEOTUNE_HOME sharing one queue."""

import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from test_serve import servers, wait_job  # noqa: F401 (fixture)
from test_serve_units import Sleep, sleeper, wait

from serve.jobs import JobStore, Scheduler, proc_start_time

DATA = Path(__file__).parent / "data" / "jobs-json"


class Resumable(Sleep):
    def resume(self, record, folder):
        return sleeper(0.1)(folder), "with a short sleep"


def test_job_folders_of_the_json_store_are_migrated(tmp_path):
    """Folders written by the JSON store (tests/data/jobs-json: one succeeded, one running
    when its server died, one queued) become rows; the folders stay; the queue goes on."""
    shutil.copytree(DATA, tmp_path / "jobs")
    store = JobStore(tmp_path / "jobs")
    assert (tmp_path / "jobs.db").is_file() and not list((tmp_path / "jobs").glob("*/job.json"))
    recs = store.all()
    assert [r["params"]["note"] for r in recs] == ["done before", "was running", "waiting"]
    assert [r["state"] for r in recs] == ["succeeded", "running", "queued"]
    assert recs[0]["result"] == {"slept": True} and recs[1]["pid"] == 999999
    assert all(store.dir(r["id"]).is_dir() for r in recs)
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert JobStore(tmp_path / "jobs").all() == recs  # opening it again changes nothing

    sched = Scheduler(store, {"sleep": Sleep()}, {"sleep": 1}, poll_seconds=0.05)
    sched.start()
    try:
        done, running, queued = (r["id"] for r in recs)
        interrupted = store.get(running)
        assert interrupted["state"] == "failed" and "server restarted" in interrupted["error"]
        wait(lambda: store.get(queued)["state"] == "succeeded")
        assert store.get(done)["state"] == "succeeded"
        assert (store.dir(queued) / "log.txt").read_text().strip() == "1"
    finally:
        sched.stop()


CLAIMER = """
import sys, time
from pathlib import Path
from serve.jobstore import JobStore
root, limit, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
store = JobStore(root)
while not go.exists():
    time.sleep(0.001)
while (rec := store.claim(sys.argv[4], {"k": limit})) is not None:
    print(rec["id"], flush=True)
"""


def claim_in_processes(tmp_path: Path, n_jobs: int, limit: int, n_procs: int = 4) -> list[str]:
    """``n_procs`` processes claim from one store at the same moment; the ids they got."""
    store = JobStore(tmp_path / "jobs")
    for _ in range(n_jobs):
        store.create("k", "alice", {}, sleeper(0))
    go = tmp_path / f"go-{limit}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(store.root), str(limit), str(go), f"s{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n_procs)
    ]
    time.sleep(2)  # all of them are waiting for the go
    go.touch()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [job_id for out in outs for job_id in out]


def test_a_claim_is_atomic_across_processes(tmp_path):
    claimed = claim_in_processes(tmp_path / "a", n_jobs=60, limit=1000)
    store = JobStore(tmp_path / "a" / "jobs")
    assert sorted(claimed) == sorted(r["id"] for r in store.all())  # each exactly once
    assert {r["state"] for r in store.all()} == {"running"}
    assert {r["server"] for r in store.all()} <= {"s0", "s1", "s2", "s3"}
    # the limit counts the jobs running on every server: 3 claims in all succeed
    claimed = claim_in_processes(tmp_path / "b", n_jobs=10, limit=3)
    store = JobStore(tmp_path / "b" / "jobs")
    assert len(claimed) == len(set(claimed)) == 3
    assert [r["id"] for r in store.all("running")] == [r["id"] for r in store.all()[:3]]  # FIFO


def test_a_server_takes_up_only_the_jobs_of_a_server_that_is_gone(tmp_path):
    store = JobStore(tmp_path / "jobs")
    kind = Resumable()
    a = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    b = Scheduler(store, {"sleep": kind}, {"sleep": 1}, poll_seconds=0.05)
    a.start()
    try:
        job = store.create("sleep", "alice", {}, sleeper(60))
        wait(lambda: store.get(job["id"])["pid"] is not None)
        first = store.get(job["id"])
        assert first["server"] == a.server and first["started"]
        b.start()
        waiting = store.create("sleep", "alice", {}, sleeper(0.1))
        time.sleep(0.5)  # b looks at the queue and at a's job many times
        assert store.get(job["id"]) | {"progress": {}} == first | {"progress": {}}
        assert store.get(waiting["id"])["state"] == "queued"  # the limit counts a's job too
    finally:
        a._stop.set()  # a crashes: its thread goes away and the kernel kills its job
        a._thread.join()
    try:
        wait(lambda: store.get(job["id"])["state"] == "succeeded")
        rec = store.get(job["id"])
        assert rec["resumes"] == 1 and "server running this job went away" in rec["note"]
        assert rec["server"] == b.server and rec["pid"] != first["pid"]
        assert proc_start_time(first["pid"]) is None
        wait(lambda: store.get(waiting["id"])["state"] == "succeeded")
        assert store.get(waiting["id"])["server"] == b.server
    finally:
        b.stop()


def test_two_servers_share_one_queue(home, servers, tmp_path):  # noqa: F811
    """Two `geotune serve` processes on one GEOTUNE_HOME, ten jobs queued at once: each runs
    exactly once; then one server is killed mid-job and the other takes the job up."""
    one = servers("--dev", "--max-predict-jobs", "3")
    two = servers("--dev", "--max-predict-jobs", "3")
    assert "the servers share its job queue" in two.log.read_text()
    store = JobStore(home / "serve" / "jobs", db=home / "serve" / "jobs.db")
    runs = tmp_path / "runs.txt"

    def job(pred: Path, seconds: float):
        def argv(folder: Path) -> list[str]:
            code = (
                "import os, pathlib, time\n"
                f"open({str(runs)!r}, 'a').write('{folder.name} ' + str(os.getppid()) + '\\n')\n"
                f"time.sleep({seconds})\n"
                f"out = pathlib.Path({str(pred)!r}) / 'outputs'\n"
                "out.mkdir(parents=True, exist_ok=True)\n"
                "(out / 'summary.json').write_text('{}')\n"
            )
            return [sys.executable, "-c", code]

        return argv

    def queue(seconds: float) -> dict:
        pred_id = f"pred-{secrets.token_hex(6)}"
        pred = home / "serve" / "predictions" / pred_id
        return store.create("predict", "local", {"prediction_id": pred_id}, job(pred, seconds))

    jobs = [queue(0.5) for _ in range(10)]
    c = one.client()
    for j in jobs:
        assert wait_job(c, j["id"], timeout=120)["state"] == "succeeded"
    lines = [ln.split() for ln in runs.read_text().splitlines()]
    assert sorted(job_id for job_id, _ in lines) == sorted(j["id"] for j in jobs)  # once each
    assert {int(pid) for _, pid in lines} <= {one.proc.pid, two.proc.pid}
    assert {store.get(j["id"])["server"].split(":")[1] for j in jobs} == {p for _, p in lines}

    long = queue(600)
    wait(lambda: store.get(long["id"])["pid"] is not None, timeout=60)
    pid = store.get(long["id"])["pid"]
    owner = one if store.get(long["id"])["server"].split(":")[1] == str(one.proc.pid) else two
    other = two if owner is one else one
    owner.stop(signal.SIGKILL)
    wait(lambda: store.get(long["id"]).get("resumes") == 1, timeout=60)
    rec = wait_job(other.client(), long["id"], until=("running",))
    assert "server running this job went away" in rec["note"] and proc_start_time(pid) is None
    assert store.get(long["id"])["server"].split(":")[1] == str(other.proc.pid)
    assert other.client().delete(f"/v1/jobs/{long['id']}").json()["state"] == "cancelled"
