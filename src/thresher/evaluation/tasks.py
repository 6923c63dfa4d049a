"""What `thresher eval` runs and what it reports: a task `KIND:TARGET` and one task's result."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASK_KINDS = ("nll", "mc", "gsm8k", "lm_eval")
# ours: the scoring passes' length budget; longer responses keep their first tokens (counted
# as `truncated` in the result, never dropped silently)
EVAL_MAX_LENGTH = 1024


@dataclass
class TaskResult:
    """One task's figures. `headline` names the metric to compare models by.

    `stderr` holds the standard error of each metric that has one. `higher_is_better` gives the
    direction of each metric that models are compared by; the other entries of `metrics`
    (counts such as `tokens`, or `chance`) are context and are never compared.
    """

    task: str  # e.g. "nll:gsm8k_test.jsonl"
    kind: str
    source: str
    metrics: dict[str, float]
    headline: str
    evaluated: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items
    notes: list[str] = field(default_factory=list)
    stderr: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "task",
                "kind",
                "source",
                "metrics",
                "stderr",
                "higher_is_better",
                "headline",
                "evaluated",
                "skipped",
                "notes",
            )
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        return cls(**d)


@dataclass
class ModelEval:
    """One model's results: what was given, what was loaded and how, and each task's figures.
    `folder` is the local folder lm-evaluation-harness read (None when no lm_eval task ran)."""

    target: str  # as given: an alias, a folder, a .gguf, a hub id or a run folder
    model: str  # what thresher loads for it
    dtype: str
    device: str
    folder: str | None
    results: list[TaskResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "model": self.model,
            "dtype": self.dtype,
            "device": self.device,
            "folder": self.folder,
            "tasks": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEval:
        return cls(
            d["target"],
            d["model"],
            d["dtype"],
            d["device"],
            d["folder"],
            [TaskResult.from_dict(r) for r in d["tasks"]],
        )


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
        from thresher.paths import missing_path

        raise FileNotFoundError(
            missing_path(
                f"task {text!r}: file",
                target,
                f"Expected {kind}:FILE with FILE a local .json/.jsonl/.parquet file.",
            )
        )
    return TaskSpec(kind, target)


def mean_stderr(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of a mean: the sample standard deviation (n - 1) over sqrt(n), as
    lm-evaluation-harness's `mean_stderr`; NaN below two values (it is not defined there)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def ratio_stderr(totals: Sequence[float], counts: Sequence[float]) -> float:
    """Standard error of sum(totals) / sum(counts) over items (e.g. NLL per token): the delta
    method for a ratio of means, sqrt(sum((x_i - R t_i)^2) / (n (n - 1))) / mean(t); NaN below
    two items."""
    x, t = np.asarray(totals, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    n = len(x)
    if n < 2:
        return math.nan
    r = x.sum() / t.sum()
    return float(math.sqrt(((x - r * t) ** 2).sum() / (n * (n - 1))) / t.mean())


def split_stderr(figures: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, stderr) from one dict where `NAME_stderr` is the standard error of `NAME`."""
    stderr = {k[: -len("_stderr")]: v for k, v in figures.items() if k.endswith("_stderr")}
    return {k: v for k, v in figures.items() if not k.endswith("_stderr")}, stderr


def value_text(value: float, stderr: float | None) -> str:
    """`0.7000 ± 0.1051`, or the value alone when it has no standard error."""
    if stderr is None or not math.isfinite(stderr):
        return f"{value:.4f}"
    return f"{value:.4f} ± {stderr:.4f}"


def format_results(results: list[TaskResult]) -> str:
    lines = [
        f"{'task':<34} {'metric':<26} {'value ± stderr':>17} {'items':>7} {'skipped':>8}  others"
    ]
    for r in results:
        value = value_text(r.metrics.get(r.headline, math.nan), r.stderr.get(r.headline))
        others = ", ".join(
            f"{k}={v:.4g}"
            + (f"±{r.stderr[k]:.2g}" if math.isfinite(r.stderr.get(k, math.nan)) else "")
            for k, v in r.metrics.items()
            if k != r.headline
        )
        lines.append(
            f"{r.task:<34} {r.headline:<26} {value:>17} {r.evaluated:>7} {sum(r.skipped.values()):>8}  {others}"
        )
        if r.skipped:
            lines.append(
                f"{'':<34} skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items()))
            )
        for note in r.notes:
            lines.append(f"{'':<34} {note}")
    if any(r.stderr for r in results):
        lines.append("± is the standard error of the mean over items")
    return "\n".join(lines)
