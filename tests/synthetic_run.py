"""A synthetic run folder of any size for report tests and benchmarks: real data read by
`thresher.data.read` (so the report can read its texts back), made-up IFD-like signals, a top-k
selection on them, filtered rows and reader rejections. No model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import data
from thresher.config import RunConfig
from thresher.rundir import RunFolder

WORDS = [
    "the",
    "model",
    "data",
    "answer",
    "question",
    "list",
    "explain",
    "write",
    "short",
    "long",
    "step",
    "first",
    "then",
    "because",
    "python",
    "function",
    "value",
    "result",
    "example",
    "table",
    "number",
    "sum",
    "error",
    "check",
    "return",
    "sample",
    "reason",
]


def _text(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, size=words)).capitalize() + "."


def write_pool(path: Path, rows: int, seed: int = 0, long_every: int = 50) -> None:
    """`rows` Alpaca rows: instructions of 5-60 words, answers of 20-250 words; every
    `long_every`-th row has an instruction of 1,000 and an answer of 3,000 words (longer than the
    browser shows) and every 40th row has an empty answer (rejected when read)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            long = i % long_every == 7 % long_every
            row = {
                "id": f"r{i:05d}",
                "instruction": _text(rng, 1000 if long else int(rng.integers(5, 60))),
                "input": "",
                "output": ""
                if i % 40 == 3
                else _text(rng, 3000 if long else int(rng.integers(20, 250))),
            }
            f.write(json.dumps(row) + "\n")


def make_run(
    folder: Path, rows: int, fraction: float = 0.1, seed: int = 0, long_every: int = 50
) -> RunFolder:
    """A run folder of `rows` rows (ifd-like scores, top-k selection) whose data is
    `folder/pool.jsonl`."""
    folder.mkdir(parents=True, exist_ok=True)
    pool = folder / "pool.jsonl"
    write_pool(pool, rows, seed, long_every)
    got = data.read(str(pool))
    rng = np.random.default_rng(seed + 1)
    n = len(got.samples)
    ifd = rng.beta(8, 3, size=n) * 1.1
    status = np.where(ifd >= 1.0, "filtered:ifd>=1", "ok").astype(object)
    ids = [s.id for s in got.samples]
    ok = np.flatnonzero(status == "ok")
    order = ok[np.lexsort((np.array(ids, dtype=object)[ok].astype(str), -ifd[ok]))]
    chosen = order[: int(fraction * rows)]
    rank = np.full(n, None, dtype=object)
    rank[chosen] = np.arange(len(chosen))
    loss_cond = rng.gamma(4, 0.4, size=n)
    run = RunFolder(folder)
    table = {
        "id": pa.array(ids, type=pa.string()),
        "line": pa.array([s.meta["line"] for s in got.samples], type=pa.int64()),
        "status": pa.array(status.tolist(), type=pa.string()),
        "ifd": pa.array(ifd),
        "loss_cond": pa.array(loss_cond),
        "loss_uncond": pa.array(loss_cond / ifd),
        "n_prompt_tokens": pa.array([len(s.instruction.split()) for s in got.samples]),
        "n_response_tokens": pa.array([len(s.response.split()) for s in got.samples]),
        "selected": pa.array(np.isin(np.arange(n), chosen)),
        "rank": pa.array(rank.tolist(), type=pa.int64()),
    }
    pq.write_table(pa.table(table), run.scores)
    data.write_rejected(got.rejected, run.rejected)
    cfg = RunConfig()
    cfg.data.path, cfg.output.dir, cfg.select.fraction = str(pool), str(folder), fraction
    run.write_manifest(
        {
            "config": cfg.to_dict(),
            "method": {"name": "ifd", "params": {}, "score": "ifd"},
            "data": {"source": got.source, "content_hash": got.content_hash, "format": got.format},
            "counts": {"rows_read": got.rows_read, "scored": n, "rejected": len(got.rejected)},
            "selection": {"requested": len(chosen), "returned": len(chosen), "note": ""},
        }
    )
    return run
