"""The main job on embedded defaults: the real Sentinel-2 sample, end to end, must learn."""

import json

import numpy as np
import rasterio

from trainer.demo import run_demo, sample_image


def test_sample_is_a_real_cog_with_named_bands():
    from rio_cogeo.cogeo import cog_validate

    path = sample_image()
    assert cog_validate(str(path))[0]
    with rasterio.open(path) as src:
        assert src.descriptions == ("blue", "green", "red", "nir08", "swir16", "swir22")
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
        assert path.stat().st_size < 8_000_000


def test_demo_learns_on_held_out_blocks(home):
    r = run_demo(workdir=home / "demo")
    miou = r["test"]["test/mIoU"]
    assert miou >= 0.6, miou
    assert miou >= r["baseline_mIoU"] + 0.2
    out = r["prediction_dir"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["model"] == "models:/demo@champion"
    with rasterio.open(out / "classes.tif") as src:
        cls = src.read(1)
    assert set(np.unique(cls)) <= set(range(5))
    assert len(json.loads((out / "polygons.geojson").read_text())["features"]) > 10
