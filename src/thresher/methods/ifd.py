"""IFD (Cherry LLM, NAACL 2024) and Superfiltering (ACL 2024): the ratio of the response's
loss (or perplexity) with and without the instruction."""

from __future__ import annotations

import numpy as np

from thresher.methods.base import Method, SignalInputs, method, token_counts
from thresher.methods.table import Below, Finite, Keep, TopK
from thresher.passes import PassSpec
from thresher.signals.ifd import ifd_loss_ratio, ifd_ppl_ratio, response_loss


def _ifd(
    name: str,
    model: str,
    template: str,
    max_length: int,
    truncation: str,
    reproduce: bool,
    ratio: str,
    rule: str,
    boundary: str,
    reproduce_base: str,
) -> Method:
    boundary = boundary if reproduce else "exact"
    common = dict(
        model=model,
        template=template,
        max_length=max_length,
        truncation=truncation,
        boundary=boundary,
    )
    passes = {
        # entropy too, so `entropy` selection reuses this pass
        "cond": PassSpec(view="cond", fields=("logprob", "entropy"), **common),
        "uncond": PassSpec(view="uncond", fields=("logprob",), **common),
    }

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        cond, uncond = x.stats["cond"], x.stats["uncond"]
        ifd = (ifd_loss_ratio if ratio == "loss_ratio" else ifd_ppl_ratio)(
            cond.logprob, uncond.logprob
        )
        cols = {
            "ifd": ifd,
            "loss_cond": response_loss(cond.logprob),
            "loss_uncond": response_loss(uncond.logprob),
            **token_counts(cond),
            "n_scored_uncond": uncond.n_scored,
        }
        if boundary == "cherry":
            # data_by_IFD.py: skip a row when instruct_len + len(uncond response) > max_length
            cols["fits"] = uncond.n_prompt_tokens + uncond.n_response_tokens <= max_length
        return cols

    filters: tuple = ()
    if boundary == "cherry":
        filters += (Keep("fits", "filtered:response_would_be_truncated"),)
    inclusive = rule == "le1"  # Cherry drops IFD > 1; Superfiltering drops IFD >= 1
    filters += (
        Finite(("ifd",)),
        Below("ifd", 1.0, inclusive, "filtered:ifd>1" if inclusive else "filtered:ifd>=1"),
    )
    base = reproduce_base if reproduce else "rows"
    params = dict(
        template=template,
        max_length=max_length,
        truncation=truncation,
        reproduce=reproduce,
        ratio=ratio,
        filter=rule,
    )
    return Method(name, params, passes, signals, "ifd", TopK("ifd", base=base), filters)


@method(
    "ifd",
    paper="Li et al., From Quantity to Quality (Cherry LLM), NAACL 2024",
    summary="ratio of mean response losses with and without the instruction; drop IFD > 1",
    passes="cond + uncond",
    reference_model="the model to be tuned (LLaMA-7B in the paper)",
    reproducible=True,
)
def ifd(
    model: str,
    *,
    reproduce: bool = False,
    template: str = "alpaca",  # Cherry_LLM scripts: `--prompt alpaca`
    max_length: int = 512,  # Cherry_LLM Alpaca V1 scripts: `--max_length 512`
    truncation: str = "prompt_first",  # ours: never silently drops the response (see docs)
) -> Method:
    """Cherry IFD = s(A|Q) / s(A), ratio of mean response losses; drop IFD > 1; top-b.
    Reproduce: a fraction of the rows kept (Cherry: int(#kept * sample_rate))."""
    return _ifd(
        "ifd",
        model,
        template,
        max_length,
        truncation,
        reproduce,
        "loss_ratio",
        "le1",
        "cherry",
        "eligible",
    )


@method(
    "superfiltering",
    paper="Li et al., Superfiltering, ACL 2024",
    summary="IFD as a perplexity ratio from a small model; drop IFD >= 1",
    passes="cond + uncond",
    reference_model="gpt2 (124M)",
    reproducible=True,
)
def superfiltering(
    model: str,
    *,
    reproduce: bool = False,
    template: str = "plain",  # Superfiltering code_ifd: PROMPT_DICT_NONE, "{instruction}\n[{input}\n]"
    max_length: int = 1024,  # Superfiltering: `--max_length 1024` (GPT-2's context)
    truncation: str = "prompt_first",  # ours: never silently drops the response (see docs)
) -> Method:
    """Superfiltering IFD = PPL(A|Q) / PPL(A) with a small model; drop IFD >= 1; top-b.
    Reproduce: a fraction of every row of the file (int(52002 * rate))."""
    return _ifd(
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
