"""Label units and their splits: the unit table, cutting units by the split blocks, ``units.csv``.

A label unit is what the labels came as: a polygon, or a connected region of one class within
one split block of a mask (background regions likewise). Units go to train/val/test with the
block holding their centroid (:mod:`datamodules.splits`).

Few labels: when a class cannot reach every split with whole units, its units that span several
blocks are cut by the block grid. Each piece (a unit's pixels in one block) is placed by the
block assignment like a unit; the pieces of one unit that land in one split become one new unit
(``source_unit`` in ``units.csv`` names the polygon it came from). Pixels within ``guard`` px
(Chebyshev distance) of a piece of the same unit in another split form a guard band: unit 0 in
``units.tif``, so no split sees them (``mask.tif`` keeps their class). A cut is kept only when
it lets the class reach more splits. Ingest never refuses for coverage: a class that still
misses a split is said so, per class, in the manifest and as a warning.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from .imagery import Grid, gtiff_profile
from .rasterize import accumulate_units
from .splits import (
    SPLITS,
    assign_blocks,
    check_classes,
    class_reach,
    reach_notes,
    split_counts,
    split_notes,
    unit_splits,
)

GUARD_PIXELS = 8


@dataclass
class UnitTable:
    """One row per unit (arrays of equal length); ``rmin..cmax`` is the bounding box (px)."""

    id: np.ndarray
    cls: np.ndarray
    pixels: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    rmin: np.ndarray
    rmax: np.ndarray
    cmin: np.ndarray
    cmax: np.ndarray
    source: np.ndarray

    @classmethod
    def from_stats(cls, stats: dict, source: dict | None = None) -> UnitTable:
        ids = np.array(sorted(stats), dtype=np.int64)
        st = np.array([stats[u] for u in ids]).reshape(len(ids), 8)
        n = st[:, 0]
        src = np.array([(source or {}).get(int(u), int(u)) for u in ids], dtype=np.int64)
        return cls(
            ids,
            st[:, 3].astype(np.int64),
            n.astype(np.int64),
            st[:, 1] / n,
            st[:, 2] / n,
            *(st[:, i].astype(np.int64) for i in (4, 5, 6, 7)),
            src,
        )

    def take(self, sel) -> UnitTable:
        return UnitTable(*(getattr(self, f.name)[sel] for f in fields(self)))

    def concat(self, other: UnitTable) -> UnitTable:
        return UnitTable(
            *(np.concatenate([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self))
        )

    def blocks(self, block: int, width: int) -> np.ndarray:
        """The block holding each unit's centroid."""
        nbx = -(-width // block)
        return (self.cy // block).astype(np.int64) * nbx + (self.cx // block).astype(np.int64)

    def spans_blocks(self, block: int) -> np.ndarray:
        return (self.rmin // block != self.rmax // block) | (
            self.cmin // block != self.cmax // block
        )


def _windows(shape, step: int, boxes: np.ndarray | None = None):
    """Windows of ``step`` px (multiples of the block) meeting any of ``boxes`` (r0, r1, c0, c1)."""
    h, w = shape
    for row in range(0, h, step):
        for col in range(0, w, step):
            if (
                boxes is not None
                and not (
                    (boxes[:, 0] < row + step)
                    & (boxes[:, 1] >= row)
                    & (boxes[:, 2] < col + step)
                    & (boxes[:, 3] >= col)
                ).any()
            ):
                continue
            yield row, col, Window(col, row, min(step, w - col), min(step, h - row))


def _block_ids(row: int, col: int, h: int, w: int, block: int, nbx: int) -> np.ndarray:
    rr = (np.arange(row, row + h) // block)[:, None]
    cc = (np.arange(col, col + w) // block)[None, :]
    return rr * nbx + cc


def block_pieces(units_path: Path, cand: UnitTable, block: int, shape) -> dict:
    """(unit, block) → [pixels, sum of rows, sum of cols] of the candidate units' pieces."""
    nbx = -(-shape[1] // block)
    step = block * max(1, 1024 // block)
    boxes = np.stack([cand.rmin, cand.rmax, cand.cmin, cand.cmax], 1)
    out: dict = {}
    with rasterio.open(units_path) as src:
        for row, col, win in _windows(shape, step, boxes):
            u = src.read(1, window=win)
            sel = np.isin(u, cand.id)
            if not sel.any():
                continue
            rr, cc = np.nonzero(sel)
            blk = _block_ids(row, col, win.height, win.width, block, nbx)[sel]
            keys, inv, n = np.unique(
                np.stack([u[sel], blk], 1), axis=0, return_inverse=True, return_counts=True
            )
            inv = inv.ravel()
            srow, scol = np.bincount(inv, weights=rr + row), np.bincount(inv, weights=cc + col)
            for i, (unit, b) in enumerate(keys.tolist()):
                acc = out.setdefault((unit, b), np.zeros(3))
                acc += (n[i], srow[i], scol[i])
    return out


def _guard(units: np.ndarray, split: np.ndarray, guard: int) -> np.ndarray:
    """Pixels (of cut units, ``split`` >= 0) within ``guard`` px of the same unit in another split."""
    from scipy.ndimage import maximum_filter, minimum_filter

    big = np.iinfo(np.int64).max
    out = np.zeros(units.shape, dtype=bool)
    size = 2 * guard + 1
    for s in np.unique(split[split >= 0]):
        other = (split >= 0) & (split != s)
        if not other.any():
            continue
        here = split == s
        hi = maximum_filter(np.where(here, units, 0), size=size, mode="constant", cval=0)
        lo = minimum_filter(np.where(here, units, big), size=size, mode="constant", cval=big)
        out |= other & ((hi == units) | (lo == units))
    return out


def rewrite_units(folder: Path, plan: dict, cut: UnitTable, block: int, guard: int, shape):
    """Write a copy of ``units.tif`` with the cut units' pixels as their pieces (``plan``:
    (unit, block) → (piece id, split index)) and the guard band as 0; returns the copy's path
    (``units.tif`` is left as it was) and the pieces' stats (a piece the guard band covers
    whole is absent)."""
    nbx = -(-shape[1] // block)
    keys = np.array(sorted(plan), dtype=np.int64).reshape(-1, 2)
    nblocks = -(-shape[0] // block) * nbx
    flat = keys[:, 0] * nblocks + keys[:, 1]
    piece = np.array([plan[tuple(k)][0] for k in keys.tolist()], dtype=np.int64)
    split = np.array([plan[tuple(k)][1] for k in keys.tolist()], dtype=np.int64)
    step = block * max(1, 1024 // block)
    old, new = folder / "units.tif", folder / ".units-cut.tif"
    stats: dict = {}
    with rasterio.open(old) as src, rasterio.open(folder / "mask.tif") as mask_src:
        profile = gtiff_profile(Grid(src.crs, src.transform, src.width, src.height), 1, "int32", 0)
        with rasterio.open(new, "w", **profile) as dst:
            for row, col, win in _windows(shape, step):
                r0, c0 = max(row - guard, 0), max(col - guard, 0)
                r1 = min(row + win.height + guard, shape[0])
                c1 = min(col + win.width + guard, shape[1])
                u = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                sel = np.isin(u, cut.id)
                if sel.any():
                    blk = _block_ids(r0, c0, r1 - r0, c1 - c0, block, nbx)
                    at = np.searchsorted(flat, u.astype(np.int64) * nblocks + blk)
                    at = np.clip(at, 0, len(flat) - 1)
                    s = np.where(sel, split[at], -1)
                    ids = np.where(sel, piece[at], u)
                    ids[_guard(np.where(sel, u, 0).astype(np.int64), s, guard)] = 0
                    u = ids.astype(np.int32)
                u = u[row - r0 : row - r0 + win.height, col - c0 : col - c0 + win.width]
                dst.write(u, 1, window=win)
                pieces = np.where(np.isin(u, piece), u, 0)
                if pieces.any():
                    accumulate_units(stats, pieces, mask_src.read(1, window=win), row, col)
    return new, stats


def _improves(before: list, after: list, thin: list) -> bool:
    """Whether a cut helps: no class reaches fewer splits, some thin class reaches more."""
    return all(len(a) >= len(b) for a, b in zip(after, before, strict=True)) and any(
        len(after[c]) > len(before[c]) for c in thin
    )


@dataclass
class _Pieces:
    """The candidate units cut at block edges, and the split of each piece and whole unit."""

    units: UnitTable  # the candidate units
    keys: np.ndarray  # [n, 2]: unit id, block of each piece
    pixels: np.ndarray
    cls: np.ndarray
    split: np.ndarray
    largest: dict  # unit id → index of its largest piece
    unit_cls: dict
    whole: UnitTable  # the units not cut
    whole_split: np.ndarray
    block_split: dict  # block → split


def _split_pieces(folder, t: UnitTable, cand, k, grid: Grid, block, fractions, seed, min_count):
    """Cut the candidate units ``cand`` at block edges and split blocks again with the pieces
    (a piece under ``min_count`` pixels, a sliver, follows its unit's largest piece)."""
    ct = t.take(cand)
    pieces = block_pieces(folder / "units.tif", ct, block, (grid.height, grid.width))
    keys = np.array(sorted(pieces), dtype=np.int64).reshape(-1, 2)
    pn = np.array([pieces[tuple(key)][0] for key in keys.tolist()], dtype=np.int64)
    unit_cls = dict(zip(ct.id.tolist(), ct.cls.tolist(), strict=True))
    pc = np.array([unit_cls[u] for u in keys[:, 0].tolist()], dtype=np.int64)
    largest = {}
    for i, u in enumerate(keys[:, 0].tolist()):
        if u not in largest or pn[i] > pn[largest[u]]:
            largest[u] = i
    own = (pn >= min_count) | np.isin(np.arange(len(keys)), list(largest.values()))
    whole = t.take(~cand)
    wb = whole.blocks(block, grid.width)
    bs = assign_blocks(
        np.concatenate([wb, keys[own, 1]]),
        np.concatenate([whole.cls, pc[own]]),
        np.concatenate([whole.pixels, pn[own]]),
        k,
        fractions,
        seed,
        min_count,
    )
    # a sliver follows its unit's largest piece (its block may hold nothing else, and then
    # has no split of its own)
    psplit = np.array(
        [bs[int(keys[largest[u] if not own[i] else i, 1])] for i, u in enumerate(keys[:, 0])],
        dtype=object,
    )
    wsplit = np.array([bs[int(b)] for b in wb], dtype=object)
    return _Pieces(ct, keys, pn, pc, psplit, largest, unit_cls, whole, wsplit, bs)


def _cut_plan(ct: UnitTable, p: _Pieces, improved: set, next_id: int):
    """Which units to cut (those of an improved class whose pieces fall in several splits):
    the plan (unit, block) → (piece id, split index), the cut unit ids, and the split of each
    candidate unit kept whole."""
    plan, cut_ids, keep_whole = {}, [], {}
    for u in ct.id.tolist():
        rows = np.nonzero(p.keys[:, 0] == u)[0]
        names = sorted(set(p.split[rows]), key=SPLITS.index)
        if len(names) == 1 or p.unit_cls[u] not in improved:
            keep_whole[u] = p.split[p.largest[u]]
            continue
        ids = {}
        for n in names:
            ids[n], next_id = next_id, next_id + 1
        for i in rows:
            plan[(u, int(p.keys[i, 1]))] = (ids[p.split[i]], SPLITS.index(p.split[i]))
        cut_ids.append(u)
    return plan, cut_ids, keep_whole


def _after_cut(t: UnitTable, plan, cut_ids, keep_whole, block_split, stats, block, width):
    """The unit table and splits once the units ``cut_ids`` are replaced by their pieces."""
    source = {pid: u for (u, _), (pid, _) in plan.items()}
    pieces_t = UnitTable.from_stats(stats, source) if stats else None
    pid_split = {pid: SPLITS[s] for (pid, s) in plan.values()}
    rest = t.take(~np.isin(t.id, cut_ids))
    rest_split = [
        keep_whole.get(u, block_split.get(int(b)))
        for u, b in zip(rest.id.tolist(), rest.blocks(block, width).tolist(), strict=True)
    ]
    if pieces_t is not None:
        rest_split += [pid_split[int(p)] for p in pieces_t.id]
        rest = rest.concat(pieces_t)
    return rest, np.array(rest_split, dtype=str)


def _cut_thin_classes(
    folder, t: UnitTable, split, k, grid: Grid, block, fractions, seed, min_count, guard, requested
):
    """Cut the units of classes that miss a split, where that lets them reach more splits.

    Returns the unit table and splits (pieces replacing cut units) and the cut unit ids."""
    reach = class_reach(split_counts(t.cls, t.pixels, split, k, requested), min_count)
    thin = [c for c in range(k) if (t.cls == c).any() and len(reach[c]) < len(requested)]
    cand = np.isin(t.cls, thin) & t.spans_blocks(block)
    if not cand.any():
        return t, split, []
    p = _split_pieces(folder, t, cand, k, grid, block, fractions, seed, min_count)
    after = class_reach(
        split_counts(
            np.concatenate([p.whole.cls, p.cls]),
            np.concatenate([p.whole.pixels, p.pixels]),
            np.concatenate([p.whole_split, p.split]).astype(str),
            k,
            requested,
        ),
        min_count,
    )
    if not _improves(reach, after, thin):
        return t, split, []
    improved = {c for c in thin if len(after[c]) > len(reach[c])}
    ct = p.units
    while improved:
        plan, cut_ids, keep_whole = _cut_plan(ct, p, improved, int(t.id.max()) + 1)
        if not cut_ids:
            break
        cut = ct.take(np.isin(ct.id, cut_ids))
        new, stats = rewrite_units(folder, plan, cut, block, guard, (grid.height, grid.width))
        rest, out_split = _after_cut(
            t, plan, cut_ids, keep_whole, p.block_split, stats, block, grid.width
        )
        # the guard band can swallow small pieces whole (13 px cut 8 px from an edge): a class
        # whose pieces then reach no more splits stays whole, the others are cut without it
        after = class_reach(split_counts(rest.cls, rest.pixels, out_split, k, requested), min_count)
        lost = {c for c in improved if len(after[c]) <= len(reach[c])}
        if not lost and _improves(reach, after, thin):
            new.replace(folder / "units.tif")
            return rest, out_split, cut_ids
        new.unlink()
        if not lost:
            break
        improved -= lost
    return t, split, []


def split_units(
    folder: Path,
    unit_stats: dict,
    class_names: list[str],
    grid: Grid,
    block: int,
    fractions: dict,
    seed: int,
    min_count: int,
    user_split=None,
    guard: int = GUARD_PIXELS,
    unit_word: str = "polygons",
) -> dict:
    """Split the label units (cutting where it helps), write ``units.csv``; returns units per
    split, pixels per class and split, per class the splits reached (``reach``: splits, how,
    note), the notes on the whole split, the guard band used, and per class its source units
    (polygons or regions) and pixels."""
    k = len(class_names)
    t = UnitTable.from_stats(unit_stats)
    given = None
    if user_split is not None:  # polygons carry the user's split; background units ('') do not
        given = np.array(
            [user_split[u] if u < len(user_split) else "" for u in t.id.tolist()], dtype=object
        )
    requested = (
        list(SPLITS) if given is not None else [s for s in SPLITS if fractions.get(s, 0) > 0]
    )
    split = unit_splits(
        t.blocks(block, grid.width), t.cls, t.pixels, k, fractions, seed, given, min_count
    )
    cut_ids: list[int] = []
    if given is None and len(requested) > 1:
        t, split, cut_ids = _cut_thin_classes(
            folder, t, split, k, grid, block, fractions, seed, min_count, guard, requested
        )
    counts = split_counts(t.cls, t.pixels, split, k, requested)
    check_classes(
        counts,
        class_names,
        "Label another class, or pass --background NAME to give every unlabelled pixel a class.",
    )
    reach = class_reach(counts, min_count)
    sources = [np.unique(t.source[t.cls == c]) for c in range(k)]
    cut = [int(np.isin(s, cut_ids).sum()) for s in sources]
    pieces = [int((np.isin(t.source, cut_ids) & (t.cls == c)).sum()) for c in range(k)]
    fix = (
        "move some of its labels to other splits in the split column"
        if given is not None
        else f"label it in other parts of the scene (--block-size {block} px apart) for a "
        "held-out metric"
    )
    notes = reach_notes(
        reach, requested, class_names, [len(s) for s in sources], pieces, cut, unit_word, fix
    )
    overall = split_notes(counts, requested)
    for note in [n for n in notes if n] + overall:
        warnings.warn(note, stacklevel=3)
    write_units_csv(folder / "units.csv", t, split, block, grid.width)
    return {
        "split_units": {s: int((split == s).sum()) for s in requested},
        "split_counts": counts,
        "reach": [
            {
                "splits": r,
                "how": "cut" if cut[c] else ("column" if given is not None else "blocks"),
                "note": notes[c],
            }
            for c, r in enumerate(reach)
        ],
        "notes": overall,
        "guard_pixels": guard if cut_ids else 0,
        "source_counts": [len(s) for s in sources],
        "pixel_counts": [int(t.pixels[t.cls == c].sum()) for c in range(k)],
    }


def write_units_csv(path: Path, t: UnitTable, split, block: int, width: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "unit_id",
                "class_id",
                "pixels",
                "block",
                "split",
                "row",
                "col",
                "height",
                "width",
                "source_unit",
            ]
        )
        for i, b in enumerate(t.blocks(block, width).tolist()):
            w.writerow(
                [
                    int(t.id[i]),
                    int(t.cls[i]),
                    int(t.pixels[i]),
                    b,
                    split[i],
                    round(float(t.cy[i]), 1),
                    round(float(t.cx[i]), 1),
                    int(t.rmax[i] - t.rmin[i] + 1),
                    int(t.cmax[i] - t.cmin[i] + 1),
                    int(t.source[i]),
                ]
            )
