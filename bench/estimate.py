"""Does the cost estimate hold? What `thresher validate` estimates for a method's passes against
the measured time of the same passes on the same rows, in one process.

    python bench/estimate.py --data ../shared/data/alpaca_en_demo.json --rows 200 --threads 2

For each method (in order, one fresh run folder each): the estimate from the matmul rate
(`thresher validate`), the estimate from a timed probe of `--probe` rows (`validate --probe`),
and the measured seconds of `pipeline.score` with the model already loaded (reading, rendering,
the passes and the signals: what the estimate stands for). Prints each estimate's seconds and its
ratio to the measured seconds, the forward efficiency that would have made the matmul estimate
exact (achieved FLOP/s over the matmul's), the CPU flags that decide the precision and the load
average around the run (other processes on the machine slow the measured run, not the matmul
timed before it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from thresher import dryrun, pipeline
from thresher.config import RunConfig
from thresher.models import load_model

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    model = next((x.split(":", 1)[1].strip() for x in text.splitlines() if "model name" in x), "?")
    return f"{model}; " + ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in FLAGS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=["ifd"])
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = json.loads(Path(a.data).read_text())[: a.rows]
    work = Path(tempfile.mkdtemp(prefix="thresher-estimate-"))
    data = work / "rows.json"
    data.write_text(json.dumps(rows))
    print(f"cpu: {cpu_flags()}")
    print(
        f"{a.model}, {len(rows)} rows of {a.data}, {a.threads} torch threads, probe {a.probe} rows"
    )
    lm = load_model(a.model)
    head = (
        f"{'method':<16} {'tokens':>8} {'TFLOP':>7} {'matmul s':>9} {'probe s':>8} {'measured s':>11}"
        f" {'matmul/meas':>12} {'probe/meas':>11} {'efficiency':>11} {'load':>10}"
    )
    print(head)
    for name in a.methods:
        cfg = RunConfig()
        cfg.data.path, cfg.model.name, cfg.model.threads = str(data), a.model, a.threads
        cfg.method.name, cfg.output.dir = name, str(work / name)
        cfg.score.progress = False
        by_matmul = dryrun.plan(cfg)
        by_probe = dryrun.plan(cfg, probe=a.probe)
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        pipeline.score(cfg, loaded=lm)
        measured = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        c, p = by_matmul.cost, by_probe.cost
        matmul = c.rate / dryrun.FORWARD_EFFICIENCY
        after = dryrun.matmul_rate(by_matmul.shape, "float32", "cpu", c.matmul_rows)
        print(
            f"{name:<16} {c.tokens:>8,} {c.flops / 1e12:>7.2f} {c.seconds:>9.1f} {p.seconds:>8.1f} "
            f"{measured:>11.1f} {c.seconds / measured:>12.2f} {p.seconds / measured:>11.2f} "
            f"{c.flops / measured / matmul:>11.2f} {load_before:>4.1f}-{load_after:<4.1f}"
        )
        print(f"  matmul: {c.how}; again after the run: {after / 1e9:.0f} GFLOP/s")
        print(f"  probe:  {p.how}")


if __name__ == "__main__":
    main()
