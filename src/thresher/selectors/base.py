"""What every selector shares: the `Selection` it returns, budgets as row counts, and the checks
of its inputs (unique ids, a row count, one float score per id, a bool keep mask).

Contract (DESIGN "Contracts"): the count asked for is the count returned, or the `Selection`
says why fewer; a null or non-finite score is never selected and never turned into a number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    """Chosen ids in rank order. `note` is "" when `len(ids) == requested`, else why fewer."""

    ids: tuple[str, ...]
    requested: int
    eligible: int
    note: str


def budget_count(budget: float | int, n: int) -> int:
    """Turn a budget into a number of rows out of `n`.

    A float in (0, 1] is a fraction: `int(budget * n)`, floored as Cherry (`data_by_IFD.py`)
    and Superfiltering (`select_data.py`) do, so 0.1 of 52002 is 5200 (METHODS §1.6). This is
    Python's float product, floating-point floor included (0.29 * 100 gives 28), as in the
    reference scripts; a fraction of a small `n` may be 0 rows. An int >= 1 is a count of rows.
    Mind the type: `1` is one row, `1.0` is every row.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} is not a number of rows: expected an int >= 0")
    if isinstance(budget, bool):
        raise ValueError(
            f"budget={budget!r} is a bool: expected a fraction in (0, 1] (a float such as 0.05) "
            "or a row count >= 1 (an int such as 500)"
        )
    if isinstance(budget, (int, np.integer)):
        if budget < 1:
            raise ValueError(
                f"budget={budget} rows: expected a row count >= 1 (an int such as 500) "
                "or a fraction in (0, 1] (a float such as 0.05)"
            )
        return int(budget)
    if isinstance(budget, (float, np.floating)):
        if not 0.0 < budget <= 1.0:
            whole = budget > 1 and float(budget).is_integer()
            hint = f"; for {int(budget)} rows pass the int {int(budget)}" if whole else ""
            raise ValueError(
                f"budget={budget!r} is a float outside (0, 1]: a float is a fraction of the rows "
                f"(0.05 is 5%), an int is a row count{hint}"
            )
        return int(budget * n)
    raise ValueError(
        f"budget={budget!r} ({type(budget).__name__}) is not a budget: expected a fraction in "
        "(0, 1] (a float such as 0.05) or a row count >= 1 (an int such as 500)"
    )


def shortfall(eligible: int, n: int, budget: int, rule: str) -> str:
    return f"only {eligible} of {n} rows are eligible ({rule}); asked for {budget}"


def check_ids(ids: Sequence[str]) -> np.ndarray:
    ids = list(ids)
    if len(set(ids)) != len(ids):
        dup = [i for i, c in Counter(ids).items() if c > 1]
        raise ValueError(f"ids must be unique, but {len(dup)} repeat, e.g. {dup[:3]}")
    return np.array(ids, dtype=str)


def check_count(budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(
            f"budget={budget!r}: a selector takes a row count (an int >= 0); "
            "turn a fraction into a count with budget_count(fraction, n_rows)"
        )


def as_float(scores: np.ndarray | Sequence[float | None], n: int) -> np.ndarray:
    """Scores as float64 with None as NaN (so it is never selected, never a number)."""
    arr = np.asarray(scores)
    if arr.dtype == object:
        arr = np.array([np.nan if s is None else s for s in arr], dtype=np.float64)
    arr = arr.astype(np.float64)
    if arr.shape != (n,):
        raise ValueError(
            f"scores has shape {arr.shape} but there are {n} ids: expected one score per id"
        )
    return arr


def keep_mask(keep: np.ndarray | None, n: int) -> np.ndarray:
    if keep is None:
        return np.ones(n, dtype=bool)
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != (n,):
        raise ValueError(
            f"keep has dtype {keep.dtype} and shape {keep.shape}: "
            f"expected a bool mask of shape ({n},), one entry per id"
        )
    return keep
