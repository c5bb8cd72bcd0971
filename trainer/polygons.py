"""Class polygons from predicted tiles: shapes per tile, seams merged, areas, CRS84 GeoJSON.

Each tile's class raster is split into connected components (4-connectivity, as
``rasterio.features.shapes`` uses), polygonised with the mean confidence of its pixels.
Components touching an inner tile edge are kept aside and merged per class at the end, so a
field crossing two tiles comes out as one polygon. Finished polygons are converted to CRS84
features at once and spooled to a temporary file, so memory holds only the seam pieces (which
grow with the length of the tile edges, not with the number of polygons).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import shapely
from rasterio.features import shapes, sieve
from rasterio.windows import transform as window_transform
from scipy import ndimage

from .areas import geometry_area_m2


class PolygonCollector:
    def __init__(
        self,
        grid,
        classes: list[dict],
        sieve: int = 0,
        clip=None,
        *,
        min_area_m2: float = 0.0,
        simplify: float = 0.0,
    ):
        """``clip``: a geometry in the grid's CRS that every polygon is cut to (e.g. the scene's
        extent when the grid's last cells overhang it, as a classification's coarse grid does).
        ``min_area_m2`` drops small polygons; ``simplify`` is a tolerance in the grid's CRS units."""
        from pyproj import Transformer

        self.grid = grid
        self.classes = classes
        self.names = {c["id"]: c["name"] for c in classes}
        self.sieve = sieve
        self.clip = clip
        self.min_area_m2, self.simplify = min_area_m2, simplify
        self.to84 = Transformer.from_crs(grid.crs.to_wkt(), "OGC:CRS84", always_xy=True)
        self.spool = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.count = 0
        self.seam: list[tuple] = []  # (geometry, class id, confidence sum, pixel count)

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
            rings = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
            poly = shapely.Polygon(
                shapely.linearrings(rings[0]), [shapely.linearrings(h) for h in rings[1:]]
            )
            item = (poly, comp_class[cid], float(conf_sum[cid - 1]), float(count[cid - 1]))
            if self._touches(poly, inner):
                self.seam.append(item)
            else:
                self._emit(*item)

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
        """Seam pieces of one class merged into whole polygons, with their confidence sums and
        pixel counts. Each piece counts in the one merged part that holds a point inside it (a
        piece touching another part at a corner is not counted twice)."""
        out = []
        for c in self.classes:
            items = [s for s in self.seam if s[1] == c["id"]]
            if not items:
                continue
            geoms = np.array([s[0] for s in items], dtype=object)
            merged = shapely.union_all(geoms)
            parts = list(getattr(merged, "geoms", [merged]))
            piece, part = shapely.STRtree(parts).query(
                shapely.point_on_surface(geoms), predicate="within"
            )
            conf = np.zeros(len(parts))
            count = np.zeros(len(parts))
            np.add.at(conf, part, [items[i][2] for i in piece])
            np.add.at(count, part, [items[i][3] for i in piece])
            out += [(p, c["id"], float(conf[j]), float(count[j])) for j, p in enumerate(parts)]
        return out

    def _emit(self, geom, cid: int, csum: float, count: float) -> None:
        """Write one finished polygon as a CRS84 feature line to the spool."""
        if self.clip is not None:
            geom = geom.intersection(self.clip)
            if geom.is_empty:
                return
        area = geometry_area_m2(geom, self.grid.crs)
        if area < self.min_area_m2:
            return
        if self.simplify > 0:
            geom = geom.simplify(self.simplify, preserve_topology=True)
        feature = {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(shapely.transform(geom, self._lonlat)),
            "properties": {
                "class_id": cid,
                "class_name": self.names[cid],
                "area_m2": round(area, 2),
                "mean_confidence": round(csum / max(count, 1), 4),
            },
        }
        self.spool.write(json.dumps(feature) + "\n")
        self.count += 1

    def _lonlat(self, xy: np.ndarray) -> np.ndarray:
        """Grid coordinates → CRS84, all vertices at once, to 7 decimals (~1 cm; RFC 7946 §11.2
        notes that 6 give about 10 cm)."""
        lon, lat = self.to84.transform(xy[:, 0], xy[:, 1])
        return np.round(np.column_stack([lon, lat]), 7)

    def write(self, path: str | Path) -> int:
        """Merge the seams, write a GeoJSON FeatureCollection (RFC 7946) to ``path``; returns the
        number of features."""
        for item in self._merged_seams():
            self._emit(*item)
        self.seam = []
        self.spool.seek(0)
        with open(path, "w", encoding="utf-8") as out:
            out.write('{"type": "FeatureCollection", "features": [')
            for i, line in enumerate(self.spool):
                out.write(("," if i else "") + "\n" + line.rstrip("\n"))
            out.write("\n]}\n")
        self.spool.close()
        return self.count
