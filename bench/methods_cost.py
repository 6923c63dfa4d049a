"""Cost of `miwv` and `tshirt` relative to `ifd` alone, on the same rows and model, in one run.

Prints, per method: the passes it adds to what is already in the run folder, the seconds those
took, and forward FLOPs as 2 x parameters x tokens fed (the tokens counted by rendering each
view, the one-shot view with each sample's demonstration; + the embedder for MIWV), each as a
ratio to IFD's. `superfiltering` runs before `tshirt`, so T-SHIRT's row holds its noisy passes
alone; its total at the paper's M = 30 is the clean passes plus the noisy ones scaled by 30 / M
(the noisy passes cost the same per copy). Then the peak Python-heap memory (tracemalloc) of
T-SHIRT's threshold step at two dataset sizes, the per-row slope between them, and both
extrapolations to 52K rows, next to what holding every |delta| in RAM would take.

    python bench/methods_cost.py --data ../shared/data/alpaca_en_demo.json --rows 200 --copies 4
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from thresher.cache import PassStore
from thresher.config import RunConfig
from thresher.data import read
from thresher.embed import Embedder
from thresher.methods import build
from thresher.methods.miwv import instruction_text
from thresher.methods.tshirt import CHUNK_VALUES, noisy_signals
from thresher.models import load_model
from thresher.pipeline import run
from thresher.templates import Renderer

N_FULL = 52_002  # Alpaca(-GPT4) rows


def tokens_fed(plan, samples, tok, demos: dict | None = None) -> dict[str, int]:
    """Tokens each pass feeds the model (copies included; the oneshot view with `demos`)."""
    out = {}
    for role, spec in plan.passes.items():
        r = Renderer(tok, spec)
        rendered = (
            r.render(s, (demos or {}).get(s.id)) if spec.view == "oneshot" else r.render(s)
            for s in samples
        )
        out[role] = sum(len(x.ids) for x in rendered if x.status == "ok") * max(
            spec.noise.copies if spec.noise else 1, 1
        )
    return out


def subset_store(store: PassStore, dest: Path, spec, keep: set[str]) -> PassStore:
    """A copy of a stored pass restricted to `keep` ids (to measure the threshold step at two sizes)."""
    sub = PassStore(dest, spec, {"subset": len(keep)}, None)
    sub.open()
    for t in store.scan():
        rows = [i for i, x in enumerate(t.ids) if x in keep]
        if rows:
            sub.write_shard(
                {
                    "id": [t.ids[i] for i in rows],
                    "status": [t.status[i] for i in rows],
                    "n_prompt_tokens": t.n_prompt_tokens[rows],
                    "n_response_tokens": t.n_response_tokens[rows],
                    "n_scored": t.n_scored[rows],
                    "truncated": [t.truncated[i] for i in rows],
                    "logprob": [t.logprob.row(i) for i in rows],
                    "entropy": None,
                    "activations": {},
                }
            )
    return sub


def per_row_index_bytes(n: int) -> int:
    """Heap held per sample by the threshold step at `n` rows: the id -> position map, three
    (offset, length) maps, three status lists and five float64 columns, as `noisy_signals` keeps."""
    tracemalloc.start()
    ids = [f"{i:016x}" for i in range(n)]
    before = tracemalloc.get_traced_memory()[0]
    pos = {x: i for i, x in enumerate(ids)}
    maps = [{i: (i * 7, 300) for i in range(n)} for _ in range(3)]
    status = [["ok"] * n for _ in range(3)]
    cols = [np.full(n, np.nan) for _ in range(5)]
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del pos, maps, status, cols
    return held


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        default=str(
            Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
        ),
        help="an instruction dataset (default: alpaca_en_demo.json beside the project)",
    )
    ap.add_argument("--rows", type=int, default=200, help="rows read from --data (default: 200)")
    ap.add_argument(
        "--copies",
        type=int,
        default=4,
        help="T-SHIRT copies measured; any other M than 30 is extrapolated to 30 (default: 4)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--model", default="smollm2-135m", help="scoring model (default: smollm2-135m)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    n_params = sum(p.numel() for p in lm.model.parameters())
    samples = read(a.data, limit=a.rows).samples
    out = Path(tempfile.mkdtemp(prefix="thresher-bench-"))
    print(
        f"{len(samples)} rows of {a.data}, {a.model} ({n_params / 1e6:.0f}M params), {a.threads} thread(s), T-SHIRT copies={a.copies}"
    )
    rows, seconds, flops = [], {}, {}
    for method, params in (
        ("ifd", {}),
        ("miwv", {}),
        ("superfiltering", {}),
        ("tshirt", {"copies": a.copies}),
    ):
        cfg = RunConfig()
        cfg.data.path, cfg.data.limit, cfg.method.name, cfg.method.params = (
            a.data,
            a.rows,
            method,
            params,
        )
        cfg.model.name, cfg.output.dir, cfg.score.progress, cfg.select.fraction = (
            a.model,
            str(out),
            False,
            0.1,
        )
        t0 = time.perf_counter()
        result, _, _ = run(cfg, loaded=lm)
        seconds[method] = time.perf_counter() - t0
        plan = build(method, a.model, params)
        by_id = {s.id: s for s in samples}
        demos = {
            i: by_id[d]
            for i, d in zip(result.table.ids, result.table.columns.get("demo_id", []), strict=False)
            if d
        }
        fed = tokens_fed(plan, samples, lm.tokenizer, demos)
        new = [r for r, p in result.passes.items() if p["scored"]]
        if method == "miwv":
            emb = Embedder("all-minilm-l6-v2")
            e_params = sum(p.numel() for p in emb.model.parameters())
            e_tokens = sum(len(emb.tok(instruction_text(s)).input_ids) for s in samples)
            flops[method] = 2 * n_params * sum(fed[r] for r in new) + 2 * e_params * e_tokens
        else:
            flops[method] = 2 * n_params * sum(fed[r] for r in new)
        rows.append((method, new))
    scale = 30 / a.copies
    seconds["tshirt, M=30"] = seconds["superfiltering"] + scale * seconds["tshirt"]
    flops["tshirt, M=30"] = flops["superfiltering"] + scale * flops["tshirt"]
    rows.append(
        (
            "tshirt, M=30",
            [
                f"superfiltering's 2 + noisy passes x {scale:g}"
                + (" (extrapolated)" if a.copies != 30 else " (measured)")
            ],
        )
    )
    print(
        f"\n{'method':<15} {'passes added':<52} {'seconds':>8} {'x ifd':>6} {'GFLOP':>8} {'x ifd':>6}"
    )
    for method, new in rows:
        print(
            f"{method:<15} {', '.join(new) or '-':<52} {seconds[method]:8.1f} {seconds[method] / seconds['ifd']:6.2f} {flops[method] / 1e9:8.1f} {flops[method] / flops['ifd']:6.2f}"
        )
    print(
        f"(miwv's cond pass is ifd's; superfiltering's plain/1024 passes are tshirt's clean ones; the tshirt row is its M={a.copies} noisy passes)"
    )

    plan = build("tshirt", a.model, {"copies": a.copies})
    ids = [s.id for s in samples]
    peaks, values = {}, {}
    for n in (len(ids) // 2, len(ids)):
        keep = ids[:n]
        sub = out / f"subset{n}"
        stores = [
            subset_store(PassStore(out, plan.passes[r], {}, None), sub, plan.passes[r], set(keep))
            for r in ("noisy_cond", "noisy_uncond")
        ]
        tracemalloc.start()
        res = noisy_signals(keep, stores[0], stores[1], a.copies, 0.5)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # one |delta| per noisy uncond log-prob (token_delta has the uncond copies' length)
        values[n] = sum(len(shard.logprob.values) for shard in stores[1].scan())
        assert len(res["status"]) == n
    n1, n2 = sorted(peaks)
    per_row = values[n2] / n2
    big = per_row / a.copies * 30 * N_FULL
    index = per_row_index_bytes(N_FULL)
    print(
        "\nT-SHIRT threshold step (tracemalloc peak of the Python heap; spill files are on disk):"
    )
    for n in (n1, n2):
        print(
            f"  {n:>4} rows: {values[n]:>8} noisy |delta| values, peak {peaks[n] / 2**20:6.2f} MiB"
        )
    slope = (peaks[n2] - peaks[n1]) / (n2 - n1)
    print(
        f"  slope between them {slope / 1024:.1f} KiB per row -> linear extrapolation to {N_FULL} rows: {(peaks[n2] + slope * (N_FULL - n2)) / 2**20:.0f} MiB"
    )
    print(
        f"  the peak is one shard + one chunk (<= {CHUNK_VALUES * 4 / 2**20:.0f} MiB) + per-row indexes; the indexes measured at {N_FULL} rows: {index / 2**20:.1f} MiB"
    )
    print(
        f"  -> bound at {N_FULL} rows (peak at {n2} + a full chunk + the indexes): {peaks[n2] / 2**20 + CHUNK_VALUES * 4 / 2**20 + index / 2**20:.0f} MiB"
    )
    print(
        f"  {N_FULL} rows at M=30: {big / 1e6:.0f}M |delta| values; spill disk at peak (cond + uncond + delta files) {big * 4 * 3 / 2**30:.1f} GiB;"
    )
    print(
        f"  holding them in RAM instead: {big * 4 / 2**30:.1f} GiB as float32, {big * 32 / 2**30:.0f} GiB as the reference's list of Python floats"
    )
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
