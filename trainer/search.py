"""Similarity search over an embeddings file: the chips nearest a query by cosine similarity.

A query is a chip (``like``: its ``chip_id``), a place (``near``: the chip whose footprint
holds the point, the one with the nearest centre when several do), an area (``polygon``: the
mean of the unit vectors of the chips it touches) or a vector (``vector``). The chips that
make the query are left out of the answer. The answer is a GeoJSON FeatureCollection of the
chips' footprints with ``chip_id``, ``rank`` and ``score`` (cosine similarity, 1 = same
direction), plus a ``query`` member saying what was searched.

Exact search scores every vector with one matrix-vector product (torch) in the file's own
type, so a float16 file is never converted whole, and ranks the best again in float32. Past ``exact_max`` chips (``method="auto"``) an
approximate FAISS index (``faiss-cpu``, the ``search`` extra) is used: inverted lists over
k-means cells with float16 vectors (``IVF<n>,SQfp16``, inner product), built once and stored
beside the file as ``<file>.faiss`` with ``<file>.faiss.json`` (the file's size, time and row
count it was built from: a changed file gets a new index).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.errors import UserError

from .embedfile import read_provenance, read_vectors

EXACT_MAX = 2_000_000  # chips: beyond, method=auto uses the approximate index (see README)
CHUNK = 65_536  # rows converted to float32 at a time


class SearchError(UserError):
    pass


@dataclass
class Query:
    vector: np.ndarray  # unit length, float32 [D]
    rows: list[int]  # the rows that made it (left out of the answer)
    description: dict


class EmbeddingIndex:
    """The vectors of one embeddings file, loaded once, with their ids and bounding boxes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SearchError(f"embeddings file {self.path} does not exist")
        self.provenance = read_provenance(self.path)
        cols, self.vectors = read_vectors(self.path, ("chip_id", "bbox"))
        self.ids, self.bbox = cols["chip_id"], cols["bbox"]
        if not len(self.ids):
            raise SearchError(f"{self.path.name} holds no chips")
        self.row_of = {int(c): i for i, c in enumerate(self.ids)}
        self.inv_norm = np.empty(len(self.ids), dtype=np.float32)
        for i in range(0, len(self.ids), CHUNK):
            n = np.linalg.norm(self.vectors[i : i + CHUNK].astype(np.float32), axis=1)
            self.inv_norm[i : i + CHUNK] = 1.0 / np.maximum(n, 1e-12)
        self._faiss = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def unit(self, rows) -> np.ndarray:
        return self.vectors[rows].astype(np.float32) * self.inv_norm[rows, None]

    # -- queries ------------------------------------------------------------------------------
    def like(self, chip_id: int) -> Query:
        row = self.row_of.get(int(chip_id))
        if row is None:
            raise SearchError(
                f"no chip {chip_id} in {self.path.name} (chip ids run from {self.ids.min()} to "
                f"{self.ids.max()}, {len(self)} chips; chips without data were not embedded)"
            )
        return Query(self.unit([row])[0], [row], {"like": int(chip_id)})

    def near(self, lon: float, lat: float) -> Query:
        import shapely

        b = self.bbox
        cand = np.nonzero(
            (b[:, 0] <= lon) & (lon <= b[:, 2]) & (b[:, 1] <= lat) & (lat <= b[:, 3])
        )[0]
        point = shapely.Point(lon, lat)
        geoms = self.geometries(cand)
        hits = [
            (shapely.distance(g.centroid, point), int(r))
            for g, r in zip(geoms, cand, strict=True)
            if g.covers(point)
        ]
        if not hits:
            w, s, e, n = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
            raise SearchError(
                f"no embedded chip holds the point ({lon:g}, {lat:g}) (lon, lat); the chips of "
                f"{self.path.name} lie within lon {w:.5f}..{e:.5f}, lat {s:.5f}..{n:.5f}"
            )
        row = min(hits)[1]
        return Query(
            self.unit([row])[0], [row], {"near": [lon, lat], "chip_id": int(self.ids[row])}
        )

    def polygon(self, geometry) -> Query:
        import shapely
        from shapely.geometry import shape

        try:
            geom = shape(
                geometry.get("geometry", geometry) if isinstance(geometry, dict) else geometry
            )
        except Exception:
            raise SearchError(
                "polygon must be a GeoJSON Polygon or MultiPolygon (lon, lat)"
            ) from None
        if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
            raise SearchError(f"polygon must be a Polygon or MultiPolygon, not {geom.geom_type}")
        x0, y0, x1, y1 = geom.bounds
        b = self.bbox
        cand = np.nonzero((b[:, 0] <= x1) & (x0 <= b[:, 2]) & (b[:, 1] <= y1) & (y0 <= b[:, 3]))[0]
        rows = [
            int(r)
            for r, g in zip(cand, self.geometries(cand), strict=True)
            if shapely.intersects(g, geom)
        ]
        if not rows:
            raise SearchError(f"the polygon touches no embedded chip of {self.path.name}")
        mean = self.unit(rows).mean(0)
        chips = [int(self.ids[r]) for r in rows]
        return Query(_unit(mean), rows, {"polygon": shapely.geometry.mapping(geom), "chips": chips})

    def vector(self, v) -> Query:
        v = np.asarray(v, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dim:
            raise SearchError(
                f"the query vector has {v.shape[0]} values; this file's have {self.dim}"
            )
        if not np.all(np.isfinite(v)) or not np.any(v):
            raise SearchError("the query vector must be finite and not all zeros")
        return Query(_unit(v), [], {"vector": f"{self.dim} values"})

    # -- search -------------------------------------------------------------------------------
    def search(self, q: Query, k: int = 20, method: str = "auto", exact_max: int = EXACT_MAX):
        """Rows and scores of the ``k`` best chips (the query's own chips left out)."""
        if k < 1:
            raise SearchError(f"k must be at least 1; got {k}")
        if method not in ("auto", "exact", "approximate"):
            raise SearchError(f"method must be auto, exact or approximate; got {method!r}")
        use_index = method == "approximate" or (method == "auto" and len(self) > exact_max)
        want = min(k + len(q.rows), len(self))
        if use_index:
            rows, scores = self.index().search(q.vector, want)
        else:
            rows, scores = exact_top(self.vectors, self.inv_norm, q.vector, want)
        drop = set(q.rows)
        keep = [(r, s) for r, s in zip(rows, scores, strict=True) if r not in drop and r >= 0][:k]
        return (
            [r for r, _ in keep],
            [float(s) for _, s in keep],
            "approximate" if use_index else "exact",
        )

    def index(self):
        if self._faiss is None:
            self._faiss = ApproximateIndex.open_or_build(self)
        return self._faiss

    def geometries(self, rows):
        import pyarrow.parquet as pq
        import shapely

        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        if getattr(self, "_wkb", None) is None:  # read once, on the first spatial query
            self._wkb = pq.read_table(self.path, columns=["geometry"]).column("geometry").to_numpy()
        return list(shapely.from_wkb(self._wkb[rows]))

    def projection(self, max_points: int = 5000, seed: int = 0) -> dict:
        """A 2-D view of the embedding space: the chips (all, or a random ``max_points``) on the
        first two principal components of their unit vectors (scaled to [-1, 1]), with each
        chip's centre."""
        rng = np.random.default_rng(seed)
        rows = np.arange(len(self))
        if len(rows) > max_points:
            rows = np.sort(rng.choice(rows, max_points, replace=False))
        u = self.unit(rows)
        u -= u.mean(0)
        _, s, vt = np.linalg.svd(u, full_matrices=False)
        xy = u @ vt[:2].T
        xy /= max(float(np.abs(xy).max()), 1e-30)  # in [-1, 1]: near-identical vectors spread too
        var = s**2 / max(float((s**2).sum()), 1e-12)
        b = self.bbox[rows]
        return {
            "chips": [
                {
                    "chip_id": int(self.ids[r]),
                    "x": round(float(x), 5),
                    "y": round(float(y), 5),
                    "lon": round(float(lon), 7),
                    "lat": round(float(lat), 7),
                }
                for r, (x, y), lon, lat in zip(
                    rows, xy, (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, strict=True
                )
            ],
            "explained_variance": [round(float(v), 4) for v in var[:2]],
            "chips_total": len(self),
        }

    def answer(self, q: Query, k: int = 20, method: str = "auto") -> dict:
        """The GeoJSON FeatureCollection of the best ``k`` chips, with scores."""
        import shapely

        rows, scores, used = self.search(q, k, method)
        features = [
            {
                "type": "Feature",
                "id": int(self.ids[r]),
                "geometry": shapely.geometry.mapping(g),
                "properties": {"chip_id": int(self.ids[r]), "rank": i + 1, "score": round(s, 6)},
            }
            for i, (r, s, g) in enumerate(zip(rows, scores, self.geometries(rows), strict=True))
        ]
        query = q.description | {"k": k, "method": used, "chips_searched": len(self)}
        return {"type": "FeatureCollection", "query": query, "features": features}


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def exact_top(vectors: np.ndarray, inv_norm: np.ndarray, q: np.ndarray, k: int):
    """The ``k`` rows of largest cosine similarity to the unit vector ``q``: every vector is
    scored by one matrix-vector product in its stored type (float16 products are summed in
    float32 and rounded to float16 once), then the best ``4k + 64`` are scored again in float32,
    so the ranking is float32's (ties: the lower row first)."""
    import torch

    with warnings.catch_warnings():  # a read-only array straight from the file: only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        v = torch.from_numpy(vectors)
    with torch.inference_mode():
        scores = (v @ torch.from_numpy(q).to(v.dtype)).float() * torch.from_numpy(inv_norm)
        m = min(len(scores), k if v.dtype == torch.float32 else 4 * k + 64)
        cand = np.sort(torch.topk(scores, m).indices.numpy())
    exact = (vectors[cand].astype(np.float32) @ q) * inv_norm[cand]
    order = np.argsort(-exact, kind="stable")[:k]
    return cand[order], exact[order]


class ApproximateIndex:
    """A FAISS ``IVF<n>,SQfp16`` inner-product index over the unit vectors, stored beside the
    embeddings file; ``nprobe`` (cells visited per query) is stored with it."""

    def __init__(self, index, nprobe: int):
        self.index, self.nprobe = index, nprobe
        ivf = self.faiss().extract_index_ivf(index)
        ivf.nprobe = nprobe
        self.cells = ivf.nlist

    @staticmethod
    def faiss():
        try:
            import faiss
        except ImportError:
            raise SearchError(
                "approximate search needs FAISS: pip install 'geotune[search]' (faiss-cpu); or "
                "search exactly with --method exact"
            ) from None
        return faiss

    @staticmethod
    def layout(n: int) -> tuple[int, int]:
        """Cells (about 4·√n, a power of two, with at least 39 vectors each to train on) and
        cells visited per query (1/32 of them, at least 8): recall@20 ≥ 0.95 on the benchmark's
        vectors (experiments/embeddings)."""
        cells = int(2 ** round(np.log2(max(4 * np.sqrt(n), 16))))
        cells = max(1, min(cells, n // 39))
        return cells, min(cells, max(8, cells // 32))

    @classmethod
    def build(cls, vectors: np.ndarray, inv_norm: np.ndarray, seed: int = 0) -> ApproximateIndex:
        faiss = cls.faiss()
        n, d = vectors.shape
        cells, nprobe = cls.layout(n)
        index = faiss.index_factory(d, f"IVF{cells},SQfp16", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, min(n, cells * 64), replace=False))
        index.train(
            np.ascontiguousarray(vectors[sample].astype(np.float32) * inv_norm[sample, None])
        )
        for i in range(0, n, CHUNK):
            block = vectors[i : i + CHUNK].astype(np.float32) * inv_norm[i : i + CHUNK, None]
            index.add(np.ascontiguousarray(block))
        return cls(index, nprobe)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(q.reshape(1, -1).astype(np.float32), k)
        return rows[0], scores[0]

    @classmethod
    def open_or_build(cls, idx: EmbeddingIndex) -> ApproximateIndex:
        faiss = cls.faiss()
        path = Path(f"{idx.path}.faiss")
        meta_path = Path(f"{path}.json")
        st = idx.path.stat()
        source = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "rows": len(idx)}
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if meta is not None and meta.get("source") == source and path.is_file():
            return cls(faiss.read_index(str(path)), int(meta["nprobe"]))
        built = cls.build(idx.vectors, idx.inv_norm)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        faiss.write_index(built.index, str(tmp))
        os.replace(tmp, path)
        meta_path.write_text(
            json.dumps(
                {"source": source, "nprobe": built.nprobe, "factory": f"IVF{built.cells},SQfp16"}
            )
        )
        return built
