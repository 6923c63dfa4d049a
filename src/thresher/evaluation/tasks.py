"""What `thresher eval` runs and what it reports: a task `KIND:TARGET` and one task's result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_KINDS = ("nll", "mc", "gsm8k", "lm_eval")
# ours: the scoring passes' length budget; longer responses keep their first tokens (counted
# as `truncated` in the result, never dropped silently)
EVAL_MAX_LENGTH = 1024


@dataclass
class TaskResult:
    """One task's figures. `headline` names the metric to compare models by."""

    task: str  # e.g. "nll:gsm8k_test.jsonl"
    kind: str
    source: str
    metrics: dict[str, float]
    headline: str
    evaluated: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "task",
                "kind",
                "source",
                "metrics",
                "headline",
                "evaluated",
                "skipped",
                "notes",
            )
        }


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    target: str  # a file path, or lm-eval task names joined by ","


def parse_task(text: str) -> TaskSpec:
    """`nll:FILE`, `mc:FILE`, `gsm8k:FILE` or `lm_eval:TASK[,TASK...]`."""
    kind, sep, target = text.partition(":")
    if not sep or kind not in TASK_KINDS or not target:
        raise ValueError(
            f"task {text!r} is not of the form KIND:TARGET with KIND one of {list(TASK_KINDS)}, e.g. "
            "nll:gsm8k_test.jsonl, mc:mmlu_stem_test.jsonl, gsm8k:gsm8k_test.jsonl, lm_eval:hellaswag"
        )
    if kind != "lm_eval" and not Path(target).exists():
        raise FileNotFoundError(f"task {text!r}: no such file {target!r}")
    return TaskSpec(kind, target)


def format_results(results: list[TaskResult]) -> str:
    lines = [f"{'task':<34} {'metric':<12} {'value':>9} {'items':>7} {'skipped':>8}  notes"]
    for r in results:
        value = r.metrics.get(r.headline, math.nan)
        others = ", ".join(f"{k}={v:.4g}" for k, v in r.metrics.items() if k != r.headline)
        lines.append(
            f"{r.task:<34} {r.headline:<12} {value:>9.4f} {r.evaluated:>7} {sum(r.skipped.values()):>8}  {others}"
        )
        if r.skipped:
            lines.append(
                f"{'':<34} skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items()))
            )
        for note in r.notes:
            lines.append(f"{'':<34} {note}")
    return "\n".join(lines)
