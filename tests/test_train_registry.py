"""Hydra config → Lightning fit/test → MLflow run → registry → reload by alias."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import env_with_home
from mlm_check import apply_value_scaling, check_mlm_item

from datamodules.ingest import ingest
from trainer.config import compose
from trainer.train import train

TINY = [
    "backbone.size=tiny",
    "backbone.weights=random",
    "data.patch_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.chips_per_epoch=32",
]
EXPERIMENTS = sorted(  # on this segmentation dataset; the other tasks' run in tests/test_tasks.py
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*_segmentation.yaml")
)


@pytest.fixture
def dataset(home, scene):
    return ingest(
        name="synth",
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
    )


def test_train_logs_run_registers_and_reloads_by_alias(dataset, scene, home):
    cfg = compose(
        "train",
        [
            "data.dataset=synth",
            *TINY,
            "trainer.max_epochs=2",
            "register.name=synthmodel",
            "register.alias=champion",
        ],
    )
    result = train(cfg)
    assert result["model_version"] == 1
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    m = run.data.metrics
    for key in ("train/loss_epoch", "val/mIoU", "val/OA", "test/mIoU", "test/OA", "test/loss"):
        assert key in m, key
    assert any(k.startswith("test/IoU/") for k in m) and any(k.startswith("test/F1/") for k in m)
    assert (
        run.data.params["backbone.name"] == "resnet18"
        and run.data.params["data.dataset"] == "synth"
    )
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "figures")}
    val_figures = {a.path for a in client.list_artifacts(result["run_id"], "figures/val")}
    assert {"figures/test_confusion.png", "figures/test_per_class.png"} <= artifacts
    assert {
        "figures/val/epoch_001_overlay.png",
        "figures/val/epoch_001_confusion.png",
    } <= val_figures
    assert {a.path for a in client.list_artifacts(result["run_id"], "config")} == {
        "config/config.yaml"
    }
    assert run.inputs.dataset_inputs[0].dataset.name == "synth"
    assert int(client.get_model_version_by_alias("synthmodel", "champion").version) == 1

    # a plain Python session loads it by alias and predicts the classes the trained net predicts
    from trainer.registry import load_model

    model = load_model("synthmodel@champion")
    x = np.random.default_rng(0).uniform(300, 3000, (2, 4, 48, 40)).astype(np.float32)
    code = """
import json, mlflow, numpy as np
m = mlflow.pyfunc.load_model("models:/synthmodel@champion")
x = np.random.default_rng(0).uniform(300, 3000, (2, 4, 48, 40)).astype(np.float32)
out = m.predict(x)
print(json.dumps({"classes": out["classes"].tolist(), "shape": list(out["probabilities"].shape), "sig": str(m.metadata.get_input_schema())}))
"""
    env = env_with_home(home) | {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.inference_mode():
        expected = model.net(torch.from_numpy(x)).argmax(1).numpy()
    assert out["shape"] == [2, 3, 48, 40]
    assert (np.array(out["classes"]) == expected).all()
    assert "(-1, 4, -1, -1)" in out["sig"]
    record = model.record
    assert record["bands"] == ["blue", "green", "red", "nir08"] and [
        c["name"] for c in record["classes"]
    ] == ["field", "forest", "water"]
    assert record["dataset_id"] == "synth" and record["run_id"] == result["run_id"]
    # the MLM card: valid for stac-model, its value_scaling is the model's own z-score
    uri = client.get_model_version_download_uri("synthmodel", "1")
    card = json.loads(mlflow.artifacts.load_text(f"{uri}/artifacts/mlm-item.json"))
    scaling = check_mlm_item(card, record)
    stored = x[0, :, :2, :2].astype(np.float64)
    with torch.inference_mode():
        seen = model.net.normalize(torch.from_numpy(x[:1, :, :2, :2]))[0].double().numpy()
    np.testing.assert_allclose(apply_value_scaling(scaling, stored), seen, atol=1e-5)
    assert record["normalization"]["statistics"] == "dataset"  # random weights


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_configs_fast_dev_run(dataset, experiment):
    cfg = compose(
        "train",
        [f"experiment={experiment}", "data.dataset=synth", *TINY, "+trainer.fast_dev_run=true"],
    )
    result = train(cfg)
    assert np.isfinite(result["test"]["test/loss"])


def test_random_weights_needs_opt_in(dataset):
    from trainer.backbones import WeightsError

    cfg = compose("train", ["data.dataset=synth", "backbone.size=tiny", "data.num_workers=0"])
    with pytest.raises(
        WeightsError, match="resnet18_sentinel2_all_moco-59bfdff9.pth.*backbone.weights=random"
    ):
        train(cfg)


def test_importing_the_registry_prints_no_mlflow_warning():
    # every command that registers or loads a model imports it: MLflow warned there that the
    # pyfunc model's predict has no type hints (the first lines a new user's demo printed)
    r = subprocess.run([sys.executable, "-c", "import trainer.registry"], capture_output=True,
                       text=True, check=True)  # fmt: skip
    assert "Warning" not in r.stderr, r.stderr
