"""The Lab's area-and-dates prediction, in a real headless Chromium against `geotune serve --dev`
whose STAC catalogue is a real STAC API on loopback (the tests' synthetic Sentinel-2 scenes):
draw an area, give dates, predict it as a job; the class overlay and the composite's imagery
show, the class areas are the API's, and the shown Python call gives the same answer. The
task-shaped route itself: the task must be the model's, and output_format=cog."""

import ast
import subprocess
import sys

import pytest
from lab_browser import (
    click_map,
    failed_requests,
    open_page,
    requested,
    screenshot,
    start_chromium,
    tiles_shown,
    wait,
)
from pyproj import Transformer
from selenium.webdriver.common.by import By
from stac_synth import CRS, ORIGIN, aoi
from test_lab_api import TINY_TRAIN
from test_serve import Server, assert_error, wait_job
from test_stac_cli import test_data_add_fetches_imagery_for_the_labels as make_dataset
from test_stac_cli import world  # noqa: F401

from trainer.config import compose
from trainer.train import train

START, END = "2021-01-01", "2023-12-31"


@pytest.fixture(scope="module")
def stac_model(world):  # noqa: F811
    """A tiny segmentation model trained on the catalogue's imagery; the catalogue's URL is set
    for the servers the tests start."""
    home = world["home"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOTUNE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("GEOTUNE_STAC_URL", world["api"])  # inherited by `geotune serve`
        if not (home / "datasets" / "stacds").exists():
            make_dataset(world)
        train(compose("train", ["data.dataset=stacds", "register.name=stacseg", *TINY_TRAIN]))
        yield home


def test_geospatial_route_checks_the_task_and_answers_the_raster(stac_model):
    srv = Server(stac_model, "--dev").start()
    try:
        c = srv.client()
        body = {"model": "stacseg@champion", "aoi": aoi(), "start_date": START, "end_date": END}
        r = c.post("/v1/geospatial/detect-change", json=body)
        err = assert_error(r, 422, "is a segmentation model", "POST /v1/geospatial/segment")
        assert err["error"] == "task_mismatch" and err["model_task"] == "segmentation"
        assert_error(c.post("/v1/geospatial/count-trees", json=body), 422, "segment")
        assert_error(
            c.post("/v1/geospatial/segment", json=body | {"model": "nope"}), 404, "no model"
        )
        assert_error(c.post("/v1/geospatial/segment", json=body | {"oops": 1}), 422, "oops")
        r = c.post(
            "/v1/geospatial/segment", json=body | {"model": "stacseg", "output_format": "cog"}
        )
        assert r.status_code == 200, r.text[-2000:]
        answer = r.json()
        assert answer["task"] == "segment" and "polygons" not in answer
        assert answer["raster_url"] == answer["links"]["classes"]
        assert answer["model"] == {"name": "stacseg", "version": 1, "alias": "champion"}
        assert len(answer["provenance"]["imagery"]["items"]) == 4
        cog = c.get(answer["raster_url"])
        assert cog.status_code == 200 and cog.content[:4] == b"II*\x00"
        assert sum(h["pixels"] for h in answer["class_histogram"]) == answer["n_pixels"] > 0
    finally:
        srv.stop()


def test_lab_predicts_a_drawn_area_through_the_stac_catalogue(stac_model, tmp_path):
    srv = Server(stac_model, "--dev", "--sync-pixels", "1000").start()  # the area runs as a job
    to_lonlat = Transformer.from_crs(CRS, 4326, always_xy=True)
    corner = [to_lonlat.transform(ORIGIN[0] + px * 10, ORIGIN[1] - px * 10) for px in (40, 200)]
    centre = to_lonlat.transform(ORIGIN[0] + 1200, ORIGIN[1] - 1200)
    d = start_chromium(tmp_path / "profile")
    try:
        open_page(d, f"{srv.url}/lab/#tab=predict&map={centre[1]},{centre[0]},14")
        wait(d, "document.body.dataset.ready === 'true'", what="the Lab to start")
        assert d.find_element(By.ID, "signin").get_attribute("hidden") is not None  # --dev: no key
        assert "local" in d.find_element(By.ID, "who").text
        wait(d, "document.querySelector('#pr-model').value === 'stacseg@champion'")
        d.find_element(By.TAG_NAME, "body").send_keys("a")  # draw an area
        for lon, lat in corner:
            click_map(d, lon, lat)
        wait(d, "document.querySelector('#aoi-status').textContent", what="the drawn area")
        d.execute_script(
            "document.querySelector('#aoi-start').value = arguments[0];"
            "document.querySelector('#aoi-end').value = arguments[1];",
            START,
            END,
        )
        d.find_element(By.ID, "pr-run").click()
        wait(d, "document.querySelector('#pr-status').textContent.includes('job')", what="a job")
        wait(
            d,
            "!document.querySelector('#result').hidden || document.querySelector('#pr-error').textContent"
            " || document.querySelector('#pr-source-error').textContent",
            timeout=300,
            what="the prediction",
        )
        assert d.find_element(By.ID, "pr-error").text == ""
        assert d.find_element(By.ID, "pr-source-error").text == ""
        pred_id = d.find_element(By.ID, "pr-id").text
        answer = srv.client().get(f"/v1/predictions/{pred_id}").json()
        assert len(answer["provenance"]["imagery"]["items"]) == 4
        shown = {
            tr.get_attribute("data-class"): int(
                tr.find_element(By.CSS_SELECTOR, "[data-pixels]").get_attribute("data-pixels")
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#histogram tbody tr")
        }
        assert shown == {h["name"]: h["pixels"] for h in answer["class_histogram"]}
        # the overlay and the composite it was made from, as map tiles
        wait(
            d,
            "document.querySelectorAll('.leaflet-classes-pane img.leaflet-tile-loaded').length > 0"
            " && document.querySelectorAll('.leaflet-base-pane img.leaflet-tile-loaded').length > 0",
        )
        assert sum(t["opaque"] for t in tiles_shown(d, "classes")) > 0
        assert sum(t["opaque"] for t in tiles_shown(d, "base")) > 0
        assert (
            d.find_element(By.ID, "base-select").get_attribute("value") == f"prediction:{pred_id}"
        )
        assert "items from" in d.find_element(By.ID, "provenance").text.replace("item(s)", "items")
        screenshot(d, tmp_path, "predict-area", "lab-predict-area")

        # the task-shaped call is what the page sent; its Python gives the same answer
        box = d.find_element(By.CSS_SELECTOR, '.call[data-action="predict"] details')
        box.find_element(By.TAG_NAME, "summary").click()
        box.find_element(By.XPATH, ".//button[text()='Python (httpx)']").click()
        code = d.execute_script(
            "return document.querySelector(`.call[data-action='predict'] pre`).textContent"
        )
        assert "/v1/geospatial/segment" in code and '"model": "stacseg@champion"' in code
        p = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
        printed = p.stdout.splitlines()
        assert printed[0] == "202"  # a job, as for the page
        job = ast.literal_eval(printed[1])
        done = wait_job(srv.client(), job["id"])
        again = srv.client().get(f"/v1/jobs/{done['id']}/result").json()
        assert again["class_histogram"] == answer["class_histogram"]
        asked = requested(d)
        assert asked and all(u.startswith(srv.url) for u in asked), asked
        assert failed_requests(d) == []
    finally:
        d.quit()
        srv.stop()
