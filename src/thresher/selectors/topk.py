"""Rank selectors: the top or the middle `budget` rows by a score.

Contract (DESIGN "Contracts"): the count asked for is the count returned, or the `Selection`
says why fewer; ties break by id (string order) whatever the direction; a null or non-finite
score is never selected and never turned into a number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thresher.selectors.base import (
    Selection,
    as_float,
    check_count,
    check_ids,
    keep_mask,
    shortfall,
)


def top_k(
    ids: Sequence[str],
    scores: np.ndarray | Sequence[float | None],
    budget: int,
    *,
    descending: bool = True,
    keep: np.ndarray | None = None,
) -> Selection:
    """The `budget` rows with the highest (or, `descending=False`, lowest) finite score.

    Rows whose score is NaN, inf or None, or whose `keep` is False, are never selected.
    Ties break by id ascending in both directions. Returned in rank order.
    """
    order, mask = _ranked(ids, scores, keep, budget, descending)
    return _selection(ids, order[:budget], budget, mask)


def middle_k(
    ids: Sequence[str],
    scores: np.ndarray | Sequence[float | None],
    budget: int,
    keep: np.ndarray | None = None,
) -> Selection:
    """The middle `budget` rows of the eligible rows sorted ascending (ties by id), as
    InstructDiff's PPL-Mid and Entropy-Mid baselines: start at (n_eligible - budget) // 2."""
    order, mask = _ranked(ids, scores, keep, budget, descending=False)
    start = max(len(order) - budget, 0) // 2
    return _selection(ids, order[start : start + budget], budget, mask)


def _ranked(
    ids: Sequence[str],
    scores: np.ndarray | Sequence[float | None],
    keep: np.ndarray | None,
    budget: int,
    descending: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The eligible row indices sorted by (score, id), and the eligible mask."""
    ids_arr = check_ids(ids)
    check_count(budget)
    values = as_float(scores, len(ids_arr))
    mask = np.isfinite(values) & keep_mask(keep, len(ids_arr))
    rows = np.flatnonzero(mask)
    key = -values[rows] if descending else values[rows]
    # lexsort sorts by the last key first: score, then id ascending for ties
    return rows[np.lexsort((ids_arr[rows], key))], mask


def _selection(ids: Sequence[str], chosen: np.ndarray, budget: int, mask: np.ndarray) -> Selection:
    eligible = int(mask.sum())
    rule = "score finite and kept by the filter"
    note = "" if len(chosen) == budget else shortfall(eligible, len(mask), budget, rule)
    return Selection(tuple(str(ids[int(i)]) for i in chosen), budget, eligible, note)
