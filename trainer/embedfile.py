"""The embeddings file: GeoParquet 1.1, one row per chip, readable without geotune.

Columns (in this order):

- ``chip_id`` int64: the chip's place in the scene's chip grid (``grid_row * grid_cols +
  grid_col``), stable for a given scene, chip size and stride;
- ``row``, ``col`` int32: the chip's top-left pixel in the scene; ``valid_fraction`` float32:
  the share of its pixels inside the scene that hold data (chips under ``min_valid`` are not
  written: nodata is never embedded as if it were land);
- ``geometry`` WKB polygon, longitude/latitude (OGC:CRS84): the chip's footprint, cut to the
  scene; ``bbox`` struct ``{xmin, ymin, xmax, ymax}`` float64: its bounding box, declared as
  the GeoParquet 1.1 *covering* of ``geometry`` so readers can filter row groups by area;
- ``embedding`` fixed-size list of float32 (or float16) of the encoder's width;
- ``backbone``, ``pool``, ``weights``, ``source`` strings and ``date`` (date32, null when
  unknown): which encoder, pooled how (``cls``: the ViT class token; ``mean``: the mean of the
  patch tokens or of a CNN's last feature map), which weights (a file name with its SHA-256, a
  registered model, or ``random``), from which scene(s) or STAC items. Constant per file, they
  cost nearly nothing (dictionary-encoded) and survive concatenating files.

The file's key-value metadata holds ``geo`` (the GeoParquet 1.1 metadata) and ``geotune``
(JSON: the full provenance: backbone, weights path and hashes, bands, normalisation, chip
size, stride, the scene grid, dates, STAC items, options). Rows are written in row groups as
chips are embedded (bounded memory), to a hidden temporary file that replaces the output only
when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

GEOPARQUET_VERSION = "1.1.0"
META_KEY = b"geotune"
DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
BBOX = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])


def schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("chip_id", pa.int64()),
            ("row", pa.int32()),
            ("col", pa.int32()),
            ("valid_fraction", pa.float32()),
            ("geometry", pa.binary()),
            ("bbox", BBOX),
            ("embedding", pa.list_(DTYPES[dtype], dim)),
            ("backbone", pa.string()),
            ("pool", pa.string()),
            ("weights", pa.string()),
            ("source", pa.string()),
            ("date", pa.date32()),
        ]
    )


def geo_metadata() -> dict:
    """GeoParquet 1.1's ``geo`` metadata. It is written with the schema, before any row (so
    every reader, Arrow's schema included, sees it): the optional file-wide ``bbox`` is left
    out; the ``bbox`` column gives each row's."""
    column = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        # no "crs": GeoParquet's default, OGC:CRS84 (longitude, latitude)
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": column},
    }


class EmbeddingWriter:
    """Rows in, a GeoParquet file out: ``add`` buffers chips, a row group is written every
    ``group_rows`` rows, ``close`` moves the finished file into place."""

    def __init__(
        self, path, dim: int, dtype: str, constants: dict, provenance: dict, group_rows: int = 4096
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part")
        meta = {"geo": json.dumps(geo_metadata()), META_KEY.decode(): json.dumps(provenance)}
        self.schema = schema(dim, dtype).with_metadata(meta)
        self.dim, self.dtype = dim, dtype
        self.constants, self.group_rows = constants, group_rows
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.rows: list[tuple] = []  # (chip_id, row, col, valid, wkb, bounds, vector)
        self.n = 0

    def add(self, chip_id: int, row: int, col: int, valid: float, geom, vector: np.ndarray):
        import shapely

        self.rows.append((chip_id, row, col, valid, shapely.to_wkb(geom), geom.bounds, vector))
        if len(self.rows) >= self.group_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        ids, rows, cols, valid, wkb, bounds, vecs = zip(*self.rows, strict=True)
        b = np.asarray(bounds, dtype=np.float64)
        flat = np.stack(vecs).astype(self.dtype).reshape(-1)
        n = len(ids)
        arrays = [
            pa.array(ids, pa.int64()),
            pa.array(rows, pa.int32()),
            pa.array(cols, pa.int32()),
            pa.array(valid, pa.float32()),
            pa.array(wkb, pa.binary()),
            pa.StructArray.from_arrays([pa.array(b[:, i]) for i in range(4)], fields=list(BBOX)),
            pa.FixedSizeListArray.from_arrays(pa.array(flat, DTYPES[self.dtype]), self.dim),
        ] + [
            pa.array([self.constants.get(k)] * n, self.schema.field(k).type)
            for k in ("backbone", "pool", "weights", "source", "date")
        ]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.n += n
        self.rows = []

    def close(self) -> int:
        """Write the rest, then move the file into place; returns the number of rows."""
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.n

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def read_provenance(path) -> dict:
    """The ``geotune`` metadata of an embeddings file (what made it, how)."""
    from datamodules.errors import UserError

    try:
        meta = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"cannot read {path} as Parquet: {e}") from None
    if META_KEY not in meta:
        raise UserError(
            f"{path} is not a geotune embeddings file (no 'geotune' metadata); make one with "
            "geotune embed --backbone NAME --image scene.tif --out embeddings.parquet"
        )
    return json.loads(meta[META_KEY])


def read_vectors(path, columns=("chip_id",)) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named columns (as numpy) and the embeddings ``[N, D]`` in their stored dtype."""
    table = pq.read_table(path, columns=[*columns, "embedding"])
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    values = emb.values.to_numpy(zero_copy_only=False)
    cols = {c: _numpy(table.column(c)) for c in columns}
    return cols, values.reshape(-1, dim)


def _numpy(col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_struct(col.type):
        flat = col.combine_chunks()
        return np.stack([flat.field(i).to_numpy() for i in range(flat.type.num_fields)], 1)
    return col.to_numpy()
