"""Streaming tiled prediction: COGs that validate, tiling-invariant results, nodata, areas."""

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rio_cogeo.cogeo import cog_validate
from synth import make_labels, make_scene, tiny_model

from datamodules.imagery import Grid
from datamodules.ingest import ingest
from trainer.areas import pixel_area_rows
from trainer.config import compose
from trainer.predict import PredictError, PredictOptions, predict_scene
from trainer.registry import load_model
from trainer.train import train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("predict"))


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
    # areas on the ellipsoid: a 10 m UTM pixel is 100 m² on the map, 100.08 m² near the
    # central meridian (scale 0.9996)
    assert math.isclose(sum(h["area_m2"] for h in hist), s["n_pixels"] * 100.08, rel_tol=2e-4)
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
    assert math.isclose(total, sum(h["area_m2"] for h in hist), rel_tol=1e-5)
    assert all(0 < f["properties"]["mean_confidence"] <= 1 for f in fc["features"])
    # one polygon per 4-connected class patch of the whole raster, whatever the tiling; burnt
    # back onto the grid, the polygons give the class raster exactly
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom
    from scipy import ndimage

    patches = sum(ndimage.label(cls == h["id"])[1] for h in hist)
    assert len(polys) == patches
    with rasterio.open(out / "classes.tif") as src:
        burnt = rasterize(
            [(transform_geom("OGC:CRS84", src.crs, f["geometry"]), f["properties"]["class_id"])
             for f in fc["features"]],
            out_shape=cls.shape, transform=src.transform, fill=255, dtype="uint8",
        )  # fmt: skip
    assert (burnt == cls).all()
    assert all(p.exterior.is_ccw and all(not r.is_ccw for r in p.interiors) for p in polys)
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


def test_sieve_applies_to_every_output_and_to_tiles_smaller_than_it(model, tmp_path):
    # 300 px with 256 px tiles: the last tiles are 44 px wide, and the corner one 44 x 44 =
    # 1936 px, smaller than the sieve (once a ValueError from rasterio's sieve)
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom
    from scipy import ndimage

    scene, _ = make_scene(tmp_path, size=300, seed=5, nodata_corner=20)
    plain = predict_scene(
        model, [scene], tmp_path / "plain", options=PredictOptions(tile_size=256), progress=False
    )
    size = 2000
    s = predict_scene(
        model,
        [scene],
        tmp_path / "sieved",
        options=PredictOptions(tile_size=256, sieve_pixels=size),
        progress=False,
    )
    out = tmp_path / "sieved"
    with rasterio.open(out / "classes.tif") as src:
        cls, crs, transform = src.read(1), src.crs, src.transform
    with rasterio.open(tmp_path / "plain" / "classes.tif") as src:
        before = src.read(1)
    assert ((cls == 255) == (before == 255)).all()  # nodata stays nodata, nothing else becomes it
    assert s["n_polygons"] < plain["n_polygons"]
    # within each full tile, no patch under the sieve size is left
    for r0, c0 in ((0, 0), (0, 256), (256, 0)):
        tile = cls[r0 : r0 + 256, c0 : c0 + 256]
        for k in np.unique(tile[tile != 255]):
            lab, n = ndimage.label(tile == k)
            sizes = np.bincount(lab.ravel())[1:]
            touches = np.isin(
                np.arange(1, n + 1), np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])
            )
            assert (sizes[~touches] >= size).all()  # a patch on a tile edge may go on next door
    # the class raster, the counts and the polygons agree
    assert [h["pixels"] for h in s["class_histogram"]] == [
        int((cls == h["id"]).sum()) for h in s["class_histogram"]
    ]
    fc = json.loads((out / "polygons.geojson").read_text())
    burnt = rasterize(
        [(transform_geom("OGC:CRS84", crs, f["geometry"]), f["properties"]["class_id"])
         for f in fc["features"]],
        out_shape=cls.shape, transform=transform, fill=255, dtype="uint8",
    )  # fmt: skip
    assert (burnt == cls).all()


def test_valid_pixels_get_the_same_classes_whatever_the_nodata_encoding(model, tmp_path):
    # the same pixels with a nodata collar written as 0 (uint16), -9999 (int16), 65535 and NaN
    # (float32): nodata is set to the model's band means before the forward pass, so the
    # classes of valid pixels near the collar do not depend on the encoding (they did: -9999
    # and NaN went into the network as they are)
    scene, _ = make_scene(tmp_path, size=200, seed=7, nodata_corner=120)
    with rasterio.open(scene) as src:
        data, profile, descriptions = src.read(), src.profile, src.descriptions
    collar = np.all(data == 0, axis=0)
    variants = {"uint16_0": scene}
    for name, dtype, nodata in (
        ("int16_m9999", "int16", -9999),
        ("uint16_65535", "uint16", 65535),
        ("float32_nan", "float32", float("nan")),
    ):
        d = data.astype(dtype)
        d[:, collar] = nodata
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", **(profile | {"dtype": dtype, "nodata": nodata})) as dst:
            dst.write(d)
            dst.descriptions = descriptions
        variants[name] = path
    classes, summaries = {}, {}
    for name, path in variants.items():
        out = tmp_path / f"out_{name}"
        predict_scene(model, [path], out, options=PredictOptions(chip_size=96), progress=False)
        with rasterio.open(out / "classes.tif") as src:
            classes[name] = src.read(1)
        # strict JSON (no NaN literal): the float scene's nodata is written as "nan"
        summaries[name] = json.loads(
            (out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c)
        )
    assert summaries["float32_nan"]["input"]["nodata"] == "nan"
    ref = classes["uint16_0"]
    assert (ref[collar] == 255).all() and (ref[~collar] != 255).all()
    for name, cls in classes.items():
        assert ((cls == 255) == collar).all(), name
        # integer files hold the band means rounded; the float one holds them exactly
        agree = float((cls == ref).mean())
        assert agree == 1.0 if name != "float32_nan" else agree > 0.999, (name, agree)


def test_a_scene_in_other_units_is_predicted_with_a_warning_that_says_so(
    model, tmp_path, monkeypatch
):
    # reflectance 0..1 for a model of stored values (x 10000): geotune cannot know the units,
    # but it can see the values are nothing like the training's, and says so plainly
    from trainer.cli import main

    scene, _ = make_scene(tmp_path, size=128, seed=2)
    with rasterio.open(scene) as src:
        data, profile, descriptions = src.read(), src.profile, src.descriptions
    scaled = tmp_path / "reflectance.tif"
    with rasterio.open(scaled, "w", **(profile | {"dtype": "float32", "nodata": None})) as dst:
        dst.write(data.astype(np.float32) / 10000)
        dst.descriptions = descriptions
    monkeypatch.setenv("GEOTUNE_HOME", str(model.tmp / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.warns(UserWarning) as caught:
        assert main(["predict", "--model", "p@champion", "--image", str(scaled),
                     "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    (w,) = [w for w in caught if "values are about" in str(w.message)]
    assert str(w.message).startswith("the scene's values are about 0.0001x those the model")
    # a model of no sensor has no units to convert from: the hint says what works
    assert "The model records no sensor (its dataset was added without --sensor)" in str(w.message)
    assert "--sensor for imagery of another sensor" not in str(w.message)
    # the command prints geotune's own warnings as one plain line each
    assert warnings.formatwarning(w.message, w.category, w.filename, w.lineno) == (
        f"warning: {w.message}\n"
    )
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert any("values are about" in n for n in summary["input"]["notes"])
    # the same scene as stored: no such warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_scene(model, [scene], tmp_path / "p", progress=False)
    assert not [w for w in caught if "values are about" in str(w.message)]
    # two bands described alike: said, not taken for a band count mismatch
    twice = tmp_path / "twice.tif"
    with rasterio.open(twice, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = (*descriptions[:-1], descriptions[0])
    with pytest.raises(PredictError, match=f"name {descriptions[0]} more than once"):
        predict_scene(model, [twice], tmp_path / "q", progress=False)


def test_a_scene_without_a_valid_pixel_says_so(model, tmp_path):
    scene, _ = make_scene(tmp_path, size=64, seed=1)
    with rasterio.open(scene) as src:
        profile, descriptions = src.profile, src.descriptions
    path = tmp_path / "all_nan.tif"
    with rasterio.open(path, "w", **(profile | {"dtype": "float32", "nodata": None})) as dst:
        dst.write(np.full((profile["count"], 64, 64), np.nan, dtype=np.float32))
        dst.descriptions = descriptions
    with pytest.warns(UserWarning, match="all_nan.tif has no valid pixel"):
        s = predict_scene(model, [path], tmp_path / "o", progress=False)
    assert s["n_pixels"] == 0 and any("no valid pixel" in n for n in s["input"]["notes"])


def test_each_chip_runs_once_and_the_chip_cache_changes_nothing(model, tmp_path, monkeypatch):
    """Tiles share the chips on their seams: with the cache each chip of the global grid runs
    once; with room for one chip or none (shared chips run again, in the batch they ran in
    first, read on their own when the read-ahead counted on the cache) the outputs are
    bit-identical."""
    from trainer.predict import Predictor

    scene, _ = make_scene(tmp_path, size=300, seed=6, nodata_corner=20)
    runs, batches = [], {}
    forward = Predictor.forward

    def counting(self, x, origins):
        runs.extend(origins)
        for rc in origins:
            batches.setdefault(rc, set()).add(tuple(origins))
        return forward(self, x, origins)

    monkeypatch.setattr(Predictor, "forward", counting)
    outs = {}
    for name, cache_mb in (("cached", 256), ("one", 0.15), ("uncached", 0)):
        runs.clear()
        opts = PredictOptions(chip_size=96, overlap=16, tile_size=128, cache_mb=cache_mb)
        predict_scene(model, [scene], tmp_path / name, options=opts, progress=False)
        outs[name] = list(runs)
        for f in ("classes.tif", "confidence.tif"):
            with rasterio.open(tmp_path / name / f) as src:
                outs[name, f] = src.read(1)
    starts = [0, 80, 160, 204]  # 96-px chips, stride 80, the last flush with the edge
    assert sorted(outs["cached"]) == sorted((r, c) for r in starts for c in starts)
    # a chip run again runs in its own batch again (Predictor.batches): with little room, as
    # many chips run as with none
    assert len(outs["uncached"]) >= len(outs["one"]) > len(outs["cached"])
    assert all(len(b) == 1 for b in batches.values())  # each chip, one batch, in every run
    for f in ("classes.tif", "confidence.tif"):
        assert (outs["cached", f] == outs["uncached", f]).all()
        assert (outs["cached", f] == outs["one", f]).all()


def test_overlapped_pipeline_equals_the_sequential_one(model, tmp_path):
    """Reading ahead, blending and writing on threads (the default) gives the same bytes as
    every step in turn on one thread: class and confidence COGs, polygons, counts and areas."""
    scene, _ = make_scene(tmp_path, size=400, seed=7, nodata_corner=30)
    opts = PredictOptions(chip_size=96, overlap=16, tile_size=128, cache_mb=0.3)
    runs = {}
    for name, concurrent in (("sequential", False), ("overlapped", True)):
        runs[name] = predict_scene(
            model, [scene], tmp_path / name, options=opts, progress=False, concurrent=concurrent
        )
    a, b = tmp_path / "sequential", tmp_path / "overlapped"
    for f in ("classes.tif", "confidence.tif", "polygons.geojson"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert runs["sequential"]["class_histogram"] == runs["overlapped"]["class_histogram"]
    assert runs["sequential"]["n_polygons"] == runs["overlapped"]["n_polygons"] > 0
    with rasterio.open(a / "classes.tif") as src:  # a scene of many classes, not one
        assert len(np.unique(src.read(1))) > 2


def _strip_scene(folder: Path, width: int, height: int) -> Path:
    """A scene wider than a COG block and low: make_scene's pixels repeated along the row."""
    small, _ = make_scene(folder, size=128, seed=4, nodata_corner=20, name="small.tif")
    with rasterio.open(small) as src:
        profile, data, desc = src.profile, src.read(), src.descriptions
    data = np.tile(data, (1, 1, -(-width // 128)))[:, :height, :width]
    path = folder / "strip.tif"
    with rasterio.open(path, "w", **(profile | {"width": width, "height": height})) as dst:
        dst.write(data)
        dst.descriptions = desc
    return path


def test_cog_overviews_made_tile_by_tile_are_gdals_levels(model, tmp_path):
    """The COGs' overviews, made as the tiles are written: GDAL's levels, each pixel the mode
    (classes) or mean (confidence) of the level below whatever tile it came from, and close to
    what GDAL makes itself; where tiles do not reduce to whole pixels GDAL makes them."""
    from trainer.overviews import mean2, mode2

    scene = _strip_scene(tmp_path, 1100, 70)
    runs = {}
    for tile in (96, 100):  # 96 halves twice (the second level in memory: 24 px); 100 not
        out = tmp_path / f"tile{tile}"
        opts = PredictOptions(chip_size=64, overlap=16, tile_size=tile)
        predict_scene(model, [scene], out, options=opts, progress=False)
        assert sorted(p.name for p in out.iterdir()) == [
            "classes.tif", "confidence.tif", "polygons.geojson", "summary.json"
        ]  # fmt: skip
        runs[tile] = {}
        for name, reduce in (("classes", mode2), ("confidence", mean2)):
            path = out / f"{name}.tif"
            valid, errors, _ = cog_validate(str(path))
            assert valid, errors
            with rasterio.open(path) as src:
                assert src.overviews(1) == [2, 4]
                levels = [src.read(1)]
            for i in (0, 1):
                with rasterio.open(path, overview_level=i) as src:
                    levels.append(src.read(1))
            runs[tile][name] = levels
            assert [a.shape for a in levels] == [(70, 1100), (35, 550), (18, 275)]
            if tile == 96:
                for below, level in zip(levels, levels[1:], strict=False):
                    assert np.array_equal(level, reduce(below, 255))
    made, gdal = runs[96], runs[100]
    for name in ("classes", "confidence"):
        assert np.array_equal(made[name][0], gdal[name][0])  # the same pixels either way
    # against GDAL's own overviews of the same pixels
    assert (made["classes"][1] == gdal["classes"][1]).mean() > 0.97
    assert (made["classes"][1] == 255).any()  # the nodata corners, repeated along the strip
    assert np.array_equal(made["classes"][1] == 255, gdal["classes"][1] == 255)
    diff = made["confidence"][1].astype(int) - gdal["confidence"][1].astype(int)
    assert np.abs(diff).max() <= 1
    assert len(np.unique(made["classes"][0])) > 2
    with rasterio.open(tmp_path / "tile96" / "classes.tif") as src:
        assert src.colormap(1)[0][:3] == (0x1F, 0x77, 0xB4) and src.nodata == 255


def test_bfloat16_forward_agrees_with_float32(model, tmp_path):
    """``precision``: bf16 autocast changes the class of at most a few near-tie pixels, keeps
    probabilities in float32 (confidence within 2 points), and is recorded; auto picks bf16 only
    where the CPU computes bfloat16 natively; a wrong value is refused. The default batch is
    the precision's (two chips per pass in bf16 on the CPU, one in fp32)."""
    import torch

    from trainer.predict import resolve_precision

    scene, _ = make_scene(tmp_path, size=256, seed=9)
    out, batch = {}, {}
    for p in ("fp32", "bf16"):
        s = predict_scene(model, [scene], tmp_path / p, progress=False,
                          options=PredictOptions(precision=p, polygons=False))  # fmt: skip
        assert s["options"]["precision"] == p
        batch[p] = s["options"]["batch_size"]
        with (
            rasterio.open(tmp_path / p / "classes.tif") as a,
            rasterio.open(tmp_path / p / "confidence.tif") as b,
        ):
            out[p] = a.read(1), b.read(1).astype(int)
    agree = (out["fp32"][0] == out["bf16"][0]).mean()
    diff = np.abs(out["fp32"][1] - out["bf16"][1])
    assert 0.99 <= agree and diff.max() <= 2
    assert (diff > 0).any()  # the forward did run in bfloat16
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    # by default bf16 runs two chips per forward pass on the CPU, fp32 one (experiments/perf)
    assert batch["bf16"] == 2 * batch["fp32"]
    with pytest.raises(PredictError, match="precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16")


def test_bfloat16_asked_for_where_the_cpu_emulates_it_is_said(model, tmp_path, monkeypatch):
    """On a CPU without native bfloat16 (AVX2 only), auto is float32; bf16 asked for is what
    runs (its classes agree with float32), said as a warning and in the summary's notes, because
    it is several times slower there; fp32 says nothing."""
    import warnings

    import trainer.device as device
    import trainer.inference as inference

    monkeypatch.setattr(device, "native_bfloat16", lambda: False)
    monkeypatch.setattr(inference, "onednn_bfloat16", lambda: False)
    assert device.resolve_precision("auto") == "fp32"
    scene, _ = make_scene(tmp_path, size=96, seed=9)
    opts = {"polygons": False, "confidence": False}
    with pytest.warns(UserWarning, match="no native bfloat16.*choose fp32"):
        s = predict_scene(model, [scene], tmp_path / "bf16", progress=False,
                          options=PredictOptions(precision="bf16", **opts))  # fmt: skip
    assert s["options"]["precision"] == "bf16"
    assert any("no native bfloat16" in n for n in s["input"]["notes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        f = predict_scene(model, [scene], tmp_path / "fp32", progress=False,
                          options=PredictOptions(precision="fp32", **opts))  # fmt: skip
    assert not any("bfloat16" in n for n in f["input"]["notes"])
    with (
        rasterio.open(tmp_path / "bf16" / "classes.tif") as a,
        rasterio.open(tmp_path / "fp32" / "classes.tif") as b,
    ):
        assert (a.read(1) == b.read(1)).mean() >= 0.99


def test_device_choice(model, tmp_path):
    """``device``: auto is the first CUDA GPU torch sees, else the CPU, and is recorded; a GPU
    that is not there, or an unknown device, is a clear error."""
    import torch

    from trainer.predict import resolve_device

    scene, _ = make_scene(tmp_path, size=64, seed=4)
    s = predict_scene(model, [scene], tmp_path / "o", progress=False,
                      options=PredictOptions(polygons=False))  # fmt: skip
    assert s["options"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(PredictError, match=rf"torch sees {n} CUDA GPU\(s\) here; use --device cpu"):
        resolve_device(f"cuda:{n}")
    for bad in ("tpu", "mps"):
        with pytest.raises(PredictError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_default_chips_are_fitted_to_the_scene():
    """Convolutional nets: as few chips of at most 768 as cover the side with the overlap, each
    as small as that allows (a multiple of the net's stride): no pixels computed in vain."""
    from trainer.predict import ChipGrid, fit_chip

    assert fit_chip(3000, 768, 16, 32) == 768  # 4 chips: 3072 px run for 3000
    assert fit_chip(3000, 768, 32, 32) == 640  # 5 x 640 = 3200 (512-px chips: 7 x 512 = 3584)
    assert fit_chip(1000, 768, 32, 32) == 544
    assert fit_chip(500, 768, 32, 32) == 512  # one chip, padded past the edge
    for side in (700, 1000, 2500, 3000, 6001):
        chip = fit_chip(side, 768, 32, 32)
        grid = ChipGrid(side, chip, 32)
        n = -(-(side - 32) // (768 - 32)) if side > 768 else 1
        assert len(grid.starts) == n and chip % 32 == 0 and chip <= 768
        covered = np.zeros(side, bool)
        for s0 in grid.starts:
            covered[s0 : s0 + chip] = True
        assert covered.all()


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
        PredictError, match="needs bands blue, green, red, nir08; the scene lacks nir08"
    ):
        predict_scene(model, [path], tmp_path / "o", progress=False)


def test_resolution_far_from_training_is_refused(model, tmp_path):
    scene, _ = make_scene(tmp_path, size=64, seed=1, res=30.0)
    with pytest.raises(PredictError, match="resolution is 30 m but the model was trained at 10 m"):
        predict_scene(model, [scene], tmp_path / "o", progress=False)
    # the hint, as written, with rasterio's command from this environment
    with pytest.raises(PredictError) as e:
        predict_scene(model, [scene], tmp_path / "o", progress=False)
    command = str(e.value).split(": ", 2)[-1].split(", or ")[0]
    args = command.replace("IN", str(scene)).replace("OUT.tif", str(tmp_path / "r.tif")).split()
    subprocess.run([str(Path(sys.executable).with_name("rio")), *args[1:]], check=True, timeout=120)
    summary = predict_scene(model, [tmp_path / "r.tif"], tmp_path / "o", progress=False)
    assert summary["n_pixels"] > 0


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


def write_4326_scene(path, source, west, north, dx, dy, nodata_corner=0):
    """``source``'s pixels on an EPSG:4326 grid with ``dx`` x ``dy`` degree pixels."""
    with rasterio.open(source) as src:
        data, desc = src.read(), src.descriptions
    data[:, :nodata_corner, :nodata_corner] = 0
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:4326", nodata=0,
        transform=rasterio.transform.from_origin(west, north, dx, dy),
    ) as dst:  # fmt: skip
        dst.write(data)
        dst.descriptions = desc
    return path


def test_geodesic_class_areas_through_predict_scene_on_epsg4326(model, tmp_path):
    """A scene in degrees at 60° N (pixels ~10 m x 10 m on the ground): the class areas add up to
    the geodesic area of its valid part, within 0.5%; so do the polygons' areas."""
    from pyproj import Geod

    src, _ = make_scene(tmp_path, size=300, seed=7)
    west, north, dx, dy, n, corner = 10.0, 60.0, 0.00018, 0.00009, 300, 30
    path = write_4326_scene(tmp_path / "geo.tif", src, west, north, dx, dy, corner)
    s = predict_scene(
        model, [path], tmp_path / "out", progress=False,
        options=PredictOptions(chip_size=128, overlap=16, tile_size=160),
    )  # fmt: skip
    assert s["crs"] == "EPSG:4326" and s["n_pixels"] == n * n - corner * corner

    def ring(x0, y0, x1, y1, k=100):  # densified, so edges follow parallels, not great circles
        xs, ys = np.linspace(x0, x1, k), np.linspace(y0, y1, k)
        return shapely.Polygon(
            [(x, y0) for x in xs] + [(x1, y) for y in ys] + [(x, y1) for x in xs[::-1]]
            + [(x0, y) for y in ys[::-1]]
        )  # fmt: skip

    geod = Geod(ellps="WGS84")
    scene = ring(west, north, west + n * dx, north - n * dy)
    hole = ring(west, north, west + corner * dx, north - corner * dy)
    known = abs(geod.geometry_area_perimeter(scene)[0]) - abs(geod.geometry_area_perimeter(hole)[0])
    ours = sum(h["area_m2"] for h in s["class_histogram"])
    assert abs(ours - known) / known < 0.005, (ours, known)
    assert 8.5e6 < known < 9.5e6  # ~300 x 300 pixels of ~10 m x 10 m
    fc = json.loads((tmp_path / "out" / "polygons.geojson").read_text())
    assert abs(sum(f["properties"]["area_m2"] for f in fc["features"]) - known) / known < 0.005


def test_metadata_reaches_a_temporal_location_backbone(tmp_path, monkeypatch):
    """Prithvi-EO-2.0-TL gets each chip's date and centre (lon, lat) at prediction, as in training:
    the predicted confidence equals a direct forward pass given that metadata, and differs from
    one given none."""
    import torch
    from pyproj import Transformer

    monkeypatch.setenv("GEOTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path, cmap = make_scene(tmp_path, size=96, seed=2)
    labels = make_labels(tmp_path, path, cmap)
    ingest(name="tl", images=[path], labels=labels, class_column="class_name", block_size=32,
           dates=["2024-07-15"], progress=False)  # fmt: skip
    cfg = compose("train", ["data.dataset=tl", "backbone=prithvi_eo_v2_300_tl", "backbone.size=tiny",
                            "backbone.weights=random", "data.patch_size=32", "data.num_workers=0",
                            "+trainer.fast_dev_run=true", "register.name=tl",
                            "register.alias=champion"])  # fmt: skip
    train(cfg)
    m = load_model("tl@champion")
    with pytest.warns(UserWarning, match="encodes the acquisition date.*Pass --date"):
        predict_scene(m, [path], tmp_path / "blind", progress=False)
    s = predict_scene(
        m, [path], tmp_path / "out", progress=False, dates=["2024-07-15"],
        options=PredictOptions(chip_size=96, overlap=0, polygons=False, precision="fp32"),
    )  # fmt: skip
    assert s["provenance"]["dates"] == ["2024-07-15"]
    with rasterio.open(tmp_path / "out" / "confidence.tif") as src:
        conf = src.read(1).astype(int)
    with rasterio.open(path) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
        cx, cy = src.transform * (48, 48)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(cx, cy)
    from datetime import date

    net = m.net.eval().float()
    meta = net.metadata_for(
        torch.tensor([[date(2024, 7, 15).toordinal()]]), torch.tensor([[lon, lat]])
    )
    with torch.inference_mode():
        given = torch.softmax(net(x.contiguous(), **meta), 1)[0].amax(0).numpy()
        blind = torch.softmax(net(x.contiguous()), 1)[0].amax(0).numpy()
    same_given = (conf == np.round(given * 100)).mean()
    same_blind = (conf == np.round(blind * 100)).mean()
    assert np.abs(conf - np.round(given * 100)).max() <= 1 and same_given > 0.99
    assert np.abs(given - blind).max() > 1e-3 and same_blind < 0.9


CAPPED = """
import json, resource, sys
import numpy as np
from trainer.predict import PredictOptions, predict_scene
from trainer.registry import load_model

model = load_model("p@champion")
opts = PredictOptions(chip_size=256, overlap=32, tile_size=512, batch_size=2)
predict_scene(model, [sys.argv[5]], sys.argv[2] + "-warm", options=opts, progress=False)
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
cap = vm + int(sys.argv[3]) * 2**20  # the loaded, warmed-up stack + a small margin
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
side, k = int(sys.argv[4]), model.record["num_classes"]
try:  # the blend accumulators of the whole scene (K probabilities + weights) cannot exist here
    np.ones((k + 1, side, side), np.float32)
    sys.exit("the cap does not bite: whole-scene accumulators fit")
except MemoryError:
    pass
print(json.dumps(predict_scene(model, [sys.argv[1]], sys.argv[2], options=opts, progress=False)))
"""


def mosaic(base: Path, path: Path, side: int, block: int) -> Path:
    """A ``side`` x ``side`` tiled GeoTIFF made of copies of ``base`` (``block`` x ``block``
    pixels), written block by block."""
    with rasterio.open(base) as src:
        data, profile, desc = src.read(), src.profile, src.descriptions
    profile.update(width=side, height=side, tiled=True, blockxsize=block, blockysize=block,
                   compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, block):
            for c in range(0, side, block):
                dst.write(data, window=rasterio.windows.Window(c, r, block, block))
        dst.descriptions = desc
    return path


def test_scene_larger_than_a_memory_cap(model, tmp_path):
    """A 3584 x 3584 scene predicted in a process whose address space is capped at what the
    loaded model needs after a warm-up prediction of 1024² (every chip shape, full batches, the
    threads at work) + 150 MB: its float32 blend accumulators alone (4 x 51 MB) exceed the
    margin; the four outputs come out complete and valid."""
    import os
    import subprocess
    import sys

    side, block = 3584, 256
    base, _ = make_scene(tmp_path, size=block, seed=4, name="base.tif")
    big = mosaic(base, tmp_path / "big.tif", side, block)
    warm = mosaic(base, tmp_path / "warm.tif", 1024, block)
    env = dict(os.environ, GEOTUNE_HOME=str(model.tmp / "home"), MALLOC_ARENA_MAX="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", CAPPED, str(big), str(out), "150", str(side), str(warm)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["n_pixels"] == side * side
    for name in ("classes.tif", "confidence.tif"):
        valid, errors, _ = cog_validate(str(out / name))
        assert valid, errors
    with rasterio.open(out / "classes.tif") as src:
        assert src.shape == (side, side)
        counts = np.bincount(src.read(1, out_shape=(side // 8, side // 8)).ravel(), minlength=256)
    assert counts[255] == 0 and (counts[:3] > 0).sum() >= 2
    fc = json.loads((out / "polygons.geojson").read_text())
    assert len(fc["features"]) == s["n_polygons"] > 100
    total = sum(f["properties"]["area_m2"] for f in fc["features"])
    assert math.isclose(total, side * side * 100.0, rel_tol=2e-3)  # ellipsoid vs UTM map


def test_polygons_on_a_geographic_grid_stay_valid_across_tile_seams(tmp_path):
    """On a lon/lat grid whose pixel size no float holds exactly (1/11132°, as GDAL writes for
    ~10 m), the pieces of a polygon on either side of a tile seam are merged in pixel space:
    every polygon is one valid Polygon, as many as the whole raster makes at once, and burnt
    back they give the raster. (Merged in degrees, seams a rounding apart left slivers: invalid
    MultiPolygons.)"""
    from pyproj import Transformer
    from rasterio.crs import CRS
    from rasterio.features import rasterize
    from rasterio.transform import from_origin
    from scipy import ndimage

    from trainer.polygons import PolygonCollector
    from trainer.predict import tiles

    rng = np.random.default_rng(5)
    n, k = 240, 3
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)), 3)
    cls = np.digitize(field, np.quantile(field, [0.4, 0.7])).astype(np.uint8)
    cls[rng.random((n, n)) < 0.002] = 255
    conf = rng.random(cls.shape).astype(np.float32)
    grid = Grid(CRS.from_epsg(4326), from_origin(10.123, 45.678, 1 / 11132, 1 / 11132), n, n)
    classes = [{"id": i, "name": f"c{i}"} for i in range(k)]

    def run(tile):
        col = PolygonCollector(grid, classes)
        for w in tiles(n, n, tile):
            sl = (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
            col.add(w, cls[sl], conf[sl], cls[sl] != 255, 255)
        col.write(tmp_path / f"{tile}.geojson")
        return json.loads((tmp_path / f"{tile}.geojson").read_text())["features"]

    whole, tiled = run(n), run(23)
    assert len(tiled) == len(whole) > 50
    geoms = [shapely.geometry.shape(f["geometry"]) for f in tiled]
    assert all(g.geom_type == "Polygon" and g.is_valid for g in geoms)
    to_grid = Transformer.from_crs("OGC:CRS84", "EPSG:4326", always_xy=True)
    shapes = [
        (
            shapely.transform(g, lambda xy: np.column_stack(to_grid.transform(*xy.T))),
            f["properties"]["class_id"],
        )
        for g, f in zip(geoms, tiled, strict=True)
    ]
    burnt = rasterize(
        shapes, out_shape=cls.shape, transform=grid.transform, fill=255, dtype="uint8"
    )
    np.testing.assert_array_equal(burnt, cls)


def test_merged_polygons_drop_straight_vertices_and_keep_their_type():
    """The last step of merging seam pieces: vertices on a straight line between their
    neighbours go (the ring start included), a polygon in parts stays a MultiPolygon beside
    Polygons, and the shapes are unchanged."""
    from trainer.polygons import _without_straight_vertices

    square = shapely.Polygon([(1, 0), (2, 0), (2, 2), (0, 2), (0, 0), (1, 0)])  # starts mid-edge
    holed = shapely.Polygon(
        [(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)], [[(1, 1), (1, 2), (1, 3), (3, 3), (3, 1), (1, 1)]]
    )
    tall = shapely.Polygon([(2, 0), (3, 0), (3, 1), (3, 2), (2, 2), (2, 0)])
    parts = shapely.MultiPolygon([shapely.box(0, 0, 1, 1), tall])
    for given in ([square, holed], [square, parts, holed]):
        got = _without_straight_vertices(np.array(given, dtype=object))
        assert [g.geom_type for g in got] == [g.geom_type for g in given]
        assert all(a.equals(b) and b.is_valid for a, b in zip(given, got, strict=True))
    assert shapely.get_num_coordinates(given).tolist() == [6, 11, 11]
    assert shapely.get_num_coordinates(got).tolist() == [5, 10, 10]


def test_a_polygon_is_written_once_no_tile_to_come_can_go_on_with_it(tmp_path):
    """A polygon across two tiles of a row is merged and written as soon as its second tile is
    in, before the row is finished; one that reaches down waits for the tile below it."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from trainer.polygons import PolygonCollector
    from trainer.predict import tiles

    cls = np.full((40, 60), 255, np.uint8)
    cls[5:10, 10:30] = 0  # across the first two tiles of the top row, clear of its bottom edge
    cls[12:30, 45:55] = 1  # in the top row's last tile, down into the tile below it
    conf = np.full(cls.shape, 0.5, np.float32)
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5000000), 60, 40)
    col = PolygonCollector(grid, [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}])
    written = []
    for w in tiles(60, 40, 20):
        sl = (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
        col.add(w, cls[sl], conf[sl], cls[sl] != 255, 255)
        written.append(col.count)
    assert written == [0, 1, 1, 1, 1, 2]  # the second at the tile below its piece (last one)
    assert not col.pieces
    assert col.write(tmp_path / "p.geojson") == 2
    feats = json.loads((tmp_path / "p.geojson").read_text())["features"]
    areas = sorted(f["properties"]["area_m2"] / 100 for f in feats)  # pixels (~, on UTM)
    assert [round(a) for a in areas] == [100, 180]


def test_polygons_merge_across_tiles_and_finished_rows_are_released(tmp_path):
    """Tiled polygonisation gives the polygons of the whole raster at once (same shapes, areas
    and mean confidences), and pieces of finished polygons are not kept until the end."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from trainer.polygons import PolygonCollector
    from trainer.predict import tiles

    rng = np.random.default_rng(3)
    cls = np.kron(rng.integers(0, 3, (12, 12)), np.ones((8, 8), int)).astype(np.uint8)
    cls[30:50, 30:50] = 1  # a ring of class 1 around a hole of class 2, across tiles
    cls[36:44, 36:44] = 2
    cls[:5, :5] = 255
    conf = rng.random(cls.shape).astype(np.float32)
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 5000000), 96, 96)
    classes = [{"id": i, "name": f"c{i}"} for i in range(3)]

    def run(tile):
        col, held = PolygonCollector(grid, classes), []
        for w in tiles(96, 96, tile):
            sl = (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
            col.add(w, cls[sl], conf[sl], cls[sl] != 255, 255)
            held.append(len(col.pieces))
        col.write(tmp_path / f"{tile}.geojson")
        feats = json.loads((tmp_path / f"{tile}.geojson").read_text())["features"]
        return feats, held, col.next_id - 1

    whole, _, _ = run(96)
    tiled, held, n_pieces = run(20)  # uneven tiles: 20, 20, 20, 20, 16
    assert len(tiled) == len(whole) > 40
    key = lambda f: (f["properties"]["class_id"], f["properties"]["area_m2"],  # noqa: E731
                     shapely.geometry.shape(f["geometry"]).representative_point().wkt)  # fmt: skip
    for a, b in zip(sorted(whole, key=key), sorted(tiled, key=key), strict=True):
        ga, gb = shapely.geometry.shape(a["geometry"]), shapely.geometry.shape(b["geometry"])
        assert ga.geom_type == gb.geom_type == "Polygon" and len(ga.interiors) == len(gb.interiors)
        # the same shape (vertices rounded to 1e-7° may differ along straight edges)
        assert ga.symmetric_difference(gb).area < 1e-4 * ga.area
        assert a["properties"]["class_id"] == b["properties"]["class_id"]
        assert a["properties"]["area_m2"] == b["properties"]["area_m2"]
        assert abs(a["properties"]["mean_confidence"] - b["properties"]["mean_confidence"]) < 1e-4
    assert n_pieces > 100 and max(held) < n_pieces / 2
