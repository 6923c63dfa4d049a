"""Runs: validate a config, score (read -> passes -> signals), select, and write the outputs.

Output folder: `scores.parquet` (one row per sample: id, source line, status, every signal,
token counts, selected flag and rank), `selected.jsonl` (the subset in the input's format),
`trl.jsonl`, `llamafactory/` (data file + dataset_info.json), `rejected.jsonl` (every row that
could not be read or scored, with its reason and line), and `manifest.json` (resolved config,
model and tokenizer hashes, template text, package versions, counts).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import data as data_mod
from thresher import export
from thresher.backends.hf import CAPABILITIES
from thresher.cache import PassStore, activation_columns, find_pass, key_material, pass_label
from thresher.compose import capture_pass, capturing_roles, plan_for, with_capture
from thresher.config import RunConfig
from thresher.data import ReadResult, Rejected, Sample
from thresher.engine import run_on_engine
from thresher.engine.scorer import Scorer
from thresher.formats import make_schema
from thresher.methods import Plan, RunContext, SignalTable
from thresher.passes import PassSpec, check_choice
from thresher.selectors.topk import Selection, budget_count
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


def validate(cfg: RunConfig, *, need_budget: bool = True) -> Plan:
    """Check a config fully before any model loads; returns the method's plan."""
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
    plan = plan_for(cfg)
    if plan.passes:
        resolve_model(cfg.model.name)
        check_precision(cfg.model.dtype, cfg.model.device, reproduce=cfg.method.reproduce)
    if cfg.score.capture is not None and not capturing_roles(
        plan.passes, capture_pass(cfg.score.capture, cfg.model.name, None)
    ):
        raise ValueError(
            f"score.capture={cfg.score.capture!r} adds activations to a cond pass without any, of the same template, max_length "
            f"and truncation as {cfg.score.capture} (alpaca, 512, prompt_first), but {cfg.method.name!r} has none: capture with "
            f"ifd, ppl, entropy or miwv at their defaults, or run --method {cfg.score.capture} first"
        )
    for role, spec in plan.passes.items():
        missing = [f for f in spec.fields if f not in CAPABILITIES]
        if missing:
            raise ValueError(
                f"the {role} pass asks for {missing}, which the hf backend cannot produce ({list(CAPABILITIES)})"
            )
        if spec.template != "chat":
            get_template(spec.template)
    if need_budget or cfg.select.fraction is not None or cfg.select.count is not None:
        budget_count(cfg.select.budget(), 0)  # the budget's type and range, whatever the pool size
    return plan


def score(cfg: RunConfig, *, loaded: Any = None) -> ScoreResult:
    """Read the data, run (or reuse) every pass the method needs, compute its signals."""
    from thresher.models import load_model, set_threads

    plan = validate(cfg, need_budget=False)
    run_dir = Path(cfg.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    read = data_mod.read(
        d.path,
        format=d.format,
        columns=d.columns or None,
        roles=d.roles or None,
        id_column=d.id_column,
        split=d.split,
        limit=d.limit,
        allow_mixed=d.allow_mixed,
    )
    log.info(
        "read %d rows from %s as %s%s",
        read.rows_read,
        read.source,
        read.format,
        " (detected)" if read.detected else "",
    )
    samples = read.samples
    stats, passes, infos, template_text = {}, {}, {}, None
    models: dict[str, Any] = {cfg.model.name: loaded} if loaded is not None else {}

    def get_model(name: str) -> Any:  # each model loads once, whatever the number of passes
        if name not in models:
            m = cfg.model
            models[name] = load_model(
                name,
                dtype=m.dtype,
                device=m.device,
                revision=m.revision if name == m.name else None,
                trust_remote_code=m.trust_remote_code,
                reproduce=cfg.method.reproduce,
            )
        return models[name]

    if plan.passes:
        set_threads(cfg.model.threads)
    extra = (
        plan.prepare(
            RunContext(run_dir, samples, get_model, cfg, cfg.score.progress, read.content_hash)
        )
        if plan.prepare
        else {}
    )
    captured: list[str] = []  # passes that store activations for a later method, and load none now
    if cfg.score.capture is not None:
        extra_spec = capture_pass(
            cfg.score.capture, cfg.model.name, get_model(cfg.model.name).info.n_layers
        )
        captured = capturing_roles(plan.passes, extra_spec)
        for role in captured:
            plan.passes[role] = with_capture(plan.passes[role], extra_spec)
    for role, spec in plan.passes.items():
        if "model" in extra.get(role, {}):  # a model `prepare` made, e.g. a calibrated copy
            spec = dataclasses.replace(spec, model=extra[role]["model"])
        lm = get_model(spec.model)
        infos[spec.model] = dataclasses.asdict(lm.info)
        text = get_template(spec.template, lm.tokenizer).text
        template_text = template_text or text
        # passes of the run's model are shared between methods by their label; a pass of another
        # model (e.g. a calibrated copy) gets a folder of its own role
        label = pass_label(spec) if spec.model == cfg.model.name else f"{pass_label(spec)}@{role}"
        material = key_material(spec, infos[spec.model], text, read.content_hash)
        if extra.get(role, {}).get(
            "key_extra"
        ):  # what `prepare` decided, e.g. MIWV's demonstration per sample
            material["extra"] = extra[role]["key_extra"]
        # a stored pass with more fields or layers serves this one (e.g. ifd reads nait's cond pass);
        # it is resumed with its own spec so all its shards hold the same columns
        # a stored superset is loaded with only the columns asked for (ifd reading nait's pass loads none)
        wanted = () if role in captured else activation_columns(spec)
        found = None if cfg.score.overwrite else find_pass(run_dir, material)
        if found is not None:
            label, material = found
            spec = PassSpec.from_dict(material["pass"])
        store = PassStore(run_dir, spec, material, label)
        scorer = Scorer(spec, lm.model, lm.tokenizer, batch_tokens=cfg.score.batch_tokens)
        pass_args = {
            "shard_rows": cfg.score.shard_rows,
            "overwrite": cfg.score.overwrite,
            "progress": cfg.score.progress,
            "demos": extra.get(role, {}).get("demos"),
            "load_stats": role not in plan.streamed,
            "activations": wanted,
        }
        res = run_on_engine(cfg, samples, scorer, store, **pass_args)
        stats[role] = res.stats if res.stats is not None else store
        passes[role] = {
            "label": store.dir.name,
            "model": spec.model,
            "key": store.key,
            "reused": res.reused,
            "scored": res.scored,
            "discarded_shards": res.discarded_shards,
        }
    info = infos.get(cfg.model.name) or next(iter(infos.values()), None)
    table = plan.compute(stats, samples)
    rejected = list(read.rejected)
    for s, status in zip(samples, table.status, strict=True):
        if status != "ok" and not status.startswith("filtered:"):
            rejected.append(
                Rejected(
                    line=s.meta.get("line", 0), reason=status, id=s.id, record=s.meta.get("record")
                )
            )
    result = ScoreResult(run_dir, table, read, samples, rejected, passes, info, template_text)
    c = result.counts
    assert c["scored"] + c["rejected"] == c["rows_read"], c
    frac = c["rejected"] / max(c["rows_read"], 1)
    if frac > cfg.score.max_rejected_fraction:
        data_mod.write_rejected(rejected, run_dir / "rejected.jsonl")
        raise RejectedTooMany(
            f"{c['rejected']} of {c['rows_read']} rows were rejected ({frac:.0%} > score.max_rejected_fraction="
            f"{cfg.score.max_rejected_fraction}); reasons: {data_mod.rejected_counts(rejected)}. "
            f"See {run_dir / 'rejected.jsonl'}; check data.format/columns and the template, or raise the threshold."
        )
    return result


def select(result: ScoreResult, cfg: RunConfig, plan: Plan | None = None) -> Selection:
    plan = plan or plan_for(cfg)
    return plan.choose(result.table, cfg.select.budget(), result.read.rows_read, cfg.select.seed)


def write_outputs(
    result: ScoreResult,
    sel: Selection | None,
    cfg: RunConfig,
    *,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Write every output file of a run; returns the manifest."""
    out = result.run_dir
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
    with export.replacing(out / "scores.parquet") as tmp:
        pq.write_table(pa.table(cols), tmp)
    data_mod.write_rejected(result.rejected, out / "rejected.jsonl")
    by_id = {s.id: s for s in result.samples}
    chosen = [by_id[i] for i in sel.ids] if sel else []
    export.write_selected(chosen, out / "selected.jsonl")
    template = cfg.method.params.get("template") or _plan_template(cfg)
    prompts = None
    if template and template != "chat":  # text templates need no tokenizer to render
        tpl = get_template(template)
        prompts = [tpl.prompt(s) for s in chosen]
    export.write_trl(chosen, out / "trl.jsonl", prompts)
    lf_entry = export.write_llamafactory(chosen, out / "llamafactory")
    manifest = {
        "thresher_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "method": {
            "name": cfg.method.name,
            "reproduce": cfg.method.reproduce,
            "params": _plan_params(cfg),
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
        "diagnostics": _diagnostics(cfg, result.table, sel),
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
            "selected": "selected.jsonl",
            "trl": "trl.jsonl",
            "trl_format": "prompt_completion"
            if prompts is not None
            else "conversational_prompt_completion",
            "llamafactory": lf_entry,
        },
        "timings_s": timings or {},
        "versions": _versions(),
    }
    export.write_atomic(
        out / "manifest.json", json.dumps(manifest, indent=1, default=_json_default).encode()
    )
    if cfg.output.report:
        from thresher.report import write_report

        try:  # every output above is written: a report that fails must not fail the run
            write_report([out])
        except Exception as e:
            log.warning(
                "report.html was not written (%s: %s); rerun `thresher report %s`",
                type(e).__name__,
                e,
                out,
            )
    return manifest


def _precision(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which dtype and device the passes ran in, and why (None when no model ran)."""
    return info and {k: info.get(k) for k in ("dtype", "device", "precision")}


def _plan_params(cfg: RunConfig) -> dict[str, Any]:
    return plan_for(cfg).params


def _diagnostics(cfg: RunConfig, table: SignalTable, sel: Selection | None) -> dict[str, Any]:
    plan = plan_for(cfg)
    return plan.diagnostics(table, sel) if plan.diagnostics else {}


def _plan_template(cfg: RunConfig) -> str | None:
    return _plan_params(cfg).get("template")


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


def run(cfg: RunConfig, *, loaded: Any = None) -> tuple[ScoreResult, Selection, dict[str, Any]]:
    """Score, select and write every output: the whole job of `thresher run`."""
    from thresher.models import load_model

    plan = validate(cfg)
    t0 = time.perf_counter()
    if plan.passes and loaded is None:
        loaded = load_model(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=cfg.model.device,
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
            reproduce=cfg.method.reproduce,
        )
    t1 = time.perf_counter()
    result = score(cfg, loaded=loaded)
    t2 = time.perf_counter()
    sel = select(result, cfg, plan)
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
    lines.append(
        f"outputs   {result.run_dir}/ scores.parquet selected.jsonl trl.jsonl llamafactory/ rejected.jsonl manifest.json"
        + (" report.html" if (result.run_dir / "report.html").exists() else "")
    )
    return "\n".join(lines)


def load_run(
    run_dir: str | Path, overrides: list[str] | None = None
) -> tuple[RunConfig, ScoreResult]:
    """Reopen a finished run: its config (with overrides applied), data and signals, no model."""
    from thresher.config import override

    run_dir = Path(run_dir)
    path = run_dir / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no manifest.json: is it the --out folder of a finished `thresher run` or `thresher score`?"
        )
    manifest = json.loads(path.read_text())
    cfg = RunConfig.from_dict(manifest["config"])
    cfg.output.dir = str(run_dir)
    for o in overrides or []:
        override(cfg, o)
    d = cfg.data
    read = data_mod.read(
        d.path,
        format=d.format,
        columns=d.columns or None,
        roles=d.roles or None,
        id_column=d.id_column,
        split=d.split,
        limit=d.limit,
        allow_mixed=d.allow_mixed,
    )
    if read.content_hash != manifest["data"]["content_hash"]:
        raise RuntimeError(
            f"{d.path} changed since {run_dir} was scored (content hash differs); rescore with `thresher run --overwrite`"
        )
    t = pq.read_table(run_dir / "scores.parquet")
    skip = {"id", "line", "status", "selected", "rank"}
    columns = {
        c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names if c not in skip
    }
    table = SignalTable(t.column("id").to_pylist(), columns, t.column("status").to_pylist(), None)
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
    )
    return cfg, result
