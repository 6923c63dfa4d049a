"""A pass-through to lm-evaluation-harness (`lm_eval`, optional: requirements/eval.txt)."""

from __future__ import annotations

from pathlib import Path

from thresher.evaluation.tasks import TaskResult


def lm_eval_tasks(
    model_path: str,
    tasks: list[str],
    *,
    limit: int | None,
    device: str = "cpu",
    include: str | None = None,
) -> list[TaskResult]:
    """Run lm-evaluation-harness's `simple_evaluate` on a transformers model folder or hub id;
    `include` is a folder of task YAMLs of the user's own (lm-eval's `--include_path`)."""
    try:
        import lm_eval
    except ImportError:
        raise ImportError(
            "the lm_eval task needs lm-evaluation-harness, which is optional and not installed: "
            "pip install -r requirements/eval.txt (or pip install lm_eval==0.4.13)"
        ) from None
    extra = {}
    if include is not None:
        if not Path(include).is_dir():
            raise ValueError(
                f"--lm-eval-include {include!r} is not a folder: give the folder that holds your task YAMLs"
            )
        from lm_eval.tasks import TaskManager

        extra["task_manager"] = TaskManager(include_path=str(include))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": model_path, "dtype": "float32", "device": device},
        tasks=tasks,
        limit=limit,
        **extra,
    )
    results = []
    for name, metrics in out["results"].items():
        counts = out.get("n-samples", {}).get(name, {})
        original, effective = counts.get("original"), counts.get("effective")
        values = {
            k.split(",")[0]: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and "stderr" not in k
        }
        skipped = (
            {"over_limit": original - effective}
            if original and effective is not None and original > effective
            else {}
        )
        results.append(
            TaskResult(
                f"lm_eval:{name}",
                "lm_eval",
                name,
                values,
                next(iter(values), ""),
                effective or 0,
                skipped,
            )
        )
    return results
