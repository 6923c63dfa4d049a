"""Crash recovery: SIGKILL a scoring run at random points, rerunning after each, then compare
with an uninterrupted run.

    python bench/reliability.py                      # 20 kills, 400 rows, seed 0
    python bench/reliability.py --kills 5 --rows 120 --seed 1

A tiny Llama (tests/tiny.py) is saved to a folder and `thresher run` (IFD, 10%) runs in a child
process on one torch thread. The kill points are seeded: each kill waits for a random number of
committed shards, then a random fraction of one shard's time, so kills land while the model
loads, mid-forward, between a shard's rename and its marker, and while outputs are written.

Figures (targets in brackets): rows lost [0], duplicate ids [0], max |delta score| over every
signal [0, fp32], subset Jaccard [1.0], and the extra work the kills cost: rows whose scoring
was started again (every child logs the rows it starts) and wall time, both against the clean
run. Exits 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = ("ifd", "loss_cond", "loss_uncond")


def child(log: str, argv: list[str]) -> int:
    """Run the CLI, logging the rows of every scorer call as it starts (before any commit)."""
    import torch

    from thresher import cli
    from thresher.engine.scorer import Scorer

    torch.set_num_threads(1)
    real = Scorer.score_rendered
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def logged(self, ids, rendered):
        os.write(fd, f"{len(ids)}\n".encode())
        return real(self, ids, rendered)

    Scorer.score_rendered = logged
    return cli.main(argv)


def _setup(work: Path, rows: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import FAMILIES

    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    make_model(tok).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    data = work / "data.jsonl"
    items = [
        {
            "instruction": f"Add {i} and {i * 3 % 17}.",
            "output": f"{i} + {i * 3 % 17} = {i + i * 3 % 17}. " * (1 + i % 4),
        }
        for i in range(rows)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in items))
    return work / "model", data


def _spawn(model: Path, data: Path, out: Path, log: Path, shard_rows: int) -> subprocess.Popen:
    argv = [
        "run",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--method",
        "ifd",
        "--fraction",
        "0.1",
        "--no-progress",
        "--threads",
        "1",
        f"score.shard_rows={shard_rows}",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path]),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(log), "--", *argv]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _markers(out: Path) -> int:
    return len(list(out.glob("passes/*/shard-*.done")))


def _rows_started(log: Path) -> int:
    return sum(int(x) for x in log.read_text().split()) if log.exists() else 0


def _table(out: Path) -> dict[str, dict]:
    t = pq.read_table(out / "scores.parquet").to_pydict()
    return {
        i: {k: t[k][n] for k in ("status", "selected", *SIGNALS)} for n, i in enumerate(t["id"])
    }


def _shard_ids(out: Path) -> dict[str, list[str]]:
    """Per pass, the ids of the committed rows that stand: a row that failed with an exception
    (`error:*`) is retried by the next run, so the retry supersedes it and is not a duplicate."""
    by_pass: dict[str, list[str]] = {}
    for p in out.glob("passes/*/shard-*.done"):
        t = pq.read_table(p.with_suffix(".parquet"), columns=["id", "status"]).to_pydict()
        by_pass.setdefault(p.parent.name, []).extend(
            i for i, s in zip(t["id"], t["status"], strict=True) if not s.startswith("error:")
        )
    return by_pass


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--kills",
        type=int,
        default=20,
        help="SIGKILLs, each followed by a rerun of the same command (default: 20)",
    )
    ap.add_argument(
        "--rows", type=int, default=400, help="rows of the generated dataset (default: 400)"
    )
    ap.add_argument(
        "--shard-rows", type=int, default=4, help="rows per committed shard (default: 4)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points (default: 0)")
    ap.add_argument("--work-dir", help="keep the runs here (default: a temporary folder)")
    a = ap.parse_args()
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="thresher-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    model, data = _setup(work, a.rows)

    t0 = time.perf_counter()
    proc = _spawn(model, data, work / "clean", work / "clean.log", a.shard_rows)
    first = None
    while proc.poll() is None:
        if first is None and _markers(work / "clean"):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    if proc.returncode != 0:
        raise SystemExit(f"the clean run failed: {proc.stderr.read()}")
    clean_s = time.perf_counter() - t0
    shards = _markers(work / "clean")
    shard_s = (clean_s - (first or 0)) / max(shards, 1)

    rng = random.Random(a.seed)
    targets = sorted(rng.randrange(0, shards + 1) for _ in range(a.kills))
    out, log = work / "killed", work / "killed.log"
    t1 = time.perf_counter()
    landed, finished_first, debris = 0, 0, 0
    for target in targets:
        proc = _spawn(model, data, out, log, a.shard_rows)
        while proc.poll() is None and _markers(out) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, shard_s))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        else:
            finished_first += 1
        proc.wait()
        debris += sum(
            1 for p in out.glob("passes/*/shard-*.parquet") if not p.with_suffix(".done").exists()
        ) + len(list(out.glob("passes/*/*.tmp")))
    proc = _spawn(model, data, out, log, a.shard_rows)
    if proc.wait() != 0:
        raise SystemExit(f"the final rerun failed: {proc.stderr.read()}")
    killed_s = time.perf_counter() - t1

    want, got = _table(work / "clean"), _table(out)
    lost = len(set(want) - set(got))
    dup = sum(len(ids) - len(set(ids)) for ids in _shard_ids(out).values())
    dup += len(pq.read_table(out / "scores.parquet").column("id")) - len(got)
    common = sorted(set(want) & set(got))
    delta = 0.0
    for name in SIGNALS:
        x = np.array([want[i][name] for i in common], dtype=np.float64)
        y = np.array([got[i][name] for i in common], dtype=np.float64)
        same_nan = np.array_equal(np.isnan(x), np.isnan(y))
        delta = max(
            delta, float(np.nanmax(np.abs(x - y), initial=0.0)) if same_nan else float("inf")
        )
    sel_a = {i for i, r in want.items() if r["selected"]}
    sel_b = {i for i, r in got.items() if r["selected"]}
    jaccard = len(sel_a & sel_b) / max(len(sel_a | sel_b), 1)
    clean_rows, killed_rows = _rows_started(work / "clean.log"), _rows_started(log)

    print(
        f"tiny Llama, {a.rows} rows, 2 passes (cond + uncond), shard_rows={a.shard_rows}, seed={a.seed}, 1 torch thread"
    )
    print(f"clean run            {clean_s:.1f} s, {shards} shards, {clean_rows} rows scored")
    print(
        f"kills                {landed} SIGKILLs landed, {finished_first} runs finished before their kill point, then one rerun"
    )
    print(
        f"debris after kills   {debris} unmarked shard or temp files seen (deleted and redone by the next run)"
    )
    print(f"rows lost            {lost}")
    print(f"duplicate ids        {dup}")
    print(f"max |delta score|    {delta:.3g}")
    print(f"subset Jaccard       {jaccard:.3f} ({len(sel_b)} selected)")
    print(
        f"extra work           {killed_rows - clean_rows} rows re-scored ({(killed_rows - clean_rows) / max(clean_rows, 1):.1%} of the clean run), "
        f"wall time x{killed_s / clean_s:.2f} ({killed_s:.1f} s vs {clean_s:.1f} s: {len(targets) + 1} process starts)"
    )
    # a run that ends before its kill point proves nothing: at least half the kills must land
    ok = lost == 0 and dup == 0 and delta == 0.0 and jaccard == 1.0 and 2 * landed >= a.kills
    print(
        "targets              "
        + ("met" if ok else "MISSED")
        + f" (rows lost 0, duplicates 0, max |delta| 0, Jaccard 1, at least {-(-a.kills // 2)} kills landed)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[4:]))
    sys.exit(main())
