"""Methods: named recipes from papers, and the registry of names.

A builder turns flat typed parameters into a `Plan`: the passes to run, how to compute the
signals from their token stats, and how to select. Every default is the paper's (quoted) or
marked `# ours:` with the reason. Passes are shared: `ifd`, `ppl` and `entropy` read the same
`cond` pass of the same model, so scoring all three costs two forward passes, not four.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.data import Sample
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.random import random_k
from thresher.selectors.topk import Selection, budget_count, middle_k, top_k
from thresher.signals.basic import mean_entropy, perplexity, response_length
from thresher.signals.ifd import ifd_filter, ifd_loss_ratio, ifd_ppl_ratio, response_loss


@dataclass
class SignalTable:
    """Per-sample signals of one method. `status` is "ok", a reason the row could not be scored
    (it is then rejected), or `filtered:<rule>` (scored, but the method's filter excludes it).
    `score` names the column the selector ranks by."""

    ids: list[str]
    columns: dict[str, np.ndarray]
    status: list[str]
    score: str | None

    @property
    def eligible(self) -> np.ndarray:
        return np.array([s == "ok" for s in self.status], dtype=bool)


@dataclass
class Plan:
    method: str
    params: dict[str, Any]
    passes: dict[str, PassSpec]
    compute: Callable[[dict[str, TokenStats], list[Sample]], SignalTable]
    choose: Callable[[SignalTable, float | int, int, int], Selection] = field(repr=False)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    paper: str
    summary: str
    passes: str
    reference_model: str
    reproducible: bool
    build: Callable[..., Plan] = field(repr=False)

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.build)
        return {k: p.default for k, p in sig.parameters.items() if k != "model"}


def _merge_status(*passes: TokenStats) -> list[str]:
    """The first non-ok status of each row across the passes it needs."""
    out = []
    for row in zip(*(p.status for p in passes), strict=True):
        bad = [s for s in row if s != "ok"]
        out.append(bad[0] if bad else "ok")
    return out


def _counts(stats: TokenStats, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}n_prompt_tokens": stats.n_prompt_tokens,
        f"{prefix}n_response_tokens": stats.n_response_tokens,
        f"{prefix}n_scored": stats.n_scored,
    }


def _ifd_plan(
    name: str,
    model: str,
    template: str,
    max_length: int,
    truncation: str,
    reproduce: bool,
    ratio: str,
    rule: str,
    boundary: str,
    reproduce_budget: str,
) -> Plan:
    fields = ("logprob", "entropy")  # entropy too, so `entropy` selection reuses this pass
    common = dict(model=model, template=template, max_length=max_length, truncation=truncation)
    passes = {
        "cond": PassSpec(view="cond", fields=fields, boundary=boundary if reproduce else "exact", **common),
        "uncond": PassSpec(view="uncond", fields=("logprob",), boundary=boundary if reproduce else "exact", **common),
    }

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        cond, uncond = stats["cond"], stats["uncond"]
        status = _merge_status(cond, uncond)
        s_cond, s_uncond = response_loss(cond.logprob), response_loss(uncond.logprob)
        ifd = (ifd_loss_ratio if ratio == "loss_ratio" else ifd_ppl_ratio)(cond.logprob, uncond.logprob)
        keep = ifd_filter(ifd, rule)
        if reproduce and boundary == "cherry":
            # data_by_IFD.py: skip a row when instruct_len + len(uncond response) > max_length
            fits = uncond.n_prompt_tokens + uncond.n_response_tokens <= max_length
            status = [s if s != "ok" or f else "filtered:response_would_be_truncated" for s, f in zip(status, fits, strict=True)]
        label = "filtered:ifd>1" if rule == "le1" else "filtered:ifd>=1"
        for i, s in enumerate(status):
            if s == "ok" and not np.isfinite(ifd[i]):
                status[i] = "nan_score"
            elif s == "ok" and not keep[i]:
                status[i] = label
        cols = {"ifd": ifd, "loss_cond": s_cond, "loss_uncond": s_uncond, **_counts(cond, ""), "n_scored_uncond": uncond.n_scored}
        return SignalTable([s.id for s in samples], cols, status, "ifd")

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        n = len(table.ids)
        if reproduce and reproduce_budget == "kept":
            n = int(table.eligible.sum())  # Cherry: int(#kept * sample_rate)
        elif reproduce and reproduce_budget == "rows_read":
            n = n_rows_read  # Superfiltering: int(52002 * rate), the whole file
        b = budget_count(budget, n)
        return top_k(table.ids, table.columns["ifd"], b, descending=True, keep=table.eligible)

    params = dict(template=template, max_length=max_length, truncation=truncation, reproduce=reproduce, ratio=ratio, filter=rule)
    return Plan(name, params, passes, compute, choose)


def ifd(
    model: str,
    *,
    reproduce: bool = False,
    template: str = "alpaca",  # Cherry_LLM scripts: `--prompt alpaca`
    max_length: int = 512,  # Cherry_LLM Alpaca V1 scripts: `--max_length 512`
    truncation: str = "prompt_first",  # ours: never silently drops the response (see docs)
) -> Plan:
    """Cherry IFD = s(A|Q) / s(A), ratio of mean response losses; drop IFD > 1; top-b."""
    return _ifd_plan("ifd", model, template, max_length, truncation, reproduce, "loss_ratio", "le1", "cherry", "kept")


def superfiltering(
    model: str,
    *,
    reproduce: bool = False,
    template: str = "plain",  # Superfiltering code_ifd: PROMPT_DICT_NONE, "{instruction}\n[{input}\n]"
    max_length: int = 1024,  # Superfiltering: `--max_length 1024` (GPT-2's context)
    truncation: str = "prompt_first",  # ours: never silently drops the response (see docs)
) -> Plan:
    """Superfiltering IFD = PPL(A|Q) / PPL(A) with a small model; drop IFD >= 1; top-b."""
    return _ifd_plan("superfiltering", model, template, max_length, truncation, reproduce, "ppl_ratio", "lt1", "superfiltering", "rows_read")


_VARIANTS = ("min", "mid", "max")


def _cond_rank_plan(name: str, model: str, template: str, max_length: int, truncation: str, variant: str, signal: str) -> Plan:
    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {list(_VARIANTS)}")
    passes = {"cond": PassSpec(model=model, view="cond", template=template, fields=("logprob", "entropy"), max_length=max_length, truncation=truncation)}

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        cond = stats["cond"]
        values = perplexity(cond.logprob) if signal == "ppl" else mean_entropy(cond.entropy)
        status = [("nan_score" if s == "ok" and not np.isfinite(v) else s) for s, v in zip(cond.status, values, strict=True)]
        return SignalTable([s.id for s in samples], {signal: values, **_counts(cond, "")}, status, signal)

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        b = budget_count(budget, len(table.ids))
        v = table.columns[signal]
        if variant == "mid":
            return middle_k(table.ids, v, b, keep=table.eligible)
        return top_k(table.ids, v, b, descending=variant == "max", keep=table.eligible)

    return Plan(name, dict(template=template, max_length=max_length, truncation=truncation, variant=variant), passes, compute, choose)


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
    passes = {"tokens": PassSpec(model=model, view="cond", template=template, fields=(), max_length=10**9)}

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        t = stats["tokens"]
        chars = np.array([len(s.response) for s in samples], dtype=np.float64)
        return SignalTable([s.id for s in samples], {"response_tokens": t.n_response_tokens.astype(np.float64), "response_chars": chars}, list(t.status), "response_tokens")

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
        return random_k(table.ids, budget_count(budget, len(table.ids)), seed=seed, keep=table.eligible)

    return Plan("random", {}, {}, compute, choose)


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("ifd", "Li et al., From Quantity to Quality (Cherry LLM), NAACL 2024", "ratio of mean response losses with and without the instruction; drop IFD > 1", "cond + uncond", "the model to be tuned (LLaMA-7B in the paper)", True, ifd),
        MethodInfo("superfiltering", "Li et al., Superfiltering, ACL 2024", "IFD as a perplexity ratio from a small model; drop IFD >= 1", "cond + uncond", "gpt2 (124M)", True, superfiltering),
        MethodInfo("ppl", "perplexity baseline (InstructDiff App. B; DEITA)", "response perplexity given the prompt; min / mid / max", "cond", "the base model", False, ppl),
        MethodInfo("entropy", "entropy baseline (InstructDiff App. B)", "mean predictive entropy over the response; min / mid / max", "cond", "the base model", False, entropy),
        MethodInfo("longest", "Zhao et al., Long Is More for Alignment, ICML 2024", "longest responses in tokens", "tokenize only", "-", False, longest),
        MethodInfo("random", "random baseline", "uniform sample without replacement, seeded", "none", "-", False, random),
    )
}


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def get_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {sorted(METHODS)}{suggest(name, list(METHODS))}")
    return METHODS[name]


def build(name: str, model: str, params: dict[str, Any] | None = None, *, reproduce: bool = False) -> Plan:
    """Build a plan, rejecting unknown parameters with near-match suggestions."""
    info = get_method(name)
    params = dict(params or {})
    allowed = list(info.defaults())
    unknown = [k for k in params if k not in allowed]
    if unknown:
        k = unknown[0]
        raise ValueError(f"method {name!r} has no parameter {k!r}: it takes {allowed}{suggest(k, allowed)}")
    if reproduce:
        if not info.reproducible:
            raise ValueError(f"method {name!r} has no reference code to reproduce; reproduce mode exists for {[m.name for m in METHODS.values() if m.reproducible]}")
        params["reproduce"] = True
    return info.build(model, **params)
