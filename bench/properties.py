"""Benchmark: does each method have the property its paper builds on, on real rows, and how far
is it from random subsets of the same size?

    python bench/properties.py                          # everything; a rerun resumes
    python bench/properties.py --report-only            # the table from the steps that finished

No training (except InstructDiff's warm-up): each property is measured on the selection itself,
at two budgets (`--fractions`, default 5% and 10% of the readable rows), against `--random-arms`
seeded random subsets of the same pool and budget (the `random` method, seeds 42, 43, ...):
value, random mean ± sd, z = (value − mean) / sd.

Pools (written to OUT/data; every row has an `id`, so a perturbed copy keeps its ids):

- `target`: `--target-alpaca` rows of alpaca_en_demo.json, `--gsm8k-rows` GSM8K test rows
  (question → instruction, worked answer → output) and `--mmlu-rows` MMLU-STEM rows (question →
  instruction, lettered choices → input, "The answer is C. <choice>" → output). Never the rows an
  evaluation reads: alpaca_en_demo's held-out split (`evaluation.split_heldout`, as
  selection_quality.py) is left out, and so are the first `EVAL_RESERVED` rows of the GSM8K and
  MMLU files (the items the quality benchmark and `thresher eval` read from the top). NAIT's
  in-domain sets are `--target-rows` rows from the end of each file, disjoint from the pool.
- `defects`: `--defect-clean` clean alpaca_en_demo rows (disjoint from the target pool's) plus
  planted defects of the demo's kinds at the demo's rates (`demo_data.defect_counts`), made from
  real rows: wrong answer (every number of an output that is not a list marker moved by ±1, ±2
  or ±10, as the demo's arithmetic corruption), truncated (cut in its first half, the demo's
  rule), mismatched (another clean row's output), empty (rejected by the reader, as in the demo)
  and exact duplicates of clean rows.
- `perturbed`: the defects pool with light edits that keep the meaning (per row, seeded: the
  instruction's final period added or removed, and two of: a double space after one sentence
  end, one blank line between paragraphs added or removed, one ", and" written " and").

Properties, and the claim each method is held to (direction in brackets):

- target lift (`target` pool): share of GSM8K rows in NAIT's selection with the GSM8K in-domain
  set [higher], of MMLU rows with the MMLU set [higher]; MIWV, IFD and Longest (what length
  alone gives) as controls (no claim); and, as a diagnostic without a verdict, what NAIT selects
  with the first token taken out of its drift's mean (`nait_first_token`).
- coverage (`target` pool): share of embedding clusters hit (k-means with k = `--clusters` on
  the packaged sentence embedder's instruction embeddings, the ones kcenter reads; numpy,
  k-means++ seeded, best of 4 restarts) and share of MADS's activation-tag universe covered (the
  tags and universe MADS computes, its defaults) [higher for MADS and kcenter]; IFD as control;
  and the covering radius, k-center's own objective (the largest distance from a pool row to
  its nearest selected row, on the same embeddings) [lower for kcenter].
- robustness (`defects` and `perturbed` pools): Jaccard of the selections on the pool and on the
  perturbed copy, for T-SHIRT, IFD and Superfiltering [higher]; T-SHIRT's Jaccard across two
  noise seeds (42, 43) [higher]. The random reference is the overlap of independent random
  subsets (disjoint pairs of the random arms).
- defect avoidance (`defects` pool): planted-defect rate of every method's subset [lower].
- InstructDiff (`defects` pool): share of the trimmed rows that are among the same number of
  rows with the largest |ΔNLL| (the rows the warm-up changed most) [higher]; share of the
  warm-up rows among the trimmed; mean ΔH of the subset [lower].

Verdict (fixed before any run): `yes` when z ≥ 2 in the claimed direction, `WORSE` when z ≥ 2
against it, `no` in between; `control` for a method held to no claim there.

CPU settings (the papers' values are the methods' defaults; these keep the run within the
machine): T-SHIRT scores `--tshirt-copies` perturbed copies (default 4, the paper 30);
InstructDiff's warm-up is its preset (3 epochs, lr 2e-5) with batch 8, so α = 0.1 of the pool
gives a few steps (the preset's 64 would give one step per epoch). Everything scores with
`--model` (default smollm2-135m), methods of one pool sharing one run folder (`OUT/POOL/score`)
so they share passes; Superfiltering and T-SHIRT, whose plain-template passes no other method
reads, score in `OUT/POOL/score-plain`.

Steps (`--steps`, default all, in this order): `target` (the target pool's arms), `defects` (the
defects pool's alpaca-template methods and its random arms), `defects-plain` (Superfiltering,
T-SHIRT and T-SHIRT with noise seed 43 on the defects pool) and `perturbed` (IFD,
Superfiltering and T-SHIRT on the perturbed copy). They write different run folders, so they
can run as separate processes at once; `--report-only` then prints the table from all of them.

Every step is cached in `--out`: the pools (rebuilt identically from the seed), each arm's
selection at every fraction (`OUT/POOL/arms/ARM/selection.json`, with the run's scores copied
next to it) and, inside the run folders, every pass shard, so an interrupted run resumes where it
stopped. The table is printed and written to `OUT/properties.md` and `OUT/properties.json`, with
which arms have not finished.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from common import SHARED, alpaca_split, fingerprint, require_shared, select_cached
from thresher.atomic import write_jsonl
from thresher.config import RunConfig
from thresher.data import Sample, read
from thresher.demo_data import defect_counts
from thresher.evaluation import check_disjoint, read_mc, read_pairs
from thresher.evaluation.mc import MC_LETTERS
from thresher.signals import mads as mads_sig
from thresher.signals.instructdiff import warmup_indices

# the quality benchmark evaluates the first --target-rows rows of gsm8k_test.jsonl and
# `thresher eval` reads multiple-choice files from the top: the first 256 rows of each file are
# never in a pool here (ours: 4x the 64 items issue 16 asks an evaluation to read)
EVAL_RESERVED = 256
FRACTIONS = (0.05, 0.1)
STEPS = ("target", "defects", "defects-plain", "perturbed")
# InstructDiff's defaults (methods/instructdiff.py), read again here to know its warm-up rows
INSTRUCTDIFF_ALPHA, INSTRUCTDIFF_SEED = 0.1, 42
# MADS's defaults (methods/mads.py): the tag universe it covers
MADS_MIN_DF, MADS_MAX_DF_FRAC = 1, 0.5


@dataclass
class Arm:
    pool: str
    name: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    step: str = ""  # which `--steps` runs it (default: the pool's name)
    # the run folder under OUT/POOL: methods with the plain template (superfiltering, tshirt)
    # share no pass with the alpaca-template ones, so they score in a folder of their own and
    # the two groups can run as separate processes
    folder: str = "score"


PLAIN = "score-plain"


def arms(a: argparse.Namespace, data: dict[str, Any]) -> list[Arm]:
    """Every arm, in the order each step runs them: the cheapest first, so a run cut short has
    the most properties."""
    gsm, mmlu = [str(data["gsm8k_target"])], [str(data["mmlu_target"])]
    copies = {"copies": a.tshirt_copies}
    warmup = {"train": {"batch_size": 8, "threads": a.threads}}
    seeds = [(f"random-{k + 1}", 42 + k) for k in range(a.random_arms)]
    out = [
        # nait first: its cond pass (with activations) serves ifd, ppl, entropy, miwv, instructdiff
        Arm("target", "nait-gsm8k", "nait", {"target": gsm}),
        Arm("target", "nait-mmlu", "nait", {"target": mmlu}),
        Arm("target", "kcenter", "kcenter"),
        Arm("target", "longest", "longest"),  # a control: how much of a lift length alone gives
        *(Arm("target", n, "random", seed=s) for n, s in seeds),
        Arm("target", "mads", "mads"),
        Arm("target", "ifd", "ifd"),
        Arm("target", "miwv", "miwv"),
        Arm("defects", "longest", "longest"),
        Arm("defects", "kcenter", "kcenter"),
        *(Arm("defects", n, "random", seed=s) for n, s in seeds),
        Arm("defects", "nait", "nait", {"target": gsm}),
        Arm("defects", "ppl", "ppl"),
        Arm("defects", "entropy", "entropy"),
        Arm("defects", "ifd", "ifd"),
        Arm("defects", "mads", "mads"),
        Arm("defects", "instructdiff", "instructdiff", warmup),
        Arm("defects", "miwv", "miwv"),
        Arm("defects", "superfiltering", "superfiltering", step="defects-plain", folder=PLAIN),
        Arm("defects", "tshirt", "tshirt", copies, step="defects-plain", folder=PLAIN),
        Arm(
            "defects",
            "tshirt-seed43",
            "tshirt",
            {**copies, "seed": 43},
            step="defects-plain",
            folder=PLAIN,
        ),
        Arm("perturbed", "ifd", "ifd"),
        Arm("perturbed", "superfiltering", "superfiltering", folder=PLAIN),
        Arm("perturbed", "tshirt", "tshirt", copies, folder=PLAIN),
    ]
    for arm in out:
        arm.step = arm.step or arm.pool
    return out


# ------------------------------------------------------------------ pools


def _lines(name: str) -> list[str]:
    return [x for x in (SHARED / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def _gsm8k_record(line: str, n: int) -> dict[str, Any]:
    row = json.loads(line)
    return {
        "id": f"gsm8k-{n}",
        "instruction": row["question"],
        "input": "",
        "output": row["answer"],
        "meta": {"domain": "gsm8k", "line": n},
    }


def _mmlu_record(line: str, n: int) -> dict[str, Any]:
    row = json.loads(line)
    letter = MC_LETTERS[row["answer"]]
    return {
        "id": f"mmlu-{n}",
        "instruction": row["question"],
        "input": "\n".join(f"{MC_LETTERS[k]}. {c}" for k, c in enumerate(row["choices"])),
        "output": f"The answer is {letter}. {row['choices'][row['answer']]}",
        "meta": {"domain": "mmlu", "subject": row.get("type"), "line": n},
    }


def _alpaca_record(s: Sample) -> dict[str, Any]:
    r = s.meta["record"]
    return {
        "id": f"alpaca-{s.meta['line']}",
        "instruction": r["instruction"],
        "input": r.get("input", ""),
        "output": r["output"],
        "meta": {"domain": "alpaca", "line": s.meta["line"], "defect": None},
    }


def _held_lines(
    name: str, n_pool: int, n_target: int, rng: random.Random
) -> tuple[list[int], list[int]]:
    """(pool line numbers, target line numbers) of a GSM8K / MMLU file: the target from the end,
    the pool a seeded sample of the rows between the reserved top and the target."""
    total = len(_lines(name))
    middle = range(EVAL_RESERVED + 1, total - n_target + 1)  # 1-based line numbers
    if n_pool > len(middle):
        raise ValueError(
            f"{name}: {n_pool} pool rows asked, {len(middle)} lie between the {EVAL_RESERVED} rows "
            f"an evaluation reads and the {n_target} target rows; ask for fewer"
        )
    return sorted(rng.sample(list(middle), n_pool)), list(range(total - n_target + 1, total + 1))


# numbers that are not list markers: "3 apples", "1,990", "2.5" but not the "2." that opens a line
NUMBER = re.compile(
    r"(?<![\w.,/-])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w/])|(?<![\w.,/-])\d+(?:\.\d+)?(?![\w/])"
)
LIST_MARKER = re.compile(r"^\s*\d+[.)]\s")


def wrong_numbers(text: str, rng: random.Random) -> str | None:
    """Every number of `text` that is not a list marker moved by ±1, ±2 or ±10 (the demo's
    arithmetic corruption), kept non-negative, with its decimals and thousands separators; None
    when it has none."""
    out, last, changed = [], 0, False
    for m in NUMBER.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        if LIST_MARKER.match(text[start : m.end() + 2]) and text[start : m.start()].strip() == "":
            continue
        value = m.group().replace(",", "")
        decimals = len(value.split(".")[1]) if "." in value else 0
        new = abs(float(value) + rng.choice([-10, -2, -1, 1, 2, 10]))
        comma = "," if "," in m.group() else ""
        out += [text[last : m.start()], f"{new:{comma}.{decimals}f}"]
        last, changed = m.end(), True
    return "".join([*out, text[last:]]) if changed else None


def plant(rows: list[dict[str, Any]], n_clean: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n_clean` rows stay clean; defects at the demo's rates per clean row are made from the next
    rows (a duplicate copies a clean row). Returns the pool, shuffled."""
    counts = defect_counts(n_clean)
    clean, rest = rows[:n_clean], list(rows[n_clean:])
    planted: list[dict[str, Any]] = []
    numeric = [r for r in rest if wrong_numbers(r["output"], random.Random(0)) is not None]
    if len(numeric) < counts["wrong_answer"]:
        raise ValueError(
            f"{len(numeric)} spare rows hold a number, {counts['wrong_answer']} wrong answers asked"
        )
    for r in numeric[: counts["wrong_answer"]]:
        rest.remove(r)
        planted.append({**r, "output": wrong_numbers(r["output"], rng)})
        planted[-1]["meta"] = {**r["meta"], "defect": "wrong_answer"}
    for kind in ("truncated_answer", "empty_answer", "mismatched_answer"):
        for _ in range(counts[kind]):
            r = rest.pop(0)
            if kind == "truncated_answer":  # the demo's rule: cut in the first half
                o = r["output"]
                cut = o[: rng.randint(len(o) // 4, len(o) // 2)].rstrip(" .,:;!?\"'") or o[0]
            elif kind == "empty_answer":
                cut = ""
            else:
                cut = rng.choice([c["output"] for c in clean if c["output"] != r["output"]])
            planted.append({**r, "output": cut, "meta": {**r["meta"], "defect": kind}})
    for r in rng.sample(clean, counts["duplicate"]):
        planted.append(
            {
                **r,
                "id": f"{r['id']}-dup",
                "meta": {**r["meta"], "defect": "duplicate", "duplicate_of": r["id"]},
            }
        )
    pool = clean + planted
    rng.shuffle(pool)
    return pool


def perturb(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A light edit that keeps the meaning: the instruction's final period toggled (half the
    rows), then two of: a double space after one sentence end, one paragraph break doubled or
    halved, one ", and" written " and" (Oxford comma). Edits that find no place are skipped."""
    ins, out, edits = record["instruction"], record["output"], []
    if rng.random() < 0.5:
        if ins.endswith("."):
            ins = ins[:-1]
            edits.append("instruction_period-")
        elif ins[-1:].isalnum():
            ins += "."
            edits.append("instruction_period+")
    for edit in rng.sample(["double_space", "paragraph", "oxford_comma"], 2):
        if edit == "double_space":
            spots = [m.end() for m in re.finditer(r"[.!?] (?=\S)", out)]
            if spots:
                k = rng.choice(spots)
                out = out[:k] + " " + out[k:]
                edits.append(edit)
        elif edit == "paragraph":
            doubled = [m.start() for m in re.finditer(r"\n\n", out)]
            single = [m.start() for m in re.finditer(r"\n", out)]
            if doubled:
                k = rng.choice(doubled)
                out = out[:k] + out[k + 1 :]
                edits.append("paragraph-")
            elif single:
                k = rng.choice(single)
                out = out[:k] + "\n" + out[k:]
                edits.append("paragraph+")
        else:
            spots = [m.start() for m in re.finditer(r", and ", out)]
            if spots:
                k = rng.choice(spots)
                out = out[:k] + out[k + 1 :]
                edits.append(edit)
    return {
        **record,
        "instruction": ins,
        "output": out,
        "meta": {**record["meta"], "perturbed": edits},
    }


def build_data(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The three pools and the two NAIT target sets under OUT/data; returns paths and counts."""
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    rest, _ = alpaca_split()
    n_defect_rows = a.defect_clean + sum(
        n for k, n in defect_counts(a.defect_clean).items() if k != "duplicate"
    )
    need = a.target_alpaca + n_defect_rows + a.defect_clean  # spare rows for wrong answers
    if need > len(rest):
        raise ValueError(
            f"--target-alpaca {a.target_alpaca} and --defect-clean {a.defect_clean} need up to "
            f"{need} alpaca_en_demo rows outside the held-out split; it has {len(rest)}"
        )
    order = rng.sample(range(len(rest)), len(rest))
    alpaca = [_alpaca_record(rest[i]) for i in order]
    gsm_pool, gsm_target = _held_lines("gsm8k_test.jsonl", a.gsm8k_rows, a.target_rows, rng)
    mmlu_pool, mmlu_target = _held_lines("mmlu_stem_test.jsonl", a.mmlu_rows, a.target_rows, rng)
    gsm, mmlu = _lines("gsm8k_test.jsonl"), _lines("mmlu_stem_test.jsonl")
    target = alpaca[: a.target_alpaca]
    target += [_gsm8k_record(gsm[n - 1], n) for n in gsm_pool]
    target += [_mmlu_record(mmlu[n - 1], n) for n in mmlu_pool]
    rng.shuffle(target)
    files = {
        "target": target,
        "gsm8k_target": [_gsm8k_record(gsm[n - 1], n) for n in gsm_target],
        "mmlu_target": [_mmlu_record(mmlu[n - 1], n) for n in mmlu_target],
    }
    spare = alpaca[a.target_alpaca :]
    # clean rows, the rows defects are made from, and the rest as spare rows holding numbers
    files["defects"] = plant(spare, a.defect_clean, rng)
    prng = random.Random(a.seed + 1)
    files["perturbed"] = [perturb(r, prng) for r in files["defects"]]
    paths = {}
    for name, rows in files.items():
        paths[name] = d / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    # no pool or target row is one an evaluation reads (by id and content hash)
    evaluated = read_pairs(str(SHARED / "gsm8k_test.jsonl"), None, EVAL_RESERVED).samples
    held_mmlu = {i.question for i in read_mc(SHARED / "mmlu_stem_test.jsonl", EVAL_RESERVED)[0]}
    _, heldout = alpaca_split()
    for name in ("target", "gsm8k_target", "mmlu_target", "defects"):
        rows = read(str(paths[name]), format="alpaca").samples
        check_disjoint(rows, evaluated)
        check_disjoint(rows, heldout)
        if any(s.instruction in held_mmlu for s in rows):
            raise ValueError(f"{name} holds an MMLU row an evaluation reads")
    pool_t = read(str(paths["target"]), format="alpaca").samples
    for name in ("gsm8k_target", "mmlu_target"):
        check_disjoint(pool_t, read(str(paths[name]), format="alpaca").samples)
    return {
        **paths,
        "counts": {name: len(rows) for name, rows in files.items()},
        "edited": sum(bool(r["meta"]["perturbed"]) for r in files["perturbed"]),
    }


# ------------------------------------------------------------------ selection


def run_arm(arm: Arm, a: argparse.Namespace, out: Path, data: dict[str, Any], lm: Any) -> dict:
    pool = data[arm.pool]
    settings = {
        "method": arm.method,
        "params": arm.params,
        "seed": arm.seed,
        "model": a.model,
        "fractions": list(a.fractions),
        "pool": fingerprint(pool.read_bytes().decode()),
    }
    cfg = RunConfig()
    cfg.data.path, cfg.data.format = str(pool), "alpaca"
    cfg.model.name, cfg.model.threads = a.model, a.threads
    cfg.method.name, cfg.method.params = arm.method, dict(arm.params)
    cfg.select.seed = arm.seed
    cfg.output.dir = str(out / arm.pool / arm.folder)  # methods of one folder share passes
    cfg.output.report = False
    cfg.score.progress = a.progress
    folder = out / arm.pool / "arms" / arm.name
    return select_cached(
        folder, settings, cfg, list(a.fractions), loaded=None if arm.method == "random" else lm
    )


def finished(out: Path, pool: str, name: str, a: argparse.Namespace) -> dict | None:
    """An arm's cached selection, if it finished with the fractions asked."""
    f = out / pool / "arms" / name / "selection.json"
    if not f.is_file():
        return None
    rec = json.loads(f.read_text())
    have = rec.get("ids_by_fraction", {})
    return rec if all(str(x) in have for x in a.fractions) else None


# ------------------------------------------------------------------ properties


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 4, iters: int = 300) -> np.ndarray:
    """Cluster labels by Lloyd's k-means from k-means++ starts (seeded), the lowest inertia of
    `restarts` runs. An emptied cluster keeps its center."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k}: expected 1 <= k <= {len(x)} rows")
    rng = np.random.default_rng(seed)
    sq = (x**2).sum(1)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centers = [x[rng.integers(len(x))]]
        d2 = ((x - centers[0]) ** 2).sum(1)
        for _ in range(k - 1):
            c = x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))]
            centers.append(c)
            d2 = np.minimum(d2, ((x - c) ** 2).sum(1))
        c = np.stack(centers)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            dist = sq[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            c = np.stack(
                [x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)]
            )
        inertia = float(((x - c[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def _stored_pass(folder: Path) -> dict[str, Any]:
    """A stored pass's committed rows (every shard with its completion marker), by column, the
    last committed row of an id winning."""
    tables = [pq.read_table(p.with_suffix(".parquet")) for p in sorted(folder.glob("shard-*.done"))]
    rows: dict[str, tuple[int, int]] = {}
    for ti, tbl in enumerate(tables):
        for ri, i in enumerate(tbl.column("id").to_pylist()):
            rows[i] = (ti, ri)
    ids = sorted(rows)
    cols = [c for c in tables[0].column_names if c.startswith("hidden.")]
    out: dict[str, Any] = {"id": ids}
    for c in [*cols, "n_prompt_tokens", "n_response_tokens"]:
        per = [tbl.column(c).to_pylist() for tbl in tables]
        out[c] = np.asarray([per[ti][ri] for ti, ri in (rows[i] for i in ids)], dtype=np.float64)
    return out


def nait_first_token(out: Path, fractions: list[float]) -> dict[str, Any] | None:
    """A diagnostic of NAIT's default reading (pooling=mean: the mean over all K tokens minus the
    first token's state). That drift is (K-1)/K x (the mean of tokens 2..K minus token 1), so the
    first token's state, the same for every row (the template's first token), enters scaled by
    (K-1)/K, which differs between rows. Scaling each stored drift by K/(K-1) (pool and targets
    alike) takes the first token out of the mean, so it shifts every row by one constant, which the
    principal component and the ranking ignore. Returns, per target, the correlation of the
    default score with (K-1)/K and the top-b ids of the rescaled score (ties by id)."""
    from thresher.signals.nait import fit_directions, layer_projections, sum_layers

    score = out / "target" / "score"
    found = sorted((score / "passes").glob("cond.alpaca.hidden-*"))
    if not found:
        return None
    pool = _stored_pass(found[0])
    k = pool["n_prompt_tokens"] + pool["n_response_tokens"]
    layers = [c for c in pool if c.startswith("hidden.")]
    res = {}
    for arm, label in (("nait-gsm8k", "gsm8k_target"), ("nait-mmlu", "mmlu_target")):
        s = pq.read_table(out / "target" / "arms" / arm / "scores.parquet")
        by_id = dict(zip(s.column("id").to_pylist(), s.column("nait").to_pylist(), strict=True))
        default = np.array([by_id[i] for i in pool["id"]], dtype=np.float64)
        tgt = _stored_pass(score / "passes" / f"target.{label}")
        kt = tgt["n_prompt_tokens"] + tgt["n_response_tokens"]
        d = fit_directions({c: tgt[c] * (kt / (kt - 1))[:, None] for c in layers})
        rescaled = sum_layers(
            layer_projections({c: pool[c] * (k / (k - 1))[:, None] for c in layers}, d)
        )
        order = sorted(range(len(k)), key=lambda r: (-rescaled[r], pool["id"][r]))
        res[arm] = {
            "corr_length": float(np.corrcoef(default, (k - 1) / k)[0, 1]),
            "ids": {f: [pool["id"][r] for r in order[: int(f * len(k))]] for f in fractions},
        }
    return res


def _scores(out: Path, pool: str, arm: str) -> Any:
    return pq.read_table(out / pool / "arms" / arm / "scores.parquet")


def null(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def zscore(value: float, mean: float, sd: float) -> float | None:
    if sd > 0:
        return (value - mean) / sd
    return None


def verdict(value: float, mean: float, z: float | None, direction: int | None) -> str:
    if direction is None:
        return "diagnostic"
    if direction == 0:
        return "control"
    if z is None:  # the random subsets all agree
        if value == mean:
            return "no (= random)"
        return "yes (random sd 0)" if (value - mean) * direction > 0 else "WORSE (random sd 0)"
    if z * direction >= 2:
        return "yes"
    if z * direction <= -2:
        return "WORSE"
    return "no"


def jaccard(x: list[str], y: list[str]) -> float:
    a, b = set(x), set(y)
    return len(a & b) / len(a | b) if a | b else math.nan


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        prop: str,
        method: str,
        budget: str,
        value: float,
        rand: list[float],
        direction: int | None,
        pool_value: float | None = None,
    ) -> None:
        mean, sd = null(rand)
        z = zscore(value, mean, sd)
        self.rows.append(
            {
                "property": prop,
                "method": method,
                "budget": budget,
                "value": value,
                "pool": pool_value,
                "random_mean": mean,
                "random_sd": sd,
                "random_n": len(rand),
                "z": z,
                "verdict": verdict(value, mean, z, direction),
            }
        )

    def markdown(self) -> str:
        head = "| property | method | budget | value | pool | random mean ± sd (n) | z | has it? |"
        lines = [head, "|---|---|---|---:|---:|---|---:|---|"]
        for r in self.rows:
            pool = "-" if r["pool"] is None else f"{r['pool']:.3f}"
            z = "-" if r["z"] is None else f"{r['z']:+.2f}"
            lines.append(
                f"| {r['property']} | {r['method']} | {r['budget']} | {r['value']:.3f} | {pool} | "
                f"{r['random_mean']:.3f} ± {r['random_sd']:.3f} ({r['random_n']}) | {z} | {r['verdict']} |"
            )
        return "\n".join(lines)


def properties(a: argparse.Namespace, out: Path, data: dict[str, Any]) -> tuple[Table, list[str]]:
    """Every property whose arms finished; returns the table and the notes (what is missing, and
    the comparisons that are not against random)."""
    t, notes = Table(), []
    rand_names = [f"random-{k + 1}" for k in range(a.random_arms)]

    def got(pool: str, name: str) -> dict | None:
        rec = finished(out, pool, name, a)
        if rec is None:
            notes.append(f"not finished: {pool}/{name}")
        return rec

    def ids(rec: dict, f: float) -> list[str]:
        return rec["ids_by_fraction"][str(f)]

    def randoms(pool: str) -> list[dict] | None:
        recs = [got(pool, n) for n in rand_names]
        return None if any(r is None for r in recs) else recs

    budgets = [(f, f"{f:.0%}") for f in a.fractions]

    # -- target lift and coverage, on the target pool
    recs = [json.loads(x) for x in data["target"].read_text().splitlines()]
    domain = {r["id"]: r["meta"]["domain"] for r in recs}
    share_pool = {d: sum(v == d for v in domain.values()) / len(domain) for d in ("gsm8k", "mmlu")}
    rand = randoms("target")

    def share(sel: list[str], d: str) -> float:
        return sum(domain[i] == d for i in sel) / len(sel)

    if rand:
        for name, domains, direction in (
            ("nait-gsm8k", ("gsm8k",), 1),
            ("nait-mmlu", ("mmlu",), 1),
            ("miwv", ("gsm8k", "mmlu"), 0),
            ("ifd", ("gsm8k", "mmlu"), 0),
            ("longest", ("gsm8k", "mmlu"), 0),
        ):
            rec = got("target", name)
            if rec is None:
                continue
            label = {"nait-gsm8k": "nait (GSM8K target)", "nait-mmlu": "nait (MMLU target)"}
            for d in domains:
                for f, b in budgets:
                    t.add(
                        f"target lift: {d} share",
                        label.get(name, name),
                        b,
                        share(ids(rec, f), d),
                        [share(ids(r, f), d) for r in rand],
                        direction,
                        share_pool[d],
                    )
        x, y = got("target", "nait-gsm8k"), got("target", "nait-mmlu")
        if x is not None and y is not None:
            notes.append(
                "nait: Jaccard of the GSM8K-target and MMLU-target selections "
                + ", ".join(f"{b} {jaccard(ids(x, f), ids(y, f)):.2f}" for f, b in budgets)
                + " (two targets should select different rows)"
            )
            diag = nait_first_token(out, a.fractions)
            for name, d in (("nait-gsm8k", "gsm8k"), ("nait-mmlu", "mmlu")):
                if diag is None:
                    break
                target = "GSM8K" if d == "gsm8k" else "MMLU"
                notes.append(
                    f"nait ({target} target): correlation of the score with (K-1)/K, K the row's "
                    f"tokens: {diag[name]['corr_length']:+.3f}"
                )
                for f, b in budgets:
                    t.add(
                        f"target lift: {d} share",
                        f"nait ({target} target), diagnostic: drift x K/(K-1)",
                        b,
                        share(diag[name]["ids"][f], d),
                        [share(ids(r, f), d) for r in rand],
                        None,
                        share_pool[d],
                    )
        coverage_arms = {n: got("target", n) for n in ("mads", "kcenter", "ifd")}

        def add_coverage(label: str, metric: Any, direction: Any) -> None:
            """One coverage row per arm and budget: the arm's value against the random arms'."""
            for name, rec in coverage_arms.items():
                if rec is None:
                    continue
                for f, b in budgets:
                    values = [metric(ids(r, f)) for r in rand]
                    t.add(label, name, b, metric(ids(rec, f)), values, direction(name))

        kc = coverage_arms["kcenter"]
        if kc is not None:
            s = _scores(out, "target", "kcenter")
            row = {i: k for k, i in enumerate(s.column("id").to_pylist())}
            emb = np.stack([np.asarray(v, np.float32) for v in s.column("embedding").to_pylist()])
            labels = kmeans(emb, a.clusters, a.seed)

            def clusters(sel: list[str]) -> float:
                return len({labels[row[i]] for i in sel}) / a.clusters

            add_coverage(
                f"coverage: embedding clusters (k={a.clusters})",
                clusters,
                lambda name: 0 if name == "ifd" else 1,
            )

            def radius(sel: list[str]) -> float:
                """k-center's own objective (Sener & Savarese): the largest l2 distance from a
                pool row to its nearest selected row."""
                chosen = emb[[row[i] for i in sel]]
                d2 = (emb**2).sum(1)[:, None] - 2 * emb @ chosen.T + (chosen**2).sum(1)[None, :]
                return float(np.sqrt(max(float(np.maximum(d2, 0).min(1).max()), 0.0)))

            add_coverage(
                "coverage: embedding covering radius",
                radius,
                lambda name: -1 if name == "kcenter" else 0,
            )
        if coverage_arms["mads"] is not None:
            s = _scores(out, "target", "mads")
            row = {i: k for k, i in enumerate(s.column("id").to_pylist())}
            eligible = np.array([x == "ok" for x in s.column("status").to_pylist()])
            tags = [np.asarray(v or [], dtype=np.int64) for v in s.column("mads_tags").to_pylist()]
            n_tags = 1 + max((int(x.max()) for x in tags if len(x)), default=-1)
            df = mads_sig.document_frequency(
                [x for x, e in zip(tags, eligible, strict=True) if e], n_tags
            )
            kept = mads_sig.keep_tags(df, int(eligible.sum()), MADS_MIN_DF, MADS_MAX_DF_FRAC)
            tags = mads_sig.filter_tags(tags, kept)

            def tag_cov(sel: list[str]) -> float:
                return mads_sig.coverage_rate(tags, [row[i] for i in sel], kept)

            add_coverage(
                f"coverage: MADS activation tags ({int(kept.sum())})",
                tag_cov,
                lambda name: 0 if name == "ifd" else 1,
            )

    # -- defect avoidance, on the defects pool
    recs = [json.loads(x) for x in data["defects"].read_text().splitlines()]
    defect = {r["id"]: r["meta"]["defect"] for r in recs}
    readable = [s.id for s in read(str(data["defects"]), format="alpaca").samples]
    pool_rate = sum(defect[i] is not None for i in readable) / len(readable)
    rand = randoms("defects")

    def rate(sel: list[str]) -> float:
        return sum(defect[i] is not None for i in sel) / len(sel)

    method_arms = [x for x in arms(a, data) if x.pool == "defects" and x.method != "random"]
    if rand:
        for arm in method_arms:
            if arm.name == "tshirt-seed43":
                continue
            rec = got("defects", arm.name)
            if rec is None:
                continue
            for f, b in budgets:
                t.add(
                    "defects: planted-defect rate",
                    arm.name,
                    b,
                    rate(ids(rec, f)),
                    [rate(ids(r, f)) for r in rand],
                    -1,
                    pool_rate,
                )

    # -- robustness: the pool against its perturbed copy, and two noise seeds
    if rand:
        pairs = [(rand[k], rand[k + 1]) for k in range(0, len(rand) - 1, 2)]
        by_budget: dict[str, dict[str, float]] = {}
        for name in ("tshirt", "ifd", "superfiltering"):
            x, y = got("defects", name), got("perturbed", name)
            if x is None or y is None:
                continue
            for f, b in budgets:
                j = jaccard(ids(x, f), ids(y, f))
                by_budget.setdefault(b, {})[name] = j
                t.add(
                    "robustness: Jaccard, pool vs perturbed copy",
                    name,
                    b,
                    j,
                    [jaccard(ids(p, f), ids(q, f)) for p, q in pairs],
                    1,
                )
        for b, js in by_budget.items():
            if len(js) == 3:
                best = max(js["ifd"], js["superfiltering"])
                notes.append(
                    f"robustness at {b}: T-SHIRT {js['tshirt']:.3f} vs IFD {js['ifd']:.3f}, "
                    f"Superfiltering {js['superfiltering']:.3f}: T-SHIRT "
                    + ("is" if js["tshirt"] > best else "is NOT")
                    + " more stable under the perturbation than both"
                )
        x, y = got("defects", "tshirt"), got("defects", "tshirt-seed43")
        if x is not None and y is not None:
            for f, b in budgets:
                t.add(
                    "robustness: Jaccard, noise seed 42 vs 43",
                    "tshirt",
                    b,
                    jaccard(ids(x, f), ids(y, f)),
                    [jaccard(ids(p, f), ids(q, f)) for p, q in pairs],
                    1,
                )

    # -- InstructDiff: the trim and the subset's ΔH
    rec = got("defects", "instructdiff")
    if rec is not None and rand:
        s = _scores(out, "defects", "instructdiff")
        sid = s.column("id").to_pylist()
        status = s.column("status").to_pylist()
        dnll = np.asarray(s.column("delta_nll").to_numpy(zero_copy_only=False), dtype=np.float64)
        dh = np.asarray(s.column("delta_entropy").to_numpy(zero_copy_only=False), dtype=np.float64)
        finite = np.isfinite(dnll)
        trimmed = [k for k, x in enumerate(status) if x == "filtered:dnll_tail"]
        m = len(trimmed)
        if m:
            cand = np.flatnonzero(finite)
            top = set(sorted(cand.tolist(), key=lambda k: (-abs(dnll[k]), sid[k]))[:m])
            prec = len(top & set(trimmed)) / m
            draws = [
                np.random.default_rng(r["settings"]["seed"]).choice(cand, m, replace=False)
                for r in rand
            ]
            t.add(
                "instructdiff: trimmed rows among the top |ΔNLL|",
                "instructdiff",
                f"trim {m}",
                prec,
                [len(top & set(d.tolist())) / m for d in draws],
                1,
                m / len(cand),
            )
            read_ids = [x.id for x in read(str(data["defects"]), format="alpaca").samples]
            warm = {
                read_ids[k]
                for k in warmup_indices(len(read_ids), INSTRUCTDIFF_ALPHA, INSTRUCTDIFF_SEED)
            }
            in_warm = [sid[k] in warm for k in range(len(sid))]
            t.add(
                "instructdiff: warm-up rows among the trimmed",
                "instructdiff",
                f"trim {m}",
                sum(in_warm[k] for k in trimmed) / m,
                [sum(in_warm[k] for k in d) / m for d in draws],
                0,
                len(warm) / len(cand),
            )
            lo = sum(dnll[k] < np.median(dnll[finite]) for k in trimmed)
            notes.append(
                f"instructdiff: {m} rows trimmed ({lo} from the low ΔNLL end); ΔNLL over the pool: "
                f"median {np.median(dnll[finite]):+.4f}, warm-up rows' median "
                f"{np.median(dnll[[k for k in range(len(sid)) if in_warm[k] and finite[k]]]):+.4f}"
            )
        pos = {i: k for k, i in enumerate(sid)}

        def mean_dh(sel: list[str]) -> float:
            return float(np.nanmean(dh[[pos[i] for i in sel]]))

        for f, b in budgets:
            t.add(
                "instructdiff: mean ΔH of the subset",
                "instructdiff",
                b,
                mean_dh(ids(rec, f)),
                [mean_dh(ids(r, f)) for r in rand],
                -1,
                float(np.nanmean(dh)),
            )
    return t, notes


# ------------------------------------------------------------------ main


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    model = re.search(r"^model name\s*:(.*)$", text, re.M)
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return (
        (model.group(1).strip() if model else "?")
        + ": "
        + ", ".join(f"{w} {'yes' if w in flags else 'no'}" for w in wanted)
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="runs/properties", help="cache and results (default: runs/properties)"
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="every method's scoring model (default: smollm2-135m)",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(FRACTIONS),
        help="budgets (default: 0.05 0.1)",
    )
    p.add_argument(
        "--random-arms",
        type=int,
        default=10,
        help="random subsets per pool and budget (default: 10)",
    )
    p.add_argument(
        "--target-alpaca",
        type=int,
        default=200,
        help="alpaca rows of the target pool (default: 200)",
    )
    p.add_argument(
        "--gsm8k-rows", type=int, default=50, help="GSM8K rows of the target pool (default: 50)"
    )
    p.add_argument(
        "--mmlu-rows", type=int, default=50, help="MMLU-STEM rows of the target pool (default: 50)"
    )
    p.add_argument(
        "--target-rows", type=int, default=32, help="rows of each NAIT in-domain set (default: 32)"
    )
    p.add_argument(
        "--defect-clean",
        type=int,
        default=264,
        help="clean rows of the defects pool; defects at the demo's rates come on top (default: 264, which plants 65)",
    )
    p.add_argument(
        "--clusters",
        type=int,
        default=30,
        help="k of the embedding k-means (default: 30, a tenth of the target pool)",
    )
    p.add_argument(
        "--tshirt-copies",
        type=int,
        default=4,
        help="T-SHIRT perturbed copies (the paper's 30 is too slow here; default: 4)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument(
        "--seed", type=int, default=42, help="seed of the pools and the k-means (default: 42)"
    )
    p.add_argument(
        "--steps",
        nargs="+",
        choices=STEPS,
        default=list(STEPS),
        help="run only these steps' arms (default: all; separate steps may run as separate processes)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: the table from the cached steps"
    )
    p.add_argument("--progress", action="store_true", help="show progress bars")
    a = p.parse_args()
    if a.random_arms < 5:
        raise SystemExit(f"--random-arms {a.random_arms}: at least 5 give a spread to compare with")
    require_shared(("alpaca_en_demo.json", "gsm8k_test.jsonl", "mmlu_stem_test.jsonl"))
    out = Path(a.out)
    t_start = time.perf_counter()
    data = build_data(a, out)
    c = data["counts"]
    print(
        f"pools     target {c['target']} rows ({a.target_alpaca} alpaca, {a.gsm8k_rows} gsm8k, "
        f"{a.mmlu_rows} mmlu); defects {c['defects']} rows ({a.defect_clean} clean + "
        f"{c['defects'] - a.defect_clean} planted: {defect_counts(a.defect_clean)}); perturbed "
        f"copy: {data['edited']} rows edited; NAIT targets {c['gsm8k_target']} + {c['mmlu_target']}",
        flush=True,
    )
    failed: dict[str, str] = {}
    if not a.report_only:
        from thresher.models import load_model, set_threads

        set_threads(a.threads)
        lm = load_model(a.model)
        for arm in arms(a, data):
            if arm.step not in a.steps:
                continue
            key = f"{arm.pool}/{arm.name}"
            try:
                s = run_arm(arm, a, out, data, lm)
            except Exception as e:  # one failing method must not stop the others: reported below
                failed[key] = f"{type(e).__name__}: {e}"
                print(f"FAILED    {key}: {failed[key]}", file=sys.stderr, flush=True)
                continue
            print(
                f"select    {key:<26} "
                + ", ".join(f"{f}: {len(v)}" for f, v in s["ids_by_fraction"].items())
                + (" (reused)" if s["reused"] else f" in {s['seconds']:.0f} s"),
                flush=True,
            )
    table, notes = properties(a, out, data)
    notes = list(dict.fromkeys(notes))  # an arm several properties read is named once
    notes += [f"FAILED {k}: {v}" for k, v in failed.items()]
    seconds = {}
    for f in sorted(out.glob("*/arms/*/selection.json")):
        seconds[f"{f.parts[-4]}/{f.parts[-2]}"] = json.loads(f.read_text())["seconds"]
    wall = time.perf_counter() - t_start
    header = (
        f"model {a.model}, {a.threads} torch thread(s); pools: target {c['target']}, defects "
        f"{c['defects']} ({c['defects'] - a.defect_clean} planted), perturbed {c['perturbed']}; "
        f"random arms {a.random_arms}; T-SHIRT copies {a.tshirt_copies}; k-means k {a.clusters}\n"
        f"CPU {cpu_flags()}; {time.strftime('%Y-%m-%d %H:%M', time.localtime())}; this "
        f"invocation {wall:.0f} s; seconds per arm when it ran (summed {sum(seconds.values()):.0f} s)"
    )
    text = header + "\n\n" + table.markdown() + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print("\n" + text)
    (out / "properties.md").write_text(text + "\n")
    (out / "properties.json").write_text(
        json.dumps(
            {
                "args": vars(a),
                "counts": c,
                "rows": table.rows,
                "notes": notes,
                "seconds": seconds,
                "wall_s": wall,
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
