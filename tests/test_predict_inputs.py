"""A model on imagery it did not see at training: the model's sensor by default, that sensor's
fill value where a file declares no nodata (a clipped Landsat scene with a zero collar, through
the CLI and over HTTP), exact conversion of another sensor's values with a warning, refusal of
values that cannot be converted, and the registered MLM card read by stac-model."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import rasterio
from conftest import env_with_home
from mlm_check import apply_value_scaling, check_mlm_item
from test_checkpoints import _official_prithvi_file
from test_serve import Server
from test_units import LANDSAT6, dataset, write_scene

from trainer.config import compose
from trainer.predict import PredictError, PredictOptions, predict_scene
from trainer.registry import load_model
from trainer.train import train

GEOTUNE = [sys.executable, "-m", "trainer.cli"]
FP32 = PredictOptions(precision="fp32", tile_size=64)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Prithvi-EO-2.0 from an official-layout file, and a ResNet with Landsat's thermal
    band from random weights, both fine-tuned on Landsat C2 L2 scenes that declare no nodata."""
    tmp = tmp_path_factory.mktemp("inputs")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOTUNE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ckpt = tmp / "Prithvi_EO_V2_300M.pt"
        _official_prithvi_file("prithvi_eo_v2_300", ckpt)
        dataset(tmp, "ls", LANDSAT6, "landsat-c2-l2", collar=20)
        run = [
            "data.num_workers=0",
            "data.patch_size=32",
            "+trainer.fast_dev_run=true",
            "backbone.size=tiny",
            "register.alias=champion",
        ]
        train(
            compose(
                "train",
                [
                    "data.dataset=ls",
                    "backbone=prithvi_eo_v2_300",
                    f"backbone.weights={ckpt}",
                    "register.name=ls",
                    *run,
                ],
            )
        )
        dataset(tmp, "thermal", [*LANDSAT6, "lwir11"], "landsat-c2-l2")
        train(
            compose(
                "train",
                ["data.dataset=thermal", "backbone.weights=random", "register.name=thermal", *run],
            )
        )
        loaded = {name: load_model(f"{name}@champion") for name in ("ls", "thermal")}
        card = mlflow.artifacts.load_text(
            f"{mlflow.MlflowClient().get_model_version_download_uri('ls', '1')}/artifacts/mlm-item.json"
        )
    return {"home": home, "tmp": tmp, "card": json.loads(card), **loaded}


def test_the_card_applied_to_stored_values_is_what_the_encoder_sees(models):
    import torch

    model = models["ls"]
    rec = model.record
    scaling = check_mlm_item(models["card"], rec)
    assert models["card"]["properties"]["mlm:input"][0]["input"]["shape"] == [-1, 6, 32, 32]
    stored = np.full((6, 4, 4), 10909.0)
    with torch.inference_mode():
        seen = model.net.normalize(torch.from_numpy(stored[None]).float())[0].double().numpy()
    np.testing.assert_allclose(apply_value_scaling(scaling, stored), seen, atol=1e-5)
    assert -0.05 < seen[0, 0, 0] < -0.03  # reflectance 0.1 in HLS statistics, not +4.4
    assert rec["normalization"]["statistics"] == "published"
    assert rec["normalization"]["input_units"][0]["scale"] == 2.75e-5


def collar_scene(folder, name="collar.tif"):
    """A clipped Landsat C2 L2 scene: a zero collar, no nodata tag; returns the valid mask."""
    path, _ = write_scene(folder / name, LANDSAT6, size=96, collar=24, seed=3)
    with rasterio.open(path) as src:
        assert src.nodata is None
        valid = (src.read() != 0).any(0)
    return path, valid


def check_outputs(out, valid, summary):
    with rasterio.open(out / "classes.tif") as src:
        cls = src.read(1)
    with rasterio.open(out / "confidence.tif") as src:
        conf = src.read(1)
    assert (cls[~valid] == 255).all() and (conf[~valid] == 255).all()
    assert (cls[valid] != 255).all() and (conf[valid] <= 100).all()
    assert summary["n_pixels"] == valid.sum() < valid.size
    # areas of the valid pixels only: 30 m UTM pixels, on the ground (the projection's scale)
    area = sum(h["area_m2"] for h in summary["class_histogram"])
    assert area == pytest.approx(valid.sum() * 900, rel=2e-3)
    polygons = json.loads((out / "polygons.geojson").read_text())["features"]
    assert sum(f["properties"]["area_m2"] for f in polygons) == pytest.approx(area, rel=1e-6)
    assert summary["input"]["nodata"] == 0
    assert summary["input"]["nodata_source"] == "landsat-c2-l2 fill value; the file declares none"
    assert summary["input"]["sensor"] == "landsat-c2-l2"
    assert summary["input"]["sensor_source"] == "the model's"


def test_collar_without_a_nodata_tag_is_nodata_through_the_cli(models, tmp_path):
    scene, valid = collar_scene(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(
        [
            *GEOTUNE,
            "predict",
            "--model",
            "ls@champion",
            "--image",
            str(scene),
            "--out",
            str(out),
            "--precision",
            "fp32",
        ],
        capture_output=True,
        text=True,
        env=env_with_home(models["home"]) | {"NO_COLOR": "1"},
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "declares no nodata" in p.stderr and "\x1b[" not in p.stderr + p.stdout
    assert "input: landsat-c2-l2 (the model's); nodata 0 (landsat-c2-l2 fill value" in p.stdout
    check_outputs(out, valid, json.loads((out / "summary.json").read_text()))


def test_collar_without_a_nodata_tag_is_nodata_over_http(models, tmp_path):
    scene, valid = collar_scene(tmp_path)
    server = Server(models["home"], "--dev").start()
    try:
        with server.client() as c:
            r = c.post(
                "/v1/models/ls/predict",
                files={"image": scene.read_bytes()},
                data={"precision": "fp32"},
            )
            assert r.status_code == 200, r.text
            answer = r.json()
            out = tmp_path / "http"
            out.mkdir()
            for name in ("classes", "confidence", "polygons", "summary"):
                (out / answer["links"][name].rsplit("/", 1)[1]).write_bytes(
                    c.get(answer["links"][name]).content
                )
    finally:
        server.stop()
    assert answer["input"]["sensor_source"] == "the model's" and answer["n_pixels"] == valid.sum()
    check_outputs(out, valid, json.loads((out / "summary.json").read_text()))


def test_another_sensor_is_converted_exactly_and_loudly(models, tmp_path):
    """The same reflectances stored as Sentinel-2 L2A (x 10000) predict what the Landsat
    scene predicts, with a warning that the model never saw this sensor."""
    scene, valid = collar_scene(tmp_path)
    with rasterio.open(scene) as src:
        ls, profile = src.read().astype(np.float64), src.profile
    # the collar too holds what Landsat's 0 means (the encoder sees it around the valid pixels)
    s2 = ((ls * 2.75e-5 - 0.2) * 1e4).astype(np.float32)
    s2_profile = profile | {"dtype": "float32", "nodata": -2000.0}
    with rasterio.open(tmp_path / "s2.tif", "w", **s2_profile) as dst:
        dst.write(s2)
        dst.descriptions = tuple(LANDSAT6)
    a = predict_scene(models["ls"], [scene], tmp_path / "ls", options=FP32, progress=False)
    with pytest.warns(
        UserWarning, match="trained on landsat-c2-l2 imagery and this is sentinel-2-l2a"
    ):
        b = predict_scene(
            models["ls"],
            [tmp_path / "s2.tif"],
            tmp_path / "s2",
            options=FP32,
            sensor="sentinel-2-l2a",
            progress=False,
        )
    assert b["input"]["sensor_source"] == "given" and b["input"]["conversion"]["gain"][0] == (
        pytest.approx(1e-4 / 2.75e-5)
    )
    with (
        rasterio.open(tmp_path / "ls" / "confidence.tif") as x,
        rasterio.open(tmp_path / "s2" / "confidence.tif") as y,
    ):
        ca, cb = x.read(1).astype(int), y.read(1).astype(int)
    assert np.abs(ca - cb).max() <= 1 and a["n_pixels"] == b["n_pixels"] == valid.sum()


def test_reflectance_as_floats_is_converted_exactly_and_said(models, tmp_path):
    """The Landsat scene as Google Earth Engine exports it: surface reflectance 0..1 as float32
    (the collar too: Landsat's 0 is -0.2), nodata -0.2, which a float32 band holds only as the
    float32 nearest it. It predicts what the stored values predict, and says so."""
    scene, valid = collar_scene(tmp_path)
    with rasterio.open(scene) as src:
        ls, profile = src.read().astype(np.float64), src.profile
    refl = (ls * 2.75e-5 - 0.2).astype(np.float32)
    with rasterio.open(
        tmp_path / "gee.tif", "w", **profile | {"dtype": "float32", "nodata": -0.2}
    ) as dst:
        dst.write(refl)
        dst.descriptions = tuple(LANDSAT6)
    a = predict_scene(models["ls"], [scene], tmp_path / "ls", options=FP32, progress=False)
    with pytest.warns(UserWarning, match=r"gee.tif holds reflectance as floats \(band medians"):
        b = predict_scene(
            models["ls"], [tmp_path / "gee.tif"], tmp_path / "gee", options=FP32, progress=False
        )
    gain, bias = b["input"]["conversion"]["gain"], b["input"]["conversion"]["bias"]
    assert gain[0] == pytest.approx(1 / 2.75e-5) and bias[0] == pytest.approx(0.2 / 2.75e-5)
    assert any("read as reflectance 0..1" in n for n in b["input"]["notes"])
    assert not any("check its units" in n for n in b["input"]["notes"])
    with (
        rasterio.open(tmp_path / "ls" / "confidence.tif") as x,
        rasterio.open(tmp_path / "gee" / "confidence.tif") as y,
    ):
        ca, cb = x.read(1).astype(int), y.read(1).astype(int)
    assert np.abs(ca - cb).max() <= 1 and a["n_pixels"] == b["n_pixels"] == valid.sum()
    # the same floats x 10000 (not reflectance 0..1): no conversion, the units warning
    with rasterio.open(
        tmp_path / "x1e4.tif", "w", **profile | {"dtype": "float32", "nodata": -2000.0}
    ) as dst:
        dst.write(refl * 1e4)
        dst.descriptions = tuple(LANDSAT6)
    with pytest.warns(UserWarning, match="check its units"):
        c = predict_scene(
            models["ls"], [tmp_path / "x1e4.tif"], tmp_path / "x1e4", options=FP32, progress=False
        )
    assert c["input"]["conversion"] is None


def test_a_model_of_reflectance_as_floats_predicts_the_sensors_stored_values(home, tmp_path):
    """Trained on Landsat reflectance as floats 0..1 (a Google Earth Engine export), a model
    predicts the scene as Landsat C2 L2 stores it (converted exactly) and as floats (its own
    units) alike."""
    with pytest.warns(UserWarning, match="holds reflectance as floats"):
        dataset(tmp_path, "fl", LANDSAT6, "landsat-c2-l2", low=0.02, high=0.3, dtype="float32")
    train(
        compose(
            "train",
            ["data.dataset=fl", "backbone.weights=random", "register.name=fl",
             "data.num_workers=0", "data.patch_size=32", "+trainer.fast_dev_run=true",
             "backbone.size=tiny", "register.alias=champion"],
        )
    )  # fmt: skip
    model = load_model("fl@champion")
    assert model.record["normalization"]["input_units"][0]["scale"] == 1.0
    with rasterio.open(tmp_path / "fl.tif") as src:
        refl, profile = src.read().astype(np.float64), src.profile
    with rasterio.open(
        tmp_path / "dn.tif", "w", **profile | {"dtype": "uint16", "nodata": 0}
    ) as dst:
        dst.write(np.round((refl + 0.2) / 2.75e-5).astype(np.uint16))
        dst.descriptions = tuple(LANDSAT6)
    a = predict_scene(model, [tmp_path / "fl.tif"], tmp_path / "a", options=FP32, progress=False)
    b = predict_scene(model, [tmp_path / "dn.tif"], tmp_path / "b", options=FP32, progress=False)
    assert a["input"]["conversion"] is None
    assert any("read as reflectance 0..1, the model's units" in n for n in a["input"]["notes"])
    assert b["input"]["conversion"]["gain"][0] == pytest.approx(2.75e-5)
    assert b["input"]["conversion"]["bias"][0] == pytest.approx(-0.2)
    assert not any("declares its own scale" in n for n in a["input"]["notes"] + b["input"]["notes"])
    with (
        rasterio.open(tmp_path / "a" / "confidence.tif") as x,
        rasterio.open(tmp_path / "b" / "confidence.tif") as y,
    ):
        assert np.abs(x.read(1).astype(int) - y.read(1).astype(int)).max() <= 1


def test_values_that_cannot_be_converted_are_refused(models, tmp_path):
    """Landsat C2 L1 stores thermal radiance where the model was trained on L2 surface
    temperature: refused, naming the sensor to use."""
    path, _ = write_scene(tmp_path / "l1.tif", [*LANDSAT6, "lwir11"], size=64)
    with pytest.raises(
        PredictError,
        match=r"takes landsat-c2-l2 values.*landsat-c2-l1 values "
        r"\(.*TOA radiance.*\) cannot be converted.*--sensor landsat-c2-l2",
    ):
        predict_scene(
            models["thermal"], [path], tmp_path / "out", sensor="landsat-c2-l1", progress=False
        )
    assert not (tmp_path / "out").exists()
    s = predict_scene(models["thermal"], [path], tmp_path / "ok", options=FP32, progress=False)
    assert s["input"]["conversion"] is None and s["input"]["sensor"] == "landsat-c2-l2"


def test_a_model_registered_before_units_were_recorded_still_predicts(
    models, tmp_path, monkeypatch
):
    """A version-1 model record (as geotune wrote them before: no normalization, no units) is
    upgraded when loaded and predicts as it did, the collar nodata included."""
    from trainer.registry import log_model, register, setup_mlflow

    monkeypatch.setenv("GEOTUNE_HOME", str(models["home"]))
    new = models["ls"]
    old = {k: v for k, v in new.record.items() if k != "normalization"} | {"geotune_model": 1}
    setup_mlflow()
    mlflow.set_experiment("geotune")
    with mlflow.start_run() as run:
        pass
    info = log_model(run.info.run_id, new.net, old, "")
    register(info.model_uri, "old", "champion", {})
    loaded = load_model("old@champion")
    assert loaded.record["geotune_model"] == 2 and loaded.record["normalization"]["input_units"]
    scene, valid = collar_scene(tmp_path)
    a = predict_scene(new, [scene], tmp_path / "new", options=FP32, progress=False)
    b = predict_scene(loaded, [scene], tmp_path / "old", options=FP32, progress=False)
    assert a["class_histogram"] == b["class_histogram"] and b["n_pixels"] == valid.sum()


def test_scene_medians_read_a_one_file_scenes_coarsest_overview(tmp_path):
    # the units check samples the scene's values before the first forward pass: from a file's
    # overview when it has one (a block or two), else from windows spread over the scene
    from datamodules.imagery import open_scenes
    from trainer.inputs import scene_medians

    profile = {"driver": "GTiff", "width": 1024, "height": 1024, "count": 2, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": rasterio.Affine(10, 0, 500000, 0, -10, 4e6),
               "nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256}  # fmt: skip
    data = np.stack([np.full((1024, 1024), 1000), np.full((1024, 1024), 2000)]).astype(np.uint16)
    data[:, :, :300] = 0  # a nodata collar: no value of the samples
    with_ov, without = tmp_path / "ov.tif", tmp_path / "plain.tif"
    for path in (with_ov, without):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = ("red", "nir08")
    with rasterio.open(with_ov, "r+") as dst:
        dst.build_overviews([2, 4, 16], rasterio.enums.Resampling.nearest)
        dst.write(data * 3)  # the full resolution changed after: the overviews hold the old
    (scene,) = open_scenes([with_ov])
    assert scene_medians(scene, ["nir08", "red"]).tolist() == [2000, 1000]  # from 1024/4 = 256²
    (scene,) = open_scenes([without])
    assert scene_medians(scene, ["nir08", "red"]).tolist() == [2000, 1000]
    # band files: windows on the scene's grid, which SceneReader stacks
    parts = []
    for i, name in enumerate(("red", "nir08")):
        parts.append(tmp_path / f"{name}.tif")
        with rasterio.open(parts[-1], "w", **(profile | {"count": 1})) as dst:
            dst.write(data[i : i + 1] * 3)
            dst.descriptions = (name,)
    (scene,) = open_scenes(parts)
    assert scene_medians(scene, ["red", "nir08"]).tolist() == [3000, 6000]
    data[:] = 0
    with rasterio.open(without, "r+") as dst:
        dst.write(data)
    (scene,) = open_scenes([without])
    assert scene_medians(scene, ["red"]) is None


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_a_model_of_a_scene_in_degrees_or_web_mercator_predicts_that_scene(
    home, scene, tmp_path, crs
):
    """A dataset in degrees (Copernicus Browser's default) or Web Mercator (a web map's
    export, 1.3x the ground size at 38°N): the model records its pixel size in metres on the
    ground, so the same scene passes the resolution check, and the outputs are on its grid."""
    from synth import in_crs

    from datamodules.ingest import ingest

    image = in_crs(scene["image"], tmp_path / "scene.tif", crs)
    ingest(name="geo", images=[image], labels=scene["labels"], class_column="class_name",
           block_size=32, progress=False)  # fmt: skip
    train(
        compose(
            "train",
            ["data.dataset=geo", "backbone.weights=random", "register.name=geo",
             "data.num_workers=0", "data.patch_size=32", "+trainer.fast_dev_run=true",
             "backbone.size=tiny", "register.alias=champion"],
        )
    )  # fmt: skip
    model = load_model("geo@champion")
    metres = model.record["resolution"]
    assert all(8.0 < v < 12.0 for v in metres)  # the 10 m pixels, not 0.0001° or 12.7 units
    out = predict_scene(model, [image], tmp_path / "out", options=FP32, progress=False)
    with rasterio.open(image) as src, rasterio.open(tmp_path / "out" / "classes.tif") as got:
        assert (got.crs, got.transform, got.shape) == (src.crs, src.transform, src.shape)
        assert (got.read(1) != 255).mean() > 0.9
    assert out["resolution"] == list(src.res)  # the summary's: the grid's own units
