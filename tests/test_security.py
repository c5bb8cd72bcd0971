"""Hostile uploads against a real `geotune serve`: nothing outside the owner's folder is read,
no URL is fetched, and every bomb costs a bounded amount, in the ingest job's process and not
the server's.

Two canaries: a loopback HTTP listener that must see no request, and a labels file outside every
owner's folder whose class name must never come back (in an answer, a job, a log or a dataset).
The server's peak memory is read from /proc before and after.
"""

import http.server
import json
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely
from conftest import env_with_home
from hostile import (
    boxes,
    gdalg,
    geopackage_with,
    many_vertices,
    ogr_vrt,
    shapefile_members,
    sparse_tiff,
    truncated,
    zip_bytes,
)
from rasterio.warp import transform_bounds
from synth import make_labels, make_scene
from test_serve import GEOTUNE, Server, assert_error, wait_job

LIMITS = ["--max-features", "400", "--max-vertices", "20000", "--max-unpacked-mb", "2",
          "--max-pixels", "4000000", "--max-queued-predictions", "1"]  # fmt: skip


class Canary(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (the http.server hook's name)
        Canary.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"type": "FeatureCollection", "features": []}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    home = tmp / "home"
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    token = f"CANARY{secrets.token_hex(4)}"
    image, cmap = make_scene(tmp, size=128, seed=0)
    labels = make_labels(tmp, image, cmap)
    with rasterio.open(image) as src:
        crs, bounds = src.crs, src.bounds
    # the canary file: labels a real dataset could be made of, outside every owner's folder
    canary_file = tmp / "secret" / "labels.geojson"
    canary_file.parent.mkdir()
    secret = gpd.read_file(labels).assign(class_name=token)
    secret.to_file(canary_file, driver="GeoJSON")
    (tmp / "secret" / "passwd.csv").write_text(f"name,wkt\n{token},POINT (0 0)\n")
    # a registered model of the local user, for the predict uploads
    p = subprocess.run(
        [*GEOTUNE, "data", "add", "--name", "m", "--image", str(image), "--labels", str(labels),
         "--class-column", "class_name", "--block-size", "32"],
        env=env_with_home(home), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    p = subprocess.run(
        [*GEOTUNE, "train", "data.dataset=m", "backbone.size=tiny", "backbone.weights=random",
         "data.patch_size=64", "data.num_workers=0", "data.chips_per_epoch=16",
         "trainer.max_epochs=1", "register.name=m", "register.alias=champion"],
        env=env_with_home(home), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    srv = Server(home, "--dev", *LIMITS).start()
    yield {
        "srv": srv, "c": srv.client(), "tmp": tmp, "home": home, "image": image,
        "labels": labels, "crs": crs, "bounds": bounds, "token": token,
        "url": f"http://127.0.0.1:{listener.server_address[1]}", "canary_file": canary_file,
    }  # fmt: skip
    srv.stop()
    listener.shutdown()


def upload(w, labels: tuple[str, bytes], name: str, **form) -> httpx.Response:
    files = [("image", ("scene.tif", w["image"].read_bytes())), ("labels", labels)]
    data = {"name": name, "class_column": "class_name", "block_size": "32"} | form
    return w["c"].post("/v1/datasets", data=data, files=files)


def refused(w, r: httpx.Response, *words: str) -> str:
    """The refusal of an upload: a 422 at once, or a 202 whose ingest job fails; its message."""
    if r.status_code == 202:
        job = wait_job(w["c"], r.json()["id"], timeout=120)
        assert job["state"] == "failed", job
        message = job["error"]
        logs = w["c"].get(f"/v1/jobs/{job['id']}/logs").text
        assert "Traceback" not in logs and str(w["home"]) not in logs, logs[-2000:]
    else:
        message = assert_error(r, 422)["detail"]
    for word in words:
        assert word in message, (word, message)
    assert str(w["home"]) not in message and "/tmp" not in message, message
    return message


def assert_nothing_leaked(w) -> None:
    assert Canary.seen == [], Canary.seen
    c = w["c"]
    texts = [c.get("/v1/datasets").text, c.get("/v1/jobs").text]
    texts += [c.get(f"/v1/jobs/{j['id']}/logs").text for j in c.get("/v1/jobs").json()["jobs"]]
    assert not any(w["token"] in t for t in texts)
    assert [d["id"] for d in c.get("/v1/datasets").json()["datasets"]] == ["m"]


def test_labels_never_reach_other_files_or_urls(world):
    w, url, secret = world, world["url"], str(world["canary_file"])
    gdf = gpd.read_file(w["labels"])
    shp = shapefile_members(gdf, w["tmp"] / "shp-ok")
    cases = [
        # the reported attack: an OGR VRT in a zip, pointing at a URL, a file, another database
        (("l.zip", zip_bytes({"labels.vrt": ogr_vrt(f"/vsicurl/{url}/x.geojson")})), ["labels.vrt", ".shp"]),
        (("l.zip", zip_bytes({"labels.vrt": ogr_vrt(secret)})), ["labels.vrt"]),
        (("l.zip", zip_bytes({"labels.vrt": ogr_vrt(str(w["home"] / "mlflow.db"))})), ["labels.vrt"]),
        (("l.zip", zip_bytes({"passwd.csv": b"name\nroot"})), ["passwd.csv"]),
        # a real shapefile with an extra member, a link, a path out of the zip, two shapefiles
        (("l.zip", zip_bytes(shp | {"x.vrt": ogr_vrt(secret)})), ["x.vrt"]),
        (("l.zip", zip_bytes({k: v for k, v in shp.items() if k != "fields.shp"},
                             links={"fields.shp": secret})), ["link"]),
        (("l.zip", zip_bytes({f"../../{k}": v for k, v in shp.items()})), ["outside the zip"]),
        (("l.zip", zip_bytes(shp | {f"b/{k.replace('fields', 'other')}": v for k, v in shp.items()})),
         ["more than one"]),
        # an ArcGIS File Geodatabase, zipped: not opened over HTTP, the export line said
        (("l.zip", zip_bytes({"fields.gdb/a00000001.gdbtable": b"\x03\x00\x00\x00"})),
         ["a00000001.gdbtable", "not a File Geodatabase", "ogr2ogr -f GPKG"]),
        # JSON that is a GDAL pipeline, not GeoJSON; a GeoJSON whose CRS is a URL
        (("l.geojson", gdalg(f"/vsicurl/{url}/x.geojson")), ["cannot read labels"]),
        (("l.geojson", gdalg(secret)), ["cannot read labels"]),
        # a VRT sent as labels or as the image; a plain SQLite database; GeoPackage views
        (("l.vrt", ogr_vrt(secret)), ["not a format geotune reads"]),
        (("labels.gpkg", (w["home"] / "mlflow.db").read_bytes()), ["not a GeoPackage"]),
    ]  # fmt: skip
    gpkg = geopackage_with(
        w["tmp"] / "view.gpkg", gdf,
        "CREATE VIEW v AS SELECT * FROM labels;"
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, srs_id) "
        "SELECT 'v', 'features', 'v', srs_id FROM gpkg_contents WHERE table_name = 'labels';",
    )  # fmt: skip
    cases.append((("l.gpkg", gpkg.read_bytes()), ["view"]))
    virt = geopackage_with(
        w["tmp"] / "virtual.gpkg", gdf,
        "PRAGMA writable_schema=ON;"
        "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('table', 'x', "
        f"'x', 0, 'CREATE VIRTUAL TABLE x USING VirtualOGR(''{secret}'')');",
    )  # fmt: skip
    cases.append((("l.gpkg", virt.read_bytes()), ["virtual table"]))
    for i, (labels, words) in enumerate(cases):
        refused(w, upload(w, labels, f"attack{i}"), *words)
    crs_url = json.loads(w["labels"].read_text()) | {
        "crs": {"type": "name", "properties": {"name": f"{url}/crs.json"}}
    }
    r = upload(w, ("l.geojson", json.dumps(crs_url).encode()), "crsurl")
    assert r.status_code == 202 and wait_job(w["c"], r.json()["id"])["state"] in (
        "succeeded",
        "failed",
    )
    w["c"].delete("/v1/datasets/crsurl")
    r = w["c"].post(
        "/v1/datasets", data={"name": "img"},
        files=[("image", ("scene.tif", ogr_vrt(secret))), ("labels", ("l.geojson", b"{}"))],
    )  # fmt: skip
    refused(w, r, "not a format geotune reads")
    assert_nothing_leaked(w)


def test_the_reader_process_has_only_the_allowed_drivers(world, tmp_path):
    """The driver allow-list alone (no network namespace, no structure checks) stops a GDAL
    pipeline and a VRT: the process that reads uploads cannot open them."""
    from serve.untrusted import job_env

    pipe = tmp_path / "pipe.geojson"
    pipe.write_bytes(gdalg(f"/vsicurl/{world['url']}/y.geojson"))
    vrt = tmp_path / "l.vrt"
    vrt.write_bytes(ogr_vrt(f"/vsicurl/{world['url']}/z.geojson"))
    code = (
        "import sys, pyogrio\n"
        "for p in sys.argv[1:]:\n"
        "    try: pyogrio.read_dataframe(p); print('opened', p)\n"
        "    except Exception as e: print('refused', p)\n"
        "print(sorted(pyogrio.list_drivers()))\n"
    )
    env = env_with_home(world["home"]) | job_env()
    p = subprocess.run([sys.executable, "-c", code, str(pipe), str(vrt)], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("refused") == 2 and "opened" not in p.stdout, p.stdout
    assert "['ESRI Shapefile', 'FlatGeobuf', 'GPKG', 'GeoJSON', 'MEM']" in p.stdout
    assert Canary.seen == []


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_bombs_cost_a_bounded_amount_outside_the_server(world):
    w = world
    c, tmp = w["c"], w["tmp"]
    srv_pid = w["srv"].proc.pid
    before = peak_rss_mb(srv_pid)
    crs, bounds = w["crs"], w["bounds"]
    # a mask declaring 100000² pixels in a few KB: refused from its header, at once
    r = upload(w, ("mask.tif", sparse_tiff(tmp / "sparse.tif", 100_000).read_bytes()), "mask")
    body = assert_error(r, 422, "10,000,000,000 pixels", "at most 4,000,000")
    assert body["limit_pixels"] == 4_000_000
    # more features than the limit: refused from the shapefile's header, in the job
    many = boxes(bounds, crs, 1000)
    z = zip_bytes(shapefile_members(many, tmp / "shp-many"))
    refused(w, upload(w, ("many.zip", z), "many"), "1,000 features", "at most 400")
    refused(w, upload(w, ("many.fgb", _write(many, tmp / "many.fgb", "FlatGeobuf")), "manyfgb"),
            "1,000 features")  # fmt: skip
    # one polygon with more vertices than the limit: refused before it is rasterized
    circle = many_vertices(bounds, crs, 50_000)
    refused(w, upload(w, ("circle.gpkg", _write(circle, tmp / "c.gpkg", "GPKG")), "circle"),
            "50,001 vertices", "at most 20,000")  # fmt: skip
    # a zip that unpacks past the limit (highly compressible), refused before it is unpacked
    shp = shapefile_members(boxes(bounds, crs, 5), tmp / "shp-few")
    bomb = zip_bytes(shp | {"fields.cpg": b"UTF-8" + b" " * 5_000_000})
    assert len(bomb) < 100_000
    refused(w, upload(w, ("bomb.zip", bomb), "bomb"), "unpacks to", "2 MB")
    # a GeoTIFF cut short: a 422 at once, for datasets and predictions alike
    cog = tmp / "cog.tif"
    with rasterio.open(w["image"]) as src:
        rasterio.shutil.copy(src, cog, driver="COG", blocksize=64)  # the header first
    short = truncated(cog, tmp / "short.tif").read_bytes()
    r = c.post("/v1/datasets", data={"name": "short", "class_column": "class_name"},
               files=[("image", ("short.tif", short)), ("labels", ("l.geojson", w["labels"].read_bytes()))])  # fmt: skip
    refused(w, r, "short.tif", "cut short")
    r = c.post("/v1/models/m/predict", files={"image": ("short.tif", short)})
    refused(w, r, "short.tif", "cut short")
    after = peak_rss_mb(srv_pid)
    assert after - before < 200, (before, after)
    assert_nothing_leaked(w)


def test_names_are_checked_before_anything_is_written(world):
    w = world
    labels = ("l.geojson", w["labels"].read_bytes())
    long = "a" * 300
    refused(w, upload(w, labels, long), "300 characters", "1-64 characters")
    refused(w, upload(w, labels, "!!!"), "no letter or digit")
    refused(w, upload(w, labels, "b" * 120), "120 characters")
    assert not any(
        p.name.startswith(("a" * 60, "b" * 60, "class")) for p in (w["home"] / "datasets").iterdir()
    )
    assert not list((w["home"] / "serve" / "uploads").glob("*"))


def _write(gdf, path: Path, driver: str) -> bytes:
    gdf.to_file(path, driver=driver)
    return path.read_bytes()


def test_a_labels_zip_with_a_real_shapefile_works(world):
    """The zip rules refuse attacks, not users: a shapefile zipped in a folder (with a macOS
    resource fork) ingests, its CRS from its .prj."""
    w = world
    gdf = gpd.read_file(w["labels"]).to_crs(4326)
    shp = shapefile_members(gdf, w["tmp"] / "shp-real")
    members = {f"labels_2024/{k}": v for k, v in shp.items()} | {"__MACOSX/._fields.shp": b"x"}
    r = upload(w, ("fields.zip", zip_bytes(members)), "zipped")
    job = wait_job(w["c"], r.json()["id"])
    assert job["state"] == "succeeded", job
    ds = job["result"]["dataset"]
    assert sorted(c["name"] for c in ds["classes"]) == ["field", "forest", "water"]
    assert w["c"].delete("/v1/datasets/zipped").status_code == 204
    lonlat = transform_bounds(w["crs"], "EPSG:4326", *w["bounds"])
    assert shapely.box(*gdf.total_bounds).intersects(shapely.box(*lonlat))


def test_inputs_get_4xx_that_say_what_is_wrong(world):
    w = world
    c = w["c"]
    # a huge value is not echoed back whole
    r = c.post("/v1/finetunes", json={"dataset": "x" * 1_000_000, "model_name": "m2"})
    assert_error(r, 404, "no dataset 'xxx")
    assert len(r.content) < 2000
    # the multipart limits are named
    files = [("image", (f"{i}.tif", b"II*\x00")) for i in range(65)]
    assert_error(c.post("/v1/models/m/predict", files=files), 400, "64 files")
    # out-of-range values are refused before a job starts
    r = c.post("/v1/finetunes", json={"dataset": "m", "model_name": "m2", "seed": 2**40})
    assert_error(r, 422, "seed")
    assert_error(c.get("/v1/jobs?state=bogus"), 422, "state")
    # what the trainer would refuse as it starts is refused before a job is queued
    m3 = {"dataset": "m", "model_name": "m3", "weights": "random", "size": "tiny"}
    r = c.post("/v1/finetunes", json=m3 | {"task": "classification"})
    assert_error(r, 422, "holds segmentation labels", '"task": "segmentation"')
    r = c.post("/v1/finetunes", json=m3 | {"patch_size": 256})
    assert_error(r, 422, "(128 x 128 px)", "at most 128")
    assert not [
        j for j in c.get("/v1/jobs").json()["jobs"] if j["params"].get("model_name") == "m3"
    ]
    # every method a path accepts is named
    r = c.put("/v1/datasets")
    assert_error(r, 405, "GET, HEAD, POST")
    assert r.headers["allow"] == "GET, HEAD, POST"
    # the documented example with a tiny size is accepted as it stands
    examples = c.get("/openapi.json").json()["components"]["schemas"]["FinetuneRequest"]["examples"]
    tiny = next(e for e in examples if e.get("size") == "tiny")
    r = c.post("/v1/finetunes", json=tiny | {"dataset": "m"})
    assert r.status_code == 202, r.text
    assert c.delete(f"/v1/jobs/{r.json()['id']}").json()["state"] == "cancelled"
    # an empty FeatureCollection, a GeoPackage without geometries: what is wrong, not a 500
    empty = json.dumps({"type": "FeatureCollection", "features": []}).encode()
    refused(w, upload(w, ("empty.geojson", empty), "empty"), "empty.geojson holds no features")
    import pandas as pd
    import pyogrio

    pyogrio.write_dataframe(pd.DataFrame({"class_name": ["a"]}), w["tmp"] / "t.gpkg", driver="GPKG")
    refused(
        w, upload(w, ("t.gpkg", (w["tmp"] / "t.gpkg").read_bytes()), "table"), "no feature layer"
    )
    # a ring that is not closed is closed, and the warning says which feature
    fc = json.loads(w["labels"].read_text())
    fc["features"][1]["geometry"]["coordinates"][0].pop()
    r = upload(w, ("open.geojson", json.dumps(fc).encode()), "openring")
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert any("feature(s) 2 of open.geojson" in n for n in job["result"]["warnings"]), job
    assert c.delete("/v1/datasets/openring").status_code == 204


def test_reserved_owners_get_no_key(world):
    from serve.keys import KeyStore

    p = subprocess.run([*GEOTUNE, "keys", "create", "--owner", "local"], capture_output=True,
                       text=True, env=env_with_home(world["home"]), timeout=60)  # fmt: skip
    assert p.returncode == 2 and "reserved" in p.stderr and "Traceback" not in p.stderr
    # a key made for 'local' by an older geotune does not open the local user's data
    store = KeyStore(world["home"] / "serve" / "keys.db")
    import sqlite3

    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO keys (id, hash, owner, note, created) VALUES "
                   "('0000beef', ?, 'local', '', '2026-01-01')", (_hash("gtk_0000beef_x"),))  # fmt: skip
    assert store.owner_for("gtk_0000beef_x") is None


def _hash(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def test_sync_predictions_queue_with_a_bound_and_health_answers(world):
    """More synchronous predictions than run + wait slots: the excess get 503 + Retry-After at
    once; /healthz and /readyz answer while the others run; the rest succeed."""
    w = world
    small = w["tmp"] / "small.tif"
    with rasterio.open(w["image"]) as src:
        prof = src.profile | {"width": 96, "height": 96}
        with rasterio.open(small, "w", **prof) as dst:
            dst.write(src.read(window=((0, 96), (0, 96))))
    data = small.read_bytes()
    answers, health = [], []

    def one():
        with w["srv"].client() as c:
            answers.append(c.post("/v1/models/m/predict", files={"image": ("s.tif", data)}))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and len(health) < 3:
        with httpx.Client(base_url=w["srv"].url, timeout=30) as c:
            health.append((c.get("/healthz").status_code, c.get("/readyz").status_code))
    for t in threads:
        t.join()
    assert health and all(h == (200, 200) for h in health), health
    codes = sorted(r.status_code for r in answers)
    busy = [r for r in answers if r.status_code == 503]
    assert busy and codes.count(200) >= 2, codes
    for r in busy:
        body = assert_error(r, 503, "Retry-After")
        assert int(r.headers["retry-after"]) >= 1 and body["retry_after_s"] >= 1
    ok = next(r for r in answers if r.status_code == 200).json()
    assert ok["links"]["classes"].startswith("/v1/predictions/")  # relative: no Host header in it


def test_other_sites_pages_and_rebound_names_cannot_drive_a_dev_server(world):
    # a --dev server takes no key: a page of another site (a form or fetch through the user's
    # browser) may not change anything, and a name rebound to 127.0.0.1 gets no answer
    c, image = world["c"], world["image"].read_bytes()
    files = {"image": ("scene.tif", image)}
    r = c.post("/v1/scenes", files=files, headers={"Origin": "https://evil.example"})
    assert_error(r, 403, "another site's page")
    r = c.post("/v1/scenes", files=files, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(r, 403, "another site's page")
    assert_error(c.get("/v1/jobs", headers={"Host": "evil.example"}), 403, "loopback host names")
    # the Lab's own page (same origin) and scripts (no Origin) go on
    own = str(c.base_url).rstrip("/")
    r = c.post(
        "/v1/scenes", files=files, headers={"Origin": own}, data={"sensor": "sentinel-2-l2a"}
    )
    assert r.status_code == 201, r.text
    assert c.get("/v1/jobs", headers={"Host": "localhost"}).status_code == 200


def test_a_cog_scene_is_stored_and_far_zooms_answer_at_once(world, tmp_path):
    # a COG upload (once a 500: GDAL refused to add overviews to it); tiles below the
    # TileJSON's minzoom are empty at once (a z0 tile once took minutes of CPU)
    # over 1024 px (the store adds overviews): the 128 px scene tiled 9 x 9 (synth's class map
    # of a 1040 px scene would take gigabytes)
    with rasterio.open(world["image"]) as src:
        data, profile, descriptions = src.read(), src.profile, src.descriptions
    big = np.tile(data, (1, 9, 9))
    cog = tmp_path / "scene_cog.tif"
    with rasterio.open(
        cog, "w", **(profile | {"driver": "COG", "width": big.shape[2], "height": big.shape[1]}),
        overviews="NONE", blocksize=256,
    ) as dst:  # fmt: skip
        dst.write(big)
        dst.descriptions = descriptions
    c = world["c"]
    r = c.post("/v1/scenes", files={"image": ("scene_cog.tif", cog.read_bytes())},
               data={"sensor": "sentinel-2-l2a"})  # fmt: skip
    assert r.status_code == 201, r.text
    links = r.json()["links"]
    tj = c.get(links["tilejson"]).json()
    for z in range(0, tj["minzoom"]):
        t = c.get(links["tiles"].format(z=z, x=0, y=0), timeout=10)
        assert t.status_code == 200 and t.headers["content-type"] == "image/png"
