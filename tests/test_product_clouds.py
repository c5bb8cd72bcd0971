"""--mask-clouds: a product's own quality band (a Landsat scene's QA_PIXEL, a Sentinel-2 L2A
product's SCL, SNAP's quality_scene_classification) makes its clouds nodata in every band: no
label on them is trained on, and prediction gives them no class. Without it a note says the
band was not read; where there is no such band the option is refused, saying what to give."""

import json

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box
from synth import band_surface, make_labels, make_scene
from test_landsat_products import L9, OLI, _scene
from test_s2_products import _product as _safe
from test_snap_products import _product as _snap

from datamodules.imagery import ImageryError, open_scenes
from datamodules.product_quality import cloud_note
from datamodules.scene_reader import SceneReader
from trainer.cli import main
from trainer.config import compose
from trainer.train import train

CLOUD, SHADOW = (10, 30, 10, 40), (50, 60, 50, 70)  # rows, cols of the QA_PIXEL bits 3 and 4


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    return band_surface(tmp_path_factory.mktemp("clouds"))


def _cloudy(folder, surface):
    """A Landsat 9 scene whose QA_PIXEL marks a cloud and a cloud shadow on clear land."""
    folder = _scene(folder, L9, OLI, surface)
    with rasterio.open(folder / f"{L9}_QA_PIXEL.TIF", "r+") as dst:
        qa = dst.read(1)
        for (r0, r1, c0, c1), bit in ((CLOUD, 3), (SHADOW, 4)):
            qa[r0:r1, c0:c1] |= 1 << bit
        dst.write(qa[None])
    return folder


def _clouds() -> np.ndarray:
    out = np.zeros((96, 96), bool)
    for r0, r1, c0, c1 in (CLOUD, SHADOW):
        out[r0:r1, c0:c1] = True
    return out


def _read(scene) -> np.ndarray:
    with SceneReader(scene) as reader:
        return reader.read(Window(0, 0, scene.grid.width, scene.grid.height))


def test_a_landsat_scene_s_clouds_are_nodata_with_mask_clouds(surface, tmp_path):
    folder = _cloudy(tmp_path / L9, surface)
    masked = open_scenes([folder], sensor="landsat-c2-l2", mask_clouds=True)[0]
    data, clouds = _read(masked), _clouds()
    assert (data[:, clouds] == 0).all()  # every band: the scene's nodata
    np.testing.assert_array_equal(data[:, ~clouds], surface["stack"][:, ~clouds])
    assert masked.nodata == 0
    note = cloud_note(masked)
    assert f"{clouds.mean():.1%} of the pixels in the swath are nodata" in note
    assert f"{L9}_QA_PIXEL.TIF marks fill, dilated cloud, cirrus, cloud or cloud shadow" in note
    # without the option the scene is read as stored, and the note says what was not read
    plain = open_scenes([folder], sensor="landsat-c2-l2")[0]
    np.testing.assert_array_equal(_read(plain), surface["stack"])
    assert cloud_note(plain) == (
        f"{L9}_QA_PIXEL.TIF not read: clouds and their shadows stay in the image; "
        "with --mask-clouds they are nodata"
    )
    # QA_PIXEL's fill bit is outside the swath: not counted as cloud
    with rasterio.open(folder / f"{L9}_QA_PIXEL.TIF", "r+") as dst:
        qa = dst.read(1)
        qa[:, 80:] = 1
        dst.write(qa[None])
    again = open_scenes([folder], sensor="landsat-c2-l2", mask_clouds=True)[0]
    assert f"{clouds[:, :80].mean():.1%} of the pixels in the swath" in cloud_note(again)


def test_data_add_train_and_predict_with_mask_clouds(home, surface, tmp_path, capsys):
    folder = _cloudy(tmp_path / L9, surface)
    labels = make_labels(tmp_path, surface["scene"], surface["cmap"])
    gdf = gpd.read_file(labels)  # and one polygon drawn on the cloud
    on_cloud = gpd.GeoSeries([box(500150, 4199750, 500350, 4199850)], crs="EPSG:32633")
    gdf.loc[len(gdf)] = [gdf.class_name.iloc[0], on_cloud.to_crs(gdf.crs).iloc[0]]
    gdf.to_file(labels)
    args = ["data", "add", "--name", "l9", "--image", str(folder), "--sensor", "landsat-c2-l2",
            "--labels", str(labels), "--class-column", "class_name", "--block-size", "32",
            "--mask-clouds"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "clouds masked (--mask-clouds)" in err
    assert (
        "1 label polygon(s) lie wholly on the imagery's nodata (which includes the clouds " in err
    )
    ds = home / "datasets" / "l9"
    clouds = _clouds()
    with rasterio.open(ds / "image.tif") as src:
        assert (src.read()[:, clouds] == 0).all() and src.nodata == 0
    with rasterio.open(ds / "mask.tif") as src:
        mask = src.read(1)
    assert (mask[clouds] == 255).all() and (mask[~clouds] != 255).any()  # no label on a cloud
    manifest = json.loads((ds / "dataset.json").read_text())
    assert manifest["images"][0]["clouds"].startswith("clouds masked")

    train(compose("train", ["data.dataset=l9", "backbone.size=tiny", "backbone.weights=random",
                            "data.patch_size=32", "data.num_workers=0", "data.chips_per_epoch=8",
                            "trainer.max_epochs=1", "register.name=l9",
                            "register.alias=champion"]))  # fmt: skip
    out = {}
    for name, extra in (("masked", ["--mask-clouds"]), ("plain", [])):
        out[name] = tmp_path / name
        assert main(["predict", "--model", "l9@champion", "--image", str(folder),
                     "--out", str(out[name]), *extra]) == 0  # fmt: skip
        printed = capsys.readouterr().out
        with rasterio.open(out[name] / "classes.tif") as src:
            classes = src.read(1)
        summary = json.loads((out[name] / "summary.json").read_text())
        if name == "masked":
            assert (classes[clouds] == 255).all() and (classes[~clouds] != 255).all()
            assert "clouds masked (--mask-clouds)" in printed
            assert summary["input"]["clouds"][0].startswith("clouds masked")
        else:  # the clouds get classes, and the output says the quality band was not read
            assert (classes != 255).all()
            assert "QA_PIXEL.TIF not read" in printed
            assert "QA_PIXEL.TIF not read" in summary["input"]["clouds"][0]


def test_a_sentinel_2_l2a_product_s_clouds_from_its_scl(tmp_path):
    scene, _ = make_scene(tmp_path, size=128, seed=7, nodata_corner=16)
    with rasterio.open(scene) as src:
        base = src.read()
    b02 = _safe(tmp_path, base, "20230612", "0509")[0]
    root = b02.parents[4]  # the .SAFE folder
    scl = np.full((64, 64), 4, "uint8")  # vegetation, on the 20 m grid
    scl[:8, :8] = 0  # no data: the 16 px nodata corner
    scl[20:30, 30:40] = 9  # cloud, high probability
    scl[40:44, 10:20] = 3  # cloud shadow
    scl[50:60, 50:60] = 7  # unclassified: kept
    path = b02.parents[1] / "R20m" / b02.name.replace("B02_10m", "SCL_20m")
    with rasterio.open(b02.parents[1] / "R20m" / b02.name.replace("B02_10m", "B8A_20m")) as ref:
        profile = ref.profile | {"dtype": "uint8", "QUALITY": 100, "REVERSIBLE": "YES"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scl[None])
    masked = open_scenes([root], sensor="sentinel-2-l2a", mask_clouds=True)[0]
    plain = open_scenes([root], sensor="sentinel-2-l2a")[0]
    clouds = np.kron(np.isin(scl, [0, 3, 9]), np.ones((2, 2), bool))  # onto the 10 m grid
    got, want = _read(masked), _read(plain)
    assert (got[:, clouds] == 0).all()
    np.testing.assert_array_equal(got[:, ~clouds], want[:, ~clouds])
    share = (np.isin(scl, [3, 9]).sum()) / (scl != 0).sum()
    assert f"{share:.1%} of the pixels in the swath" in cloud_note(masked)
    assert f"{path.name} marks no data, saturated or defective, cloud shadow" in cloud_note(masked)
    assert f"{path.name} not read" in cloud_note(plain)


def test_a_sentinel_2_l1c_product_s_clouds_from_its_msk_classi(tmp_path):
    scene, _ = make_scene(tmp_path, size=96, seed=5)
    with rasterio.open(scene) as src:
        base = src.read()
    b02 = _safe(tmp_path, base, "20230612", "0509", level="L1C")[0]
    classi = np.zeros((3, 16, 16), "uint8")  # opaque, cirrus, snow and ice at 60 m
    classi[0, 2:5, 2:6] = 1
    classi[1, 10:12, 3:5] = 1
    classi[2, 12:16, 12:16] = 1  # snow: kept
    (b02.parents[1] / "QI_DATA").mkdir()
    profile = dict(driver="JP2OpenJPEG", width=16, height=16, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000.0, 4200000.0, 60, 60),
                   QUALITY=100, REVERSIBLE="YES")  # fmt: skip
    with rasterio.open(b02.parents[1] / "QI_DATA" / "MSK_CLASSI_B00.jp2", "w", **profile) as dst:
        dst.write(classi)
    masked = open_scenes([b02.parents[3]], sensor="sentinel-2-l1c", mask_clouds=True)[0]
    clouds = np.kron(classi[0] | classi[1], np.ones((6, 6), "uint8")).astype(bool)
    got, want = _read(masked), _read(open_scenes([b02.parents[3]], sensor="sentinel-2-l1c")[0])
    assert (got[:, clouds] == 0).all()
    np.testing.assert_array_equal(got[:, ~clouds], want[:, ~clouds])
    assert cloud_note(masked) == (
        f"clouds masked (--mask-clouds): {clouds.mean():.1%} of the pixels of the scene are "
        "nodata, where MSK_CLASSI_B00.jp2 marks opaque clouds or cirrus (bands 1, 2)"
    )


def test_a_snap_product_s_clouds_from_its_scene_classification(tmp_path):
    scene, _ = make_scene(tmp_path, size=96, seed=6)
    with rasterio.open(scene) as src:
        base, transform, crs = src.read(), src.transform, src.crs
    scl = np.full(base.shape[1:], 5, "uint8")
    scl[30:50, 20:60] = 8  # cloud, medium probability
    dim = _snap(tmp_path / "p", base, transform, crs, scl=scl)
    masked = open_scenes([dim], sensor="sentinel-2-l2a", mask_clouds=True)[0]
    assert masked.bands == open_scenes([dim], sensor="sentinel-2-l2a")[0].bands  # not a band
    assert (_read(masked)[:, scl == 8] == 0).all()
    assert "quality_scene_classification.img marks" in cloud_note(masked)


def test_mask_clouds_without_a_quality_band_says_what_to_give(home, surface, tmp_path, capsys):
    labels = make_labels(tmp_path, surface["scene"], surface["cmap"])
    base = ["data", "add", "--name", "x", "--labels", str(labels), "--class-column", "class_name",
            "--block-size", "32", "--sensor", "landsat-c2-l2"]  # fmt: skip
    # a GeoTIFF: no quality band
    assert main([*base, "--image", str(surface["scene"]), "--mask-clouds"]) == 2
    err = capsys.readouterr().err
    assert "With --mask-clouds, geotune reads a quality band: a product's" in err
    assert "scene.tif comes without one: add the scene's quality file" in err
    assert "Traceback" not in err
    # a scene folder without its QA_PIXEL file
    folder = _scene(tmp_path / L9, L9, OLI, surface)
    (folder / f"{L9}_QA_PIXEL.TIF").unlink()
    with pytest.raises(ImageryError, match=r"holds no LC09_.*_QA_PIXEL.TIF .* unpack the whole"):
        open_scenes([folder], sensor="landsat-c2-l2", mask_clouds=True)
    assert cloud_note(open_scenes([folder], sensor="landsat-c2-l2")[0]) is None
    # a Sentinel-2 L1C product of a baseline before 04.00: its cloud mask is GML
    b02 = _safe(tmp_path / "l1c", surface["stack"], "20210612", "0300", level="L1C")[0]
    with pytest.raises(ImageryError, match=r"holds no cloud mask files \(GRANULE/\*/QI_DATA/MSK"):
        open_scenes([b02.parents[3]], sensor="sentinel-2-l1c", mask_clouds=True)
    (b02.parents[1] / "QI_DATA").mkdir()
    (b02.parents[1] / "QI_DATA" / "MSK_CLOUDS_B00.gml").write_text("<eop:Mask/>")
    with pytest.raises(ImageryError, match=r"keeps its cloud mask as GML .* its Level-2A product"):
        open_scenes([b02.parents[3]], sensor="sentinel-2-l1c", mask_clouds=True)
    # a SNAP product without its scene classification band
    with rasterio.open(surface["scene"]) as src:
        dim = _snap(tmp_path / "snap", src.read(), src.transform, src.crs)
    with pytest.raises(ImageryError, match=r"has no band quality_scene_classification .* keep"):
        open_scenes([dim], sensor="sentinel-2-l2a", mask_clouds=True)
    # the hint, followed: without --mask-clouds the GeoTIFF makes a dataset
    assert main([*base, "--image", str(surface["scene"])]) == 0, capsys.readouterr().err


def _band_files(folder, surface, names: dict, quality: str, values: np.ndarray):
    """One GeoTIFF per band (``names``: band → file name) and a quality band file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, name in enumerate(names.values()):
        with rasterio.open(folder / name, "w", **surface["profile"]) as dst:
            dst.write(surface["stack"][i][None])
        files.append(folder / name)
    with rasterio.open(folder / quality, "w", **surface["profile"] | {"nodata": None}) as dst:
        dst.write(values.astype("uint16")[None])
    return files, folder / quality


def test_band_files_and_their_quality_file(surface, tmp_path, capsys):
    clouds = _clouds()
    # Landsat band files as AWS and EarthExplorer serve them, one by one, and QA_PIXEL
    qa = np.where(clouds, 21824 | 1 << 3, 21824)
    names = {b: f"{L9}_{i}.TIF" for b, i in OLI.items()}
    files, quality = _band_files(tmp_path / "l9", surface, names, f"{L9}_QA_PIXEL.TIF", qa)
    masked = open_scenes([*files, quality], sensor="landsat-c2-l2", mask_clouds=True)[0]
    assert masked.bands == list(OLI) and masked.files == files
    assert (_read(masked)[:, clouds] == 0).all()
    np.testing.assert_array_equal(_read(masked)[:, ~clouds], surface["stack"][:, ~clouds])
    # HLS's band files and Fmask: bits 0-3, 255 outside the swath
    fmask = np.where(clouds, 1 << 1, 1 << 5)  # cloud; water
    fmask[:, 90:] = 255
    names = {b: f"HLS.S30.T33UUP.2023163T101021.v2.0.{i}.tif"
             for b, i in {"blue": "B02", "green": "B03", "red": "B04", "nir08": "B8A"}.items()}  # fmt: skip
    files, quality = _band_files(tmp_path / "hls", surface, names,
                                 "HLS.S30.T33UUP.2023163T101021.v2.0.Fmask.tif", fmask)  # fmt: skip
    masked = open_scenes([*files, quality], sensor="hls", mask_clouds=True)[0]
    assert (_read(masked)[:, clouds | (fmask == 255)] == 0).all()
    assert f"{clouds[:, :90].mean():.1%} of the pixels in the swath" in cloud_note(masked)
    assert "Fmask.tif marks cirrus, cloud, adjacent to cloud/shadow or cloud shadow" in (
        cloud_note(masked)
    )
    # a stack and Earth Search's SCL asset at 20 m
    scl = np.where(clouds, 9, 4)[::2, ::2]
    profile = surface["profile"] | {"width": 48, "height": 48, "dtype": "uint8", "nodata": None,
                                    "transform": surface["profile"]["transform"] @ Affine.scale(2)}  # fmt: skip
    with rasterio.open(tmp_path / "SCL.tif", "w", **profile) as dst:
        dst.write(scl[None].astype("uint8"))
    masked = open_scenes([surface["scene"], tmp_path / "SCL.tif"], mask_clouds=True)[0]
    assert (_read(masked)[:, clouds] == 0).all()
    np.testing.assert_array_equal(_read(masked)[:, ~clouds], surface["stack"][:, ~clouds])
    # another scene's quality file
    away = profile | {"transform": profile["transform"] @ Affine.translation(0, 500)}
    with rasterio.open(tmp_path / "T33UUQ_SCL.tif", "w", **away) as dst:
        dst.write(scl[None].astype("uint8"))
    with pytest.raises(ImageryError, match=r"T33UUQ_SCL.tif covers 0% of the scene: give the"):
        open_scenes([surface["scene"], tmp_path / "T33UUQ_SCL.tif"], mask_clouds=True)
    # without --mask-clouds the quality file is not an image band; the hint, followed
    with pytest.raises(ImageryError, match=r"Fmask.tif is a quality band \(Fmask\), not an image "
                       r"band: add --mask-clouds .* or leave it out"):  # fmt: skip
        open_scenes([*files, quality], sensor="hls")
    assert open_scenes(files, sensor="hls")[0].quality is None
    # two quality files, or two dates: one scene at a time
    with pytest.raises(
        ImageryError,
        match=r"one quality band file with the image files of one scene, got HLS.*Fmask.tif, SCL.tif",
    ):
        open_scenes([*files, quality, tmp_path / "SCL.tif"], sensor="hls", mask_clouds=True)
    with pytest.raises(ImageryError, match=r"takes one date: its band files \(or one multi-band"):
        open_scenes([surface["scene"], surface["scene"], tmp_path / "SCL.tif"], mask_clouds=True)


def test_mask_clouds_over_http_with_the_scene_s_quality_file(surface, tmp_path):
    """A client uploads a Landsat scene's band files and its QA_PIXEL: without mask_clouds the
    quality file is refused as an image band with the field to set; with it, the clouds get no
    class in the prediction, and no label on them is trained on in a dataset."""
    from synth import tiny_model
    from test_serve import Server, assert_error, wait_job

    tiny_model(tmp_path, sensor="landsat-c2-l2")  # model p, in tmp_path / "home"
    folder = _cloudy(tmp_path / L9, surface)
    files = [folder / f"{L9}_{i}.TIF" for i in OLI.values()] + [folder / f"{L9}_QA_PIXEL.TIF"]
    upload = [("image", (f.name, f.read_bytes())) for f in files]
    clouds = _clouds()
    srv = Server(tmp_path / "home", "--dev").start()
    try:
        c = srv.client()
        assert_error(
            c.post("/v1/models/p/predict", files=upload),
            422,
            f"{L9}_QA_PIXEL.TIF is a quality band (QA_PIXEL), not an image band: add the "
            "mask_clouds field",
        )
        r = c.post("/v1/models/p/predict", files=upload, data={"mask_clouds": "true"})
        assert r.status_code == 200, r.text
        answer = r.json()
        note = answer["input"]["clouds"][0]
        assert note.startswith("clouds masked (the mask_clouds field)")
        assert f"where {L9}_QA_PIXEL.TIF marks fill" in note  # the name the client sent
        got = c.get(f"/v1/predictions/{answer['prediction_id']}/classes.tif")
        with rasterio.MemoryFile(got.content) as mem, mem.open() as src:
            classes = src.read(1)
        assert (classes[clouds] == 255).all() and (classes[~clouds] != 255).all()

        labels = make_labels(tmp_path, surface["scene"], surface["cmap"])
        r = c.post(
            "/v1/datasets",
            data={"name": "l9", "class_column": "class_name", "block_size": "32",
                  "sensor": "landsat-c2-l2", "mask_clouds": "true"},
            files=[*upload, ("labels", (labels.name, labels.read_bytes()))],
        )  # fmt: skip
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"])
        assert job["state"] == "succeeded", job["error"]
        warnings = c.get(f"/v1/jobs/{job['id']}/result").json()["warnings"]
        assert any(w.startswith("clouds masked (the mask_clouds field)") for w in warnings)
        with rasterio.open(srv.home / "datasets" / "l9" / "mask.tif") as src:
            assert (src.read(1)[clouds] == 255).all()
    finally:
        srv.stop()


def test_embed_skips_the_chips_a_cloud_covers(home, surface, tmp_path, capsys):
    folder = _cloudy(tmp_path / L9, surface)
    tiny = ["embed", "--backbone", "clay_v1_5", "--size", "tiny", "--weights", "random",
            "--sensor", "landsat-c2-l2", "--chip-size", "32", "--min-valid", "0.9",
            "--image", str(folder)]  # fmt: skip
    chips = {}
    for name, extra in (("masked", ["--mask-clouds"]), ("plain", [])):
        assert main([*tiny, "--out", str(tmp_path / f"{name}.parquet"), *extra]) == 0
        printed = capsys.readouterr().out
        chips[name] = pq.read_table(tmp_path / f"{name}.parquet").num_rows
        assert ("clouds masked" if extra else "QA_PIXEL.TIF not read") in printed
    # 32 px chips on 96 px: the cloud covers over 10% of three of the nine
    assert chips == {"masked": 6, "plain": 9}


def _export(path, surface, names: list[str], quality: np.ndarray):
    """A stack as Earth Engine exports it: the bands, then a quality band, each described."""
    profile = surface["profile"] | {"count": len(names) + 1}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate([surface["stack"], quality[None].astype("uint16")]))
        dst.descriptions = (*names, QUALITY_NAME[path.stem])
    return path


QUALITY_NAME = {"s2": "SCL", "s2_qa60": "QA60", "l9": "QA_PIXEL"}


def test_a_stack_s_own_quality_band_masks_its_clouds(surface, tmp_path):
    clouds = _clouds()
    scl = _export(tmp_path / "s2.tif", surface, ["B2", "B3", "B4", "B8A"], np.where(clouds, 8, 4))
    masked = open_scenes([scl], sensor="sentinel-2-l2a", mask_clouds=True)[0]
    assert masked.bands == ["blue", "green", "red", "nir08"]  # the quality band is no band
    assert (_read(masked)[:, clouds] == 0).all()
    np.testing.assert_array_equal(_read(masked)[:, ~clouds], surface["stack"][:, ~clouds])
    assert "s2.tif band 5 marks no data, saturated or defective" in cloud_note(masked)
    qa60 = np.where(clouds, 1 << 10, 0)
    qa60[0:5, 0:5] = 1 << 11  # cirrus
    s2 = _export(tmp_path / "s2_qa60.tif", surface, ["B2", "B3", "B4", "B8A"], qa60)
    masked = open_scenes([s2], sensor="sentinel-2-l2a", mask_clouds=True)[0]
    assert (_read(masked)[:, qa60 > 0] == 0).all() and (_read(masked)[:, qa60 == 0] > 0).all()
    assert "band 5 marks opaque clouds or cirrus (bits 10, 11)" in cloud_note(masked)
    # without the option the quality band is left out, and said to be one
    with pytest.warns(UserWarning, match=r"band 'SCL' is a quality band, not an image band: left"):
        plain = open_scenes([scl], sensor="sentinel-2-l2a")[0]
    assert plain.bands == ["blue", "green", "red", "nir08"] and plain.quality is None
    l9 = _export(tmp_path / "l9.tif", surface, list(OLI), np.where(clouds, 21824 | 8, 21824))
    assert open_scenes([l9])[0].bands == list(OLI)  # no sensor: QA_PIXEL is still no band
    # two dates, each its own quality band
    both = open_scenes([scl, s2], sensor="sentinel-2-l2a", mask_clouds=True)
    assert [(s.quality.kind, s.quality.band) for s in both] == [("scl", 5), ("qa60", 5)]


def test_earth_engine_msk_classi_bands_mask_and_an_empty_qa60_is_said(surface, tmp_path):
    """An Earth Engine export of COPERNICUS/S2_HARMONIZED from 2023: its QA60 is empty (Earth
    Engine stopped filling it in February 2022 and built it from MSK_CLASSI from February 2024);
    the MSK_CLASSI_OPAQUE and MSK_CLASSI_CIRRUS bands are what says where the clouds are."""
    clouds = _clouds()
    cirrus, snow = np.zeros_like(clouds), np.zeros_like(clouds)
    cirrus[80:90, 0:20] = True
    snow[0:8, 60:90] = True
    names = ["B2", "B3", "B4", "B8A", "QA60", "MSK_CLASSI_OPAQUE", "MSK_CLASSI_CIRRUS",
             "MSK_CLASSI_SNOW_ICE"]  # fmt: skip
    layers = [np.zeros_like(clouds), clouds, cirrus, snow]
    path = tmp_path / "S2_2023.tif"
    with rasterio.open(path, "w", **surface["profile"] | {"count": len(names)}) as dst:
        dst.write(np.concatenate([surface["stack"], np.stack(layers).astype("uint16")]))
        dst.descriptions = tuple(names)
    masked = open_scenes([path], sensor="sentinel-2-l2a", mask_clouds=True)[0]
    assert masked.bands == ["blue", "green", "red", "nir08"]  # no quality layer is a band
    assert (masked.quality.kind, masked.quality.band) == ("msk_classi", (6, 7))
    got = _read(masked)
    assert (got[:, clouds | cirrus] == 0).all() and (got[:, ~(clouds | cirrus)] > 0).all()
    share = (clouds | cirrus).mean()
    assert cloud_note(masked) == (
        f"clouds masked (--mask-clouds): {share:.1%} of the pixels of the scene are nodata, "
        "where S2_2023.tif bands 6, 7 marks opaque clouds or cirrus"
    )
    with pytest.warns(UserWarning, match="band 'MSK_CLASSI_SNOW_ICE' is a quality band"):
        assert open_scenes([path], sensor="sentinel-2-l2a")[0].bands == masked.bands

    # only the empty QA60: masked by it, and the note says why nothing was
    only_qa60 = _export(tmp_path / "s2_qa60.tif", surface, ["B2", "B3", "B4", "B8A"], layers[0])
    note = cloud_note(open_scenes([only_qa60], sensor="sentinel-2-l2a", mask_clouds=True)[0])
    assert note.startswith("clouds masked (--mask-clouds): 0.0% of the pixels")
    assert (
        "QA60 marks next to no pixel: if the scene has clouds, it is from the years Earth Engine "
        in note
    )
    # one of the two layers alone is not a cloud mask: said, with what to export
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = (*names[:4], "B11", "MSK_CLASSI_OPAQUE", "B12", "MSK_CLASSI_SNOW_ICE")
    with pytest.raises(ImageryError, match="QA60 or MSK_CLASSI_OPAQUE and MSK_CLASSI_CIRRUS"):
        open_scenes([path], sensor="sentinel-2-l2a", mask_clouds=True)
