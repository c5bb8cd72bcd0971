"""Official checkpoint files: layouts, strict loading, extraction and the full-size manifests.

Tiny random models are saved in each official container layout (Clay: a real Lightning
checkpoint written by ``lightning.Trainer``; Prithvi-EO-2.0: ``encoder.``/``decoder.`` prefixes
with a 224 px, 4-frame ``pos_embed``; Prithvi-EO-1.0: flat with ``decoder_*``/``mask_token``)
and loaded through the production loader at other input sizes and frame counts. The manifests
(``tests/data/backbone_manifests``, generated from the official code by ``generate.py``) check
geotune's full-size models key by key on the meta device.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path, PurePosixPath

import pytest
import torch
from torch import nn

from trainer.backbones import BACKBONES, build_backbone, checkpoints, clay, prithvi
from trainer.backbones.base import WeightsError, check_state_dict

MANIFESTS = Path(__file__).parent / "data" / "backbone_manifests"
PRITHVI = [n for n, e in BACKBONES.items() if e.family == "prithvi"]
ALL_VIT = ["clay_v1_base", "clay_v1_5", *PRITHVI]


def family(name):
    return clay if name.startswith("clay") else prithvi


# ---------------------------------------------------------------- Clay: a real Lightning checkpoint


@pytest.fixture(scope="module")
def clay_ckpt(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny Clay MAE-like LightningModule (encoder + decoder + teacher + proj), fitted one step and saved by Lightning."""
    import lightning as L
    from lightning.fabric.utilities.data import AttributeDict

    class TinyClayModule(L.LightningModule):
        def __init__(
            self, metadata, ckpt_dir, since
        ):  # hyper-parameters Lightning pickles as objects
            super().__init__()
            self.save_hyperparameters()
            self.model = nn.Module()
            self.model.encoder = clay.build("clay_v1_5", weights=None, size="tiny")
            self.model.decoder = nn.Module()
            self.model.decoder.enc_to_dec = nn.Linear(64, 32)
            self.model.decoder.mask_patch = nn.Parameter(torch.randn(32))
            self.model.teacher = nn.Linear(3, 16)
            self.model.proj = nn.Linear(64, 16)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            md = self.model.encoder.make_metadata(
                dates=[[date(2024, 5, 1)]] * len(x),
                lonlat=torch.tensor([[5.0, 52.0]] * len(x)),
                gsd=10.0,
            )
            tokens = self.model.encoder(x, **md)[-1].mean(dim=(2, 3))
            decoded = self.model.decoder.enc_to_dec(tokens) + self.model.decoder.mask_patch
            return decoded.pow(2).mean() + self.model.proj(tokens).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    tmp = tmp_path_factory.mktemp("clay")
    module = TinyClayModule(
        AttributeDict(gsd=10, bands=["blue"]),
        PurePosixPath("/checkpoints/v1.5"),
        date(2024, 11, 26),
    )
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(4, 10, 16, 16)), batch_size=2
    )
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp,
    )  # fmt: skip
    trainer.fit(module, data)
    path = tmp / "clay-tiny.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.detach().clone() for k, v in module.model.encoder.state_dict().items()}


def _clay_inputs(model, h=40, w=24):
    x = torch.randn(2, len(model.spec.bands), h, w)
    return x, model.make_metadata(
        dates=[[date(2023, 7, 1)], [None]],
        lonlat=torch.tensor([[5.0, 52.0], [-60.0, -3.0]]),
        gsd=10.0,
    )


def test_clay_lightning_checkpoint_holds_objects_and_loads_strictly(clay_ckpt):
    path, encoder_state = clay_ckpt
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert "lightning.fabric.utilities.data.AttributeDict" in unsafe and "datetime.date" in unsafe
    raw = checkpoints.read_file(path)
    assert {"state_dict", "optimizer_states", "hyper_parameters", "loops"} <= set(raw)
    assert not isinstance(
        raw["hyper_parameters"]["since"], date
    )  # a stand-in: nothing was imported or run
    assert any(k.startswith("model.teacher.") for k in raw["state_dict"])

    model = build_backbone("clay_v1_5", checkpoint=path, size="tiny")
    assert model.spec.weights == str(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, encoder_state[key], rtol=0, atol=0)
    x, md = _clay_inputs(model)
    assert [tuple(f.shape) for f in model(x, **md)] == [(2, 64, 5, 3)] * 4


def test_clay_extract_writes_encoder_only_weights_build_accepts(clay_ckpt, tmp_path):
    path, encoder_state = clay_ckpt
    out = checkpoints.extract(
        "clay_v1_5", path, tmp_path / "enc" / "clay-tiny-encoder.pt", size="tiny"
    )
    saved = torch.load(out, weights_only=True)
    assert set(saved) == set(encoder_state) and not any(k.startswith("model.") for k in saved)
    from_ckpt = clay.build("clay_v1_5", weights=path, size="tiny")
    from_extract = clay.build("clay_v1_5", weights=out, size="tiny")
    x, md = _clay_inputs(from_ckpt)
    with torch.no_grad():
        for a, b in zip(from_ckpt(x, **md), from_extract(x, **md), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clay_extract_checks_before_writing(clay_ckpt, tmp_path):
    path, _ = clay_ckpt
    with pytest.raises(WeightsError, match="wrong shapes"):
        checkpoints.extract("clay_v1_5", path, tmp_path / "out.pt", size="tiny", embed_dim=128)
    assert not (tmp_path / "out.pt").exists()


def test_clay_mismatched_checkpoint_lists_every_difference(clay_ckpt, tmp_path):
    path, _ = clay_ckpt
    raw = checkpoints.read_file(path)
    state = dict(raw["state_dict"])
    del state["model.encoder.transformer.norm.weight"]
    state["model.encoder.extra.weight"] = torch.zeros(3)
    state["model.head.weight"] = torch.zeros(3)  # not in Clay's drop list: must not be ignored
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, bad)
    with pytest.raises(WeightsError) as err:
        clay.build("clay_v1_5", weights=bad, size="tiny")
    message = str(err.value)
    for key in ("transformer.norm.weight", "extra.weight", "model.head.weight"):
        assert key in message
    with pytest.raises(WeightsError, match="wrong shapes"):
        clay.build("clay_v1_5", weights=path, size="tiny", embed_dim=128)


def test_unreadable_files_are_errors_that_say_so(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(WeightsError, match="does not exist"):
        clay.build("clay_v1_5", weights=missing, size="tiny")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a torch checkpoint"):
        clay.build("clay_v1_5", weights=garbage, size="tiny")


# ---------------------------------------------------------------- Prithvi: plain state dicts


class _TinyMAEDecoder(nn.Module):
    """Stands for Prithvi's MAEDecoder: same key names, tiny sizes."""

    def __init__(self, tl: bool, pos_tokens: int, patch: int):
        super().__init__()
        self.decoder_embed = nn.Linear(64, 32)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 32))
        self.register_buffer("decoder_pos_embed", torch.zeros(1, pos_tokens, 32))
        self.decoder_blocks = nn.ModuleList([prithvi.Block(32, 2, 4.0)])
        self.decoder_norm = nn.LayerNorm(32)
        self.decoder_pred = nn.Linear(32, patch * patch * 6)
        if tl:
            self.temporal_embed_dec = prithvi.CoordinateEncoder(32)
            self.location_embed_dec = prithvi.CoordinateEncoder(32)


def _official_prithvi_file(name: str, path: Path) -> dict[str, torch.Tensor]:
    """Save a tiny model in its official layout, pretrained at 224 px and 3 (v1) or 4 (v2) frames."""
    version = BACKBONES[name].params
    encoder = prithvi.build(name, weights=None, size="tiny", num_frames=version["pretrain_frames"])
    patch = encoder.spec.patch_size
    tokens = 1 + version["pretrain_frames"] * (224 // patch) ** 2
    state = {
        **encoder.state_dict(),
        "pos_embed": prithvi.sincos_3d(64, version["pretrain_frames"], 224 // patch, 224 // patch)[
            None
        ],
    }
    state["pos_embed"] = torch.cat((torch.zeros(1, 1, 64), state["pos_embed"]), dim=1)
    assert state["pos_embed"].shape == (1, tokens, 64)
    decoder = _TinyMAEDecoder(version["temporal_location"], tokens, patch).state_dict()
    if name == "prithvi_eo_v1_100":  # flat, decoder keys beside the encoder's
        official = {**state, **decoder}
    else:
        official = {
            **{f"encoder.{k}": v for k, v in state.items()},
            **{f"decoder.{k}": v for k, v in decoder.items()},
        }
    torch.save(official, path)
    return encoder.state_dict()


@pytest.mark.parametrize("name", PRITHVI)
def test_prithvi_official_layouts_load_strictly_at_other_sizes_and_frames(name, tmp_path):
    path = tmp_path / f"{name}.pt"
    encoder_state = _official_prithvi_file(name, path)
    keys = torch.load(path, weights_only=True)
    assert ("encoder.pos_embed" in keys) == (name != "prithvi_eo_v1_100")
    assert ("mask_token" in keys) == (name == "prithvi_eo_v1_100")
    model = build_backbone(name, checkpoint=path, size="tiny", num_frames=2)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, encoder_state[key], rtol=0, atol=0)
    x = torch.randn(1, 6, 2, 45, 50)
    md = model.make_metadata(
        dates=[[date(2021, 3, 1), date(2021, 4, 1)]], lonlat=torch.tensor([[-100.0, 40.0]]), gsd=30
    )
    p = model.spec.patch_size
    expected = (1, 128, -(-45 // p), -(-50 // p))
    assert [tuple(f.shape) for f in model(x, **md)] == [expected] * 4


def test_prithvi_tl_and_plain_files_are_not_interchangeable(tmp_path):
    tl_file, plain_file = tmp_path / "tl.pt", tmp_path / "plain.pt"
    _official_prithvi_file("prithvi_eo_v2_300_tl", tl_file)
    _official_prithvi_file("prithvi_eo_v2_300", plain_file)
    with pytest.raises(WeightsError, match=r"unexpected keys \(2\).*temporal_embed_enc.scale"):
        prithvi.build("prithvi_eo_v2_300", weights=tl_file, size="tiny")
    with pytest.raises(WeightsError, match=r"missing keys \(2\).*location_embed_enc.scale"):
        prithvi.build("prithvi_eo_v2_300_tl", weights=plain_file, size="tiny")
    with pytest.raises(WeightsError, match="wrong shapes"):  # 600M has patch 14
        prithvi.build("prithvi_eo_v2_600", weights=plain_file, size="tiny")


def test_prithvi_extract_drops_prefix_decoder_and_positions(tmp_path):
    path = tmp_path / "v2.pt"
    encoder_state = _official_prithvi_file("prithvi_eo_v2_600_tl", path)
    out = checkpoints.extract("prithvi_eo_v2_600_tl", path, tmp_path / "enc.pt", size="tiny")
    saved = torch.load(out, weights_only=True)
    assert set(saved) == set(encoder_state)
    model = prithvi.build("prithvi_eo_v2_600_tl", weights=out, size="tiny", num_frames=3)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, encoder_state[key], rtol=0, atol=0)


# ---------------------------------------------------------------- full-size manifests (meta device)

# Published sizes, in parameters: encoder (where published) and the whole pre-training model.
PUBLISHED = {
    "clay_v1_base": {"total": 201e6},  # Clay v1 model card: 201M (encoder + decoder + DINO teacher)
    "clay_v1_5": {"encoder": 311e6, "total": 632e6},  # Clay v1.5 spec: encoder 311M, total 632M
    "prithvi_eo_v1_100": {"total": 100e6},  # "100M", a round figure: the MAE has 112.6M
    "prithvi_eo_v2_300": {"encoder": 304e6},
    "prithvi_eo_v2_300_tl": {"encoder": 304e6},
    "prithvi_eo_v2_600": {"encoder": 631e6},
    "prithvi_eo_v2_600_tl": {"encoder": 631e6},
}
TOLERANCE = {"prithvi_eo_v1_100": 0.15}


def _manifest(name):
    return json.loads((MANIFESTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ALL_VIT)
def test_full_size_model_matches_the_official_manifest(name):
    manifest = _manifest(name)
    assert manifest["backbone"] == name and "terratorch" in manifest["source"]
    tensors = {k: torch.empty(shape, device="meta") for k, shape in manifest["tensors"].items()}
    official = {"state_dict": tensors, "epoch": 0} if name.startswith("clay") else tensors
    layouts = family(name).CHECKPOINT_LAYOUTS
    layout = checkpoints.select_layout(official, layouts, manifest["source"])
    state = checkpoints.encoder_state_dict(official, layout, manifest["source"])
    with torch.device("meta"):
        model = build_backbone(name, checkpoint="random")
    check_state_dict(model.state_dict(), state, f"manifest {name}")  # same keys, same shapes

    encoder = sum(p.numel() for p in model.parameters())
    assert encoder == sum(v.numel() for v in state.values())
    total = sum(v.numel() for k, v in tensors.items() if "pos_embed" not in k)
    tol = TOLERANCE.get(name, 0.01)
    published = PUBLISHED[name]
    if "encoder" in published:
        assert abs(encoder - published["encoder"]) / published["encoder"] < tol, encoder
    if "total" in published:
        assert abs(total - published["total"]) / published["total"] < tol, total


def _dropped(name) -> set[str]:
    official = {k: torch.empty(s, device="meta") for k, s in _manifest(name)["tensors"].items()}
    wrapped = {"state_dict": official} if name.startswith("clay") else official
    layout = checkpoints.select_layout(wrapped, family(name).CHECKPOINT_LAYOUTS, name)
    kept = checkpoints.encoder_state_dict(wrapped, layout, name)
    return set(official) - {layout.prefix + k for k in kept}


def test_manifest_drop_lists_drop_only_what_the_backbone_does_not_use():
    for name in ("clay_v1_base", "clay_v1_5"):
        assert {k.split(".")[1] for k in _dropped(name)} == {"decoder", "teacher", "proj"}
    for name in ("prithvi_eo_v2_300", "prithvi_eo_v2_600_tl"):
        dropped = _dropped(name)
        assert {k for k in dropped if not k.startswith("decoder.")} == {"encoder.pos_embed"}
    assert {k.split(".")[0] for k in _dropped("prithvi_eo_v1_100")} == {
        "pos_embed", "mask_token", "decoder_embed", "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred",
    }  # fmt: skip
