"""An ingest killed midway (SIGKILL: no cleanup code runs) leaves no dataset behind, and the
next ingest removes its leftovers."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from conftest import env_with_home
from rasterio.transform import from_origin

from datamodules.ingest import ingest
from datamodules.manifest import DatasetError, list_datasets, load_dataset

SIZE = 3072


def _large_scene(tmp_path):
    """A 3072 x 3072 px, 4-band scene and a class mask of 64 px squares (written by strips)."""
    profile = dict(
        driver="GTiff", width=SIZE, height=SIZE, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 4200000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    image, mask = tmp_path / "large.tif", tmp_path / "large_mask.tif"
    cols = np.arange(SIZE)
    with rasterio.open(image, "w", count=4, nodata=0, **profile) as img:
        with rasterio.open(mask, "w", count=1, **profile | {"dtype": "uint8"}) as msk:
            for row in range(0, SIZE, 256):
                rows = np.arange(row, row + 256)[:, None]
                cls = ((rows // 64 + cols // 64) % 3).astype(np.uint8)
                win = rasterio.windows.Window(0, row, SIZE, 256)
                img.write(
                    np.stack([1000 + 500 * cls.astype(np.uint16) + b for b in range(4)]), window=win
                )
                msk.write(cls, 1, window=win)
            img.descriptions = ("blue", "green", "red", "nir08")
    return image, mask


def test_killed_ingest_leaves_no_dataset_and_the_next_one_cleans_up(home, tmp_path, scene):
    image, mask = _large_scene(tmp_path)
    code = (
        "from datamodules.ingest import ingest\n"
        f"ingest(name='large', images=[{str(image)!r}], labels={str(mask)!r}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env_with_home(home))
    root = home / "datasets"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            tmps = list(root.glob(".tmp-large-*")) if root.is_dir() else []
            if tmps and (tmps[0] / "units.tif").exists():
                break  # the ingest is writing its rasters
            time.sleep(0.005)
        assert proc.poll() is None, "the ingest finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(root.glob(".tmp-large-*"))
    assert leftovers and (leftovers[0] / "image.tif").exists()  # killed midway, files half-written
    assert not (leftovers[0] / "dataset.json").exists()
    assert list_datasets() == []
    with pytest.raises(DatasetError, match="no dataset 'large'"):
        load_dataset("large")
    listing = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "data", "list"],
        env=env_with_home(home), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert listing.stdout.startswith("no datasets yet")

    ds = ingest(
        name="next", images=[scene["image"]], labels=scene["labels"], class_column="class_name",
        block_size=32, progress=False,
    )  # fmt: skip
    assert [d.id for d in list_datasets()] == [ds.id]
    assert not any(root.glob(".tmp-*")), "the leftovers of the killed ingest were not removed"
