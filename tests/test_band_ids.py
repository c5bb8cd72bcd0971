"""A band id means what the mission that wrote the file means by it: Landsat 4-7's SR_B3 is
red (Landsat 8/9's is green), HLS L30's B05 is near infrared (S30's is a red edge). Band files
as USGS and LP DAAC deliver them are named by their product id; files that cannot be read as
the sensor asked for are refused with what to give instead, and each hint works."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from synth import make_labels, make_scene

from datamodules.imagery import ImageryError, open_scenes
from trainer.cli import main

L7 = "LE07_L2SP_191026_20020612_20200916_02_T1"
TM_L2 = {"SR_B1": "blue", "SR_B2": "green", "SR_B3": "red", "SR_B4": "nir08", "SR_B5": "swir16",
         "SR_B7": "swir22"}  # fmt: skip
L30 = "HLS.L30.T33UUP.2023163T100000.v2.0"


def _file(path, value, *, dtype="uint16", size=16, description=None):
    """A band file whose every pixel is ``value`` (the band is known by its value)."""
    profile = dict(driver="GTiff", width=size, height=size, count=1 if np.ndim(value) == 0 else
                   len(value), dtype=dtype, crs="EPSG:32633", nodata=0,
                   transform=from_origin(500000.0, 4200000.0, 30.0, 30.0))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        values = np.atleast_1d(value)
        dst.write(np.broadcast_to(values[:, None, None], (len(values), size, size)).astype(dtype))
        if description:
            dst.descriptions = tuple(description)
    return path


def _bands(scene) -> dict[str, int]:
    """Each band's name → the value its file holds."""
    out = {}
    for name, (path, index) in zip(scene.bands, scene.band_sources, strict=True):
        with rasterio.open(path) as src:
            out[name] = int(src.read(index)[0, 0])
    return out


def test_landsat_4_7_band_files_are_named_by_their_own_numbers(tmp_path):
    files = [_file(tmp_path / f"{L7}_{b}.TIF", 100 + i) for i, b in enumerate(TM_L2)]
    got = _bands(open_scenes(files, sensor="landsat-c2-l2")[0])
    assert got == {name: 100 + i for i, name in enumerate(TM_L2.values())}
    uploads = [_file(tmp_path / f"image{i}-{L7}_{b}.tif", 100 + i) for i, b in enumerate(TM_L2)]
    assert _bands(open_scenes(uploads, sensor="landsat-c2-l2")[0]) == got
    # Landsat 8/9's files keep the table's numbers: SR_B4 is red
    oli = [_file(tmp_path / f"LC09_L2SP_191026_20230612_20230620_02_T1_SR_B{n}.TIF", n)
           for n in (2, 3, 4, 5)]  # fmt: skip
    assert _bands(open_scenes(oli, sensor="landsat-c2-l2")[0]) == {
        "blue": 2, "green": 3, "red": 4, "nir08": 5}  # fmt: skip


def test_hls_l30_files_are_named_as_landsat_numbers_them(tmp_path):
    ids = {"B02": "blue", "B03": "green", "B04": "red", "B05": "nir08", "B06": "swir16",
           "B07": "swir22"}  # fmt: skip
    files = [_file(tmp_path / f"{L30}.{b}.tif", 200 + i) for i, b in enumerate(ids)]
    got = _bands(open_scenes(files, sensor="hls")[0])
    assert got == {name: 200 + i for i, name in enumerate(ids.values())}
    # a thermal band (B10) was read as cirrus: now it is said, with a fix that works
    thermal = _file(tmp_path / f"{L30}.B10.tif", 300)
    with pytest.raises(ImageryError, match=r"B10.tif names no band of sensor hls .* leave the "):
        open_scenes([*files, thermal], sensor="hls")
    # as the server saves uploads: a prefix, dots as underscores
    uploaded = _file(tmp_path / f"image7-{L30.replace('.', '_')}_B10.tif", 300)
    with pytest.raises(ImageryError, match=r"B10.tif names no band of sensor hls"):
        open_scenes([*files, uploaded], sensor="hls")
    s30 = [_file(tmp_path / f"HLS.S30.T33UUP.2023163T100000.v2.0.{b}.tif", i)
           for i, b in enumerate(("B04", "B8A", "B11"), 1)]  # fmt: skip
    assert _bands(open_scenes(s30, sensor="hls")[0]) == {"red": 1, "nir08": 2, "swir16": 3}


def test_landsat_files_that_are_not_the_sensors_units_are_refused_with_the_fix(tmp_path):
    l1 = [_file(tmp_path / f"LE07_L1TP_191026_20020612_20200916_02_T1_B{n}.TIF", n,
                dtype="uint8") for n in (1, 2, 3)]  # fmt: skip
    with pytest.raises(ImageryError, match="8-bit calibrated radiance.*give the scene's Level-2"):
        open_scenes(l1, sensor="landsat-c2-l1")
    mss = [_file(tmp_path / f"LM05_L1TP_191026_19900612_20200916_02_T2_B{n}.TIF", n,
                 dtype="uint8") for n in (1, 2, 3, 4)]  # fmt: skip
    with pytest.raises(ImageryError, match="MSS bands .* with --bands and leave out --sensor"):
        open_scenes(mss, sensor="landsat-c2-l1")
    scene = open_scenes(mss, bands=["green", "red", "nir", "nir09"])[0]  # the hint, followed
    assert _bands(scene) == {"green": 1, "red": 2, "nir": 3, "nir09": 4}


def test_a_stack_with_landsat_4_7_descriptions_says_so(tmp_path):
    """An Earth Engine export of LANDSAT/LE07/C02/T1_L2 names its bands SR_B1...SR_B7 without
    SR_B6: read as Landsat 8/9's, every band would shift by one."""
    values, desc = list(range(1, 7)), list(TM_L2)
    export = _file(tmp_path / "landsat7_2005.tif", values, description=desc)
    with pytest.raises(ImageryError, match="look like Landsat 4-7's .* product id .* --bands"):
        open_scenes([export], sensor="landsat-c2-l2")
    named = _file(tmp_path / f"{L7}_stack.tif", values, description=desc)  # the first fix
    assert open_scenes([named], sensor="landsat-c2-l2")[0].bands == list(TM_L2.values())
    scene = open_scenes([export], sensor="landsat-c2-l2", bands=list(TM_L2.values()))[0]
    assert scene.bands == list(TM_L2.values())  # the second


def test_a_landsat_7_dataset_holds_its_bands_in_the_tables_order(home, tmp_path, capsys):
    """`geotune data add` on the band files of a Landsat 7 scene as USGS delivers them."""
    scene, cmap = make_scene(tmp_path, size=96, seed=3)
    with rasterio.open(scene) as src:
        stack, profile = src.read(), src.profile
    files = []
    for i, band in enumerate(("SR_B1", "SR_B2", "SR_B3", "SR_B4")):  # blue, green, red, nir08
        path = tmp_path / f"{L7}_{band}.TIF"
        with rasterio.open(path, "w", **(profile | {"count": 1})) as dst:
            dst.write(stack[i][None])
        files += ["--image", str(path)]
    labels = make_labels(tmp_path, scene, cmap)
    args = ["data", "add", "--name", "l7", *files, "--sensor", "landsat-c2-l2",
            "--labels", str(labels), "--class-column", "class_name", "--block-size", "32"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    image = home / "datasets" / "l7" / "image.tif"
    with rasterio.open(image) as src:
        assert src.descriptions == ("blue", "green", "red", "nir08")
        np.testing.assert_array_equal(src.read(), stack)


def test_band_ids_without_their_zeros_name_bands_and_landsat_ids_are_not_sentinel_2s(tmp_path):
    """Earth Engine and SNAP write Sentinel-2's B02 as B2; Landsat's SR_B5 is no B05."""
    files = [_file(tmp_path / f"export_{b}.tif", i) for i, b in enumerate(("B2", "b4", "B8A"), 1)]
    assert _bands(open_scenes(files, sensor="sentinel-2-l2a")[0]) == {
        "blue": 1, "red": 2, "nir08": 3}  # fmt: skip
    landsat = _file(tmp_path / "SR_B5.TIF", 5)
    with pytest.raises(ImageryError, match="SR_B5.TIF names no band of sensor sentinel-2-l2a"):
        open_scenes([*files, landsat], sensor="sentinel-2-l2a")


def test_snaps_band_files_are_named_by_their_file_names(tmp_path):
    """SNAP's BEAM-DIMAP output: one ENVI file per band (scene.data/B2.img), each described
    'Band 1' by GDAL; the description names no band, so the file name does."""
    folder = tmp_path / "subset.data"
    folder.mkdir()
    files = []
    for i, band in enumerate(("B2", "B3", "B4", "B8"), 1):
        with rasterio.open(folder / f"{band}.img", "w", driver="ENVI", width=16, height=16,
                           count=1, dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(500000.0, 4200000.0, 10.0, 10.0)) as dst:  # fmt: skip
            dst.write(np.full((1, 16, 16), i, "uint16"))
        files.append(folder / f"{band}.img")
    with rasterio.open(files[0]) as src:
        assert src.descriptions == ("Band 1",)
    scene = open_scenes(files, sensor="sentinel-2-l2a")[0]
    assert _bands(scene) == {"blue": 1, "green": 2, "red": 3, "nir": 4}


def test_files_named_by_band_name_are_those_bands_and_a_shell_glob_gives_them(
    home, tmp_path, capsys
):
    """Band files named by the band itself (red.tif, as a STAC asset key or a script names
    them; or its last word: T33UUP_2023_nir08.tif) are those bands; a name that only starts
    with one (red_edge.tif) is none. ``--image bands/*.tif`` takes them all, as a shell
    expands it."""
    folder = tmp_path / "bands"
    folder.mkdir()
    names = {"blue.tif": 1, "Green.TIF": 2, "T33UUP_2023_red.tif": 3, "nir08.tif": 4}
    files = [_file(folder / n, v) for n, v in names.items()]
    assert _bands(open_scenes(files, sensor="sentinel-2-l2a")[0]) == {
        "blue": 1, "green": 2, "red": 3, "nir08": 4}  # fmt: skip
    edge = _file(tmp_path / "red_edge.tif", 9)
    with pytest.raises(ImageryError, match="red_edge.tif names no band of sensor sentinel-2-l2a"):
        open_scenes([*files, edge], sensor="sentinel-2-l2a")
    scene, cmap = make_scene(tmp_path, size=96, seed=3)
    labels = make_labels(tmp_path, scene, cmap)
    with rasterio.open(scene) as src:
        stack, profile = src.read(), src.profile
    for i, band in enumerate(("blue", "green", "red", "nir08")):
        with rasterio.open(folder / f"{band}.tif", "w", **(profile | {"count": 1})) as dst:
            dst.write(stack[i][None])
    (folder / "Green.TIF").unlink()
    (folder / "T33UUP_2023_red.tif").unlink()
    globbed = sorted(str(p) for p in folder.glob("*.tif"))  # blue, green, nir08, red
    args = ["data", "add", "--name", "glob", "--image", *globbed, "--sensor", "sentinel-2-l2a",
            "--labels", str(labels), "--class-column", "class_name", "--block-size", "32"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    with rasterio.open(home / "datasets" / "glob" / "image.tif") as src:
        got = dict(zip(src.descriptions, src.read(), strict=True))
    assert sorted(got) == ["blue", "green", "nir08", "red"]
    for i, band in enumerate(("blue", "green", "red", "nir08")):
        np.testing.assert_array_equal(got[band], stack[i])


def test_an_rgb_orthomosaic_without_descriptions_is_told_how_to_name_its_bands(
    home, tmp_path, capsys
):
    """An RGBA orthomosaic (OpenDroneMap, a QGIS export) has no band descriptions, and its
    colour interpretation (red, green, blue) is GDAL's default for any 3-band 8-bit file,
    colour-infrared photos too: the message gives both fixes, and the first works."""
    scene, cmap = make_scene(tmp_path, size=96, seed=3)
    with rasterio.open(scene) as src:
        rgb, profile = src.read([3, 2, 1]), src.profile
    ortho = tmp_path / "ortho.tif"
    profile |= {"count": 4, "dtype": "uint8", "nodata": None, "photometric": "RGB", "alpha": "YES"}
    with rasterio.open(ortho, "w", **profile) as dst:
        dst.write(
            np.concatenate([np.clip(rgb // 12, 0, 255), np.full((1, 96, 96), 255)]).astype("uint8")
        )
    with pytest.raises(ImageryError) as e:
        open_scenes([ortho])
    assert str(e.value) == (
        "cannot tell the bands of ortho.tif (3 bands besides its alpha band, no band "
        "descriptions; its colour interpretation says red, green, blue, which GDAL gives every "
        "3-band 8-bit file). An RGB photo: pass --sensor rgb (8-bit) or --bands red,green,blue; "
        "a colour-infrared one: --bands nir,red,green"
    )
    labels = make_labels(tmp_path, scene, cmap)
    args = ["data", "add", "--name", "ortho", "--image", str(ortho), "--sensor", "rgb",
            "--labels", str(labels), "--class-column", "class_name", "--block-size", "32"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    with rasterio.open(home / "datasets" / "ortho" / "image.tif") as src:
        assert src.descriptions == ("red", "green", "blue")
