"""lm-evaluation-harness results read into TaskResults, with the harness mocked by result dicts of
the shape lm_eval 0.4.13's `simple_evaluate` returns (keys as printed by a real run)."""

from __future__ import annotations

import sys
import types

import pytest

from thresher.evaluation import harness


def arc_easy_out() -> dict:
    return {
        "results": {
            "arc_easy": {
                "name": "arc_easy",
                "alias": "arc_easy",
                "sample_len": 5,
                "acc,none": 0.6,
                "acc_stderr,none": 0.2449,
                "acc_norm,none": 0.4,
                "acc_norm_stderr,none": 0.2449,
            }
        },
        "group_subtasks": {},
        "configs": {
            "arc_easy": {
                "task": "arc_easy",
                "output_type": "multiple_choice",
                "metric_list": [
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        },
        "versions": {"arc_easy": 1.0},
        "n-shot": {"arc_easy": 0},
        "higher_is_better": {"arc_easy": {"acc": True, "acc_norm": True}},
        "n-samples": {"arc_easy": {"original": 2376, "effective": 5}},
        "lm_eval_version": "0.4.13",
    }


def gsm8k_out() -> dict:
    return {
        "results": {
            "gsm8k": {
                "name": "gsm8k",
                "alias": "gsm8k",
                "sample_len": 4,
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.25,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
            }
        },
        "group_subtasks": {},
        "configs": {
            "gsm8k": {
                "task": "gsm8k",
                "output_type": "generate_until",
                "metric_list": [{"metric": "exact_match", "higher_is_better": True}],
                "filter_list": [
                    {"name": "strict-match", "filter": [{"function": "regex"}]},
                    {"name": "flexible-extract", "filter": [{"function": "regex"}]},
                ],
            }
        },
        "n-shot": {"gsm8k": 5},
        "higher_is_better": {"gsm8k": {"exact_match": True}},
        "n-samples": {"gsm8k": {"original": 4, "effective": 4}},
        "lm_eval_version": "0.4.13",
    }


def group_out(aggregate: bool) -> dict:
    """A group of two tasks, as lm-eval writes it: the group's row holds its aggregate metrics
    (when the group YAML lists some), `group_subtasks` names its tasks."""
    group = {"alias": "tall", "name": "tall", "sample_len": 7}
    if aggregate:
        group |= {"acc,none": 0.5, "acc_stderr,none": 0.2, "sample_count": {"acc,none": 4}}
    return {
        "results": {
            "tmc": {
                "name": "tmc",
                "alias": " - tmc",
                "sample_len": 4,
                "acc,none": 0.5,
                "acc_stderr,none": 0.2887,
            },
            "tgen": {
                "name": "tgen",
                "alias": " - tgen",
                "sample_len": 3,
                "exact_match,none": 0.0,
                "exact_match_stderr,none": 0.0,
            },
            "tall": group,
        },
        "groups": {"tall": group},
        "group_subtasks": {"tall": ["tmc", "tgen"]},
        "configs": {
            "tmc": {"metric_list": [{"metric": "acc"}]},
            "tgen": {"metric_list": [{"metric": "exact_match"}]},
        },
        "n-shot": {"tmc": 0, "tgen": 0},
        "higher_is_better": {
            "tall": {"acc": True, "exact_match": True},
            "tmc": {"acc": True},
            "tgen": {"exact_match": True},
        },
        "n-samples": {
            "tmc": {"original": 4, "effective": 4},
            "tgen": {"original": 3, "effective": 3},
        },
    }


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """Installs a fake `lm_eval` whose simple_evaluate returns `state["out"]` and records its
    arguments in `state["calls"]`; TaskManagers record how they were made."""
    state: dict = {"calls": {}, "managers": [], "local_tasks": []}

    class TaskManager:
        def __init__(self, include_path=None, include_defaults=True, metadata=None):
            state["managers"].append((include_path, include_defaults, metadata))
            self.all_tasks = list(state["local_tasks"]) + ([] if not include_defaults else ["*"])

    def simple_evaluate(**kwargs):
        state["calls"].update(kwargs)
        return state["out"]

    tasks = types.SimpleNamespace(TaskManager=TaskManager)
    fake = types.SimpleNamespace(simple_evaluate=simple_evaluate, tasks=tasks)
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", tasks)
    return state


def test_lm_eval_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"requirements/eval\.txt"):
        harness.lm_eval_tasks("model", ["hellaswag"], limit=5)


def test_metrics_come_with_their_stderr_and_bookkeeping_is_not_a_metric(fake_lm_eval):
    fake_lm_eval["out"] = arc_easy_out()
    [r] = harness.lm_eval_tasks("/models/m", ["arc_easy"], limit=5, dtype="bfloat16", device="cuda")
    calls = fake_lm_eval["calls"]
    assert calls["model"] == "hf" and calls["tasks"] == ["arc_easy"] and calls["limit"] == 5
    assert calls["model_args"] == {"pretrained": "/models/m", "dtype": "bfloat16", "device": "cuda"}
    assert calls["log_samples"] is False and "task_manager" not in calls
    assert r.task == "lm_eval:arc_easy" and r.metrics == {"acc": 0.6, "acc_norm": 0.4}
    assert r.stderr == {"acc": 0.2449, "acc_norm": 0.2449} and r.headline == "acc"
    assert r.higher_is_better == {"acc": True, "acc_norm": True}
    assert r.evaluated == 5 and r.skipped == {"over_limit": 2371}
    assert r.notes == ["lm-evaluation-harness 0.4.13, 0-shot"]


def test_filters_stay_in_the_metric_name_and_the_headline_is_the_first_filter(fake_lm_eval):
    fake_lm_eval["out"] = gsm8k_out()
    [r] = harness.lm_eval_tasks("/models/m", ["gsm8k"], limit=None)
    assert r.metrics == {"exact_match[strict-match]": 0.25, "exact_match[flexible-extract]": 0.5}
    assert r.headline == "exact_match[strict-match]"
    # lm-eval writes "N/A" where it has no stderr: no number is made up for it
    assert r.stderr == {"exact_match[strict-match]": 0.25}
    assert r.evaluated == 4 and not r.skipped


def test_an_explicit_metric_list_replaces_higher_is_better(fake_lm_eval):
    fake_lm_eval["out"] = arc_easy_out()
    [r] = harness.lm_eval_tasks("/m", ["arc_easy"], limit=None, metrics=["acc_norm"])
    assert r.metrics == {"acc_norm": 0.4} and r.headline == "acc_norm"
    fake_lm_eval["out"] = gsm8k_out()
    [r] = harness.lm_eval_tasks("/m", ["gsm8k"], limit=None, metrics=["sample_len", "exact_match"])
    assert r.headline == "exact_match[strict-match]" and len(r.metrics) == 2
    with pytest.raises(
        ValueError,
        match=r"'gsm8k' reported none of \['f1'\]; its figures are \['exact_match,flexible-extract', 'exact_match,strict-match'\]: .*--lm-eval-metric",
    ):
        harness.lm_eval_tasks("/m", ["gsm8k"], limit=None, metrics=["f1"])


def test_a_group_is_reported_once_by_its_aggregate(fake_lm_eval):
    fake_lm_eval["out"] = group_out(aggregate=True)
    [r] = harness.lm_eval_tasks("/m", ["tall"], limit=None)
    assert r.task == "lm_eval:tall" and r.metrics == {"acc": 0.5} and r.stderr == {"acc": 0.2}
    assert r.headline == "acc" and r.evaluated == 7
    assert "group of 2 tasks (tmc, tgen)" in r.notes[1]


def test_a_group_without_aggregate_metrics_is_shown_by_its_tasks(fake_lm_eval):
    fake_lm_eval["out"] = group_out(aggregate=False)
    rs = harness.lm_eval_tasks("/m", ["tall"], limit=None)
    assert [(r.task, r.headline, r.evaluated) for r in rs] == [
        ("lm_eval:tmc", "acc", 4),
        ("lm_eval:tgen", "exact_match", 3),
    ]


def test_local_task_yamls_skip_indexing_the_built_in_tasks(fake_lm_eval, tmp_path):
    fake_lm_eval["out"] = arc_easy_out()
    fake_lm_eval["local_tasks"] = ["arc_easy"]
    harness.lm_eval_tasks("/m", ["arc_easy"], limit=None, include=str(tmp_path))
    args = {"pretrained": "/m", "dtype": "float32", "device": "cpu"}
    assert fake_lm_eval["managers"] == [(str(tmp_path), False, args)]
    assert fake_lm_eval["calls"]["task_manager"].all_tasks == ["arc_easy"]
    # a task that is not in the folder: lm-eval's own tasks are indexed as well
    fake_lm_eval["managers"].clear()
    harness.lm_eval_tasks("/m", ["arc_easy", "hellaswag"], limit=None, include=str(tmp_path))
    assert fake_lm_eval["managers"] == [(str(tmp_path), False, args), (str(tmp_path), True, args)]
    with pytest.raises(ValueError, match="not a folder"):
        harness.lm_eval_tasks("/m", ["my_qa"], limit=None, include=str(tmp_path / "missing"))
