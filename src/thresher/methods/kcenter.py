"""k-center (Sener & Savarese, ICLR 2018): the greedy k-center core set, the standard diversity
baseline that core-set selection papers compare against.

It reads no model pass: `fit` embeds each instruction with MIWV's embedder and text (cached in
the run folder, so a run folder that holds `miwv` embeds nothing again), the embeddings go into
scores.parquet (so `thresher select` re-selects without a model), and the selector picks b
centers, each the row farthest from the centers already picked, from a seeded random start.
"""

from __future__ import annotations

import numpy as np

from thresher.methods.base import (
    FitContext,
    Fitted,
    Method,
    SelectContext,
    SignalInputs,
    SignalTable,
    method,
)
from thresher.methods.miwv import instruction_text
from thresher.methods.table import budget_rows
from thresher.selectors.base import Selection
from thresher.selectors.kcenter import METRICS, kcenter_greedy


@method(
    "kcenter",
    paper="Sener & Savarese, Active Learning for Convolutional Neural Networks: A Core-Set Approach, ICLR 2018",
    summary="greedy k-center core set on the instruction embeddings (MIWV's); the diversity baseline",
    passes="instruction embeddings only (shared with miwv)",
)
def kcenter(
    model: str | None = None,
    *,
    embedder: str = "all-minilm-l6-v2",  # ours: MIWV's embedder, so a run folder holding miwv's embeddings reuses them
    metric: str = "euclidean",  # Sener & Savarese Alg. 1 and google/active-learning: l2 distance
) -> Method:
    """b centers by greedy k-center over the instruction embeddings, from a seeded random start."""
    from thresher.choices import check_choice
    from thresher.embed import resolve_embedder

    check_choice("metric", metric, METRICS)
    resolve_embedder(embedder)  # a packaged alias whose wheel is missing fails in `validate`

    def fit(ctx: FitContext) -> Fitted:
        return Fitted(state=ctx.embed(embedder, [instruction_text(s) for s in ctx.samples]))

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        col = np.empty(len(x.samples), dtype=object)
        col[:] = list(np.asarray(x.state, dtype=np.float32))
        return {"embedding": col}

    def select(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in table.columns["embedding"]])
        b = budget_rows(table, budget, ctx, "rows")
        return kcenter_greedy(table.ids, emb, b, seed=ctx.seed, keep=table.eligible, metric=metric)

    params = dict(embedder=embedder, metric=metric)
    return Method("kcenter", params, {}, signals, None, select, fit=fit)
