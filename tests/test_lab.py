"""The Lab end to end, as a person uses it: a real headless Chromium (offline: every host but
127.0.0.1 fails) against a real `geotune serve` with API keys.

Sign in (a wrong key first), upload a bad file and a scene, draw four polygons with the keyboard
shortcuts, create a dataset, fine-tune a tiny model from random weights and watch the job
finish, point an alias, predict the scene, and check what the page shows against the API: the
overlay tiles are non-empty images, the legend has the model's classes, the class areas are the
API's numbers, and the shown curl gives the same answer. A benchmark's results on the Compare
page. A screenshot of each page is saved and checked for content."""

import json
import os
import subprocess

import numpy as np
import pytest
import rasterio
from lab_browser import (
    click_map,
    failed_requests,
    hover,
    open_page,
    point_on,
    requested,
    screenshot,
    start_chromium,
    tiles_shown,
    wait,
)
from pyproj import Transformer
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from synth import make_scene
from test_lab_api import owned_dataset
from test_serve import create_key, servers  # noqa: F401

FINETUNE = {"patch_size": 64, "batch_size": 8, "chips_per_epoch": 32, "num_workers": 0}


def squares(cmap: np.ndarray, cls: int, n: int, size: int = 14) -> list[tuple[int, int]]:
    """Top-left (row, col) of ``n`` separate size x size windows that hold only class ``cls``."""
    taken = np.zeros_like(cmap, bool)
    out = []
    for r in range(2, cmap.shape[0] - size - 2, 2):
        for c in range(2, cmap.shape[1] - size - 2, 2):
            if (cmap[r : r + size, c : c + size] == cls).all() and not taken[
                r - 2 : r + size + 2, c - 2 : c + size + 2
            ].any():
                out.append((r, c))
                taken[r : r + size, c : c + size] = True
                if len(out) == n:
                    return out
    raise AssertionError(f"no {n} windows of class {cls}")


def corners(scene, r: int, c: int, size: int = 14) -> list[tuple[float, float]]:
    """Lon/lat of a square's corners, one pixel inside the window."""
    with rasterio.open(scene) as src:
        t, crs = src.transform, src.crs
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    pts = [
        (c + 1, r + 1),
        (c + size - 1, r + 1),
        (c + size - 1, r + size - 1),
        (c + 1, r + size - 1),
    ]
    return [to_lonlat.transform(*(t * p)) for p in pts]


def el(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def text(driver, css: str) -> str:
    return el(driver, css).text.strip()


def tab(driver, name: str) -> None:
    el(driver, f"#tab-{name}").click()
    wait(driver, f"!document.querySelector('#panel-{name}').hidden")


def shown_call(driver, action: str, mode: str = "curl") -> str:
    box = el(driver, f'.call[data-action="{action}"] details')
    if not box.get_attribute("open"):
        box.find_element(By.CSS_SELECTOR, "summary").click()
    if mode == "python":
        box.find_element(By.XPATH, ".//button[text()='Python (httpx)']").click()
    return driver.execute_script(
        "return document.querySelector(`.call[data-action='${arguments[0]}'] pre`).textContent",
        action,
    )


@pytest.fixture
def benchmark_results(home, scene):
    """A tiny `geotune benchmark` over one of alice's datasets (as the command makes them)."""
    from trainer.benchmark import benchmark
    from trainer.config import compose

    ds = owned_dataset(scene)
    return benchmark(
        compose(
            "benchmark",
            [
                f"data.dataset={ds.path}",
                "backbones=[resnet18]",
                "backbone.size=tiny",
                "backbone.weights=random",
                "budgets=[4,all]",
                "seeds=[0]",
                "trainer.max_epochs=3",
                "data.patch_size=32",
                "data.num_workers=0",
                "data.chips_per_epoch=16",
                "name=lab",
                f"out_dir={home.parent / 'experiments'}",
            ],
        )
    )


def test_lab_from_drawn_polygons_to_a_models_overlay(home, servers, tmp_path, benchmark_results):  # noqa: F811
    key = create_key(home, "alice")
    srv = servers()
    api = srv.client(key)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    path, cmap = make_scene(tmp_path, size=128, seed=0)
    d = start_chromium(tmp_path / "profile")
    try:
        # sign in: a wrong key is refused next to the key field
        open_page(d, f"{srv.url}/lab/")
        wait(d, "!document.querySelector('#signin').hidden", what="the sign-in form")
        el(d, "#key").send_keys("gtk_00000000_wrong", Keys.ENTER)
        wait(d, "document.querySelector('#signin-error').textContent.includes('not valid')")
        screenshot(d, shots, "signin")
        el(d, "#key").clear()
        el(d, "#key").send_keys(key, Keys.ENTER)
        wait(d, "document.body.dataset.ready === 'true'", what="the Lab to start")
        assert d.execute_script("return sessionStorage.getItem('geotune.key')") == key

        # imagery: a bad file is an error next to the upload; then the scene
        (tmp_path / "notes.txt").write_text("not an image")
        el(d, "#scene-file").send_keys(str(tmp_path / "notes.txt"))
        el(d, "#scene-upload").click()
        wait(d, "document.querySelector('#scene-error').textContent.includes('notes.txt')")
        assert "GeoTIFF" in text(d, "#scene-error")
        el(d, "#scene-file").send_keys(str(path))
        el(d, "#scene-sensor option[value='sentinel-2-l2a']").click()
        el(d, "#scene-upload").click()
        wait(
            d, "document.querySelectorAll('.leaflet-base-pane img.leaflet-tile-loaded').length > 0"
        )
        assert text(d, "#scene-error") == ""
        assert el(d, "#vmax").get_attribute("value") == "3000"  # reflectance 0.3 in stored values
        assert all(t["opaque"] > 0 for t in tiles_shown(d, "base"))
        screenshot(d, shots, "imagery")

        # label: two classes, four polygons drawn with the keyboard shortcuts
        tab(d, "label")
        for name in ("water", "field"):
            el(d, "#class-name").send_keys(name, Keys.ENTER)
        body = el(d, "body")
        for key_, cls in (("1", 0), ("2", 2)):
            for r, c in squares(cmap, cls, 2):
                body.send_keys(key_)
                body.send_keys("p")
                for lon, lat in corners(path, r, c):
                    click_map(d, lon, lat)
                body.send_keys(Keys.ENTER)
        wait(d, "document.querySelector('#label-count').textContent.startsWith('4 polygon')")
        el(d, "#dataset-name").send_keys("drawn")
        el(d, "#dataset-create").click()
        wait(
            d,
            "document.querySelector('#dataset-status').textContent.startsWith('dataset drawn')"
            " || document.querySelector('#dataset-error').textContent"
            " || document.querySelector('#labels-error').textContent",
            what="the dataset",
        )
        assert text(d, "#dataset-error") == "" and text(d, "#labels-error") == ""
        manifest = api.get("/v1/datasets/drawn").json()
        assert sorted(c["name"] for c in manifest["classes"]) == ["field", "water"]
        assert manifest["splits"]["units"]["train"] >= 1
        assert shown_call(d, "dataset").count("labels=@labels.geojson") == 1
        screenshot(d, shots, "label", "lab-label")

        # fine-tune: pretrained weights the server does not have are refused next to the button
        # (never replaced by random ones); then a tiny ResNet from random weights, followed
        # until its job succeeds
        tab(d, "finetune")
        el(d, "#ft-name").clear()
        el(d, "#ft-name").send_keys("drawn")
        el(d, "#ft-pretrained").click()
        assert "not there" in text(d, "#ft-weights-note")
        el(d, "#ft-launch").click()
        wait(d, "document.querySelector('#ft-error').textContent.includes('weights directory')")
        assert api.get("/v1/jobs", params={"kind": "finetune"}).json()["jobs"] == []
        el(d, "#ft-size option[value='tiny']").click()
        el(d, "#ft-random").click()
        el(d, "#ft-epochs").clear()
        el(d, "#ft-epochs").send_keys("6")
        el(d, "#ft-options").find_element(By.XPATH, "..").find_element(
            By.TAG_NAME, "summary"
        ).click()
        for name, value in FINETUNE.items():
            el(d, f"#ft-{name}").clear()
            el(d, f"#ft-{name}").send_keys(str(value))
        el(d, "#ft-launch").click()
        state = wait(
            d,
            "['succeeded','failed','cancelled'].includes("
            "document.querySelector('#job-status').dataset.state)"
            " && document.querySelector('#job-status').dataset.state"
            " || document.querySelector('#ft-error').textContent && 'refused'",
            timeout=600,
            what="the fine-tune job",
        )
        assert state == "succeeded", text(d, "#job-error") or text(d, "#ft-error")
        assert "registered drawn version 1" in text(d, "#job-result")
        wait(d, "document.querySelector('#chart-loss path')", what="the loss chart")
        assert "registered: alice.drawn version 1" in text(d, "#job-log")
        job_id = text(d, "#job-id")
        assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
        el(d, "#alias-name").clear()
        el(d, "#alias-name").send_keys("prod")
        el(d, "#alias-set").click()
        wait(d, "document.querySelector('#alias-status').textContent.includes('drawn@prod')")
        assert api.get("/v1/models/drawn").json()["aliases"] == {"champion": 1, "prod": 1}
        screenshot(d, shots, "finetune", "lab-finetune")

        # predict the scene on the map with drawn@champion
        tab(d, "predict")
        wait(
            d,
            "[...document.querySelectorAll('#pr-model option')].some(o => o.value === 'drawn@champion')",
        )
        el(d, "#pr-model option[value='drawn@champion']").click()
        el(d, "#pr-run").click()
        wait(
            d,
            "!document.querySelector('#result').hidden || document.querySelector('#pr-error').textContent"
            " || document.querySelector('#pr-source-error').textContent",
            timeout=300,
            what="the prediction",
        )
        assert text(d, "#pr-error") == "" and text(d, "#pr-source-error") == ""
        pred_id = text(d, "#pr-id")
        wait(
            d,
            "document.querySelectorAll('.leaflet-classes-pane img.leaflet-tile-loaded').length > 0",
        )
        tiles = tiles_shown(d, "classes")
        assert tiles and all(t["w"] == 256 and t["h"] == 256 for t in tiles)
        assert sum(t["opaque"] for t in tiles) >= 128 * 128 * 0.5  # the scene's pixels, upsampled
        answer = api.get(f"/v1/predictions/{pred_id}").json()
        model = api.get("/v1/models/drawn").json()
        legend = [li.text.strip() for li in d.find_elements(By.CSS_SELECTOR, "#legend li")]
        assert legend == [c["name"] for c in model["classes"]] == ["field", "water"]
        shown = {
            tr.get_attribute("data-class"): int(
                tr.find_element(By.CSS_SELECTOR, "[data-pixels]").get_attribute("data-pixels")
            )
            for tr in d.find_elements(By.CSS_SELECTOR, "#histogram tbody tr")
        }
        assert shown == {h["name"]: h["pixels"] for h in answer["class_histogram"]}
        assert sum(shown.values()) == answer["n_pixels"] == 128 * 128
        assert len(d.find_elements(By.CSS_SELECTOR, "#histogram-chart rect")) == 2
        assert answer["provenance"]["dataset_id"] in text(d, "#provenance")
        screenshot(d, shots, "predict", "lab-predict")

        # a polygon's details: class, area, mean confidence on hover, and on click
        polygons = ".leaflet-overlay-pane path.leaflet-interactive"
        assert len(d.find_elements(By.CSS_SELECTOR, polygons)) == answer["n_polygons"] > 0
        hover(d, *point_on(d, polygons))
        tip = wait(d, "document.querySelector('.leaflet-tooltip')?.innerText", what="a tooltip")
        assert "mean confidence" in tip and "ha" in tip
        assert any(n in tip for n in ("field", "water"))
        ActionChains(d).click().perform()
        popup = wait(d, "document.querySelector('.leaflet-popup-content')?.innerText")
        assert popup == tip

        # the shown curl, run in a terminal, gives the page's answer
        curl = shown_call(d, "predict")
        assert "$GEOTUNE_KEY" in curl and "image=@scene.tif" in curl and key not in curl
        out = subprocess.run(
            ["bash", "-c", curl],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=dict(os.environ, GEOTUNE_KEY=key),
            timeout=300,
        )
        again = json.loads(out.stdout)
        assert again["class_histogram"] == answer["class_histogram"]
        assert again["n_pixels"] == answer["n_pixels"] and again["prediction_id"] != pred_id
        python = shown_call(d, "predict", "python")
        assert "httpx.post(" in python and "os.environ['GEOTUNE_KEY']" in python
        screenshot(d, shots, "call", "lab-call")

        # a confidence threshold hides uncertain pixels (tiles asked again with it)
        d.execute_script(
            "const t = document.querySelector('#threshold'); t.value = '0.95';"
            "t.dispatchEvent(new Event('change'))"
        )
        wait(
            d,
            "performance.getEntriesByType('resource').some(e => e.name.includes('threshold=0.95'))",
        )

        # the URL restores the view: the prediction, the model, the map position
        url = d.current_url
        assert f"prediction={pred_id}" in url and "model=drawn%40champion" in url
        asked = requested(d)
        d.get("about:blank")
        open_page(d, url)
        wait(d, "document.body.dataset.ready === 'true'")
        wait(d, "!document.querySelector('#result').hidden")
        assert (
            text(d, "#pr-id") == pred_id
            and el(d, "#pr-model").get_attribute("value") == "drawn@champion"
        )

        # compare: the benchmark's table and chart
        tab(d, "compare")
        wait(d, "document.querySelectorAll('#bm-table tbody tr').length === 2")
        means = [
            float(td.get_attribute("data-mean"))
            for td in d.find_elements(By.CSS_SELECTOR, "#bm-table [data-mean]")
        ]
        assert means == pytest.approx([r["test_mIoU"] for r in benchmark_results["rows"]], abs=1e-5)
        assert d.find_elements(By.CSS_SELECTOR, "#bm-chart path")
        screenshot(d, shots, "compare", "lab-compare")

        # nothing but this server was asked, and only the refusals above failed
        asked += requested(d)
        assert asked and all(u.startswith(srv.url) for u in asked), asked
        refused = ("/v1/models - ", "/v1/scenes - ", "/v1/finetunes - ")  # on purpose, above
        assert failed_requests(d, allowed=refused) == []
    finally:
        d.quit()
