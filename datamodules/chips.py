"""Scene-classification labels: one chip per point or polygon, stored as ``chips.csv``.

Each label (a point, or a polygon's centroid) gives the class of the ``chip_size`` x
``chip_size`` chip centred on it (shifted inwards at the scene's edge). Chips whose pixels are
mostly nodata are dropped with a warning. Splits work like units: each chip goes with the split
block holding its centre (balanced per class, seeded), or with the user's split column.
``chips.csv`` columns: ``chip_id, row, col, size, class_id, split``; with ``--multi-label``,
``class_id`` holds the chip's class ids joined by ``;``.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .imagery import Grid, ImageryError
from .labels import ClassTable
from .rasterize import valid_pixels
from .splits import SPLITS, assign_blocks, check_classes, class_reach, reach_notes, split_notes

CHIPS_FILE = "chips.csv"
MIN_VALID_FRACTION = 0.5


def place_chips(gdf, table: ClassTable, grid: Grid, chip_size: int) -> dict[str, np.ndarray]:
    """Chip windows centred on each label (image CRS); labels whose centre is outside are dropped."""
    if chip_size < 8:
        raise ImageryError(f"--chip-size {chip_size} is too small; use at least 8 px")
    if chip_size > min(grid.width, grid.height):
        raise ImageryError(
            f"--chip-size {chip_size} is larger than the scene ({grid.width}x{grid.height} px); "
            "use a smaller --chip-size"
        )
    centres = gdf.geometry.centroid
    inv = ~grid.transform
    cols, rows = inv @ (centres.x.to_numpy(), centres.y.to_numpy())
    cols, rows = np.floor(cols).astype(np.int64), np.floor(rows).astype(np.int64)
    inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    if not inside.all():
        warnings.warn(
            f"{int((~inside).sum())} classification label(s) whose centre lies outside the "
            "imagery were dropped",
            stacklevel=3,
        )
    half = chip_size // 2
    r0 = np.clip(rows - half, 0, grid.height - chip_size)[inside]
    c0 = np.clip(cols - half, 0, grid.width - chip_size)[inside]
    values = gdf["value"].to_numpy()[inside]
    classes = [
        tuple(sorted({table.lookup(v) for v in val}))
        if isinstance(val, tuple)
        else (table.lookup(val),)
        for val in values
    ]
    per_chip = np.empty(len(classes), dtype=object)  # tuples, not a 2-D array
    for i, c in enumerate(classes):
        per_chip[i] = c
    split = gdf["split"].to_numpy()[inside] if "split" in gdf else None
    return {"row": r0, "col": c0, "classes": per_chip, "split": split}


def drop_nodata_chips(chips: dict, image: Path, size: int, nodata) -> dict:
    """Keep chips with at least ``MIN_VALID_FRACTION`` valid pixels in ``image``."""
    keep = np.zeros(len(chips["row"]), dtype=bool)
    with rasterio.open(image) as src:
        for i in np.argsort(chips["row"], kind="stable"):
            data = src.read(window=Window(int(chips["col"][i]), int(chips["row"][i]), size, size))
            keep[i] = valid_pixels(data, nodata).mean() >= MIN_VALID_FRACTION
    if not keep.all():
        warnings.warn(
            f"{int((~keep).sum())} classification chip(s) with less than "
            f"{MIN_VALID_FRACTION:.0%} valid pixels (nodata) were dropped",
            stacklevel=3,
        )
    return {k: (v[keep] if v is not None else None) for k, v in chips.items()}


def chip_splits(
    chips: dict, size: int, grid: Grid, k: int, block_size: int, fractions: dict, seed: int
) -> np.ndarray:
    """Each chip's split: the user's, or that of the block holding the chip's centre."""
    if chips["split"] is not None:
        return chips["split"].astype(str)
    nbx = -(-grid.width // block_size)
    cy, cx = chips["row"] + size / 2, chips["col"] + size / 2
    block = (cy // block_size).astype(np.int64) * nbx + (cx // block_size).astype(np.int64)
    rep = np.array([len(c) for c in chips["classes"]])
    flat = np.array([c for cs in chips["classes"] for c in cs], dtype=np.int64)
    block_split = assign_blocks(np.repeat(block, rep), flat, np.ones(len(flat)), k, fractions, seed)
    return np.array([block_split[int(b)] for b in block])


def chip_counts(chips: dict, split: np.ndarray, k: int) -> dict[str, np.ndarray]:
    counts = {}
    for s in SPLITS:
        flat = [c for cs in chips["classes"][split == s] for c in cs]
        counts[s] = np.bincount(np.array(flat, dtype=np.int64), minlength=k)
    return counts


def build_chips(
    folder: Path,
    gdf,
    table: ClassTable,
    grid: Grid,
    *,
    chip_size: int,
    nodata,
    block_size: int,
    fractions: dict,
    seed: int,
    multi_label: bool,
) -> dict:
    """Place, filter and split the chips, write ``chips.csv``; returns the manifest's part."""
    k = len(table.classes)
    chips = place_chips(gdf, table, grid, chip_size)
    chips = drop_nodata_chips(chips, folder / "image.tif", chip_size, nodata)
    if len(chips["row"]) == 0:
        raise ImageryError(
            "no classification chip has enough valid pixels (labels over nodata or outside)"
        )
    split = chip_splits(chips, chip_size, grid, k, block_size, fractions, seed)
    counts = chip_counts(chips, split, k)
    if chips["split"] is None:
        counts = {s: v for s, v in counts.items() if fractions.get(s, 0) > 0}
    names = [c["name"] for c in table.classes]
    check_classes(counts, names, "Label chips of another class.")
    reach, notes = _reach(chips, counts, names, block_size, user=chips["split"] is not None)
    with open(folder / CHIPS_FILE, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["chip_id", "row", "col", "size", "class_id", "split"])
        for i in range(len(split)):
            w.writerow(
                [
                    i + 1,
                    int(chips["row"][i]),
                    int(chips["col"][i]),
                    chip_size,
                    ";".join(str(c) for c in chips["classes"][i]),
                    split[i],
                ]
            )
    classes = table.to_json()
    for c in classes:
        c["units"] = int(sum(c["id"] in cs for cs in chips["classes"]))
    return {
        "classes": classes,
        "chips": CHIPS_FILE,
        "chip_size": chip_size,
        "multi_label": multi_label,
        "split_units": {s: int((split == s).sum()) for s in counts},
        "split_counts": {
            s: {c["slug"]: int(v) for c, v in zip(classes, counts[s], strict=True)} for s in counts
        },
        "split_reach": {
            c["slug"]: {
                "splits": reach[c["id"]],
                "how": "column" if chips["split"] is not None else "blocks",
                "note": notes[c["id"]],
            }
            for c in classes
        },
        "split_notes": split_notes(counts, list(counts)),
    }


def _reach(chips: dict, counts: dict, names: list[str], block_size: int, user: bool):
    """Per class: the splits it reaches and, when it misses one, why (also as a warning)."""
    reach = class_reach(counts, 1)
    units = [int(sum(c in cs for cs in chips["classes"])) for c in range(len(names))]
    fix = (
        "move some of its labels to other splits in the split column"
        if user
        else f"label it in other parts of the scene (--block-size {block_size} px apart) for a "
        "held-out metric"
    )
    zeros = [0] * len(names)
    notes = reach_notes(reach, list(counts), names, units, zeros, zeros, "chips", fix)
    for note in [n for n in notes if n] + split_notes(counts, list(counts)):
        warnings.warn(note, stacklevel=4)
    return reach, notes


def read_chips(path: Path) -> dict[str, np.ndarray]:
    """``chips.csv`` as arrays; ``class_ids`` is a list of tuples (one id unless multi-label)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {
        "chip_id": np.array([int(r["chip_id"]) for r in rows], dtype=np.int64),
        "row": np.array([int(r["row"]) for r in rows], dtype=np.int64),
        "col": np.array([int(r["col"]) for r in rows], dtype=np.int64),
        "size": np.array([int(r["size"]) for r in rows], dtype=np.int64),
        "class_ids": [tuple(int(c) for c in r["class_id"].split(";")) for r in rows],
        "split": np.array([r["split"] for r in rows]),
    }
