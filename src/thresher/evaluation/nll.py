"""Held-out response NLL given the prompt, through the scoring machinery itself (a `cond` pass
through `Scorer`: `templates.Renderer` + `backends.hf.HFBackend`), so an evaluation scores
response tokens exactly as selection does."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from thresher.data import Sample
from thresher.evaluation.tasks import EVAL_MAX_LENGTH, mean_stderr, ratio_stderr
from thresher.passes import PassSpec

CHUNK_ROWS = 64  # ours: rows per Scorer call, for a progress bar and bounded memory


def cond_scorer(lm: Any, template: str, max_length: int, batch_tokens: int) -> Any:
    from thresher.engine.scorer import Scorer

    spec = PassSpec(
        model=lm.info.name,
        view="cond",
        template=template,
        fields=("logprob",),
        max_length=max_length,
    )
    return Scorer(spec, lm.model, lm.tokenizer, batch_tokens=batch_tokens)


def score_samples(
    scorer: Any, samples: list[Sample], desc: str, progress: bool
) -> tuple[list[str], list[np.ndarray], list[str]]:
    from tqdm.auto import tqdm

    status: list[str] = []
    logprob: list[np.ndarray] = []
    truncated: list[str] = []
    for a in tqdm(
        range(0, len(samples), CHUNK_ROWS), desc=desc, unit="chunk", disable=not progress
    ):
        cols = scorer(samples[a : a + CHUNK_ROWS])
        status += cols["status"]
        logprob += cols["logprob"]
        truncated += cols["truncated"]
    return status, logprob, truncated


def response_nll(
    lm: Any,
    samples: list[Sample],
    *,
    template: str = "alpaca",
    max_length: int = EVAL_MAX_LENGTH,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter, int]:
    """Mean NLL (nats) of the response tokens given the prompt.

    Returns metrics `nll_token` (sum of NLL over every response token / number of tokens: the
    headline, the quantity a trainer's loss averages) and `nll_sample` (mean over items of each
    item's mean token NLL), each with its standard error over items (`*_stderr`), the items
    evaluated, skip reasons, and how many were truncated.
    """
    status, logprob, truncated = score_samples(
        cond_scorer(lm, template, max_length, batch_tokens), samples, "nll", progress
    )
    ok = [i for i, s in enumerate(status) if s == "ok" and len(logprob[i])]
    skipped = Counter(s for s in status if s != "ok")
    if not ok:
        return {"nll_token": math.nan, "nll_sample": math.nan, "tokens": 0.0}, 0, skipped, 0
    item_nll = [float(-logprob[i].astype(np.float64).sum()) for i in ok]
    item_tokens = [len(logprob[i]) for i in ok]
    per_item = [x / t for x, t in zip(item_nll, item_tokens, strict=True)]
    tokens = sum(item_tokens)
    metrics = {
        "nll_token": sum(item_nll) / tokens,
        "nll_token_stderr": ratio_stderr(item_nll, item_tokens),
        "nll_sample": float(np.mean(per_item)),
        "nll_sample_stderr": mean_stderr(per_item),
        "tokens": float(tokens),
    }
    return metrics, len(ok), skipped, sum(1 for i in ok if truncated[i])
