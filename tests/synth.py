"""Small seeded synthetic scenes for tests: a GeoTIFF whose spectra follow a class map, plus
label polygons over part of it, written the way users deliver them (rasterio, GeoJSON)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.transform import from_origin

CLASSES = ["water", "forest", "field"]
SPECTRA = np.array(  # per class, per band (blue, green, red, nir08): reflectance x 10000
    [[900, 1100, 700, 300], [400, 700, 400, 3500], [1200, 1400, 1600, 2500]], dtype=np.float32
)
BANDS = ["blue", "green", "red", "nir08"]


def class_map(size: int, seed: int, cell: int = 16) -> np.ndarray:
    """Blocky random class regions (nearest of random seeds on a coarse grid)."""
    rng = np.random.default_rng(seed)
    n = max(4, (size // cell) ** 2 // 3)
    pts = rng.uniform(0, size, (n, 2))
    lab = rng.integers(0, len(CLASSES), n)
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return lab[d.argmin(-1)].astype(np.uint8)


def make_scene(
    folder: Path,
    size: int = 128,
    seed: int = 0,
    crs: str = "EPSG:32633",
    res: float = 10.0,
    origin=(500000.0, 4200000.0),
    name: str = "scene.tif",
    nodata_corner: int = 0,
    descriptions: bool = True,
) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    cmap = class_map(size, seed)
    img = SPECTRA[cmap].transpose(2, 0, 1) + rng.normal(0, 120, (len(BANDS), size, size))
    img = np.clip(img, 1, 20000).astype(np.uint16)
    if nodata_corner:
        img[:, :nodata_corner, :nodata_corner] = 0
    path = Path(folder) / name
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=len(BANDS), dtype="uint16",
        crs=crs, transform=from_origin(origin[0], origin[1], res, res), nodata=0,
    ) as dst:  # fmt: skip
        dst.write(img)
        if descriptions:
            dst.descriptions = tuple(BANDS)
    return path, cmap


def band_surface(folder: Path, size: int = 96, seed: int = 4) -> dict:
    """A synthetic scene in ``folder`` and what writing it as band files needs: its ``stack``
    of values and a one-band ``profile``."""
    scene, cmap = make_scene(folder, size=size, seed=seed)
    with rasterio.open(scene) as src:
        return {"tmp": Path(folder), "scene": scene, "cmap": cmap, "stack": src.read(),
                "profile": src.profile | {"count": 1}}  # fmt: skip


def in_crs(src_path: Path, out_path: Path, crs: str) -> Path:
    """``src_path`` reprojected to ``crs`` (its own pixel count; band descriptions kept), as a
    tool that exports in degrees or Web Mercator writes it."""
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        out = np.zeros((src.count, h, w), src.dtypes[0])
        reproject(src.read(), out, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=t, dst_crs=crs)  # fmt: skip
        profile = src.profile | {"crs": crs, "transform": t, "width": w, "height": h}
        names = src.descriptions
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(out)
        dst.descriptions = names
    return out_path


def make_labels(
    folder: Path, scene: Path, cmap: np.ndarray, seed: int = 0, keep: float = 0.7, name: str = "labels.geojson",
    column: str = "class_name", to_crs: str | None = "EPSG:4326", driver: str | None = None, cell: int = 20,
) -> Path:  # fmt: skip
    """Polygons of a random subset of the class regions cut by a ``cell``-px grid (many small
    units, as people draw them), shrunk by one pixel, in ``to_crs``."""
    rng = np.random.default_rng(seed + 2)
    with rasterio.open(scene) as src:
        transform, crs, res = src.transform, src.crs, src.res[0]
    geoms, names = [], []
    yy, xx = np.mgrid[0 : cmap.shape[0], 0 : cmap.shape[1]]
    pieces = (cmap.astype(np.int32) * 10000 + (yy // cell) * 100 + xx // cell).astype(np.int32)
    for geom, value in shapes(pieces, transform=transform):
        poly = shapely.geometry.shape(geom).buffer(-res)
        if poly.is_empty or poly.area < (4 * res) ** 2 or rng.random() > keep:
            continue
        for part in getattr(poly, "geoms", [poly]):
            geoms.append(part)
            names.append(CLASSES[int(value) // 10000])
    gdf = gpd.GeoDataFrame({column: names}, geometry=geoms, crs=crs)
    if to_crs:
        gdf = gdf.to_crs(to_crs)
    path = Path(folder) / name
    if path.suffix == ".parquet":
        gdf.to_parquet(path)
    else:
        gdf.to_file(path, driver=driver)
    return path


def few_polygons(
    folder: Path,
    scene: Path,
    cmap: np.ndarray,
    per_class: dict[str, int],
    seed: int = 0,
    side: tuple[int, int] = (9, 15),
    name: str = "few.geojson",
    column: str = "class_name",
) -> Path:
    """A few small hand-drawn-like polygons: ``per_class[name]`` rectangles of ``side`` px edges
    (so about 80-210 px each), each inside one region of its class, written in EPSG:4326."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    with rasterio.open(scene) as src:
        transform, crs = src.transform, src.crs
    geoms, names = [], []
    for cls_name, n in per_class.items():
        k = CLASSES.index(cls_name)
        for _ in range(n):
            h, w = (int(v) for v in rng.integers(side[0], side[1] + 1, 2))
            inside = ndimage.binary_erosion(cmap == k, np.ones((h + 2, w + 2)))
            rr, cc = np.nonzero(inside)
            if not len(rr):
                raise ValueError(f"no room for a {h}x{w} polygon of {cls_name}")
            i = rng.integers(len(rr))
            r0, c0 = rr[i] - h // 2, cc[i] - w // 2
            x0, y0 = transform * (c0, r0)
            x1, y1 = transform * (c0 + w, r0 + h)
            geoms.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
            names.append(cls_name)
    path = Path(folder) / name
    gpd.GeoDataFrame({column: names}, geometry=geoms, crs=crs).to_crs("EPSG:4326").to_file(path)
    return path


def tiny_model(tmp: Path, sensor: str | None = None):
    """:func:`train_tiny`'s model ``p`` in a home of its own under ``tmp``, loaded (``p@champion``),
    with ``tmp`` as its ``.tmp``: a module's fixture, so without pytest's per-test ``home``."""
    import pytest

    from trainer.registry import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEOTUNE_HOME", str(tmp / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        train_tiny(tmp, sensor=sensor)
        model = load_model("p@champion")
    model.tmp = tmp
    return model


def train_tiny(
    folder: Path, name: str = "p", *, size: int = 128, seed: int = 0, keep: float = 0.7,
    chips_per_epoch: int = 32, alias: str | None = "champion", sensor: str | None = None,
) -> Path:  # fmt: skip
    """A tiny random-init ResNet UNet fine-tuned for one epoch on a synthetic ``size``² scene and
    its labels (dataset and registered model ``name``, with ``alias``; the scene's ``sensor``,
    so that the model knows its input units) in the current ``GEOTUNE_HOME``. Returns the
    scene."""
    from datamodules.ingest import ingest
    from trainer.config import compose
    from trainer.train import train

    scene, cmap = make_scene(folder, size=size, seed=seed)
    labels = make_labels(folder, scene, cmap, keep=keep)
    ingest(name=name, images=[scene], labels=labels, class_column="class_name", block_size=32,
           sensor=sensor, progress=False)  # fmt: skip
    overrides = [f"data.dataset={name}", "backbone.size=tiny", "backbone.weights=random",
                 "data.patch_size=64", "data.num_workers=0",
                 f"data.chips_per_epoch={chips_per_epoch}", "trainer.max_epochs=1",
                 f"register.name={name}"]  # fmt: skip
    if alias:
        overrides.append(f"register.alias={alias}")
    train(compose("train", overrides))
    return scene
