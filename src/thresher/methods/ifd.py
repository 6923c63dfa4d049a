"""IFD (Cherry LLM, NAACL 2024) and Superfiltering (ACL 2024): the ratio of the response's
loss (or perplexity) with and without the instruction."""

from __future__ import annotations

import numpy as np

from thresher.data import Sample
from thresher.methods.base import MethodInfo, Plan, SignalTable, merge_status, token_counts
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection, budget_count
from thresher.selectors.topk import top_k
from thresher.signals.ifd import ifd_filter, ifd_loss_ratio, ifd_ppl_ratio, response_loss


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
        "cond": PassSpec(
            view="cond", fields=fields, boundary=boundary if reproduce else "exact", **common
        ),
        "uncond": PassSpec(
            view="uncond",
            fields=("logprob",),
            boundary=boundary if reproduce else "exact",
            **common,
        ),
    }

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        cond, uncond = stats["cond"], stats["uncond"]
        status = merge_status(cond, uncond)
        s_cond, s_uncond = response_loss(cond.logprob), response_loss(uncond.logprob)
        ifd = (ifd_loss_ratio if ratio == "loss_ratio" else ifd_ppl_ratio)(
            cond.logprob, uncond.logprob
        )
        keep = ifd_filter(ifd, rule)
        if reproduce and boundary == "cherry":
            # data_by_IFD.py: skip a row when instruct_len + len(uncond response) > max_length
            fits = uncond.n_prompt_tokens + uncond.n_response_tokens <= max_length
            status = [
                s if s != "ok" or f else "filtered:response_would_be_truncated"
                for s, f in zip(status, fits, strict=True)
            ]
        label = "filtered:ifd>1" if rule == "le1" else "filtered:ifd>=1"
        for i, s in enumerate(status):
            if s == "ok" and not np.isfinite(ifd[i]):
                status[i] = "nan_score"
            elif s == "ok" and not keep[i]:
                status[i] = label
        cols = {
            "ifd": ifd,
            "loss_cond": s_cond,
            "loss_uncond": s_uncond,
            **token_counts(cond, ""),
            "n_scored_uncond": uncond.n_scored,
        }
        return SignalTable([s.id for s in samples], cols, status, "ifd")

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        n = len(table.ids)
        if reproduce and reproduce_budget == "kept":
            n = int(table.eligible.sum())  # Cherry: int(#kept * sample_rate)
        elif reproduce and reproduce_budget == "rows_read":
            n = n_rows_read  # Superfiltering: int(52002 * rate), the whole file
        b = budget_count(budget, n)
        return top_k(table.ids, table.columns["ifd"], b, descending=True, keep=table.eligible)

    params = dict(
        template=template,
        max_length=max_length,
        truncation=truncation,
        reproduce=reproduce,
        ratio=ratio,
        filter=rule,
    )
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
    return _ifd_plan(
        "ifd",
        model,
        template,
        max_length,
        truncation,
        reproduce,
        "loss_ratio",
        "le1",
        "cherry",
        "kept",
    )


def superfiltering(
    model: str,
    *,
    reproduce: bool = False,
    template: str = "plain",  # Superfiltering code_ifd: PROMPT_DICT_NONE, "{instruction}\n[{input}\n]"
    max_length: int = 1024,  # Superfiltering: `--max_length 1024` (GPT-2's context)
    truncation: str = "prompt_first",  # ours: never silently drops the response (see docs)
) -> Plan:
    """Superfiltering IFD = PPL(A|Q) / PPL(A) with a small model; drop IFD >= 1; top-b."""
    return _ifd_plan(
        "superfiltering",
        model,
        template,
        max_length,
        truncation,
        reproduce,
        "ppl_ratio",
        "lt1",
        "superfiltering",
        "rows_read",
    )


INFOS = (
    MethodInfo(
        "ifd",
        "Li et al., From Quantity to Quality (Cherry LLM), NAACL 2024",
        "ratio of mean response losses with and without the instruction; drop IFD > 1",
        "cond + uncond",
        "the model to be tuned (LLaMA-7B in the paper)",
        True,
        ifd,
    ),
    MethodInfo(
        "superfiltering",
        "Li et al., Superfiltering, ACL 2024",
        "IFD as a perplexity ratio from a small model; drop IFD >= 1",
        "cond + uncond",
        "gpt2 (124M)",
        True,
        superfiltering,
    ),
)
