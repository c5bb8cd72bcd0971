"""Few labels are the normal case: splits that adapt and say so, chips drawn around the labels,
band names from descriptions. (Training them all the way to a prediction:
tests/test_few_labels_e2e.py.)"""

import csv

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from synth import few_polygons, make_labels, make_scene
from torchgeo.samplers import GeoSampler

from datamodules.datamodule import GeotuneDataModule
from datamodules.imagery import ImageryError
from datamodules.ingest import ingest
from datamodules.label_units import GUARD_PIXELS


def _ingest(name, image, labels, **kw):
    kw = {"class_column": "class_name", "progress": False} | kw
    return ingest(name=name, images=[image], labels=labels, **kw)


def _box(transform, r0, c0, h, w):
    x0, y0 = transform * (c0, r0)
    x1, y1 = transform * (c0 + w, r0 + h)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _one_tree(tmp_path, tree, n, away, name):
    """A scene with ONE 'tree' polygon (``tree``: row, col, height, width in px) and ``n``
    random 10 x 12 px boxes of two other classes, kept where ``away(row, col)``."""
    image, _ = make_scene(tmp_path, size=256, seed=4)
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    geoms, names = [_box(t, *tree)], ["tree"]
    rng = np.random.default_rng(0)
    for r, c in rng.integers(0, 240, (n, 2)):
        if away(r, c):
            geoms.append(_box(t, r, c, 10, 12))
            names.append("crop" if len(names) % 2 else "water")
    path = tmp_path / name
    gpd.GeoDataFrame({"class_name": names}, geometry=geoms, crs=crs).to_file(path)
    return image, path


def test_one_large_polygon_is_cut_into_pieces_across_splits_with_a_guard_band(home, tmp_path):
    # tree: ONE polygon of 40 x 200 px over four 64-px blocks; two other classes: small
    # polygons all over the scene (they reach every split whole)
    image, path = _one_tree(
        tmp_path, (100, 28, 40, 200), 40, lambda r, c: not 84 <= r < 150, "tree.geojson"
    )
    with pytest.warns(UserWarning) as caught:
        ds = _ingest("cut", image, path, block_size=64)
    sp = ds.manifest["splits"]
    tree = sp["reach"]["tree"]
    assert tree["how"] == "cut" and len(tree["splits"]) >= 2 and tree["splits"][0] == "train"
    n = len(tree["splits"])
    expected = f"tree: 1 polygon, cut into {n} pieces across {'/'.join(tree['splits'])} (metrics on it are optimistic)"
    assert tree["note"] == expected and expected in [str(w.message) for w in caught]
    assert sp["guard_pixels"] == GUARD_PIXELS
    with open(ds.file("units_table")) as f:
        rows = [r for r in csv.DictReader(f) if r["source_unit"] == "1"]
    assert sorted(r["split"] for r in rows) == sorted(tree["splits"])  # one unit per split
    n_labels = ds.manifest["source"]["n_labels"]
    assert all(int(r["unit_id"]) > n_labels for r in rows)  # new ids for the pieces
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    tree_id = next(c["id"] for c in ds.classes if c["name"] == "tree")
    where = {r["split"]: np.argwhere(units == int(r["unit_id"])) for r in rows}
    assert sum(len(v) for v in where.values()) == sum(int(r["pixels"]) for r in rows)
    for a in where:
        for b in where:
            if a < b:  # pieces in different splits are more than the guard band apart
                d = np.abs(where[a][:, None, :] - where[b][None, :, :]).max(-1)
                assert d.min() > GUARD_PIXELS, (a, b, d.min())
    box = np.zeros_like(mask, dtype=bool)
    box[100:140, 28:228] = True
    guard = box & (units == 0)
    assert guard.sum() > 0 and (mask[guard] == tree_id).all()  # mask.tif keeps the class
    assert sum(int(r["pixels"]) for r in rows) + guard.sum() == box.sum()
    # the other classes stay whole and reach every split
    for slug in ("crop", "water"):
        assert sp["reach"][slug]["splits"] == ["train", "val", "test"]
        assert sp["reach"][slug]["how"] == "blocks" and sp["reach"][slug]["note"] is None


def test_a_small_polygon_across_a_block_edge_is_not_lost_to_the_guard_band(home, tmp_path):
    # one 14 x 13 px polygon of 'tree' straddles a block edge 8 px from its left side: its two
    # pieces would lie within the guard band of each other; a cut would leave no tree pixel
    image, path = _one_tree(
        tmp_path, (100, 56, 14, 13), 40, lambda r, c: not 84 <= r < 130, "tree.geojson"
    )
    with pytest.warns(UserWarning, match=r"tree: train only, no held-out metric \(1 polygon\)"):
        ds = _ingest("edge", image, path, block_size=64)
    tree = ds.manifest["splits"]["reach"]["tree"]
    assert tree["splits"] == ["train"] and tree["how"] == "blocks"
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)
    assert (units[100:114, 56:69] == 1).all()  # the polygon whole, as its own unit
    assert next(c["pixels"] for c in ds.classes if c["name"] == "tree") == 14 * 13


def test_a_polygon_lost_to_the_guard_band_leaves_the_other_classes_cut(home, tmp_path):
    # tree: the large polygon of the first test; shrub: the small one of the second, which a
    # cut would leave all guard band. Once, the shrub's loss undid every cut: the tree stayed
    # train only. Now the shrub alone stays whole, and the large tree is cut.
    image, _ = make_scene(tmp_path, size=256, seed=4)
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    geoms, names = [_box(t, 100, 28, 40, 200), _box(t, 20, 56, 14, 13)], ["tree", "shrub"]
    geoms, names = [*geoms, _box(t, 20, 140, 10, 12)], [*names, "tree"]  # a second tree, whole
    rng = np.random.default_rng(0)
    for r, c in rng.integers(0, 240, (60, 2)):
        if not (84 <= r < 150 or 8 <= r < 40):
            geoms.append(_box(t, r, c, 10, 12))
            names.append("crop" if len(names) % 2 else "water")
    path = tmp_path / "two.geojson"
    gpd.GeoDataFrame({"class_name": names}, geometry=geoms, crs=crs).to_file(path)
    with pytest.warns(UserWarning) as caught:
        ds = _ingest("two", image, path, block_size=64)
    reach = ds.manifest["splits"]["reach"]
    tree, shrub = reach["tree"], reach["shrub"]
    assert tree["how"] == "cut" and tree["splits"] == ["train", "val", "test"]
    assert tree["note"].startswith(
        "tree: 2 polygons, 1 of them cut into 3 pieces across train/val/test"
    )
    assert shrub["how"] == "blocks" and shrub["splits"] == ["train"]
    assert shrub["note"].startswith("shrub: train only, no held-out metric (1 polygon)")
    assert {tree["note"], shrub["note"]} <= {str(w.message) for w in caught}
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)
    assert (units[20:34, 56:69] == 2).all()  # the shrub whole, as its own unit


def test_a_sliver_alone_in_its_block_follows_its_polygon(home, tmp_path):
    # tree: one 30 x 30 px polygon over a block corner; its 3 x 3 px corner piece (a sliver,
    # under min_class_pixels) lies in a block holding no other label (once a KeyError)
    def away(r, c):  # block (0, 0) holds nothing but the sliver
        return (r >= 64 or c >= 64) and not (50 <= r < 100 and 50 <= c < 100)

    image, path = _one_tree(tmp_path, (61, 61, 30, 30), 60, away, "corner.geojson")
    with pytest.warns(UserWarning, match="tree: "):
        ds = _ingest("corner", image, path, block_size=64)
    assert next(c["pixels"] for c in ds.classes if c["name"] == "tree") == 30 * 30
    assert ds.manifest["splits"]["reach"]["tree"]["splits"][0] == "train"
    with rasterio.open(ds.file("units")) as src:
        units = src.read(1)[61:91, 61:91]
    with open(ds.file("units_table")) as f:
        split = {r["unit_id"]: r["split"] for r in csv.DictReader(f)}
    # every tree pixel is in one unit or a guard band, and the sliver's split is its polygon's
    assert len({split[str(u)] for u in np.unique(units[units > 0])}) == 1


def test_two_polygons_of_a_class_far_apart_go_one_to_train_one_to_validation(home, tmp_path):
    # three classes, two 30 x 40 px polygons each, every polygon in a 64-px block of its own
    # (the first: top row). The block shares alone kept both of a class in train (half its
    # pixels is under train's 70%): no validation at all.
    image, _ = make_scene(tmp_path, size=256, seed=4)
    with rasterio.open(image) as src:
        t, crs = src.transform, src.crs
    where = {"water": [(10, 10), (200, 140)], "forest": [(10, 140), (140, 10)],
             "field": [(10, 200), (140, 200)]}  # fmt: skip
    names = [n for n, at in where.items() for _ in at]
    geoms = [_box(t, r, c, 30, 40) for at in where.values() for r, c in at]
    path = tmp_path / "pairs.geojson"
    gpd.GeoDataFrame({"class_name": names}, geometry=geoms, crs=crs).to_file(path)
    with pytest.warns(UserWarning, match="no test labels"):
        ds = _ingest("pairs", image, path, block_size=64)
    sp = ds.manifest["splits"]
    for name in where:
        assert sp["reach"][name]["splits"] == ["train", "val"], sp["reach"][name]
        assert sp["pixels"]["train"][name] == sp["pixels"]["val"][name] == 1200
    assert sp["units"] == {"train": 3, "val": 3, "test": 0}
    # one polygon per class: it stays in train, nothing to hold out
    one = gpd.GeoDataFrame({"class_name": list(where)}, geometry=geoms[::2], crs=crs)
    one.to_file(tmp_path / "one.geojson")
    with pytest.warns(UserWarning, match="no validation labels"):
        ds = _ingest("one", image, tmp_path / "one.geojson", block_size=64)
    assert all(r["splits"] == ["train"] for r in ds.manifest["splits"]["reach"].values())


def test_small_polygons_stay_whole_and_train_only(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=512, seed=2)
    labels = few_polygons(tmp_path, image, cmap, {"water": 1, "forest": 1, "field": 1})
    with pytest.warns(UserWarning, match="no validation labels") as caught:
        ds = _ingest("py", image, labels)
    text = [str(w.message) for w in caught]
    for c in ds.classes:
        reach = ds.manifest["splits"]["reach"][c["slug"]]
        assert reach["splits"] == ["train"] and reach["how"] == "blocks"
        assert reach["note"] in text and reach["note"].startswith(
            f"{c['name']}: train only, no held-out metric (1 polygon)"
        )
    assert ds.manifest["splits"]["guard_pixels"] == 0
    assert "no test labels: no held-out test metric" in text


def test_a_mask_with_a_class_in_one_corner_reaches_what_its_blocks_allow(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=256, seed=0)
    mask = np.where(cmap == 2, 0, 1).astype(np.uint8)  # two classes everywhere ...
    mask[:40, :40] = 2  # ... and a third one in one corner, inside one 64-px block
    with rasterio.open(image) as src:
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 255}
    path = tmp_path / "mask.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
    with pytest.warns(UserWarning, match=r"2: train only, no held-out metric \(1 region\)"):
        ds = _ingest("corner", image, path, block_size=64)
    reach = ds.manifest["splits"]["reach"]
    assert reach["2"]["splits"] == ["train"]
    assert reach["0"]["splits"] == reach["1"]["splits"] == ["train", "val", "test"]
    dm = GeotuneDataModule("corner", num_workers=0)
    assert dm.sampler == "random" and dm.patch_size == 128  # a dense mask: as before


def test_label_sampler_draws_labelled_chips_reproducibly_per_rank_and_epoch(home, tmp_path):
    image, cmap = make_scene(tmp_path, size=768, seed=2)
    labels = few_polygons(tmp_path, image, cmap, {"water": 2, "forest": 1, "field": 1})
    with pytest.warns(UserWarning):
        _ingest("py", image, labels)
    dm = GeotuneDataModule("py", num_workers=0, batch_size=4)
    assert dm.sampler == "labels" and dm.patch_size == 64  # polygons of 9-15 px + context
    ds, sampler = dm._split("train")
    assert isinstance(sampler, GeoSampler) and len(sampler) == 64  # 16 batches at least
    assert "64 training chips of 64 px per epoch, drawn around labelled pixels" in dm.sampling()
    # the floor is in batches: the default batch of 8 gets 128 chips (16 steps) an epoch
    assert GeotuneDataModule("py", num_workers=0).sampling().startswith("128 training chips")
    chips = list(sampler)
    for index in chips:
        assert (ds[index]["mask"] != 255).any()  # every chip holds labels
    assert list(sampler) != chips  # the next epoch draws anew ...
    sampler.set_epoch(0)
    assert list(sampler) == chips  # ... reproducibly from (seed, rank, epoch)
    dm1 = GeotuneDataModule("py", num_workers=0, batch_size=4)
    dm1._rank_world = lambda: (1, 2)
    other = list(dm1._split("train")[1])
    assert len(other) == 32 and other != chips[:32]
    # classes are drawn in proportion to the square root of their labelled pixels
    points = sampler.points
    per_class = np.bincount(points.classes, minlength=3)
    r0, c0 = points.draw(np.random.default_rng(1), 20000, 1)  # 1-px chips: the drawn pixels
    m = rasterio.open(ds.ds.file("mask")).read(1)
    drawn = np.bincount(m[r0, c0], minlength=3)[:3] / 20000
    expected = np.sqrt(per_class) / np.sqrt(per_class).sum()
    np.testing.assert_allclose(drawn, expected, atol=0.03)


def test_sparse_labels_with_the_random_sampler_say_what_to_do(home, tmp_path):
    from datamodules.errors import UserError

    image, cmap = make_scene(tmp_path, size=768, seed=2)
    labels = few_polygons(tmp_path, image, cmap, {"water": 1, "forest": 1, "field": 1})
    with pytest.warns(UserWarning):
        _ingest("py", image, labels)
    dm = GeotuneDataModule("py", num_workers=0, sampler="random", patch_size=128)
    with pytest.raises(
        UserError, match=r"too sparse for data.sampler=random. Use data.sampler=labels"
    ):
        list(dm._split("train")[1])


def test_dense_labels_keep_todays_defaults(home, scene):
    _ingest("dense", scene["image"], scene["labels"], block_size=32)
    dm = GeotuneDataModule("dense", num_workers=0)
    assert dm.sampler == "random" and dm.patch_size == 128
    dm.sampling()
    assert dm.chips_per_epoch == 256


def _described(tmp_path, descriptions, name="desc.tif"):
    path, _ = make_scene(tmp_path, size=64, seed=0, name=name, descriptions=False)
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = tuple(descriptions)
    return path


def test_band_descriptions_name_the_bands_for_the_sensor(home, tmp_path):
    labels = make_labels(tmp_path, *make_scene(tmp_path, size=64, seed=0))
    image = _described(tmp_path, ["nir08", "Red", "B03", "blue"])  # any order, case, asset ids
    from datamodules.imagery import open_scenes

    assert open_scenes([image], sensor="sentinel-2-l2a")[0].bands == [
        "nir08",
        "red",
        "green",
        "blue",
    ]
    # as Google Earth Engine names Sentinel-2's bands: B2 for ESA's B02
    gee = _described(tmp_path, ["B8A", "B4", "b3", "B2"], name="gee.tif")
    assert open_scenes([gee], sensor="sentinel-2-l2a")[0].bands == ["nir08", "red", "green", "blue"]
    # an index or quality band beside the sensor's (GEE's QA60, SCL; an NDVI) is left out, said
    extra = _described(tmp_path, ["red", "green", "ndvi", "blue"], name="extra.tif")
    with pytest.warns(
        UserWarning,
        match=r"extra.tif: band description 'ndvi' names no band of sensor sentinel-2-l2a \(coastal, blue, green, red,.*\): that band is left out",
    ):
        ds = _ingest("x", extra, labels, sensor="sentinel-2-l2a")
    assert ds.bands == ["red", "green", "blue"]
    with rasterio.open(extra) as src, rasterio.open(ds.path / "image.tif") as got:
        assert got.count == 3 and (got.read(3) == src.read(4)).all()  # blue, the file's 4th
    twice = _described(tmp_path, ["red", "B04", "green", "blue"], name="twice.tif")
    with pytest.raises(ImageryError, match="band descriptions name red more than once"):
        open_scenes([twice], sensor="sentinel-2-l2a")
    plain = _described(tmp_path, ["Band 1", "Band 2", "Band 3", "Band 4"], name="plain.tif")
    with pytest.raises(ImageryError, match=r"has 4 bands but sensor landsat-c2-l2 has 8"):
        open_scenes([plain], sensor="landsat-c2-l2")  # descriptions that name nothing
