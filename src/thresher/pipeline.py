"""Runs: validate a config, score (read -> passes -> signals), select, and write the outputs.

A run: read the data, fit the method (if it has a fit step), run its passes through the pass
runner, compute its signal table, select, and write the run folder (`thresher.rundir` names
its files: scores, the subset and its exports, rejected rows, manifest, report).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import atomic, export, rundir
from thresher import data as data_mod
from thresher.choices import check_choice
from thresher.compose import capture_pass, capturing_roles, method_for, with_capture
from thresher.config import RunConfig
from thresher.data import ReadResult, Rejected, Sample
from thresher.formats import make_schema
from thresher.methods import FitContext, Fitted, Method, SelectContext, SignalInputs, SignalTable
from thresher.methods.base import first_failure
from thresher.methods.table import make_table
from thresher.rundir import ReportNotWritten, RunFolder
from thresher.runner import PassRunner
from thresher.selectors.base import Selection, budget_count
from thresher.templates import get_template

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
PACKAGES = ("thresher", "torch", "transformers", "tokenizers", "numpy", "pyarrow", "datasets")


class RejectedTooMany(RuntimeError):
    """More rows failed than `score.max_rejected_fraction` allows."""


@dataclass
class ScoreResult:
    run_dir: Path
    table: SignalTable
    read: ReadResult
    samples: list[Sample]
    rejected: list[Rejected]  # reader rejections + rows no pass could score
    passes: dict[str, dict[str, Any]]  # role -> {label, key, reused, scored, discarded_shards}
    model_info: dict[str, Any] | None
    template_text: str | None
    method: Method  # built once per run: its params, selector and diagnostics

    @property
    def counts(self) -> dict[str, int]:
        st = self.table.status
        return {
            "rows_read": self.read.rows_read,
            "scored": sum(1 for s in st if s == "ok" or s.startswith("filtered:")),
            "rejected": len(self.rejected),
            "rejected_reading": len(self.read.rejected),
            "rejected_scoring": len(self.rejected) - len(self.read.rejected),
            "filtered": sum(1 for s in st if s.startswith("filtered:")),
            "eligible": sum(1 for s in st if s == "ok"),
        }


def holding_lock(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated `f(..., cfg, ...)` holding the lock of `cfg.output.dir`
    (`RunFolder.lock`), so a second run on the same folder refuses instead of deleting this one's
    unfinished shards."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(f)

        @functools.wraps(f)
        def locked(*args: Any, **kwargs: Any) -> Any:
            cfg = signature.bind(*args, **kwargs).arguments["cfg"]
            with RunFolder(cfg.output.dir).lock(command):
                return f(*args, **kwargs)

        return locked

    return wrap


def validate(cfg: RunConfig, *, need_budget: bool = True) -> Method:
    """Check a config fully before any model loads; returns the run's method."""
    from thresher.models import check_precision, resolve_model

    check_choice("score.engine", cfg.score.engine, ENGINES)
    if cfg.score.engine == "ray":
        from thresher.engine.ray import require_ray

        require_ray()
    if cfg.data.format is not None:
        check_choice("data.format", cfg.data.format, data_mod.FORMATS)
    if not cfg.data.path:
        raise ValueError(
            "no data given: set data.path (or --data) to a .json/.jsonl/.parquet file, a save_to_disk folder or a hub id"
        )
    data_mod.check_source(cfg.data.path)
    make_schema(
        cfg.data.columns or None, cfg.data.roles or None
    )  # a typo in --column / --role fails here
    method = method_for(cfg)
    if method.passes:
        resolve_model(cfg.model.name)
        check_precision(cfg.model.dtype, cfg.model.device, reproduce=cfg.method.reproduce)
    _check_tokenizers(cfg, method)
    if cfg.score.capture is not None and not capturing_roles(
        method.passes, capture_pass(cfg.score.capture, cfg.model.name)
    ):
        raise ValueError(
            f"score.capture={cfg.score.capture!r} adds activations to a pass without any that reads "
            f"the same tokens as {cfg.score.capture}'s pool pass (cond view, alpaca template, 512 "
            f"tokens, prompt_first), but {cfg.method.name!r} has none: capture with ifd, ppl, "
            f"entropy or miwv at their defaults, or run --method {cfg.score.capture} first"
        )
    for spec in method.passes.values():
        if spec.template != "chat":
            get_template(spec.template)
    if need_budget or has_budget(cfg):
        budget_count(cfg.select.budget(), 0)  # the budget's type and range, whatever the pool size
    return method


def has_budget(cfg: RunConfig) -> bool:
    return cfg.select.fraction is not None or cfg.select.count is not None


def read_data(cfg: RunConfig) -> ReadResult:
    """The run's dataset, read as its `data` section says."""
    return data_mod.read(**_data_args(cfg))


def stream_data(cfg: RunConfig) -> data_mod.DataStream:
    """The run's dataset as `read_data` reads it, a row at a time (`thresher validate`)."""
    return data_mod.DataStream(**_data_args(cfg))


def _data_args(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.data
    return {
        "source": d.path,
        "format": d.format,
        "columns": d.columns or None,
        "roles": d.roles or None,
        "id_column": d.id_column,
        "split": d.split,
        "limit": d.limit,
        "allow_mixed": d.allow_mixed,
    }


def _check_tokenizers(cfg: RunConfig, method: Method) -> None:
    """A pass on another model than the run's (InstructDiff's calibrated copy) is compared token by
    token with the run model's passes: refuse a model whose tokenizer differs, naming both."""
    others = {r: s.model for r, s in method.passes.items() if s.model != cfg.model.name}
    if not others:
        return
    from thresher.models import tokenizer_hash

    m = cfg.model
    base = tokenizer_hash(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    for role, name in others.items():
        if tokenizer_hash(name, trust_remote_code=m.trust_remote_code) != base:
            raise ValueError(
                f"{name!r} (the {role} pass of {method.name}) has another tokenizer than the run's "
                f"model {m.name!r}: the two passes are compared token by token, so both models must "
                "share one tokenizer (a fine-tuned copy of the model, or a smaller model of its family)"
            )


@holding_lock("score")
def score(cfg: RunConfig, *, loaded: Any = None, method: Method | None = None) -> ScoreResult:
    """Read the data, fit the method, run (or reuse) every pass it needs, compute its signals."""
    from thresher.models import set_threads

    method = method or validate(cfg, need_budget=False)
    run = RunFolder(cfg.output.dir)
    run.path.mkdir(parents=True, exist_ok=True)
    read = read_data(cfg)
    log.info(
        "read %d rows from %s as %s%s",
        read.rows_read,
        read.source,
        read.format,
        " (detected)" if read.detected else "",
    )
    samples = read.samples
    runner = PassRunner(cfg, run.path, samples, read.content_hash, loaded)
    if method.passes:
        set_threads(cfg.model.threads)
    fitted = Fitted()
    if method.fit is not None:

        def run_pass(role, spec, pass_samples=None, data_hash=None):
            return runner.run(role, spec, pass_samples, data_hash)[0]

        ctx = FitContext(
            samples,
            run.path,
            cfg.select.budget() if has_budget(cfg) else None,
            cfg.select.seed,
            read.content_hash,
            runner.model,
            run_pass,
            runner.embed,
            cfg.score.progress,
        )
        fitted = method.fit(ctx)
    passes = dict(method.passes)
    captured: list[str] = []  # passes that store activations for a later method, and load none now
    if cfg.score.capture is not None:
        extra = capture_pass(cfg.score.capture, cfg.model.name)
        captured = capturing_roles(passes, extra)
        passes.update({role: with_capture(passes[role], extra) for role in captured})
    stats, records, ran = {}, {}, {}
    for role, spec in passes.items():
        if role in fitted.models:  # a model `fit` made, e.g. a calibrated copy
            spec = dataclasses.replace(spec, model=fitted.models[role])
        spec = runner.resolve(spec)
        streamed = role in method.streamed
        stats[role], rec = runner.run(
            role,
            spec,
            demos=fitted.demos.get(role),
            key_extra=fitted.key_extra.get(role),
            stream=streamed,
            activations=() if role in captured else None,
        )
        records[role] = dataclasses.asdict(rec)
        ran[role] = spec
    ids = [s.id for s in samples]
    pass_status = (
        first_failure(
            *(s.statuses(ids) if role in method.streamed else s.status for role, s in stats.items())
        )
        if stats
        else ["ok"] * len(samples)
    )
    with run.scratch(method.name) as scratch:
        inputs = SignalInputs(stats, samples, ran, fitted.state, scratch)
        table = make_table(method, inputs, pass_status)
    info = runner.models.get(cfg.model.name) or next(iter(runner.models.values()), None)
    model_info = dataclasses.asdict(info.info) if info is not None else None
    rejected = list(read.rejected)
    for s, status in zip(samples, table.status, strict=True):
        if status != "ok" and not status.startswith("filtered:"):
            rejected.append(
                Rejected(
                    line=s.meta.get("line", 0), reason=status, id=s.id, record=s.meta.get("record")
                )
            )
    result = ScoreResult(
        run.path, table, read, samples, rejected, records, model_info, runner.template_text, method
    )
    c = result.counts
    assert c["scored"] + c["rejected"] == c["rows_read"], c
    frac = c["rejected"] / max(c["rows_read"], 1)
    if frac > cfg.score.max_rejected_fraction:
        data_mod.write_rejected(rejected, run.rejected)
        raise RejectedTooMany(
            f"{c['rejected']} of {c['rows_read']} rows were rejected ({frac:.0%} > score.max_rejected_fraction="
            f"{cfg.score.max_rejected_fraction}); reasons: {data_mod.rejected_counts(rejected)}. "
            f"See {run.rejected}; check data.format/columns and the template, or raise the threshold."
        )
    return result


def select(result: ScoreResult, cfg: RunConfig) -> Selection:
    ctx = SelectContext(result.read.rows_read, cfg.select.seed)
    return result.method.select(result.table, cfg.select.budget(), ctx)


@holding_lock("select")
def write_outputs(
    result: ScoreResult,
    sel: Selection | None,
    cfg: RunConfig,
    *,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write every output file of a run; returns the manifest. The report is written last: when it
    fails, `ReportNotWritten` is raised once everything else is saved."""
    run, method = RunFolder(result.run_dir), result.method
    rank = {i: k for k, i in enumerate(sel.ids)} if sel else {}
    t = result.table
    cols: dict[str, Any] = {
        "id": pa.array(t.ids, type=pa.string()),
        "line": pa.array([s.meta.get("line") for s in result.samples], type=pa.int64()),
        "status": pa.array(t.status, type=pa.string()),
    }
    for name, values in t.columns.items():
        arr = np.asarray(values)
        cols[name] = pa.array(arr, from_pandas=True) if arr.dtype.kind == "f" else pa.array(arr)
    cols["selected"] = pa.array([i in rank for i in t.ids])
    cols["rank"] = pa.array([rank.get(i) for i in t.ids], type=pa.int64())
    with atomic.replacing(run.scores) as tmp:
        pq.write_table(pa.table(cols), tmp)
    data_mod.write_rejected(result.rejected, run.rejected)
    by_id = {s.id: s for s in result.samples}
    chosen = [by_id[i] for i in sel.ids] if sel else []
    export.write_selected(chosen, run.selected)
    template = cfg.method.params.get("template") or method.params.get("template")
    prompts = None
    if template and template != "chat":  # text templates need no tokenizer to render
        tpl = get_template(template)
        prompts = [tpl.prompt(s) for s in chosen]
    export.write_trl(chosen, run.trl, prompts)
    lf_entry = export.write_llamafactory(chosen, run.llamafactory)
    manifest = {
        "thresher_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "method": {
            "name": cfg.method.name,
            "reproduce": cfg.method.reproduce,
            "params": method.params,
            "score": result.table.score,  # the column the selector ranks by (None: no ranking)
        },
        "data": {
            "source": result.read.source,
            "format": result.read.format,
            "detected": result.read.detected,
            "content_hash": result.read.content_hash,
            "format_counts": result.read.format_counts,
        },
        "model": result.model_info,
        "precision": _precision(result.model_info),
        "template_text": result.template_text,
        "passes": result.passes,
        "counts": result.counts,
        "rejected_reasons": data_mod.rejected_counts(result.rejected),
        "diagnostics": method.diagnostics(result.table, sel) if method.diagnostics else {},
        "selection": {
            "requested": sel.requested,
            "returned": len(sel.ids),
            "eligible": sel.eligible,
            "note": sel.note,
            "budget": cfg.select.budget(),
            "seed": cfg.select.seed,
        }
        if sel
        else None,
        "exports": {
            "selected": rundir.SELECTED,
            "trl": rundir.TRL,
            "trl_format": "prompt_completion"
            if prompts is not None
            else "conversational_prompt_completion",
            "llamafactory": lf_entry,
        },
        "timings_s": timings or {},
        "versions": _versions(),
    }
    run.write_manifest(manifest, default=_json_default)
    if not cfg.output.report:
        run.report.unlink(missing_ok=True)  # an earlier run's page would describe other outputs
        return manifest
    from thresher.report import write_report

    try:  # written last: every output above is saved whatever happens here
        write_report([run.path])
    except Exception as e:  # any failure of the page: reported, never swallowed
        run.report.unlink(missing_ok=True)
        raise ReportNotWritten(
            f"{run.report} was not written ({type(e).__name__}: {e}). Every other output of the "
            f"run is saved in {run.path}; fix the cause, then write the page with "
            f"`thresher report {run.path}`",
            result,
            sel,
            manifest,
        ) from e
    return manifest


def _precision(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which dtype and device the passes ran in, and why (None when no model ran)."""
    return info and {k: info.get(k) for k in ("dtype", "device", "precision")}


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to the manifest")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


@holding_lock("run")
def run(cfg: RunConfig, *, loaded: Any = None) -> tuple[ScoreResult, Selection, dict[str, Any]]:
    """Score, select and write every output: the whole job of `thresher run`."""
    from thresher.models import load_model

    method = validate(cfg)
    t0 = time.perf_counter()
    if method.passes and loaded is None:
        loaded = load_model(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=cfg.model.device,
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
            reproduce=cfg.method.reproduce,
        )
    t1 = time.perf_counter()
    result = score(cfg, loaded=loaded, method=method)
    t2 = time.perf_counter()
    sel = select(result, cfg)
    manifest = write_outputs(
        result,
        sel,
        cfg,
        timings={"load_model": t1 - t0, "score": t2 - t1, "select": time.perf_counter() - t2},
    )
    return result, sel, manifest


def summary(result: ScoreResult, sel: Selection | None, manifest: dict[str, Any]) -> str:
    """The one table printed at the end of a run."""
    c = result.counts
    lines = [
        f"data      {result.read.source} ({result.read.format}{', detected' if result.read.detected else ''})",
        f"rows      {c['rows_read']} read = {c['scored']} scored + {c['rejected']} rejected "
        f"({c['rejected_reading']} reading, {c['rejected_scoring']} scoring)",
    ]
    if manifest.get("precision"):
        lines.append(
            f"precision {manifest['precision']['precision']} (on {manifest['precision']['device']})"
        )
    for role, p in result.passes.items():
        lines.append(
            f"pass      {role:<7} {p['label']:<24} {p['scored']} scored, {p['reused']} reused from cache"
            + (
                f", {p['discarded_shards']} unfinished shards redone"
                if p["discarded_shards"]
                else ""
            )
        )
    if c["filtered"]:
        lines.append(
            f"filtered  {c['filtered']} by the method's rule ({', '.join(sorted({s for s in result.table.status if s.startswith('filtered:')}))})"
        )
    if manifest.get("rejected_reasons"):
        lines.append(
            "rejected  " + ", ".join(f"{k}: {v}" for k, v in manifest["rejected_reasons"].items())
        )
    if sel is not None:
        lines.append(
            f"selected  {len(sel.ids)} of {sel.requested} requested ({sel.eligible} eligible)"
            + (f" - {sel.note}" if sel.note else "")
        )
    for k, v in (manifest.get("diagnostics") or {}).items():
        lines.append(
            f"diag      {k:<28} {v:.4g}" if isinstance(v, float) else f"diag      {k:<28} {v}"
        )
    run = RunFolder(result.run_dir)
    outputs = [*rundir.OUTPUTS, *([rundir.REPORT] if run.report.exists() else [])]
    lines.append(f"outputs   {run.path}/ {' '.join(outputs)}")
    return "\n".join(lines)


def load_run(
    run_dir: str | Path, overrides: list[str] | None = None
) -> tuple[RunConfig, ScoreResult]:
    """Reopen a finished run: its config (with overrides applied), data and signals, no model."""
    from thresher.config import override

    run = RunFolder(run_dir)
    manifest = run.read_manifest()
    run_dir = run.path
    cfg = RunConfig.from_dict(manifest["config"])
    cfg.output.dir = str(run_dir)
    for o in overrides or []:
        override(cfg, o)
    read = read_data(cfg)
    if read.content_hash != manifest["data"]["content_hash"]:
        raise RuntimeError(
            f"{cfg.data.path} changed since {run_dir} was scored (content hash differs); rescore with `thresher run --overwrite`"
        )
    method = method_for(cfg)
    t = pq.read_table(run.scores)
    skip = {"id", "line", "status", "selected", "rank"}
    columns = {
        c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c not in skip
    }
    table = SignalTable(
        t.column("id").to_pylist(), columns, t.column("status").to_pylist(), method.score
    )
    rejected = list(read.rejected)
    by_id = {s.id: s for s in read.samples}
    for i, status in zip(table.ids, table.status, strict=True):
        if status != "ok" and not status.startswith("filtered:"):
            s = by_id[i]
            rejected.append(
                Rejected(
                    line=s.meta.get("line", 0), reason=status, id=i, record=s.meta.get("record")
                )
            )
    result = ScoreResult(
        run_dir,
        table,
        read,
        read.samples,
        rejected,
        manifest["passes"],
        manifest["model"],
        manifest["template_text"],
        method,
    )
    return cfg, result
