"""Fine-tuning from official-layout checkpoint files through train(cfg): weights really load,
bands are mapped by name, the weights directory is searched, and nothing falls back to random."""

import json

import mlflow
import numpy as np
import pytest
import rasterio
import torch
from mlm_check import check_mlm_item
from rasterio.transform import from_origin
from synth import class_map
from test_checkpoints import _official_prithvi_file, clay_ckpt  # noqa: F401  (fixture)

from datamodules.datamodule import BandMappingError
from datamodules.ingest import ingest
from trainer.config import compose
from trainer.registry import load_model
from trainer.train import train

HLS7 = ["blue", "green", "red", "nir08", "swir16", "swir22", "rededge071"]
RUN = [
    "data.patch_size=64",
    "data.num_workers=0",
    "data.chips_per_epoch=16",
    "trainer.max_epochs=1",
    "backbone.size=tiny",
]


def _dataset(tmp_path, bands, name, sensor="sentinel-2-l2a"):
    """A synthetic scene with the given bands and labels over all of it (mask raster)."""
    rng = np.random.default_rng(0)
    cmap = class_map(128, 0)
    spectra = rng.uniform(500, 3000, (len(bands), 3))
    img = (spectra[:, cmap] + rng.normal(0, 50, (len(bands), 128, 128))).astype("uint16")
    profile = dict(
        driver="GTiff",
        width=128,
        height=128,
        crs="EPSG:32633",
        transform=from_origin(500000, 4200000, 10, 10),
    )
    with rasterio.open(
        tmp_path / f"{name}.tif", "w", count=len(bands), dtype="uint16", nodata=0, **profile
    ) as dst:
        dst.write(img)
        dst.descriptions = tuple(bands)
    with rasterio.open(
        tmp_path / f"{name}_mask.tif", "w", count=1, dtype="uint8", **profile
    ) as dst:
        dst.write(cmap, 1)
    return ingest(
        name=name,
        images=[tmp_path / f"{name}.tif"],
        labels=tmp_path / f"{name}_mask.tif",
        sensor=sensor,
        block_size=32,
        progress=False,
    )


def test_prithvi_official_file_with_an_added_band(home, tmp_path):
    ckpt = tmp_path / "Prithvi_EO_V2_300M.pt"
    encoder_state = _official_prithvi_file("prithvi_eo_v2_300", ckpt)
    _dataset(tmp_path, HLS7, "hls7")
    cfg = compose(
        "train",
        [
            "data.dataset=hls7",
            "backbone=prithvi_eo_v2_300",
            f"backbone.weights={ckpt}",
            "backbone.new_bands=add",
            *RUN,
            "register.name=pt",
        ],
    )
    result = train(cfg)
    model = load_model("pt", version=result["model_version"])
    rec = model.record
    assert rec["bands"] == HLS7 and rec["backbone"]["weights"] == str(ckpt)
    assert rec["backbone"]["spec"]["extra"]["added_bands"] == ["rededge071"]
    w = model.net.backbone.patch_embed.proj.weight
    assert w.shape[1] == 7
    # frozen? no: full fine-tune moved the weights, but they started from the file, not at random
    start = encoder_state["patch_embed.proj.weight"]
    assert torch.corrcoef(torch.stack([w[:, :6].flatten(), start.flatten()]))[0, 1] > 0.9
    # the MLM card says where the weights came from: the file's name, not this machine's path
    uri = mlflow.MlflowClient().get_model_version_download_uri("pt", result["model_version"])
    card = json.loads(mlflow.artifacts.load_text(f"{uri}/artifacts/mlm-item.json"))
    check_mlm_item(card, rec)
    assert card["properties"]["mlm:pretrained_source"] == "Prithvi_EO_V2_300M.pt"


def test_pretrained_prithvi_needs_its_bands(home, tmp_path):
    ckpt = tmp_path / "Prithvi_EO_V2_300M.pt"
    _official_prithvi_file("prithvi_eo_v2_300", ckpt)
    _dataset(tmp_path, ["blue", "green", "red", "nir08"], "rgbn")
    cfg = compose(
        "train",
        ["data.dataset=rgbn", "backbone=prithvi_eo_v2_300", f"backbone.weights={ckpt}", *RUN],
    )
    with pytest.raises(BandMappingError, match="lacks swir16, swir22"):
        train(cfg)


def test_weights_directory_is_searched(home, tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setenv("GEOTUNE_WEIGHTS_DIR", str(wdir))
    _official_prithvi_file("prithvi_eo_v1_100", wdir / "Prithvi_EO_V1_100M.pt")
    _dataset(tmp_path, HLS7[:6], "hls6", sensor="hls")
    result = train(compose("train", ["data.dataset=hls6", "backbone=prithvi_eo_v1_100", *RUN]))
    assert result["test"]["test/loss"] > 0
    assert mlflow.MlflowClient().get_run(result["run_id"]).data.tags["weights"] == str(
        wdir / "Prithvi_EO_V1_100M.pt"
    )


def test_clay_lightning_checkpoint_frozen_encoder(home, tmp_path, clay_ckpt):  # noqa: F811
    path, state = clay_ckpt
    _dataset(tmp_path, ["blue", "green", "red", "nir08", "coastal"], "s2")
    with pytest.warns(UserWarning, match="no published statistics for coastal"):
        result = train(
            compose(
                "train",
                [
                    "data.dataset=s2",
                    "backbone=clay_v1_5",
                    f"backbone.weights={path}",
                    *RUN,
                    "register.name=clay",
                ],
            )
        )
    model = load_model("clay", version=result["model_version"])
    assert model.record["bands"] == ["blue", "green", "red", "nir08"]
    # the recommended mode for Clay freezes the encoder: its weights are exactly the file's
    for k, v in model.net.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
