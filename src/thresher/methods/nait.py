"""NAIT (Neuron-Aware data selection for Instruction Tuning; ICLR 2026, arXiv 2603.13201):
rank the pool by how far each sample moves the model along the directions an in-domain
reference set moves it (METHODS §5). No official code exists; this is the first public one.

The pool's activations come from the same `cond` pass as `ifd` (alpaca template, 512 tokens,
log-probs and entropy kept), so `ifd`, `ppl` and `entropy` run later in the same folder reuse
it. Each target set gets its own pass, cached under `passes/target.<name>/`, never mixed into
the pool's scores.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from thresher import data as data_mod
from thresher.cache import PassStore, activation_columns, key_material
from thresher.data import ReadResult, Sample
from thresher.methods.base import MethodInfo, Plan, RunContext, SignalTable, token_counts
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection, budget_count
from thresher.selectors.topk import top_k
from thresher.signals.nait import (
    Directions,
    combine_targets,
    fit_directions,
    layer_projections,
    sum_layers,
)
from thresher.templates import get_template

# question/answer files such as GSM8K's test split: question -> instruction, answer -> output
QA_COLUMNS = {"instruction": "question", "output": "answer"}


def read_target(path: str, limit: int | None = None) -> ReadResult:
    """An in-domain reference set in any format `thresher.data.read` detects, or question/answer
    JSONL (`question` -> instruction, `answer` -> output)."""
    try:
        return data_mod.read(path, limit=limit)
    except ValueError as first:
        try:
            return data_mod.read(path, format="alpaca", columns=QA_COLUMNS, limit=limit)
        except ValueError:
            raise ValueError(
                f"target {path!r}: {first} (question/answer columns were tried too)"
            ) from first


def resolve_layers(layers: str | list[int] | tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    if layers == "all":
        return tuple(range(n_layers))
    if isinstance(layers, str) or not layers:
        raise ValueError(
            f"layers={layers!r}: expected 'all' or a list of 0-based decoder layers, e.g. [4, 8, 12]"
        )
    bad = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if bad:
        raise ValueError(
            f"layers {bad} do not exist: the model has {n_layers} decoder layers (0..{n_layers - 1})"
        )
    return tuple(int(layer) for layer in layers)


def target_names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(p).stem) or "target"
        names.append(base if base not in names else f"{base}_{len(names)}")
    return names


def run_target_pass(
    ctx: RunContext, spec: PassSpec, samples: list[Sample], content_hash: str, label: str
) -> TokenStats:
    """One pass of the run's model over a target set, cached in its own folder of the run."""
    from thresher.engine import run_on_engine
    from thresher.engine.scorer import Scorer  # torch loads only when a pass runs

    lm = ctx.load_model(spec.model)
    text = get_template(spec.template, lm.tokenizer).text
    store = PassStore(
        ctx.run_dir,
        spec,
        key_material(spec, dataclasses.asdict(lm.info), text, content_hash),
        label,
    )
    s = ctx.config.score
    scorer = Scorer(spec, lm.model, lm.tokenizer, batch_tokens=s.batch_tokens)
    return run_on_engine(
        ctx.config,
        samples,
        scorer,
        store,
        shard_rows=s.shard_rows,
        overwrite=s.overwrite,
        progress=ctx.progress,
    ).stats


def pool_pass(
    model: str,
    n_layers: int | None,
    *,
    layers: str | list[int] = "all",
    pool_span: str = "all",
    template: str = "alpaca",
    max_length: int = 512,
    truncation: str = "prompt_first",
) -> PassSpec:
    """The pool's `cond` pass with NAIT's pooled activations (defaults as in `nait`): drift = the
    token-mean state minus the first token's (NAIT Eq. 3-4, METHODS §5.3 reading (a)). With
    `n_layers=None` (the depth is not known before the model loads) layers="all" stands in as (0,)."""
    if n_layers is not None:
        chosen = resolve_layers(layers, n_layers)
    else:
        chosen = (0,) if layers == "all" else tuple(int(x) for x in layers)
    return PassSpec(
        model=model,
        view="cond",
        template=template,
        fields=("logprob", "entropy", "hidden"),
        layers=chosen,
        max_length=max_length,
        truncation=truncation,
        pool="drift",
        pool_span=pool_span,
    )


def nait(
    model: str,
    *,
    target: list[str]
    | str
    | None = None,  # required: in-domain files (NAIT §3.2 "in-domain datasets")
    target_limit: int
    | None = None,  # ours: all rows; NAIT Fig. 3: 16..4,096 in-domain examples all beat random
    layers: str
    | list[
        int
    ] = "all",  # NAIT camera-ready: "summed over layers" (all decoder layers, METHODS §5.4)
    n_components: int = 1,  # NAIT camera-ready: "first principal component"; d > 1 is the submission's PCA(., d)
    form: str = "pc1",  # camera-ready projection; "centroid" = submission Eq. 5 (dot with the in-domain centroid)
    layer_scale: str = "none",  # camera-ready: raw sum; "zscore" standardises each layer (ours, METHODS §5.4)
    pool_span: str = "all",  # ours: the whole formatted example, template(x) + y (METHODS §5.4)
    template: str = "alpaca",  # ours: IFD's cond pass (Cherry `--prompt alpaca`), so the pass is shared
    max_length: int = 512,  # ours: as `ifd` (Cherry_LLM `--max_length 512`), for the same reason
    truncation: str = "prompt_first",
) -> Plan:
    """Top-b by the candidates' activation drift projected on the in-domain directions."""
    paths = [target] if isinstance(target, str) else list(target or [])
    if not paths:
        raise ValueError(
            "nait needs an in-domain target set: pass --target FILE [FILE ...] (or method.params.target), e.g. --target gsm8k_train.jsonl"
        )
    if form == "pc1" and n_components != 1:
        raise ValueError(
            f"form='pc1' projects on one component but n_components={n_components}; use form='centroid' for d > 1"
        )
    for path in paths:  # a missing target fails here, in `validate`, before any model loads
        data_mod.check_source(path)
    names = target_names(paths)
    pool_args = dict(
        layers=layers,
        pool_span=pool_span,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    passes = {"cond": pool_pass(model, None, **pool_args)}
    targets: dict[str, TokenStats] = {}

    def prepare(ctx: RunContext) -> dict[str, dict[str, Any]]:
        resolved = pool_pass(model, ctx.load_model(model).info.n_layers, **pool_args)
        passes["cond"] = resolved
        for path, name in zip(paths, names, strict=True):
            read = read_target(path, target_limit)
            if not read.samples:
                raise ValueError(
                    f"target {path!r} has no readable rows ({data_mod.rejected_counts(read.rejected)})"
                )
            targets[name] = run_target_pass(
                ctx, resolved, read.samples, read.content_hash, f"target.{name}"
            )
        return {}

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        if not targets:
            raise RuntimeError(
                "nait's target passes have not run: the plan's prepare step must run before compute"
            )
        keys = activation_columns(passes["cond"])
        directions = {}
        for name, t in targets.items():
            ok = np.array([s == "ok" for s in t.status])
            directions[name] = fit_directions({k: t.activations[k][ok] for k in keys}, n_components)
        # the pool's activations stream shard by shard: only the per-layer projections stay
        cond, projections = pool_projections(
            stats["cond"], [s.id for s in samples], keys, directions, form
        )
        cols: dict[str, np.ndarray] = {}
        per_target = []
        for name, per_layer in projections.items():
            s = sum_layers(per_layer, layer_scale)
            cols[f"nait.{name}"] = s
            per_target.append(s)
        score = combine_targets(per_target)
        status = [
            ("nan_score" if st == "ok" and not np.isfinite(v) else st)
            for st, v in zip(cond.status, score, strict=True)
        ]
        return SignalTable(
            [s.id for s in samples],
            {"nait": score, **cols, **token_counts(cond, "")},
            status,
            "nait",
        )

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        b = budget_count(budget, len(table.ids))
        return top_k(table.ids, table.columns["nait"], b, descending=True, keep=table.eligible)

    params = dict(
        target=paths,
        target_limit=target_limit,
        layers=layers,
        n_components=n_components,
        form=form,
        layer_scale=layer_scale,
        pool_span=pool_span,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    return Plan("nait", params, passes, compute, choose, prepare=prepare, streamed=("cond",))


def pool_projections(
    cond: PassStore | TokenStats,
    ids: list[str],
    keys: tuple[str, ...],
    directions: dict[str, Directions],
    form: str,
) -> tuple[TokenStats, dict[str, dict[str, np.ndarray]]]:
    """The pool pass without its activations (aligned to `ids`), and each target's per-layer
    projections of every sample (NaN where a row holds none). A stored pass is read one shard at
    a time, so memory grows with the pool's projections (targets x layers floats a row), not with
    its activations (layers x width); a loaded TokenStats (tests) counts as one shard."""
    pos = {i: k for k, i in enumerate(ids)}
    out = {name: {k: np.full(len(ids), np.nan) for k in keys} for name in directions}
    for shard in cond.scan(keys) if isinstance(cond, PassStore) else [cond]:
        rows = np.array([pos[i] for i in shard.ids], dtype=np.int64)
        for name, d in directions.items():
            for k, v in layer_projections({k: shard.activations[k] for k in keys}, d, form).items():
                out[name][k][rows] = v
    base = cond.load((), order=ids) if isinstance(cond, PassStore) else cond
    return base, out


INFOS = (
    MethodInfo(
        "nait",
        "Chen, Wu et al., Neuron-Aware Data Selection in Instruction Tuning (NAIT), ICLR 2026",
        "activation drift projected on the in-domain sets' first principal components, summed over layers; top-b",
        "cond (+1 per target row)",
        "the model to be tuned (LLaMA-2-7B in the paper)",
        False,
        nait,
    ),
)
