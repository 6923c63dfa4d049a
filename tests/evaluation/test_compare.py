"""Comparison tables across models, by hand, and their place in the report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from thresher import report
from thresher.evaluation import ModelEval, TaskResult, compare, evaluation_html, format_comparisons


def mc(acc: float, se: float, n: int, norm: float) -> TaskResult:
    return TaskResult(
        "mc:x.jsonl",
        "mc",
        "x.jsonl",
        {"acc": acc, "acc_norm": norm, "chance": 0.25},
        "acc",
        n,
        stderr={"acc": se, "acc_norm": math.nan},
        higher_is_better={"acc": True, "acc_norm": True},
    )


@pytest.fixture
def models() -> list[ModelEval]:
    base = ModelEval("base", "base", "float32", "cpu", None, [mc(0.5, 0.1, 10, 0.4)])
    extra = TaskResult("lm_eval:y", "lm_eval", "y", {"acc": 0.3}, "acc", 5, stderr={"acc": 0.2})
    tuned = ModelEval(
        "runs/sel", "runs/sel/model", "float32", "cpu", None, [mc(0.7, 0.2, 8, 0.6), extra]
    )
    return [base, tuned]


def test_differences_from_the_first_model_with_their_stderr(models):
    first, second = compare(models)
    assert first["task"] == "mc:x.jsonl" and first["baseline"] == "base"
    rows = {(r["metric"], r["model"]): r for r in first["rows"]}
    assert list(rows) == [  # headline first; chance has no direction and is not compared
        ("acc", "base"),
        ("acc", "runs/sel"),
        ("acc_norm", "base"),
        ("acc_norm", "runs/sel"),
    ]
    assert rows["acc", "base"]["diff"] is None
    assert rows["acc", "runs/sel"]["diff"] == pytest.approx(0.2)
    assert rows["acc", "runs/sel"]["diff_stderr"] == pytest.approx(math.sqrt(0.1**2 + 0.2**2))
    # no stderr (NaN) on either side: the difference has none either, never a made-up 0
    assert rows["acc_norm", "runs/sel"]["diff"] == pytest.approx(0.2)
    assert rows["acc_norm", "runs/sel"]["stderr"] is None
    assert rows["acc_norm", "runs/sel"]["diff_stderr"] is None
    assert first["notes"] == [
        "the models were scored on different numbers of items: {'base': 10, 'runs/sel': 8}"
    ]
    # a task only the second model ran: its row for the baseline is empty, no difference
    assert second["notes"] == ["not run on ['base']"]
    assert [(r["value"], r["diff"]) for r in second["rows"]] == [(None, None), (0.3, None)]
    text = format_comparisons([first, second])
    assert "+0.2000 ± 0.2236" in text and "+0.2000 ± n/a" in text and "acc (higher)" in text
    assert text.endswith(
        "treating the two scores as independent although both models answered the same items"
    )


def test_the_report_shows_a_runs_evaluation(models):
    record = {"models": [m.to_dict() for m in models], "comparisons": compare(models), "notes": []}
    view = report.RunView(Path("run"), {}, ["a"], ["ok"], np.array([True]), {}, {}, [], record)
    page = report.render([view])
    assert "<h3>Evaluation (thresher eval)</h3>" in page and "0.7000 ± 0.2000" in page
    assert "+0.2000 ± 0.2236" in page
    one = {"models": [models[0].to_dict()], "comparisons": [], "notes": []}
    html = evaluation_html(one)
    assert "<td>mc:x.jsonl</td><td>acc</td><td>0.5000 ± 0.1000</td><td>10</td>" in html
    assert "older thresher eval" in evaluation_html({"target": "m", "tasks": []})
    assert ModelEval.from_dict(models[1].to_dict()) == models[1]
