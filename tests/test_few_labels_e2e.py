"""A few polygons on a large-ish scene, all the way to a prediction, with the defaults a new
user has: one polygon per class (no validation split) from the command line and over HTTP, a
class with one polygon among many, a mask with a class in one corner. Errors of the user's
config are one line, no traceback. Tiny random backbones; label densities of a handful of
hand-drawn polygons (well under 1% of the scene)."""

import subprocess
import sys

import geopandas as gpd
import mlflow
import numpy as np
import pytest
import rasterio
from conftest import env_with_home
from synth import few_polygons, make_scene
from test_serve import (  # noqa: F401
    assert_error,
    check_prediction,
    create_key,
    ingest_job,
    servers,
    wait_job,
)

from datamodules.ingest import ingest
from trainer.config import compose
from trainer.predict import predict_scene
from trainer.registry import load_model
from trainer.train import train

GEOTUNE = [sys.executable, "-m", "trainer.cli"]
QUICK = ["data.num_workers=0", "data.batch_size=4", "data.chips_per_epoch=8"]


def run(args, home, check=True):
    p = subprocess.run(
        GEOTUNE + args, capture_output=True, text=True, env=env_with_home(home), timeout=900
    )
    if check:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture
def few(tmp_path):
    """A 768² scene and one small polygon (80-225 px) per class: 0.05% of it labelled."""
    image, cmap = make_scene(tmp_path, size=768, seed=2)
    labels = few_polygons(tmp_path, image, cmap, {"water": 1, "forest": 1, "field": 1})
    return image, labels


def test_one_polygon_per_class_from_the_command_line_to_a_prediction(home, few, tmp_path):
    image, labels = few
    p = run(
        [
            "data",
            "add",
            "--name",
            "py",
            "--image",
            str(image),
            "--labels",
            str(labels),
            "--class-column",
            "class_name",
        ],
        home,
    )
    assert "warning: water: train only, no held-out metric (1 polygon)" in p.stderr
    assert "warning: no validation labels" in p.stderr and "Traceback" not in p.stderr
    # the hint's model is what ``--model py@champion`` below finds
    assert "next: geotune train data.dataset=py" in p.stdout
    assert "register.name=py register.alias=champion" in p.stdout
    p = run(
        [
            "train",
            "data.dataset=py",
            "backbone=resnet18",
            "backbone.size=tiny",
            "backbone.weights=random",
            "trainer.max_epochs=2",
            *QUICK,
            "register.name=py",
            "register.alias=champion",
        ],
        home,
    )
    note = "no validation labels: training for 2 epochs without early stopping; no held-out metric"
    assert p.stdout.count(note) == 2  # said once before training, once with the result
    assert "8 training chips of 64 px per epoch, drawn around labelled pixels" in p.stdout
    assert "registered: py version 1" in p.stdout and "test/mIoU" not in p.stdout
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias("py", "champion")
    run_ = client.get_run(mv.run_id)
    assert not any(k.startswith(("val/", "test/")) for k in run_.data.metrics)
    assert run_.data.tags["geotune.held_out"] == "none"
    assert run_.data.params["resolved.data.patch_size"] == "64"
    model = load_model("py@champion")
    assert model.record["evaluation"]["metrics"] == ["train"]
    assert (
        model.record["evaluation"]["weights"] == "last epoch" and model.record["patch_size"] == 64
    )
    out = tmp_path / "pred"
    run(["predict", "--model", "py@champion", "--image", str(image), "--out", str(out)], home)
    with rasterio.open(out / "classes.tif") as src:
        classes = src.read(1)
    assert classes.shape == (768, 768) and set(np.unique(classes)) <= {0, 1, 2}


def _train_and_predict(name, home, tmp_path, image, extra=()):
    cfg = compose(
        "train",
        [
            f"data.dataset={name}",
            "backbone.size=tiny",
            "backbone.weights=random",
            "trainer.max_epochs=1",
            *QUICK,
            f"register.name={name}",
            *extra,
        ],
    )
    result = train(cfg)
    summary = predict_scene(load_model(name, version=1), [image], tmp_path / name, progress=False)
    assert summary["n_pixels"] > 0 and (tmp_path / name / "classes.tif").is_file()
    return result


def test_a_class_with_one_polygon_among_many_trains_and_predicts(home, scene, tmp_path):
    gdf = gpd.read_file(scene["labels"])
    path = tmp_path / "rare.geojson"
    gpd.pd.concat(
        [gdf[gdf["class_name"] != "water"], gdf[gdf["class_name"] == "water"].iloc[:1]]
    ).to_file(path)
    with pytest.warns(UserWarning, match="water: train only"):
        ingest(
            name="rare",
            images=[scene["image"]],
            labels=path,
            class_column="class_name",
            block_size=32,
            progress=False,
        )
    result = _train_and_predict("rare", home, tmp_path, scene["image"], ["data.patch_size=64"])
    assert result["evaluation"]["metrics"] == ["train", "val", "test"]
    assert "test/mIoU" in result["test"] and "test/IoU/water" not in result["test"]
    assert result["best_checkpoint"]  # early stopping and the best epoch, as before


def test_a_mask_with_a_class_in_one_corner_trains_and_predicts(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=256, seed=0)
    mask = np.where(cmap == 2, 0, 1).astype(np.uint8)
    mask[:40, :40] = 2
    with rasterio.open(image) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(mask, 1)
    with pytest.warns(UserWarning, match="2: train only"):
        ingest(
            name="corner",
            images=[image],
            labels=tmp_path / "mask.tif",
            block_size=64,
            progress=False,
        )
    result = _train_and_predict("corner", home, tmp_path, image, ["data.patch_size=64"])
    assert "test/IoU/0" in result["test"] and "test/IoU/2" not in result["test"]


def test_a_dataset_with_test_but_no_validation_labels_tests_the_last_epoch(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=768, seed=2)
    labels = few_polygons(tmp_path, image, cmap, {"water": 4, "forest": 4, "field": 4})
    ds = ingest(
        name="noval",
        images=[image],
        labels=labels,
        class_column="class_name",
        block_size=128,
        split_fractions={"train": 0.8, "val": 0, "test": 0.2},
        progress=False,
    )
    assert set(ds.manifest["splits"]["units"]) == {"train", "test"}
    result = _train_and_predict("noval", home, tmp_path, image)
    assert result["evaluation"]["early_stopping"] is False and result["best_checkpoint"] is None
    assert result["evaluation"]["weights"] == "last epoch" and result["val"] == {}
    assert "test/mIoU" in result["test"]


def test_config_errors_are_one_line_without_a_traceback(home, few):
    p = run(["train", "backbone.weights=random"], home, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "error: data.dataset is not set: give it on the command line, e.g. geotune train "
        "data.dataset=... (geotune data list shows your datasets)"
    )
    p = run(["train", "data.dataset=x", "data.patchsize=64"], home, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (
        "error: Could not override 'data.patchsize'. To append to your config use +data.patchsize=64"
        in p.stderr
    )
    p = run(["train", "--verbose", "data.dataset=x", "backbone=resnet19"], home, check=False)
    assert p.returncode == 2 and "Traceback" in p.stderr
    assert (
        "error: In 'train': Could not find 'backbone/resnet19'. Available options in 'backbone': clay_v1_5,"
        in p.stderr
    )
    p = run(["benchmark", "data.dataset=x", "seeds=[0]"], home, check=False)
    assert p.returncode == 2 and "error: no dataset 'x'" in p.stderr and "Traceback" not in p.stderr


def test_few_polygons_over_http_with_no_extra_fields(home, few, servers, tmp_path):  # noqa: F811
    image, labels = few
    key = create_key(home, "alice")
    client = servers().client(key)
    with open(image, "rb") as img, open(labels, "rb") as lab:
        r = client.post(
            "/v1/datasets",
            data={"name": "py", "class_column": "class_name"},
            files={"image": ("scene.tif", img), "labels": ("few.geojson", lab)},
        )
    ingest = ingest_job(client, r)
    assert ingest["state"] == "succeeded", ingest
    notes = " ".join(ingest["result"]["warnings"])
    assert "field: train only, no held-out metric (1 polygon)" in notes
    assert "(block_size=256 px apart)" in notes and "--" not in notes  # the HTTP field's name
    assert ingest["result"]["dataset"]["splits"]["reach"]["water"]["splits"] == ["train"]
    job = client.post(
        "/v1/finetunes",
        json={
            "dataset": "py",
            "model_name": "py",
            "size": "tiny",
            "weights": "random",
            "epochs": 1,
            "num_workers": 0,
        },
    )
    assert job.status_code == 202, job.text
    done = wait_job(client, job.json()["id"], timeout=900)
    assert done["state"] == "succeeded", done
    assert done["result"]["held_out"] == [] and done["result"]["metrics"] == {}
    with open(image, "rb") as img:
        answer = client.post(
            "/v1/models/py/predict?alias=champion", files={"image": ("s.tif", img)}
        )
    assert answer.status_code == 200, answer.text
    check_prediction(client, answer.json(), image, tmp_path)
    # a fine-tune that cannot work on the user's data says why in one line, before any job
    bad = client.post(
        "/v1/finetunes",
        json={
            "dataset": "py",
            "model_name": "cls",
            "size": "tiny",
            "weights": "random",
            "task": "classification",
        },
    )
    detail = assert_error(bad, 422)["detail"]
    assert detail.startswith("dataset 'py' holds segmentation labels but task 'classification'")
    assert (
        "\n" not in detail and not client.get("/v1/jobs?kind=finetune&state=queued").json()["jobs"]
    )
