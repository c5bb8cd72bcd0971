"""HTTP as clients speak it, against a real `geotune serve --dev`: HEAD and OPTIONS, range reads
of a stored file (GDAL's /vsicurl/ among the clients), bodies over the JSON limit, and a client
that leaves mid-upload."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from synth import make_scene
from test_serve import Server, assert_error

from serve.uploads import MAX_JSON_BYTES


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    image, _ = make_scene(tmp, size=128, seed=3)
    srv = Server(tmp / "home", "--dev").start()
    yield {"srv": srv, "c": srv.client(), "image": image}
    srv.stop()


def test_head_answers_every_get_endpoint_and_options_names_the_methods(dev):
    c = dev["c"]
    r = c.head("/v1/datasets")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(c.get("/v1/datasets").content)
    r = c.head("/v1/finetunes")  # a POST-only path
    assert_error(c.get("/v1/finetunes"), 405, "does not accept GET")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = c.options("/v1/datasets")
    assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, POST, OPTIONS"
    assert_error(c.put("/v1/datasets"), 405, "it accepts GET, HEAD, POST")
    # HEAD stays out of the API's document
    paths = c.get("/openapi.json").json()["paths"]
    assert not any("head" in item for item in paths.values())


def test_a_stored_file_is_read_by_ranges_and_bad_ranges_are_json(dev):
    c = dev["c"]
    with open(dev["image"], "rb") as f:
        r = c.post(
            "/v1/scenes", files={"image": ("scene.tif", f)}, data={"sensor": "sentinel-2-l2a"}
        )
    assert r.status_code == 201, r.text
    url = f"{dev['srv'].url}/v1/scenes/{r.json()['id']}/scene.tif"
    whole = c.get(url).content
    head = c.head(url)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(whole)
    r = c.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == whole[100:200]
    for spec in ("bytes=abc", "items=0-10", "bytes=50-10"):
        body = assert_error(c.get(url, headers={"Range": spec}), 400, "bytes=0-16383")
        assert body["error"] == "bad_range"
    r = c.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert assert_error(r, 416, f"{len(whole):,} bytes")["size"] == len(whole)
    assert r.headers["content-range"] == f"bytes */{len(whole)}"
    # GDAL reads the COG over HTTP: the same pixels as the file
    with rasterio.open(dev["image"]) as src:
        expected = src.read()
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(f"/vsicurl/{url}") as remote:
            assert np.array_equal(remote.read(), expected)


def test_a_json_body_is_bounded_whatever_its_framing(dev):
    c = dev["c"]
    pad = b'{"dataset": "m", "model_name": "x", "pad": "' + b"y" * MAX_JSON_BYTES + b'"}'
    r = c.post("/v1/finetunes", content=pad, headers={"Content-Type": "application/json"})
    body = assert_error(r, 413, "not a multipart upload", "16 MB", "ogr2ogr -simplify")
    assert body["limit_mb"] == 16

    def chunks():  # no Content-Length: counted while it is read
        for i in range(0, len(pad), 1 << 20):
            yield pad[i : i + (1 << 20)]

    r = c.post("/v1/finetunes", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "not a multipart upload")
    # an upload of the same size is not held to the JSON limit
    r = c.post("/v1/scenes", files={"image": ("junk.tif", b"II*\x00" + bytes(MAX_JSON_BYTES))})
    assert r.status_code == 422, r.text


def test_a_client_that_leaves_mid_upload_is_not_a_server_error(dev):
    srv = dev["srv"]
    for path in ("/v1/embeddings", "/v1/models/m/predict", "/v1/scenes"):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\nContent-Disposition: "
            'form-data; name="image"; filename="a.tif"\r\n\r\n'.encode()
            + b"x" * 100_000
        )
        time.sleep(0.5)
        s.close()
    time.sleep(1)
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
    log = srv.log.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_kml_labels_are_named_and_the_conversion_hint_works(dev, tmp_path):
    """Google Earth's KML is not read from uploads (it may link to other files and URLs): the
    message names it, and its hint, run as written, makes a GeoPackage the server takes."""
    import geopandas as gpd
    import shapely

    c = dev["c"]
    with rasterio.open(dev["image"]) as src:
        box = gpd.GeoSeries([shapely.box(*src.bounds)], crs=src.crs).to_crs("OGC:CRS84")
    x0, y0, x1, y1 = box.total_bounds
    marks = []
    for i, name in enumerate(["water", "forest", "water", "forest"]):
        a, b = x0 + (x1 - x0) * (0.1 + 0.2 * i), y0 + (y1 - y0) * 0.4
        ring = [
            (a, b),
            (a + (x1 - x0) * 0.1, b),
            (a + (x1 - x0) * 0.1, b + (y1 - y0) * 0.1),
            (a, b),
        ]
        coords = " ".join(f"{x:.7f},{y:.7f},0" for x, y in ring)
        marks.append(
            f"<Placemark><name>{name}</name><Polygon><outerBoundaryIs><LinearRing><coordinates>"
            f"{coords}</coordinates></LinearRing></outerBoundaryIs></Polygon></Placemark>"
        )
    kml = tmp_path / "drawn.kml"
    kml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="http://www.opengis.net/kml/2.2">'
        f"<Document>{''.join(marks)}</Document></kml>"
    )
    image = Path(dev["image"]).read_bytes()
    r = c.post(
        "/v1/datasets", data={"name": "kml", "class_column": "Name"},
        files={"image": ("scene.tif", image), "labels": (kml.name, kml.read_bytes())},
    )  # fmt: skip
    detail = assert_error(r, 422, "labels 'drawn.kml' is a KML file", "OUT.gpkg")["detail"]
    command = (
        detail.split("`")[1].replace("IN", str(kml)).replace("OUT.gpkg", str(tmp_path / "l.gpkg"))
    )
    assert command.startswith("python -c ")
    code = command[len("python -c ") :].strip('"')
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    r = c.post(
        "/v1/datasets", data={"name": "kml", "class_column": "Name", "block_size": "32"},
        files={"image": ("scene.tif", image), "labels": ("l.gpkg", (tmp_path / "l.gpkg").read_bytes())},
    )  # fmt: skip
    assert r.status_code == 202, r.text


def test_a_jpeg2000_band_is_named_and_the_conversion_hint_works(dev, tmp_path):
    c = dev["c"]
    jp2 = tmp_path / "T18SUJ_20240612T153819_B02_10m.jp2"
    with rasterio.open(dev["image"]) as src:
        profile = {k: src.profile[k] for k in ("width", "height", "crs", "transform", "dtype")}
        band = src.read(1)
    with rasterio.open(jp2, "w", driver="JP2OpenJPEG", count=1, **profile) as dst:
        dst.write(band, 1)
    r = c.post("/v1/scenes", files={"image": (jp2.name, jp2.read_bytes())})
    detail = assert_error(r, 422, "a JPEG 2000 file", "rio convert IN OUT.tif --driver GTiff")[
        "detail"
    ]
    # the hint, as written, with rasterio's command from this environment
    command = (
        detail.split("`")[1].replace("IN", str(jp2)).replace("OUT.tif", str(tmp_path / "b.tif"))
    )
    rio = Path(sys.executable).with_name("rio")
    subprocess.run([str(rio), *command.split()[1:]], check=True, timeout=120)
    with open(tmp_path / "b.tif", "rb") as f:
        r = c.post("/v1/scenes", files={"image": ("b.tif", f)}, data={"bands": "blue"})
    assert r.status_code == 201, r.text


def test_a_scene_whose_nodata_is_nan_is_drawn_as_tiles(dev, tmp_path):
    # its record holds nodata as "nan" (JSON has no NaN); the tile reader was handed that text
    with rasterio.open(dev["image"]) as src:
        data, profile, names = src.read().astype("float32"), src.profile, src.descriptions
    data[:, :16] = np.nan
    path = tmp_path / "nan.tif"
    with rasterio.open(path, "w", **(profile | {"dtype": "float32", "nodata": np.nan})) as dst:
        dst.write(data)
        dst.descriptions = names
    c = dev["c"]
    r = c.post("/v1/scenes", files={"image": ("nan.tif", path.read_bytes())},
               data={"sensor": "sentinel-2-l2a"})  # fmt: skip
    assert r.status_code == 201 and r.json()["nodata"] == "nan", r.text
    links = r.json()["links"]
    tj = c.get(links["tilejson"]).json()
    lon, lat = (tj["bounds"][0] + tj["bounds"][2]) / 2, (tj["bounds"][1] + tj["bounds"][3]) / 2
    z = tj["maxzoom"]
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2 * n)
    t = c.get(links["tiles"].format(z=z, x=x, y=y))
    assert t.status_code == 200 and t.headers["content-type"] == "image/png", t.text


def test_an_orthomosaic_with_an_alpha_band_is_uploaded_as_a_dataset(dev, tmp_path):
    """An RGBA orthomosaic over HTTP, read by the ingest job (GeoTIFF driver only): its alpha
    band is its nodata, not an image band."""
    from synth import make_labels
    from test_masks import STRIP, _masked_copy
    from test_serve import wait_job

    scene, cmap = make_scene(tmp_path, size=96, seed=8)
    ortho = _masked_copy(scene, tmp_path / "ortho.tif", "alpha")
    labels = make_labels(tmp_path, scene, cmap)
    c = dev["c"]
    r = c.post(
        "/v1/datasets", data={"name": "ortho", "class_column": "class_name", "block_size": "32"},
        files={"image": ("ortho.tif", ortho.read_bytes()),
               "labels": ("l.geojson", labels.read_bytes())},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["state"] == "succeeded", job
    ds = c.get("/v1/datasets/ortho").json()
    assert ds["nodata_source"] == "the file's alpha band" and len(ds["bands"]) == 4
    with rasterio.open(dev["srv"].home / "datasets" / "ortho" / "image.tif") as src:
        assert (src.read()[:, :, :STRIP] == src.nodata).all()


def test_a_geopackage_of_several_labelled_layers_takes_the_layer_named(dev, tmp_path):
    """QGIS keeps drafts and final labels as layers of one GeoPackage: which one is the
    user's to say, with the labels_layer field the failed job names."""
    import geopandas as gpd
    from synth import make_labels
    from test_serve import wait_job

    scene, cmap = make_scene(tmp_path, size=96, seed=5)
    gdf = gpd.read_file(make_labels(tmp_path, scene, cmap))
    path = tmp_path / "project.gpkg"
    gdf.iloc[:2].to_file(path, layer="draft")
    gdf.to_file(path, layer="final")
    c = dev["c"]

    def post(name, **fields):
        r = c.post(
            "/v1/datasets",
            data={"name": name, "class_column": "class_name", "block_size": "32"} | fields,
            files={
                "image": ("s.tif", scene.read_bytes()),
                "labels": (path.name, path.read_bytes()),
            },
        )
        assert r.status_code == 202, r.text
        return wait_job(c, r.json()["id"])

    job = post("layers")
    assert (
        job["state"] == "failed" and "Name the layer with the labels (labels_layer" in job["error"]
    )
    job = post("layers", labels_layer="final")
    assert job["state"] == "succeeded", job
    source = c.get("/v1/datasets/layers").json()["source"]
    assert source["labels_layer"] == "final" and source["n_labels"] == len(gdf) > 2
