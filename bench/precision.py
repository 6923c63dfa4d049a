"""Benchmark (issue 12): what a lower precision does to each method's scores and selection.

On the first N rows (default 500) of the shared Alpaca file, every method given is scored with
smollm2-135m in float32 and in each lower precision given (`bfloat16`: the whole model in bf16,
logits rounded to bf16 then log-softmax and entropy in fp32; `bfloat16-mixed`: bf16 decoder
layers, fp32 final norm, lm_head, log-softmax and entropy), through `thresher.pipeline.score`
exactly as `thresher run` scores. Printed per method and lower precision, against float32:

  speed      float32 seconds / this precision's seconds for the method's own passes, where both
             steps computed the same passes whole ("nan" for ppl after ifd, ifd after
             instructdiff scored its cond pass, instructdiff whose float32 step trained the
             calibrator, a step resumed after an interruption); a separate table times the
             uncached ifd passes over the first --speed-rows rows, the precisions taking turns
  spearman   rank correlation of the method's score over rows scored in both
  J@5% J@10% Jaccard of the subsets the method's own selector picks at 5% and 10%
  max|d| p99|d|  of the score over rows scored in both
  holds      spearman >= 0.99 and J@10% >= 0.85 (issue 12's bar for `dtype=auto`)

and last, the precision `auto` may pick: the fastest whose agreement holds for every method (on
>= 500 rows), else float32 and why.

Each (precision, method) step is cached in `--out`: the pipeline's pass cache resumes per sample,
and a finished step's table, selections and seconds are kept in `<out>/<precision>/<method>.json`,
so a rerun skips it. All precisions share one instructdiff calibrator (trained once, in float32,
by the float32 step: its folder is linked into the others), so only the scoring precision differs.

Timing is this process's CPU time with `--clock cpu` (use `--threads 1` on a busy machine) or
the wall clock; either way speed is a ratio within one machine and one run of this benchmark.
Without native bf16 units (avx512_bf16 / amx_bf16 in /proc/cpuinfo) bf16 is emulated and its
speed ratio is below 1; the agreement figures do not depend on the hardware.

T-SHIRT's 30 noisy copies per pass cost 30 passes; `--tshirt-copies` lowers them for this
benchmark (default 4); InstructDiff's warm-up is capped by `--instructdiff-steps` (default 4).

Examples:
    python bench/precision.py --rows 500 --methods ifd ppl entropy --threads 1 --clock cpu
    python bench/precision.py --rows 500 --methods ifd ppl entropy superfiltering mads nait tshirt instructdiff
    python bench/precision.py --rows 40 --precisions float32 bfloat16 --methods ifd --out /tmp/p40
  on two cores, one process per precision (1 thread each; the float32 instructdiff step first,
  since the others score against its calibrator), then the table from the cached steps:
    python bench/precision.py --precisions float32 --methods instructdiff ifd ... --speed-rows 0 &
    python bench/precision.py --precisions bfloat16 bfloat16-mixed --methods ifd ... instructdiff --speed-rows 0
    python bench/precision.py --methods ifd ... instructdiff
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATA = SHARED / "alpaca_en_demo.json"
TARGET = SHARED / "gsm8k_test.jsonl"  # NAIT's in-domain reference set
METHODS = ("ifd", "ppl", "entropy", "superfiltering", "mads", "nait", "tshirt", "instructdiff")
# issue 12: `auto` may pick a lower precision only if every method keeps, on >= 500 rows,
SPEARMAN_MIN = 0.99  # the rank correlation of its score with float32's at least this
JACCARD10_MIN = 0.85  # and the Jaccard of its 10% subset with float32's at least this
MIN_ROWS = 500
FRACTIONS = (0.05, 0.10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/precision.py",
        description="Score methods in float32 and lower precisions; compare scores and subsets.",
        epilog=__doc__[__doc__.index("Examples:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=500, help="first N rows of the data (default 500)")
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "bfloat16", "bfloat16-mixed"],
        help="model.dtype values to score (default float32 bfloat16 bfloat16-mixed)",
    )
    p.add_argument(
        "--reference",
        default="float32",
        help="the precision the others are compared with and whose instructdiff calibrator they "
        "share (default float32); its steps may come from another process's run into the same --out",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["ifd", "ppl", "entropy"],
        help="methods to score (default ifd ppl entropy, which share their passes)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu", help="default cpu")
    p.add_argument("--data", type=Path, default=DATA, help="Alpaca JSON file")
    p.add_argument("--target", type=Path, default=TARGET, help="NAIT's target set (gsm8k JSONL)")
    p.add_argument("--target-limit", type=int, default=100, help="NAIT target rows (default 100)")
    p.add_argument("--tshirt-copies", type=int, default=4, help="T-SHIRT noisy copies (default 4)")
    p.add_argument(
        "--instructdiff-steps", type=int, default=4, help="warm-up optimizer steps (default 4)"
    )
    p.add_argument(
        "--speed-rows",
        type=int,
        default=100,
        help="rows of the uncached ifd passes timed in every precision (default 100; 0 skips)",
    )
    p.add_argument("--speed-rounds", type=int, default=1, help="timed rounds (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "runs" / "bench-precision",
        help="cache folder (default runs/bench-precision)",
    )
    args = p.parse_args(argv)
    if args.rows < 1 or args.threads < 1:
        p.error("--rows and --threads must be positive")
    return args


def config(args: argparse.Namespace, precision: str, method: str) -> Any:
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.data.path, cfg.data.limit = str(args.data), args.rows
    cfg.model.name, cfg.model.dtype, cfg.model.device = "smollm2-135m", precision, "cpu"
    cfg.model.threads = args.threads
    cfg.method.name = method
    cfg.output.dir = str(args.out / precision)
    cfg.output.report = False
    cfg.score.progress = False
    if method == "tshirt":
        cfg.method.params["copies"] = args.tshirt_copies
    if method == "nait":
        cfg.method.params["target"] = [str(args.target)]
        cfg.method.params["target_limit"] = args.target_limit
    if method == "instructdiff":
        cfg.method.params["train"] = {"max_steps": args.instructdiff_steps}
    return cfg


def run_step(args: argparse.Namespace, precision: str, method: str, lm: Any) -> dict[str, Any]:
    """Score one method in one precision (or read the finished step): its score column per row,
    the ids it selects at each fraction, and the seconds its scoring took."""
    import numpy as np

    from thresher.pipeline import score, select

    path = args.out / precision / f"{method}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = config(args, precision, method)
    if method == "instructdiff" and precision != args.reference:
        shared = args.out / args.reference / "calibrators"
        mine = args.out / precision / "calibrators"
        if not shared.is_dir():
            raise SystemExit(
                f"bench/precision.py: {precision} instructdiff scores against the {args.reference} "
                f"calibrator, which {shared} does not hold yet; run the {args.reference} "
                "instructdiff step first (--precisions "
                f"{args.reference} --methods instructdiff)"
            )
        if not mine.exists():
            mine.parent.mkdir(parents=True, exist_ok=True)
            mine.symlink_to(shared.resolve(), target_is_directory=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    trains = method == "instructdiff" and not (args.out / precision / "calibrators").exists()
    t0 = clock()
    result = score(cfg, loaded=lm)
    seconds = clock() - t0
    table = result.table
    selected = {}
    for f in FRACTIONS:
        cfg.select.fraction = f
        selected[str(f)] = list(select(result, cfg).ids)
    values = np.asarray(table.columns[table.score], dtype=np.float64)
    step = {
        "precision": precision,
        "method": method,
        "score": table.score,
        "ids": list(table.ids),
        "values": [None if not np.isfinite(v) else float(v) for v in values],
        "status": list(table.status),
        "selected": selected,
        "seconds": seconds,
        "computed": {role: p["scored"] for role, p in result.passes.items()},
        "reused": {role: p["reused"] for role, p in result.passes.items()},
        "model": result.model_info and result.model_info.get("precision"),
        "trained": trains,  # the seconds include training the calibrator
        "load": os.getloadavg()[0],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(step))
    os.replace(tmp, path)
    return step


def comparable(ref: dict[str, Any], low: dict[str, Any]) -> bool:
    """Whether two steps' seconds time the same work: each computed the same rows of the same
    passes (not ppl after ifd, which computes none, nor ifd after instructdiff computed its
    cond pass), resumed none of them, and trained nothing (the shared calibrator)."""
    for step in (ref, low):
        reused = step.get("reused")
        if reused is None or step.get("trained", step["method"] == "instructdiff"):
            return False
        if not any(step["computed"].values()) or any(reused[r] for r in step["computed"]):
            return False
    return ref["computed"] == low["computed"]


def speed_table(args: argparse.Namespace) -> dict[str, float]:
    """Seconds of the ifd method's cond (log-prob and entropy) and uncond (log-prob) passes over
    the first --speed-rows rows in each precision, without any cache, the precisions taking
    turns pass by pass for --speed-rounds rounds so that they share the machine's load alike;
    kept in <out>/speed.json."""
    import torch

    from thresher.data import read
    from thresher.engine.scorer import Scorer
    from thresher.methods import build
    from thresher.models import load_model

    path = args.out / f"speed-{args.speed_rows}.json"
    if path.is_file():
        return json.loads(path.read_text())
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    samples = read(str(args.data), limit=args.speed_rows).samples
    ids = [s.id for s in samples]
    passes = build("ifd", "smollm2-135m").passes
    scorers = {}
    for precision in [args.reference, *(p for p in args.precisions if p != args.reference)]:
        lm = load_model("smollm2-135m", dtype=precision, device="cpu")
        scorers[precision] = [
            (sc, sc.render(samples))
            for sc in (Scorer(spec, lm.model, lm.tokenizer) for spec in passes.values())
        ]
    seconds = dict.fromkeys(scorers, 0.0)
    with torch.inference_mode():
        for pairs in scorers.values():  # warm-up
            for sc, rendered in pairs:
                sc.score_rendered(ids[:4], rendered[:4])
        for _ in range(args.speed_rounds):
            for k in range(len(passes)):
                for precision, pairs in scorers.items():
                    sc, rendered = pairs[k]
                    t = clock()
                    sc.score_rendered(ids, rendered)
                    seconds[precision] += clock() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(seconds))
    return seconds


def matmul_rates(args: argparse.Namespace) -> dict[str, float]:
    """FLOP/s of the MLP-shaped matmul in each precision (the mixed mode's body is bf16), best
    of two turns each."""
    from thresher.dryrun import matmul_rate, model_shape
    from thresher.models import load_tokenizer

    shape = model_shape(load_tokenizer("smollm2-135m").config)
    order = [args.reference, *(p for p in args.precisions if p != args.reference)]
    best = dict.fromkeys(order, 0.0)
    for _ in range(2):
        for p in order:
            best[p] = max(best[p], matmul_rate(shape, p, "cpu", 2048, seconds=2.0))
    return best


def compare(ref: dict[str, Any], low: dict[str, Any]) -> dict[str, float]:
    import numpy as np
    from scipy.stats import spearmanr

    a = dict(zip(ref["ids"], ref["values"], strict=True))
    b = dict(zip(low["ids"], low["values"], strict=True))
    both = [i for i in a if a[i] is not None and b.get(i) is not None]
    x = np.array([a[i] for i in both])
    y = np.array([b[i] for i in both])
    d = np.abs(x - y)
    out = {
        "rows": len(both),
        "spearman": float(spearmanr(x, y).statistic) if len(both) > 2 else float("nan"),
        "max": float(d.max()) if len(d) else float("nan"),
        "p99": float(np.percentile(d, 99)) if len(d) else float("nan"),
        "speed": ref["seconds"] / low["seconds"] if comparable(ref, low) else float("nan"),
    }
    for f in FRACTIONS:
        s, t = set(ref["selected"][str(f)]), set(low["selected"][str(f)])
        out[f"J{f}"] = len(s & t) / len(s | t) if s | t else 1.0
    out["holds"] = out["spearman"] >= SPEARMAN_MIN and out["J0.1"] >= JACCARD10_MIN
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: data file not found: {args.data} (pass --data PATH)")
        return 0
    if "nait" in args.methods and not args.target.is_file():
        print(f"skipped: NAIT target set not found: {args.target} (pass --target PATH)")
        return 0
    import torch

    from common import machine
    from thresher.models import load_model

    torch.set_num_threads(args.threads)
    print(
        f"bench/precision.py: {args.rows} rows of {args.data.name}, smollm2-135m, methods "
        f"{' '.join(args.methods)}, precisions {' '.join(args.precisions)}; threads={args.threads}, "
        f"clock={args.clock}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}\n"
        f"{machine()}; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    for precision in args.precisions:
        lm = None
        for method in args.methods:
            if not (args.out / precision / f"{method}.json").is_file() and lm is None:
                lm = load_model("smollm2-135m", dtype=precision, device="cpu")
            t = time.perf_counter()
            steps[precision, method] = step = run_step(args, precision, method, lm)
            print(
                f"   {precision:15s} {method:15s} {step['seconds']:8.1f} s ({args.clock}; "
                f"{time.perf_counter() - t:.0f} s now, load {os.getloadavg()[0]:.1f}) "
                f"computed {step['computed']}",
                flush=True,
            )
    ref_precision = args.reference
    lower = [p for p in args.precisions if p != ref_precision]
    for method in args.methods:  # the reference's steps, if another process computed them
        path = args.out / ref_precision / f"{method}.json"
        if (ref_precision, method) not in steps and path.is_file():
            steps[ref_precision, method] = json.loads(path.read_text())
    missing = [m for m in args.methods if (ref_precision, m) not in steps]
    if missing:
        print(
            f"\n   no comparison: the {ref_precision} steps of {' '.join(missing)} are not in {args.out}"
        )
        return 0
    if args.speed_rows:
        sec = speed_table(args)
        print(
            f"\n   ifd passes (cond with entropy + uncond) over the first {args.speed_rows} rows, "
            f"uncached, precisions taking turns ({args.clock} seconds; speed = {ref_precision} / this):"
        )
        for p in sec:
            print(f"   {p:15s} {sec[p]:8.1f} s  speed {sec[ref_precision] / sec[p]:.2f}x")
        print(
            "   the bound on these: the model's MLP matmul, (2048 x width) @ (width x ffn), in "
            "each precision (wall clock, 2 s each, taking turns twice):"
        )
        rates = matmul_rates(args)
        for p, rate in rates.items():
            print(f"   {p:15s} {rate / 1e9:6.0f} GFLOP/s  {rate / rates[ref_precision]:.2f}x")
    print(
        f"\n   against {ref_precision}: speed = {ref_precision} seconds / these seconds; "
        f"holds = spearman >= {SPEARMAN_MIN} and J@10% >= {JACCARD10_MIN}"
    )
    print(
        f"   {'method':15s} {'precision':15s} {'rows':>5s} {'speed':>6s} {'spearman':>8s} "
        f"{'J@5%':>5s} {'J@10%':>5s} {'max|d|':>8s} {'p99|d|':>8s} holds"
    )
    verdict: dict[str, list[str]] = {p: [] for p in lower}
    speeds: dict[str, list[float]] = {p: [] for p in lower}
    for method in args.methods:
        ref = steps[ref_precision, method]
        for p in lower:
            c = compare(ref, steps[p, method])
            if c["speed"] == c["speed"]:  # not NaN
                speeds[p].append(c["speed"])
            if not c["holds"]:
                verdict[p].append(f"{method} (spearman {c['spearman']:.3f}, J@10% {c['J0.1']:.2f})")
            print(
                f"   {method:15s} {p:15s} {c['rows']:5d} {c['speed']:6.2f} {c['spearman']:8.4f} "
                f"{c['J0.05']:5.2f} {c['J0.1']:5.2f} {c['max']:8.1e} {c['p99']:8.1e} "
                f"{'yes' if c['holds'] else 'NO'}"
            )
    held = [p for p in lower if not verdict[p]]
    print()
    for p in lower:
        print(
            f"   {p}: "
            + ("holds for every method" if not verdict[p] else "fails " + "; ".join(verdict[p]))
            + (
                f"; speed vs {ref_precision} {min(speeds[p]):.2f}-{max(speeds[p]):.2f}x"
                if speeds[p]
                else ""
            )
        )
    if args.rows < MIN_ROWS:
        print(f"   auto: undecided, {args.rows} rows < {MIN_ROWS}")
    elif held:
        best = max(held, key=lambda p: min(speeds[p], default=0.0))
        print(f"   auto may pick {best} where matmul has native bf16 units")
    else:
        print(f"   auto stays {ref_precision}: no lower precision holds for every method")
    return 0


if __name__ == "__main__":
    sys.exit(main())
