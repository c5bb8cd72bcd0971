"""Backbones are data: one table row per variant (trainer/backbones/variants.py) plus its
conf/backbone/<name>.yaml, and nothing else to edit to add one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datamodules.manifest import DatasetManifest
from trainer import backbones
from trainer.backbones import BACKBONES, build_backbone, resolve_weights, sizes, weights_status
from trainer.backbones.adapt import backbone_arguments
from trainer.backbones.base import WeightsError
from trainer.backbones.variants import ResNetSize
from trainer.classification import ClassificationTask
from trainer.config import compose, group_options
from trainer.heads import SegmentationNet

RECORDS = Path(__file__).parent / "data" / "records"


def test_every_row_has_its_config_and_they_agree():
    assert sorted(BACKBONES) == group_options("backbone")
    for name, entry in BACKBONES.items():
        conf = compose(f"backbone/{name}").backbone
        assert conf.name == name
        assert (conf.size, conf.finetune) == (entry.default_size, entry.finetune), name
        assert sizes(name)[0] == entry.default_size and "tiny" in sizes(name)


def _dataset():
    raw = json.loads((RECORDS / "dataset-segmentation.json").read_text())
    m = DatasetManifest.from_dict(raw)
    return SimpleNamespace(id=m.id, manifest=m, bands=list(m.bands), images=[None])


def test_a_new_variant_is_one_row_and_a_config_file(monkeypatch, tmp_path):
    """resnet34, added as a row (and its config file in a config folder Hydra searches):
    listed, sized, built, composed, fitted to a dataset, decoded and pooled as a CNN."""
    row = replace(
        BACKBONES["resnet18"],
        weights_file="resnet34_sentinel2_all_moco.pth",
        description="ResNet-34 (timm)",
        sizes={"34": ResNetSize("basic", (3, 4, 6, 3)), "tiny": ResNetSize("basic", (1, 1, 1, 1))},
    )
    monkeypatch.setitem(backbones.BACKBONES, "resnet34", row)
    (tmp_path / "backbone").mkdir()
    (tmp_path / "backbone" / "resnet34.yaml").write_text(
        'name: resnet34\nsize: "34"\nweights: null\nnormalization: auto\nnew_bands: drop\n'
        "finetune: full\nlast_n: 0\n"
    )
    cfg = compose(
        "train",
        [
            "data.dataset=x",
            f"hydra.searchpath=[file://{tmp_path}]",
            "backbone=resnet34",
            "backbone.weights=random",
            "backbone.size=tiny",
        ],
    )
    assert sizes("resnet34") == ["34", "tiny"]
    assert "resnet34" in [r["name"] for r in weights_status()]
    with pytest.raises(WeightsError, match="resnet34_sentinel2_all_moco.pth"):
        resolve_weights("resnet34", None)
    b = dict(cfg.backbone)
    kwargs = backbone_arguments(b, _dataset(), 64)
    assert "img_size" not in kwargs and kwargs["bands"] == ["blue", "green", "red", "nir08"]
    net = SegmentationNet(build_backbone("resnet34", "random", **kwargs), 3)
    assert net.decoder_name == "unet" and net.backbone.spec.size == "tiny"
    assert net(torch.rand(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    assert ClassificationTask.backbone_overrides({}, row) == {"out_indices": [4]}
