"""Benchmark of activation capture (issue "NAIT and MADS"): what pooled activations add to a
plain `cond` pass, and what they cost in memory.

On the first N rows of the Alpaca demo data, with `smollm2-135m` (30 layers, d=576, MLP 1536),
three variants of the `cond` pass (alpaca template, max_length 512, log-prob + entropy, as
`ifd`) run through `Scorer.score_rendered`, rendering done once outside every timing:

  plain   log-prob + entropy (the `ifd` cond pass)
  nait    + residual hidden states of all 30 layers, `drift` pool over the whole sequence
  mads    + MLP activations SiLU(gate_proj) of the paper's 5 layers at the same relative depth,
          `mean` pool over the prompt

Each variant is warmed up, then timed `--repeats` times in rotating order; the figure is the
median, and the cost of activation capture is the ratio to `plain` within this run (the
machine may be shared and noisy). Memory: the bytes each row adds to the pass shards (float32,
measured from the parquet files written) and what a row holds in memory afterwards: one
projection per layer for `nait` and its tags for `mads`, which both stream their pool pass
shard by shard as `thresher run` does, or the float32 activations of a loaded pass
(`mads_loaded`: MADS as it ran before it streamed, the same tags). The peak memory
of each variant is measured in a child process of its own that runs the whole pass through the
local engine (shards written, then loaded, as `thresher run` does): peak RSS minus the RSS after
the model loaded and scored one row (the memory-mapped weights are paged in by the first forward),
with the peak reset there, so neither the load's own spike nor the weights count. A pass
streams shard by shard, so at 52,002 rows (Alpaca-GPT4) its peak is the measured working set
plus what the rows hold at 52K rows, loaded activations counted at the peak-over-bytes ratio
that loading a synthetic 4,000-row pass measures.

Examples:
    python bench/activations.py
    python bench/activations.py --rows 200 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from thresher import data as data_mod  # noqa: E402
from thresher.cache import PassStore, key_material  # noqa: E402
from thresher.engine.scorer import Scorer  # noqa: E402
from thresher.methods import mads, nait  # noqa: E402
from thresher.methods.mads import stream_tags  # noqa: E402
from thresher.methods.nait import pool_projections  # noqa: E402
from thresher.models import load_model  # noqa: E402
from thresher.passes import PassSpec  # noqa: E402
from thresher.signals.nait import fit_directions  # noqa: E402
from thresher.templates import get_template  # noqa: E402

FULL = 52_002


def variants(n_layers: int) -> dict[str, PassSpec]:
    """The shared cond pass alone, and with NAIT's and MADS's default pooling (their pool passes)."""
    base = PassSpec(
        model="smollm2-135m",
        view="cond",
        template="alpaca",
        fields=("logprob", "entropy"),
        max_length=512,
    )
    return {
        "plain": base,
        "nait": nait.pool_pass("smollm2-135m").resolve(n_layers),
        "mads": mads.pool_pass("smollm2-135m").resolve(n_layers),
    }


def rss_mb() -> float:
    """Current resident set size (Linux /proc)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """Peak resident set size since the last `reset_peak()` (VmHWM, Linux /proc)."""
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:")
    )
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Start a new peak: writing 5 to clear_refs resets VmHWM (Linux), so the model load's own
    peak (its temporary copies) is not counted as the pass's."""
    Path("/proc/self/clear_refs").write_text("5")


def child_peak(a: argparse.Namespace, variant: str) -> float:
    """Run one variant's whole pass in this process; return peak RSS over the RSS after loading (MB)."""
    from thresher.engine.local import run_pass

    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    read = data_mod.read(a.data, limit=a.rows)
    spec = variants(lm.info.n_layers)["mads" if variant == "mads_loaded" else variant]
    scorer = Scorer(spec, lm.model, lm.tokenizer, batch_tokens=a.batch_tokens)
    # the weights are memory-mapped: the first forward pages them in (135M float32 parameters), which
    # belongs to the loaded model, not to the pass, so one row is scored before the baseline
    scorer.score_rendered([read.samples[0].id], scorer.render(read.samples[:1]))
    loaded = rss_mb()
    reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        store = PassStore(
            tmp,
            spec,
            key_material(
                spec,
                dataclasses.asdict(lm.info),
                get_template("alpaca", lm.tokenizer).text,
                read.content_hash,
            ),
        )
        ids = [s.id for s in read.samples]
        if (
            variant == "nait"
        ):  # as `thresher run --method nait`: the pool pass streams into projections
            run_pass(read.samples, scorer, store, progress=False, load_stats=False)
            keys = spec.activation_columns()
            first = next(
                store.scan(keys)
            )  # stand-in target set (the cost does not depend on which rows)
            cond, proj = pool_projections(
                store,
                ids,
                keys,
                {"t": fit_directions({k: first.activations[k] for k in keys})},
                "pc1",
            )
            assert len(cond.ids) == len(ids) and all(len(v) == len(ids) for v in proj["t"].values())
        elif variant in ("mads", "mads_loaded"):
            # as `thresher run --method mads` does now (the pool pass streamed shard by shard into
            # tags), or as it did before (the whole pass loaded, then tagged)
            streamed = variant == "mads"
            res = run_pass(read.samples, scorer, store, progress=False, load_stats=not streamed)
            source = store if streamed else res.stats
            cols = list(spec.activation_columns())
            rule = dict(rule="quantile", q=0.99, sample=4096, tau=None, k=82, z0=3.0)
            _, tags, _, _ = stream_tags(source, ids, cols, **rule)
            held = sum(t.nbytes + sys.getsizeof(t) for layer in tags for t in layer) / len(ids)
            return peak_mb() - loaded, held
        else:
            res = run_pass(read.samples, scorer, store, progress=False)
            assert len(res.stats) == len(read.samples)
    return peak_mb() - loaded, 0.0


def load_factor(spec: PassSpec, width: int, rows: int = 4000, shard_rows: int = 64) -> float:
    """Peak RSS of loading a pass with pooled activations (`PassStore.load`, then aligned to the
    dataset's order, as `thresher run` does) over the bytes of the activations loaded: synthetic
    shards of `rows` rows, committed in a shuffled order."""
    rng = np.random.default_rng(0)
    ids = [f"r{i:05d}" for i in rng.permutation(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        store = PassStore(tmp, spec, {"pass": spec.to_dict()})
        store.open()
        for a in range(0, rows, shard_rows):
            part = ids[a : a + shard_rows]
            n = len(part)
            store.write_shard(
                {
                    "id": part,
                    "status": ["ok"] * n,
                    "n_prompt_tokens": [1] * n,
                    "n_response_tokens": [1] * n,
                    "n_scored": [1] * n,
                    "truncated": [""] * n,
                    "logprob": [np.zeros(1)] * n,
                    "entropy": [np.zeros(1)] * n,
                    "activations": {
                        c: rng.standard_normal((n, width), dtype=np.float32)
                        for c in spec.activation_columns()
                    },
                }
            )
        base = rss_mb()
        reset_peak()
        stats = store.load(order=sorted(ids))
        acts_mb = sum(v.nbytes for v in stats.activations.values()) / 2**20
        return (peak_mb() - base) / acts_mb


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=200, help="rows of --data (default: 200)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed repeats per variant, in rotating order (default: 3)",
    )
    ap.add_argument(
        "--batch-tokens",
        type=int,
        default=2048,
        help="rows x padded length per forward (default: 2048)",
    )
    ap.add_argument(
        "--data",
        default=str(ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"),
        help="default: alpaca_en_demo.json beside the project",
    )
    ap.add_argument(
        "--child", choices=["plain", "nait", "mads", "mads_loaded", "load"], help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.child == "load":
        spec = variants(30)["mads"]
        print(json.dumps({"factor": load_factor(spec, 1536)}))
        return
    if a.child:
        peak, held = child_peak(a, a.child)
        print(json.dumps({"peak_mb": peak, "held_bytes_per_row": held}))
        return
    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    read = data_mod.read(a.data, limit=a.rows)
    samples = read.samples
    specs = variants(lm.info.n_layers)
    scorers = {
        k: Scorer(s, lm.model, lm.tokenizer, batch_tokens=a.batch_tokens) for k, s in specs.items()
    }
    rendered = {k: sc.render(samples) for k, sc in scorers.items()}
    ids = [s.id for s in samples]
    for k, sc in scorers.items():  # warm-up
        sc.score_rendered(ids[:4], rendered[k][:4])
    times: dict[str, list[float]] = {k: [] for k in specs}
    cols = {}
    names = list(specs)
    for r in range(a.repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cols[k] = scorers[k].score_rendered(ids, rendered[k])
            times[k].append(time.perf_counter() - t0)
    argv = [
        sys.executable,
        __file__,
        "--rows",
        str(a.rows),
        "--threads",
        str(a.threads),
        "--batch-tokens",
        str(a.batch_tokens),
        "--data",
        a.data,
    ]

    def child(k):
        return json.loads(
            subprocess.run(
                [*argv, "--child", k], capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )

    children = {k: child(k) for k in [*specs, "mads_loaded"]}
    peak = {k: c["peak_mb"] for k, c in children.items()}
    factor = child("load")[
        "factor"
    ]  # peak of loading activations over their bytes, measured at 4,000 rows
    text = get_template("alpaca", lm.tokenizer).text
    info = dataclasses.asdict(lm.info)
    print(
        f"smollm2-135m, {len(samples)} rows, {a.threads} threads, batch_tokens {a.batch_tokens}, median of {a.repeats}"
    )
    print(
        f"loading pooled activations peaks at {factor:.2f}x their bytes (synthetic pass, 4,000 rows)"
    )
    print(
        f"{'variant':<11} {'s':>7} {'rows/s':>7} {'x plain':>8} {'act cols':>8} {'shard B/row':>11} {'held B/row':>10} {'52K shards':>10} {'52K held':>10} {'peak MB':>8} {'52K peak MB':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        shard_bytes = {}
        for k, spec in specs.items():
            store = PassStore(tmp, spec, key_material(spec, info, text, read.content_hash))
            store.open()
            path = store.write_shard(cols[k])
            shard_bytes[k] = path.stat().st_size / len(samples)
    base = statistics.median(times["plain"])
    result = {}
    # mads_loaded: the same pass and tags as mads, with the pass loaded whole (how mads ran before
    # it streamed); it shares mads's timing and shards
    for k in [*specs, "mads_loaded"]:
        v = "mads" if k == "mads_loaded" else k
        t = statistics.median(times[v])
        acts = cols[v]["activations"]
        loaded = sum(w.shape[1] * 4 for w in acts.values())
        # what a row holds once its activations are consumed: nait one float64 projection per
        # layer, mads its tags (measured in the child); a loaded pass its float32 activations
        held = {"nait": 8 * len(acts), "mads": children["mads"]["held_bytes_per_row"]}.get(
            k, loaded
        )
        extra = shard_bytes[v] - shard_bytes["plain"]
        streamed = k in ("nait", "mads")
        # a loaded pass also holds each row's log-probs and entropies (float64 ragged arrays)
        per_row = (held if streamed else factor * loaded) + 16 * sum(
            len(x) for x in cols[v]["logprob"]
        ) / len(samples)
        at_full = peak[k] + per_row * (FULL - len(samples)) / 2**20
        print(
            f"{k:<11} {t:7.2f} {len(samples) / t:7.1f} {t / base:8.2f} {len(acts):8d} {shard_bytes[v]:11.0f} {held:10.0f} "
            f"{shard_bytes[v] * FULL / 1e9:8.2f}GB {held * FULL / 1e9:8.2f}GB {peak[k]:8.0f} {at_full:11.0f}"
        )
        result[k] = {
            "seconds": t,
            "ratio_to_plain": t / base,
            "shard_bytes_per_row": shard_bytes[v],
            "activation_shard_bytes_per_row": extra,
            "activation_bytes_per_row": loaded,
            "held_bytes_per_row": held,
            "load_peak_factor": factor,
            "peak_mb_over_loaded_model": peak[k],
            "peak_mb_at_52k": at_full,
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
