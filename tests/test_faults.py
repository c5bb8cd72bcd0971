"""Crashes: `kill -9` of a real `geotune serve` during an upload, an ingest job, a prediction job
and after a fine-tune registered but before the server recorded it; then a restart. Nothing is
half-listed, no job is left running, no temporary folder is left behind, and one fine-tune
request gives at most one registered version."""

import signal
import threading
import time

import httpx
import mlflow
from synth import make_labels, make_scene
from test_serve import TINY, post_dataset, servers, upload_dataset, wait_job  # noqa: F401

from serve.jobs import JobStore


def wait_state(client: httpx.Client, job_id: str, state: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == state:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never {state}: {job}")


def leftovers(home) -> list[str]:
    """Temporary folders a crash could leave: staged uploads, datasets being built."""
    staged = home / "serve" / "uploads"
    found = list(staged.glob("*")) if staged.is_dir() else []
    for root in (home / "datasets", home / "serve" / "datasets"):
        found += list(root.rglob(".tmp-*")) if root.is_dir() else []
    return [str(p) for p in found]


def test_kill_during_upload_ingest_and_prediction_then_restart(home, servers, tmp_path):  # noqa: F811
    image, cmap = make_scene(tmp_path, size=256, seed=3)
    labels = make_labels(tmp_path, image, cmap)
    scene = {"image": image, "labels": labels}
    srv = servers("--dev", "--sync-pixels", "5000")
    c = srv.client()

    # 1. the server dies while a client is still sending an upload
    def stalled_body():
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nhalf\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.tif"\r\n\r\n'
        yield image.read_bytes()[:50_000]
        time.sleep(30)

    def send():
        try:
            c.post("/v1/datasets", content=stalled_body(),
                   headers={"content-type": "multipart/form-data; boundary=b"}, timeout=60)  # fmt: skip
        except httpx.HTTPError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(2)
    srv.stop(signal.SIGKILL)

    # 2. ... and while an ingest job runs
    srv = servers("--dev", "--sync-pixels", "5000")
    c = srv.client()
    assert c.get("/v1/datasets").json()["datasets"] == [] and not leftovers(home)
    r = post_dataset(c, scene, "fields")
    assert r.status_code == 202, r.text
    ingest = wait_state(c, r.json()["id"], "running")
    srv.stop(signal.SIGKILL)
    srv = servers("--dev", "--sync-pixels", "5000")
    c = srv.client()
    assert [d["id"] for d in c.get("/v1/datasets").json()["datasets"]] in ([], ["fields"])
    job = wait_job(c, ingest["id"])
    assert job["state"] == "succeeded" and (
        job["resumes"] == 1 or "not run again" in job["note"]
    ), job
    assert [d["id"] for d in c.get("/v1/datasets").json()["datasets"]] == ["fields"]
    assert not leftovers(home)

    # 3. a fine-tune registered its version, then the server died before it recorded that
    r = c.post("/v1/finetunes", json={"dataset": "fields", "model_name": "m", **TINY})
    tune = wait_job(c, r.json()["id"])
    assert tune["state"] == "succeeded", c.get(f"/v1/jobs/{tune['id']}/logs").text[-3000:]
    srv.stop(signal.SIGKILL)
    store = JobStore(home / "serve" / "jobs", db=home / "serve" / "jobs.db")
    store.update(tune["id"], state="running", result=None, finished=None)
    srv = servers("--dev", "--sync-pixels", "5000")
    c = srv.client()
    job = c.get(f"/v1/jobs/{tune['id']}").json()
    assert job["state"] == "succeeded" and job["result"]["version"] == 1, job
    versions = mlflow.MlflowClient().search_model_versions("name='m'")
    assert [int(v.version) for v in versions] == [1]

    # 4. the server dies while a prediction job runs; it runs again after the restart
    with open(image, "rb") as f:
        r = c.post("/v1/models/m/predict", files={"image": ("scene.tif", f)})
    assert r.status_code == 202, r.text
    wait_state(c, r.json()["id"], "running")
    srv.stop(signal.SIGKILL)
    srv = servers("--dev", "--sync-pixels", "5000")
    c = srv.client()
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "succeeded", c.get(f"/v1/jobs/{job['id']}/logs").text[-3000:]
    answer = c.get(f"/v1/jobs/{job['id']}/result").json()
    assert answer["n_pixels"] == 256 * 256
    assert not [j for j in c.get("/v1/jobs").json()["jobs"] if j["state"] in ("queued", "running")]
    assert not leftovers(home)
