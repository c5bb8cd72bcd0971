"""Streaming tiled prediction: COGs that validate, tiling-invariant results, nodata, areas."""

import json
import math

import numpy as np
import pytest
import rasterio
import shapely
from rio_cogeo.cogeo import cog_validate
from synth import make_labels, make_scene

from datamodules.imagery import Grid
from datamodules.ingest import ingest
from trainer.areas import pixel_area_rows
from trainer.config import compose
from trainer.predict import PredictError, PredictOptions, predict_scene
from trainer.registry import load_model
from trainer.train import train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOTUNE_HOME", str(tmp / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        path, cmap = make_scene(tmp, size=128, seed=0)
        labels = make_labels(tmp, path, cmap)
        ingest(
            name="p",
            images=[path],
            labels=labels,
            class_column="class_name",
            block_size=32,
            progress=False,
        )
        cfg = compose(
            "train",
            [
                "data.dataset=p",
                "backbone.size=tiny",
                "backbone.weights=random",
                "data.patch_size=64",
                "data.num_workers=0",
                "data.chips_per_epoch=32",
                "trainer.max_epochs=1",
                "register.name=p",
                "register.alias=champion",
            ],
        )
        train(cfg)
        m = load_model("p@champion")
    m.tmp = tmp
    return m


def test_outputs_validate_and_agree(model, tmp_path):
    scene, _ = make_scene(tmp_path, size=600, seed=5, nodata_corner=40)
    opts = PredictOptions(chip_size=96, overlap=16, tile_size=256, sieve_pixels=0)
    s = predict_scene(model, [scene], tmp_path / "out", options=opts, progress=False)
    out = tmp_path / "out"
    for name in ("classes.tif", "confidence.tif"):
        valid, errors, _ = cog_validate(str(out / name))
        assert valid, errors
    with rasterio.open(out / "classes.tif") as src:
        cls = src.read(1)
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.crs.to_epsg() == 32633
        assert src.colormap(1)[0][:3] == (0x1F, 0x77, 0xB4)
        assert src.overviews(1)
    with rasterio.open(out / "confidence.tif") as src:
        conf = src.read(1)
    # nodata in → nodata out, in every output
    assert (cls[:40, :40] == 255).all() and (conf[:40, :40] == 255).all()
    assert (cls[40:, :] != 255).all() and (conf[40:, :] <= 100).all()
    hist = s["class_histogram"]
    assert sum(h["pixels"] for h in hist) == s["n_pixels"] == 600 * 600 - 40 * 40
    assert math.isclose(sum(h["area_m2"] for h in hist), s["n_pixels"] * 100.0, rel_tol=1e-9)
    assert math.isclose(sum(h["fraction"] for h in hist), 1.0, abs_tol=1e-4)
    for h in hist:
        assert h["pixels"] == int((cls == h["id"]).sum())
    # polygons: CRS84, inside the scene, cover exactly the predicted pixels
    fc = json.loads((out / "polygons.geojson").read_text())
    with rasterio.open(scene) as src:
        from rasterio.warp import transform_bounds

        bb = shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds)).buffer(1e-6)
    polys = [shapely.geometry.shape(f["geometry"]) for f in fc["features"]]
    assert polys and all(bb.contains(p) for p in polys)
    assert all(-180 <= p.bounds[0] <= 180 and -90 <= p.bounds[1] <= 90 for p in polys)
    total = sum(f["properties"]["area_m2"] for f in fc["features"])
    assert math.isclose(total, s["n_pixels"] * 100.0, rel_tol=1e-6)
    assert all(0 < f["properties"]["mean_confidence"] <= 1 for f in fc["features"])
    assert (
        s["provenance"]["run_id"] == model.record["run_id"] and s["provenance"]["dataset_id"] == "p"
    )

    # the same scene as one tile: identical rasters, same polygons (seams merged)
    s2 = predict_scene(
        model,
        [scene],
        tmp_path / "one",
        options=PredictOptions(chip_size=96, overlap=16, tile_size=4096),
        progress=False,
    )
    with rasterio.open(tmp_path / "one" / "classes.tif") as src:
        assert (src.read(1) == cls).all()
    assert s2["n_polygons"] == s["n_polygons"]


def test_missing_band_is_refused(model, tmp_path):
    path = tmp_path / "rgb.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint16",
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(0, 0, 10, 10),
    ) as dst:
        dst.write(np.ones((3, 64, 64), dtype="uint16"))
        dst.descriptions = ("blue", "green", "red")
    with pytest.raises(
        PredictError, match="needs bands blue, green, red, nir08; the dataset lacks nir08"
    ):
        predict_scene(model, [path], tmp_path / "o", progress=False)


def test_resolution_far_from_training_is_refused(model, tmp_path):
    scene, _ = make_scene(tmp_path, size=64, seed=1, res=30.0)
    with pytest.raises(PredictError, match="resolution is 30 m but the model was trained at 10 m"):
        predict_scene(model, [scene], tmp_path / "o", progress=False)


def test_geodesic_pixel_areas_on_epsg4326():
    from pyproj import Geod

    west, north, d, n = 10.0, 60.0, 0.001, 500  # 0.5° x 0.5° at 60° N
    grid = Grid(
        rasterio.crs.CRS.from_epsg(4326), rasterio.transform.from_origin(west, north, d, d), n, n
    )
    ours = pixel_area_rows(grid).sum() * n
    lons = np.linspace(west, west + n * d, 200)
    lats = np.linspace(north, north - n * d, 200)
    ring = (
        [(x, north) for x in lons]
        + [(west + n * d, y) for y in lats]
        + [(x, north - n * d) for x in lons[::-1]]
        + [(west, y) for y in lats[::-1]]
    )
    known = abs(Geod(ellps="WGS84").geometry_area_perimeter(shapely.Polygon(ring))[0])
    assert abs(ours - known) / known < 0.005
