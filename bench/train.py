"""Benchmark: InstructDiff's wall time split (warm-up training vs scoring) and the training
throughput of full fine-tuning vs LoRA, with smollm2-135m on real rows, in one process.

    python bench/train.py --data ../shared/data/alpaca_en_demo.json --rows 200 --threads 1

Prints the figures; compares variants as ratios within this one run (the machine is shared,
so absolute seconds move between runs). Everything is written under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common import machine
from thresher.config import RunConfig
from thresher.data import read
from thresher.models import load_model
from thresher.pipeline import run
from thresher.train import preset, train


def instructdiff_split(data: str, rows: int, steps: int, out: Path) -> dict[str, float]:
    """One InstructDiff run; the warm-up training time comes from the calibrator's record."""
    cfg = RunConfig()
    cfg.data.path, cfg.data.limit = data, rows
    cfg.method.name = "instructdiff"
    # full fine-tuning as the paper; steps capped so the benchmark ends in minutes on 2 cores
    cfg.method.params = {"train": {"batch_size": 4, "max_steps": steps}}
    cfg.select.fraction = 0.1
    cfg.output.dir = str(out)
    cfg.score.progress = False
    t0 = time.perf_counter()
    result, sel, manifest = run(cfg)
    total = time.perf_counter() - t0
    meta = json.loads(next((out / "calibrators").glob("round0-*/thresher-train.json")).read_text())
    return {
        "total_s": total,
        "score_step_s": manifest["timings_s"]["score"],  # warm-up + both passes + calibrator load
        "warmup_train_s": meta["seconds"],  # copy + SFTTrainer loop + save
        "warmup_loop_s": meta["train_seconds"],
        "warmup_rows": meta["rows"],
        "warmup_steps": meta["steps"],
        "scored_rows": result.counts["scored"],
        "selected": len(sel.ids),
    }


def throughput(
    data: str, rows: int, out: Path, dtypes: tuple[str, ...] = ("float32",), repeats: int = 1
) -> dict[str, dict[str, float]]:
    """Tokens per second of the optimizer loop, full fine-tuning vs LoRA, on the same rows, for
    each training dtype (bfloat16 = bf16 autocast over the float32 weights, as
    selection_quality.py --dtype bfloat16 trains). With repeats > 1 the variants run in an order
    rotated by one each repeat (the machine's load drifts) and the median is reported."""
    samples = read(data, limit=rows).samples
    lm = load_model("smollm2-135m")
    variants = [
        (f"{kind}{'' if dtype == 'float32' else ' ' + dtype}", lora, dtype)
        for dtype in dtypes
        for kind, lora in (("full", False), ("lora", True))
    ]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    for rep in range(repeats):
        for name, lora, dtype in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
            cfg = preset("cpu", batch_size=4, epochs=1, lora=lora, dtype=dtype)
            folder = out / f"{name.replace(' ', '-')}-{rep}"
            r = train(samples, lm, folder, cfg, progress=False)
            runs[name].append(
                {
                    "rows": r.rows,
                    "steps": r.steps,
                    "tokens": r.tokens,
                    "loop_s": r.train_seconds,
                    "tokens_per_s": r.tokens / r.train_seconds,
                    "total_s": r.seconds,
                }
            )
    res = {}
    for name, rs in runs.items():
        mid = sorted(rs, key=lambda x: x["tokens_per_s"])[(len(rs) - 1) // 2]
        res[name] = {**mid, "all_tokens_per_s": [x["tokens_per_s"] for x in rs]}
    return res


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        default=str(
            Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
        ),
    )
    p.add_argument("--rows", type=int, default=200, help="InstructDiff pool size (default: 200)")
    p.add_argument(
        "--warmup-steps", type=int, default=5, help="cap on warm-up optimizer steps (batch 4)"
    )
    p.add_argument(
        "--train-rows",
        type=int,
        default=24,
        help="rows for the full vs LoRA comparison (one epoch, batch 4)",
    )
    # 1: on a shared 2-core machine two threads per process oversubscribe the cores (measured:
    # a full fine-tuning step of 200 tokens took 55 s with 2 threads, 9.5 s with 1, load average 12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        choices=("float32", "bfloat16"),
        help="training dtypes of the throughput comparison (default: float32)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="throughput runs per variant, in rotated order; the median is printed (default: 1)",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        default=["instructdiff", "throughput"],
        choices=("instructdiff", "throughput"),
        help="what to measure (default: both)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch threads: {a.threads}; data: {a.data}\n{machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        if "instructdiff" in a.parts:
            instructdiff_part(a, Path(tmp))
        if "throughput" in a.parts:
            throughput_part(a, Path(tmp))


def instructdiff_part(a: argparse.Namespace, tmp: Path) -> None:
    split = instructdiff_split(a.data, a.rows, a.warmup_steps, tmp / "run")
    scoring = split["score_step_s"] - split["warmup_train_s"]
    print(
        f"\nInstructDiff on {a.rows} rows ({split['scored_rows']} scored, {split['selected']} selected):"
    )
    print(
        f"  warm-up training  {split['warmup_train_s']:7.1f} s  ({split['warmup_rows']} rows, {split['warmup_steps']} steps; loop {split['warmup_loop_s']:.1f} s)"
    )
    print(f"  scoring           {scoring:7.1f} s  (base + calibrated cond passes, calibrator load)")
    print(
        f"  whole run         {split['total_s']:7.1f} s; training is {split['warmup_train_s'] / split['score_step_s']:.0%} of score + prepare"
    )


def throughput_part(a: argparse.Namespace, tmp: Path) -> None:
    tp = throughput(a.data, a.train_rows, tmp / "tp", tuple(a.dtypes), a.repeats)
    print(
        f"\ntraining throughput on {a.train_rows} rows, one epoch, batch 4 (optimizer loop only):"
    )
    for name, r in tp.items():
        each = ", ".join(f"{x:.1f}" for x in r["all_tokens_per_s"])
        print(
            f"  {name:<14} {r['tokens_per_s']:8.1f} tokens/s  ({r['tokens']} tokens, {r['steps']} steps, {r['loop_s']:.1f} s; with copy + save {r['total_s']:.1f} s; each repeat: {each})"
        )
    for dtype in a.dtypes:
        tag = "" if dtype == "float32" else f" {dtype}"
        ratio = tp[f"lora{tag}"]["tokens_per_s"] / tp[f"full{tag}"]["tokens_per_s"]
        print(f"  LoRA / full{tag}: {ratio:.2f}x")
    if {"float32", "bfloat16"} <= set(a.dtypes):
        for kind in ("full", "lora"):
            ratio = tp[f"{kind} bfloat16"]["tokens_per_s"] / tp[kind]["tokens_per_s"]
            print(f"  {kind} bf16 / fp32: {ratio:.2f}x")


if __name__ == "__main__":
    main()
