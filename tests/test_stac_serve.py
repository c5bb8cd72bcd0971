"""POST /v1/models/{name}/predict with an AOI + dates: the service fetches imagery from a real
STAC API on loopback (the test's) and predicts it with the same code as the CLI."""

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
    train(compose("train", [
        "data.dataset=stacds", "backbone.size=tiny", "backbone.weights=random", "data.patch_size=64",
        "data.num_workers=0", "data.chips_per_epoch=16", "trainer.max_epochs=1",
        "register.name=stachttp", "register.alias=champion",
    ]))  # fmt: skip
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
            "aoi": aoi(),
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
        # an AOI over the limit is refused before any imagery is read
        huge = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
        r = httpx.post(f"{url}/v1/models/stachttp/predict", json=body | {"aoi": huge}, timeout=60)
        assert r.status_code == 422 and r.json()["error"] == "aoi_too_large"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
