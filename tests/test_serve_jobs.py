"""Jobs across server restarts: the queue (at most N running), persisted records, a crash
mid-job, cancellation. A real `geotune serve` subprocess; training jobs are real
`geotune train` processes."""

import signal
import time

import pytest
from test_serve import TINY, assert_error, servers, upload_dataset, wait_job  # noqa: F401 (fixture)

from serve.jobs import JobStore, proc_start_time

LONG = {**TINY, "epochs": 500, "chips_per_epoch": 64}


def alive(pid: int) -> bool:
    return proc_start_time(pid) is not None


def wait_progress(client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["progress"].get("step", 0) > 0:
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} made no progress: {job}")


def job_record(home, job_id: str) -> dict:
    """The job's record as the servers keep it (their shared job store)."""
    return JobStore(home / "serve" / "jobs", db=home / "serve" / "jobs.db").get(job_id)


def pid_of(home, job_id: str) -> int:
    return job_record(home, job_id)["pid"]


def test_restart_mid_job_records_the_state(home, scene, servers):  # noqa: F811
    """The quick version: crash while a job runs and another waits; restart: the interrupted
    job's process is stopped and the job queued again ahead of the other, to resume."""
    srv = servers("--dev", "--max-jobs", "1")
    c = srv.client()
    assert upload_dataset(c, scene, "fields")["state"] == "succeeded"
    first = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "a", **LONG}).json()
    second = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "b", **LONG}).json()
    wait_job(c, first["id"], until=("running",))
    assert c.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"
    pid = pid_of(home, first["id"])
    srv.stop(signal.SIGKILL)
    deadline = time.time() + 30
    while alive(pid) and time.time() < deadline:  # the kernel kills it with its server
        time.sleep(0.1)
    assert not alive(pid)

    c2 = servers("--dev", "--max-jobs", "1").client()
    job = c2.get(f"/v1/jobs/{first['id']}").json()
    assert job["resumes"] == 1 and "server restarted while this job was running" in job["note"]
    assert job["state"] in ("queued", "running") and job["error"] is None
    assert not alive(pid)
    wait_job(c2, first["id"], until=("running",))  # first in the queue, as before
    assert c2.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"
    for j in (first, second):
        assert c2.delete(f"/v1/jobs/{j['id']}").json()["state"] == "cancelled"


@pytest.mark.slow
def test_crash_mid_job_resumes_from_its_checkpoint_then_queued_jobs_run(home, scene, servers):  # noqa: F811
    import mlflow

    srv = servers("--dev", "--max-jobs", "1")
    c = srv.client()
    assert upload_dataset(c, scene, "fields")["state"] == "succeeded"
    long = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "long", **LONG}).json()
    short = c.post(
        "/v1/finetunes", json={"dataset": "fields", "model_name": "short", **TINY}
    ).json()
    ckpt = home / "serve" / "jobs" / long["id"] / "run" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.is_file() and time.time() < deadline:  # an epoch's checkpoint is written
        time.sleep(0.5)
    running = wait_progress(c, long["id"])
    assert c.get(f"/v1/jobs/{short['id']}").json()["state"] == "queued"  # at most 1 at once
    pid = pid_of(home, long["id"])
    assert alive(pid)

    srv.stop(signal.SIGKILL)  # a crash: no shutdown handler runs
    srv2 = servers("--dev", "--max-jobs", "1")
    c2 = srv2.client()
    assert not alive(pid)  # the left-over training process was stopped
    old_run = running["progress"]["run_id"]
    assert mlflow.MlflowClient().get_run(old_run).info.status in ("KILLED", "FAILED")  # closed
    argv = job_record(home, long["id"])["argv"]
    assert [a for a in argv if a.startswith("resume=")] == [f"resume='{ckpt}'"]
    assert "queued again to resume from its last checkpoint" in job_record(home, long["id"])["note"]
    # the resumed process continues from the checkpoint's step, in a new MLflow run
    deadline = time.time() + 300
    while time.time() < deadline:
        job = c2.get(f"/v1/jobs/{long['id']}").json()
        if job["progress"].get("run_id") not in (None, old_run) and job["progress"].get("step"):
            break
        time.sleep(0.5)
    assert job["state"] == "running" and job["resumes"] == 1, job
    assert job["progress"]["step"] >= running["progress"]["step"] > 0
    logs = c2.get(f"/v1/jobs/{long['id']}/logs").text
    assert "Restored all states from the checkpoint at <job>/run/checkpoints/last.ckpt" in logs
    assert str(home) not in logs
    assert c2.delete(f"/v1/jobs/{long['id']}").json()["state"] == "cancelled"

    # the job that was queued before the crash runs now, to success
    done = wait_job(c2, short["id"])
    assert done["state"] == "succeeded", c2.get(f"/v1/jobs/{short['id']}/logs").text[-3000:]
    assert done["result"]["model"] == "short"
    assert [m["name"] for m in c2.get("/v1/models").json()["models"]] == ["short"]


def test_cancel_queued_and_running_jobs(home, scene, servers):  # noqa: F811
    srv = servers("--dev", "--max-jobs", "1")
    c = srv.client()
    assert upload_dataset(c, scene, "fields")["state"] == "succeeded"
    a = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "a", **LONG}).json()
    b = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "b", **LONG}).json()
    assert c.delete(f"/v1/jobs/{b['id']}").json()["state"] == "cancelled"  # still queued
    assert_error(c.delete(f"/v1/jobs/{b['id']}"), 409, "nothing to cancel")
    wait_job(c, a["id"], until=("running",))
    pid = pid_of(home, a["id"])
    job = c.delete(f"/v1/jobs/{a['id']}").json()
    assert job["state"] == "cancelled" and not alive(pid)
    assert_error(c.get(f"/v1/jobs/{a['id']}/result"), 409, "cancelled")
    states = {j["id"]: j["state"] for j in c.get("/v1/jobs?kind=finetune").json()["jobs"]}
    assert states == {a["id"]: "cancelled", b["id"]: "cancelled"}


@pytest.mark.slow
def test_graceful_stop_queues_the_running_job_to_resume(home, scene, servers):  # noqa: F811
    srv = servers("--dev")
    c = srv.client()
    assert upload_dataset(c, scene, "fields")["state"] == "succeeded"
    job = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "m", **LONG}).json()
    wait_progress(c, job["id"])
    pid = pid_of(home, job["id"])
    srv.stop(signal.SIGTERM)
    assert not alive(pid)
    rec = job_record(home, job["id"])
    assert rec["state"] == "queued" and "server was stopped" in rec["note"]
    c2 = servers("--dev").client()
    assert wait_job(c2, job["id"], until=("running",))["resumes"] == 1
    assert c2.delete(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"
