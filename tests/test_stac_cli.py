"""Imagery by area and dates from the command line, end to end against local catalogs:
``geotune data add`` fetching imagery for the labels' extent, and ``geotune predict --aoi``
against a real STAC API server (a subprocess reading COGs from the test's loopback servers)."""

import json
import subprocess
import sys

import pytest
import rasterio
from conftest import env_with_home
from stac_synth import ORIGIN, AssetServer, aoi, serve, stac_api_app, write_items
from stac_synth import write_static_catalog as static_catalog
from synth import make_labels, make_scene

GEOTUNE = [sys.executable, "-m", "trainer.cli"]
DATES = ["--start", "2021-01-01", "--end", "2023-12-31"]


def geotune(args, home, timeout=600):
    return subprocess.run(
        GEOTUNE + args, capture_output=True, text=True, env=env_with_home(home), timeout=timeout
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A STAC API and an asset server over the synthetic scenes, labels over the same ground,
    and a tiny segmentation model trained on Sentinel-2 L2A-named bands, in its own home."""
    tmp = tmp_path_factory.mktemp("stac-cli")
    home = tmp / "home"
    ref, cmap = make_scene(tmp, size=256, seed=3, origin=ORIGIN)  # the ground of the scenes
    labels = make_labels(tmp, ref, cmap)
    (tmp / "assets").mkdir()
    assets = AssetServer(tmp / "assets")
    with serve(assets.app()) as base:
        items = write_items(tmp, base)
        with serve(stac_api_app(tmp, items)) as api:
            yield {
                "dir": tmp,
                "home": home,
                "labels": labels,
                "api": api,
                "assets": assets,
                "static": static_catalog(tmp, items),
            }


def test_data_add_fetches_imagery_for_the_labels(world):
    p = geotune(
        [
            "data",
            "add",
            "--name",
            "stacds",
            "--labels",
            str(world["labels"]),
            "--class-column",
            "class_name",
            "--sensor",
            "sentinel-2-l2a",
            "--bands",
            "blue,green,red,nir08",
            *DATES,
            "--catalog-url",
            str(world["static"]),
            "--block-size",
            "32",
        ],
        world["home"],
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "imagery: 4 sentinel-2-l2a scene(s) from earth_search" in p.stderr
    m = json.loads((world["home"] / "datasets" / "stacds" / "dataset.json").read_text())
    assert m["sensor"] == "sentinel-2-l2a" and m["bands"] == ["blue", "green", "red", "nir08"]
    assert m["dates"] == ["2022-06-15T10:00:00+00:00"] and m["resolution"] == [10.0, 10.0]
    assert "EPSG:32633" in m["crs"] or "32633" in m["crs_wkt"]
    assert sum(c["pixels"] for c in m["classes"]) > 1000
    imagery = list((world["home"] / "imagery").glob("stacds-*/provenance.json"))
    assert len(imagery) == 1 and json.loads(imagery[0].read_text())["method"] == "median"
    # the dataset record traces its pixels to the exact scenes: the item JSONs
    used = m["source"]["imagery"]["items"]
    assert len(used) == 4 and all(json.loads(open(i["href"]).read())["id"] == i["id"] for i in used)
    assert m["source"]["imagery"]["labels"]["pixels_unusable"] == 0


def test_data_add_checks_before_fetching_and_leaves_nothing_on_failure(world):
    home = world["home"]
    before = sorted((home / "imagery").iterdir()) if (home / "imagery").exists() else []
    base = [
        "data",
        "add",
        "--labels",
        str(world["labels"]),
        "--sensor",
        "sentinel-2-l2a",
        *DATES,
        "--catalog-url",
        str(world["static"]),
    ]
    # a wrong class column: refused before any imagery is fetched
    p = geotune([*base, "--name", "early", "--class-column", "crop"], home)
    assert p.returncode == 2 and "no column 'crop'" in p.stderr, p.stderr[-2000:]
    assert "imagery:" not in p.stderr and "Traceback" not in p.stderr
    # a chip larger than the scene is known only once the imagery is: the imagery goes again
    p = geotune(
        [
            *base,
            "--name",
            "late",
            "--class-column",
            "class_name",
            "--bands",
            "blue,green,red",
            "--task",
            "classification",
            "--chip-size",
            "4096",
        ],
        home,
    )
    assert p.returncode == 2 and "larger than the scene" in p.stderr, p.stderr[-2000:]
    assert "imagery:" in p.stderr and "Traceback" not in p.stderr
    after = sorted((home / "imagery").iterdir()) if (home / "imagery").exists() else []
    assert after == before
    assert not (home / "datasets" / "early").exists() and not (home / "datasets" / "late").exists()


def test_data_add_refuses_a_large_area_and_half_given_options(world, tmp_path):
    p = geotune(
        [
            "data",
            "add",
            "--name",
            "big",
            "--labels",
            str(world["labels"]),
            "--class-column",
            "class_name",
            "--sensor",
            "sentinel-2-l2a",
            *DATES,
            "--catalog-url",
            str(world["static"]),
            "--max-aoi-km2",
            "1",
        ],
        world["home"],
    )
    assert p.returncode == 2 and "more than the limit of 1 km²" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    p = geotune(
        ["data", "add", "--name", "x", "--labels", str(world["labels"]), "--start", "2021-01-01"],
        world["home"],
    )
    assert p.returncode == 2 and "also needs --end, --sensor" in p.stderr, p.stderr[-2000:]
    assert not (world["home"] / "datasets" / "big").exists()


def stac_model(world, monkeypatch) -> None:
    """``stac@champion``, a tiny model of the STAC dataset, in the world's home (trained once)."""
    from trainer.config import compose
    from trainer.train import train

    home = world["home"]
    monkeypatch.setenv("GEOTUNE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if world.get("model"):
        return
    if not (home / "datasets" / "stacds").exists():
        test_data_add_fetches_imagery_for_the_labels(world)
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
                "register.name=stac",
                "register.alias=champion",
            ],
        )
    )
    world["model"] = "stac@champion"


def test_predict_by_aoi_and_dates_against_a_stac_api(world, tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    stac_model(world, monkeypatch)
    area = tmp_path / "aoi.geojson"
    area.write_text(json.dumps(aoi()))
    out = tmp_path / "pred"
    # the command's own code path (trainer.cli), in this process: the servers are its threads
    code = main(
        [
            "predict",
            "--model",
            "stac@champion",
            "--aoi",
            str(area),
            *DATES,
            "--catalog-url",
            world["api"],
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    imagery = summary["provenance"]["imagery"]
    assert imagery["url"] == world["api"] and len(imagery["items"]) == 4
    assert summary["provenance"]["inputs"] == ["composite.tif"]
    with rasterio.open(out / "imagery" / "count.tif") as src:
        clear = int((src.read(1) > 0).sum())
    assert summary["n_pixels"] == clear  # every clear AOI pixel, nothing outside the AOI
    with rasterio.open(out / "classes.tif") as src:
        assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0)
    # the class areas add up to the AOI's area on the ellipsoid (pixel centres inside it)
    total = sum(h["area_m2"] for h in summary["class_histogram"])
    assert total == pytest.approx(geodesic_m2(aoi()), rel=1e-3)
    assert main(["predict", "--model", "stac@champion", "--out", str(out)]) == 2
    assert "--aoi aoi.geojson --start" in capsys.readouterr().err
    # Web Mercator: 10 m on the ground (12.68 Mercator units at 37.9° N), areas still right
    merc = tmp_path / "merc"
    code = main(
        [
            "predict",
            "--model",
            "stac@champion",
            "--aoi",
            str(area),
            *DATES,
            "--catalog-url",
            world["api"],
            "--out",
            str(merc),
            "--crs",
            "EPSG:3857",
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    s3857 = json.loads((merc / "summary.json").read_text())
    assert s3857["provenance"]["imagery"]["grid"]["pixel_size"] == pytest.approx(12.68, abs=0.01)
    total = sum(h["area_m2"] for h in s3857["class_histogram"])
    assert total == pytest.approx(geodesic_m2(aoi()), rel=0.01)
    code = main(
        [
            "predict",
            "--model",
            "stac@champion",
            "--aoi",
            str(area),
            *DATES,
            "--catalog-url",
            world["api"],
            "--out",
            str(tmp_path / "geo"),
            "--crs",
            "EPSG:4326",
        ]
    )
    assert code == 2 and "EPSG:4326 is a geographic CRS" in capsys.readouterr().err


def geodesic_m2(feature) -> float:
    from pyproj import Geod
    from shapely.geometry import shape

    return abs(Geod(ellps="WGS84").geometry_area_perimeter(shape(feature["geometry"]))[0])


def test_predict_by_aoi_on_a_cluster_gives_the_same_files(world, tmp_path, monkeypatch, capsys):
    """``--aoi`` with ``--cluster local:1``: the worker process reads the imagery over HTTP,
    composites and predicts it; the files are those of one process (same torch threads)."""
    from trainer.cli import main

    stac_model(world, monkeypatch)
    area = tmp_path / "aoi.geojson"
    area.write_text(json.dumps(aoi()))
    args = [
        "predict",
        "--model",
        "stac@champion",
        "--aoi",
        str(area),
        *DATES,
        "--catalog-url",
        world["api"],
        "--threads",
        "1",
        "--tile-size",
        "64",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0, capsys.readouterr().err[-3000:]
    code = main([*args, "--out", str(tmp_path / "two"), "--cluster", "local:1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "on tcp://" in capsys.readouterr().out  # the summary line of the cluster run
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["cluster"]["workers"] == 1 and summary["cluster"]["strips"] >= 2
    assert summary["cluster"]["threads"] == [1] and summary["cluster"]["retried"] == []
    for name in ("imagery/composite.tif", "classes.tif", "confidence.tif", "polygons.geojson"):
        one, two = (tmp_path / d / name for d in ("one", "two"))
        assert one.read_bytes() == two.read_bytes(), name
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["class_histogram"] == summary["class_histogram"]
    assert one["provenance"]["imagery"] == summary["provenance"]["imagery"]
