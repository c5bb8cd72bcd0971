"""Landsat scenes as USGS delivers them: the folder a scene's .tar unpacks to (one GeoTIFF per
band, quality bands, the MTL file) is one --image, its bands named by its mission's numbers."""

import numpy as np
import pytest
import rasterio
from synth import band_surface, make_labels

from datamodules.imagery import ImageryError, open_scenes
from trainer.cli import main

L9 = "LC09_L2SP_191026_20230612_20230620_02_T1"
L7 = "LE07_L2SP_191026_20020612_20200916_02_T1"
OLI = {"blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5"}
TM = {"blue": "SR_B1", "green": "SR_B2", "red": "SR_B3", "nir08": "SR_B4"}


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    return band_surface(tmp_path_factory.mktemp("landsat"))


def _scene(folder, scene_id, ids, surface, *, mtl=True):
    """The files of a scene as its .tar holds them: bands, QA_PIXEL, the MTL file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, band_id in enumerate(ids.values()):
        with rasterio.open(folder / f"{scene_id}_{band_id}.TIF", "w", **surface["profile"]) as dst:
            dst.write(surface["stack"][i][None])
    with rasterio.open(folder / f"{scene_id}_QA_PIXEL.TIF", "w", **surface["profile"]) as dst:
        dst.write(np.full((1, 96, 96), 21824, "uint16"))  # clear land: not a band
    if mtl:
        (folder / f"{scene_id}_MTL.txt").write_text(f'GROUP = LANDSAT_METADATA_FILE\n  LANDSAT_PRODUCT_ID = "{scene_id}"\nEND\n')  # fmt: skip
    return folder


def _values(scene) -> np.ndarray:
    out = []
    for path, index in scene.band_sources:
        with rasterio.open(path) as src:
            out.append(src.read(index))
    return np.stack(out)


def test_a_scene_folder_is_its_band_files(surface, tmp_path):
    folder = _scene(tmp_path / L9, L9, OLI, surface)
    scene = open_scenes([folder], sensor="landsat-c2-l2")[0]
    assert scene.bands == list(OLI) and str(scene.date) == "2023-06-12"
    np.testing.assert_array_equal(_values(scene), surface["stack"])
    # USGS's .tar has no folder of its own: any folder holding one scene's MTL file, or the file
    loose = _scene(tmp_path / "download", L9, OLI, surface)
    for given in (loose, loose / f"{L9}_MTL.txt"):
        np.testing.assert_array_equal(_values(open_scenes([given], sensor="landsat-c2-l2")[0]),
                                      surface["stack"])  # fmt: skip
    picked = open_scenes([folder], sensor="landsat-c2-l2", bands=["red", "nir08"])[0]
    assert picked.bands == ["red", "nir08"]
    # Landsat 7: the same surface, its own band numbers
    tm = open_scenes([_scene(tmp_path / L7, L7, TM, surface)], sensor="landsat-c2-l2")[0]
    assert tm.bands == list(TM)
    np.testing.assert_array_equal(_values(tm), surface["stack"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("level", r"is a landsat-c2-l2 scene, not landsat-c2-l1: pass --sensor landsat-c2-l2"),
        ("tar", r"is a packed Landsat scene: unpack it \(mkdir LC09_.* && tar xf LC09_.*\.tar -C"),
        (
            "two scenes",
            r"holds 2 Landsat scenes .* give one scene's MTL file with --image \(e\.g\.",
        ),
        ("a band it lacks", r"holds no band file of swir16; its bands: blue, green, red, nir08"),
        ("empty", r"holds no band files of LC09_.*: is the download complete and unpacked\?"),
    ],
)
def test_a_scene_folder_given_wrong_says_how(surface, tmp_path, case, message):
    folder = _scene(tmp_path / L9, L9, OLI, surface)
    sensor, bands, given = "landsat-c2-l2", None, folder
    if case == "level":
        sensor = "landsat-c2-l1"
    elif case == "tar":
        given = tmp_path / f"{L9}.tar"
        given.write_bytes(b"")
    elif case == "two scenes":
        given = _scene(tmp_path / "both", L9, OLI, surface)
        _scene(given, L9.replace("20230612", "20230628"), OLI, surface)
    elif case == "a band it lacks":
        bands = ["swir16"]
    else:
        given = tmp_path / f"{L9.replace('191026', '191027')}"
        given.mkdir()
    with pytest.raises(ImageryError, match=message):
        open_scenes([given], sensor=sensor, bands=bands)
    if case == "two scenes":  # the hint, followed
        scene = open_scenes([given / f"{L9}_MTL.txt"], sensor=sensor)[0]
        assert str(scene.date) == "2023-06-12"


def test_a_dataset_from_a_scene_folder_on_the_command_line(home, surface, tmp_path, capsys):
    folder = _scene(tmp_path / L7, L7, TM, surface)
    labels = make_labels(tmp_path, surface["scene"], surface["cmap"])
    args = ["data", "add", "--name", "l7", "--image", str(folder), "--sensor", "landsat-c2-l2",
            "--labels", str(labels), "--class-column", "class_name", "--block-size", "32"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    with rasterio.open(home / "datasets" / "l7" / "image.tif") as src:
        assert src.descriptions == tuple(TM)
        np.testing.assert_array_equal(src.read(), surface["stack"])
