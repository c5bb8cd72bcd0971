"""Spatial splits that keep neighbouring pixels out of different splits.

The scene is cut into square blocks; every label unit belongs to the block holding its centroid;
whole blocks go to train/val/test, greedily to the split whose per-class pixel counts are
furthest below their target share (best of several seeded block orders). Units of a block share its split,
so no polygon is ever divided between splits, and val/test pixels are spatially held out.

A user split column (``--split-column``) fixes the split of every labelled unit instead; units
without one (background regions) then follow their block: the split holding most of the block's
user-labelled pixels, or for blocks without user labels the balanced block assignment above.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

SPLITS = ("train", "val", "test")


class SplitError(UserError):
    pass


def _greedy(order, per_block, totals, target) -> tuple[np.ndarray, np.ndarray]:
    """Assign blocks in ``order`` to the split furthest below its target share of their classes."""
    have = np.zeros((len(target), per_block.shape[1]))
    choice = np.zeros(len(per_block), dtype=np.int64)
    for i in order:
        weight = per_block[i] / totals
        deficit = (target[:, None] - have / totals) * (weight > 0)
        score = (deficit * weight).sum(1)
        overall = (
            target - have.sum(1) / totals.sum()
        )  # ties go to the split furthest behind overall
        s = int(np.argmax(score + 1e-6 * overall))
        have[s] += per_block[i]
        choice[i] = s
    return choice, have


def assign_blocks(
    unit_block: np.ndarray,
    unit_class: np.ndarray,
    unit_pixels: np.ndarray,
    num_classes: int,
    fractions: dict[str, float],
    seed: int,
) -> dict[int, str]:
    """Map block id → split name, balancing per-class pixels towards ``fractions``.

    The greedy pass runs over several seeded block orders; the assignment kept is the one where
    the fewest (class, split) pairs are empty, then the per-class shares are closest to target.
    """
    names = [s for s in SPLITS if fractions.get(s, 0) > 0]
    target = np.array([fractions[s] for s in names], dtype=float)
    target /= target.sum()
    blocks = np.unique(unit_block)
    per_block = np.zeros((len(blocks), num_classes))
    index = {b: i for i, b in enumerate(blocks)}
    for b, c, n in zip(unit_block, unit_class, unit_pixels, strict=True):
        per_block[index[b], c] += n
    present = per_block.sum(0) > 0
    totals = per_block.sum(0) + 1e-9
    rng = np.random.default_rng(seed)
    best, best_cost = None, None
    for _ in range(max(1, min(64, 200_000 // max(len(blocks), 1)))):
        choice, have = _greedy(rng.permutation(len(blocks)), per_block, totals, target)
        share = have / totals
        empty = int(((have == 0) & present).sum())
        cost = (empty, float((((share - target[:, None]) ** 2)[:, present]).sum()))
        if best_cost is None or cost < best_cost:
            best, best_cost = choice, cost
    return {int(blocks[i]): names[int(best[i])] for i in range(len(blocks))}


def unit_splits(
    unit_block: np.ndarray,
    unit_class: np.ndarray,
    unit_pixels: np.ndarray,
    num_classes: int,
    fractions: dict[str, float],
    seed: int,
    user_split: np.ndarray | None = None,
) -> np.ndarray:
    """The split of every unit: by balanced blocks, or from ``user_split`` ('' = follow block)."""
    if user_split is None:
        block_split = assign_blocks(
            unit_block, unit_class, unit_pixels, num_classes, fractions, seed
        )
        return np.array([block_split[int(b)] for b in unit_block])
    user_split = np.asarray(user_split, dtype=object)
    given = user_split != ""
    out = user_split.copy()
    if given.all():
        return out.astype(str)
    block_split: dict[int, str] = {}
    for b in np.unique(unit_block[given]):
        sel = given & (unit_block == b)
        names, inv = np.unique(user_split[sel].astype(str), return_inverse=True)
        block_split[int(b)] = str(names[np.argmax(np.bincount(inv, weights=unit_pixels[sel]))])
    rest = ~given & ~np.isin(unit_block, list(block_split))
    if rest.any():
        block_split |= assign_blocks(
            unit_block[rest], unit_class[rest], unit_pixels[rest], num_classes, fractions, seed
        )
    for i in np.nonzero(~given)[0]:
        out[i] = block_split[int(unit_block[i])]
    return out.astype(str)


def check_split_coverage(
    counts: dict[str, np.ndarray],
    class_names: list[str],
    min_count: int,
    what: str = "labelled pixels",
    user_splits: bool = False,
) -> None:
    """Every class needs ``min_count`` labelled pixels (or chips) in every split; say which do not."""
    unit = "px" if what == "labelled pixels" else what
    problems = []
    for split, arr in counts.items():
        for k, name in enumerate(class_names):
            if arr[k] < min_count:
                problems.append(f"{name!r} has {int(arr[k])} {unit} in {split}")
    if problems:
        fix = (
            "Add labels for those classes or move some of them to those splits in the split column."
            if user_splits
            else "Add labels for those classes, use a smaller --block-size so more blocks exist, "
            "or change --split-fractions."
        )
        raise SplitError(
            f"too few {what} for the requested split: "
            + "; ".join(problems)
            + f" (need at least {min_count} per class and split). {fix}"
        )
