"""GeotuneDataModule over dataset folders: the batch contract per task, labels that never leak
across splits, label budgets (stratified, nested), band mapping, worker processes."""

import csv
import warnings

import numpy as np
import pytest
import rasterio
import torch
from synth import make_labels, make_scene

from datamodules.budget import BudgetError, allocation_order, select_budget
from datamodules.datamodule import GeotuneDataModule
from datamodules.datasets import read_units
from datamodules.errors import UserError
from datamodules.ingest import ingest


@pytest.fixture
def seg(home, scene):
    return ingest(
        name="seg", images=[scene["image"]], labels=scene["labels"], class_column="class_name",
        block_size=32, progress=False,
    )  # fmt: skip


def _dm(ds, **kw):
    kw = {"patch_size": 32, "batch_size": 4, "num_workers": 0, "chips_per_epoch": 16} | kw
    return GeotuneDataModule(ds.id, **kw)


def _full(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _train_units(ds):
    u = read_units(ds)
    sel = u["split"] == "train"
    return u["unit_id"][sel], u["class_id"][sel]


def test_segmentation_batches_follow_the_contract(seg):
    dm = _dm(seg)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "lonlat", "date_ord", "window"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 4, 32, 32)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape == (4, 32, 32)
    assert batch["lonlat"].shape == (4, 2) and batch["date_ord"].shape == (4, 1)
    lon, lat = batch["lonlat"][0].tolist()
    assert 14.9 < lon < 15.1 and 37.9 < lat < 38.0  # EPSG:32633 at (500 km, 4200 km)
    # raw values, read from the image at the chip's window
    image = rasterio.open(seg.images[0]).read()
    for img, (r, c, h, w) in zip(batch["image"], batch["window"].tolist(), strict=True):
        np.testing.assert_array_equal(
            img.numpy(), image[:, r : r + h, c : c + w].astype(np.float32)
        )


def test_nodata_pixels_reach_the_model_as_the_band_means(home, tmp_path):
    # as prediction fills them: the classes beside a collar do not depend on its encoding
    image, cmap = make_scene(tmp_path, size=128, seed=0, nodata_corner=60)
    labels = make_labels(tmp_path, image, cmap)
    ds = ingest(name="nd", images=[image], labels=labels, class_column="class_name",
                block_size=32, progress=False)  # fmt: skip
    mean = np.asarray(ds.manifest["stats"]["mean"], dtype=np.float32)
    raw = rasterio.open(ds.images[0]).read()
    seen = 0
    dm = _dm(ds, chips_per_epoch=64)
    for batch in dm.train_dataloader():
        for img, (r, c, h, w) in zip(batch["image"], batch["window"].tolist(), strict=True):
            want = raw[:, r : r + h, c : c + w].astype(np.float32)
            nodata = np.all(want == 0, axis=0)
            want[:, nodata] = mean[:, None]
            np.testing.assert_array_equal(img.numpy(), want)
            seen += int(nodata.sum())
    assert seen > 0


def test_chips_only_see_their_own_splits_labels(seg):
    dm = _dm(seg, chips_per_epoch=64, min_labelled_fraction=0.05)
    mask, units = _full(seg.file("mask")), _full(seg.file("units"))
    u = read_units(seg)
    split_of = dict(zip(u["unit_id"].tolist(), u["split"].tolist(), strict=True))
    for split in ("train", "val", "test"):
        loader = getattr(dm, f"{split}_dataloader")()
        n = 0
        for batch in loader:
            for m, (r, c, h, w) in zip(
                batch["mask"].numpy(), batch["window"].tolist(), strict=True
            ):
                n += 1
                sub_u, sub_m = units[r : r + h, c : c + w], mask[r : r + h, c : c + w]
                mine = np.vectorize(lambda x: split_of.get(x) == split)(sub_u)  # noqa: B023
                np.testing.assert_array_equal(m, np.where(mine, sub_m, 255))
                assert mine.any()  # no chip without labels of its split
                if split == "train":  # exact below 4 Mpx
                    assert mine.mean() >= 0.05
        assert n == dm.chips(split) > 0


def test_val_and_test_chips_each_once(seg):
    dm = _dm(seg)
    for split in ("val", "test"):
        wins = [
            tuple(w) for b in getattr(dm, f"{split}_dataloader")() for w in b["window"].tolist()
        ]
        assert len(wins) == len(set(wins)) == dm.chips(split)


def test_workers_deliver_the_same_batches_as_the_main_process(seg):
    ref = [b for b in _dm(seg).val_dataloader()]
    got = [b for b in _dm(seg, num_workers=2).val_dataloader()]
    assert len(ref) == len(got) > 1
    for a, b in zip(ref, got, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_band_mapping_reorders_channels_by_name(seg):
    dm = _dm(seg)
    assert dm.configure_bands(["nir08", "red", "green"]) == ["nir08", "red", "green"]
    batch = next(iter(dm.val_dataloader()))
    image = rasterio.open(seg.images[0]).read()
    r, c, h, w = batch["window"][0].tolist()
    np.testing.assert_array_equal(
        batch["image"][0].numpy(), image[[3, 2, 1], r : r + h, c : c + w].astype(np.float32)
    )


# -- budgets ------------------------------------------------------------------------------------
def test_budget_allocation_is_house_monotone_and_proportional():
    order = allocation_order({0: 30, 1: 10, 2: 3})
    assert order[:3] == [0, 1, 2]  # every class first gets one unit
    assert len(order) == 43 and sorted(order).count(2) == 3
    for b in (12, 20, 40):  # proportional beyond the first unit per class
        q = np.bincount(order[:b], minlength=3)
        np.testing.assert_allclose(q / b, [30 / 43, 10 / 43, 3 / 43], atol=0.12)


def test_budgets_are_stratified_nested_and_seeded(seg):
    ids, cls = _train_units(seg)
    kept = {b: set(select_budget(ids, cls, b, seed=0).tolist()) for b in (3, 6, 12, 24, len(ids))}
    assert kept[3] < kept[6] < kept[12] < kept[24] < kept[len(ids)] == set(ids.tolist())
    for b, units in kept.items():
        assert len(units) == b
        per_class = np.bincount(cls[np.isin(ids, list(units))], minlength=3)
        assert (per_class >= 1).all(), b
    assert kept[12] != set(select_budget(ids, cls, 12, seed=1).tolist())
    with pytest.raises(
        BudgetError, match=r"data.budget=2 is below the 3 classes present in the training split"
    ):
        select_budget(ids, cls, 2, seed=0)


def test_budget_keeps_only_those_units_in_training_chips(seg):
    full = _dm(seg)
    dm = _dm(seg, budget=5, chips_per_epoch=48, min_labelled_fraction=0.01)
    kept = dm.kept_units()
    assert dm.train_units() == 5 and full.train_units() == len(_train_units(seg)[0]) > 5
    units = _full(seg.file("units"))
    seen = set()
    for batch in dm.train_dataloader():
        for m, (r, c, h, w) in zip(batch["mask"].numpy(), batch["window"].tolist(), strict=True):
            labelled = units[r : r + h, c : c + w][m != 255]
            assert np.isin(labelled, kept).all()
            seen |= set(labelled.tolist())
    assert seen and seen <= set(kept.tolist())
    for split in ("val", "test"):  # never subsampled
        assert dm.chips(split) == full.chips(split)
    with pytest.raises(UserError, match="data.budget must be a positive number"):
        _dm(seg, budget=0)


def test_budget_from_the_hydra_data_config(seg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/data/folder.yaml")
    assert cfg.budget is None
    dm = instantiate(cfg, dataset=seg.id, patch_size=32, num_workers=0, budget=7)
    assert isinstance(dm, GeotuneDataModule) and dm.train_units() == 7


# -- other tasks --------------------------------------------------------------------------------
def _points(tmp_path, image, cmap, multi):
    import geopandas as gpd
    import shapely
    from synth import CLASSES

    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    rc = np.random.default_rng(0).integers(8, cmap.shape[0] - 8, (150, 2))
    names = [
        CLASSES[cmap[r, c]] + (f";{CLASSES[(cmap[r, c] + 1) % 3]}" if multi and i % 2 else "")
        for i, (r, c) in enumerate(rc)
    ]
    geoms = [shapely.Point(*(t @ (c + 0.5, r + 0.5))) for r, c in rc]
    path = tmp_path / f"points_{multi}.gpkg"
    gpd.GeoDataFrame({"lc": names}, geometry=geoms, crs=crs).to_file(path)
    return path


@pytest.mark.parametrize("multi", [False, True], ids=["single-label", "multi-label"])
def test_classification_batches_follow_the_contract(home, tmp_path, multi):
    image, cmap = make_scene(tmp_path, size=192, seed=2)
    ds = ingest(
        name="lc", images=[image], labels=_points(tmp_path, image, cmap, multi), class_column="lc",
        task="classification", multi_label=multi, chip_size=32, block_size=48, progress=False,
    )  # fmt: skip
    dm = _dm(ds, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "lonlat", "date_ord"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (8, 4, 32, 32)
    if multi:
        assert batch["label"].dtype == torch.float32 and batch["label"].shape == (8, 3)
        assert set(batch["label"].unique().tolist()) <= {0.0, 1.0}
        assert (batch["label"].sum(1) >= 1).all()
    else:
        assert batch["label"].dtype == torch.int64 and batch["label"].shape == (8,)
    assert batch["lonlat"].shape == (8, 2) and batch["date_ord"].shape == (8, 1)
    # every train chip once per epoch; val/test chips once; the labels are chips.csv's
    with open(ds.file("chips")) as f:
        rows = list(csv.DictReader(f))
    n_train = sum(r["split"] == "train" for r in rows)
    assert dm.chips("train") == n_train
    assert sum(len(b["label"]) for b in dm.train_dataloader()) == n_train
    for split in ("val", "test"):
        labels = torch.cat([b["label"] for b in getattr(dm, f"{split}_dataloader")()])
        expected = [[int(x) for x in r["class_id"].split(";")] for r in rows if r["split"] == split]
        if multi:
            assert [torch.nonzero(v).ravel().tolist() for v in labels] == expected
        else:
            assert labels.tolist() == [e[0] for e in expected]
    # budgets count chips
    small = _dm(ds, batch_size=8, budget=12)
    assert small.train_units() == 12 == sum(len(b["label"]) for b in small.train_dataloader())


def test_classification_chip_pixels_are_centred_on_the_label(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=192, seed=2)
    ds = ingest(
        name="lc", images=[image], labels=_points(tmp_path, image, cmap, False), class_column="lc",
        task="classification", chip_size=32, block_size=48, progress=False,
    )  # fmt: skip
    default = GeotuneDataModule(ds.id, num_workers=0)  # the chip size is the default patch
    assert default.patch_size == 32
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert next(iter(default.val_dataloader()))["image"].shape[-2:] == (32, 32)
    assert not [w for w in caught if "differs from the dataset's chip" in str(w.message)]
    from trainer.config import compose

    assert compose("train", ["data.dataset=lc"]).data.patch_size is None
    dm = _dm(ds, patch_size=16)
    with open(ds.file("chips")) as f:
        first_val = next(r for r in csv.DictReader(f) if r["split"] == "val")
    with pytest.warns(UserWarning, match="data.patch_size=16 differs from the dataset's chip"):
        loader = dm.val_dataloader()
    img = next(iter(loader))["image"][0]
    r0, c0 = int(first_val["row"]) + 16 - 8, int(first_val["col"]) + 16 - 8
    ref = rasterio.open(ds.images[0]).read()[:, r0 : r0 + 16, c0 : c0 + 16]
    np.testing.assert_array_equal(img.numpy(), ref.astype(np.float32))


def test_change_and_multi_date_batches(home, tmp_path):
    before, cmap = make_scene(tmp_path, size=128, seed=0, name="t0.tif")
    after, _ = make_scene(tmp_path, size=128, seed=3, name="t1.tif")
    later, _ = make_scene(tmp_path, size=128, seed=4, name="t2.tif")
    labels = make_labels(tmp_path, before, cmap)
    change = ingest(
        name="chg", images=[before, after], labels=labels, class_column="class_name",
        task="change", background="unchanged", dates=["2020-01-01", "2021-01-01"],
        block_size=32, progress=False,
    )  # fmt: skip
    batch = next(iter(_dm(change).train_dataloader()))
    assert batch["image"].shape == (4, 4, 2, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert batch["date_ord"].tolist()[0] == [737425, 737791]
    t0, t1 = (rasterio.open(p).read() for p in change.images)
    r, c, h, w = batch["window"][0].tolist()
    np.testing.assert_array_equal(batch["image"][0, :, 0].numpy(), t0[:, r : r + h, c : c + w])
    np.testing.assert_array_equal(batch["image"][0, :, 1].numpy(), t1[:, r : r + h, c : c + w])
    multi = ingest(
        name="mt", images=[before, after, later], labels=labels, class_column="class_name",
        block_size=32, progress=False,
    )  # fmt: skip
    batch = next(iter(_dm(multi).val_dataloader()))
    assert batch["image"].shape[1:] == (4, 3, 32, 32) and batch["date_ord"].shape[1] == 3
    assert (batch["date_ord"] == 0).all()  # unknown dates
