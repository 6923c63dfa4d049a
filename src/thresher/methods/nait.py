"""NAIT (Neuron-Aware data selection for Instruction Tuning; ICLR 2026, arXiv 2603.13201):
rank the pool by how far each sample moves the model along the directions an in-domain
reference set moves it (METHODS §5). No official code exists; this is the first public one.

The pool's activations come from the same `cond` pass as `ifd` (alpaca template, 512 tokens,
log-probs and entropy kept), so `ifd`, `ppl` and `entropy` run later in the same folder reuse
it. Each target set gets its own pass in `fit`, cached under `passes/target.<name>/`, never mixed
into the pool's scores.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from thresher import data as data_mod
from thresher.choices import check_choice
from thresher.data import ReadResult
from thresher.methods.base import (
    FitContext,
    Fitted,
    Method,
    SignalInputs,
    StreamedPass,
    method,
    token_counts,
)
from thresher.methods.table import Finite, TopK
from thresher.passes import PassSpec, Pooling, TokenStats
from thresher.signals.nait import (
    Directions,
    combine_targets,
    fit_directions,
    layer_projections,
    sum_layers,
)

# question/answer files such as GSM8K's test split: question -> instruction, answer -> output
QA_COLUMNS = {"instruction": "question", "output": "answer"}
# pooling -> Pooling.how. The drift of a sequence relative to its first token, "A(t_K) - A(t_1)
# averaged over K tokens" (camera-ready per METHODS §5.3), read two ways: "mean" = the token-mean
# state minus the first token's (reading (a), the submission's Eq. 3-4); "last" = the last token's
# state minus the first token's (reading (b), A(t_K) - A(t_1) as written)
POOLINGS = {"mean": "drift", "last": "last_drift"}
# neuron -> (pooled source, MLP tap): the residual stream each decoder layer outputs (METHODS §5.4),
# or the MLP's neurons: the activation function's output, or what the down projection reads
# (SiLU(gate) * up in gated MLPs; the same vector in GPT-2)
NEURONS = {
    "hidden": ("hidden", "act"),
    "act": ("mlp", "act"),
    "down_proj_input": ("mlp", "down_proj_input"),
}


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


def target_names(paths: list[str]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(p).stem) or "target"
        names.append(base if base not in names else f"{base}_{len(names)}")
    return names


def pool_pass(
    model: str,
    *,
    layers: str | list[int] = "all",
    pooling: str = "mean",
    neuron: str = "hidden",
    final_norm: bool | None = None,
    pool_span: str = "all",
    template: str = "alpaca",
    max_length: int = 512,
    truncation: str = "prompt_first",
) -> PassSpec:
    """The pool's `cond` pass with NAIT's pooled activations (defaults as in `nait`): by default
    the drift = the token-mean state minus the first token's (NAIT Eq. 3-4, METHODS §5.3 reading
    (a)) of each decoder layer's residual output. Layers "all" are resolved by the pass runner
    once the model's depth is known."""
    check_choice("nait pooling", pooling, tuple(POOLINGS))
    check_choice("nait neuron", neuron, tuple(NEURONS))
    if (isinstance(layers, str) and layers != "all") or not layers:
        raise ValueError(
            f"layers={layers!r}: expected 'all' or a list of 0-based decoder layers, e.g. [4, 8, 12]"
        )
    if final_norm and neuron != "hidden":
        raise ValueError(
            f"final_norm=True takes the last layer's residual stream after the final norm, which "
            f"neuron={neuron!r} does not read: use neuron='hidden' or leave final_norm unset"
        )
    if final_norm is None:  # METHODS §5.4: the residual stream as output_hidden_states gives it
        final_norm = neuron == "hidden"
    source, tap = NEURONS[neuron]
    spec = Pooling(
        sources=(source,),
        layers=layers if isinstance(layers, str) else tuple(int(x) for x in layers),
        how=POOLINGS[pooling],
        span=pool_span,
        mlp_tap=tap,
        final_norm=final_norm,
    )
    return PassSpec(
        model=model,
        view="cond",
        template=template,
        fields=("logprob", "entropy"),
        max_length=max_length,
        truncation=truncation,
        pooling=spec,
    )


@method(
    "nait",
    paper="Chen, Wu et al., Neuron-Aware Data Selection in Instruction Tuning (NAIT), ICLR 2026",
    summary="activation drift projected on the in-domain sets' first principal components, summed over layers; top-b",
    passes="cond (+1 per target row)",
    reference_model="the model to be tuned (LLaMA-2-7B in the paper)",
    pool_pass=lambda model: pool_pass(model),
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
    pooling: str = "mean",  # METHODS §5.3 reading (a): mean_k A(t_k) - A(t_1), the submission's Eq. 3-4 ("compute the mean activation across all K tokens"); "last" = reading (b), A(t_K) - A(t_1) as the camera-ready summary writes it
    neuron: str = "hidden",  # METHODS §5.4: "a dimension of the residual-stream hidden state output by each decoder layer"; "act" / "down_proj_input" = "Option: MLP intermediate activations"
    final_norm: bool
    | None = None,  # METHODS §5.4: the layers of HF `output_hidden_states` (indices 1..L), whose last entry is after the final norm (RepreGuard's code reads it): None = that for neuron="hidden"; False = the last decoder layer's raw output
    n_components: int = 1,  # NAIT camera-ready: "first principal component"; d > 1 is the submission's PCA(., d)
    form: str = "pc1",  # camera-ready projection; "centroid" = submission Eq. 5 (dot with the in-domain centroid)
    layer_scale: str = "none",  # camera-ready: raw sum; "zscore" standardises each layer (ours, METHODS §5.4)
    pool_span: str = "all",  # ours: the whole formatted example, template(x) + y (METHODS §5.4)
    template: str = "alpaca",  # ours: IFD's cond pass (Cherry `--prompt alpaca`), so the pass is shared
    max_length: int = 512,  # ours: as `ifd` (Cherry_LLM `--max_length 512`), for the same reason
    truncation: str = "prompt_first",  # ours: as `ifd`, never empties the response
) -> Method:
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
        data_mod.check_source(path, what="--target")
    names = target_names(paths)
    cond = pool_pass(
        model,
        layers=layers,
        pooling=pooling,
        neuron=neuron,
        final_norm=final_norm,
        pool_span=pool_span,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )

    def fit(ctx: FitContext) -> Fitted:
        """Each target set's directions, from a pass of the run's model over it (its own folder)."""
        directions = {}
        for path, name in zip(paths, names, strict=True):
            read = read_target(path, target_limit)
            if not read.samples:
                raise ValueError(
                    f"target {path!r} has no readable rows ({data_mod.rejected_counts(read.rejected)})"
                )
            t = ctx.run_pass(f"target.{name}", cond, read.samples, read.content_hash)
            ok = np.array([s == "ok" for s in t.status])
            directions[name] = fit_directions(
                {k: v[ok] for k, v in sorted(t.activations.items())}, n_components
            )
        return Fitted(state=directions)

    def signals(x: SignalInputs) -> dict[str, np.ndarray]:
        keys = x.passes["cond"].activation_columns()
        # the pool's activations stream shard by shard: only the per-layer projections stay
        base, projections = pool_projections(x.stats["cond"], x.ids, keys, x.state, form)
        per_target = {f"nait.{name}": sum_layers(p, layer_scale) for name, p in projections.items()}
        return {
            "nait": combine_targets(list(per_target.values())),
            **per_target,
            **token_counts(base),
        }

    params = dict(
        target=paths,
        target_limit=target_limit,
        layers=layers,
        pooling=pooling,
        neuron=neuron,
        final_norm=final_norm,
        n_components=n_components,
        form=form,
        layer_scale=layer_scale,
        pool_span=pool_span,
        template=template,
        max_length=max_length,
        truncation=truncation,
    )
    return Method(
        "nait",
        params,
        {"cond": cond},
        signals,
        "nait",
        TopK("nait"),
        (Finite(("nait",)),),
        fit=fit,
        streamed=("cond",),
    )


def pool_projections(
    cond: StreamedPass | TokenStats,
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
    for shard in cond.scan(keys) if not isinstance(cond, TokenStats) else [cond]:
        rows = np.array([pos[i] for i in shard.ids], dtype=np.int64)
        for name, d in directions.items():
            for k, v in layer_projections({k: shard.activations[k] for k in keys}, d, form).items():
                out[name][k][rows] = v
    base = cond.load((), order=ids) if not isinstance(cond, TokenStats) else cond
    return base, out
