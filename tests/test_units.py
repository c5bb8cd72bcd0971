"""Inputs reach each backbone in the units its statistics were computed in.

Per backbone family, a constant stored value goes through the model's own preprocessing and is
compared with the backbone's published statistics applied to the physical value; the MLM
card's ``value_scaling`` (read with stac-model) gives the same number. Values that cannot be
converted are refused, unless the dataset's own statistics are asked for."""

import numpy as np
import pytest
import rasterio
import torch
from mlm_check import apply_value_scaling, check_mlm_item
from rasterio.transform import from_origin
from synth import class_map
from test_checkpoints import _official_prithvi_file, clay_ckpt  # noqa: F401  (fixture)

from datamodules.ingest import ingest
from datamodules.sensors import stored_units
from datamodules.units import Unit, UnitError, fold
from trainer.backbones.adapt import backbone_for_dataset
from trainer.config import compose
from trainer.heads import SegmentationNet
from trainer.mlm import mlm_item
from trainer.record import ModelRefError, upgrade_record
from trainer.tasks import SegmentationTask
from trainer.train import model_record

LANDSAT6 = ["blue", "green", "red", "nir08", "swir16", "swir22"]
# Prithvi-EO-2.0's config.json: HLS surface reflectance x 10000
PRITHVI_V2_MEAN = np.array([1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0])
PRITHVI_V2_STD = np.array([2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0])


def write_scene(
    path,
    bands,
    *,
    size=128,
    low=7000,
    high=20000,
    dtype="uint16",
    scale=None,
    offset=None,
    nodata=None,
    collar=0,
    res=30.0,
    seed=0,
):
    """A scene whose spectra follow a class map; ``collar`` zero pixels on the left and in the
    top-right corner, as a clipped Landsat scene has; no nodata tag unless given."""
    rng = np.random.default_rng(seed)
    cmap = class_map(size, seed)
    spectra = rng.uniform(low, high, (len(bands), 3))
    img = spectra[:, cmap] + rng.normal(0, (high - low) / 100, (len(bands), size, size))
    img = np.clip(img, low, high).astype(dtype)
    if collar:
        yy, xx = np.mgrid[0:size, 0:size]
        img[:, (xx < collar) | (xx - yy > size - collar)] = 0
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=len(bands),
        dtype=dtype,
        crs="EPSG:32633",
        transform=from_origin(500015, 4200015, res, res),
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
        dst.descriptions = tuple(bands)
        if scale is not None:
            dst.scales, dst.offsets = (scale,) * len(bands), (offset,) * len(bands)
    return path, cmap


def dataset(tmp_path, name, bands, sensor, **kw):
    path, cmap = write_scene(tmp_path / f"{name}.tif", bands, **kw)
    with rasterio.open(path) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    with rasterio.open(tmp_path / f"{name}_mask.tif", "w", **profile) as dst:
        dst.write(cmap, 1)
    return ingest(
        name=name,
        images=[path],
        labels=tmp_path / f"{name}_mask.tif",
        sensor=sensor,
        block_size=32,
        progress=False,
    )


def seen(backbone, stored: float) -> np.ndarray:
    """What the encoder receives, per band, for a constant stored value: the model's own
    preprocessing (the task network's normalisation), nothing else."""
    net = SegmentationNet(backbone, 2)
    x = torch.full((1, len(backbone.spec.bands), 16, 16), float(stored))
    return net.normalize(x)[0, :, 0, 0].double().numpy()


def card(backbone, kwargs, ds) -> list[dict]:
    """The value_scaling of the MLM card the registry would write for this backbone."""
    cfg = compose("train", [f"data.dataset={ds.id}", "register.name=units"])
    task = SegmentationTask(backbone, ds.classes)
    rec = model_record(cfg, ds, backbone, kwargs, task, list(backbone.spec.bands), "run", 32)
    return check_mlm_item(mlm_item(rec, 1), rec)


def test_fold_is_the_exact_chain():
    landsat = stored_units("landsat-c2-l2", ["blue"])[0]
    hls = Unit("reflectance", 1e-4, 0.0, "surface")
    (m,), (s,) = fold([1087.0], [2248.0], [hls], [landsat])
    for stored in (0.0, 7273.0, 10909.0, 43636.0):
        chain = ((stored * 2.75e-5 - 0.2) * 1e4 - 1087.0) / 2248.0
        assert (stored - m) / s == pytest.approx(chain, abs=1e-12)
    with pytest.raises(UnitError, match="8-bit RGB digital number cannot be converted"):
        fold([1.0], [1.0], [hls], stored_units("rgb", ["red"]))
    # a band may have its own unit: Landsat C2 L2's thermal band is surface temperature
    thermal = stored_units("landsat-c2-l2", ["lwir11"])[0]
    assert (thermal.quantity, thermal.scale, thermal.offset) == (
        "surface temperature (K)",
        0.00341802,
        149.0,
    )
    # a file's declared scale/offset takes precedence over the sensor table's
    declared = stored_units("sentinel-2-l2a", ["blue"], [1e-4], [-0.1])[0]
    assert (declared.quantity, declared.scale, declared.offset) == ("reflectance", 1e-4, -0.1)


def test_prithvi_on_landsat_c2_l2_sees_hls_reflectance(home, tmp_path):
    ckpt = tmp_path / "Prithvi_EO_V2_300M.pt"
    _official_prithvi_file("prithvi_eo_v2_300", ckpt)
    ds = dataset(tmp_path, "ls", LANDSAT6, "landsat-c2-l2")
    b = {"name": "prithvi_eo_v2_300", "weights": str(ckpt), "size": "tiny"}
    backbone, kwargs = backbone_for_dataset(b, ds, 32)
    got = seen(backbone, 10909)  # surface reflectance 0.1 as Landsat C2 L2 stores it
    physical = 10909 * 2.75e-5 - 0.2
    expected = (physical * 10000 - PRITHVI_V2_MEAN) / PRITHVI_V2_STD
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert -0.05 < got[0] < -0.03  # the stored value z-scored with HLS statistics gave +4.4
    np.testing.assert_allclose(
        apply_value_scaling(card(backbone, kwargs, ds), np.full(6, 10909.0)), got, atol=1e-5
    )
    norm = backbone.spec.normalization
    assert norm["statistics"] == "published" and norm["sensor"] == "landsat-c2-l2"
    assert norm["published_mean"] == list(PRITHVI_V2_MEAN) and "exact" in norm["conversion"]


def test_prithvi_on_reflectance_stored_as_floats_sees_hls_reflectance(home, tmp_path):
    # Landsat C2 L2 surface reflectance as Google Earth Engine exports it: floats 0..1. Read
    # as the sensor's stored values (x 2.75e-5 - 0.2), every pixel reached Prithvi as -0.2.
    ckpt = tmp_path / "Prithvi_EO_V2_300M.pt"
    _official_prithvi_file("prithvi_eo_v2_300", ckpt)
    with pytest.warns(
        UserWarning, match=r"holds reflectance as floats .* recorded as reflectance 0..1"
    ):
        ds = dataset(tmp_path, "f", LANDSAT6, "landsat-c2-l2", low=0.02, high=0.3, dtype="float32")
    assert ds.manifest["value_units"][0] == {
        "quantity": "reflectance", "scale": 1.0, "offset": 0.0, "level": "surface"
    }  # fmt: skip
    b = {"name": "prithvi_eo_v2_300", "weights": str(ckpt), "size": "tiny"}
    backbone, _ = backbone_for_dataset(b, ds, 32)
    expected = (0.1 * 10000 - PRITHVI_V2_MEAN) / PRITHVI_V2_STD
    np.testing.assert_allclose(seen(backbone, 0.1), expected, atol=1e-5)
    # the same scene as the sensor stores it: no value_units, the sensor's
    plain = dataset(tmp_path, "s", LANDSAT6, "landsat-c2-l2")
    assert "value_units" not in plain.manifest


@pytest.mark.parametrize(
    "sensor, scale, stored, to_clay_unit",
    [  # Clay's Sentinel-2 statistics are on reflectance x 10000, its Landsat ones on stored values
        ("sentinel-2-l2a", None, 3000, lambda x: x),
        ("sentinel-2-l2a", (1e-4, -0.1), 3000, lambda x: (x * 1e-4 - 0.1) * 1e4),  # declared
        ("landsat-c2-l2", None, 10909, lambda x: ((x * 2.75e-5 - 0.2) + 0.2) / 2.75e-5),
    ],
)
def test_clay_statistics_per_platform(home, tmp_path, request, sensor, scale, stored, to_clay_unit):
    from trainer.backbones.clay import PLATFORMS, SENSOR_PLATFORMS

    path, _ = request.getfixturevalue("clay_ckpt")
    kw = {"scale": scale[0], "offset": scale[1], "low": 1500, "high": 5000} if scale else {}
    ds = dataset(tmp_path, "c", LANDSAT6, sensor, **kw)
    backbone, kwargs = backbone_for_dataset(
        {"name": "clay_v1_5", "weights": str(path), "size": "tiny"}, ds, 32
    )
    table = PLATFORMS[SENSOR_PLATFORMS[sensor][0]].bands
    published = np.array([[table[b].mean, table[b].std] for b in backbone.spec.bands])
    expected = (to_clay_unit(stored) - published[:, 0]) / published[:, 1]
    got = seen(backbone, stored)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        apply_value_scaling(card(backbone, kwargs, ds), np.full(len(got), float(stored))),
        got,
        atol=1e-5,
    )


def test_resnet_ssl4eo_takes_toa_reflectance(home, tmp_path, monkeypatch):
    """TorchGeo's SSL4EO-S12 RGB weights take Sentinel-2 L1C values / 10000 (TOA reflectance);
    Landsat C2 L2 arrives as surface reflectance, converted exactly and announced."""
    from timm.models.resnet import BasicBlock, ResNet

    weights = tmp_path / "resnet18_sentinel2_rgb_moco-e3a335e3.pth"
    torch.save(ResNet(BasicBlock, [2, 2, 2, 2], in_chans=3, num_classes=0).state_dict(), weights)
    ds = dataset(tmp_path, "lsrgb", ["red", "green", "blue"], "landsat-c2-l2")
    with pytest.warns(UserWarning, match="surface reflectance.*differ physically"):
        backbone, kwargs = backbone_for_dataset(
            {"name": "resnet18", "weights": str(weights)}, ds, 32
        )
    got = seen(backbone, 10909)
    np.testing.assert_allclose(got, (10909 * 2.75e-5 - 0.2) * 1e4 / 1e4, atol=1e-6)
    np.testing.assert_allclose(
        apply_value_scaling(card(backbone, kwargs, ds), np.full(3, 10909.0)), got, atol=1e-6
    )


def test_values_that_cannot_be_converted_are_refused_unless_dataset_statistics(home, tmp_path):
    ds = dataset(tmp_path, "rgb", ["red", "green", "blue"], "rgb", low=10, high=250, dtype="uint8")
    b = {
        "name": "prithvi_eo_v2_300",
        "weights": "random",
        "size": "tiny",
        "normalization": "pretrained",
    }
    with pytest.raises(
        UnitError,
        match=r"HLS surface reflectance.*holds rgb values \(8-bit RGB "
        r"digital number\).*backbone.normalization=dataset",
    ):
        backbone_for_dataset(b, ds, 32)
    backbone, _ = backbone_for_dataset(b | {"normalization": "dataset"}, ds, 32)
    assert backbone.spec.normalization["statistics"] == "dataset"
    assert list(backbone.spec.mean) == ds.manifest["stats"]["mean"]
    # random weights keep using the dataset's statistics
    backbone, _ = backbone_for_dataset({"name": "resnet18", "weights": "random"}, ds, 32)
    assert list(backbone.spec.mean) == ds.manifest["stats"]["mean"]
    assert backbone.spec.normalization["conversion"] == "none"


def test_a_dataset_without_sensor_is_refused_for_published_statistics(home, tmp_path):
    ckpt = tmp_path / "Prithvi_EO_V2_300M.pt"
    _official_prithvi_file("prithvi_eo_v2_300", ckpt)
    ds = dataset(tmp_path, "nosensor", LANDSAT6, None)
    with pytest.raises(
        UnitError, match="names no sensor.*--sensor.*backbone.normalization=dataset"
    ):
        backbone_for_dataset(
            {"name": "prithvi_eo_v2_300", "weights": str(ckpt), "size": "tiny"}, ds, 32
        )


def test_version_1_records_still_load():
    """A model record written before units were recorded reads as what it did then."""
    v1 = {
        "geotune_model": 1,
        "sensor": "landsat-c2-l2",
        "bands": LANDSAT6,
        "mean": [1.0] * 6,
        "std": [2.0] * 6,
    }
    rec = upgrade_record(v1)
    assert rec["geotune_model"] == 2 and rec["mean"] == [1.0] * 6
    assert rec["normalization"]["conversion"] == "none"
    assert rec["normalization"]["input_units"][0]["scale"] == 2.75e-5
    assert "version 1" in rec["normalization"]["source"]
    with pytest.raises(ModelRefError, match="Upgrade geotune"):
        upgrade_record(v1 | {"geotune_model": 99})


def test_ingest_applies_the_sensors_fill_value_and_says_so(home, tmp_path):
    with pytest.warns(UserWarning, match="collar.tif declares no nodata.*equals 0"):
        ds = dataset(tmp_path, "collar", LANDSAT6, "landsat-c2-l2", collar=20)
    assert ds.manifest["nodata"] == 0
    assert ds.manifest["nodata_source"] == "landsat-c2-l2 fill value; the file declares none"
    with rasterio.open(tmp_path / "collar.tif") as src:
        valid = (src.read() != 0).any(0)
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    assert (mask[~valid] == 255).all() and (mask[valid] != 255).all()
    assert ds.manifest["stats"]["valid_pixels"] == valid.sum()


def test_change_pairs_must_be_two_images_in_date_order(home, tmp_path):
    from datamodules.imagery import ImageryError

    a, cmap = write_scene(tmp_path / "a.tif", LANDSAT6, seed=1)
    b, _ = write_scene(tmp_path / "b.tif", LANDSAT6, seed=2)
    (tmp_path / "copy.tif").write_bytes(a.read_bytes())
    with rasterio.open(a) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": None}
    with rasterio.open(tmp_path / "m.tif", "w", **profile) as dst:
        dst.write(cmap, 1)
    kw = dict(name="pair", labels=tmp_path / "m.tif", task="change", block_size=32, progress=False)
    for images, why in (
        ([a, a], "a.tif is given twice"),
        ([a, tmp_path / "copy.tif"], "a.tif and copy.tif are byte-identical"),
    ):
        with pytest.raises(ImageryError, match=f"dates must be different images, but {why}"):
            ingest(images=images, **kw)
    with pytest.raises(ImageryError, match="dated 2024-06-01, 2019-06-01: give them oldest first"):
        ingest(images=[a, b], dates=["2024-06-01", "2019-06-01"], **kw)
    assert not (home / "datasets" / "pair").exists()
    ds = ingest(images=[a, b], dates=["2019-06-01", "2024-06-01"], **kw)
    assert ds.manifest["dates"] == ["2019-06-01", "2024-06-01"]
