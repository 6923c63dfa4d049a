"""Several models on the same tasks: one table per task with each model's figures, its
difference from the first model (the baseline, e.g. the base model before fine-tuning) and the
standard error of that difference.

The stderr of a difference is sqrt(se1² + se2²): the two scores are treated as independent,
though both models answered the same items (a paired stderr would need per-item scores, which
the tasks do not keep).
"""

from __future__ import annotations

import html
import math
from typing import Any

from thresher.evaluation.tasks import ModelEval, TaskResult, value_text

DIFF_NOTE = (
    "difference = model - baseline; its stderr = sqrt(se_model² + se_baseline²), treating the two "
    "scores as independent although both models answered the same items"
)


def compare(models: list[ModelEval]) -> list[dict[str, Any]]:
    """One table per task (in order of first appearance): for each compared metric (the headline
    first, then the others with a direction), one row per model with its value, stderr, items,
    and its difference from the first model with that difference's stderr."""
    base = models[0]
    tasks = list(dict.fromkeys(r.task for m in models for r in m.results))
    tables = []
    for task in tasks:
        found = [_find(m.results, task) for m in models]
        first = next(r for r in found if r is not None)
        metrics = [first.headline] + [
            k
            for k in dict.fromkeys(k for r in found if r is not None for k in r.higher_is_better)
            if k != first.headline
        ]
        rows = []
        for metric in metrics:
            ref = _figure(found[0], metric)
            for m, r in zip(models, found, strict=True):
                value, se = _figure(r, metric)
                diff = diff_se = None
                if m is not base and value is not None and ref[0] is not None:
                    diff = value - ref[0]
                    if se is not None and ref[1] is not None:
                        diff_se = math.sqrt(se**2 + ref[1] ** 2)
                rows.append(
                    {
                        "metric": metric,
                        "higher_is_better": _direction(found, metric),
                        "model": m.target,
                        "value": value,
                        "stderr": se,
                        "items": r.evaluated if r is not None else None,
                        "diff": diff,
                        "diff_stderr": diff_se,
                    }
                )
        notes = []
        items = {m.target: r.evaluated for m, r in zip(models, found, strict=True) if r}
        if len(set(items.values())) > 1:
            notes.append(f"the models were scored on different numbers of items: {items}")
        missing = [m.target for m, r in zip(models, found, strict=True) if r is None]
        if missing:
            notes.append(f"not run on {missing}")
        tables.append({"task": task, "baseline": base.target, "rows": rows, "notes": notes})
    return tables


def _find(results: list[TaskResult], task: str) -> TaskResult | None:
    return next((r for r in results if r.task == task), None)


def _figure(r: TaskResult | None, metric: str) -> tuple[float | None, float | None]:
    if r is None or metric not in r.metrics:
        return None, None
    se = r.stderr.get(metric)
    return r.metrics[metric], se if se is not None and math.isfinite(se) else None


def _direction(found: list[TaskResult | None], metric: str) -> bool | None:
    return next(
        (r.higher_is_better[metric] for r in found if r and metric in r.higher_is_better), None
    )


def _better(direction: bool | None) -> str:
    return {True: "higher", False: "lower", None: "?"}[direction]


def _diff_text(row: dict[str, Any]) -> str:
    if row["diff"] is None:
        return ""
    se = f" ± {row['diff_stderr']:.4f}" if row["diff_stderr"] is not None else " ± n/a"
    return f"{row['diff']:+.4f}{se}"


def format_comparisons(tables: list[dict[str, Any]]) -> str:
    parts = []
    for t in tables:
        labels = [f"{r['metric']} ({_better(r['higher_is_better'])})" for r in t["rows"]]
        lw = max(len("metric (better)"), *map(len, labels))
        mw = max(len("model"), *(len(r["model"]) for r in t["rows"]))
        lines = [
            f"{t['task']}: difference from {t['baseline']} (the first model)",
            f"{'metric (better)':<{lw}}  {'model':<{mw}}  {'value ± stderr':>17} {'items':>6}  difference ± stderr",
        ]
        for k, (label, row) in enumerate(zip(labels, t["rows"], strict=True)):
            value = "n/a" if row["value"] is None else value_text(row["value"], row["stderr"])
            items = "" if row["items"] is None else str(row["items"])
            shown = label if k == 0 or labels[k - 1] != label else ""
            lines.append(
                f"{shown:<{lw}}  {row['model']:<{mw}}  {value:>17} {items:>6}  {_diff_text(row)}".rstrip()
            )
        lines += t["notes"]
        parts.append("\n".join(lines))
    parts.append(DIFF_NOTE)
    return "\n\n".join(parts)


def evaluation_html(record: dict[str, Any]) -> str:
    """The report's section for a run's `eval.json`: the comparison tables when several models
    were evaluated, else the one model's results."""
    esc = html.escape
    if "models" not in record:
        return (
            "<p>eval.json was written by an older thresher eval: run it again to show it here</p>"
        )
    if record["comparisons"]:
        out = []
        for t in record["comparisons"]:
            rows = "".join(
                f"<tr><td>{esc(r['metric'])} ({_better(r['higher_is_better'])})</td><td>{esc(r['model'])}</td>"
                f"<td>{'n/a' if r['value'] is None else esc(value_text(r['value'], r['stderr']))}</td>"
                f"<td>{'' if r['items'] is None else r['items']}</td><td>{esc(_diff_text(r))}</td></tr>"
                for r in t["rows"]
            )
            out.append(
                f"<p><b>{esc(t['task'])}</b>: difference from {esc(t['baseline'])}"
                + "".join(f"; {esc(n)}" for n in t["notes"])
                + "</p><table><tr><th>metric (better)</th><th>model</th><th>value ± stderr</th>"
                f"<th>items</th><th>difference ± stderr</th></tr>{rows}</table>"
            )
        return "".join(out) + f"<p>{esc(DIFF_NOTE)}</p>"
    rows = []
    for m in record["models"]:
        for r in m["tasks"]:
            head = r["headline"]
            value = value_text(r["metrics"].get(head, math.nan), r["stderr"].get(head))
            skipped = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped"].items()))
            rows.append(
                f"<tr><td>{esc(m['target'])}</td><td>{esc(r['task'])}</td><td>{esc(head)}</td>"
                f"<td>{esc(value)}</td><td>{r['evaluated']}</td><td>{esc(skipped)}</td></tr>"
            )
    return (
        "<table><tr><th>model</th><th>task</th><th>metric</th><th>value ± stderr</th>"
        f"<th>items</th><th>skipped</th></tr>{''.join(rows)}</table>"
    )
