"""The Lab's Similar panel, as a person uses it: a real headless Chromium (offline) against a real
`geotune serve --dev`. Embed the scene on the map with a tiny Clay (random weights, chosen by
name), click a spot, see the most similar chips highlighted (the same chips the API answers),
choose two and label them "water", and see them coloured in the PCA view of the embedding
space. A screenshot is saved and checked for content; no request fails."""

import json

import httpx
from lab_browser import click_map, failed_requests, screenshot, start_chromium, wait
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from synth import make_scene
from test_serve import servers  # noqa: F401


def test_find_more_like_this_in_the_lab(home, servers, tmp_path):  # noqa: F811
    scene, _ = make_scene(tmp_path, size=192, seed=4)
    srv = servers("--dev")
    api = srv.client()
    with open(scene, "rb") as f:
        r = api.post("/v1/scenes", data={"sensor": "sentinel-2-l2a"}, files={"image": ("s.tif", f)})
    assert r.status_code == 201, r.text
    sc = r.json()
    west, south, east, north = sc["bounds"]
    driver = start_chromium(tmp_path / "chromium")
    try:
        driver.get(f"{srv.url}/lab/#tab=similar&base=scene:{sc['id']}")
        wait(driver, "document.body.dataset.ready === 'true'", what="the Lab to start")
        wait(driver, "document.querySelector('#emb-encoder option[value=\"backbone:clay_v1_5\"]')")
        el = lambda css: driver.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        Select(el("#emb-encoder")).select_by_value("backbone:clay_v1_5")
        Select(el("#emb-size")).select_by_value("tiny")
        Select(el("#emb-weights")).select_by_value("random")
        el("#emb-chip").send_keys("64")
        el("#emb-create").click()
        wait(
            driver,
            "/chips embedded/.test(document.querySelector('#emb-status').textContent)",
            timeout=300,
            what="the embedding job",
        )
        wait(driver, "document.querySelector('#emb-set').value !== ''")
        emb_id = el("#emb-set").get_attribute("value")
        wait(driver, "/of 9 chips/.test(document.querySelector('#sim-pca-note').textContent)")

        k = el("#sim-k")
        k.clear()
        k.send_keys("4")
        el("#sim-click").click()
        lon, lat = (west + east) / 2, (south + north) / 2
        click_map(driver, lon, lat)
        wait(driver, "document.querySelectorAll('#sim-hits li').length === 4", what="4 hits")
        shown = [
            int(x.get_attribute("data-chip"))
            for x in driver.find_elements(By.CSS_SELECTOR, "#sim-hits input")
        ]
        answer = api.post(
            f"/v1/embeddings/{emb_id}/search", json={"near": [lon, lat], "k": 4}
        ).json()
        assert shown == [f["id"] for f in answer["features"]]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".leaflet-similar-pane path")) >= 4

        boxes = driver.find_elements(By.CSS_SELECTOR, "#sim-hits input")
        boxes[0].click()
        boxes[1].click()
        el("#sim-class").send_keys("water")
        el("#sim-label").click()
        wait(
            driver,
            "/2 chip\\(s\\) labelled water/.test(document.querySelector('#sim-status').textContent)",
        )
        counts = json.loads(el("#sim-pca").get_attribute("data-classes"))
        assert counts.get("water", 0) >= 2 and sum(counts.values()) == 9
        driver.execute_script(
            "document.querySelector('#sim-pca').scrollIntoView({block: 'center'})"
        )
        screenshot(driver, tmp_path, "similar", keep="lab-similar")
        el("#tab-label").click()
        wait(
            driver,
            "/2 polygon\\(s\\) drawn/.test(document.querySelector('#label-count').textContent)",
        )
        assert not failed_requests(driver)
    finally:
        driver.quit()
    assert httpx.get(f"{srv.url}/v1/embeddings/{emb_id}").json()["state"] == "ready"
