"""Spatial splits that keep neighbouring pixels out of different splits, and say what they did.

The scene is cut into square blocks; every label unit belongs to the block holding its centroid;
whole blocks go to train/val/test, greedily to the split whose per-class pixel counts are
furthest below their target share. Of several seeded block orders, the assignment kept has the
fewest classes missing from train, then the fewest (class, split) pairs with under
``min_count`` pixels, then per-class shares closest to target; a class held out nowhere then has
one of its train blocks moved to val (or test) where no class loses a split by it, and a class
still missing from train gets its largest block moved to train. Units of a block share its
split, and val/test pixels are spatially held out.

Few labels are the normal case, so a split is never refused for coverage: a class may reach
only some splits (train only: no held-out metric for it). Classes that miss a split can have
their large polygons cut by the block grid into pieces of different splits
(:mod:`datamodules.pieces`). :func:`class_reach` says per class which splits it reaches, and
:func:`reach_notes` why, as the warnings ``geotune data add`` prints.

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
        overall = target - have.sum(1) / totals.sum()  # ties: the split furthest behind overall
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
    min_count: int = 1,
) -> dict[int, str]:
    """Map block id → split name, balancing per-class pixels towards ``fractions``.

    Train (when asked for) comes first: every class with labels gets pixels in it.
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
    train = names.index("train") if "train" in names else None
    rng = np.random.default_rng(seed)
    best, best_cost = None, None
    for _ in range(max(1, min(64, 200_000 // max(len(blocks), 1)))):
        choice, have = _greedy(rng.permutation(len(blocks)), per_block, totals, target)
        share = have / totals
        no_train = int(((have[train] == 0) & present).sum()) if train is not None else 0
        short = int(((have < min_count) & present).sum())
        cost = (no_train, short, float((((share - target[:, None]) ** 2)[:, present]).sum()))
        if best_cost is None or cost < best_cost:
            best, best_cost = choice, cost
    if train is not None and len(names) > 1:
        best = _hold_out(best, per_block, present, len(names), train, min_count)
    if train is not None:
        in_train = (per_block[best == train] > 0).any(0)
        for c in np.nonzero(present & ~in_train)[0]:  # still missing from train: its largest block
            best[int(np.argmax(per_block[:, c]))] = train
    return {int(blocks[i]): names[int(best[i])] for i in range(len(blocks))}


def _hold_out(choice, per_block, present, n_splits: int, train: int, min_count: int):
    """``choice`` with blocks moved out of train so that classes held out nowhere reach a
    held-out split: a class's two polygons in two blocks go one to train, one to validation.
    The shares alone keep both in train (half a class's pixels is still under train's 70%).

    Per class held out nowhere, its blocks in train are tried smallest first, each to the first
    held-out split that takes it (val, then test). A move is kept when train keeps at least as
    many of the class's pixels as the block takes away, every (class, split) pair reached
    (:func:`class_reach`: train from one pixel, the others from ``min_count``) stays reached,
    and fewer classes are held out nowhere."""
    held = [s for s in range(n_splits) if s != train]

    def reach(ch):
        have = np.zeros((n_splits, per_block.shape[1]))
        np.add.at(have, ch, per_block)
        reached = have >= min_count
        reached[train] = have[train] > 0
        return have, reached & present

    have, reached = reach(choice)
    nowhere = present & ~reached[held].any(0)
    for c in np.nonzero(nowhere)[0]:
        mine = np.nonzero((choice == train) & (per_block[:, c] > 0))[0]
        for i in mine[np.argsort(per_block[mine, c], kind="stable")]:
            if not nowhere[c] or have[train, c] - per_block[i, c] < per_block[i, c]:
                break  # held out now; or train would keep less of it than it gives
            for s in held:
                trial = choice.copy()
                trial[i] = s
                t_have, after = reach(trial)
                still = present & ~after[held].any(0)
                if (after >= reached).all() and still.sum() < nowhere.sum():
                    choice, have, reached, nowhere = trial, t_have, after, still
                    break
    return choice


def unit_splits(
    unit_block: np.ndarray,
    unit_class: np.ndarray,
    unit_pixels: np.ndarray,
    num_classes: int,
    fractions: dict[str, float],
    seed: int,
    user_split: np.ndarray | None = None,
    min_count: int = 1,
) -> np.ndarray:
    """The split of every unit: by balanced blocks, or from ``user_split`` ('' = follow block)."""
    if user_split is None:
        block_split = assign_blocks(
            unit_block, unit_class, unit_pixels, num_classes, fractions, seed, min_count
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
            unit_block[rest],
            unit_class[rest],
            unit_pixels[rest],
            num_classes,
            fractions,
            seed,
            min_count,
        )
    for i in np.nonzero(~given)[0]:
        out[i] = block_split[int(unit_block[i])]
    return out.astype(str)


def split_counts(
    unit_class: np.ndarray, unit_pixels: np.ndarray, unit_split: np.ndarray, k: int, names
) -> dict[str, np.ndarray]:
    """Labelled pixels (or chips) per class in each split of ``names``."""
    return {
        s: np.bincount(
            unit_class[unit_split == s], weights=unit_pixels[unit_split == s], minlength=k
        ).astype(np.int64)
        for s in names
    }


def class_reach(counts: dict[str, np.ndarray], min_count: int) -> list[list[str]]:
    """Per class, the splits holding at least ``min_count`` of its pixels (train: at least 1)."""
    k = len(next(iter(counts.values())))
    return [
        [s for s, arr in counts.items() if arr[c] >= (1 if s == "train" else min_count)]
        for c in range(k)
    ]


def check_classes(counts: dict[str, np.ndarray], class_names: list[str], hint: str) -> None:
    """Refuse what cannot train: no labels in train, or fewer than two classes labelled."""
    total = sum(counts.values())
    labelled = [n for n, v in zip(class_names, total, strict=True) if v > 0]
    if "train" in counts and counts["train"].sum() == 0:
        raise SplitError(
            "no label falls in the train split, so there is nothing to train on. "
            "Put some labels in train (your split column), or drop --split-column."
        )
    if len(labelled) < 2:
        which = f"only one class ({labelled[0]!r})" if labelled else "no class"
        raise SplitError(f"{which} is labelled: a model needs at least two classes. {hint}")


def reach_notes(
    reach: list[list[str]],
    requested: list[str],
    class_names: list[str],
    units: list[int],
    pieces: list[int],
    cut: list[int],
    unit_word: str,
    fix: str,
) -> list[str | None]:
    """Per class: why it does not reach every requested split (None when it does, uncut)."""
    notes: list[str | None] = []
    for c, name in enumerate(class_names):
        got = reach[c]
        n = units[c]
        what = f"{n} {unit_word if n != 1 else unit_word.rstrip('s')}"
        if n == 0:
            notes.append(f"{name}: no labelled pixel, the model cannot learn it")
        elif "train" not in got:
            notes.append(f"{name}: no training labels ({what}), the model cannot learn it")
        elif cut[c]:
            cuts = f"cut into {pieces[c]} pieces"
            if cut[c] < n:  # "2 polygons, 1 of them cut into 3 pieces across train/val"
                cuts = f"{cut[c]} of them {cuts}"
            notes.append(
                f"{name}: {what}, {cuts} across {'/'.join(got)} (metrics on it are optimistic)"
            )
        elif got == ["train"] and len(requested) > 1:
            notes.append(f"{name}: train only, no held-out metric ({what}); {fix}")
        elif set(requested) - set(got):
            missing = sorted(set(requested) - set(got), key=SPLITS.index)
            label = {"val": "validation", "test": "test"}
            notes.append(
                f"{name}: {'/'.join(got)} only, no {' or '.join(label[s] for s in missing)} "
                f"metric for it ({what}); {fix}"
            )
        else:
            notes.append(None)
    return notes


def split_notes(counts: dict[str, np.ndarray], requested: list[str]) -> list[str]:
    """What the whole split means for training: no validation labels, no test labels."""
    notes = []
    if "val" in requested and counts.get("val", np.zeros(1)).sum() == 0:
        notes.append(
            "no validation labels: training runs the configured epochs without early stopping "
            "and registers the last epoch"
        )
    if "test" in requested and counts.get("test", np.zeros(1)).sum() == 0:
        notes.append("no test labels: no held-out test metric")
    return notes
