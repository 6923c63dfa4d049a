"""Baselines the papers compare against: perplexity, entropy, longest response, random."""

from __future__ import annotations

import numpy as np

from thresher.choices import check_choice
from thresher.data import Sample
from thresher.methods.base import MethodInfo, Plan, SignalTable, token_counts
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection, budget_count
from thresher.selectors.random import random_k
from thresher.selectors.topk import middle_k, top_k
from thresher.signals.basic import mean_entropy, perplexity, response_length

_VARIANTS = ("min", "mid", "max")


def _cond_rank_plan(
    name: str,
    model: str,
    template: str,
    max_length: int,
    truncation: str,
    variant: str,
    signal: str,
) -> Plan:
    check_choice("variant", variant, _VARIANTS)
    passes = {
        "cond": PassSpec(
            model=model,
            view="cond",
            template=template,
            fields=("logprob", "entropy"),
            max_length=max_length,
            truncation=truncation,
        )
    }

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        cond = stats["cond"]
        values = perplexity(cond.logprob) if signal == "ppl" else mean_entropy(cond.entropy)
        status = [
            ("nan_score" if s == "ok" and not np.isfinite(v) else s)
            for s, v in zip(cond.status, values, strict=True)
        ]
        return SignalTable(
            [s.id for s in samples], {signal: values, **token_counts(cond, "")}, status, signal
        )

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        b = budget_count(budget, len(table.ids))
        v = table.columns[signal]
        if variant == "mid":
            return middle_k(table.ids, v, b, keep=table.eligible)
        return top_k(table.ids, v, b, descending=variant == "max", keep=table.eligible)

    return Plan(
        name,
        dict(template=template, max_length=max_length, truncation=truncation, variant=variant),
        passes,
        compute,
        choose,
    )


def ppl(
    model: str,
    *,
    variant: str = "min",  # InstructDiff App. B: PPL-Min / PPL-Mid / PPL-Max; Min was the strongest (27.04 math avg)
    template: str = "alpaca",  # ours: the same cond pass as `ifd`, so scoring both costs one pass
    max_length: int = 512,  # ours: as `ifd`, for the same reason
    truncation: str = "prompt_first",
) -> Plan:
    """Perplexity of the response given the prompt under the base model; lowest, middle or highest b."""
    return _cond_rank_plan("ppl", model, template, max_length, truncation, variant, "ppl")


def entropy(
    model: str,
    *,
    variant: str = "min",  # InstructDiff App. B: Entropy-Min/Mid/Max; Min was the best baseline (29.80 math avg)
    template: str = "alpaca",  # ours: the same cond pass as `ifd`
    max_length: int = 512,  # ours: as `ifd`
    truncation: str = "prompt_first",
) -> Plan:
    """Mean full-vocabulary predictive entropy over the response under the base model."""
    return _cond_rank_plan("entropy", model, template, max_length, truncation, variant, "entropy")


def longest(model: str, *, template: str = "alpaca") -> Plan:
    """Long Is More (Zhao et al., ICML 2024): the b longest responses, in tokens of the model's
    tokenizer; ties by characters, then id (METHODS §2.2). Tokenizes only; no forward pass."""
    # ours: no truncation, so the count is the response's full length
    passes = {
        "tokens": PassSpec(model=model, view="cond", template=template, fields=(), max_length=10**9)
    }

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        t = stats["tokens"]
        chars = np.array([len(s.response) for s in samples], dtype=np.float64)
        return SignalTable(
            [s.id for s in samples],
            {"response_tokens": t.n_response_tokens.astype(np.float64), "response_chars": chars},
            list(t.status),
            "response_tokens",
        )

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        b = budget_count(budget, len(table.ids))
        key = response_length(table.columns["response_tokens"], table.columns["response_chars"])
        return top_k(table.ids, key, b, descending=True, keep=table.eligible)

    return Plan("longest", {"template": template}, passes, compute, choose)


def random(model: str | None = None) -> Plan:
    """Uniform sampling without replacement, seeded (seed 42 as T-SHIRT and InstructDiff)."""

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        return SignalTable([s.id for s in samples], {}, ["ok"] * len(samples), None)

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        return random_k(
            table.ids, budget_count(budget, len(table.ids)), seed=seed, keep=table.eligible
        )

    return Plan("random", {}, {}, compute, choose)


INFOS = (
    MethodInfo(
        "ppl",
        "perplexity baseline (InstructDiff App. B; DEITA)",
        "response perplexity given the prompt; min / mid / max",
        "cond",
        "the base model",
        False,
        ppl,
    ),
    MethodInfo(
        "entropy",
        "entropy baseline (InstructDiff App. B)",
        "mean predictive entropy over the response; min / mid / max",
        "cond",
        "the base model",
        False,
        entropy,
    ),
    MethodInfo(
        "longest",
        "Zhao et al., Long Is More for Alignment, ICML 2024",
        "longest responses in tokens",
        "tokenize only",
        "-",
        False,
        longest,
    ),
    MethodInfo(
        "random",
        "random baseline",
        "uniform sample without replacement, seeded",
        "none",
        "-",
        False,
        random,
    ),
)
