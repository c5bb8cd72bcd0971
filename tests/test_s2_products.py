"""Sentinel-2 band files as ESA delivers them (a .SAFE folder of JPEG 2000 files): products of
processing baseline 04.00 and later store reflectance x 10000 + 1000. The same surface sensed
by a product before 04.00 and one after must reach a dataset and a model as the same values."""

import shutil
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from synth import BANDS, make_labels, make_scene, tiny_model

from datamodules.data_cli import describe
from datamodules.imagery import ImageryError, open_scenes
from datamodules.ingest import ingest
from datamodules.s2_products import offset_suspect
from datamodules.scene_reader import SceneReader
from trainer.predict import PredictOptions, predict_scene

ASSETS = {"blue": "B02", "green": "B03", "red": "B04", "nir08": "B8A"}  # synth's bands
SENSOR = "sentinel-2-l2a"


def _product(folder, base, sensed, baseline, *, metadata=True, offset=-1000, level="L2A"):
    """A product as ESA's .SAFE folder holds it, its bands written as JPEG 2000 with ``base -
    offset`` (``base``: reflectance x 10000 per band) where ``base`` is not 0 (NODATA). L2A: the
    10 m bands in R10m, B8A at 20 m in R20m; L1C: every band in IMG_DATA at its resolution.
    ``MTD_MSIL2A.xml`` (``MTD_MSIL1C.xml``) with the offsets when ``metadata``. Returns the band
    files in ``BANDS`` order."""
    stamp, tile = f"{sensed}T101021", "T33UUP"
    root = folder / f"S2B_MSI{level}_{stamp}_N{baseline}_R022_{tile}_{sensed}T130000.SAFE"
    granule = root / "GRANULE" / f"{level}_{tile}_A036000_{stamp}" / "IMG_DATA"
    files = []
    for band, arr in zip(BANDS, base, strict=True):
        asset = ASSETS[band]
        res = 20 if asset == "B8A" else 10
        if res == 20:  # the 20 m band: the mean of each 2 x 2 block
            h, w = arr.shape
            arr = arr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(arr.dtype)
        stored = np.where(arr > 0, arr.astype(np.int64) - offset, 0).astype(np.uint16)
        if level == "L2A":
            path = granule / f"R{res}m" / f"{tile}_{stamp}_{asset}_{res}m.jp2"
        else:
            path = granule / f"{tile}_{stamp}_{asset}.jp2"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = dict(driver="JP2OpenJPEG", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype="uint16", crs="EPSG:32633", QUALITY=100, REVERSIBLE="YES",
                       transform=from_origin(500000.0, 4200000.0, res, res))  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(stored[None])
        files.append(path)
    if metadata:
        tag, quant = (
            ("BOA_ADD_OFFSET", "BOA_QUANTIFICATION_VALUE")
            if level == "L2A"
            else ("RADIO_ADD_OFFSET", "QUANTIFICATION_VALUE")
        )
        bands = "".join(f'<{tag} band_id="{i}">{offset}</{tag}>' for i in range(13))
        (root / f"MTD_MSI{level}.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-{level[1:]}_User_Product '
            f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd">'
            f"<n1:General_Info><Product_Info><PROCESSING_BASELINE>{baseline[:2]}.{baseline[2:]}"
            "</PROCESSING_BASELINE></Product_Info><Product_Image_Characteristics>"
            f'<{quant} unit="none">10000</{quant}><Offsets>{bands}</Offsets>'
            "</Product_Image_Characteristics></n1:General_Info>"
            f"</n1:Level-{level[1:]}_User_Product>"
        )
    return files


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    """One surface (synth's scene, a nodata corner) and its band files: in a product before
    04.00 (2021, baseline 03.00) and in one after (2023, baseline 05.09, with metadata)."""
    tmp = tmp_path_factory.mktemp("s2")
    scene, cmap = make_scene(tmp, size=128, seed=7, nodata_corner=16)
    with rasterio.open(scene) as src:
        base = src.read()
    return {
        "tmp": tmp,
        "scene": scene,
        "cmap": cmap,
        "base": base,
        "before": _product(tmp / "2021", base, "20210612", "0300", offset=0, metadata=False),
        "after": _product(tmp / "2023", base, "20230612", "0509"),
    }


def _read(files, sensor=SENSOR):
    scene = open_scenes(files, sensor=sensor)[0]
    with SceneReader(scene) as reader:
        return reader.read(rasterio.windows.Window(0, 0, 128, 128)), scene


def test_a_products_offset_is_taken_off_as_its_metadata_says(surface):
    before, s0 = _read(surface["before"])
    after, s1 = _read(surface["after"])
    assert s0.product_offsets is None and s0.offset_note() is None
    np.testing.assert_array_equal(after, before)  # the same surface, the same values
    assert (after[0, :16, :16] == 0).all()  # NODATA stays nodata
    np.testing.assert_array_equal(before[:3], surface["base"][:3])  # 10 m bands as sensed
    note = s1.offset_note()
    assert note.startswith("values of blue, green, red, nir08: ESA's offset -1000 (MTD_MSIL2A.xml")
    assert "S2B_MSIL2A_20230612T101021_N0509" in note


@pytest.mark.parametrize(
    "where",
    ["baseline in the folder name", "sensing date in the file name", "product's own offsets"],
)
def test_the_offset_without_metadata_comes_from_the_products_name(surface, tmp_path, where):
    base = surface["base"]
    if where == "baseline in the folder name":  # a product whose metadata file went missing
        files = _product(tmp_path, base, "20230612", "0509", metadata=False)
        source = "processing baseline 05.09 in S2B_MSIL2A_20230612"
    elif where == "sensing date in the file name":  # the band files copied out of the product
        (tmp_path / "bands").mkdir()
        files = [shutil.copy(f, tmp_path / "bands" / f.name) for f in surface["after"]]
        source = "sensed 2023-06-12: every product since 2022-01-25"
    else:  # what the metadata file says wins over the baseline: here an offset of -500
        files = _product(tmp_path, base, "20230612", "0509", offset=-500)
        source = "-500 (MTD_MSIL2A.xml"
    got, scene = _read(files)
    np.testing.assert_array_equal(got, _read(surface["before"])[0])
    assert source in scene.offset_note()


def test_band_files_sensed_before_04_outside_their_product_are_read_as_they_are(surface, tmp_path):
    (tmp_path / "bands").mkdir()
    old = _product(tmp_path, surface["base"], "20200612", "0500")  # ESA's reprocessing: offset
    files = [shutil.copy(f, tmp_path / "bands" / f.name) for f in old]
    with pytest.warns(UserWarning, match=r"sensed on 2020-06-12, before processing baseline") as w:
        got, scene = _read(files)
    assert "in their .SAFE folder as downloaded" in str(w[0].message)
    assert scene.product_offsets is None
    np.testing.assert_array_equal(got[:3, 16:, 16:], surface["base"][:3, 16:, 16:] + 1000)
    with warnings.catch_warnings():  # the hint works: in their product folder, they are known
        warnings.simplefilter("error", UserWarning)
        np.testing.assert_array_equal(_read(old)[0], _read(surface["before"])[0])


def test_a_dataset_of_a_product_after_04_holds_the_values_of_one_before(home, surface):
    labels = make_labels(surface["tmp"], surface["scene"], surface["cmap"])
    kw = dict(labels=labels, class_column="class_name", sensor=SENSOR, block_size=32)
    old = ingest(name="old", images=surface["before"], progress=False, **kw)
    new = ingest(name="new", images=surface["after"], progress=False, **kw)
    with rasterio.open(old.path / "image.tif") as a, rasterio.open(new.path / "image.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert new.manifest["stats"] == old.manifest["stats"]
    assert "values" not in old.manifest["images"][0]
    assert "ESA's offset -1000" in new.manifest["images"][0]["values"]
    assert "ESA's offset -1000 (MTD_MSIL2A.xml of S2B_MSIL2A_2023" in describe(new)


def test_a_model_predicts_a_product_after_04_as_the_same_surface_before(surface, tmp_path):
    model = tiny_model(tmp_path)
    options = PredictOptions(precision="fp32", tile_size=64)
    got = {}
    for when in ("before", "after"):
        summary = predict_scene(model, surface[when], tmp_path / when, sensor=SENSOR,
                                progress=False, options=options)  # fmt: skip
        with rasterio.open(tmp_path / when / "classes.tif") as src:
            got[when] = (src.read(1), summary["input"])
    np.testing.assert_array_equal(got["after"][0], got["before"][0])
    assert "values" not in got["before"][1]
    # band files named by --bands, no sensor anywhere: 0 is still the products' NODATA
    scene = open_scenes(surface["after"], bands=list(BANDS))[0]
    assert scene.nodata == 0 and "products' NODATA fill value" in scene.nodata_source
    summary = predict_scene(model, surface["after"], tmp_path / "bands", bands=list(BANDS),
                            progress=False, options=options)  # fmt: skip
    with rasterio.open(tmp_path / "bands" / "classes.tif") as src:
        classes = src.read(1)
    assert (classes[:16, :16] == src.nodata).all() and (classes[16:, 16:] != src.nodata).all()
    np.testing.assert_array_equal(classes, got["after"][0])
    assert "ESA's offset -1000" in summary["input"]["values"][0]
    assert "ESA's offset -1000" in got["after"][1]["values"][0]
    stack = _stack(surface, tmp_path / "merged.tif")
    with pytest.warns(UserWarning, match="the darkest 1% of every band is above 950"):
        summary = predict_scene(model, [stack], tmp_path / "stack", sensor=SENSOR,
                                progress=False, options=options)  # fmt: skip
    assert any("give the product's .SAFE folder" in n for n in summary["input"]["notes"])


def _folder(files):
    return files[0].parents[4]  # R10m → IMG_DATA → the granule → GRANULE → the product


def test_a_product_folder_is_a_scene_of_its_finest_band_files(surface, tmp_path):
    before, after = _folder(surface["before"]), _folder(surface["after"])
    scenes = open_scenes([before, after / "MTD_MSIL2A.xml"], sensor=SENSOR)  # folder or its file
    assert [s.bands for s in scenes] == [list(BANDS)] * 2  # every band of the sensor it holds
    assert [f.name for f in scenes[1].files] == [f.name for f in surface["after"]]
    assert [str(s.date.date()) for s in scenes] == ["2021-06-12", "2023-06-12"]
    reads = []
    for s in scenes:
        with SceneReader(s) as reader:
            reads.append(reader.read(rasterio.windows.Window(0, 0, 128, 128)))
    np.testing.assert_array_equal(reads[1], reads[0])
    assert open_scenes([after], sensor=SENSOR, bands=["nir08", "red"])[0].bands == ["nir08", "red"]
    # B02 at 20 m beside the 10 m file: the finest is taken
    with rasterio.open(surface["before"][0]) as src:
        profile, arr = src.profile, src.read()
    coarse = (
        surface["before"][0].parents[1] / "R20m" / surface["before"][0].name.replace("10m", "20m")
    )
    with rasterio.open(coarse, "w", **(profile | {"width": 64, "height": 64})) as dst:
        dst.write(arr[:, ::2, ::2])
    assert open_scenes([before], sensor=SENSOR)[0].files[0] == surface["before"][0]
    coarse.unlink()


@pytest.mark.parametrize(
    "case, message",
    [
        ("no sensor", r"is a Sentinel-2 L2A product: pass --sensor sentinel-2-l2a"),
        ("wrong level", r"product, not sentinel-2-l1c: pass --sensor sentinel-2-l2a"),
        ("a band it lacks", r"holds no band file of swir16; its bands: blue, green, red, nir08"),
        ("zipped", r"is a zipped Sentinel-2 product: unzip it \(unzip S2B_MSIL2A_.*\.SAFE\.zip\)"),
        ("with a file", r"mixing product folders \(a Sentinel-2 .SAFE, a Landsat scene.s, a SNAP"),
        ("another folder", r"is a folder, not an image file"),
    ],
)
def test_a_product_folder_given_wrong_says_how(surface, tmp_path, case, message):
    folder = _folder(surface["after"])
    kw = {"sensor": SENSOR}
    paths = [folder]
    if case == "no sensor":
        kw = {}
    elif case == "wrong level":
        kw = {"sensor": "sentinel-2-l1c"}
    elif case == "a band it lacks":
        kw["bands"] = ["red", "swir16"]
    elif case == "zipped":
        paths = [
            shutil.make_archive(str(tmp_path / folder.name), "zip", folder.parent, folder.name)
        ]
    elif case == "with a file":
        paths = [folder, surface["scene"]]
    else:
        paths = [folder.parent]
    with pytest.raises(ImageryError, match=message):
        open_scenes(paths, **kw)


def _stack(surface, path, declared=False):
    """The surface as a user's own stack of a product after 04.00: offset and all, its name
    saying nothing (as QGIS or gdal_merge write it); its offset declared when ``declared``."""
    with rasterio.open(surface["scene"]) as src:
        profile, img = src.profile, src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.where(img > 0, img + 1000, 0).astype(img.dtype))
        dst.descriptions = tuple(BANDS)
        if declared:  # the README's hint, as rasterio writes it (gdal_edit.py -scale -offset)
            dst.scales, dst.offsets = [1e-4] * 4, [-0.1] * 4
    return path


def test_dates_that_declare_different_units_are_refused(surface, tmp_path):
    """A stack written from a product after 04.00 with its offset declared, beside one of
    before: one unit for every date, or the second date would be read 1000 too high."""
    stack = _stack(surface, tmp_path / "stack_2023.tif", declared=True)
    with pytest.raises(ImageryError, match=r"declare different scales/offsets .*stack_2023.tif: "
                       r"scale 0.0001, 0.0001, 0.0001, 0.0001, offset -0.1"):  # fmt: skip
        open_scenes([surface["scene"], stack], sensor=SENSOR)


def test_a_stack_that_looks_offset_is_said_and_the_hint_silences_it(home, surface, tmp_path):
    stack = _stack(surface, tmp_path / "merged.tif")
    labels = make_labels(surface["tmp"], surface["scene"], surface["cmap"])
    kw = dict(labels=labels, class_column="class_name", sensor=SENSOR, block_size=32)
    with pytest.warns(UserWarning, match=r"merged.tif: the darkest 1% of every band is above 950"):
        ingest(name="merged", images=[stack], progress=False, **kw)
    for quiet in (surface["scene"], _folder(surface["after"])):  # as sensed; ESA's product
        assert offset_suspect(open_scenes([quiet], sensor=SENSOR)[0], SENSOR) is None
    assert offset_suspect(open_scenes([stack], sensor="naip")[0], "naip") is None
    declared = _stack(surface, tmp_path / "declared.tif", declared=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*declares no nodata")
        ds = ingest(name="declared", images=[declared], progress=False, **kw)
    assert ds.manifest["offsets"] == pytest.approx([-0.1] * 4)  # converted exactly from here


def test_a_level_1c_product_reads_its_radiometric_offset(surface, tmp_path):
    """Level-1C: band files in IMG_DATA itself, the offset in MTD_MSIL1C.xml's RADIO_ADD_OFFSET."""
    files = _product(tmp_path, surface["base"], "20230612", "0509", offset=-500, level="L1C")
    scene = open_scenes([files[0].parents[3]], sensor="sentinel-2-l1c")[0]
    assert [f.name for f in scene.files] == [f.name for f in files]
    assert "-500 (MTD_MSIL1C.xml of S2B_MSIL1C_20230612" in scene.offset_note()
    with SceneReader(scene) as reader:
        got = reader.read(rasterio.windows.Window(0, 0, 128, 128))
    np.testing.assert_array_equal(got, _read(surface["before"])[0])


def test_embed_says_what_it_took_off_a_product(home, surface, tmp_path, capsys):
    """`geotune embed` prints the same input lines as `predict`: ESA's offset, taken off."""
    from trainer.cli import main

    out = tmp_path / "e.parquet"
    args = ["embed", "--backbone", "clay_v1_5", "--size", "tiny", "--weights", "random",
            "--chip-size", "64", "--sensor", SENSOR, "--image", _folder(surface["after"]),
            "--out", out]  # fmt: skip
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    assert "input: sentinel-2-l2a (given)" in printed
    assert "ESA's offset -1000 (MTD_MSIL2A.xml of S2B_MSIL2A_2023" in printed
