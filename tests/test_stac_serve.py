"""POST /v1/models/{name}/predict with an AOI + dates: the service fetches imagery from a real
STAC API on loopback (the test's) and predicts it with the same code as the CLI."""

import json
import subprocess
import sys
import time

import httpx
import rasterio
from conftest import env_with_home
from stac_synth import aoi
from test_serve import free_port
from test_stac_cli import DATES, world  # noqa: F401
from test_stac_cli import test_data_add_fetches_imagery_for_the_labels as make_dataset

from trainer.config import compose
from trainer.train import train


def test_predict_by_aoi_over_http(world, monkeypatch):  # noqa: F811
    home = world["home"]
    monkeypatch.setenv("GEOTUNE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if not (home / "datasets" / "stacds").exists():
        make_dataset(world)
    train(
        compose(
            "train",
            [
                "data.dataset=stacds",
                "backbone.size=tiny",
                "backbone.weights=random",
                "data.patch_size=64",
                "data.num_workers=0",
                "data.chips_per_epoch=16",
                "trainer.max_epochs=1",
                "register.name=stachttp",
                "register.alias=champion",
            ],
        )
    )
    port = free_port()
    env = env_with_home(home) | {"GEOTUNE_STAC_URL": world["api"]}
    log = open(home.parent / "serve-aoi.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "serve", "--dev", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        body = {
            "aoi": {"type": "FeatureCollection", "features": [aoi()]},  # as --aoi takes it
            "start_date": DATES[1],
            "end_date": DATES[3],
            "sensor": "sentinel-2-l2a",
        }
        r = httpx.post(f"{url}/v1/models/stachttp/predict?alias=champion", json=body, timeout=600)
        assert r.status_code == 200, r.text[-3000:]
        answer = r.json()
        imagery = answer["provenance"]["imagery"]
        assert imagery["url"] == world["api"] and len(imagery["items"]) == 4
        assert sum(h["pixels"] for h in answer["class_histogram"]) == answer["n_pixels"] > 0
        cog = httpx.get(url + answer["links"]["classes"], timeout=60)  # links are relative
        assert cog.status_code == 200
        (home.parent / "aoi-classes.tif").write_bytes(cog.content)
        with rasterio.open(home.parent / "aoi-classes.tif") as src:
            assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0)

        # an AOI over the limit is refused before any imagery is read, whatever its shape
        def box(x0, y0, x1, y1):
            return {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            }

        hostile = [
            (box(0, 0, 10, 10), "aoi_too_large", "1,2"),  # 1.2 million km²
            (box(-180, -90, 180, 90), "aoi_too_large", "510,065,62"),  # the world (was 0 km²)
            (box(-180, 0, 180, 80), "aoi_too_large", "251,1"),  # 0-80° N (was 0 km²)
            (box(170, 0, -170, 10), "aoi_too_large", "cut it at ±180°"),  # antimeridian, uncut
            (
                {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
                "invalid_request",
                "Self-intersection",
            ),
            ({"type": "FeatureCollection", "features": []}, "invalid_request", "no features"),
            ({"type": "Point", "coordinates": [15, 38]}, "invalid_request", "got Point"),
        ]
        for geom, error, words in hostile:
            r = httpx.post(
                f"{url}/v1/models/stachttp/predict", json=body | {"aoi": geom}, timeout=60
            )
            assert r.status_code == 422 and r.json()["error"] == error, r.text
            assert words in r.json()["detail"], r.text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()

    # a prediction job's progress by AOI: the composite's blocks first, then the tiles
    from serve.predictions import progress_writer
    from trainer.loading import load_model
    from trainer.predict import predict_aoi

    monkeypatch.setenv("GEOTUNE_STAC_URL", world["api"])
    seen, path = [], home.parent / "progress.json"
    write = progress_writer(path)

    def report(done, total, stage="predict"):
        seen.append((stage, done, total))
        write(done, total, stage)

    s = predict_aoi(load_model("stachttp@champion"), aoi(), DATES[1], DATES[3],
                    home.parent / "aoi-job", sensor="sentinel-2-l2a", progress=False,
                    report=report)  # fmt: skip
    composite = [x for x in seen if x[0] == "composite"]
    predicted = [x for x in seen if x[0] == "predict"]
    assert composite and predicted and seen == composite + predicted
    assert composite[-1][1] == composite[-1][2] > 0 and predicted[-1][1] == predicted[-1][2] > 0
    last = json.loads(path.read_text())
    assert last["stage"] == "predict" and last["tiles_done"] == last["tiles_total"]
    assert s["provenance"]["imagery"]["url"] == world["api"]
