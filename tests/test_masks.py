"""Nodata marked by a mask instead of a value: an orthomosaic's alpha band (OpenDroneMap writes
RGBA) or GDAL's internal per-dataset mask (a JPEG-compressed GeoTIFF's). The masked pixels are
nodata in datasets and predictions, whatever values lie under the mask; the alpha band is the
mask, never an image band."""

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from synth import BANDS, make_labels, make_scene, tiny_model

from datamodules.imagery import ImageryError
from datamodules.ingest import ingest
from trainer.predict import PredictOptions, predict_scene

STRIP = 24  # masked columns on the left, holding values that are not a nodata value


def _pixels(scene):
    with rasterio.open(scene) as src:
        return src.read(), src.profile


def _masked_copy(scene, path, how: str, nodata=None):
    """The scene's bands with the left strip masked (``alpha``: a fifth band, the alpha band;
    ``internal``: GDAL's per-dataset mask), the strip's values left as they were."""
    img, profile = _pixels(scene)
    keep = np.full(img.shape[1:], 255, np.uint8)
    keep[:, :STRIP] = 0
    profile = profile | {"nodata": nodata}
    if how == "alpha":
        alpha = keep.astype(img.dtype)
        with rasterio.open(path, "w", **(profile | {"count": 5})) as dst:
            dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * 3 + [ColorInterp.alpha]
            dst.write(np.concatenate([img, alpha[None]]))
            dst.descriptions = (*BANDS, "alpha")
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(img)
                dst.write_mask(keep)
                dst.descriptions = tuple(BANDS)
    assert (img[:, :, :STRIP] != 0).all()  # what lies under the mask is not 0
    return path


def test_an_alpha_band_is_the_datasets_nodata_and_no_image_band(home, tmp_path):
    scene, cmap = make_scene(tmp_path, size=128, seed=3)
    labels = make_labels(tmp_path, scene, cmap)
    rgba = _masked_copy(scene, tmp_path / "ortho.tif", "alpha")
    with rasterio.open(rgba) as src:
        assert src.colorinterp[-1] == ColorInterp.alpha
    ds = ingest(name="o", images=[rgba], labels=labels, class_column="class_name",
                block_size=32, progress=False)  # fmt: skip
    m = ds.manifest
    assert m["bands"] == list(BANDS)
    with rasterio.open(ds.path / "image.tif") as src:
        img, nodata = src.read(), src.nodata
    assert nodata == 0 and img.shape[0] == len(BANDS)
    assert (img[:, :, :STRIP] == 0).all()
    np.testing.assert_array_equal(img[:, :, STRIP:], _pixels(scene)[0][:, :, STRIP:])
    with rasterio.open(ds.file("mask")) as src:
        mask = src.read(1)
    assert (mask[:, :STRIP] == 255).all() and (mask[:, STRIP:] != 255).any()
    assert m["nodata"] == 0 and m["nodata_source"] == "the file's alpha band"


def test_an_alpha_band_beside_a_nodata_value_masks_with_that_value(home, tmp_path):
    scene, cmap = make_scene(tmp_path, size=64, seed=4)
    rgba = _masked_copy(scene, tmp_path / "ortho.tif", "alpha", nodata=65535)
    ds = ingest(name="v", images=[rgba], labels=make_labels(tmp_path, scene, cmap),
                class_column="class_name", block_size=32, progress=False)  # fmt: skip
    with rasterio.open(ds.path / "image.tif") as src:
        img = src.read()
        assert src.nodata == 65535 and src.count == len(BANDS)
    assert (img[:, :, :STRIP] == 65535).all() and (img[:, :, STRIP:] != 65535).all()
    assert ds.manifest["nodata_source"] == "the file's, and its alpha band"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_model(tmp_path_factory.mktemp("masks"))
    return model.tmp, model


@pytest.mark.parametrize("how", ["alpha", "internal"])
def test_masked_pixels_are_nodata_in_predictions_and_the_rest_as_with_a_nodata_value(tiny, how):
    tmp, model = tiny
    (tmp / how).mkdir()
    scene, _ = make_scene(tmp / how, size=128, seed=5)
    masked = _masked_copy(scene, tmp / how / "masked.tif", how)
    img, profile = _pixels(scene)
    img[:, :, :STRIP] = 0  # the same pixels with a nodata value instead of a mask
    valued = tmp / how / "valued.tif"
    with rasterio.open(valued, "w", **(profile | {"nodata": 0})) as dst:
        dst.write(img)
        dst.descriptions = tuple(BANDS)
    options = PredictOptions(precision="fp32", tile_size=64)
    got = {}
    for name, path in (("masked", masked), ("valued", valued)):
        summary = predict_scene(model, [path], tmp / how / name, progress=False, options=options)
        with rasterio.open(tmp / how / name / "classes.tif") as src:
            got[name] = (src.read(1), src.nodata, summary)
    classes, nodata, summary = got["masked"]
    assert (classes[:, :STRIP] == nodata).all() and (classes[:, STRIP:] != nodata).all()
    np.testing.assert_array_equal(classes, got["valued"][0])
    kind = "alpha band" if how == "alpha" else "internal mask"
    assert summary["input"]["nodata_source"] == f"the file's {kind}"


def test_band_files_with_a_mask_are_refused_with_a_fix(home, tmp_path):
    scene, cmap = make_scene(tmp_path, size=64)
    img, profile = _pixels(scene)
    files = []
    for i, band in enumerate(BANDS):
        path = tmp_path / f"T_{band}.tif"
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            with rasterio.open(path, "w", **(profile | {"count": 1, "nodata": None})) as dst:
                dst.write(img[i], 1)
                dst.write_mask(np.full(img.shape[1:], 255, np.uint8))
                dst.descriptions = (band,)
        files.append(path)
    with pytest.raises(ImageryError, match=r"T_blue.tif marks its nodata with an internal mask.*"
                       r"Stack the bands into one file"):  # fmt: skip
        ingest(name="b", images=files, labels=make_labels(tmp_path, scene, cmap),
               class_column="class_name", progress=False)  # fmt: skip


def test_the_bands_besides_an_alpha_band_are_counted_in_messages(home, tmp_path):
    scene, cmap = make_scene(tmp_path, size=64)
    rgba = _masked_copy(scene, tmp_path / "ortho.tif", "alpha")
    with pytest.raises(ImageryError, match=r"ortho.tif has 4 bands besides its alpha band but "
                       r"--bands names 5"):  # fmt: skip
        ingest(name="x", images=[rgba], labels=make_labels(tmp_path, scene, cmap),
               class_column="class_name", bands=[*BANDS, "alpha"], progress=False)  # fmt: skip


def test_a_near_infrared_band_gdal_marked_alpha_stays_an_image_band(home, tmp_path):
    """GDAL marks the 4th band of a 4-band 8-bit GeoTIFF alpha by default: R, G, B, NIR written
    so carry their NIR as "alpha". It holds image values, not a mask: an image band, said."""
    scene, cmap = make_scene(tmp_path, size=64, seed=6)
    img, profile = _pixels(scene)
    rgbn = np.clip(img[[2, 1, 0, 3]] / 16, 0, 255).astype(np.uint8)
    path = tmp_path / "rgbn.tif"
    with rasterio.open(path, "w", **(profile | {"dtype": "uint8", "nodata": None})) as dst:
        dst.write(rgbn)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # as GDAL wrote it
    with pytest.warns(UserWarning, match=r"band 4 of rgbn.tif is marked alpha but holds image "
                      r"values, not a mask: read as an image band"):  # fmt: skip
        ds = ingest(name="n", images=[path], labels=make_labels(tmp_path, scene, cmap),
                    class_column="class_name", bands=["red", "green", "blue", "nir08"],
                    block_size=32, progress=False)  # fmt: skip
    with rasterio.open(ds.path / "image.tif") as src:
        np.testing.assert_array_equal(src.read(), rgbn)
    assert ds.manifest["nodata_source"] == "none declared"
