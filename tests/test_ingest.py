import json

import numpy as np
import pytest
import rasterio
from synth import CLASSES, make_labels, make_scene

from datamodules.imagery import ImageryError
from datamodules.ingest import ingest
from datamodules.labels import LabelError
from datamodules.manifest import DatasetError, list_datasets, load_dataset
from datamodules.splits import SplitError


def test_polygons_rasterized_once_onto_image_grid(home, scene):
    ds = ingest(
        name="Coast 1",
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
    )
    m = ds.manifest
    assert ds.id == "coast_1" and (home / "datasets" / "coast_1" / "dataset.json").is_file()
    assert [c["name"] for c in m["classes"]] == sorted(CLASSES)
    assert m["bands"] == ["blue", "green", "red", "nir08"]
    assert m["crs"] == "EPSG:32633" and m["resolution"] == [10.0, 10.0] and m["shape"] == [128, 128]
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)
    labelled = mask != 255
    assert 0.2 < labelled.mean() < 0.95
    assert ((units > 0) == labelled).all()
    # every labelled pixel carries the class of the synthetic region it lies in
    names = [c["name"] for c in m["classes"]]
    truth = np.array([names.index(CLASSES[v]) for v in range(len(CLASSES))])[scene["cmap"]]
    assert (mask[labelled] == truth[labelled]).mean() > 0.99
    assert sum(c["pixels"] for c in m["classes"]) == int(labelled.sum())
    # spatial splits: whole units, all classes in every split
    per_split = m["splits"]["pixels"]
    assert set(per_split) == {"train", "val", "test"}
    assert all(v > 0 for s in per_split.values() for v in s.values())
    # statistics over valid pixels
    with rasterio.open(scene["image"]) as src:
        img = src.read().astype(float)
    np.testing.assert_allclose(m["stats"]["mean"], img.reshape(4, -1).mean(1), rtol=1e-4)
    np.testing.assert_allclose(m["stats"]["std"], img.reshape(4, -1).std(1), rtol=1e-3)


def test_name_clash_and_listing(home, scene):
    kw = dict(
        images=[scene["image"]],
        labels=scene["labels"],
        class_column="class_name",
        block_size=32,
        progress=False,
    )
    ingest(name="a", **kw)
    with pytest.raises(DatasetError, match="already exists"):
        ingest(name="a", **kw)
    assert [d.id for d in list_datasets()] == ["a"]
    assert load_dataset("a").num_classes == 3


def test_missing_class_column_lists_columns(home, scene):
    with pytest.raises(
        LabelError,
        match=r"no column 'crop'; columns are: class_name, geometry.*--class-column class_name",
    ):
        ingest(
            name="x",
            images=[scene["image"]],
            labels=scene["labels"],
            class_column="crop",
            progress=False,
        )
    assert list_datasets() == []


def test_labels_outside_imagery_names_both_extents(home, tmp_path, scene):
    far, cmap = make_scene(tmp_path, size=64, seed=3, origin=(700000.0, 4800000.0), name="far.tif")
    with pytest.raises(
        LabelError,
        match=r"entirely outside the imagery: labels cover lon .* the imagery covers lon",
    ):
        ingest(
            name="x",
            images=[far],
            labels=scene["labels"],
            class_column="class_name",
            progress=False,
        )


def test_raster_without_crs(home, tmp_path, scene):
    bad = tmp_path / "nocrs.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 8, 8), dtype="uint8"))
    with pytest.raises(ImageryError, match="has no CRS"):
        ingest(
            name="x",
            images=[bad],
            labels=scene["labels"],
            class_column="class_name",
            progress=False,
        )


def test_band_count_must_match_sensor(home, scene):
    with rasterio.open(scene["image"], "r+") as dst:
        dst.descriptions = (None, None, None, None)
    with pytest.raises(ImageryError, match="has 4 bands but sensor sentinel-2-l2a has 12"):
        ingest(
            name="x",
            images=[scene["image"]],
            labels=scene["labels"],
            class_column="class_name",
            sensor="sentinel-2-l2a",
            progress=False,
        )


def test_too_few_pixels_for_split_says_which_class(home, tmp_path):
    path, cmap = make_scene(tmp_path, size=64, seed=1)
    labels = make_labels(tmp_path, path, cmap, keep=1.0)
    with pytest.raises(SplitError, match="too few labelled pixels for the requested split"):
        ingest(
            name="x",
            images=[path],
            labels=labels,
            class_column="class_name",
            block_size=64,
            progress=False,
        )
    assert list_datasets() == []
    assert not any((home / "datasets").glob(".tmp-*"))


def test_mask_labels_keep_zero_as_a_class(home, tmp_path, scene):
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(scene["image"]) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 99}
    m = scene["cmap"].copy()
    m[:10] = 99  # unlabelled
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(m, 1)
    ds = ingest(name="m", images=[scene["image"]], labels=mask_path, block_size=32, progress=False)
    assert [c["value"] for c in ds.classes] == [0, 1, 2]
    assert ds.manifest["label_kind"] == "mask"
    units = json.loads((ds.path / "dataset.json").read_text())["splits"]["units"]
    assert sum(units.values()) > 3
