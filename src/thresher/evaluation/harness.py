"""lm-evaluation-harness tasks (`lm_eval` 0.4.x, installed from requirements/eval.txt).

The harness loads the model itself, from the local folder thresher loads
(`thresher.models.local_folder`: an alias's or a GGUF's converted safetensors folder, a model
folder, a hub id's cached snapshot) with the same dtype and device strings, so it asks nothing
of the hub for anything thresher can load offline.

Its results are read as lm-eval 0.4 writes them (`simple_evaluate`'s return value):

    results[task]          {"alias": "tmc", "sample_len": 20, "acc,none": 0.7,
                            "acc_stderr,none": 0.105, "exact_match,strict-match": 0.4, ...}
    higher_is_better[task] {"acc": True, "exact_match": True}
    n-samples[task]        {"original": 100, "effective": 20}
    configs[task]          the task's YAML, with `metric_list` and `filter_list`
    group_subtasks[group]  [task, ...]

A metric is a `METRIC,FILTER` key whose METRIC the harness lists in `higher_is_better` (or the
caller's explicit list); it is named `METRIC` for the filter `none` and `METRIC[FILTER]`
otherwise, so gsm8k's `exact_match[strict-match]` and `exact_match[flexible-extract]` are both
kept, each with its `METRIC_stderr,FILTER` beside it. Bookkeeping keys (`alias`, `name`,
`sample_len`, `sample_count`) are never metrics. The headline is the task's primary metric: the
first of its `metric_list` under the first of its filters (a group's first aggregate metric).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thresher.evaluation.tasks import TaskResult

INSTALL = "pip install -r requirements/eval.txt torch==2.13.0 (or pip install lm_eval==0.4.13)"


def lm_eval_tasks(
    model_path: str,
    tasks: list[str],
    *,
    limit: int | None,
    device: str = "cpu",
    dtype: str = "float32",
    include: str | None = None,
    metrics: list[str] | None = None,
) -> list[TaskResult]:
    """Run lm-evaluation-harness's `simple_evaluate` with its `hf` model on a local transformers
    folder (`models.local_folder`); `include` is a folder of the user's own task YAMLs (lm-eval's
    `--include_path`); `metrics` replaces `higher_is_better` as the list of metric names kept,
    its first name present being the headline."""
    try:
        import lm_eval
    except ImportError:
        raise ImportError(
            "the lm_eval task needs lm-evaluation-harness, which is not installed: " + INSTALL
        ) from None
    model_args = {"pretrained": str(model_path), "dtype": dtype, "device": device}
    extra = {}
    if include is not None:
        if not Path(include).is_dir():
            raise ValueError(
                f"--lm-eval-include {include!r} is not a folder: give the folder that holds your task YAMLs"
            )
        extra["task_manager"] = task_manager(include, tasks, model_args)
    out = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks, limit=limit, log_samples=False, **extra
    )
    return read_results(out, metrics)


def task_manager(include: str, tasks: list[str], metadata: dict[str, Any]) -> Any:
    """A TaskManager over the user's folder; lm-eval's built-in tasks are indexed too only when a
    task asked for is not in that folder (indexing them took about 9 s on a 2-core machine).
    `metadata` is what lm-eval's own command passes: the model arguments."""
    from lm_eval.tasks import TaskManager

    own = TaskManager(include_path=str(include), include_defaults=False, metadata=metadata)
    if all(t in own.all_tasks for t in tasks):
        return own
    return TaskManager(include_path=str(include), metadata=metadata)


def read_results(out: dict[str, Any], metrics: list[str] | None = None) -> list[TaskResult]:
    """One TaskResult per task asked for: a task, or a group by its aggregate metrics (a group
    without any is shown by its tasks); the tasks inside a reported group are not repeated."""
    groups: dict[str, list[str]] = out.get("group_subtasks") or {}
    inside = {t for subtasks in groups.values() for t in subtasks}
    results: list[TaskResult] = []

    def add(name: str) -> None:
        r = _task_result(name, out, metrics)
        if r is not None:
            results.append(r)
        elif groups.get(name):
            for sub in groups[name]:
                add(sub)
        else:
            keys = sorted(k for k in out["results"][name] if "," in k and "_stderr," not in k)
            wanted = f"none of {metrics}" if metrics else "no metric named in higher_is_better"
            raise ValueError(
                f"lm-eval task {name!r} reported {wanted}; its figures are {keys}: "
                "name the ones to keep with --lm-eval-metric"
            )

    for name in out["results"]:
        if name not in inside:
            add(name)
    return results


def _task_result(name: str, out: dict[str, Any], wanted: list[str] | None) -> TaskResult | None:
    entry = out["results"][name]
    directions = (out.get("higher_is_better") or {}).get(name, {})
    values: dict[str, float] = {}
    stderr: dict[str, float] = {}
    better: dict[str, bool | None] = {}
    notes: list[str] = []
    for key, value in entry.items():
        metric, sep, filt = key.partition(",")
        if not sep or metric.endswith("_stderr"):
            continue  # bookkeeping (alias, sample_len, ...) has no filter; stderrs go beside
        if metric not in (wanted if wanted is not None else directions):
            continue
        label = metric if filt == "none" else f"{metric}[{filt}]"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            notes.append(f"{label} is {value!r}, not a number: left out")
            continue
        values[label] = float(value)
        se = entry.get(f"{metric}_stderr,{filt}")
        if isinstance(se, (int, float)) and not isinstance(se, bool):
            stderr[label] = float(se)  # lm-eval writes "N/A" where it has none
        better[label] = directions.get(metric)
    if not values:
        return None
    original, effective = _counts(name, out)
    leaves = _leaves(name, out.get("group_subtasks") or {})
    if leaves != [name]:
        shown = ", ".join(leaves[:5]) + (", ..." if len(leaves) > 5 else "")
        notes.insert(
            0, f"group of {len(leaves)} tasks ({shown}); ask for one by name for its own figures"
        )
    notes.insert(
        0,
        f"lm-evaluation-harness {out.get('lm_eval_version', '?')}, "
        f"{(out.get('n-shot') or {}).get(name, '?')}-shot",
    )
    return TaskResult(
        task=f"lm_eval:{name}",
        kind="lm_eval",
        source=name,
        metrics=values,
        headline=_primary(name, out, values, wanted),
        evaluated=effective,
        skipped={"over_limit": original - effective} if original > effective else {},
        notes=notes,
        stderr=stderr,
        higher_is_better=better,
    )


def _primary(
    name: str, out: dict[str, Any], values: dict[str, float], wanted: list[str] | None
) -> str:
    """The first wanted metric present; else the first of the task's `metric_list` under its
    first filter; else (a group) the first metric in the harness's order."""
    for metric in wanted or []:
        for label in values:
            if label.split("[")[0] == metric:
                return label
    config = (out.get("configs") or {}).get(name) or {}
    if config.get("metric_list"):
        metric = config["metric_list"][0]["metric"]
        filt = (config.get("filter_list") or [{"name": "none"}])[0]["name"]
        label = metric if filt == "none" else f"{metric}[{filt}]"
        if label in values:
            return label
    return next(iter(values))


def _leaves(name: str, groups: dict[str, list[str]]) -> list[str]:
    if not groups.get(name):
        return [name]
    return [leaf for sub in groups[name] for leaf in _leaves(sub, groups)]


def _counts(name: str, out: dict[str, Any]) -> tuple[int, int]:
    """(items in the task, items evaluated), summed over a group's tasks."""
    counts = out.get("n-samples") or {}
    original = effective = 0
    for leaf in _leaves(name, out.get("group_subtasks") or {}):
        n = counts.get(leaf)
        if n is None:  # lm-eval 0.4 writes n-samples for every task it ran
            raise ValueError(
                f"lm-eval's results have no n-samples for task {leaf!r}: expected lm_eval 0.4.x ({INSTALL})"
            )
        original += int(n["original"])
        effective += int(n["effective"])
    return original, effective
