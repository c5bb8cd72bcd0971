"""SNAP's products (BEAM-DIMAP: scene.dim + scene.data/*.img): the .dim says what the stored
values mean (scale, offset, no-data per band), and a model sees the same surface as from the
original scene."""

import numpy as np
import pytest
import rasterio
from synth import BANDS, make_scene, tiny_model

from datamodules.imagery import ImageryError, open_scenes
from trainer.predict import PredictOptions, predict_scene

SENSOR = "sentinel-2-l2a"
SNAP_NAMES = {"blue": "B2", "green": "B3", "red": "B4", "nir08": "B8A"}  # synth's bands


def _product(folder, base, transform, crs, *, href=None, scl=None):
    """A resampled Sentinel-2 L2A product (baseline 05.10) as SNAP saves it: each band stored
    as reflectance x 10000 + 1000 in an ENVI file, the .dim saying 0.0001 and -0.1; besides, a
    band SNAP adds (view_zenith_mean), the scene classification ``scl`` when given, and a
    virtual band without a file."""
    data = folder / "subset.data"
    data.mkdir(parents=True)
    bands = [(SNAP_NAMES[b], np.where(base[i] > 0, base[i] + 1000, 0).astype("uint16"))
             for i, b in enumerate(BANDS)]  # fmt: skip
    bands.append(("view_zenith_mean", np.full(base.shape[1:], 4.5, "float32")))
    if scl is not None:
        bands.append(("quality_scene_classification", scl))
    infos, files = [], []
    for index, (name, arr) in enumerate(bands):
        profile = dict(driver="ENVI", width=arr.shape[1], height=arr.shape[0], count=1,
                       dtype=arr.dtype.name, crs=crs, transform=transform)  # fmt: skip
        with rasterio.open(data / f"{name}.img", "w", **profile) as dst:
            dst.write(arr[None])
        scaled = "<SCALING_FACTOR>1.0E-4</SCALING_FACTOR><SCALING_OFFSET>-0.1</SCALING_OFFSET>"
        nodata = "<NO_DATA_VALUE_USED>true</NO_DATA_VALUE_USED><NO_DATA_VALUE>0.0</NO_DATA_VALUE>"
        if arr.dtype != np.uint16:
            scaled, nodata = "<SCALING_FACTOR>1.0</SCALING_FACTOR>", ""
        infos.append(f"<Spectral_Band_Info><BAND_INDEX>{index}</BAND_INDEX><BAND_NAME>{name}"
                     f"</BAND_NAME>{scaled}{nodata}</Spectral_Band_Info>")  # fmt: skip
        path = href if (href and index == 0) else f"subset.data/{name}.hdr"
        files.append(f'<Data_File><DATA_FILE_PATH href="{path}" /><BAND_INDEX>{index}'
                     "</BAND_INDEX></Data_File>")  # fmt: skip
    infos.append("<Spectral_Band_Info><BAND_INDEX>9</BAND_INDEX><BAND_NAME>ndvi</BAND_NAME>"
                 "<EXPRESSION>(B8A - B4) / (B8A + B4)</EXPRESSION></Spectral_Band_Info>")  # fmt: skip
    dim = folder / "subset.dim"
    dim.write_text(
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<Dimap_Document name="subset.dim">'
        "<Metadata_Id><METADATA_FORMAT>DIMAP</METADATA_FORMAT></Metadata_Id>"
        f"<Data_Access><DATA_FILE_FORMAT>ENVI</DATA_FILE_FORMAT>{''.join(files)}</Data_Access>"
        f"<Image_Interpretation>{''.join(infos)}</Image_Interpretation></Dimap_Document>"
    )
    return dim


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap")
    scene, _ = make_scene(tmp, size=96, seed=6, nodata_corner=16)
    with rasterio.open(scene) as src:
        base, transform, crs = src.read(), src.transform, src.crs
    return {"tmp": tmp, "scene": scene, "dim": _product(tmp / "p", base, transform, crs),
            "base": base, "transform": transform, "crs": crs}  # fmt: skip


def test_a_snap_product_is_its_bands_with_the_units_its_document_declares(surface):
    for given in (surface["dim"], surface["dim"].with_suffix(".data")):
        scene = open_scenes([given], sensor=SENSOR)[0]
        assert scene.bands == list(BANDS)  # view_zenith_mean and the virtual ndvi left out
        assert scene.scales == [1e-4] * 4 and scene.offsets == [-0.1] * 4
        assert scene.nodata == 0 and scene.nodata_source == "subset.dim's NO_DATA_VALUE"
    picked = open_scenes([surface["dim"]], sensor=SENSOR, bands=["red", "nir08"])[0]
    assert picked.bands == ["red", "nir08"] and [f.name for f in picked.files] == [
        "B4.img",
        "B8A.img",
    ]


def test_a_model_sees_the_same_surface_from_the_snap_product(surface, tmp_path):
    model = tiny_model(tmp_path, sensor=SENSOR)  # a model that knows its input units
    options = PredictOptions(precision="fp32", tile_size=64)
    got = []
    for name, image in (("scene", surface["scene"]), ("snap", surface["dim"])):
        predict_scene(model, [image], tmp_path / name, sensor=SENSOR, progress=False,
                      options=options)  # fmt: skip
        with rasterio.open(tmp_path / name / "classes.tif") as src:
            got.append(src.read(1))
            assert src.transform == surface["transform"]
    np.testing.assert_array_equal(got[1], got[0])
    assert (got[1][:16, :16] == 255).all()  # the .dim's no-data: no class


def test_a_snap_product_read_wrong_says_how(surface, tmp_path):
    outside = _product(tmp_path / "o", surface["base"], surface["transform"], surface["crs"],
                       href="../../secret.hdr")  # fmt: skip
    with pytest.raises(ImageryError, match=r"names a band file outside subset.data .*from its "):
        open_scenes([outside], sensor=SENSOR)
    missing = _product(tmp_path / "m", surface["base"], surface["transform"], surface["crs"])
    (missing.parent / "subset.data" / "B3.img").unlink()
    with pytest.raises(ImageryError, match=r"band B3 \(B3.img\) is missing .* copy the whole"):
        open_scenes([missing], sensor=SENSOR)
    with pytest.raises(ImageryError, match=r"is a SNAP product; name its sensor .* B2, B3"):
        open_scenes([surface["dim"]])
    with pytest.raises(ImageryError, match="holds no band file of swir16; its bands: blue"):
        open_scenes([surface["dim"]], sensor=SENSOR, bands=["swir16"])
