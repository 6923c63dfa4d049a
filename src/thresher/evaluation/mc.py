"""Multiple choice by continuation log-likelihood (MMLU-style JSON lines), scored by the same
`cond` pass as selection."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thresher.data import Message, Sample
from thresher.evaluation.nll import cond_scorer, score_samples
from thresher.evaluation.tasks import EVAL_MAX_LENGTH, mean_stderr

MC_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def read_mc(path: str | Path, limit: int | None = None) -> tuple[list[MCItem], Counter]:
    """MMLU-style JSON lines: `question`, `choices` (list of text), `answer` (index or letter)."""
    items, skipped = [], Counter()
    with open(path, encoding="utf-8") as f:
        lines = [x for x in f if x.strip()]
    for n, line in enumerate(lines[:limit] if limit is not None else lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped["malformed_json"] += 1
            continue
        q, choices, ans = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            skipped["missing_field:question"] += 1
            continue
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            skipped["bad_choices"] += 1
            continue
        if isinstance(ans, str) and len(ans) == 1 and ans.upper() in MC_LETTERS:
            ans = MC_LETTERS.index(ans.upper())
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            skipped["bad_answer"] += 1
            continue
        items.append(
            MCItem(
                str(row.get("id", n)),
                q,
                tuple(choices),
                ans,
                str(row.get("type") or row.get("subject") or ""),
            )
        )
    return items, skipped


def mc_prompt(item: MCItem, style: str) -> tuple[str, list[str]]:
    """The context and each choice's continuation.

    `cloze` (the default): "Question: ...\\nAnswer:" continued by " <choice text>", the
    lm-evaluation-harness form for small models that cannot yet map letters to answers.
    `letters`: the MMLU prompt with lettered choices, continued by " A", " B", ...
    """
    if style == "cloze":
        return f"Question: {item.question}\nAnswer:", [f" {c}" for c in item.choices]
    if style == "letters":
        subject = f" about {item.subject.replace('_', ' ')}" if item.subject else ""
        body = "\n".join(f"{MC_LETTERS[k]}. {c}" for k, c in enumerate(item.choices))
        return (
            f"The following is a multiple choice question{subject}.\n\n{item.question}\n{body}\nAnswer:",
            [f" {MC_LETTERS[k]}" for k in range(len(item.choices))],
        )
    raise ValueError(f"mc style {style!r} is not one of ['cloze', 'letters']")


def choose(loglik: np.ndarray, n_bytes: np.ndarray) -> tuple[int, int]:
    """(choice by summed log-likelihood, choice by log-likelihood per byte of continuation).

    Tie rule: among equal scores the lowest choice index wins (np.argmax takes the first), so
    a model that cannot tell the choices apart always answers the first one.
    """
    return int(np.argmax(loglik)), int(np.argmax(loglik / n_bytes))


def multiple_choice(
    lm: Any,
    items: list[MCItem],
    *,
    style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter]:
    """Accuracy by continuation log-likelihood. Headline: `acc` (the summed log-likelihood);
    `acc_norm` divides by the continuation's UTF-8 bytes, as lm-evaluation-harness does. Each
    comes with its standard error over items (`*_stderr`)."""
    samples = []
    for item in items:
        context, conts = mc_prompt(item, style)
        for c, cont in enumerate(conts):
            samples.append(
                Sample(
                    f"{item.id}#{c}",
                    (Message("user", context), Message("assistant", cont)),
                    context,
                )
            )
    # the custom template "{instruction}" renders the context verbatim, with BOS when the
    # tokenizer adds one; each continuation is tokenized on its own, so its span is exact
    status, logprob, truncated = score_samples(
        cond_scorer(lm, "{instruction}", max_length, batch_tokens), samples, "mc", progress
    )
    skipped: Counter = Counter()
    hits: list[float] = []
    hits_norm: list[float] = []
    a = 0
    for item in items:
        b = a + len(item.choices)
        bad = [status[i] for i in range(a, b) if status[i] != "ok"] + [
            "choice_truncated" for i in range(a, b) if "response" in truncated[i]
        ]
        if bad:
            skipped[f"choice_unscorable:{bad[0]}"] += 1
        else:
            ll = np.array([float(logprob[i].astype(np.float64).sum()) for i in range(a, b)])
            nb = np.array(
                [len(samples[i].response.encode()) for i in range(a, b)], dtype=np.float64
            )
            pick, pick_norm = choose(ll, nb)
            hits.append(float(pick == item.answer))
            hits_norm.append(float(pick_norm == item.answer))
        a = b
    nan = math.nan
    return (
        {
            "acc": float(np.mean(hits)) if hits else nan,
            "acc_stderr": mean_stderr(hits),
            "acc_norm": float(np.mean(hits_norm)) if hits else nan,
            "acc_norm_stderr": mean_stderr(hits_norm),
            "chance": float(np.mean([1 / len(i.choices) for i in items])) if items else nan,
        },
        len(hits),
        skipped,
    )
