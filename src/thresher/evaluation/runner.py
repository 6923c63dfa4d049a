"""`thresher eval`: resolve the target, load its model once, run every task, write the results."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from thresher import data as data_mod
from thresher.atomic import write_atomic
from thresher.evaluation.gsm8k import GSM8K_MAX_NEW_TOKENS, gsm8k_exact
from thresher.evaluation.harness import lm_eval_tasks
from thresher.evaluation.heldout import content_hash, pool_hashes
from thresher.evaluation.mc import multiple_choice, read_mc
from thresher.evaluation.nll import response_nll
from thresher.evaluation.tasks import EVAL_MAX_LENGTH, TaskResult, TaskSpec, parse_task


def resolve_target(target: str) -> tuple[str, Path | None]:
    """(model to load, run folder or None). A run folder means the model a `thresher train` wrote
    into it (the one sub-folder with config.json), else the model that scored the run."""
    path = Path(target)
    if not (path / "manifest.json").is_file():
        return target, None
    found = sorted(p.parent for p in path.glob("*/config.json")) + sorted(
        p.parent for p in path.glob("*/*/config.json")
    )
    found = [p for p in found if "passes" not in p.parts]
    if len(found) > 1:
        raise ValueError(
            f"run folder {target} holds several models {[str(p) for p in found]}: pass the one to evaluate"
        )
    if found:
        return str(found[0]), path
    return json.loads((path / "manifest.json").read_text())["config"]["model"]["name"], path


def read_pairs(path: str, columns: dict[str, str] | None, limit: int | None) -> data_mod.ReadResult:
    """A dataset file for NLL / GSM8K; `question`/`answer` files (GSM8K) map to instruction/output."""
    if columns is None:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        if '"question"' in first and '"answer"' in first and '"instruction"' not in first:
            columns = {"instruction": "question", "output": "answer"}
    return data_mod.read(path, format="alpaca" if columns else None, columns=columns, limit=limit)


def run_task(
    lm: Any,
    spec: TaskSpec,
    *,
    template: str = "alpaca",
    limit: int | None = None,
    columns: dict[str, str] | None = None,
    exclude: set[str] | None = None,
    mc_style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> TaskResult:
    """One task of `thresher eval` on a loaded model. `exclude` holds content hashes (a run's pool)
    whose rows are skipped as `in_training_pool`."""
    label = f"{spec.kind}:{Path(spec.target).name}"
    if spec.kind == "mc":
        items, skipped = read_mc(spec.target, limit)
        metrics, n, more = multiple_choice(
            lm,
            items,
            style=mc_style,
            max_length=max_length,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        return TaskResult(
            label,
            "mc",
            spec.target,
            metrics,
            "acc",
            n,
            dict(skipped + more),
            [
                f"style={mc_style}; acc_norm divides by continuation bytes; ties go to the lowest choice index"
            ],
        )
    read = read_pairs(spec.target, columns, limit)
    skipped = Counter(r.reason for r in read.rejected)
    samples = read.samples
    if exclude:
        kept = [s for s in samples if content_hash(s) not in exclude]
        skipped["in_training_pool"] += len(samples) - len(kept)
        samples = kept
    if spec.kind == "nll":
        metrics, n, more, n_trunc = response_nll(
            lm,
            samples,
            template=template,
            max_length=max_length,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        notes = [
            f"template={template}; nll_token = total NLL / response tokens (headline), nll_sample = mean of per-item means"
        ]
        if n_trunc:
            notes.append(f"{n_trunc} items truncated to max_length={max_length}")
        return TaskResult(
            label, "nll", spec.target, metrics, "nll_token", n, dict(skipped + more), notes
        )
    if spec.kind == "gsm8k":
        metrics, n, more = gsm8k_exact(
            lm, samples, template=template, max_new_tokens=max_new_tokens, progress=progress
        )
        return TaskResult(
            label,
            "gsm8k",
            spec.target,
            metrics,
            "exact_match",
            n,
            dict(skipped + more),
            [
                f"greedy, max_new_tokens={max_new_tokens}, template={template}; last number of the generation vs the number after ####"
            ],
        )
    raise ValueError(
        f"run_task does not handle kind {spec.kind!r}; lm_eval tasks go through lm_eval_tasks"
    )


def evaluate(
    target: str,
    tasks: list[str],
    *,
    template: str = "alpaca",
    limit: int | None = None,
    columns: dict[str, str] | None = None,
    mc_style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    batch_tokens: int = 2048,
    threads: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    lm_eval_include: str | None = None,
) -> list[TaskResult]:
    """`thresher eval`: load the target's model once, run every task, write the results as JSON
    (to `out`, or `eval.json` in a run folder). Rows of a run's own pool are skipped."""
    from thresher.models import load_model, set_threads

    specs = [parse_task(t) for t in tasks]
    model_name, run_dir = resolve_target(target)
    exclude = (
        pool_hashes(run_dir)
        if run_dir is not None and any(s.kind in ("nll", "gsm8k") for s in specs)
        else None
    )
    set_threads(threads)
    local = [s for s in specs if s.kind != "lm_eval"]
    lm = load_model(model_name) if local else None
    results: list[TaskResult] = []
    for spec in specs:
        if spec.kind == "lm_eval":
            path = lm.info.path if lm is not None else model_name
            results += lm_eval_tasks(
                path, spec.target.split(","), limit=limit, include=lm_eval_include
            )
        else:
            results.append(
                run_task(
                    lm,
                    spec,
                    template=template,
                    limit=limit,
                    columns=columns,
                    exclude=exclude,
                    mc_style=mc_style,
                    max_length=max_length,
                    max_new_tokens=max_new_tokens,
                    batch_tokens=batch_tokens,
                    progress=progress,
                )
            )
    dest = Path(out) if out else (run_dir / "eval.json" if run_dir is not None else None)
    if dest is not None:
        record = {"target": target, "model": model_name, "tasks": [r.to_dict() for r in results]}
        write_atomic(dest, json.dumps(record, indent=1, allow_nan=True).encode())
    return results
