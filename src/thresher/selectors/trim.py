"""Trim-then-rank: drop both tails of one score, then take the lowest of another
(InstructDiff §3.3-3.4, Alg. 1; METHODS §7.3 steps 3-4).

Contract as every selector: ties break by id, a non-finite score is never selected, the count
asked for is the count returned or the `Selection` says why fewer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thresher.choices import check_choice
from thresher.selectors.base import Selection, as_float, check_count, check_ids, keep_mask

BUDGET_UNITS = ("samples", "tokens")


def trim_both_ends(
    ids: Sequence[str], values: np.ndarray, gamma: float, keep: np.ndarray | None = None
) -> np.ndarray:
    """Mask of the rows left after dropping `int(gamma * N)` rows from each end of `values`
    sorted ascending (ties by id), N = the kept rows with a finite value. If 2·int(γN) >= N
    nothing is dropped, as the reference `filter_by_diff_nll`. Other rows are never kept."""
    if not 0.0 <= gamma < 0.5:
        raise ValueError(
            f"gamma={gamma!r}: expected the fraction trimmed from each end in [0, 0.5), e.g. 0.1"
        )
    ids_arr = check_ids(ids)
    v = as_float(values, len(ids_arr))
    mask = np.isfinite(v) & keep_mask(keep, len(ids_arr))
    rows = np.flatnonzero(mask)
    order = rows[np.lexsort((ids_arr[rows], v[rows]))]
    n = len(order)
    cut = int(gamma * n)
    out = np.zeros(len(ids_arr), dtype=bool)
    out[order if 2 * cut >= n else order[cut : n - cut]] = True
    return out


def lowest_within_budget(
    ids: Sequence[str],
    values: np.ndarray,
    budget: int,
    *,
    keep: np.ndarray | None = None,
    unit: str = "samples",
    tokens: np.ndarray | None = None,
) -> Selection:
    """Rows by `values` ascending (ties by id). `unit="samples"`: the first `budget` rows.
    `unit="tokens"`: rows are added until their summed `tokens` reach `budget` (the row that
    crosses it is included), as InstructDiff's `select_lowest_diff_entropy`."""
    check_choice("unit", unit, BUDGET_UNITS)
    ids_arr = check_ids(ids)
    check_count(budget)
    v = as_float(values, len(ids_arr))
    mask = np.isfinite(v) & keep_mask(keep, len(ids_arr))
    rows = np.flatnonzero(mask)
    order = rows[np.lexsort((ids_arr[rows], v[rows]))]
    eligible = int(mask.sum())
    if unit == "samples":
        chosen = order[:budget]
        note = (
            ""
            if len(chosen) == budget
            else f"only {eligible} of {len(ids_arr)} rows are eligible (finite score, kept by the trim); asked for {budget}"
        )
        return Selection(tuple(str(ids_arr[i]) for i in chosen), budget, eligible, note)
    if tokens is None or np.shape(tokens) != (len(ids_arr),):
        raise ValueError(
            f"unit='tokens' needs one token count per id ({len(ids_arr)}), got {None if tokens is None else np.shape(tokens)}"
        )
    cum = np.cumsum(np.asarray(tokens, dtype=np.int64)[order])
    n = int(np.searchsorted(cum, budget, side="left")) + 1 if budget > 0 else 0
    chosen = order[: min(n, len(order))]
    got = int(cum[len(chosen) - 1]) if len(chosen) else 0
    note = (
        ""
        if got >= budget
        else f"the {eligible} eligible rows hold {got} response tokens; asked for {budget}"
    )
    return Selection(
        tuple(str(ids_arr[i]) for i in chosen), len(chosen) if not note else budget, eligible, note
    )
