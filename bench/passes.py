"""Benchmark of the scoring passes (issue "Passes"): the fast path against the naive definition.

For each model, on the first N rows of the Alpaca demo data, the two passes of the `ifd` method
(`cond` with log-prob and entropy, `uncond` with log-prob; template `alpaca`, max_length 512)
run through `Scorer.score_rendered` (length-sorted rows packed to a token budget) once per
`--batch-tokens` value, and once through the naive definition (`reference_logprobs`: batch 1,
full-vocabulary logits at every position, log-softmax over the whole sequence). Rendering is
done once, outside every timing. Each path is warmed up on a few rows before it is timed.

Printed per model and path: samples/s and response tokens/s (response tokens of the `cond`
pass, i.e. of the samples, per second of both passes), useful GFLOP/s, the matmul peak on the
same shapes and the ratio of the two, the speed-up over the naive path, max |ΔIFD| (Cherry's
loss ratio, `signals.ifd.ifd_loss_ratio`) and max |Δ log-prob| / |Δ entropy| per token
against the naive path, max |Δ log-prob| and |Δ entropy| of the cond view against float64
(`f64 dlogp`, `f64 dH`: the same batches, so the same fp32 logits, with log-softmax and entropy
taken in float64), and where the fast path's time goes (forward hooks on the base model,
its attention and MLP blocks, and the lm_head, so the timed code is exactly the Scorer's).

Useful FLOPs, counted analytically for each forward row of T real tokens (padding is not
useful work, so it counts as lost time):

    2 * T * P_lin            every linear layer of the decoder blocks; P_lin is the number of
                             their weights (q, k, v, o and the MLP; no embeddings, no lm_head)
  + 2 * T^2 * d * L          causal attention: QK^T and AV cost 2*T^2*d each per layer over the
                             full square, and the causal half of both is 2*T^2*d
  + 2 * d * V * n_scored     the lm_head at the scored positions only (entropy adds no GEMM)

Biases, norms, rotary, activations and softmaxes are O(T*d) or O(n_scored*V) and not
counted. Useful GFLOP/s = useful FLOPs of both passes / wall time of both passes.

Matmul peak on the same shapes, measured in the same run: for each GEMM shape the model runs
(each distinct linear layer of a block with the op the model uses, F.linear for nn.Linear and
addmm for GPT-2's Conv1D; the attention products as bmm over batch x heads; the lm_head with
F.linear), time it on a representative size (M = the mean rows x padded length of the
pass's batches; the mean scored positions per batch for the lm_head; the mean rows and padded
length for attention), best of `--repeats`, measured just before and just after the timed
run and the better of the two kept. The peak of a pass is its useful FLOPs divided by
the time every GEMM would take at its measured rate, sum_i F_i / sum_i (F_i / R_i), i.e. the
rates weighted by FLOP share. Targets (issue 12): useful / peak >= 0.75 and >= 1.5x the naive
path.

The second model is GPT-2-124M-shaped with random weights (transformers' GPT2Config defaults:
12 layers, d=768, 12 heads, n_positions=1024) built under torch.manual_seed(0). There is no
GPT-2 tokenizer offline, so it reuses the SmolLM2 tokenizer (byte-level BPE) and sets
vocab_size = len(tokenizer) = 49152 instead of 50257 so every id is valid; the lm_head is
therefore 2% narrower than GPT-2's. Random weights give near-uniform predictions and IFD ~ 1:
its IFD deltas only check the numerics, its speed figures are what matter.

The machine may be shared and noisy: compare variants as ratios within one run; the `load`
column is the 1-minute load average after each path (2.0 = this run alone on 2 cores).

Run time on 2 quiet cores at the defaults (200 rows, budgets 512 and 2048): about 22 minutes,
of which each fast run is ~3.3 min (smollm2-135m) and ~2.7 min (GPT-2 shape), the naive
reference ~4 min each. `--batch-tokens 2048` alone takes about 14 minutes. A budget of 8192 was
slower than 512 and 2048 on both models (21% padding; 0.92 vs 1.01 and 1.25 vs 1.54 samples/s),
so it is no longer in the default sweep.

Examples:
    python bench/passes.py
    python bench/passes.py --rows 40 --models gpt2-124m-random --batch-tokens 1024
    python bench/passes.py --threads 1 --batch-tokens 256 512 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# what every timing below reads: wall time, or with --clock cpu this process's CPU time, which
# another process's load does not inflate when torch runs one thread (--threads 1)
CLOCK = time.perf_counter
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
MODELS = ("smollm2-135m", "gpt2-124m-random")
WARMUP_ROWS = 8
GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/passes.py",
        description="Time the ifd method's cond + uncond passes (fast path vs naive) and count useful GFLOP/s.",
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=200, help="first N rows of the data (default 200)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument(
        "--batch-tokens",
        type=int,
        nargs="+",
        default=[512, 2048],
        metavar="N",
        help="token budgets to try for the fast path (default 512 2048; each adds a full timed run)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models to run (default both)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="Alpaca JSON file (default ../shared/data/alpaca_en_demo.json beside the project)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="matmul peak: best of this many timings (default 3)"
    )
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time with the wall clock (default) or this process's CPU time (use with --threads 1 on a busy machine)",
    )
    p.add_argument(
        "--paths",
        nargs="+",
        choices=["before", "fast"],
        default=["before", "fast"],
        help="fast paths to time at each budget: the pass before issue 12, and today's (default both)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run torch.profiler over each path of --paths at the last --batch-tokens value (on the "
        "first --profile-rows rows) and print where the time goes by op: mm, elementwise, sdpa, other",
    )
    p.add_argument(
        "--profile-rows", type=int, default=60, help="rows the profiled passes run (default 60)"
    )
    args = p.parse_args(argv)
    if args.rows < 1 or args.threads < 1 or args.repeats < 1 or min(args.batch_tokens) < 1:
        p.error("--rows, --threads, --repeats and --batch-tokens must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# models and their shapes


@dataclass(frozen=True)
class Shape:
    """What the FLOP count and the peak need to know about a model."""

    linears: tuple[tuple[str, int, int, int], ...]  # (op, in, out, count over all layers)
    d: int
    vocab: int
    n_layers: int
    n_heads: int

    @property
    def p_lin(self) -> int:
        return sum(i * o * c for _, i, o, c in self.linears)


def load(name: str, smol: Any) -> tuple[Any, str]:
    """(model, a one-line description) for a model name; `smol` is the loaded smollm2-135m."""
    if name == "smollm2-135m":
        return smol.model, f"{smol.info.architecture}, {smol.info.hf_id}, fp32 (dequantised GGUF)"
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    tok = smol.tokenizer
    cfg = GPT2Config(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(
            cfg, dtype=torch.float32, attn_implementation="sdpa"
        )
    note = (
        f"GPT2LMHeadModel, GPT2Config defaults, random weights (seed 0), fp32; SmolLM2 tokenizer, "
        f"vocab_size={len(tok)} (not 50257) so ids are valid"
    )
    return model.eval(), note


def model_shape(model: Any) -> Shape:
    import torch
    from transformers.pytorch_utils import Conv1D

    from thresher.backends.hf import decoder_layers

    layers = decoder_layers(model)
    counts: dict[tuple[str, int, int], int] = {}
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                key = ("linear", m.in_features, m.out_features)
            elif isinstance(m, Conv1D):
                key = ("addmm", m.weight.shape[0], m.weight.shape[1])
            else:
                continue
            counts[key] = counts.get(key, 0) + 1
    head = model.get_output_embeddings().weight
    cfg = model.config.get_text_config()
    return Shape(
        tuple((op, i, o, c) for (op, i, o), c in counts.items()),
        head.shape[1],
        head.shape[0],
        len(layers),
        cfg.num_attention_heads,
    )


# ---------------------------------------------------------------------------------------------
# FLOPs and the matmul peak


def useful_flops(shape: Shape, rendered: list[Any]) -> dict[str, float]:
    """Useful FLOPs of one pass over `rendered` (rows not ok are not run), by component."""
    ok = [r for r in rendered if r.status == "ok"]
    tokens = sum(len(r.ids) for r in ok)
    return {
        "linear": 2.0 * tokens * shape.p_lin,
        "attention": 2.0 * sum(len(r.ids) ** 2 for r in ok) * shape.d * shape.n_layers,
        "lm_head": 2.0 * shape.d * shape.vocab * sum(r.n_scored for r in ok),
    }


def _best_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = CLOCK()
        fn()
        best = min(best, CLOCK() - t)
    return best


def _rate(fn: Any, flops: float, repeats: int) -> float:
    """FLOP/s of `fn`, repeating it inside one timing so each timing lasts >= ~50 ms."""
    once = _best_time(fn, 1)
    inner = max(1, int(0.05 / max(once, 1e-6)))

    def many() -> None:
        for _ in range(inner):
            fn()

    return flops * inner / _best_time(many, repeats)


def matmul_rates(
    shape: Shape, m: int, rows: int, width: int, scored: int, repeats: int
) -> dict[str, float]:
    """Measured FLOP/s of each GEMM the pass runs, on representative sizes: `m` tokens through
    the linear layers, `rows` x heads attention products of `width` positions, `scored` rows
    through the lm_head."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    rates: dict[str, float] = {}
    with torch.inference_mode():
        for op, i, o, _ in shape.linears:
            x = torch.randn(m, i, generator=g)
            b = torch.randn(o, generator=g)
            if op == "linear":
                w = torch.randn(o, i, generator=g)
                rates[f"{op}:{i}x{o}"] = _rate(
                    lambda x=x, w=w: F.linear(x, w), 2.0 * m * i * o, repeats
                )
            else:
                w = torch.randn(i, o, generator=g)
                rates[f"{op}:{i}x{o}"] = _rate(
                    lambda x=x, w=w, b=b: torch.addmm(b, x, w), 2.0 * m * i * o, repeats
                )
        hd = shape.d // shape.n_heads
        q = torch.randn(rows * shape.n_heads, width, hd, generator=g)
        k = torch.randn(rows * shape.n_heads, hd, width, generator=g)
        v = torch.randn(rows * shape.n_heads, width, hd, generator=g)

        def attention() -> None:
            torch.bmm(torch.bmm(q, k), v)

        # rate of the full-square products; the useful (causal) FLOPs are half of these
        rates["attention"] = _rate(attention, 4.0 * rows * width * width * shape.d, repeats)
        h = torch.randn(scored, shape.d, generator=g)
        w = torch.randn(shape.vocab, shape.d, generator=g)
        rates["lm_head"] = _rate(
            lambda: F.linear(h, w), 2.0 * scored * shape.d * shape.vocab, repeats
        )
    return rates


def peak_seconds(
    shape: Shape, flops: dict[str, float], rates: dict[str, float]
) -> dict[str, float]:
    """Seconds the pass's useful FLOPs would take if every GEMM ran at its measured rate, by
    component (linear layers, attention, lm_head)."""
    linear = sum(
        flops["linear"] * (i * o * c / shape.p_lin) / rates[f"{op}:{i}x{o}"]
        for op, i, o, c in shape.linears
    )
    return {
        "linear": linear,
        "attention": flops["attention"] / rates["attention"],
        "lm_head": flops["lm_head"] / rates["lm_head"],
    }


# ---------------------------------------------------------------------------------------------
# timing the paths


@dataclass
class PhaseTimer:
    """Wall time spent inside modules, from forward pre-hooks and hooks."""

    seconds: dict[str, float] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)

    def watch(self, name: str, modules: list[Any]) -> None:
        starts: list[float] = []

        def pre(_m: Any, _i: Any) -> None:
            starts.append(CLOCK())

        def post(_m: Any, _i: Any, _o: Any) -> None:
            self.seconds[name] = self.seconds.get(name, 0.0) + CLOCK() - starts.pop()

        for m in modules:
            self.handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def reset(self) -> None:
        self.seconds.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def phase_timer(model: Any) -> PhaseTimer:
    from thresher.backends.hf import decoder_layers

    layers = list(decoder_layers(model))
    timer = PhaseTimer()
    timer.watch("base model", [model.base_model])
    timer.watch("attention", [getattr(layer, "self_attn", None) or layer.attn for layer in layers])
    timer.watch("mlp", [layer.mlp for layer in layers])
    return timer


@dataclass
class PathResult:
    label: str
    seconds: float
    logprob: dict[str, list[Any]]  # view -> per-row arrays
    entropy: list[Any]  # cond view
    batches: int = 0
    pad_fraction: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)  # component -> seconds at the matmul peak
    rates: dict[str, float] = field(default_factory=dict)
    load: float = field(
        default_factory=lambda: os.getloadavg()[0]
    )  # 1-minute load average after the path
    budget: int = 0  # batch_tokens of a fast path


def batch_layout(scorer: Any, rendered: list[Any]) -> list[list[int]]:
    """The batches `Scorer.score_rendered` forms for these rows (same packing rule)."""
    ok = [i for i, r in enumerate(rendered) if r.status == "ok"]
    lengths = {i: len(rendered[i].ids) for i in ok}
    return scorer._batches(sorted(ok, key=lengths.__getitem__), lengths)


def before_issue_12(model: Any, tok: Any) -> Any:
    """An HFBackend that runs the pass as it was before issue 12, for before/after figures in one
    run: transformers' default KV cache kept (a copy of every layer's keys and values), each
    chunk's logits, softmax and products in fresh tensors, entropy as lse - sum softmax(x) x."""
    import torch

    from thresher.backends.hf import LOGIT_CHUNK_ELEMENTS, HFBackend

    class Before(HFBackend):
        def forward(self, **inputs: Any) -> Any:
            return self.model.base_model(**inputs).last_hidden_state

        def token_logprobs(self, states: Any, targets: Any, with_entropy: bool) -> Any:
            n = states.shape[0]
            chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.vocab)
            lps, ents = [], []
            for a in range(0, n, chunk):
                logits = self.lm_head(states[a : a + chunk]).float()
                if self.softcap:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
                lse = torch.logsumexp(logits, dim=-1)
                lps.append(logits.gather(1, targets[a : a + chunk, None]).squeeze(1) - lse)
                if with_entropy:
                    p = torch.softmax(logits, dim=-1)
                    ents.append(lse - (p * logits).sum(-1))
            empty = states.new_zeros(0)
            return (torch.cat(lps) if lps else empty), (
                (torch.cat(ents) if ents else empty) if with_entropy else None
            )

    return Before(model, tok)


def scorers_for(
    path: str, model: Any, tok: Any, specs: dict[str, Any], budget: int
) -> dict[str, Any]:
    """One Scorer per view for a fast path ("before" or "fast")."""
    from thresher.engine.scorer import Scorer

    scorers = {view: Scorer(spec, model, tok, batch_tokens=budget) for view, spec in specs.items()}
    if path == "before":
        for sc in scorers.values():
            sc.backend = before_issue_12(model, tok)
    return scorers


def time_calls(timer: PhaseTimer, name: str, obj: Any, method: str) -> None:
    """Add the time spent in `obj.method` to `timer` under `name` (until `del obj.method`)."""
    inner = getattr(obj, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = CLOCK()
        try:
            return inner(*args, **kwargs)
        finally:
            timer.seconds[name] = timer.seconds.get(name, 0.0) + CLOCK() - t

    setattr(obj, method, timed)


def run_fast(
    path: str,
    model: Any,
    tok: Any,
    shape: Shape,
    specs: dict[str, Any],
    rendered: dict[str, list[Any]],
    ids: list[str],
    budget: int,
    flops: dict[str, dict[str, float]],
    repeats: int,
) -> PathResult:
    scorers = scorers_for(path, model, tok, specs, budget)
    sizes: dict[
        str, tuple[int, int, int, int]
    ] = {}  # view -> (m, rows, width, scored) of a mean batch
    batches = padded = real = 0
    for view, sc in scorers.items():
        rs = rendered[view]
        layout = batch_layout(sc, rs)
        widths = [max(len(rs[i].ids) for i in b) for b in layout]
        n = len(layout)
        batches += n
        padded += sum(len(b) * w for b, w in zip(layout, widths, strict=True))
        real += sum(len(rs[i].ids) for b in layout for i in b)
        sizes[view] = (
            round(sum(len(b) * w for b, w in zip(layout, widths, strict=True)) / n),
            round(sum(len(b) for b in layout) / n),
            round(sum(widths) / n),
            round(sum(rs[i].n_scored for b in layout for i in b) / n),
        )
    # the peak is measured just before and just after the timed run, best of both, so a burst of
    # load from elsewhere during one of them does not lower it
    before = {view: matmul_rates(shape, *sizes[view], repeats) for view in scorers}
    for view, sc in scorers.items():
        sc.score_rendered(ids[:WARMUP_ROWS], rendered[view][:WARMUP_ROWS])
    timer = phase_timer(model)
    for sc in scorers.values():
        time_calls(timer, "lm_head", sc.backend, "token_logprobs")
    try:
        t0 = CLOCK()
        cols = {view: sc.score_rendered(ids, rendered[view]) for view, sc in scorers.items()}
        seconds = CLOCK() - t0
    finally:
        timer.remove()
        for sc in scorers.values():
            del sc.backend.token_logprobs
    res = PathResult(
        f"{path} {budget}",
        seconds,
        {v: c["logprob"] for v, c in cols.items()},
        cols["cond"]["entropy"],
        batches=batches,
        pad_fraction=1.0 - real / padded,
        phases=dict(timer.seconds),
        budget=budget,
    )
    for view in scorers:
        after = matmul_rates(shape, *sizes[view], repeats)
        rates = {k: max(v, after[k]) for k, v in before[view].items()}
        res.rates.update({f"{view}:{k}": v for k, v in rates.items()})
        for k, v in peak_seconds(shape, flops[view], rates).items():
            res.peak[k] = res.peak.get(k, 0.0) + v
    return res


def run_naive(model: Any, rendered: dict[str, list[Any]]) -> PathResult:
    import numpy as np

    from thresher.backends.hf import reference_logprobs

    empty = np.zeros(0, np.float32)
    for rs in rendered.values():
        for r in [r for r in rs if r.status == "ok"][:WARMUP_ROWS]:
            reference_logprobs(model, r)
    t0 = CLOCK()
    out = {
        view: [reference_logprobs(model, r) if r.status == "ok" else (empty, empty) for r in rs]
        for view, rs in rendered.items()
    }
    seconds = CLOCK() - t0
    batches = sum(r.status == "ok" for rs in rendered.values() for r in rs)
    return PathResult(
        "naive b=1",
        seconds,
        {v: [lp for lp, _ in o] for v, o in out.items()},
        [e for _, e in out["cond"]],
        batches=batches,
    )


def float64_logprob_entropy(
    logits: Any, targets: Any, with_entropy: bool, scratch: Any = None
) -> tuple[Any, Any | None]:
    """`thresher.backends.hf.logprob_entropy` taken in float64 from the same fp32 logits."""
    import torch

    x = logits.double()
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    lp = logp.gather(1, targets[:, None]).squeeze(1)
    return lp, (-(logp.exp() * logp).sum(-1) if with_entropy else None)


def float64_reference(
    model: Any, tok: Any, spec: Any, rendered: list[Any], ids: list[str], budget: int
) -> tuple[list[Any], list[Any]]:
    """Per-token log-probs and entropies of one pass, batched exactly as the fast path batches it
    (so the fp32 logits are the same), with log-softmax and entropy taken in float64: what the
    fp32 numbers should match to rounding (issue 12: entropy within 1e-5). Untimed."""
    from unittest import mock

    from thresher.engine.scorer import Scorer

    with mock.patch("thresher.backends.hf.logprob_entropy", float64_logprob_entropy):
        cols = Scorer(spec, model, tok, batch_tokens=budget).score_rendered(ids, rendered)
    return cols["logprob"], cols["entropy"]


MM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
SDPA_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def profile_fast(
    path: str,
    model: Any,
    tok: Any,
    specs: dict[str, Any],
    rendered: dict[str, list[Any]],
    ids: list[str],
    budget: int,
) -> dict[str, float]:
    """torch.profiler over both passes of a fast path: seconds in matrix products (mm, addmm,
    bmm), element-wise and other torch ops (norms, activations, rotary, copies, casts,
    log-softmax), SDPA, and outside torch ops (Python, numpy, hooks); prints the top ops."""
    from torch.profiler import ProfilerActivity, profile

    scorers = scorers_for(path, model, tok, specs, budget)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for view, sc in scorers.items():
            sc.score_rendered(ids, rendered[view])
        wall = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    out = {
        "mm": sum(e.self_cpu_time_total for e in events if e.key in MM_OPS) / 1e6,
        "sdpa": sum(e.self_cpu_time_total for e in events if e.key in SDPA_OPS) / 1e6,
    }
    out["elementwise"] = total / 1e6 - out["mm"] - out["sdpa"]
    out["other"] = wall - total / 1e6
    out["wall"] = wall
    print(f"\n   torch.profiler, {path} path at batch_tokens={budget} ({wall:.1f} s wall): top ops")
    for e in events[:12]:
        print(f"     {e.key:52s} {100 * e.self_cpu_time_total / total:5.1f}%  {e.count:6d} calls")
    return out


# ---------------------------------------------------------------------------------------------
# report


def ifd(res: PathResult) -> Any:
    from thresher.passes import Ragged
    from thresher.signals.ifd import ifd_loss_ratio

    return ifd_loss_ratio(
        Ragged.from_rows(res.logprob["cond"]), Ragged.from_rows(res.logprob["uncond"])
    )


def max_abs_diff(a: list[Any], b: list[Any]) -> float:
    import numpy as np

    diffs = [
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(a, b, strict=True)
        if len(x)
    ]
    return max(diffs, default=float("nan"))


def bench_model(
    name: str, smol: Any, samples: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    import numpy as np

    from thresher.passes import PassSpec
    from thresher.templates import Renderer

    t_start = time.perf_counter()
    model, note = load(name, smol)
    tok = smol.tokenizer
    shape = model_shape(model)
    specs = {
        "cond": PassSpec(
            model=name,
            view="cond",
            template="alpaca",
            fields=("logprob", "entropy"),
            max_length=512,
        ),
        "uncond": PassSpec(
            model=name, view="uncond", template="alpaca", fields=("logprob",), max_length=512
        ),
    }
    t = time.perf_counter()
    renderers = {view: Renderer(tok, spec) for view, spec in specs.items()}
    rendered = {view: [renderers[view].render(s) for s in samples] for view in specs}
    render_s = time.perf_counter() - t
    ids = [s.id for s in samples]
    flops = {view: useful_flops(shape, rs) for view, rs in rendered.items()}
    total_flops = sum(sum(f.values()) for f in flops.values())
    n = len(samples)
    ok = {view: [r for r in rs if r.status == "ok"] for view, rs in rendered.items()}
    resp_tokens = sum(r.n_scored for r in ok["cond"])

    print(f"\n== {name}: {note}")
    print(
        f"   {shape.n_layers} layers, d={shape.d}, heads={shape.n_heads}, V={shape.vocab}, "
        f"P_lin={shape.p_lin / 1e6:.1f}M non-embedding linear weights; threads={args.threads}"
    )
    for view, rs in ok.items():
        lens = np.array([len(r.ids) for r in rs])
        print(
            f"   {view:6s}: {len(rs)}/{n} rows ok, tokens mean {lens.mean():.0f} median {np.median(lens):.0f} "
            f"max {lens.max()}, scored {sum(r.n_scored for r in rs)}, useful {sum(flops[view].values()) / 1e9:.0f} GFLOP "
            f"(linear {flops[view]['linear'] / 1e9:.0f}, attention {flops[view]['attention'] / 1e9:.0f}, "
            f"lm_head {flops[view]['lm_head'] / 1e9:.0f})"
        )
    print(f"   rendering both views: {render_s:.2f} s (not in any timing below)", flush=True)

    results = []
    for b in args.batch_tokens:
        for path in args.paths:
            results.append(
                run_fast(path, model, tok, shape, specs, rendered, ids, b, flops, args.repeats)
            )
            print(
                f"   ... {results[-1].label}: {results[-1].seconds:.1f} s (load {results[-1].load:.1f})",
                flush=True,
            )
    naive = run_naive(model, rendered)
    print(f"   ... {naive.label}: {naive.seconds:.1f} s (load {naive.load:.1f})", flush=True)
    ref_ifd = ifd(naive)
    t = time.perf_counter()
    f64 = {
        b: float64_reference(model, tok, specs["cond"], rendered["cond"], ids, b)
        for b in args.batch_tokens
    }
    print(f"   ... float64 references of the cond view (untimed): {time.perf_counter() - t:.1f} s")

    print(
        f"\n   {'path':12s} {'batches':>7s} {'pad%':>5s} {'time s':>7s} {'samples/s':>9s} {'resp tok/s':>10s} "
        f"{'GFLOP/s':>7s} {'peak':>6s} {'ratio':>5s} {'x naive':>7s} {'max|dIFD|':>9s} {'max|dlogp|':>10s} "
        f"{'max|dH|':>8s} {'f64 dlogp':>9s} {'f64 dH':>8s} {'load':>5s}"
    )
    for r in [naive, *results]:
        gflops = total_flops / r.seconds / 1e9
        head = (
            f"   {r.label:12s} {r.batches:7d} {100 * r.pad_fraction:5.1f} {r.seconds:7.1f} {n / r.seconds:9.2f} "
            f"{resp_tokens / r.seconds:10.0f} {gflops:7.1f} "
        )
        if r is naive:
            print(
                head
                + f"{'-':>6s} {'-':>5s} {1.0:7.2f} {'(ref)':>9s} {'(ref)':>10s} {'(ref)':>8s} "
                + f"{'-':>9s} {'-':>8s} {r.load:5.1f}"
            )
            continue
        lp64, h64 = f64[r.budget]
        d64 = f"{max_abs_diff(r.logprob['cond'], lp64):9.1e} {max_abs_diff(r.entropy, h64):8.1e}"
        peak = total_flops / sum(r.peak.values()) / 1e9
        d_ifd = float(np.nanmax(np.abs(ifd(r) - ref_ifd)))
        d_lp = max(max_abs_diff(r.logprob[v], naive.logprob[v]) for v in r.logprob)
        d_h = max_abs_diff(r.entropy, naive.entropy)
        print(
            head
            + f"{peak:6.1f} {gflops / peak:5.2f} {naive.seconds / r.seconds:7.2f} {d_ifd:9.1e} {d_lp:10.1e} "
            f"{d_h:8.1e} {d64} {r.load:5.1f}"
        )
    print(
        "\n   where the fast paths' time goes, in seconds (forward hooks). 'at peak' is the time their GEMMs"
        "\n   take at the measured matmul rates; lm_head is the lm_head GEMM with log-softmax and entropy;"
        "\n   'other' is outside the base model and the lm_head: batch padding, gather, numpy, Python."
        "\n   Lost = measured - at peak."
    )
    print(
        f"   {'path':12s} {'total':>6s} {'at peak':>7s} | {'base':>6s} {'at peak':>7s} {'(attn':>6s} {'mlp)':>6s} | "
        f"{'lm_head':>7s} {'at peak':>7s} | {'other':>6s} | lost: base / lm_head / other"
    )
    for r in results:
        ph = r.phases
        base, head = ph.get("base model", 0.0), ph.get("lm_head", 0.0)
        other = r.seconds - base - head
        base_peak = r.peak["linear"] + r.peak["attention"]
        lost = r.seconds - sum(r.peak.values())
        print(
            f"   {r.label:12s} {r.seconds:6.1f} {sum(r.peak.values()):7.1f} | {base:6.1f} {base_peak:7.1f} "
            f"{ph.get('attention', 0.0):6.1f} {ph.get('mlp', 0.0):6.1f} | {head:7.1f} {r.peak['lm_head']:7.1f} | "
            f"{other:6.1f} | "
            + (
                f"{100 * (base - base_peak) / lost:.0f}% / {100 * (head - r.peak['lm_head']) / lost:.0f}% / "
                f"{100 * other / lost:.0f}%"
                if lost > 0
                else "- (at or above the measured peak)"
            )
        )
    if args.profile:
        b = args.batch_tokens[-1]
        k = args.profile_rows
        sub = {view: rs[:k] for view, rs in rendered.items()}
        prof = {p: profile_fast(p, model, tok, specs, sub, ids[:k], b) for p in args.paths}
        print(
            f"\n   where the time goes by torch op (torch.profiler, first {k} rows, batch_tokens={b}; seconds and share"
            "\n   of the profiled wall time; elementwise = every torch op other than mm/addmm/bmm and SDPA:"
            "\n   norms, activations, rotary, copies, casts, log-softmax; other = outside torch ops)"
        )
        for p, o in prof.items():
            print(
                f"   {p:8s} "
                + "  ".join(
                    f"{k} {o[k]:6.1f} s ({100 * o[k] / o['wall']:4.1f}%)"
                    for k in ("mm", "elementwise", "sdpa", "other")
                )
                + f"  wall {o['wall']:.1f} s"
            )
    fast = [r for r in results if r.label.startswith("fast")] or results
    best = min(fast, key=lambda r: r.seconds)
    peak = total_flops / sum(best.peak.values()) / 1e9
    gflops = total_flops / best.seconds / 1e9
    elapsed = time.perf_counter() - t_start
    print(f"   ({name} done in {elapsed:.0f} s)")
    return {
        "model": name,
        "best": best.label,
        "samples/s": n / best.seconds,
        "gflops": gflops,
        "peak": peak,
        "speedup": naive.seconds / best.seconds,
        "d_ifd": float(np.nanmax(np.abs(ifd(best) - ref_ifd))),
        "d_h64": max_abs_diff(best.entropy, f64[best.budget][1]),
        "vs_before": {
            r.label: r.seconds / best.seconds for r in results if r.label.startswith("before")
        },
        "d_before": {
            r.label: max(max_abs_diff(r.logprob[v], best.logprob[v]) for v in r.logprob)
            for r in results
            if r.label.startswith("before") and r.budget == best.budget
        },
        "naive_gflops": total_flops / naive.seconds / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    if not args.data.is_file():
        print(
            f"skipped: data file not found: {args.data} (pass --data PATH to an Alpaca JSON file)"
        )
        return 0
    import torch

    from thresher.data import read
    from thresher.models import load_model

    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    data = read(str(args.data), limit=args.rows)
    from common import machine

    print(f"{machine()}; {time.strftime('%Y-%m-%d')}")
    print(
        f"bench/passes.py: {data.rows_read} rows read from {args.data.name} ({len(data.samples)} samples, "
        f"{len(data.rejected)} rejected); torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"batch_tokens={args.batch_tokens}, clock={args.clock}, load {os.getloadavg()[0]:.1f}"
    )
    smol = load_model("smollm2-135m")  # its tokenizer renders for both models
    summary = [bench_model(name, smol, data.samples, args) for name in args.models]

    print("\n== summary (best batch_tokens per model; ratios are within this run)")
    for s in summary:
        met = "met" if s["gflops"] / s["peak"] >= 0.75 else "NOT met"
        met_naive = "met" if s["speedup"] >= 1.5 else "NOT met"
        print(
            f"   {s['model']:17s} {s['best']:11s} {s['samples/s']:6.2f} samples/s, {s['gflops']:5.1f} useful GFLOP/s "
            f"= {s['gflops'] / s['peak']:.2f} of the {s['peak']:.0f} GFLOP/s matmul peak (target 0.75: {met}); "
            f"{s['speedup']:.2f}x the naive path ({s['naive_gflops']:.1f} GFLOP/s; target 1.5x: {met_naive}); max |dIFD| {s['d_ifd']:.1e}; "
            f"max |dH| vs float64 {s['d_h64']:.1e} (target 1e-5: {'met' if s['d_h64'] <= 1e-5 else 'NOT met'})"
        )
        for label, ratio in s["vs_before"].items():
            d = s["d_before"].get(label)
            print(
                f"   {'':17s} {ratio:.2f}x the {label} path"
                + (f" (max |dlogp| between them {d:.1e})" if d is not None else "")
            )
    print(f"   elapsed {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
