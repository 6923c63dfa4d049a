"""Coverage selectors over per-sample tag sets (MADS, METHODS §6.2 step 8; InsTag's Algorithm 1).

`tags[i]` is a sorted int array of tag ids, `weights[t]` the weight of tag t. Budgets are exact:
both strategies return exactly `budget` eligible rows (or all eligible rows, with a note), in
selection order, with no duplicates. Ties break by id.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from thresher.choices import check_choice
from thresher.selectors.base import Selection, check_count, check_ids, keep_mask, shortfall

STRATEGIES = ("complexity_first", "greedy_max_coverage")


def complexity_first(
    tags: list[np.ndarray], weights: np.ndarray, budget: int, order: np.ndarray
) -> list[int]:
    """InsTag complexity-first diverse sampling over `order` (rows sorted by |T_i| descending).

    In passes starting from an empty covered set U: take row i when its uncovered weight
    sum_{t in T_i \\ U} w(t) > 0, then U <- U | T_i; stop as soon as `budget` rows are taken;
    a pass that adds nothing ends the passes and the rest is filled in sorted order.
    """
    chosen: list[int] = []
    taken = np.zeros(len(tags), dtype=bool)
    while len(chosen) < budget:
        covered = np.zeros(len(weights), dtype=bool)
        added = 0
        for i in order:
            if taken[i]:
                continue
            t = tags[i]
            if weights[t[~covered[t]]].sum() > 0:
                chosen.append(int(i))
                taken[i] = True
                covered[t] = True
                added += 1
                if len(chosen) == budget:
                    return chosen
        if added == 0:
            chosen += [int(i) for i in order if not taken[i]][: budget - len(chosen)]
            return chosen
    return chosen


def greedy_max_coverage(
    tags: list[np.ndarray], weights: np.ndarray, budget: int, order: np.ndarray
) -> list[int]:
    """Lazy greedy weighted max coverage: repeatedly take argmax_i of the uncovered weight of T_i
    (ties by |T_i|, then by position in `order`, which breaks ties by id). Gains only shrink as U
    grows, so a stale heap entry is an upper bound and is recomputed when popped. When the best
    gain is 0, U is reset to empty and the remaining rows compete again."""
    rank = {int(i): r for r, i in enumerate(order)}
    chosen: list[int] = []
    taken = np.zeros(len(tags), dtype=bool)

    def gain(i: int, covered: np.ndarray) -> float:
        t = tags[i]
        return float(weights[t[~covered[t]]].sum())

    while len(chosen) < budget:
        covered = np.zeros(len(weights), dtype=bool)
        heap = [
            (-gain(int(i), covered), -len(tags[i]), rank[int(i)], int(i))
            for i in order
            if not taken[i]
        ]
        if not heap:
            break
        heapq.heapify(heap)
        progress = False
        while heap and len(chosen) < budget:
            _, size, r, i = heapq.heappop(heap)
            g = gain(i, covered)
            if heap and (-g, size, r) > heap[0][:3]:  # stale: someone else may be better now
                heapq.heappush(heap, (-g, size, r, i))
                continue
            if g <= 0:
                break  # nothing adds coverage: reset U
            chosen.append(i)
            taken[i] = True
            covered[tags[i]] = True
            progress = True
        if not progress:  # no row carries any weight at all: fill in order
            chosen += [int(i) for i in order if not taken[i]][: budget - len(chosen)]
            break
    return chosen


def select_coverage(
    ids: Sequence[str],
    tags: list[np.ndarray],
    weights: np.ndarray,
    budget: int,
    *,
    strategy: str = "complexity_first",
    keep: np.ndarray | None = None,
) -> Selection:
    """Exactly `budget` eligible rows by coverage of their tags (fewer only when fewer are
    eligible, with a note). Rows are ordered by |T_i| descending, ties by id ascending."""
    check_choice("strategy", strategy, STRATEGIES)
    ids_arr = check_ids(ids)
    check_count(budget)
    if len(tags) != len(ids_arr):
        raise ValueError(
            f"{len(tags)} tag sets for {len(ids_arr)} ids: expected one tag set per id"
        )
    mask = keep_mask(keep, len(ids_arr))
    rows = np.flatnonzero(mask)
    sizes = np.array([len(tags[i]) for i in rows], dtype=np.int64)
    order = rows[np.lexsort((ids_arr[rows], -sizes))]
    pick = complexity_first if strategy == "complexity_first" else greedy_max_coverage
    chosen = pick(tags, np.asarray(weights, dtype=np.float64), min(budget, len(rows)), order)
    eligible = len(rows)
    note = (
        ""
        if len(chosen) == budget
        else shortfall(eligible, len(ids_arr), budget, "scored, with activations")
    )
    return Selection(tuple(str(ids_arr[i]) for i in chosen), budget, eligible, note)
