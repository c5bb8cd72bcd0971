"""Prithvi-EO 1.0 / 2.0 backbones: shapes over frames, class token and frame order, padding,
statistics, temporal/location metadata, fine-tuning groups, full size on the meta device and
numerical parity with the official ``prithvi_mae.py``."""

from __future__ import annotations

from datetime import date

import pytest
import reference_backbones as reference
import torch

from trainer.backbones import BACKBONES, build_backbone, prithvi, sizes
from trainer.backbones.base import BackboneError

NAMES = [n for n, e in BACKBONES.items() if e.family == "prithvi"]
TL = ["prithvi_eo_v2_300_tl", "prithvi_eo_v2_600_tl"]


def tiny(name="prithvi_eo_v2_300_tl", **kw):
    torch.manual_seed(0)
    return build_backbone(name, checkpoint="random", size="tiny", **kw)


def test_sizes_official_first_then_tiny():
    expected = {"prithvi_eo_v1_100": "100m", "prithvi_eo_v2_300": "300m", "prithvi_eo_v2_300_tl": "300m",
                "prithvi_eo_v2_600": "600m", "prithvi_eo_v2_600_tl": "600m"}  # fmt: skip
    for name, official in expected.items():
        assert sizes(name) == [official, "tiny"] and BACKBONES[name].default_size == official


@pytest.mark.parametrize("name", NAMES)
def test_tiny_single_date_shapes_and_spec(name):
    model = tiny(name)
    spec = model.spec
    patch = 14 if "600" in name else 16
    assert (
        spec.family == "prithvi"
        and spec.patch_size == patch
        and spec.num_frames == 1
        and not spec.any_bands
    )
    assert spec.bands == ("blue", "green", "red", "nir08", "swir16", "swir22") and spec.gsd == 30.0
    assert spec.out_channels == (64,) * 4 and spec.out_strides == (patch,) * 4
    assert spec.extra["temporal_location"] == (name in TL)
    x = torch.randn(2, 6, 4 * patch, 2 * patch)
    md = model.make_metadata(
        dates=[[date(2022, 5, 1)], [None]], lonlat=torch.tensor([[1.0, 2.0], [3.0, 4.0]]), gsd=30
    )
    assert set(md) == ({"temporal_coords", "location_coords"} if name in TL else set())
    assert [tuple(f.shape) for f in model(x, **md)] == [(2, 64, 4, 2)] * 4
    assert [tuple(f.shape) for f in model(x.unsqueeze(2), **md)] == [(2, 64, 4, 2)] * 4


def test_v1_and_v2_statistics_differ_and_match_the_published_ones():
    v1, v2 = tiny("prithvi_eo_v1_100").spec, tiny("prithvi_eo_v2_300").spec
    assert v1.mean[0] == pytest.approx(775.2290211032589) and v1.std[-1] == pytest.approx(
        1154.505683480695
    )
    assert v2.mean == (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0)
    assert v2.std == (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0)


def test_frames_are_concatenated_on_channels_frame_major():
    model = tiny(num_frames=3, out_indices=(1, 3))
    assert model.spec.out_channels == (192, 192) and model.spec.num_frames == 3
    x = torch.randn(2, 6, 3, 32, 48)
    with torch.no_grad():
        tokens, grid = model.forward_tokens(x)
        feats = model(x)
    assert grid == (3, 2, 3) and tokens[0].shape == (2, 1 + 3 * 6, 64)  # class token first
    for tok, feat in zip(tokens, feats, strict=True):
        assert feat.shape == (2, 192, 2, 3)
        for t in range(3):  # channels t*D .. (t+1)*D are frame t's tokens, row-major on the grid
            frame = tok[:, 1 + t * 6 : 1 + (t + 1) * 6].transpose(1, 2).reshape(2, 64, 2, 3)
            torch.testing.assert_close(feat[:, t * 64 : (t + 1) * 64], frame)
    with torch.no_grad():  # the last map is taken after the final norm
        t = tokens[0]
        for block in model.blocks[2:]:
            t = block(t)
    torch.testing.assert_close(tokens[1], model.norm(t))
    with pytest.raises(BackboneError, match="num_frames"):
        model(torch.randn(2, 6, 2, 32, 32))
    with pytest.raises(BackboneError, match="3 frame"):
        model(torch.randn(2, 6, 32, 32))


def test_sizes_not_multiple_of_patch_are_zero_padded():
    model = tiny("prithvi_eo_v2_600", num_frames=2)  # patch 14
    x = torch.randn(1, 6, 2, 30, 15)
    with torch.no_grad():
        feats = model(x)
        ref = model(torch.nn.functional.pad(x, (0, 13, 0, 12)))
    assert [tuple(f.shape) for f in feats] == [(1, 128, 3, 2)] * 4
    for a, b in zip(feats, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_position_table_is_recomputed_not_stored():
    model = tiny("prithvi_eo_v2_300")
    assert not any("pos_embed" in k for k in model.state_dict())
    table = prithvi.sincos_3d(64, 2, 3, 5)
    assert table.shape == (2 * 3 * 5, 64) and table.dtype == torch.float32
    # channels: 24 for the column, 24 for the row, 16 for the frame; cos(0) = 1 at the origin
    assert (
        table[0, 12:24].eq(1).all() and table[0, 36:48].eq(1).all() and table[0, 56:64].eq(1).all()
    )
    torch.testing.assert_close(table[:15, :48], prithvi.sincos_3d(64, 1, 3, 5)[:, :48])


def test_tl_metadata_year_day_of_year_and_lat_lon_order():
    model = tiny(num_frames=2)
    md = model.make_metadata(
        dates=[[date(2021, 2, 3), None]], lonlat=torch.tensor([[-100.5, 40.25]]), gsd=30
    )
    temporal, location = md["temporal_coords"], md["location_coords"]
    assert temporal[0, 0].tolist() == [2021.0, 34.0] and temporal[0, 1].isnan().all()
    assert location.tolist() == [
        [40.25, -100.5]
    ]  # geotune's lonlat is (lon, lat); Prithvi's is (lat, lon)
    with pytest.raises(BackboneError, match="takes 2 date"):
        model.make_metadata(dates=[[date(2021, 2, 3)]], lonlat=None, gsd=30)
    assert tiny("prithvi_eo_v2_300").make_metadata(dates=[[None]], lonlat=None, gsd=30) == {}


def test_unknown_dates_and_places_get_no_encoding_as_officially():
    model = tiny(num_frames=2)
    x = torch.randn(2, 6, 2, 32, 32)
    unknown = model.make_metadata(
        dates=[[None, None]] * 2, lonlat=torch.full((2, 2), float("nan")), gsd=30
    )
    known = model.make_metadata(
        dates=[[date(2020, 1, 1), date(2020, 6, 1)]] * 2,
        lonlat=torch.tensor([[10.0, 45.0]] * 2),
        gsd=30,
    )
    mixed = {"temporal_coords": torch.stack([known["temporal_coords"][0], unknown["temporal_coords"][1]]),
             "location_coords": torch.stack([known["location_coords"][0], unknown["location_coords"][1]])}  # fmt: skip
    with torch.no_grad():
        none = model(x)[-1]
        torch.testing.assert_close(model(x, **unknown)[-1], none)  # NaN = the official "None"
        with_coords = model(x, **known)[-1]
        both = model(x, **mixed)[-1]
    assert not torch.allclose(with_coords, none)
    torch.testing.assert_close(both[0], with_coords[0])
    torch.testing.assert_close(both[1], none[1])
    with pytest.raises(BackboneError, match="no temporal/location"):
        tiny("prithvi_eo_v2_300")(torch.randn(1, 6, 32, 32), location_coords=torch.zeros(1, 2))


def test_band_rules():
    with pytest.raises(BackboneError, match="Map your bands"):
        prithvi.build(
            "prithvi_eo_v2_300", weights=__file__, size="tiny", bands=["red", "green", "blue"]
        )
    random_rgb = tiny("prithvi_eo_v2_300", bands=["red", "green", "blue"])
    assert (
        random_rgb.spec.mean == (1433.0, 1342.0, 1087.0)
        and random_rgb.patch_embed.proj.in_channels == 3
    )
    with pytest.raises(BackboneError, match="no statistics for band"):
        tiny("prithvi_eo_v2_300", bands=["coastal", "red"])


def test_block_groups_cover_every_parameter_in_order():
    model = tiny()
    groups = model.block_groups()
    assert len(groups) == 1 + 4
    first = {id(p) for p in groups[0].parameters()}
    for p in (
        model.cls_token,
        model.patch_embed.proj.weight,
        model.temporal_embed_enc.scale,
        model.location_embed_enc.scale,
    ):
        assert id(p) in first
    assert any(p is model.norm.weight for p in groups[-1].parameters())
    grouped = [id(p) for g in groups for p in g.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(
        set(grouped)
    ) == len(grouped)


@pytest.mark.parametrize(
    ("name", "expected", "out_indices"),
    [
        ("prithvi_eo_v1_100", 86.24e6, [2, 5, 8, 11]),
        ("prithvi_eo_v2_300", 303.89e6, [5, 11, 17, 23]),
        ("prithvi_eo_v2_300_tl", 303.89e6, [5, 11, 17, 23]),
        ("prithvi_eo_v2_600", 631.19e6, [7, 15, 23, 31]),
        ("prithvi_eo_v2_600_tl", 631.19e6, [7, 15, 23, 31]),
    ],
)
def test_full_size_builds_on_meta_device(name, expected, out_indices):
    with torch.device("meta"):
        model = build_backbone(name, checkpoint="random", num_frames=4)
    assert all(p.is_meta for p in model.parameters())
    assert abs(sum(p.numel() for p in model.parameters()) - expected) / expected < 0.001
    assert model.spec.extra["out_indices"] == out_indices
    assert model.spec.out_channels == (model.spec.embed_dim * 4,) * 4


# ---------------------------------------------------------------- parity with the official code

needs_reference = pytest.mark.skipif(
    reference.reference_root() is None,
    reason=f"reference code not installed: {reference.INSTALL_COMMAND}",
)


@needs_reference
@pytest.mark.parametrize(("dim", "grid"), [(64, (1, 2, 2)), (1024, (4, 14, 14)), (1280, (3, 5, 7))])
def test_position_table_matches_the_official_one(dim, grid):
    official = reference.prithvi_reference().get_3d_sincos_pos_embed(dim, grid, add_cls_token=False)
    torch.testing.assert_close(
        prithvi.sincos_3d(dim, *grid), torch.from_numpy(official).float(), rtol=0, atol=0
    )


@needs_reference
@pytest.mark.parametrize(
    ("name", "frames", "size"),
    [
        ("prithvi_eo_v1_100", 3, (4, 4)),
        ("prithvi_eo_v2_600", 1, (4, 4)),
        ("prithvi_eo_v2_300_tl", 2, (4, 4)),
        ("prithvi_eo_v2_300", 1, (6, 6)),  # another input size: positions interpolated bicubically
        ("prithvi_eo_v2_300_tl", 2, (3, 3)),
    ],
)
def test_parity_with_official_prithvi_vit(name, frames, size):
    patch = tiny(name).spec.patch_size
    ours = tiny(name, num_frames=frames, out_indices=(0, 1, 2, 3), img_size=4 * patch)
    with torch.no_grad():  # move every weight off its initial value (LayerNorm 1/0, zero biases)
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tl = name in TL
    patch = ours.spec.patch_size
    official = reference.prithvi_reference().PrithviViT(
        img_size=4 * patch, patch_size=(1, patch, patch), num_frames=frames, in_chans=6, embed_dim=64, depth=4,
        num_heads=2, coords_encoding=["time", "location"] if tl else None, coords_scale_learn=tl,
    )  # fmt: skip
    result = official.load_state_dict(ours.state_dict(), strict=False)
    assert (
        result.missing_keys == ["pos_embed"] and not result.unexpected_keys
    )  # the official fixed table stays
    x = torch.randn(2, 6, frames, size[0] * patch, size[1] * patch)
    md = ours.make_metadata(dates=[[date(2020, 3, 4 + t) for t in range(frames)]] * 2,
                            lonlat=torch.tensor([[10.0, 50.0], [-70.0, -10.0]]), gsd=30)  # fmt: skip
    with torch.no_grad():
        features = official.eval().forward_features(
            x, md.get("temporal_coords"), md.get("location_coords")
        )
        expected = official.prepare_features_for_image_model(features)
        got = ours.eval()(x, **md)
    diffs = [(a - b).abs().max().item() for a, b in zip(got, expected, strict=True)]
    print(f"{name} parity max abs diff per block {diffs}")
    assert max(diffs) < 1e-5
