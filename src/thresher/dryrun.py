"""What a run would do, without running it: `thresher validate`, and the estimate `thresher run`
prints when it starts.

It streams the data as the run reads it (one row at a time, twice: once for the counts, once to
render; a third time for the rows of a probe), loads the model's tokenizer and config only (its
weights only for a timed probe, when asked), renders every row for every pass the method
declares, keeping only each row's id and token counts, and
reports the format and column mapping, rows read / readable / rejected by reason with their
first lines, token-length percentiles per pass, what truncation touches, which passes the output
folder already holds, and the cost of the rest: forward tokens, FLOPs and wall time.

FLOPs of one forward pass (ours: the backend computes logits only at the scored positions, so the
LM head counts only there; DESIGN.md "Numerics and speed"):

    2 x (parameters outside the input embedding and the LM head) x tokens
  + 2 x vocab x width x scored tokens                (the LM head, where log-probs are kept)
  + 2 x layers x width x sum(length^2)               (causal attention: scores and values)

Wall time is FLOPs over a rate: the rate of a timed probe of the real model on `probe` rows, or
else a matmul of the model's shape timed for `MATMUL_SECONDS` times `FORWARD_EFFICIENCY`.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from thresher.cache import KEY_FILE, PassStore, key_material, pass_label, satisfies
from thresher.config import RunConfig
from thresher.data import Rejected, Sample
from thresher.methods import Method
from thresher.passes import DEMO_VIEWS, PassSpec

# ours: long enough for a stable rate on 2 CPU cores (repeats agreed within a few %), short
# enough not to matter before a run
MATMUL_SECONDS = 0.5
# ours: the fraction of the rate of one (batch tokens x width) @ (width x ffn) matmul that a
# scoring run reaches (the rest: attention, element-wise work between the GEMMs, reading and
# rendering); bench/estimate.py fitted 0.80 (1 thread) and 0.73 (2 threads) for SmolLM2-135M
# IFD passes on 200 Alpaca rows on a near-idle machine, 0.76-0.80 on a loaded one
# (docs/results.md, "Cost estimate"); between them, leaning long
FORWARD_EFFICIENCY = 0.75
# ours: the rows `thresher run` renders for its start-up estimate, spread over the file; all
# rows for `thresher validate`
RUN_START_ROWS = 2000
# ours: a probe times this many runs of rows of similar length (short to long), not rows spread
# one by one: spread rows batched together carry more padding than a run's length-sorted batches
PROBE_GROUPS = 4
FIRST_LINES = 3  # line numbers shown per rejection reason
# rejections for a row's length (thresher.templates)
LENGTH_REJECTIONS = ("response_truncated_away", "over_max_length", "demo_truncated_away")
# the fields each format reads (thresher.formats), for the column mapping
FORMAT_FIELDS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "system"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
}


@dataclass(frozen=True)
class ModelShape:
    """What the cost needs of a model, from its config (no weights)."""

    params: int
    body: int  # parameters outside the input embedding and the LM head
    vocab: int
    width: int
    layers: int
    ffn: int


@dataclass
class PassPlan:
    """One pass of the method over the rendered rows."""

    role: str
    spec: PassSpec
    label: str
    copies: int  # forwards per row: T-SHIRT's noisy copies, else 1
    lengths: np.ndarray  # tokens of each rendered ok row
    scored: np.ndarray  # scored tokens of each rendered ok row
    ids: list[str]  # of the rendered ok rows
    demos: list[str]  # the id of each one's demonstration ("" for a view without one)
    rejected: dict[str, list[int]]  # reason -> lines of rows the template rejects
    truncated: Counter[str]  # what truncation cut -> rows
    cut: set[str]  # ids of the rows truncation touches (cut, or rejected for their length)
    note: str = ""  # how the rows were rendered when not exactly as the run will
    cached: int = 0  # rendered ok rows already stored in the output folder
    cache: str = "not stored"
    todo: np.ndarray | None = None  # rendered ok rows still to score

    def flops(self, shape: ModelShape, rows: np.ndarray | None = None) -> float:
        """Forward FLOPs of the rows selected by the mask `rows` (all by default)."""
        if not self.spec.forward:
            return 0.0
        keep = np.ones(len(self.lengths), bool) if rows is None else rows
        length = self.lengths[keep].astype(np.float64)
        scored = self.scored[keep].sum() if "logprob" in self.spec.fields else 0
        return self.copies * (
            2.0 * shape.body * length.sum()
            + 2.0 * shape.vocab * shape.width * scored
            + 2.0 * shape.layers * shape.width * (length**2).sum()
        )


@dataclass
class Cost:
    tokens: int  # forward tokens still to run (all rows read; scaled from a sample of rows)
    flops: float
    rate: float  # FLOP/s
    how: str
    matmul_rows: int | None = None  # the timed matmul's rows, when the rate comes from it
    seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds = self.flops / self.rate if self.rate else 0.0


@dataclass
class DataScan:
    """What one streaming read of the run's data found; no row is kept."""

    source: str
    format: str
    detected: bool
    rows_read: int
    readable: int
    format_counts: dict[str, int]
    content_hash: str
    rejected: list[Rejected]  # without their records
    keys: Counter[str]  # column -> rows (readable or rejected objects) that have it


def scan(cfg: RunConfig) -> DataScan:
    """Stream the run's data once: the counts, the rejections and the columns seen."""
    from thresher import pipeline

    stream = pipeline.stream_data(cfg)
    readable, rejected, keys = 0, [], Counter()
    for item in stream:
        record = item.record if isinstance(item, Rejected) else item.meta["record"]
        if isinstance(record, dict):
            keys.update(record.keys())
        if isinstance(item, Rejected):
            rejected.append(replace(item, record=None))
        else:
            readable += 1
    assert stream.format is not None
    return DataScan(
        stream.source,
        stream.format,
        stream.detected,
        stream.rows_read,
        readable,
        stream.format_counts,
        stream.content_hash,
        rejected,
        keys,
    )


@dataclass
class Plan:
    cfg: RunConfig
    method: Method
    read: DataScan
    rendered: int  # rows rendered (all readable rows, or a sample of them)
    model: Any = None  # models.TokenizerOnly, for methods with passes
    precision: Any = None  # models.Precision the run would load the model in (`auto` resolved)
    shape: ModelShape | None = None
    passes: list[PassPlan] = field(default_factory=list)
    cost: Cost | None = None
    not_estimated: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Readable rows per rendered row."""
        return self.read.readable / self.rendered if self.rendered else 0.0

    def rejected_rows(self) -> int:
        """Rows the run would reject: reading, plus rows some pass's template rejects (scaled
        from the sample of rows)."""
        ids: set[int] = set()
        for p in self.passes:
            for lines in p.rejected.values():
                ids.update(lines)
        return len(self.read.rejected) + round(len(ids) * self.scale)


def plan(
    cfg: RunConfig,
    *,
    method: Method | None = None,
    rows: int | None = None,
    probe: int = 0,
) -> Plan:
    """The plan of a run of `cfg`: streams the data and reads the tokenizer, renders `rows`
    readable rows spread over the file (all when None) for every pass, finds the passes stored
    in `cfg.output.dir` and estimates the cost (`probe` > 0: a timed probe of the real model)."""
    from thresher import pipeline

    method = method or pipeline.validate(cfg, need_budget=False)
    read = scan(cfg)
    chosen = None
    if rows is not None and read.readable > rows:
        chosen = np.unique(np.linspace(0, read.readable - 1, rows).astype(int))
    out = Plan(cfg, method, read, read.readable if chosen is None else len(chosen))
    if not method.passes:
        return out
    from thresher.models import detect_hardware, load_tokenizer, resolve_precision, set_threads

    m = cfg.model
    set_threads(m.threads)  # the matmul or probe runs on the threads the run will use
    out.precision = resolve_precision(
        m.dtype, m.device, reproduce=cfg.method.reproduce, hardware=detect_hardware()
    )
    out.model = load_tokenizer(
        m.name,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        dtype=out.precision.dtype,
    )
    out.shape = model_shape(out.model.config)
    passes = _passes(cfg, method)
    out.passes = _render(passes, out, chosen)
    specs = list(passes.values())
    for k, p in enumerate(out.passes):
        p.todo = np.ones(len(p.ids), bool)
        if p.spec.model != m.name:
            p.cache = f"runs on {p.spec.model}: not looked up"
        elif method.fit is not None and specs.index(specs[k]) != k:
            # a second role with the same spec: the fit step gives it its own model (InstructDiff's
            # calibrated copy), which only the run knows
            p.cache = "runs on a model the fit step makes: not looked up"
        else:
            _find_stored(p, out)
    if method.fit is not None:
        out.not_estimated.append(_fit_note(method))
    others = sorted({p.spec.model for p in out.passes if p.spec.model != m.name})
    if others:
        out.not_estimated.append(
            f"passes on {', '.join(others)} are counted at the size of {m.name}"
        )
    out.cost = _cost(out, probe)
    return out


def _fit_note(method: Method) -> str:
    return f"{method.name}'s fit step (embeddings, target sets or training, before the passes)"


def _passes(cfg: RunConfig, method: Method) -> dict[str, PassSpec]:
    """The pool passes as `pipeline.score` runs them (with `score.capture`'s activations)."""
    from thresher.compose import capture_pass, capturing_roles, with_capture

    passes = dict(method.passes)
    if cfg.score.capture is not None:
        extra = capture_pass(cfg.score.capture, cfg.model.name)
        for role in capturing_roles(passes, extra):
            passes[role] = with_capture(passes[role], extra)
    return passes


def model_shape(config: Any) -> ModelShape:
    """Parameter counts of the model `config` describes, from an instance on the meta device (no
    memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight is not embed
    body = params - embed.numel() - (head.weight.numel() if untied else 0)
    return ModelShape(
        params=params,
        body=body,
        vocab=int(embed.shape[0]),
        width=int(embed.shape[1]),
        layers=int(config.num_hidden_layers),
        ffn=int(getattr(config, "intermediate_size", None) or 4 * embed.shape[1]),
    )


def _render(passes: dict[str, PassSpec], plan: Plan, chosen: np.ndarray | None) -> list[PassPlan]:
    """Stream the data again and render the readable rows numbered in `chosen` (all when None)
    for every pass, keeping each row's token counts; a view with a demonstration gets the next
    rendered row (the last one the first), as the fit step would give some other row."""
    from thresher import pipeline

    builders = [_PassBuilder(role, spec, plan) for role, spec in passes.items()]
    wanted = None if chosen is None else set(chosen.tolist())
    first = prev = None
    k = -1
    for item in pipeline.stream_data(plan.cfg):
        if isinstance(item, Rejected):
            continue
        k += 1
        if wanted is not None and k not in wanted:
            continue
        if prev is None:
            first = item
        else:
            for b in builders:
                b.add(prev, item)
        prev = item
    if prev is not None:
        for b in builders:
            b.add(prev, first)
    return [b.done() for b in builders]


class _PassBuilder:
    """One pass's token counts, gathered a row at a time."""

    def __init__(self, role: str, spec: PassSpec, plan: Plan) -> None:
        from thresher.templates import Renderer

        if spec.pooling is not None and not spec.pooling.resolved:
            spec = spec.resolve(plan.shape.layers)
        self.role, self.spec = role, spec
        self.renderer = Renderer(plan.model.tokenizer, spec)
        self.with_demo = spec.view in DEMO_VIEWS
        self.lengths: list[int] = []
        self.scored: list[int] = []
        self.ids: list[str] = []
        self.demos: list[str] = []
        self.rejected: dict[str, list[int]] = {}
        self.truncated: Counter[str] = Counter()
        self.cut: set[str] = set()

    def add(self, s: Sample, demo: Sample) -> None:
        r = self.renderer.render(s, demo if self.with_demo else None)
        if r.status != "ok":
            self.rejected.setdefault(r.status, []).append(s.meta.get("line", 0))
            if r.status in LENGTH_REJECTIONS:
                self.cut.add(s.id)
            return
        self.lengths.append(len(r.ids))
        self.scored.append(r.n_scored)
        self.ids.append(s.id)
        self.demos.append(demo.id if self.with_demo else "")
        if r.truncated:
            self.truncated[r.truncated] += 1
            self.cut.add(s.id)

    def done(self) -> PassPlan:
        spec = self.spec
        return PassPlan(
            self.role,
            spec,
            pass_label(spec),
            spec.noise.copies if spec.noise is not None else 1,
            np.array(self.lengths, dtype=np.int64),
            np.array(self.scored, dtype=np.int64),
            self.ids,
            self.demos,
            self.rejected,
            self.truncated,
            self.cut,
            # the real demonstrations come from the fit step
            "demonstration: the next row of the file; the fit step picks the real one"
            if self.with_demo
            else "",
        )


def _find_stored(p: PassPlan, plan: Plan) -> None:
    """Which rendered rows of `p` the output folder already holds: a stored pass whose key
    material satisfies this one's (`cache.satisfies`, as the run's `find_pass`), comparing the
    weights hash only when a load has memoised it (else: same spec, data, template, tokenizer)."""
    from thresher.templates import get_template

    run_dir = Path(plan.cfg.output.dir)
    keys = sorted((run_dir / "passes").glob(f"*/{KEY_FILE}"))
    if plan.cfg.score.overwrite:
        p.cache = "recomputed (--overwrite)" if keys else "not stored"
        return
    text = get_template(p.spec.template, plan.model.tokenizer).text
    wanted = key_material(p.spec, plan.model.info, text, plan.read.content_hash)
    weights_known = plan.model.info["weights_sha256"] is not None
    same_folder = None
    for key_path in keys:
        stored = json.loads(key_path.read_text()).get("material")
        if not stored:
            continue
        w = copy.deepcopy(wanted)
        if not weights_known:  # compare what is known; the run checks the rest
            w["model"]["weights_sha256"] = stored.get("model", {}).get("weights_sha256")
        if "extra" in stored:  # what a fit step decided (MIWV's demonstrations): known at run time
            w["extra"] = stored["extra"]
        if satisfies(stored, w):
            store = PassStore(
                run_dir, PassSpec.from_dict(stored["pass"]), stored, key_path.parent.name
            )
            finished = store.finished_ids()
            p.todo = np.array([i not in finished for i in p.ids], bool)
            p.cached = int((~p.todo).sum())
            p.cache = (
                f"stored in {key_path.parent} (same spec and data"
                + ("" if weights_known else "; weights checked when the run loads them")
                + ")"
            )
            return
        if key_path.parent.name == p.label:
            same_folder = (key_path.parent, _changed(stored, w))
    if same_folder is not None:
        folder, changed = same_folder
        p.cache = (
            f"{folder} holds this pass computed with other {', '.join(changed)}: the run will "
            "refuse it; rerun with --overwrite or give another --out"
        )


def _changed(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k), wanted.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k != "pass":
            out += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
        elif a != b:
            out.append(k)
    return out or ["key format"]


def _cost(plan: Plan, probe: int) -> Cost:
    shape = plan.shape
    forward = [p for p in plan.passes if p.spec.forward]
    tokens = sum(p.copies * int(p.lengths[p.todo].sum()) for p in forward)
    flops = sum(p.flops(shape, p.todo) for p in forward)
    tokens, flops = round(tokens * plan.scale), flops * plan.scale
    if not flops:
        return Cost(0, 0.0, 0.0, "no forward pass to run")
    rows = 0
    if probe > 0:
        rate, how = probe_rate(plan, probe)
    else:
        lengths = np.concatenate([p.lengths for p in forward])
        typical = int(np.median(lengths)) if len(lengths) else 1
        rows = max(1, plan.cfg.score.batch_tokens // max(typical, 1)) * max(typical, 1)
        matmul = matmul_rate(shape, plan.precision.dtype, plan.precision.device, rows)
        rate = matmul * FORWARD_EFFICIENCY
        how = (
            f"matmul ({rows} x {shape.width}) @ ({shape.width} x {shape.ffn}) at "
            f"{matmul / 1e9:.0f} GFLOP/s x {FORWARD_EFFICIENCY} forward efficiency"
        )
    return Cost(tokens, flops, rate, how + f", {_threads()}", None if probe > 0 else rows)


def _threads() -> str:
    import torch

    n = torch.get_num_threads()
    return f"{n} torch thread{'s' if n != 1 else ''}"


def matmul_rate(
    shape: ModelShape, dtype: str, device: str, rows: int, seconds: float | None = None
) -> float:
    """FLOP/s of a (rows x width) @ (width x ffn) matmul in the run's dtype, timed for
    `seconds` (default `MATMUL_SECONDS`) after one untimed call."""
    import torch

    seconds = MATMUL_SECONDS if seconds is None else seconds
    # the mixed mode's matmuls are the decoder body's, in bfloat16
    body = "bfloat16" if dtype == "bfloat16-mixed" else dtype
    dt = getattr(torch, body) if body in ("float32", "bfloat16", "float16") else torch.float32
    a = torch.randn(rows, shape.width, dtype=dt, device=device)
    b = torch.randn(shape.width, shape.ffn, dtype=dt, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        a @ b
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        sync()
        elapsed = time.perf_counter() - t0
    return 2.0 * rows * shape.width * shape.ffn * n / elapsed


def probe_rows(lengths: np.ndarray, n: int, groups: int = PROBE_GROUPS) -> np.ndarray:
    """Indices of `n` rows for a probe: `groups` runs of consecutive rows in length order, centred
    on evenly spaced quantiles, so the probe's batches hold rows of similar length as the run's
    (a run scores the dataset sorted by length) while covering short and long rows."""
    ranked = np.argsort(lengths, kind="stable")
    if n >= len(ranked):
        return ranked
    groups = max(1, min(groups, n))
    bounds = np.linspace(0, len(ranked), groups + 1).round().astype(int)
    pick: list[int] = []
    for g in range(groups):  # each run sits in the middle of its own slice of the length order
        lo, hi = bounds[g], bounds[g + 1]
        size = min(n // groups + (g < n % groups), hi - lo)
        start = (lo + hi) // 2 - size // 2
        pick += range(start, start + size)
    return ranked[np.array(pick, dtype=np.int64)]


def probe_rate(plan: Plan, n: int) -> tuple[float, str]:
    """FLOP/s of the real model scoring `n` rows of each forward pass (`probe_rows`, after one
    untimed row), as the run scores them; loads the model."""
    from thresher.engine.scorer import Scorer
    from thresher.models import load_model

    m = plan.cfg.model
    t0 = time.perf_counter()
    lm = load_model(
        m.name,
        dtype=plan.precision.dtype,
        device=plan.precision.device,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
    )
    load_s = time.perf_counter() - t0
    picks = {p.role: probe_rows(p.lengths, n) for p in plan.passes if p.spec.forward and len(p.ids)}
    needed = {
        i for p in plan.passes for k in picks.get(p.role, ()) for i in (p.ids[k], p.demos[k]) if i
    }
    from thresher import pipeline

    by_id = {
        s.id: s for s in pipeline.stream_data(plan.cfg) if isinstance(s, Sample) and s.id in needed
    }
    flops, seconds, rows = 0.0, 0.0, 0
    for p in plan.passes:
        if p.role not in picks:
            continue
        pick = picks[p.role]
        chosen = [by_id[p.ids[i]] for i in pick]
        demos = None
        if p.spec.view in DEMO_VIEWS:  # as rendered above: the next rendered row
            demos = {p.ids[i]: by_id[p.demos[i]] for i in pick}
        scorer = Scorer(p.spec, lm.model, lm.tokenizer, batch_tokens=plan.cfg.score.batch_tokens)
        scorer(chosen[:1], demos)  # untimed: first-call allocations
        t0 = time.perf_counter()
        scorer(chosen, demos)
        seconds += time.perf_counter() - t0
        mask = np.zeros(len(p.ids), bool)
        mask[pick] = True
        flops += p.flops(plan.shape, mask)
        rows += len(chosen)
    rate = flops / seconds if seconds else 0.0
    how = (
        f"timed probe: {rows} rows scored in {seconds:.1f} s at {rate / 1e9:.0f} GFLOP/s "
        f"(model loaded in {load_s:.1f} s)"
    )
    return rate, how


# -- formatting ----------------------------------------------------------------------------


def format_plan(plan: Plan) -> str:
    """`thresher validate`'s report."""
    method, read, cfg = plan.method, plan.read, plan.cfg
    passes = ", ".join(f"{k}={v.name()}" for k, v in method.passes.items()) or "none"
    lines = [
        f"method    {method.name} with {json.dumps(method.params)}; passes: {passes}",
        f"data      {read.source}: {_format_name(read)}",
        f"columns   {_columns(read, cfg)}",
        f"rows      {read.rows_read} read = {read.readable} readable + "
        f"{len(read.rejected)} rejected reading",
    ]
    reasons = _by_reason([(r.reason, r.line) for r in read.rejected])
    if reasons:
        lines.append(f"rejected  {reasons}")
    if plan.model is None:
        lines.append("model     none: this method runs no pass of the model")
        if method.fit is not None:
            lines.append(f"estimate  not included: {_fit_note(method)}")
        return "\n".join(lines)
    s, info = plan.shape, plan.model.info
    lines.append(
        f"model     {info['name']}: tokenizer and config only, no weights loaded; "
        f"{s.params / 1e6:.1f} M parameters ({s.body / 1e6:.1f} M outside the embeddings), "
        f"{s.layers} layers, width {s.width}, vocabulary {s.vocab:,}"
    )
    sampled = (
        f" (from {plan.rendered} of {read.readable} readable rows)"
        if plan.rendered < read.readable
        else ""
    )
    lines.append(f"tokens    per row and pass, after truncation{sampled}:")
    w = max(len(f"{p.role} {p.label}") for p in plan.passes)
    head = f"  {'pass':<{w}} {'rows':>6} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}  truncated  rejected"
    lines.append(head)
    for p in plan.passes:
        q = np.percentile(p.lengths, [50, 90, 99]) if len(p.lengths) else [0, 0, 0]
        top = int(p.lengths.max()) if len(p.lengths) else 0
        n_rej = sum(len(v) for v in p.rejected.values())
        lines.append(
            f"  {p.role + ' ' + p.label:<{w}} {len(p.lengths):>6} {q[0]:>6.0f} {q[1]:>6.0f} "
            f"{q[2]:>6.0f} {top:>6}  {sum(p.truncated.values()):>9}  {n_rej:>8}"
            + (f"   ({p.note})" if p.note else "")
        )
    lines.append(f"truncation {_truncation(plan)}")
    for p in plan.passes:
        if p.rejected:
            lines.append(
                f"rejected  by the {p.role} pass: "
                + _by_reason([(r, line) for r, ls in p.rejected.items() for line in ls])
            )
    for p in plan.passes:
        rows = (
            f"{p.cached} of {len(p.ids)} rows done" if p.cached else f"{len(p.ids)} rows to score"
        )
        kind = "" if p.spec.forward else " (tokenize only)"
        lines.append(f"pass      {p.role} {p.label}: {p.cache}; {rows}{kind}")
    lines += format_estimate(plan).splitlines()
    stop = would_stop(plan)
    if stop:
        lines.append(f"error     {stop}")
    return "\n".join(lines)


def format_estimate(plan: Plan) -> str:
    """One or two lines: forward tokens, FLOPs and wall time of the passes still to run."""
    c = plan.cost
    if c is None:
        return "estimate  no pass to run"
    if not c.flops:
        if not any(p.ids for p in plan.passes):
            why = ": no row the templates accept"
        elif any(p.spec.forward for p in plan.passes):
            why = f": every one is stored in {plan.cfg.output.dir}"
        else:
            why = " (tokenize only)"
        return "estimate  no forward pass to run" + why
    todo = [p for p in plan.passes if p.spec.forward and p.todo is not None and p.todo.any()]
    sampled = (
        f", from {plan.rendered} of {plan.read.readable} rows"
        if plan.rendered < plan.read.readable
        else ""
    )
    lines = [
        f"estimate  {c.tokens:,} forward tokens in {len(todo)} pass{'es' if len(todo) != 1 else ''} "
        f"still to run{sampled}: {c.flops / 1e12:.2f} TFLOP, about {_duration(c.seconds)}",
        f"          ({c.how})",
    ]
    if plan.not_estimated:
        lines.append(f"          not included: {'; '.join(plan.not_estimated)}")
    return "\n".join(lines)


def would_stop(plan: Plan) -> str | None:
    """The error the run would stop with when more rows are rejected than allowed."""
    rejected, rows = plan.rejected_rows(), plan.read.rows_read
    limit = plan.cfg.score.max_rejected_fraction
    if rows and rejected / rows > limit:
        return (
            f"the run would stop: about {rejected} of {rows} rows would be rejected "
            f"({rejected / rows:.0%} > score.max_rejected_fraction={limit}). Check data.format, "
            "--column and the template, or raise score.max_rejected_fraction"
        )
    return None


def _format_name(read: DataScan) -> str:
    if read.format == "mixed":
        return "mixed formats: " + ", ".join(f"{k} {v}" for k, v in read.format_counts.items())
    return f"{read.format} ({'detected' if read.detected else 'given'})"


def _columns(read: DataScan, cfg: RunConfig) -> str:
    """Which column each field the format reads comes from, in how many rows, and the keys no
    field reads."""
    counts = read.keys
    formats = list(read.format_counts) if read.format == "mixed" else [read.format]
    used, parts = set(), []
    for fmt in formats:
        for name in FORMAT_FIELDS.get(fmt, ()):
            col = cfg.data.columns.get(name, name)
            if col in used or (not counts[col] and name not in cfg.data.columns):
                continue
            used.add(col)
            parts.append(f"{name} <- {col!r} ({counts[col]} rows)")
    id_col = cfg.data.id_column or ("id" if counts["id"] else None)
    if id_col:
        used.add(id_col)
        parts.append(f"id <- {id_col!r} ({counts[id_col]} rows)")
    else:
        parts.append("id <- a hash of the content")
    rest = [f"{k} ({n})" for k, n in counts.most_common() if k not in used]
    if rest:
        parts.append("not read: " + ", ".join(rest[:8]) + (", ..." if len(rest) > 8 else ""))
    return "; ".join(parts)


def _by_reason(pairs: list[tuple[str, int]]) -> str:
    lines: dict[str, list[int]] = {}
    for reason, line in pairs:
        lines.setdefault(reason, []).append(line)
    ranked = sorted(lines.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return "; ".join(
        f"{r} {len(ls)} (line{'s' if len(ls) > 1 else ''} "
        f"{', '.join(map(str, sorted(ls)[:FIRST_LINES]))}{', ...' if len(ls) > FIRST_LINES else ''})"
        for r, ls in ranked
    )


def _truncation(plan: Plan) -> str:
    """How many rows truncation touches, over all passes, and what it does in each."""
    parts = []
    for p in plan.passes:
        lost = {r: len(ls) for r, ls in p.rejected.items() if r in LENGTH_REJECTIONS}
        if p.truncated or lost:
            what = ", ".join(f"{k} {n}" for k, n in [*p.truncated.most_common(), *lost.items()])
            parts.append(
                f"{p.role} ({p.spec.max_length} tokens, {p.spec.truncation}): {len(p.cut)} ({what})"
            )
    rows = len(set().union(*(p.cut for p in plan.passes))) if plan.passes else 0
    sampled = f" of the {plan.rendered} rendered" if plan.rendered < plan.read.readable else ""
    return f"touches {rows} rows{sampled}" + (": " + "; ".join(parts) if parts else "")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
