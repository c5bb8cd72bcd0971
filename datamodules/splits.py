"""Spatial splits that keep neighbouring pixels out of different splits.

The scene is cut into square blocks; every label unit belongs to the block holding its centroid;
whole blocks go to train/val/test, greedily to the split whose per-class pixel counts are
furthest below their target share (best of several seeded block orders). Units of a block share its split,
so no polygon is ever divided between splits, and val/test pixels are spatially held out.
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


def check_split_coverage(
    counts: dict[str, np.ndarray], class_names: list[str], min_pixels: int
) -> None:
    """Every class needs ``min_pixels`` labelled pixels in every split; say which do not."""
    problems = []
    for split, arr in counts.items():
        for k, name in enumerate(class_names):
            if arr[k] < min_pixels:
                problems.append(f"{name!r} has {int(arr[k])} px in {split}")
    if problems:
        raise SplitError(
            "too few labelled pixels for the requested split: "
            + "; ".join(problems)
            + f" (need at least {min_pixels} per class and split). Add labels for those classes, "
            "use a smaller --block-size so more blocks exist, or change --split-fractions."
        )
