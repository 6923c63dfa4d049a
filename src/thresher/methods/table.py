"""From signal columns to a selection: the signal table, the declarative filters (applied by
`apply_filters`, the one place that writes `filtered:` and `nan_score` statuses), and the
selectors methods declare (each a small callable over the table, calling a pure selector).

A filter only looks at rows still "ok"; filters run in the order the method lists them, so
`Finite` before a threshold means a NaN is reported as `nan_score`, never as filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from thresher.choices import check_choice
from thresher.methods.base import (
    Method,
    SelectContext,
    SignalInputs,
    Signals,
    SignalTable,
    first_failure,
)
from thresher.selectors.base import Selection, budget_count
from thresher.selectors.hierarchical import hierarchical
from thresher.selectors.random import random_k
from thresher.selectors.topk import middle_k, top_k
from thresher.selectors.trim import trim_both_ends


@dataclass(frozen=True)
class Finite:
    """Rows whose `columns` are not all finite get `status` (a score that cannot be computed is
    reported, never replaced by a number)."""

    columns: tuple[str, ...]
    status: str = "nan_score"

    def keep(self, ids: list[str], cols: dict[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        return np.all([np.isfinite(np.asarray(cols[c], dtype=np.float64)) for c in self.columns], 0)


@dataclass(frozen=True)
class Keep:
    """Rows whose bool `column` is False get `status`."""

    column: str
    status: str

    def keep(self, ids: list[str], cols: dict[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        return np.asarray(cols[self.column], dtype=bool)


@dataclass(frozen=True)
class Below:
    """Keep rows with `column` < `limit` (or <= with `inclusive`); the others get `status`."""

    column: str
    limit: float
    inclusive: bool
    status: str

    def keep(self, ids: list[str], cols: dict[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        v = np.asarray(cols[self.column], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return v <= self.limit if self.inclusive else v < self.limit


@dataclass(frozen=True)
class TrimTails:
    """Drop int(gamma * N) rows from each end of `column` sorted ascending, N = the rows still ok
    (InstructDiff's bi-directional ΔNLL trim; `selectors.trim.trim_both_ends`)."""

    column: str
    gamma: float
    status: str
    ties: str = "id"  # or "position": equal values in table (file) order, as a stable sort

    def keep(self, ids: list[str], cols: dict[str, np.ndarray], ok: np.ndarray) -> np.ndarray:
        return trim_both_ends(ids, cols[self.column], self.gamma, keep=ok, ties=self.ties) | ~ok


def apply_filters(
    ids: list[str], columns: dict[str, np.ndarray], status: list[str], filters: Sequence
) -> list[str]:
    """The statuses after each filter in turn; only rows still "ok" change."""
    status = list(status)
    for f in filters:
        ok = np.array([s == "ok" for s in status], dtype=bool)
        kept = f.keep(ids, columns, ok)
        status = [f.status if o and not k else s for s, o, k in zip(status, ok, kept, strict=True)]
    return status


# what a budget fraction is a fraction of: the scored table (every row read that a pass could
# render), the eligible rows (Cherry: int(#kept * rate)), or every row of the file
# (Superfiltering: int(52002 * rate))
BASES = ("rows", "eligible", "rows_read")


def budget_rows(table: SignalTable, budget: float | int, ctx: SelectContext, base: str) -> int:
    check_choice("base", base, BASES)
    n = {"rows": len(table.ids), "eligible": int(table.eligible.sum()), "rows_read": ctx.rows_read}
    return budget_count(budget, n[base])


@dataclass(frozen=True)
class TopK:
    """The b rows with the highest (or lowest) `column` among the eligible."""

    column: str
    descending: bool = True
    base: str = "rows"

    def __call__(self, table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_rows(table, budget, ctx, self.base)
        return top_k(
            table.ids,
            table.columns[self.column],
            b,
            descending=self.descending,
            keep=table.eligible,
        )


@dataclass(frozen=True)
class MiddleK:
    """The middle b rows of the eligible sorted by `column` (InstructDiff's *-Mid baselines)."""

    column: str

    def __call__(self, table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_rows(table, budget, ctx, "rows")
        return middle_k(table.ids, table.columns[self.column], b, keep=table.eligible)


@dataclass(frozen=True)
class RandomK:
    """b eligible rows uniformly without replacement, seeded by the run's seed."""

    def __call__(self, table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_rows(table, budget, ctx, "rows")
        return random_k(table.ids, b, seed=ctx.seed, keep=table.eligible)


@dataclass(frozen=True)
class Hierarchical:
    """The b rows with the smallest `spread` among the gamma·b with the highest `mean` (T-SHIRT)."""

    mean: str
    spread: str
    gamma: int = 2

    def __call__(self, table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_rows(table, budget, ctx, "rows")
        return hierarchical(
            table.ids,
            table.columns[self.mean],
            table.columns[self.spread],
            b,
            gamma=self.gamma,
            keep=table.eligible,
        )


def make_table(method: Method, inputs: SignalInputs, pass_status: list[str]) -> SignalTable:
    """The method's signal table: its columns, each row's first failure (in the passes, then in
    `signals`), then its filters."""
    out = method.signals(inputs)
    columns, status = (out.columns, out.status) if isinstance(out, Signals) else (out, None)
    status = first_failure(pass_status, status) if status is not None else list(pass_status)
    status = apply_filters(inputs.ids, columns, status, method.filters)
    return SignalTable(inputs.ids, columns, status, method.score)
