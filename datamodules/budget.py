"""Label budgets: train on ``budget`` label units (polygons, mask regions, classification chips).

The units kept are stratified per class: every class present gets at least one, the rest are
shared in proportion to each class's number of training units. Budgets are NESTED: the units
kept for 50 are a subset of those kept for 100, so a learning curve over budgets compares like
with like. Two sequences make that so, both fixed by the seed and independent of the budget:

- the order in which classes receive units: Huntington-Hill apportionment (a divisor method,
  hence house-monotone: raising the budget never takes a unit away from a class; every class
  gets its first unit before any gets a second, then priority n_c / sqrt(q (q + 1)));
- within each class, one seeded random order of its units; a class allotted q units keeps the
  first q of it.

Validation and test units are never subsampled.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .errors import UserError


class BudgetError(UserError):
    pass


def allocation_order(counts: dict[int, int]) -> list[int]:
    """The class receiving each successive unit (length = sum of counts)."""
    heap = [(-math.inf, -n, c) for c, n in sorted(counts.items()) if n > 0]
    heapq.heapify(heap)
    given = dict.fromkeys(counts, 0)
    order = []
    while heap:
        _, neg_n, c = heapq.heappop(heap)
        order.append(c)
        given[c] += 1
        q, n = given[c], -neg_n
        if q < n:
            heapq.heappush(heap, (-n / math.sqrt(q * (q + 1)), neg_n, c))
    return order


def select_budget(
    unit_ids: np.ndarray, unit_class: np.ndarray, budget: int, seed: int
) -> np.ndarray:
    """The ``budget`` unit ids to keep (all when the budget covers them), sorted."""
    unit_ids, unit_class = np.asarray(unit_ids), np.asarray(unit_class)
    classes = sorted(int(c) for c in np.unique(unit_class))
    if budget < len(classes):
        raise BudgetError(
            f"data.budget={budget} is below the {len(classes)} classes present in the training "
            f"split; at least one unit per class is kept, so use data.budget >= {len(classes)}"
        )
    if budget >= len(unit_ids):
        return np.sort(unit_ids)
    per_class = {}
    for c in classes:
        ids = np.sort(unit_ids[unit_class == c])
        per_class[c] = ids[np.random.default_rng([seed, c]).permutation(len(ids))]
    quota = dict.fromkeys(classes, 0)
    for c in allocation_order({c: len(v) for c, v in per_class.items()})[:budget]:
        quota[c] += 1
    return np.sort(np.concatenate([per_class[c][: quota[c]] for c in classes]))
