"""GSM8K exact match: greedy generation, then the last number of the generation against the
number after `####`."""

from __future__ import annotations

import math
import re
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Any

from thresher.data import Sample
from thresher.evaluation.tasks import mean_stderr
from thresher.passes import PassSpec

# ours: GSM8K worked answers are ~100-200 tokens; 256 new tokens leaves room without running on
GSM8K_MAX_NEW_TOKENS = 256
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# generation stops at the next turn of the template (Alpaca "###", plain Q/A restarts)
STOPS = ("\n\n###", "\n### ", "\nQuestion:", "\n\nQuestion:")


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return _norm_number(found[-1]) if found else None


def gold_number(answer: str) -> str | None:
    """The final answer after `####` in a GSM8K worked answer."""
    if "####" not in answer:
        return None
    return last_number(answer.split("####")[-1])


def _norm_number(text: str) -> str | None:
    try:
        return str(Decimal(text.replace(",", "")).normalize())
    except InvalidOperation:
        return None


def gsm8k_exact(
    lm: Any,
    samples: list[Sample],
    *,
    template: str = "alpaca",
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter]:
    """Greedy generation, then the last number of the generation against the number after `####`."""
    import torch
    from tqdm.auto import tqdm

    from thresher.templates import Renderer

    renderer = Renderer(lm.tokenizer, PassSpec(model=lm.info.name, template=template))
    lead = [] if renderer.template.name == "chat" else renderer.bos
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    hits: list[float] = []
    skipped: Counter = Counter()
    for s in tqdm(samples, desc="gsm8k", unit="item", disable=not progress):
        gold = gold_number(s.response)
        if gold is None:
            skipped["no_gold_number"] += 1
            continue
        ids = torch.tensor([lead + renderer.enc(renderer.template.prompt(s, tok))])
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in STOPS:
            text = text.split(stop)[0]
        hits.append(float(last_number(text) == gold))
    return (
        {
            "exact_match": sum(hits) / len(hits) if hits else math.nan,
            "exact_match_stderr": mean_stderr(hits),
        },
        len(hits),
        skipped,
    )
