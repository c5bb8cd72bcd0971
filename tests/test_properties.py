"""Property tests (hypothesis) of the tiler and the polygons, on generated inputs:

- the chip grid covers every pixel, with chips inside the scene, and the blending weights of the
  chips over any pixel sum to one whatever the tiling (a tiled blend equals the whole blend);
- the polygons of a class raster, collected tile by tile, burn back to that raster exactly and
  their areas are the class pixel counts times the pixel area.
"""

import json

import numpy as np
import shapely
import shapely.ops
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import Affine

from datamodules.imagery import Grid
from trainer.areas import areal_scale
from trainer.polygons import PolygonCollector
from trainer.predict import ChipGrid, ramp, tiles

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@st.composite
def chip_grids(draw):
    length = draw(st.integers(1, 700))
    chip = draw(st.integers(1, 256))
    overlap = draw(st.integers(0, max(0, chip - 1)))
    return length, chip, overlap


@SETTINGS
@given(chip_grids())
def test_chip_grid_covers_every_pixel_inside_the_scene(args):
    length, chip, overlap = args
    g = ChipGrid(length, chip, overlap)
    covered = np.zeros(length, dtype=int)
    for s in g.starts:
        assert s >= 0 and (s + chip <= length or (s == 0 and chip > length))
        covered[s : s + chip] += 1
    assert covered.min() >= 1
    assert g.starts == sorted(set(g.starts))


def blend(shape, chip, overlap, tile, values):
    """Blend one value per chip with the predictor's ramp weights, tile by tile: (sum of
    weights, weighted mean) per pixel; as ``Predictor.predict_window`` sums them."""
    h, w = shape
    rows, cols = ChipGrid(h, chip, overlap), ChipGrid(w, chip, overlap)
    ch, cw = min(chip, h), min(chip, w)
    weight = ramp(ch, cw, overlap)
    wsum = np.zeros(shape, np.float32)
    mean = np.zeros(shape, np.float32)
    for t in tiles(w, h, tile):
        acc = np.zeros((t.height, t.width), np.float32)
        ws = np.zeros((t.height, t.width), np.float32)
        for r in rows.touching(t.row_off, t.row_off + t.height):
            for c in cols.touching(t.col_off, t.col_off + t.width):
                y0, y1 = max(r, t.row_off), min(r + ch, t.row_off + t.height)
                x0, x1 = max(c, t.col_off), min(c + cw, t.col_off + t.width)
                wt = weight[y0 - r : y1 - r, x0 - c : x1 - c]
                sl = (slice(y0 - t.row_off, y1 - t.row_off), slice(x0 - t.col_off, x1 - t.col_off))
                acc[sl] += values[(r, c)] * wt
                ws[sl] += wt
        out = (slice(t.row_off, t.row_off + t.height), slice(t.col_off, t.col_off + t.width))
        wsum[out], mean[out] = ws, acc / ws
    return wsum, mean


@SETTINGS
@given(st.integers(8, 90), st.integers(8, 90), st.integers(4, 48), st.data())
def test_blend_weights_are_a_partition_of_unity_and_tiling_changes_nothing(h, w, chip, data):
    overlap = data.draw(st.integers(0, chip // 2))
    tile = data.draw(st.integers(1, max(h, w)))
    rows, cols = ChipGrid(h, chip, overlap), ChipGrid(w, chip, overlap)
    rng = np.random.default_rng(h * 1000 + w)
    values = {(r, c): float(rng.random()) for r in rows.starts for c in cols.starts}
    wsum, mean = blend((h, w), chip, overlap, tile, values)
    assert (wsum > 0).all()  # every pixel has weight from some chip
    lo, hi = min(values.values()), max(values.values())
    assert (mean >= lo - 1e-6).all() and (mean <= hi + 1e-6).all()  # a convex combination
    _, whole = blend((h, w), chip, overlap, max(h, w), values)
    np.testing.assert_allclose(mean, whole, rtol=0, atol=1e-6)
    ones = {k: 1.0 for k in values}  # normalised weights sum to one at every pixel
    np.testing.assert_allclose(blend((h, w), chip, overlap, tile, ones)[1], 1.0, atol=1e-6)


@st.composite
def class_rasters(draw):
    h, w = draw(st.integers(4, 48)), draw(st.integers(4, 48))
    k = draw(st.integers(1, 4))
    cell = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, k + 1, (-(-h // cell), -(-w // cell)))  # k: nodata (255)
    cls = np.kron(coarse, np.ones((cell, cell), int))[:h, :w].astype(np.uint8)
    cls[cls == k] = 255
    tile = draw(st.integers(2, max(h, w)))
    return cls, k, tile


@SETTINGS
@given(class_rasters())
def test_polygons_burn_back_to_the_class_raster_and_areas_match(tmp_path_factory, args):
    cls, k, tile = args
    h, w = cls.shape
    res = 10.0
    transform = Affine(res, 0, 500000, 0, -res, 4200000)
    grid = Grid(CRS.from_epsg(32633), transform, w, h)
    classes = [{"id": i, "name": f"c{i}"} for i in range(k)]
    col = PolygonCollector(grid, classes)
    conf = np.full(cls.shape, 0.5, np.float32)
    for t in tiles(w, h, tile):
        sl = (slice(t.row_off, t.row_off + t.height), slice(t.col_off, t.col_off + t.width))
        col.add(t, cls[sl], conf[sl], cls[sl] != 255, 255)
    out = tmp_path_factory.mktemp("poly") / "p.geojson"
    col.write(out)
    feats = json.loads(out.read_text())["features"]
    from pyproj import Transformer

    back = Transformer.from_crs("OGC:CRS84", grid.crs.to_wkt(), always_xy=True)
    shapes = []
    for f in feats:
        geom = shapely.ops.transform(back.transform, shapely.geometry.shape(f["geometry"]))
        shapes.append((geom, f["properties"]["class_id"]))
    burnt = (
        rasterize(shapes, out_shape=cls.shape, transform=transform, fill=255, dtype="uint8")
        if shapes
        else np.full(cls.shape, 255, np.uint8)
    )
    np.testing.assert_array_equal(burnt, cls)
    # areas are on the ellipsoid: UTM's map area over its areal scale (0.9996² here,
    # constant to 1e-8 over a raster this small)
    cx, cy = transform * (w / 2, h / 2)
    scale = float(areal_scale(grid.crs, np.array([cx]), np.array([cy]))[0])
    assert 0.9991 < scale < 0.9993
    for c in range(k):
        area = sum(f["properties"]["area_m2"] for f in feats if f["properties"]["class_id"] == c)
        expected = (cls == c).sum() * res * res / scale
        assert abs(area - expected) <= 1e-6 * max(area, 1) + 1e-3


@SETTINGS
@given(class_rasters())
def test_components_and_their_polygons_are_gdals_shapes_of_each_class(args):
    """The vectorised building blocks of the collector: one component per 4-connected patch
    of a class, and GDAL's polygon of each, the same geometries (vertex for vertex) as
    ``shapely.geometry.shape`` makes of GDAL's rings."""
    from rasterio.features import shapes as gdal_shapes
    from scipy import ndimage

    from trainer.polygons import _components, _polygons

    cls, k, _ = args
    comp, comp_class = _components(cls, list(range(k)))
    assert len(comp_class) - 1 == sum(ndimage.label(cls == c)[1] for c in range(k))
    for n in range(1, len(comp_class)):
        patch = comp == n
        assert patch.any() and (cls[patch] == comp_class[n]).all()
        assert ndimage.label(patch)[1] == 1
    assert ((comp == 0) == (cls == 255)).all()
    transform = Affine(10.0, 0, 500000, 0, -10.0, 4200000)
    ours = _polygons(comp, transform)
    expected = [
        (shapely.geometry.shape(g), int(v))
        for g, v in gdal_shapes(comp, mask=comp > 0, transform=transform, connectivity=4)
    ]
    assert [n for _, n in ours] == [n for _, n in expected]
    for (a, _), (b, _) in zip(ours, expected, strict=True):
        assert shapely.equals_exact(a, b, tolerance=0)
