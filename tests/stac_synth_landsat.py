"""A small Landsat Collection 2 Level-2-like static STAC catalog for tests: 30 m COGs on the
Landsat lattice (origin at 15 m modulo 30, as USGS grids are), a ``qa_pixel`` asset with the
cloud bit (3) set under each scene's cloud, ``raster:bands`` scale/offset (2.75e-5, -0.2), the
projection extension on all but one scene (read from its header), one scene without
``eo:cloud_cover``, and no ``coastal``/``lwir11`` assets (a mirror with fewer bands than the
preset names). Asset hrefs are local paths; the items use Earth Search's asset keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from stac_synth import CRS, EXT, write_cog

L_ORIGIN = (499_995.0, 4_200_015.0)  # 15 m modulo 30, as Landsat grids
L_SIZE = 96  # px at 30 m
BANDS = ["blue", "green", "red", "nir08", "swir16", "swir22"]
QA_CLEAR, QA_CLOUD, QA_FILL = 21824, 22280, 1  # Landsat 8 clear land; bit 3 (cloud); fill


@dataclass
class LScene:
    id: str
    when: datetime
    cloud_cover: float | None  # None: the item does not state it
    cloud: tuple[slice, slice] | None  # rows, cols (30 m px) under a cloud
    proj: bool = True  # the item states its grid (projection extension)
    seed: int = 0


def l_scenes() -> list[LScene]:
    s = slice
    return [
        LScene(
            "LC09_L2SP_189034_20230310_02_T1",
            datetime(2023, 3, 10, 9, 40, tzinfo=UTC),
            10.0,
            (s(10, 40), s(10, 40)),
            seed=1,
        ),
        LScene(
            "LC08_L2SP_189034_20230318_02_T1",
            datetime(2023, 3, 18, 9, 41, tzinfo=UTC),
            None,
            (s(25, 55), s(25, 55)),
            proj=False,
            seed=2,
        ),
        LScene(
            "LC09_L2SP_189034_20230326_02_T1",
            datetime(2023, 3, 26, 9, 40, tzinfo=UTC),
            60.0,
            None,
            seed=3,
        ),  # above --max-cloud 40: never used
        LScene(
            "LC09_L2SP_189034_20230402_02_T1",
            datetime(2023, 4, 2, 9, 40, tzinfo=UTC),
            35.0,
            (s(0, L_SIZE), s(0, L_SIZE)),
            seed=4,
        ),  # cloudy over everything
        LScene(
            "LC08_L2SP_189034_20230820_02_T1",
            datetime(2023, 8, 20, 9, 42, tzinfo=UTC),
            30.0,
            (s(60, 80), s(60, 80)),
            seed=5,
        ),
    ]


def stored(scene: LScene) -> np.ndarray:
    """The scene's stored values, [6, L_SIZE, L_SIZE] uint16 (distinct per pixel and scene)."""
    rng = np.random.default_rng(scene.seed)
    base = 7273 + 1000 * np.arange(len(BANDS))[:, None, None]  # reflectance 0.0 .. 0.14
    return (base + rng.integers(0, 4000, (len(BANDS), L_SIZE, L_SIZE))).astype(np.uint16)


def write_l_scene(folder: Path, sc: LScene) -> dict[str, Path]:
    d = folder / sc.id
    d.mkdir(parents=True, exist_ok=True)
    t = from_origin(*L_ORIGIN, 30, 30)
    out = {}
    for name, arr in zip(BANDS, stored(sc), strict=True):
        out[name] = d / f"{sc.id}_{name}.tif"
        write_cog(out[name], arr, t, 0, 64)
    qa = np.full((L_SIZE, L_SIZE), QA_CLEAR, dtype=np.uint16)
    if sc.cloud:
        qa[sc.cloud] = QA_CLOUD
    out["qa_pixel"] = d / f"{sc.id}_qa_pixel.tif"
    write_cog(out["qa_pixel"], qa, t, QA_FILL, 64)
    return out


def l_item(sc: LScene, paths: dict[str, Path], scaling=(2.75e-5, -0.2)) -> dict:
    x0, y1 = L_ORIGIN
    x1, y0 = x0 + L_SIZE * 30, y1 - L_SIZE * 30
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geom = transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    xs, ys = zip(*geom["coordinates"][0], strict=True)
    props = {
        "datetime": sc.when.isoformat().replace("+00:00", "Z"),
        "platform": "landsat-9" if sc.id.startswith("LC09") else "landsat-8",
    }
    if sc.cloud_cover is not None:
        props["eo:cloud_cover"] = sc.cloud_cover
    assets = {}
    for name, path in paths.items():
        asset = {
            "href": str(path),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"] if name != "qa_pixel" else ["cloud"],
        }
        if name != "qa_pixel":
            asset["raster:bands"] = [
                {"nodata": 0, "data_type": "uint16", "scale": scaling[0], "offset": scaling[1]}
            ]
        if sc.proj:
            asset |= {
                "proj:code": CRS,
                "proj:shape": [L_SIZE, L_SIZE],
                "proj:transform": [30.0, 0.0, x0, 0.0, -30.0, y1],
            }
        assets[name] = asset
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": EXT,
        "id": sc.id,
        "collection": "landsat-c2-l2",
        "geometry": geom,
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": props,
        "links": [],
        "assets": assets,
    }


def write_landsat_catalog(folder: Path, scenes=None, scaling=(2.75e-5, -0.2)) -> Path:
    """COGs and a self-contained static catalog under ``folder`` (of ``scenes``, default all,
    whose items state ``scaling`` in ``raster:bands``); returns the catalog.json."""
    import pystac

    scenes = l_scenes() if scenes is None else scenes
    items = [l_item(sc, write_l_scene(folder / "assets", sc), scaling) for sc in scenes]
    cat = pystac.Catalog("landsat", "Synthetic Landsat C2 L2 scenes for tests")
    col = pystac.Collection(
        "landsat-c2-l2",
        "Landsat C2 L2 (synthetic)",
        pystac.Extent(
            pystac.SpatialExtent([items[0]["bbox"]]),
            pystac.TemporalExtent([[datetime(2023, 1, 1, tzinfo=UTC), None]]),
        ),
    )
    cat.add_child(col)
    for d in items:
        col.add_item(pystac.Item.from_dict(d))
    cat.normalize_hrefs(str(folder / "catalog"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog" / "catalog.json"


def l_aoi(cols=(5, 85), rows=(5, 85)) -> dict:
    """A GeoJSON Feature (CRS84) over part of the Landsat grid, given in 30 m px."""
    x0, x1 = L_ORIGIN[0] + cols[0] * 30, L_ORIGIN[0] + cols[1] * 30
    y0, y1 = L_ORIGIN[1] - rows[1] * 30, L_ORIGIN[1] - rows[0] * 30
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    geom = transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    return {"type": "Feature", "properties": {}, "geometry": geom}
