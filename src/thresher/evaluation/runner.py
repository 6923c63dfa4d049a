"""`thresher eval`: resolve each target, load its model once, run every task, compare the
models, write the results."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher import data as data_mod
from thresher.atomic import write_atomic
from thresher.evaluation.compare import compare, format_comparisons
from thresher.evaluation.gsm8k import GSM8K_MAX_NEW_TOKENS, gsm8k_exact
from thresher.evaluation.harness import lm_eval_tasks
from thresher.evaluation.heldout import content_hash, pool_hashes
from thresher.evaluation.mc import multiple_choice, read_mc
from thresher.evaluation.nll import response_nll
from thresher.evaluation.tasks import (
    EVAL_MAX_LENGTH,
    ModelEval,
    TaskResult,
    TaskSpec,
    format_results,
    parse_task,
    split_stderr,
)
from thresher.rundir import RunFolder


def resolve_target(target: str) -> tuple[str, Path | None]:
    """(model to load, run folder or None). A run folder means the model a `thresher train` wrote
    into it (the one sub-folder with config.json), else the model that scored the run."""
    path = Path(target)
    if not RunFolder(path).is_run():
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
    return RunFolder(path).read_manifest()["config"]["model"]["name"], path


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
        figures, n, more = multiple_choice(
            lm,
            items,
            style=mc_style,
            max_length=max_length,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        metrics, stderr = split_stderr(figures)
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
            stderr,
            {"acc": True, "acc_norm": True},
        )
    read = read_pairs(spec.target, columns, limit)
    skipped = Counter(r.reason for r in read.rejected)
    samples = read.samples
    if exclude:
        kept = [s for s in samples if content_hash(s) not in exclude]
        skipped["in_training_pool"] += len(samples) - len(kept)
        samples = kept
    if spec.kind == "nll":
        figures, n, more, n_trunc = response_nll(
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
        metrics, stderr = split_stderr(figures)
        return TaskResult(
            label,
            "nll",
            spec.target,
            metrics,
            "nll_token",
            n,
            dict(skipped + more),
            notes,
            stderr,
            {"nll_token": False, "nll_sample": False},
        )
    if spec.kind == "gsm8k":
        figures, n, more = gsm8k_exact(
            lm, samples, template=template, max_new_tokens=max_new_tokens, progress=progress
        )
        metrics, stderr = split_stderr(figures)
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
            stderr,
            {"exact_match": True},
        )
    raise ValueError(
        f"run_task does not handle kind {spec.kind!r}; lm_eval tasks go through lm_eval_tasks"
    )


@dataclass(frozen=True)
class Target:
    """What one `thresher eval` argument resolves to, before anything loads."""

    given: str
    model: str  # for load_model: an alias, a model folder, a .gguf file or a hub id
    run_dir: Path | None
    revision: str | None
    dtype: str
    device: str


def resolve_settings(target: str, dtype: str | None = None, device: str | None = None) -> Target:
    """The model of `target` and how to load it: `dtype`/`device` when given, else the run's own
    (its manifest's model config), else `ModelConfig`'s defaults (float32 on cpu)."""
    from thresher.config import ModelConfig
    from thresher.models import check_precision, detect_hardware, resolve_precision

    model, run_dir = resolve_target(target)
    run_model = RunFolder(run_dir).read_manifest()["config"]["model"] if run_dir is not None else {}
    default = ModelConfig()
    dtype = dtype or run_model.get("dtype") or default.dtype
    device = device or run_model.get("device") or default.device
    try:
        check_precision(dtype, device)
    except ValueError as e:
        raise ValueError(f"{e} (for {target!r})") from None
    # `auto` resolved here as thresher loads models, so lm-eval gets the same concrete choice
    precision = resolve_precision(dtype, device, reproduce=False, hardware=detect_hardware())
    return Target(
        target,
        model,
        run_dir,
        # the run's revision applies to the model that scored it, not to one trained from it
        run_model.get("revision") if model == run_model.get("name") else None,
        precision.dtype,
        precision.device,
    )


def evaluate_model(
    target: Target,
    specs: list[TaskSpec],
    *,
    exclude: set[str] | None = None,
    lm_eval_include: str | None = None,
    lm_eval_metrics: list[str] | None = None,
    limit: int | None = None,
    **task_kwargs: Any,
) -> ModelEval:
    """Every task on one model: thresher's own tasks on the model loaded once, lm_eval tasks on the
    local folder that load reads, with the dtype and device it used. `task_kwargs` go to
    `run_task`."""
    from thresher.models import load_model, local_folder, resolve_model

    ref = resolve_model(target.model, revision=target.revision)
    lm = None
    if any(s.kind != "lm_eval" for s in specs):
        lm = load_model(ref, dtype=target.dtype, device=target.device)
    folder = str(local_folder(ref)) if any(s.kind == "lm_eval" for s in specs) else None
    # what the load resolved, when it ran; the strings given otherwise
    dtype = lm.info.dtype if lm is not None else target.dtype
    device = str(lm.model.device) if lm is not None else target.device
    results: list[TaskResult] = []
    for spec in specs:
        if spec.kind == "lm_eval":
            results += lm_eval_tasks(
                folder,
                spec.target.split(","),
                limit=limit,
                dtype=dtype,
                device=device,
                include=lm_eval_include,
                metrics=lm_eval_metrics,
            )
        else:
            results.append(run_task(lm, spec, limit=limit, exclude=exclude, **task_kwargs))
    return ModelEval(target.given, target.model, dtype, device, folder, results)


@dataclass
class Evaluation:
    """`thresher eval` on one or more models; with several, one comparison table per task
    against the first model."""

    models: list[ModelEval]
    comparisons: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [m.to_dict() for m in self.models],
            "comparisons": self.comparisons,
            "notes": self.notes,
        }


def evaluate_models(
    targets: list[str],
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
    dtype: str | None = None,
    device: str | None = None,
    lm_eval_include: str | None = None,
    lm_eval_metrics: list[str] | None = None,
) -> Evaluation:
    """`thresher eval`: each target's model is loaded once and runs every task; the results (and,
    for several models, the comparison tables) are written as JSON to `out` and to `eval.json` in
    every run folder evaluated, whose report.html, when there is one, is written again with them.

    Rows of a run's input pool are skipped for every model (`in_training_pool`), so that all the
    models are scored on the same rows."""
    from thresher.models import set_threads

    if not targets:
        raise ValueError("no model given: pass one or more aliases, model folders or run folders")
    specs = [parse_task(t) for t in tasks]
    resolved = [resolve_settings(t, dtype, device) for t in targets]
    runs = [t.run_dir for t in resolved if t.run_dir is not None]
    notes: list[str] = []
    exclude = None
    if runs and any(s.kind in ("nll", "gsm8k") for s in specs):
        exclude = set().union(*(pool_hashes(r) for r in runs))
        notes.append(
            "rows of the input pool of "
            + ", ".join(str(r) for r in runs)
            + " are skipped for every model (in_training_pool)"
        )
    set_threads(threads)
    models = [
        evaluate_model(
            t,
            specs,
            exclude=exclude,
            lm_eval_include=lm_eval_include,
            lm_eval_metrics=lm_eval_metrics,
            limit=limit,
            template=template,
            columns=columns,
            mc_style=mc_style,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        for t in resolved
    ]
    result = Evaluation(models, compare(models) if len(models) > 1 else [], notes)
    payload = json.dumps(result.to_dict(), indent=1, allow_nan=True).encode()
    for dest in ([Path(out)] if out else []) + [RunFolder(r).evaluation for r in runs]:
        write_atomic(dest, payload)
    for run in runs:
        if RunFolder(run).report.is_file():
            from thresher.report import write_report

            write_report([run])
    return result


def evaluate(target: str, tasks: list[str], **kwargs: Any) -> list[TaskResult]:
    """`evaluate_models` on one model: its task results."""
    return evaluate_models([target], tasks, **kwargs).models[0].results


def format_evaluation(evaluation: Evaluation) -> str:
    """Each model's results, then the comparison tables."""
    parts = []
    for m in evaluation.models:
        head = f"{m.target}" + (f" -> {m.model}" if m.model != m.target else "")
        parts.append(f"== {head} ({m.dtype}, {m.device})\n" + format_results(m.results))
    if evaluation.comparisons:
        parts.append(format_comparisons(evaluation.comparisons))
    parts += evaluation.notes
    return "\n\n".join(parts)
