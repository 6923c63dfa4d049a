"""Trim-then-rank: drop both tails of one score, then take the lowest of another
(InstructDiff §3.3-3.4, Alg. 1; METHODS §7.3 steps 3-4).

Contract as every selector: ties break by id, a non-finite score is never selected, the count
asked for is the count returned or the `Selection` says why fewer. `instructdiff_reference`
follows the reference code instead (`--reproduce`, METHODS §12.3): ties keep the rows' order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thresher.choices import check_choice
from thresher.selectors.base import Selection, as_float, check_count, check_ids, keep_mask

BUDGET_UNITS = ("samples", "tokens")
# how rows with equal values are ordered: by id (thresher), or by their position in the table,
# i.e. file order (the reference's stable Python `sorted`)
TIES = ("id", "position")


def trim_both_ends(
    ids: Sequence[str],
    values: np.ndarray,
    gamma: float,
    keep: np.ndarray | None = None,
    *,
    ties: str = "id",
) -> np.ndarray:
    """Mask of the rows left after dropping `int(gamma * N)` rows from each end of `values`
    sorted ascending, N = the kept rows with a finite value. If 2·int(γN) >= N nothing is
    dropped, as the reference `filter_by_diff_nll`. Other rows are never kept. Equal values
    are ordered by id, or with `ties="position"` by row position as the reference's stable
    sort of the rows in file order (which tied rows fall in a tail differs)."""
    check_choice("ties", ties, TIES)
    ids_arr = check_ids(ids)
    v = as_float(values, len(ids_arr))
    order = _trimmed(ids_arr, v, gamma, keep_mask(keep, len(ids_arr)), ties)
    out = np.zeros(len(ids_arr), dtype=bool)
    out[order] = True
    return out


def _trimmed(
    ids_arr: np.ndarray, v: np.ndarray, gamma: float, keep: np.ndarray, ties: str
) -> np.ndarray:
    """The rows `trim_both_ends` keeps, ascending by value (ties as asked)."""
    if not 0.0 <= gamma < 0.5:
        raise ValueError(
            f"gamma={gamma!r}: expected the fraction trimmed from each end in [0, 0.5), e.g. 0.1"
        )
    rows = np.flatnonzero(np.isfinite(v) & keep)
    if ties == "id":
        order = rows[np.lexsort((ids_arr[rows], v[rows]))]
    else:
        order = rows[np.argsort(v[rows], kind="stable")]
    n = len(order)
    cut = int(n * gamma)  # filter_by_diff_nll: int(len(sorted_data) * reject_ratio)
    return order if 2 * cut >= n else order[cut : n - cut]


def instructdiff_reference(
    ids: Sequence[str],
    diff_nll: np.ndarray,
    diff_entropy: np.ndarray,
    n_tokens: np.ndarray,
    *,
    gamma: float,
    beta: float,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, Selection]:
    """InstructDiff's selection as its code does it (`selection.py` @ 28adfe3, `pipeline.py`).

    Rows are in file order; `keep` marks the rows the reference scored (rows with a non-finite
    value are left out, which fp32 scoring never produces). `total_tokens` is the sum of
    `n_tokens` over them, before any trim (`get_total_tokens(scored)`). `filter_by_diff_nll`
    sorts them by `diff_nll` (stable) and drops `int(N * gamma)` from each end (none if that
    covers them all; with gamma = 0 the rows stay in file order). `select_lowest_diff_entropy`
    sorts the survivors, in that order, by `diff_entropy` (stable: equal values keep the ΔNLL
    order, then file order) and appends rows until their summed `n_tokens` reaches
    `int(total_tokens * beta)`: the row that reaches it is included (the selection overshoots),
    and the first row is always taken, even for a budget of 0.

    Returns the mask of the survivors of the trim (the rows to label as trimmed are `keep` and
    not in it) and the selection in pick order. Unlike the code, `beta` outside (0, 1] is an
    error (the code then returns every survivor), and when the survivors hold fewer tokens than
    the budget they are all returned with a note saying so (the code says nothing).
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(
            f"beta={beta!r}: expected the selected fraction of the response tokens in (0, 1], "
            "e.g. 0.1"
        )
    ids_arr = check_ids(ids)
    n = len(ids_arr)
    dnll, dh = as_float(diff_nll, n), as_float(diff_entropy, n)
    if n_tokens is None or np.shape(n_tokens) != (n,):
        raise ValueError(
            f"n_tokens has shape {None if n_tokens is None else np.shape(n_tokens)}: expected one "
            f"token count per id ({n})"
        )
    tokens = np.asarray(n_tokens, dtype=np.int64)
    scored = keep_mask(keep, n) & np.isfinite(dnll) & np.isfinite(dh)
    total = int(tokens[scored].sum())
    budget = int(total * beta)  # select_lowest_diff_entropy: int(total_tokens * select_ratio)
    order = (
        np.flatnonzero(scored) if gamma == 0 else _trimmed(ids_arr, dnll, gamma, scored, "position")
    )
    survivors = np.zeros(n, dtype=bool)
    survivors[order] = True
    ranked = order[np.argsort(dh[order], kind="stable")]
    cum = np.cumsum(tokens[ranked])
    taken = min(int(np.searchsorted(cum, budget, side="left")) + 1, len(ranked))
    chosen = ranked[:taken]
    got = int(cum[taken - 1]) if taken else 0
    if not taken:
        note = f"no row is eligible (scored, with a finite ΔNLL and ΔH) among {n}"
    elif got < budget:
        note = (
            f"the {len(ranked)} rows left after the ΔNLL trim hold {got} response tokens, fewer "
            f"than int({total} * {beta}) = {budget}: all of them are selected, as the reference does"
        )
    else:
        note = ""
    selection = Selection(
        tuple(str(ids_arr[i]) for i in chosen),
        taken if not note else budget,
        int(survivors.sum()),
        note,
    )
    return survivors, selection


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
