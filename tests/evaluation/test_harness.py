"""lm-evaluation-harness results read into TaskResults (the harness mocked)."""

from __future__ import annotations

import sys
import types

import pytest

from thresher.evaluation import harness


def test_lm_eval_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"requirements/eval\.txt"):
        harness.lm_eval_tasks("model", ["hellaswag"], limit=5)


def test_lm_eval_results_are_reported_with_counts(monkeypatch):
    calls = {}

    def simple_evaluate(**kwargs):
        calls.update(kwargs)
        return {
            "results": {
                "hellaswag": {
                    "alias": "hellaswag",
                    "acc,none": 0.25,
                    "acc_stderr,none": 0.1,
                    "acc_norm,none": 0.3,
                }
            },
            "n-samples": {"hellaswag": {"original": 100, "effective": 5}},
        }

    monkeypatch.setitem(
        sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate)
    )
    [r] = harness.lm_eval_tasks("/models/m", ["hellaswag"], limit=5)
    assert (
        calls["model"] == "hf"
        and calls["model_args"]["pretrained"] == "/models/m"
        and calls["limit"] == 5
    )
    assert r.metrics == {"acc": 0.25, "acc_norm": 0.3} and r.headline == "acc"
    assert r.evaluated == 5 and r.skipped == {"over_limit": 95}
    assert "task_manager" not in calls


def test_lm_eval_local_task_yamls_go_through_a_task_manager(monkeypatch, tmp_path):
    calls, made = {}, []

    class TaskManager:
        def __init__(self, include_path=None):
            made.append(include_path)

    def simple_evaluate(**kwargs):
        calls.update(kwargs)
        return {
            "results": {"my_qa": {"exact_match,none": 0.5}},
            "n-samples": {"my_qa": {"original": 4, "effective": 4}},
        }

    fake = types.SimpleNamespace(
        simple_evaluate=simple_evaluate, tasks=types.SimpleNamespace(TaskManager=TaskManager)
    )
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", fake.tasks)
    [r] = harness.lm_eval_tasks("/models/m", ["my_qa"], limit=None, include=str(tmp_path))
    assert (
        made == [str(tmp_path)]
        and isinstance(calls["task_manager"], TaskManager)
        and calls["tasks"] == ["my_qa"]
    )
    assert r.task == "lm_eval:my_qa" and r.metrics == {"exact_match": 0.5}
    with pytest.raises(ValueError, match="not a folder"):
        harness.lm_eval_tasks("/models/m", ["my_qa"], limit=None, include=str(tmp_path / "missing"))
