"""Class polygons from predicted tiles: shapes per tile, seams merged, areas, CRS84 GeoJSON.

Each tile's class raster is split into connected components (4-connectivity, as
``rasterio.features.shapes`` uses), polygonised with the mean confidence of its pixels.
Components touching an inner tile edge are kept aside and merged per class at the end, so a
field crossing two tiles comes out as one polygon.
"""

from __future__ import annotations

import numpy as np
import shapely
from rasterio.features import shapes, sieve
from rasterio.windows import transform as window_transform
from scipy import ndimage

from .areas import geometry_area_m2


class PolygonCollector:
    def __init__(self, grid, classes: list[dict], sieve: int = 0):
        self.grid = grid
        self.classes = classes
        self.sieve = sieve
        self.final: list[tuple] = []  # (geometry, class id, confidence sum, pixel count)
        self.seam: list[tuple] = []

    def add(
        self, win, classes: np.ndarray, conf: np.ndarray, valid: np.ndarray, nodata: int
    ) -> None:
        cls = classes.copy()
        if self.sieve:
            cls = sieve(cls, size=self.sieve, mask=valid.astype(np.uint8))
            cls[~valid] = nodata
        comp = np.zeros(cls.shape, dtype=np.int32)
        comp_class = [0]
        n_total = 0
        for c in self.classes:
            lab, n = ndimage.label(cls == c["id"])
            if n:
                sel = lab > 0
                comp[sel] = lab[sel] + n_total
                comp_class += [c["id"]] * n
                n_total += n
        if n_total == 0:
            return
        idx = np.arange(1, n_total + 1)
        conf_sum = ndimage.sum(conf, comp, idx)
        count = ndimage.sum(np.ones_like(conf), comp, idx)
        t = window_transform(win, self.grid.transform)
        inner = self._inner_edges(win)
        for geom, value in shapes(comp, mask=comp > 0, transform=t, connectivity=4):
            cid = int(value)
            poly = shapely.geometry.shape(geom)
            item = (poly, comp_class[cid], float(conf_sum[cid - 1]), float(count[cid - 1]))
            (self.seam if self._touches(poly, inner) else self.final).append(item)

    def _inner_edges(self, win) -> list:
        """Tile edges that are not scene edges, as lines in map coordinates."""
        t = self.grid.transform
        x0, y0 = t @ (win.col_off, win.row_off)
        x1, y1 = t @ (win.col_off + win.width, win.row_off + win.height)
        edges = []
        if win.col_off > 0:
            edges.append(shapely.LineString([(x0, y0), (x0, y1)]))
        if win.col_off + win.width < self.grid.width:
            edges.append(shapely.LineString([(x1, y0), (x1, y1)]))
        if win.row_off > 0:
            edges.append(shapely.LineString([(x0, y0), (x1, y0)]))
        if win.row_off + win.height < self.grid.height:
            edges.append(shapely.LineString([(x0, y1), (x1, y1)]))
        return edges

    @staticmethod
    def _touches(poly, edges) -> bool:
        return any(poly.distance(e) < 1e-9 for e in edges)

    def _merged_seams(self) -> list[tuple]:
        out = []
        for c in self.classes:
            items = [s for s in self.seam if s[1] == c["id"]]
            if not items:
                continue
            geoms = [s[0] for s in items]
            merged = shapely.union_all(geoms)
            parts = list(getattr(merged, "geoms", [merged]))
            tree = shapely.STRtree(geoms)
            for part in parts:
                hits = tree.query(part, predicate="intersects")
                out.append(
                    (part, c["id"], sum(items[i][2] for i in hits), sum(items[i][3] for i in hits))
                )
        return out

    def feature_collection(
        self, *, min_area_m2: float = 0.0, simplify: float = 0.0, class_names: list[str]
    ) -> dict:
        from pyproj import Transformer

        to84 = Transformer.from_crs(self.grid.crs.to_wkt(), "OGC:CRS84", always_xy=True)
        features = []
        for geom, cid, csum, count in self.final + self._merged_seams():
            area = geometry_area_m2(geom, self.grid.crs)
            if area < min_area_m2:
                continue
            if simplify > 0:
                geom = geom.simplify(simplify, preserve_topology=True)
            geom84 = shapely.ops.transform(to84.transform, geom)
            features.append(
                {
                    "type": "Feature",
                    "geometry": shapely.geometry.mapping(geom84),
                    "properties": {
                        "class_id": cid,
                        "class_name": class_names[cid],
                        "area_m2": round(area, 2),
                        "mean_confidence": round(csum / max(count, 1), 4),
                    },
                }
            )
        return {"type": "FeatureCollection", "features": features}
