"""The OpenAPI page at /docs renders offline, in a real headless Chromium driven by ChromeDriver:
every API operation is on the page and every asset came from the server itself (no CDN)."""

import json
import os
import shutil

import httpx
import pytest
from test_serve import servers, wait_job  # noqa: F401

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        message = (
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them (.ci/run): never skip there
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,2600",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    yield driver
    driver.quit()


def test_docs_page_renders_every_operation_offline(servers, browser, scene, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv = servers("--dev")
    spec = httpx.get(f"{srv.url}/openapi.json").json()
    operations = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert ("POST", "/v1/finetunes") in operations and (
        "POST",
        "/v1/models/{name}/predict",
    ) in operations

    html = httpx.get(f"{srv.url}/docs").text
    assert "cdn" not in html.lower() and "https://" not in html

    browser.get(f"{srv.url}/docs")
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")) >= len(operations)
    )
    shown = set()
    for block in browser.find_elements(By.CSS_SELECTOR, ".opblock"):
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip()
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
            "data-path"
        )
        shown.add((method, path))
    assert shown == operations
    assert browser.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # Bearer keys can be entered
    assert "geotune" in browser.find_element(By.CSS_SELECTOR, ".info .title").text

    # everything the page loaded came from this server
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(u.startswith(srv.url) for u in resources), resources
    assert any(u.endswith("/static/swagger-ui/swagger-ui-bundle.js") for u in resources)
    browser.save_screenshot(str(tmp_path / "docs.png"))
    assert (tmp_path / "docs.png").stat().st_size > 10_000
    (tmp_path / "operations.json").write_text(json.dumps(sorted(shown)))

    # "Try it out": upload a dataset through the page's form (files + fields)
    op = browser.find_element(By.ID, "operations-datasets-create_dataset_v1_datasets_post")
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    WebDriverWait(browser, 10).until(lambda d: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()

    def field(name: str, kind: str = "text"):
        row = op.find_element(By.CSS_SELECTOR, f'tr[data-property-name="{name}"]')
        return row.find_element(By.CSS_SELECTOR, f"input[type={kind}]")

    optional = (
        "class_column", "sensor", "bands", "dates", "ignore_values", "split_fractions",
        "chip_size", "background", "split_column",
    )  # fmt: skip
    assert [field(n).get_attribute("value") for n in optional] == [""] * len(optional)
    field("name").clear()
    field("name").send_keys("via-docs")
    field("image", "file").send_keys(str(scene["image"]))  # a list of files: a file chooser too
    field("labels", "file").send_keys(str(scene["labels"]))
    field("class_column").send_keys("class_name")
    field("block_size").clear()
    field("block_size").send_keys("32")
    op.find_element(By.CSS_SELECTOR, ".execute").click()
    status = WebDriverWait(browser, 60).until(
        lambda d: op.find_element(
            By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
        )
    )
    assert status.text.strip() == "202", op.find_element(
        By.CSS_SELECTOR, ".live-responses-table"
    ).text
    browser.save_screenshot(str(tmp_path / "docs-upload.png"))
    jobs = httpx.get(f"{srv.url}/v1/jobs").json()["jobs"]
    assert [j["kind"] for j in jobs] == ["ingest"]
    job = wait_job(httpx.Client(base_url=srv.url), jobs[0]["id"])
    assert job["state"] == "succeeded", job
    datasets = httpx.get(f"{srv.url}/v1/datasets").json()["datasets"]
    assert [(d["id"], d["name"]) for d in datasets] == [("via_docs", "via-docs")]
