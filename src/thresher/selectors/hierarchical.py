"""Hierarchical selection (T-SHIRT, METHODS §4.4): oversample by a mean, then keep the steadiest.

1. Ŝ = the γ·b eligible rows with the highest μ̂ (ties by id).
2. S = the b rows of Ŝ with the smallest σ̂ (NaN σ̂ never chosen; ties by id), in that order,
   ascending σ̂, as the reference's `hierarchical_get_top_k_indices` returns them.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from thresher.selectors.base import Selection, check_count, check_ids, keep_mask
from thresher.selectors.topk import top_k


def hierarchical(
    ids: Sequence[str],
    mean: np.ndarray,
    spread: np.ndarray,
    budget: int,
    *,
    gamma: int = 2,
    keep: np.ndarray | None = None,
) -> Selection:
    """The `budget` rows with the smallest `spread` among the `gamma * budget` highest `mean`."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, np.integer)) or gamma < 1:
        raise ValueError(
            f"gamma={gamma!r}: expected an int >= 1 (the oversampling factor; T-SHIRT uses 2)"
        )
    ids = list(ids)
    spread = np.asarray(spread, dtype=np.float64)
    if spread.shape != (len(ids),):
        raise ValueError(
            f"spread has shape {spread.shape} but there are {len(ids)} ids: expected one value per id"
        )
    pool = top_k(ids, mean, int(gamma) * budget, descending=True, keep=keep)
    pos = {i: k for k, i in enumerate(ids)}
    rows = np.array([pos[i] for i in pool.ids], dtype=np.int64)
    final = top_k([ids[r] for r in rows], spread[rows], budget, descending=False)
    note = ""
    if len(final.ids) < budget:
        note = (
            f"only {len(final.ids)} rows have a finite spread among the {len(pool.ids)} with the highest mean "
            f"({pool.eligible} eligible of {len(ids)}); asked for {budget}"
        )
    return Selection(final.ids, budget, pool.eligible, note)


def hierarchical_reference(
    ids: Sequence[str],
    mean: np.ndarray,
    spread: np.ndarray,
    budget: int,
    *,
    gamma: int = 2,
    keep: np.ndarray | None = None,
) -> Selection:
    """T-SHIRT's `tshirt_select.py` (METHODS §12.2): rows in table (file) order, those with a NaN
    mean or spread or not kept are skipped; a min-heap of (mean, position) holds the gamma·b
    largest means (a new row replaces the heap's smallest when larger, `heapq.heappushpop`);
    of those, `heapq.nsmallest(b, heap, key=spread)` (stable over the heap's list order), in
    ascending spread. It returns fewer than b rows when fewer are eligible; the note says so."""
    ids_arr = check_ids(ids)
    check_count(budget)
    n = len(ids_arr)
    mean, spread = np.asarray(mean, np.float64), np.asarray(spread, np.float64)
    ok = keep_mask(keep, n) & np.isfinite(mean) & np.isfinite(spread)
    size = int(gamma) * budget
    heap: list[tuple[float, int]] = []
    for i in np.flatnonzero(ok):
        item = (float(mean[i]), int(i))
        if len(heap) < size:
            heapq.heappush(heap, item)
        elif size:
            heapq.heappushpop(heap, item)
    chosen = heapq.nsmallest(budget, heap, key=lambda item: spread[item[1]])
    eligible = int(ok.sum())
    note = (
        ""
        if len(chosen) == budget
        else f"the reference selection returns {len(chosen)} rows: only {eligible} of {n} are "
        f"eligible (finite mean and spread, kept by the filter); asked for {budget}"
    )
    return Selection(tuple(str(ids_arr[i]) for _, i in chosen), budget, eligible, note)
