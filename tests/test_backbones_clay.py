"""Clay v1 / v1.5 backbones: shapes, class token, padding, bands and statistics, metadata encodings,
fine-tuning groups, full size on the meta device, and numerical parity with Clay's own code."""

from __future__ import annotations

import math
from datetime import date, datetime

import pytest
import reference_backbones as reference
import torch

from trainer.backbones import BACKBONES, build_backbone, clay, sizes
from trainer.backbones.base import BackboneError
from trainer.backbones.vit_utils import resolve_out_indices

CLAY = ["clay_v1_base", "clay_v1_5"]


def tiny(name="clay_v1_5", **kw):
    torch.manual_seed(0)
    return build_backbone(name, checkpoint="random", size="tiny", **kw)


def metadata(model, batch=2):
    return model.make_metadata(
        dates=[[date(2023, 7, 1)]] + [[None]] * (batch - 1),
        lonlat=torch.tensor([[5.0, 52.0]] + [[float("nan")] * 2] * (batch - 1)),
        gsd=10.0,
    )


def test_sizes_official_first_then_tiny():
    assert (
        sizes("clay_v1_base") == ["base", "tiny"]
        and BACKBONES["clay_v1_base"].default_size == "base"
    )
    assert (
        sizes("clay_v1_5") == ["large", "tiny"] and BACKBONES["clay_v1_5"].default_size == "large"
    )
    with pytest.raises(BackboneError, match="sizes large, tiny"):
        clay.build("clay_v1_5", weights=None, size="huge")


@pytest.mark.parametrize("name", CLAY)
def test_tiny_forward_shapes_and_spec(name):
    model = tiny(name)
    spec = model.spec
    assert (
        spec.family == "clay" and spec.any_bands and spec.patch_size == 8 and spec.num_frames == 1
    )
    assert spec.bands == (
        "blue",
        "green",
        "red",
        "rededge071",
        "rededge075",
        "rededge078",
        "nir",
        "nir08",
        "swir16",
        "swir22",
    )
    assert (
        spec.wavelengths[0] == 0.493
        and spec.mean[0] == 1105.0
        and spec.std[0] == 1809.0
        and spec.gsd == 10
    )
    assert spec.extra["out_indices"] == [0, 1, 2, 3]  # quarter points of depth 4
    assert (
        spec.out_channels == (64,) * 4 and spec.out_strides == (8,) * 4 and spec.weights == "random"
    )
    feats = model(torch.randn(2, 10, 32, 48), **metadata(model))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 6)] * 4


def test_default_out_indices_are_quarter_points():
    assert resolve_out_indices(None, 24) == (5, 11, 17, 23)
    assert resolve_out_indices(None, 12) == (2, 5, 8, 11)
    assert resolve_out_indices(None, 32) == (7, 15, 23, 31)
    assert resolve_out_indices(None, 2) == (0, 1)
    assert tiny(out_indices=[-1, 1]).spec.extra["out_indices"] == [3, 1]
    with pytest.raises(BackboneError, match="out_indices"):
        tiny(out_indices=[4])


def test_maps_are_block_tokens_without_class_token_and_last_is_normed():
    model = tiny(out_indices=(1, 3))
    x, md = torch.randn(2, 10, 24, 16), metadata(model)
    with torch.no_grad():
        tokens, grid = model.forward_tokens(x, **md)
        feats = model(x, **md)
        # recompute the last block by hand from block 1's tokens: the map is normed, block 1's is not
        t = tokens[0]
        for attn, ff in model.transformer.layers[2:]:
            t = attn(t) + t
            t = ff(t) + t
    assert grid == (3, 2) and tokens[0].shape == (2, 1 + 6, 64)
    torch.testing.assert_close(tokens[1], model.transformer.norm(t))
    for tok, feat in zip(tokens, feats, strict=True):
        torch.testing.assert_close(feat, tok[:, 1:].transpose(1, 2).reshape(2, 64, 3, 2))


def test_sizes_not_multiple_of_patch_are_zero_padded():
    model = tiny()
    md = metadata(model)
    x = torch.randn(2, 10, 30, 21)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 2))
    with torch.no_grad():
        feats, ref = model(x, **md), model(padded, **md)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 3)] * 4
    for a, b in zip(feats, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_any_band_subset_through_wavelengths():
    model = tiny(bands=["red", "green", "blue"], sensor="naip")
    assert model.spec.wavelengths == (0.65, 0.56, 0.48) and model.spec.mean == (
        110.16,
        115.41,
        98.15,
    )
    assert model.spec.gsd == 1.0
    md = model.make_metadata(dates=[[None]], lonlat=None, gsd=1.0)
    assert md["waves"].tolist() == pytest.approx([0.65, 0.56, 0.48])
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        a = model(x, **md)[-1]
        b = model(x, **{**md, "waves": torch.tensor([0.85, 0.56, 0.48])})[-1]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("sensor", "bands", "platform"),
    [
        ("sentinel-2-l2a", None, "sentinel-2-l2a"),
        ("landsat-c2-l1", None, "landsat-c2l1"),
        ("landsat-c2-l2", ["nir08", "red"], "landsat-c2l2-sr"),
        ("naip", None, "naip"),
        ("sentinel-1-rtc", None, "sentinel-1-rtc"),
    ],
)
def test_clay_published_statistics_per_sensor(sensor, bands, platform):
    spec = tiny(sensor=sensor, bands=bands).spec
    table = clay.PLATFORMS[platform].bands
    names = bands or list(table)
    assert spec.bands == tuple(names)
    assert spec.mean == tuple(table[b].mean for b in names) and spec.std == tuple(
        table[b].std for b in names
    )
    assert spec.wavelengths == tuple(table[b].wavelength for b in names)
    assert spec.extra["statistics"] == f"Clay metadata.yaml {platform}"


def test_sentinel_1_uses_clays_own_wavelengths_and_db_statistics():
    spec = tiny(sensor="sentinel-1-rtc").spec
    assert (
        spec.bands == ("vv", "vh")
        and spec.wavelengths == (3.5, 4.0)
        and spec.mean == (-12.113, -18.673)
    )
    with pytest.raises(BackboneError, match="linear-power"):
        tiny("clay_v1_base", sensor="sentinel-1-rtc")
    given = tiny("clay_v1_base", sensor="sentinel-1-rtc", mean=[0.1, 0.03], std=[1.5, 0.1]).spec
    assert given.wavelengths == (3.5, 4.0) and given.extra["statistics"] == "given"


@pytest.mark.parametrize("sensor", ["sentinel-2-l1c", "hls"])
def test_stand_in_statistics_are_announced(sensor):
    with pytest.warns(UserWarning, match="L2A"):
        spec = tiny(sensor=sensor, bands=["blue", "nir08", "swir22"]).spec
    table = clay.PLATFORMS["sentinel-2-l2a"].bands
    assert spec.mean == (table["blue"].mean, table["nir08"].mean, table["swir22"].mean)
    assert "sentinel-2-l2a" in spec.extra["statistics"]


def test_bands_without_published_statistics_need_explicit_ones():
    with pytest.raises(BackboneError, match="coastal.*Pass mean=/std="):
        tiny(sensor="sentinel-2-l2a", bands=["coastal", "blue"])
    spec = tiny(
        sensor="sentinel-2-l2a", bands=["coastal", "blue"], mean=[1.0, 2.0], std=[3.0, 4.0]
    ).spec
    assert spec.wavelengths == (
        0.443,
        0.493,
    )  # geotune's table where Clay has no value, Clay's otherwise
    with pytest.raises(BackboneError, match="no default bands"):
        tiny(sensor="rgb")
    with pytest.raises(BackboneError, match="one value per band"):
        tiny(bands=["blue"], mean=[1.0, 2.0], std=[1.0, 2.0])


def test_make_metadata_official_encodings_and_lonlat_order():
    model = tiny(bands=["red"], sensor="naip")
    when = datetime(2024, 3, 15, 18, 30)  # ISO week 11
    md = model.make_metadata(dates=[[when], [date(2024, 3, 15)], [None]],
                             lonlat=torch.tensor([[10.0, 50.0], [-120.0, 35.0], [float("nan"), 1.0]]), gsd=0.6)  # fmt: skip
    week, hour = 11 * 2 * math.pi / 52, 18 * 2 * math.pi / 24
    expected = [math.sin(week), math.cos(week), math.sin(hour), math.cos(hour)]
    assert md["time"][0].tolist() == pytest.approx(expected, abs=1e-6)
    assert md["time"][1].tolist() == pytest.approx(
        expected[:2] + [0.0, 1.0], abs=1e-6
    )  # a date is 00:00
    assert md["time"][2].tolist() == [0.0] * 4  # unknown date: zeros, as in Clay's pre-training
    lat, lon = (
        math.radians(50.0),
        math.radians(10.0),
    )  # lonlat is (lon, lat); Clay's latlon is (lat, lon)
    assert md["latlon"][0].tolist() == pytest.approx(
        [math.sin(lat), math.cos(lat), math.sin(lon), math.cos(lon)], abs=1e-6
    )
    assert md["latlon"][2].tolist() == [0.0] * 4
    assert md["gsd"].item() == pytest.approx(0.6) and md["waves"].tolist() == pytest.approx([0.65])
    with pytest.raises(BackboneError, match="takes 1 date"):
        model.make_metadata(dates=[[date(2024, 1, 1), date(2024, 2, 1)]], lonlat=None, gsd=1.0)


def test_metadata_reaches_the_features():
    model = tiny()
    x, md = torch.randn(1, 10, 16, 16), metadata(model, batch=1)
    with torch.no_grad():
        base = model(x, **md)[-1]
        for change in (
            {"gsd": torch.tensor(30.0)},
            {"time": torch.zeros(1, 4)},
            {"latlon": torch.ones(1, 4)},
        ):
            assert not torch.allclose(base, model(x, **{**md, **change})[-1])
        per_sample = model(x.repeat(2, 1, 1, 1), **{**md, "gsd": torch.tensor([10.0, 30.0]),
                                                     "time": md["time"].repeat(2, 1), "latlon": md["latlon"].repeat(2, 1)})  # fmt: skip
    torch.testing.assert_close(per_sample[-1][:1], base)
    with pytest.raises(BackboneError, match="make_metadata"):
        model(x)


def test_block_groups_cover_every_parameter_in_order():
    model = tiny()
    groups = model.block_groups()
    assert len(groups) == 1 + 4
    first = {id(p) for p in groups[0].parameters()}
    assert id(model.cls_token) in first and all(
        id(p) in first for p in model.patch_embedding.parameters()
    )
    assert any(p is model.transformer.norm.weight for p in groups[-1].parameters())
    grouped = [id(p) for g in groups for p in g.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(
        set(grouped)
    ) == len(grouped)


@pytest.mark.parametrize(("name", "expected"), [("clay_v1_base", 92.1e6), ("clay_v1_5", 311.4e6)])
def test_full_size_builds_on_meta_device(name, expected):
    with torch.device("meta"):
        model = build_backbone(name, checkpoint="random")
    assert all(p.is_meta for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) / expected < 0.001
    assert model.spec.embed_dim == (768 if name == "clay_v1_base" else 1024)
    assert model.spec.extra["out_indices"] == (
        [2, 5, 8, 11] if name == "clay_v1_base" else [5, 11, 17, 23]
    )


# ---------------------------------------------------------------- parity with Clay's own code

needs_reference = pytest.mark.skipif(
    reference.reference_root() is None,
    reason=f"reference code not installed: {reference.INSTALL_COMMAND}",
)


def _perturbed(model):
    with torch.no_grad():  # move every weight off its initial value (LayerNorm 1/0, zero biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@needs_reference
def test_parity_with_official_clay_v1_5_encoder():
    ours = _perturbed(tiny("clay_v1_5", out_indices=(3,)))
    module = reference.clay_v15_reference()
    official = module.Encoder(
        mask_ratio=0.0,
        patch_size=8,
        shuffle=False,
        dim=64,
        depth=4,
        heads=2,
        dim_head=32,
        mlp_ratio=4.0,
    )
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 10, 32, 32)
    md = ours.make_metadata(
        dates=[[date(2020, 3, 4)], [None]],
        lonlat=torch.tensor([[10.0, 50.0], [-70.0, -10.0]]),
        gsd=10.0,
    )
    with torch.no_grad():
        encoded = official.eval()({"pixels": x, **md})[0]  # [B, 1 + L, D], after the final norm
        (ours_tokens,), _ = ours.forward_tokens(x, **md)
    diff = (ours_tokens - encoded).abs().max().item()
    print(f"clay v1.5 parity max abs diff {diff:.3g}")
    assert diff < 1e-5


@needs_reference
def test_parity_with_official_clay_v1_encoder_every_block():
    ours = _perturbed(tiny("clay_v1_base", out_indices=(0, 1, 2, 3)))
    module = reference.clay_v1_reference()
    official = module.EmbeddingEncoder(
        img_size=40, patch_size=8, dim=64, depth=4, heads=2, dim_head=32, mlp_ratio=4.0
    )
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 4, 40, 40)
    md = ours.make_metadata(
        dates=[[datetime(2021, 8, 9, 10)], [date(2019, 1, 1)]],
        lonlat=torch.tensor([[-3.0, 40.0], [150.0, -33.0]]),
        gsd=30.0,
    )
    md["waves"] = torch.tensor([0.65, 0.56, 0.48, 0.86])
    with torch.no_grad():
        blocks = official.eval()({"pixels": x, **md})  # every block, class token first, last normed
        ours_tokens, _ = ours.forward_tokens(x, **md)
    diffs = [(a - b).abs().max().item() for a, b in zip(ours_tokens, blocks, strict=True)]
    print(f"clay v1 parity max abs diff per block {diffs}")
    assert max(diffs) < 1e-5
