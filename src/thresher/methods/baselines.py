"""Baselines the papers compare against: perplexity, entropy, longest response, random."""

from __future__ import annotations

import numpy as np

from thresher.choices import check_choice
from thresher.methods.base import (
    Method,
    SelectContext,
    SignalInputs,
    SignalTable,
    method,
    token_counts,
)
from thresher.methods.table import Finite, MiddleK, RandomK, TopK, budget_rows
from thresher.passes import PassSpec
from thresher.selectors.base import Selection
from thresher.selectors.topk import top_k
from thresher.signals.basic import mean_entropy, perplexity, response_length

VARIANTS = ("min", "mid", "max")


def _cond_rank(
    name: str,
    model: str,
    template: str,
    max_length: int,
    truncation: str,
    variant: str,
    signal: str,
) -> Method:
    check_choice("variant", variant, VARIANTS)
    cond = PassSpec(
        model=model,
        view="cond",
        template=template,
        fields=("logprob", "entropy"),
        max_length=max_length,
        truncation=truncation,
    )

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        c = x.stats["cond"]
        values = perplexity(c.logprob) if signal == "ppl" else mean_entropy(c.entropy)
        return {signal: values, **token_counts(c)}

    select = MiddleK(signal) if variant == "mid" else TopK(signal, descending=variant == "max")
    params = dict(template=template, max_length=max_length, truncation=truncation, variant=variant)
    return Method(name, params, {"cond": cond}, signals, signal, select, (Finite((signal,)),))


@method(
    "ppl",
    paper="perplexity baseline (InstructDiff App. B; DEITA)",
    summary="response perplexity given the prompt; min / mid / max",
    passes="cond",
    reference_model="the base model",
)
def ppl(
    model: str,
    *,
    variant: str = "min",  # InstructDiff App. B: PPL-Min / PPL-Mid / PPL-Max; Min was the strongest (27.04 math avg)
    template: str = "alpaca",  # ours: the same cond pass as `ifd`, so scoring both costs one pass
    max_length: int = 512,  # ours: as `ifd`, for the same reason
    truncation: str = "prompt_first",  # ours: as `ifd`, never empties the response
) -> Method:
    """Perplexity of the response given the prompt under the base model; lowest, middle or highest b."""
    return _cond_rank("ppl", model, template, max_length, truncation, variant, "ppl")


@method(
    "entropy",
    paper="entropy baseline (InstructDiff App. B)",
    summary="mean predictive entropy over the response; min / mid / max",
    passes="cond",
    reference_model="the base model",
)
def entropy(
    model: str,
    *,
    variant: str = "min",  # InstructDiff App. B: Entropy-Min/Mid/Max; Min was the best baseline (29.80 math avg)
    template: str = "alpaca",  # ours: the same cond pass as `ifd`
    max_length: int = 512,  # ours: as `ifd`
    truncation: str = "prompt_first",  # ours: as `ifd`, never empties the response
) -> Method:
    """Mean full-vocabulary predictive entropy over the response under the base model."""
    return _cond_rank("entropy", model, template, max_length, truncation, variant, "entropy")


def _longest_first(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
    key = response_length(table.columns["response_tokens"], table.columns["response_chars"])
    b = budget_rows(table, budget, ctx, "rows")
    return top_k(table.ids, key, b, descending=True, keep=table.eligible)


@method(
    "longest",
    paper="Zhao et al., Long Is More for Alignment, ICML 2024",
    summary="longest responses in tokens",
    passes="tokenize only",
)
def longest(
    model: str,
    *,
    template: str = "alpaca",  # ours: IFD's template; the length counted is the response's alone
) -> Method:
    """Long Is More (Zhao et al., ICML 2024): the b longest responses, in tokens of the model's
    tokenizer; ties by characters, then id (METHODS §2.2). Tokenizes only; no forward pass."""
    # ours: no truncation, so the count is the response's full length
    tokens = PassSpec(model=model, view="cond", template=template, fields=(), max_length=10**9)

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        return {
            "response_tokens": x.stats["tokens"].n_response_tokens.astype(np.float64),
            "response_chars": np.array([len(s.response) for s in x.samples], dtype=np.float64),
        }

    return Method(
        "longest",
        {"template": template},
        {"tokens": tokens},
        signals,
        "response_tokens",
        _longest_first,
    )


@method(
    "random",
    paper="random baseline",
    summary="uniform sample without replacement, seeded",
    passes="none",
)
def random(model: str | None = None) -> Method:
    """Uniform sampling without replacement, seeded (seed 42 as T-SHIRT and InstructDiff)."""
    return Method("random", {}, {}, lambda x: {}, None, RandomK())
