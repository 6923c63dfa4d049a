"""MADS (Model-Aware Diverse core-Set selection; arXiv 2605.30857), as a reconstruction:
activation-tag coverage (METHODS §6). The paper's method section and code are not public;
the abstract states "neural activation states" and "coverage-based selection", the captions
name strongly activated neurons, activation tags per layer and layers 1, 8, 15, 20, 27. The
rest follows InsTag's complexity-first coverage with activation tags in place of intention
tags. Every knob of §6.2 is a parameter; docs/methods.md says which are stated and which
inferred.

The pass is the `cond` pass of `ifd` (alpaca template, 512 tokens, log-probs and entropy kept)
plus pooled MLP activations, so `ifd`, `ppl` and `entropy` later reuse it. Tags are stored in
scores.parquet, so `thresher select` re-selects without the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from thresher.choices import check_choice
from thresher.methods.base import (
    Method,
    SelectContext,
    SignalInputs,
    Signals,
    SignalTable,
    StreamedPass,
    method,
    token_counts,
)
from thresher.methods.table import budget_rows
from thresher.passes import PassSpec, Pooling, TokenStats
from thresher.selectors.base import Selection
from thresher.selectors.coverage import STRATEGIES, select_coverage
from thresher.signals import mads as sig

# MADS Fig. 3/10: layers 1, 8, 15 (main) and 20, 27 (appendix) of a 28-layer model (Llama-3.2-3B)
PAPER_LAYERS = (1, 8, 15, 20, 27)
PAPER_DEPTH = 28
# text_scope -> pooled span. "instruction": the user content's tokens only, never the template's
# words (METHODS §6.2.2 "pool over the user-content tokens only"); "prompt": the whole prompt,
# template words included (what "instruction" pooled before, kept as an option)
SCOPES = {"instruction": "user", "prompt": "prompt", "full": "all", "response": "response"}
# neuron -> (pooled source, MLP tap): the activation function's output, the down projection's
# input (SiLU(gate) * up in gated MLPs), or the residual stream
NEURONS = {
    "act": ("mlp", "act"),
    "down_proj_input": ("mlp", "down_proj_input"),
    "hidden": ("hidden", "act"),
}


def pool_pass(
    model: str,
    *,
    layers: str | list[int] = "paper",
    text_scope: str = "instruction",
    neuron: str = "act",
    pool: str = "mean",
    pool_threshold: float | None = None,
    template: str = "alpaca",
    max_length: int = 512,
    truncation: str = "prompt_first",
) -> PassSpec:
    """The pool's `cond` pass with MADS's pooled activations (defaults as in `mads`). `paper`: the
    paper's layers at the same relative depth (exactly 1, 8, 15, 20, 27 for a 28-layer model),
    resolved by the pass runner once the model's depth is known."""
    check_choice("mads neuron", neuron, tuple(NEURONS))
    check_choice("mads text_scope", text_scope, tuple(SCOPES))
    if layers == "paper":
        chosen: dict = {"layers": PAPER_LAYERS, "depth": PAPER_DEPTH}
    elif isinstance(layers, str) or not layers:
        raise ValueError(
            f"layers={layers!r}: expected 'paper' or a list of 0-based decoder layers, e.g. [1, 8, 15]"
        )
    else:
        chosen = {"layers": tuple(int(x) for x in layers)}
    source, tap = NEURONS[neuron]
    pooling = Pooling(
        sources=(source,),
        how=pool,
        span=SCOPES[text_scope],
        threshold=pool_threshold,
        mlp_tap=tap,
        **chosen,
    )
    return PassSpec(
        model=model,
        view="cond",
        template=template,
        fields=("logprob", "entropy"),
        max_length=max_length,
        truncation=truncation,
        pooling=pooling,
    )


@method(
    "mads",
    paper="Bai, Zhang et al., MADS: Model-Aware Diverse Core Set Selection, arXiv 2605.30857 (reconstruction)",
    summary="activation tags (strongly activated MLP neurons per layer), complexity-first tag coverage",
    passes="cond",
    reference_model="Llama-3.2-3B-Instruct",
    pool_pass=lambda model: pool_pass(model),
)
def mads(
    model: str,
    *,
    layers: str
    | list[
        int
    ] = "paper",  # MADS captions: layers 1, 8, 15, 20, 27 analysed [stated]; using all five is inferred
    layer_strategy: str = "union",  # inferred: the paper compares two strategies without naming the winner; "single" = one layer
    text_scope: str = "instruction",  # inferred (§6.2.2): "pool over the user-content tokens only"; "prompt", "full", "response" as options
    neuron: str = "act",  # inferred (§6.2.3): the MLP activation SiLU(gate_proj); "down_proj_input" = SiLU(gate) * up; "hidden" = residual stream
    pool: str = "mean",  # inferred (§6.2.5): mean over the scope's tokens; "max" and "frac_above" as options
    pool_threshold: float
    | None = None,  # for pool="frac_above" only: the activation level tau counted
    tag_rule: str = "quantile",  # term "strongly activated neurons" stated; rule inferred (§6.2.6)
    q: float = 0.99,  # inferred: about 82 tags per layer per sample at width 8192
    quantile_sample: int = 4096,  # inferred: tau_l estimated on <= 4,096 random samples
    k: int = 82,  # inferred: top-k tags per layer, matching q = 0.99 at width 8192
    z0: float = 3.0,  # inferred: per-neuron z-score threshold
    tau: float | None = None,  # absolute threshold, for tag_rule="absolute"
    min_df: int = 1,  # inferred: keep the long tail (MADS Fig. 6 shows it); InsTag-like filtering is 20
    max_df_frac: float = 0.5,  # inferred: drop near-universal tags
    weight: str = "none",  # inferred: plain coverage; "idf" weighs rare tags by log(N / df)
    strategy: str = "complexity_first",  # coverage stated; InsTag Algorithm 1 inferred; "greedy_max_coverage" option
    template: str = "alpaca",  # ours: IFD's cond pass, shared; §6.2.2 infers the chat template (template="chat")
    max_length: int = 512,  # ours: as `ifd`, for the same reason; §6.2.2 infers 2048
    truncation: str = "prompt_first",  # ours: as `ifd`, never empties the response
) -> Method:
    """Tag each sample with its strongly activated neurons, then cover the tags within budget."""
    checks = {
        "layer_strategy": (layer_strategy, ("union", "single")),
        "text_scope": (text_scope, tuple(SCOPES)),
        "neuron": (neuron, tuple(NEURONS)),
        "tag_rule": (tag_rule, sig.TAG_RULES),
        "weight": (weight, sig.WEIGHTS),
        "strategy": (strategy, STRATEGIES),
    }
    for name, (value, choices) in checks.items():
        check_choice(f"mads {name}", value, choices)
    if tag_rule == "absolute" and tau is None:
        raise ValueError(
            "tag_rule='absolute' needs tau, the activation level that makes a tag, e.g. method.params.tau=0.5"
        )
    if layer_strategy == "single" and (layers == "paper" or len(layers) != 1):
        raise ValueError(
            f"layer_strategy='single' tags one layer: give exactly one, e.g. layers=[8] (got {layers!r})"
        )
    field = NEURONS[neuron][0]
    cond = pool_pass(
        model,
        layers=layers,
        text_scope=text_scope,
        neuron=neuron,
        pool=pool,
        pool_threshold=pool_threshold,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )

    def signals(x: SignalInputs) -> Signals:
        resolved = x.passes["cond"].pooling.layers
        columns = [f"{field}.{layer}" for layer in resolved]
        rule = dict(rule=tag_rule, q=q, sample=quantile_sample, tau=tau, k=k, z0=z0)
        stats, per_layer, layer_widths, finite = stream_tags(
            x.stats["cond"], x.ids, columns, **rule
        )
        tags = sig.merge_layers(per_layer, max(layer_widths))
        col = np.empty(len(tags), dtype=object)
        col[:] = [t.astype(np.int32) for t in tags]
        # the share of each layer's neurons that are strongly activated, per sample (MADS Fig. 2)
        shares = {
            f"mads_share.{layer}": np.array([len(t) / width for t in tl], dtype=np.float64)
            for layer, tl, width in zip(resolved, per_layer, layer_widths, strict=True)
        }
        cols = {
            "mads_tags": col,
            "mads_n_tags": np.array([len(t) for t in tags], dtype=np.float64),
            **shares,
            **token_counts(stats),
        }
        return Signals(cols, ["ok" if f else "nan_activation" for f in finite])

    def prepared(table: SignalTable) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        tags = [np.asarray(t, dtype=np.int64) for t in table.columns["mads_tags"]]
        eligible = table.eligible
        n_tags = 1 + max((int(t.max()) for t in tags if len(t)), default=-1)
        df = sig.document_frequency([t for t, e in zip(tags, eligible, strict=True) if e], n_tags)
        kept = sig.keep_tags(df, int(eligible.sum()), min_df, max_df_frac)
        return (
            sig.filter_tags(tags, kept),
            sig.tag_weights(df, int(eligible.sum()), weight) * kept,
            kept,
            eligible,
        )

    def select(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        tags, weights, _, eligible = prepared(table)
        b = budget_rows(table, budget, ctx, "rows")
        return select_coverage(table.ids, tags, weights, b, strategy=strategy, keep=eligible)

    def diagnostics(table: SignalTable, selection: Selection | None) -> dict[str, Any]:
        tags, _, kept, eligible = prepared(table)
        pos = {i: k for k, i in enumerate(table.ids)}
        chosen = [pos[i] for i in selection.ids] if selection else []
        pool = np.flatnonzero(eligible)
        n_tags = np.array([len(t) for t in tags], dtype=np.float64)
        length = table.columns["n_prompt_tokens"] + table.columns["n_response_tokens"]
        df = (
            sig.document_frequency([tags[i] for i in pool], len(kept))
            if len(kept)
            else np.zeros(0, np.int64)
        )
        carried = df[df > 0]
        shares = {
            f"strong_share_pool.{k.split('.', 1)[1]}": float(np.mean(v[pool]))
            if len(pool)
            else float("nan")
            for k, v in table.columns.items()
            if k.startswith("mads_share.")
        }
        return {
            "truncated_rate_pool": float(
                np.mean([bool(table.columns["truncated"][i]) for i in pool])
            )
            if len(pool) and "truncated" in table.columns
            else float("nan"),
            **shares,
            "tag_df_quantiles": _quartiles(
                carried
            ),  # min, 25%, 50%, 75%, max of df over the tags kept (MADS Fig. 6)
            "tags_with_df_1": int((carried == 1).sum()),
            "tag_universe": int(kept.sum()),
            "tag_coverage_subset": sig.coverage_rate(tags, chosen, kept),
            "tag_coverage_pool": sig.coverage_rate(tags, list(pool), kept),
            "mean_tags_subset": float(n_tags[chosen].mean()) if chosen else float("nan"),
            "mean_tags_pool": float(n_tags[pool].mean()) if len(pool) else float("nan"),
            "length_quartiles_subset": _quartiles(length[chosen]),
            "length_quartiles_pool": _quartiles(length[pool]),
        }

    params = dict(
        layers=layers,
        layer_strategy=layer_strategy,
        text_scope=text_scope,
        neuron=neuron,
        pool=pool,
        pool_threshold=pool_threshold,
        tag_rule=tag_rule,
        q=q,
        quantile_sample=quantile_sample,
        k=k,
        z0=z0,
        tau=tau,
        min_df=min_df,
        max_df_frac=max_df_frac,
        weight=weight,
        strategy=strategy,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    return Method(
        "mads",
        params,
        {"cond": cond},
        signals,
        "mads_n_tags",
        select,
        diagnostics=diagnostics,
        streamed=("cond",),
    )


def stream_tags(
    cond: StreamedPass | TokenStats,
    ids: list[str],
    columns: list[str],
    *,
    rule: str,
    q: float,
    sample: int,
    tau: float | None,
    k: int,
    z0: float,
) -> tuple[TokenStats, list[list[np.ndarray]], list[int], np.ndarray]:
    """Each layer's tags per sample (in `ids` order), reading the pool pass one shard at a time
    (a loaded TokenStats, in tests, counts as one shard), so memory grows with the tags, not with
    the activations (layers x width floats a row).

    Pass 1 records which rows are finite per layer (and the per-neuron moments for the z-score
    rule); the quantile rule's threshold rows are then drawn from that, as `tag_thresholds`
    draws them, and pass 2 reads their values; pass 3 tags every shard. Returns the pass without
    activations, the tags per layer, the layer widths and which rows are finite in every layer."""
    pos = {i: r for r, i in enumerate(ids)}

    def shards():
        return [cond] if isinstance(cond, TokenStats) else cond.scan(tuple(columns))

    def rows_of(shard: TokenStats) -> np.ndarray:
        return np.array([pos[i] for i in shard.ids], dtype=np.int64)

    finite = np.zeros((len(columns), len(ids)), dtype=bool)
    widths = [0] * len(columns)
    moments = [sig.NeuronMoments() for _ in columns]
    for shard in shards():
        rows = rows_of(shard)
        for li, c in enumerate(columns):
            a = shard.activations[c]
            widths[li] = a.shape[1]
            ok = np.all(np.isfinite(a), axis=1)
            finite[li, rows] = ok
            if rule == "zscore":
                moments[li].add(a[ok])
    taus: list[float | None] = [tau] * len(columns)
    if rule == "quantile":
        picked = [sig.threshold_rows(finite[li], sample, seed=li) for li in range(len(columns))]
        wanted = [set(p.tolist()) for p in picked]
        values: list[dict[int, np.ndarray]] = [{} for _ in columns]
        for shard in shards():
            for j, r in enumerate(rows_of(shard)):
                for li, c in enumerate(columns):
                    if r in wanted[li]:
                        values[li][int(r)] = shard.activations[c][j]
        taus = [
            sig.quantile_threshold(np.stack([values[li][r] for r in picked[li]]), q)
            for li in range(len(columns))
        ]
    per_layer: list[list[np.ndarray]] = [[np.zeros(0, np.int64)] * len(ids) for _ in columns]
    for shard in shards():
        rows = rows_of(shard)
        for li, c in enumerate(columns):
            m = moments[li].result(widths[li]) if rule == "zscore" else None
            tags = sig.layer_tags(shard.activations[c], rule, tau=taus[li], k=k, z0=z0, moments=m)
            for r, t in zip(rows, tags, strict=True):
                per_layer[li][r] = t
    base = cond if isinstance(cond, TokenStats) else cond.load((), order=ids)
    return base, per_layer, widths, finite.all(axis=0)


def _quartiles(x: np.ndarray) -> list[float]:
    x = np.asarray(x, dtype=np.float64)
    return [float(v) for v in np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])] if len(x) else []
