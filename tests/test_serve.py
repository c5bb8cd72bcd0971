"""The HTTP service as a client sees it: a real `geotune serve` (uvicorn) on a loopback port,
started and stopped by the test, and a real HTTP client (httpx).

The whole flow: keys, upload a dataset, a tiny fine-tune job polled to success, predictions by
alias (synchronous and as a 202 job), the COG and GeoJSON checked; a second owner gets 404 on
every one of the first owner's objects and outputs; requests without a key get 401."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from conftest import env_with_home
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from synth import make_scene

GEOTUNE = [sys.executable, "-m", "trainer.cli"]
TINY = {
    "backbone": "resnet18", "size": "tiny", "weights": "random", "epochs": 1, "patch_size": 64,
    "batch_size": 8, "num_workers": 0, "chips_per_epoch": 32,
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`geotune serve` in a subprocess on 127.0.0.1 with its own GEOTUNE_HOME."""

    def __init__(self, home: Path, *args: str):
        self.home, self.args = home, args
        self.proc: subprocess.Popen | None = None
        self.log = home.parent / f"serve-{time.time_ns()}.log"

    def start(self, timeout: float = 90) -> "Server":
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*GEOTUNE, "serve", "--port", str(self.port), *self.args],
                env=env_with_home(self.home), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server did not start: {self.log.read_text()[-3000:]}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)


@pytest.fixture
def servers(home):
    """Start servers with ``servers(*args)``; all are stopped at the end of the test."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        started.append(Server(home, *args).start())
        return started[-1]

    yield start
    for s in started:
        s.stop(signal.SIGKILL)


def create_key(home: Path, owner: str) -> str:
    p = subprocess.run(
        [*GEOTUNE, "keys", "create", "--owner", owner],
        capture_output=True, text=True, env=env_with_home(home), timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert key.startswith("gtk_") and "\n" not in key and "shown once" in p.stderr
    return key


def post_dataset(client: httpx.Client, scene: dict, name: str) -> httpx.Response:
    with open(scene["image"], "rb") as img, open(scene["labels"], "rb") as lab:
        return client.post(
            "/v1/datasets",
            data={"name": name, "class_column": "class_name", "block_size": "32"},
            files={"image": ("scene.tif", img, "image/tiff"), "labels": ("labels.geojson", lab)},
        )


def upload_dataset(client: httpx.Client, scene: dict, name: str) -> dict:
    """POST /v1/datasets (202 and a job) and wait for its ingest job; returns the finished job."""
    r = post_dataset(client, scene, name)
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "ingest" and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return wait_job(client, r.json()["id"])


def ingest_job(client: httpx.Client, r: httpx.Response) -> dict:
    """The finished ingest job of a 202 answer to POST /v1/datasets."""
    assert r.status_code == 202, r.text
    return wait_job(client, r.json()["id"])


def wait_job(
    client: httpx.Client, job_id: str, until=("succeeded", "failed", "cancelled"), timeout=300
):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")


def assert_error(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) >= {"error", "detail"} and "Traceback" not in r.text, body
    for w in words:
        assert w in body["detail"], (w, body)
    return body


def crop(src: Path, dst: Path, size: int) -> Path:
    with rasterio.open(src) as s:
        profile = s.profile | {"width": size, "height": size,
                               "transform": s.window_transform(Window(0, 0, size, size))}  # fmt: skip
        with rasterio.open(dst, "w", **profile) as d:
            d.write(s.read(window=Window(0, 0, size, size)))
            d.descriptions = s.descriptions
    return dst


def check_prediction(client: httpx.Client, answer: dict, image: Path, tmp: Path) -> None:
    """The COG is valid, the polygons lie inside the scene, the histogram sums to n_pixels."""
    from rio_cogeo.cogeo import cog_validate

    with rasterio.open(image) as src:
        w, h = src.width, src.height
        lon0, lat0, lon1, lat1 = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert answer["n_pixels"] == w * h  # the synthetic scene has no nodata
    assert sum(row["pixels"] for row in answer["class_histogram"]) == answer["n_pixels"]
    assert abs(sum(row["fraction"] for row in answer["class_histogram"]) - 1) < 1e-3
    cog = client.get(answer["links"]["classes"])
    assert cog.status_code == 200 and cog.headers["content-type"].startswith("image/tiff")
    (tmp / "classes.tif").write_bytes(cog.content)
    valid, errors, _ = cog_validate(tmp / "classes.tif", quiet=True)
    assert valid, errors
    with rasterio.open(tmp / "classes.tif") as c:
        assert (c.width, c.height) == (w, h)
        counts = np.bincount(c.read(1).ravel(), minlength=256)
    assert [int(counts[r["id"]]) for r in answer["class_histogram"]] == [
        r["pixels"] for r in answer["class_histogram"]
    ]
    fc = answer["polygons"]
    assert fc["type"] == "FeatureCollection" and fc["features"]
    assert fc == client.get(answer["links"]["polygons"]).json()
    eps = 1e-6
    for f in fc["features"]:
        rings = f["geometry"]["coordinates"]
        rings = (
            [r for poly in rings for r in poly]
            if f["geometry"]["type"] == "MultiPolygon"
            else rings
        )
        xy = np.array([pt for ring in rings for pt in ring])
        assert (xy[:, 0] >= lon0 - eps).all() and (xy[:, 0] <= lon1 + eps).all()
        assert (xy[:, 1] >= lat0 - eps).all() and (xy[:, 1] <= lat1 + eps).all()


def test_flow_keys_owners_jobs_predictions(home, scene, servers, tmp_path):
    alice_key, bob_key = create_key(home, "alice"), create_key(home, "bob")
    srv = servers("--sync-pixels", "5000")
    anon, alice, bob = srv.client(), srv.client(alice_key), srv.client(bob_key)

    # no key, a wrong key, a revoked key → 401 with a message that says how to get one
    r = anon.get("/v1/datasets")
    assert_error(r, 401, "Authorization: Bearer", "geotune keys create")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(srv.client("gtk_00000000_nope").get("/v1/models"), 401, "not valid")
    r = anon.post("/v1/datasets", files={"image": ("a.tif", b"II*\x00" + bytes(2_000_000))})
    assert_error(r, 401, "needs an API key")  # refused before the upload is read
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").json()["status"] == "ready"

    # a dataset from an upload; the same name again is 409; a bad upload is a message
    job = upload_dataset(alice, scene, "fields")
    assert job["state"] == "succeeded", job
    ds = job["result"]["dataset"]
    assert ds["id"] == "fields" and ds["owner"] == "alice" and len(ds["classes"]) == 3
    assert job["links"]["dataset"] == "/v1/datasets/fields"
    assert alice.get("/v1/datasets/fields").json() == ds
    assert_error(post_dataset(alice, scene, "fields"), 409, "already have a dataset")
    with open(scene["image"], "rb") as img:
        r = alice.post(
            "/v1/datasets", data={"name": "x"}, files={"image": img, "labels": ("my.txt", b"hello")}
        )
    assert_error(r, 422, "my.txt", "GeoJSON")
    assert [d["id"] for d in alice.get("/v1/datasets").json()["datasets"]] == ["fields"]

    # a tiny fine-tune job, polled to success
    r = alice.post("/v1/finetunes", json={"dataset": "fields", "model_name": "fieldmodel", **TINY})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (
        job["state"] in ("queued", "running") and r.headers["location"] == f"/v1/jobs/{job['id']}"
    )
    assert_error(
        alice.post("/v1/finetunes", json={"dataset": "fields", "model_name": "fieldmodel", **TINY}),
        409, "already training",
    )  # fmt: skip
    assert_error(alice.delete("/v1/datasets/fields"), 409, job["id"])
    job = wait_job(alice, job["id"])
    assert job["state"] == "succeeded", (job, alice.get(f"/v1/jobs/{job['id']}/logs").text[-3000:])
    assert job["result"]["model"] == "fieldmodel" and job["result"]["version"] == 1
    assert job["progress"]["epoch"] == 1 and job["progress"]["step"] > 0
    assert "test/mIoU" in job["progress"]["metrics"] and "test/mIoU" in job["result"]["metrics"]
    assert "registered: alice.fieldmodel version 1" in alice.get(f"/v1/jobs/{job['id']}/logs").text

    # the model: namespaced and tagged in MLflow, listed and described for its owner
    models = alice.get("/v1/models").json()["models"]
    assert [(m["name"], m["registered_name"], m["aliases"]) for m in models] == [
        ("fieldmodel", "alice.fieldmodel", {"champion": 1})
    ]
    detail = alice.get("/v1/models/fieldmodel").json()
    assert detail["bands"] == ["blue", "green", "red", "nir08"]
    assert [c["name"] for c in detail["classes"]] == ["field", "forest", "water"]
    assert "test/mIoU" in detail["versions"][0]["metrics"]
    import mlflow

    rm = mlflow.MlflowClient().get_registered_model("alice.fieldmodel")
    assert rm.tags["owner"] == "alice"
    assert (
        alice.put("/v1/models/fieldmodel/aliases/staging", json={"version": 1}).json()["version"]
        == 1
    )
    assert_error(
        alice.put("/v1/models/fieldmodel/aliases/x", json={"version": 9}), 404, "versions [1]"
    )

    # predict by alias: a small scene answers at once, a large one (over --sync-pixels) is a job
    small = crop(scene["image"], tmp_path / "small.tif", 64)
    with open(small, "rb") as f:
        r = alice.post("/v1/models/fieldmodel/predict?alias=champion", files={"image": ("small.tif", f)},
                       data={"min_area_m2": "0"})  # fmt: skip
    assert r.status_code == 200, r.text
    sync = r.json()
    assert sync["model"] == {"name": "fieldmodel", "version": 1, "alias": "champion"}
    assert sync["provenance"]["inputs"] == ["small.tif"]
    check_prediction(alice, sync, small, tmp_path)
    with open(scene["image"], "rb") as f:
        r = alice.post("/v1/models/fieldmodel/predict", files={"image": ("scene.tif", f)})
    assert r.status_code == 202, r.text
    pjob = wait_job(alice, r.json()["id"])
    assert pjob["state"] == "succeeded", alice.get(f"/v1/jobs/{pjob['id']}/logs").text[-3000:]
    answer = alice.get(f"/v1/jobs/{pjob['id']}/result").json()
    assert set(answer) == set(sync)
    check_prediction(alice, answer, scene["image"], tmp_path)

    # AOI + dates: checked before any imagery is searched (the search itself: test_stac_serve.py)
    aoi = {"type": "Polygon", "coordinates": [[[0, 0], [0.1, 0], [0.1, 0.1], [0, 0.1], [0, 0]]]}
    body = {
        "aoi": aoi,
        "start_date": "2024-06-01",
        "end_date": "2024-06-30",
        "sensor": "sentinel-2-l2a",
    }
    bad = {**body, "start_date": "2024-07-01"}
    assert_error(
        alice.post("/v1/models/fieldmodel/predict", json=bad), 422, "start_date is after end_date"
    )
    big = {
        **body,
        "aoi": {"type": "Polygon", "coordinates": [[[0, 0], [3, 0], [3, 3], [0, 3], [0, 0]]]},
    }
    assert (
        assert_error(alice.post("/v1/models/fieldmodel/predict", json=big), 422, "km²")["limit_km2"]
        > 0
    )

    # another owner: every one of alice's objects and outputs is 404, lists are empty
    sync_id = sync["prediction_id"]
    for method, path in [
        ("GET", "/v1/datasets/fields"), ("DELETE", "/v1/datasets/fields"),
        ("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/logs"),
        ("DELETE", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{pjob['id']}/result"),
        ("GET", "/v1/models/fieldmodel"), ("GET", f"/v1/predictions/{sync_id}"),
        ("GET", f"/v1/predictions/{sync_id}/classes.tif"),
        ("GET", f"/v1/predictions/{answer['prediction_id']}/polygons.geojson"),
        ("DELETE", f"/v1/predictions/{sync_id}"),
    ]:  # fmt: skip
        assert_error(bob.request(method, path), 404)
    assert_error(bob.put("/v1/models/fieldmodel/aliases/champion", json={"version": 1}), 404)
    with open(small, "rb") as f:
        assert_error(bob.post("/v1/models/fieldmodel/predict", files={"image": f}), 404)
    assert_error(
        bob.post("/v1/finetunes", json={"dataset": "fields", "model_name": "m", **TINY}), 404
    )
    for path in ("/v1/datasets", "/v1/models", "/v1/jobs"):
        assert list(bob.get(path).json().values()) == [[]], path
    # ... and the same names are free in bob's namespace
    assert upload_dataset(bob, scene, "fields")["result"]["dataset"]["owner"] == "bob"
    r = bob.post("/v1/finetunes", json={"dataset": "fields", "model_name": "fieldmodel", **TINY})
    assert r.status_code == 202, r.text
    assert bob.delete(f"/v1/jobs/{r.json()['id']}").json()["state"] == "cancelled"

    # alice deletes a prediction: its answer, files and folder are gone
    assert alice.delete(f"/v1/predictions/{sync_id}").status_code == 204
    assert_error(alice.get(f"/v1/predictions/{sync_id}"), 404)
    assert_error(alice.get(f"/v1/predictions/{sync_id}/classes.tif"), 404)
    assert_error(alice.delete(f"/v1/predictions/{sync_id}"), 404)
    assert not (home / "serve" / "predictions" / sync_id).exists()
    assert alice.get(f"/v1/predictions/{answer['prediction_id']}").status_code == 200
    assert alice.delete(f"/v1/predictions/{answer['prediction_id']}").status_code == 204
    assert_error(alice.get(f"/v1/jobs/{pjob['id']}/result"), 410, "was deleted", "predict again")

    # a revoked key stops working at once
    key_id = alice_key.split("_")[1]
    subprocess.run(
        [*GEOTUNE, "keys", "revoke", key_id], env=env_with_home(home), check=True, timeout=60
    )
    assert_error(alice.get("/v1/datasets"), 401, "revoked")


def test_errors_are_json_with_actionable_messages(home, scene, servers, tmp_path):
    srv = servers("--dev", "--max-upload-mb", "0.5")
    c = srv.client()
    assert_error(c.get("/v1/nothing"), 404, "/docs")
    assert_error(c.put("/v1/datasets"), 405, "accepts")
    body = assert_error(c.post("/v1/finetunes", json={"dataset": "x", "epochs": 0}), 422, "epochs")
    assert {f["field"] for f in body["fields"]} >= {"body.model_name", "body.epochs"}
    assert_error(
        c.post("/v1/finetunes", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )
    assert_error(c.get("/v1/datasets/..%2F..%2Fetc"), 404, "GET /v1/datasets")
    assert_error(c.get("/v1/jobs/job-../../x"), 404)
    assert_error(c.get("/v1/predictions/pred-000000000000/..%2Fsummary.json"), 404)
    assert_error(c.get("/v1/models/nope"), 404, "GET /v1/models")

    # 413: over the upload limit, refused before the body is read
    big = np.zeros(600_000, dtype=np.uint8).tobytes()
    r = c.post(
        "/v1/datasets",
        data={"name": "big"},
        files={"image": ("a.tif", big), "labels": ("l.geojson", b"{}")},
    )
    assert_error(r, 413, "0.5 MB")

    def chunks():  # no Content-Length: the limit applies while the body is read
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.tif"\r\n\r\n'
        for _ in range(20):
            yield b"x" * 65536

    r = c.post(
        "/v1/datasets",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(r, 413, "0.5 MB")

    # client file names never become paths: the upload lands under the server's own name
    hostile = "/vsicurl/http://127.0.0.1:9/../../../../tmp/evil.tif"
    with open(scene["image"], "rb") as img, open(scene["labels"], "rb") as lab:
        r = c.post("/v1/datasets", data={"name": "safe", "class_column": "class_name", "block_size": "32"},
                   files={"image": (hostile, img), "labels": ("../../labels.geojson", lab)})  # fmt: skip
    job = ingest_job(c, r)
    assert job["state"] == "succeeded", job
    assert not Path("/tmp/evil.tif").exists()
    assert all(".." not in n and "/" not in n for n in job["result"]["dataset"]["source"]["images"])

    # a fine-tune asking for pretrained weights that are not in the weights directory → 422
    r = c.post(
        "/v1/finetunes",
        json={"dataset": "safe", "model_name": "m", "backbone": "prithvi_eo_v2_300"},
    )
    assert (
        assert_error(r, 422, "Prithvi_EO_V2_300M.pt", "weights directory")["expected_file"]
        == "Prithvi_EO_V2_300M.pt"
    )
    assert_error(
        c.post("/v1/finetunes", json={"dataset": "safe", "model_name": "m", "backbone": "vgg"}),
        422,
        "resnet18",
    )
    assert_error(
        c.post("/v1/finetunes", json={"dataset": "safe", "model_name": "a/b", **TINY}),
        422,
        "model name",
    )
    r = c.post("/v1/finetunes", json={"dataset": "safe", "model_name": "m", **TINY, "size": "xl"})
    assert_error(r, 422, "its sizes are")
    r = c.post(
        "/v1/finetunes",
        json={"dataset": "safe", "model_name": "m", **TINY, "weights": "pretrained"},
    )
    assert_error(r, 422, "official size", '"weights": "random"')


def test_change_dataset_from_class_polygons_of_two_dates(home, scene, servers):
    """``labels_after`` over HTTP: change labels derived from two dates' class polygons; a
    misuse is a 422 that names the form fields."""
    c = servers("--dev").client()
    with open(scene["image"], "rb") as img, open(scene["labels"], "rb") as lab:
        files = [("image", ("t0.tif", img.read())), ("labels", ("lc0.geojson", lab.read()))]
    after = json.loads(files[1][1][1])
    for f in after["features"][::3]:  # a third of the polygons change class
        f["properties"]["class_name"] += "_new"
    files.append(("labels_after", ("lc1.geojson", json.dumps(after).encode())))
    form = {"name": "lc", "class_column": "class_name", "block_size": "32"}
    body = assert_error(c.post("/v1/datasets", data=form, files=files), 422, "labels_after field")
    assert "task=change" in body["detail"] and "the labels field." in body["detail"]
    # the second date must be another image: the same bytes twice are refused
    job = ingest_job(
        c, c.post("/v1/datasets", data=form | {"task": "change"}, files=files + [files[0]])
    )
    assert job["state"] == "failed" and "byte-identical" in job["error"], job
    later, _ = make_scene(scene["dir"], size=128, seed=1, name="t1.tif")
    second = ("image", ("t1.tif", later.read_bytes()))
    job = ingest_job(
        c, c.post("/v1/datasets", data=form | {"task": "change"}, files=[*files, second])
    )
    assert job["state"] == "succeeded", job
    ds = job["result"]["dataset"]
    assert ds["source"]["labels_after"].endswith("lc1.geojson")
    assert [k["name"] for k in ds["classes"]] == ["no_change", "change"]
