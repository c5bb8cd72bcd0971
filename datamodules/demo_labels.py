"""Demo labels: polygons derived from the real demo scene by a documented spectral rule.

The demo (``geotune demo``) needs labels the way a user would bring them: a few hundred
polygons with a class name each, in a GeoJSON. geotune has no hand-drawn labels for its
Sentinel-2 sample, so this module derives them from the scene itself. The rule is simple on
purpose: a model that learns it from the bands has learned something real (water, marsh,
forest, fields, bare ground), and the demo can show a useful mIoU within a few CPU minutes.

The rule
--------
Bands are read by name (``blue, green, red, nir08, swir16`` from the band descriptions) and
turned into top-of-atmosphere reflectance with the sensor's scale (``sensor`` tag; Sentinel-2
L1C stores reflectance x 10000). With

* NDWI = (green - nir08) / (green + nir08)   (McFeeters 1996)
* NDVI = (nir08 - red) / (nir08 + red)
* VIS  = (blue + green + red) / 3            (mean visible reflectance, brightness)

each pixel gets the first class whose test it passes, in this order:

============ ======================================================= ======================
class_name   test                                                    what it picks out here
============ ======================================================= ======================
water        NDWI > 0.30 and swir16 < 0.016                          sea, bay, tidal
                                                                     channels, creeks (open
                                                                     water absorbs SWIR
                                                                     almost completely)
marsh        NDVI < 0.20 and swir16 < 0.10                           salt marsh, mud flats:
                                                                     wet, dark in SWIR,
                                                                     dormant or flooded
bare_ground  VIS > 0.16                                              beach sand, surf,
                                                                     roofs, bright fields
forest       NDVI >= 0.20 and swir16 below 0.13 (if NDVI >= 0.55)   canopy: shadowed, dark
             or below 0.18 (if NDVI < 0.55)                          in SWIR; leafless
                                                                     woods included
cropland     NDVI >= 0.40                                            green fields, grass
bare_ground  everything else (NDVI < 0.20 with swir16 >= 0.10, or     bare or stubble fields,
             NDVI 0.20-0.40 with swir16 >= 0.18)                     roads, built-up, dry sand
============ ======================================================= ======================

The thresholds were tuned by eye on the demo crop (false-colour SWIR/NIR/red and RGB views,
class maps side by side, histograms of swir16 per NDVI band). The scene is a winter/early-spring
one: green winter crops are the greenest things in it; the salt marsh is dormant and largely
flooded (NDWI 0.1-0.4, so NDWI alone would call it water; its residual SWIR signal tells it
apart); deciduous woods are leafless (NDVI 0.2-0.4). So forest is told from fields by SWIR
darkness, not by NDVI: among vegetated pixels swir16 is bimodal, with a valley near 0.13 for
dense vegetation and near 0.18 for sparse vegetation.

From class map to polygons
--------------------------
1. Classify every valid pixel; smooth the class map with a 7x7 majority filter.
2. Cut the scene into seeded random Voronoi cells (about 400 m across) so that large regions
   (the sea, a wood) become many polygons of the size a person would draw; polygonise each
   (class, cell) connected region with ``rasterio.features.shapes``.
3. Erode each polygon by 1.5 pixels (clean interiors, no mixed edge pixels), split
   multi-part results, drop parts under 50 pixels, simplify by half a pixel.
4. Sample ``n_polygons`` of them (default 300), stratified: an equal quota per class (classes
   with fewer candidates give all they have; the rest of the quota goes to the others),
   seeded, so each class has a fair share of the labelled pixels.
5. Write a GeoJSON FeatureCollection in CRS84 (RFC 7946: lon/lat, right-hand winding) with
   one string column, ``class_name``: exactly what a user's label file looks like.

Run ``python -m datamodules.demo_labels IMAGE OUT.geojson`` to write them and print the class
fractions and polygon counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CLASSES: tuple[str, ...] = ("water", "marsh", "forest", "cropland", "bare_ground")
CLASS_COLOURS: dict[str, str] = {
    "water": "#1f78b4",
    "marsh": "#a6cee3",
    "forest": "#006d2c",
    "cropland": "#b2df8a",
    "bare_ground": "#e31a1c",
}

# Thresholds of the rule (reflectance, 0..1, and unitless indices); see the module docstring.
WATER_NDWI = 0.30
WATER_SWIR16 = 0.016
MARSH_NDVI = 0.20
MARSH_SWIR16 = 0.10
BARE_VIS = 0.16
FOREST_NDVI = 0.20
FOREST_DENSE_NDVI = 0.55
FOREST_SWIR16_DENSE = 0.13  # swir16 limit where NDVI >= FOREST_DENSE_NDVI
FOREST_SWIR16_SPARSE = 0.18  # swir16 limit where FOREST_NDVI <= NDVI < FOREST_DENSE_NDVI
CROP_NDVI = 0.40

SMOOTH_PX = 7  # majority filter window
CELL_PX = 40  # Voronoi cell spacing (pixels)
ERODE_PX = 1.5
MIN_AREA_PX = 50
NODATA_CLASS = 255

_NEEDED = ("blue", "green", "red", "nir08", "swir16")


class DemoLabelError(ValueError):
    pass


def _read_reflectance(image_path: Path):
    """Needed bands as float32 reflectance, a validity mask, the transform, CRS and resolution."""
    import rasterio

    from .sensors import SENSORS

    with rasterio.open(image_path) as src:
        names = [d or "" for d in src.descriptions]
        missing = [b for b in _NEEDED if b not in names]
        if missing:
            raise DemoLabelError(
                f"{image_path.name}: band(s) {', '.join(missing)} not found in the band "
                f"descriptions {names}; demo labels need {', '.join(_NEEDED)}"
            )
        sensor = SENSORS.get(src.tags().get("sensor", "sentinel-2-l1c"), SENSORS["sentinel-2-l1c"])
        raw = {b: src.read(names.index(b) + 1) for b in _NEEDED}
        nodata = src.nodata
        transform, crs, res = src.transform, src.crs, src.res
    valid = np.ones(raw["blue"].shape, dtype=bool)
    if nodata is not None:
        for a in raw.values():
            valid &= a != nodata
    refl = {b: a.astype(np.float32) * sensor.scale + sensor.offset for b, a in raw.items()}
    return refl, valid, transform, crs, res


def classify(refl: dict[str, np.ndarray], valid: np.ndarray | None = None) -> np.ndarray:
    """The per-pixel rule: class index into ``CLASSES`` (uint8), ``NODATA_CLASS`` where invalid."""
    eps = np.float32(1e-6)
    g, r, n, s16 = refl["green"], refl["red"], refl["nir08"], refl["swir16"]
    ndwi = (g - n) / (g + n + eps)
    ndvi = (n - r) / (n + r + eps)
    vis = (refl["blue"] + g + r) / 3
    cls = np.full(g.shape, CLASSES.index("bare_ground"), dtype=np.uint8)
    # Assign in reverse order of precedence so that earlier rules overwrite later ones.
    cls[ndvi >= CROP_NDVI] = CLASSES.index("cropland")
    forest_swir = np.where(ndvi >= FOREST_DENSE_NDVI, FOREST_SWIR16_DENSE, FOREST_SWIR16_SPARSE)
    cls[(ndvi >= FOREST_NDVI) & (s16 < forest_swir)] = CLASSES.index("forest")
    cls[vis > BARE_VIS] = CLASSES.index("bare_ground")
    cls[(ndvi < MARSH_NDVI) & (s16 < MARSH_SWIR16)] = CLASSES.index("marsh")
    cls[(ndwi > WATER_NDWI) & (s16 < WATER_SWIR16)] = CLASSES.index("water")
    if valid is not None:
        cls[~valid] = NODATA_CLASS
    return cls


def majority_filter(cls: np.ndarray, size: int = SMOOTH_PX) -> np.ndarray:
    """Most frequent class in a ``size`` x ``size`` window (ties: lower class index)."""
    from scipy import ndimage as ndi

    votes = np.stack(
        [
            ndi.uniform_filter((cls == k).astype(np.float32), size, mode="nearest")
            for k in range(len(CLASSES))
        ]
    )
    out = votes.argmax(0).astype(np.uint8)
    out[cls == NODATA_CLASS] = NODATA_CLASS
    return out


def _voronoi_cells(shape: tuple[int, int], spacing: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded random Voronoi partition of the pixel grid, about ``spacing`` px per cell."""
    from scipy import ndimage as ndi

    h, w = shape
    n = max(1, round(h * w / spacing**2))
    rows = rng.integers(0, h, n)
    cols = rng.integers(0, w, n)
    seeds = np.ones(shape, dtype=bool)
    seeds[rows, cols] = False
    ids = np.zeros(shape, dtype=np.int32)
    ids[rows, cols] = np.arange(1, n + 1)
    _, (ri, ci) = ndi.distance_transform_edt(seeds, return_indices=True)
    return ids[ri, ci]


def candidate_polygons(cls: np.ndarray, transform, res, rng: np.random.Generator):
    """Clean interior polygons of every (class, Voronoi cell) region: (list of class idx, geoms)."""
    from rasterio.features import shapes
    from shapely.geometry import shape as to_shape

    cells = _voronoi_cells(cls.shape, CELL_PX, rng)
    stride = int(cells.max()) + 1
    region = cls.astype(np.int32) * stride + cells
    mask = cls != NODATA_CLASS
    px = float(abs(res[0]))
    erode, min_area, tol = ERODE_PX * px, MIN_AREA_PX * px * abs(res[1]), 0.5 * px
    classes, geoms = [], []
    for geom, value in shapes(region, mask=mask, connectivity=4, transform=transform):
        k = int(value) // stride
        poly = to_shape(geom)
        if poly.area < min_area:
            continue
        inner = poly.buffer(-erode)
        parts = getattr(inner, "geoms", [inner])
        for part in parts:
            if part.geom_type != "Polygon" or part.area < min_area:
                continue
            part = part.simplify(tol, preserve_topology=True)
            if part.is_valid and not part.is_empty:
                classes.append(k)
                geoms.append(part)
    return classes, geoms


def _stratified(classes: list[int], n_total: int, rng: np.random.Generator) -> list[int]:
    """Indices of an equal-quota-per-class sample (leftover quota goes to larger classes)."""
    by_class = {
        k: rng.permutation([i for i, c in enumerate(classes) if c == k]).tolist()
        for k in sorted(set(classes))
    }
    chosen: dict[int, list[int]] = {k: [] for k in by_class}
    remaining = n_total
    while remaining > 0 and any(by_class.values()):
        open_classes = [k for k in by_class if by_class[k]]
        quota = max(1, remaining // len(open_classes))
        for k in open_classes:
            take = by_class[k][:quota]
            by_class[k] = by_class[k][quota:]
            chosen[k].extend(take)
            remaining -= len(take)
            if remaining <= 0:
                break
    out = [i for k in sorted(chosen) for i in chosen[k]]
    return rng.permutation(out).tolist()


def make_demo_labels(image_path, out_path, *, seed: int = 0, n_polygons: int = 300) -> Path:
    """Derive demo label polygons from ``image_path`` and write them to ``out_path`` (GeoJSON).

    The image must carry band descriptions ``blue, green, red, nir08, swir16`` (the demo COG
    does). Returns ``out_path``. Deterministic for a given image and ``seed``.
    """
    import geopandas as gpd

    image_path, out_path = Path(image_path), Path(out_path)
    rng = np.random.default_rng(seed)
    refl, valid, transform, crs, res = _read_reflectance(image_path)
    if crs is None or not crs.is_projected:
        raise DemoLabelError(
            f"{image_path.name}: demo labels need an image in a projected CRS (metres)"
        )
    cls = majority_filter(classify(refl, valid))
    classes, geoms = candidate_polygons(cls, transform, res, rng)
    if not geoms:
        raise DemoLabelError(f"{image_path.name}: no label polygons could be derived")
    keep = _stratified(classes, n_polygons, rng)
    gdf = gpd.GeoDataFrame(
        {"class_name": [CLASSES[classes[i]] for i in keep]},
        geometry=[geoms[i] for i in keep],
        crs=crs,
    ).to_crs("EPSG:4326")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    gdf.to_file(
        tmp,
        driver="GeoJSON",
        engine="pyogrio",
        layer=out_path.stem,
        layer_options={"RFC7946": "YES"},
    )
    tmp.replace(out_path)
    return out_path


def summarise(image_path, labels_path) -> list[dict]:
    """Per class: pixel fraction of the (smoothed) rule map, polygon count, labelled fraction."""
    import geopandas as gpd

    refl, valid, transform, crs, res = _read_reflectance(Path(image_path))
    cls = majority_filter(classify(refl, valid))
    n_valid = max(1, int((cls != NODATA_CLASS).sum()))
    gdf = gpd.read_file(labels_path).to_crs(crs)
    area = gdf.geometry.area.groupby(gdf["class_name"]).sum()
    total = float(area.sum()) or 1.0
    rows = []
    for k, name in enumerate(CLASSES):
        rows.append(
            {
                "class_name": name,
                "scene_fraction": float((cls == k).sum()) / n_valid,
                "polygons": int((gdf["class_name"] == name).sum()),
                "labelled_fraction": float(area.get(name, 0.0)) / total,
                "labelled_px": float(area.get(name, 0.0)) / abs(res[0] * res[1]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Derive demo label polygons from a scene (see the module docstring)."
    )
    p.add_argument("image", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-polygons", type=int, default=300)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = make_demo_labels(args.image, args.out, seed=args.seed, n_polygons=args.n_polygons)
    dt = time.perf_counter() - t0
    rows = summarise(args.image, out)
    print(f"wrote {out} in {dt:.1f} s")
    print(
        f"{'class_name':<12} {'scene %':>8} {'polygons':>9} {'labelled %':>11} {'labelled px':>12}"
    )
    for r in rows:
        print(
            f"{r['class_name']:<12} {100 * r['scene_fraction']:8.1f} {r['polygons']:9d} "
            f"{100 * r['labelled_fraction']:11.1f} {r['labelled_px']:12.0f}"
        )


if __name__ == "__main__":
    main()
