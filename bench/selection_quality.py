"""Benchmark: does a selected subset train a better model than random data at the same budget?

One command, on a real packaged model and real data:

    python bench/selection_quality.py                        # gemma3-270m, the default configuration
    python bench/selection_quality.py --base smollm2-135m    # the cheaper option
    python bench/selection_quality.py --out runs/quality     # rerun: every finished step is reused

1. Pool: a seeded sample of `--pool-rows` rows of alpaca_en_demo.json (real Alpaca-GPT4 pairs)
   plus the project's planted-defect pool (`thresher.demo_data`, `--planted` clean rows and their
   wrong, truncated, empty, mismatched and duplicated answers). Before sampling, alpaca_en_demo is
   split by content (`evaluate.split_heldout`): the held-out part never shares an id or a content
   hash with the pool.
2. Arms: every implemented method selects the same budget (`--fraction`, default 10%) from the
   pool; `--random-arms` random subsets (seeds 42, 43, ...); the full pool.
3. Training: each arm fine-tunes the base model with identical settings through `thresher.train`
   (LoRA by default; `--full` for full fine-tuning).
4. Evaluation: response NLL (nats per token) of each trained model, and of the untrained base, on
   held-out targets: GSM8K worked answers, AlpacaEval reference outputs and the held-out split of
   alpaca_en_demo.
5. One table: method, rows, train tokens, held-out NLL per target, the mean and spread of the
   random arms, and the planted defects each subset kept.

Scorers. The methods that argue for scoring with the model to be tuned (IFD, PPL, entropy, MIWV,
NAIT, MADS, InstructDiff) score with `--scorer` (default: the base model). Superfiltering and
T-SHIRT are weak-to-strong by design (their papers score with GPT-2 124M for 7B models), so they
score with `--small-scorer` (default smollm2-135m). NAIT's in-domain set is GSM8K rows taken from
the end of gsm8k_test.jsonl, never the rows the GSM8K target evaluates.

CPU settings (the papers' values are the methods' defaults; these keep one run within 90 minutes
on 2 cores): T-SHIRT scores `--tshirt-copies` perturbed copies instead of 30; InstructDiff's
warm-up uses its preset with batch 8 (the preset's 64 is larger than a warm-up set of tens of
rows, which would give one step per epoch).

The arms run one by one (random arms first, then the methods, then the full pool unless
`--no-full-arm`), each selected, trained and evaluated before the next, so a run cut short has
complete arms. Every step writes its result into `--out` and is reused on a rerun: scoring passes (the run
folders' shard cache), selections (`arms/ARM/selection.json`), trained models
(`arms/ARM/model/thresher-train.json`, with checkpoints while training) and evaluations
(`arms/ARM/eval.json`), so an interrupted run resumes; an arm whose selection changes is trained and
evaluated again, and other training settings are refused (use another `--out`). The table is printed and written to
`--out/results.md` and `--out/results.json`, with the seconds each stage took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import SHARED, alpaca_split, fingerprint, machine, require_shared, select_cached
from thresher.atomic import write_jsonl
from thresher.config import RunConfig
from thresher.data import Sample, read
from thresher.demo_data import defect_audit, generate_pool
from thresher.evaluation import TaskSpec, check_disjoint, read_pairs, run_task
from thresher.models import load_model, set_threads
from thresher.train import MARKER, preset, train

# nait first: its cond pass (log-probs, entropy and hidden states) then serves ifd, ppl, entropy,
# miwv and instructdiff's base pass, which need a subset of its fields
METHODS = (
    "nait",
    "mads",
    "ifd",
    "ppl",
    "entropy",
    "miwv",
    "instructdiff",
    "longest",
    "superfiltering",
    "tshirt",
)
SMALL_SCORER_METHODS = ("superfiltering", "tshirt")
NAIT_TARGET_ROWS = 20  # as the NAIT integration test: 20 GSM8K rows as the in-domain set


@dataclass
class Arm:
    name: str
    method: str | None  # None for the full pool
    seed: int = 42


def arms(methods: list[str], n_random: int, full: bool = True) -> list[Arm]:
    """Random arms first (they need no scoring, so a run cut short still has its controls), then
    the methods, then the full pool."""
    out = [Arm(f"random-{k + 1}", "random", 42 + k) for k in range(n_random)]
    out += [Arm(m, m) for m in methods]
    return [*out, Arm("full", None)] if full else out


# ------------------------------------------------------------------ data


def build_data(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """pool.jsonl, heldout.jsonl and the NAIT target file under out/data; returns their paths and counts."""
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    rest, heldout = alpaca_split()
    if a.pool_rows > len(rest):
        raise ValueError(
            f"--pool-rows {a.pool_rows}: only {len(rest)} alpaca_en_demo rows are outside the held-out split"
        )
    picked = sorted(random.Random(a.seed).sample(range(len(rest)), a.pool_rows))
    pool_alpaca = [rest[i] for i in picked]
    heldout = heldout[: a.target_rows]
    planted = generate_pool(n_clean=a.planted, seed=a.seed)
    records = [s.meta["record"] for s in pool_alpaca] + planted
    write_jsonl(records, d / "pool.jsonl")
    write_jsonl([s.meta["record"] for s in heldout], d / "heldout.jsonl")
    gsm = (SHARED / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()
    if a.target_rows + NAIT_TARGET_ROWS > len(gsm):
        raise ValueError(
            f"--target-rows {a.target_rows}: gsm8k_test.jsonl has {len(gsm)} rows, {NAIT_TARGET_ROWS} of them kept for NAIT"
        )
    (d / "nait_target.jsonl").write_text(
        "\n".join(gsm[-NAIT_TARGET_ROWS:]) + "\n", encoding="utf-8"
    )
    # no evaluated row is trained on or used as NAIT's in-domain set (checked by id and content)
    pool = read(str(d / "pool.jsonl"), format="alpaca").samples
    evaluated = {
        name: read_pairs(spec.target, None, a.target_rows).samples
        for name, spec in targets(d).items()
    }
    for name, rows in evaluated.items():
        check_disjoint(pool, rows)
        if name == "gsm8k":
            check_disjoint(read_pairs(str(d / "nait_target.jsonl"), None, None).samples, rows)
    defects = sum(1 for r in planted if r["meta"]["defect"])
    return {
        "pool": d / "pool.jsonl",
        "heldout": d / "heldout.jsonl",
        "nait_target": d / "nait_target.jsonl",
        "pool_rows": len(records),
        "alpaca_rows": len(pool_alpaca),
        "planted_rows": len(planted),
        "planted_defects": defects,
    }


# ------------------------------------------------------------------ selection


def method_params(method: str, a: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    if method == "tshirt":
        return {"copies": a.tshirt_copies}
    if method == "nait":
        return {"target": [str(data["nait_target"])]}
    if method == "instructdiff":
        return {"train": {"batch_size": 8, "threads": a.threads}}
    return {}


def select_arm(arm: Arm, a: argparse.Namespace, out: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The arm's selected ids (reused from arms/ARM/selection.json when its settings match)."""
    folder = out / "arms" / arm.name
    marker = folder / "selection.json"
    scorer = a.small_scorer if arm.method in SMALL_SCORER_METHODS else a.scorer
    params = method_params(arm.method, a, data) if arm.method else {}
    settings = {
        "method": arm.method,
        "params": params,
        "seed": arm.seed,
        "scorer": scorer,
        "fraction": a.fraction,
        "pool": fingerprint(data["pool"].read_bytes().decode()),
    }
    if arm.method is None:  # the full pool: every row that reads
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old is not None and old["settings"] == settings:
            return {**old, "reused": True, "changed": False}
        record = {
            "settings": settings,
            "ids": [s.id for s in read(str(data["pool"]), format="alpaca").samples],
            "scorer": None,
            "seconds": 0.0,
        }
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(record, indent=1))
        return {**record, "reused": False, "changed": old is not None}
    cfg = RunConfig()
    cfg.data.path, cfg.data.format = str(data["pool"]), "alpaca"
    cfg.model.name, cfg.model.threads = scorer, a.threads
    cfg.method.name, cfg.method.params = arm.method, params
    cfg.select.seed = arm.seed
    # one scoring folder per scorer: methods of the same model share its passes (the cond pass of
    # ifd serves ppl, entropy, miwv, nait, mads and instructdiff's base)
    cfg.output.dir = str(out / "score" / scorer)
    cfg.output.report = False
    cfg.score.progress = a.progress
    extra = {"scorer": None if arm.method == "random" else scorer}
    return select_cached(folder, settings, cfg, [a.fraction], extra=extra)


# ------------------------------------------------------------------ training and evaluation


def train_arm(
    arm: Arm,
    ids: list[str],
    pool: dict[str, Sample],
    base: Any,
    a: argparse.Namespace,
    out: Path,
    reselected: bool,
) -> dict[str, Any]:
    """Fine-tune the base on the arm's rows; a finished model is reused unless the arm was selected again."""
    cfg = preset(
        a.preset,
        lora=not a.full,
        epochs=a.epochs,
        learning_rate=a.lr,
        batch_size=a.batch_size,
        max_length=a.max_length,
        template=a.template,
        threads=a.threads,
        dtype=a.dtype,
    )
    res = train(
        [pool[i] for i in ids],
        base,
        out / "arms" / arm.name / "model",
        cfg,
        progress=a.progress,
        overwrite=reselected,
    )
    return {
        "rows": res.rows,
        "tokens": res.tokens,
        "loss_tokens": res.loss_tokens,
        "steps": res.steps,
        "seconds": 0.0 if res.reused else res.seconds,
        "reused": res.reused,
        "rejected": res.rejected,
    }


def targets(data_dir: Path) -> dict[str, TaskSpec]:
    return {
        "gsm8k": TaskSpec("nll", str(SHARED / "gsm8k_test.jsonl")),
        "alpaca_eval": TaskSpec("nll", str(SHARED / "alpaca_eval.json")),
        "heldout": TaskSpec("nll", str(data_dir / "heldout.jsonl")),
    }


def eval_model(
    name: str, model: Path | Any, a: argparse.Namespace, data: dict[str, Any], dest: Path
) -> dict[str, Any]:
    """Held-out NLL per target (reused from `dest` when the model, the targets and the settings are
    unchanged; a trained model is known by its training record, so a retrained one is evaluated again)."""
    specs = targets(data["heldout"].parent)
    trained = (
        hashlib.sha256((model / MARKER).read_bytes()).hexdigest()
        if isinstance(model, Path)
        else model.info.weights_sha256
    )
    key = {
        "targets": {k: [s.kind, s.target] for k, s in specs.items()},
        "limit": a.target_rows,
        "template": a.template,
        "max_length": a.max_length,
        "model": trained,
    }
    if dest.is_file():
        old = json.loads(dest.read_text())
        if old.get("key") == key:
            return {**old, "reused": True}
    lm = load_model(str(model)) if isinstance(model, (str, Path)) else model
    t0 = time.perf_counter()
    results = {}
    for k, spec in specs.items():
        r = run_task(lm, spec, template=a.template, limit=a.target_rows, max_length=a.max_length)
        results[k] = {
            "nll_token": r.metrics["nll_token"],
            "evaluated": r.evaluated,
            "skipped": r.skipped,
            "tokens": r.metrics["tokens"],
        }
    record = {"key": key, "arm": name, "results": results, "seconds": time.perf_counter() - t0}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False}


# ------------------------------------------------------------------ the table


def _fmt(v: float | None, nd: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def table(
    rows: list[dict[str, Any]], base_eval: dict[str, Any], names: list[str], planted_defects: int
) -> str:
    head = [
        "arm",
        "scorer",
        "rows",
        "train tokens (response)",
        *[f"NLL {t}" for t in names],
        "NLL mean",
        "defects kept",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean_nll(r: dict[str, Any]) -> float:
        return statistics.fmean(r["eval"]["results"][t]["nll_token"] for t in names)

    base = base_eval["results"]
    lines.append(
        "| base (untrained) | - | 0 | 0 | "
        + " | ".join(_fmt(base[t]["nll_token"]) for t in names)
        + f" | {_fmt(statistics.fmean(base[t]['nll_token'] for t in names))} | - |"
    )
    for r in rows:
        ev = r["eval"]["results"]
        cells = [
            r["arm"],
            r["scorer"] or "-",
            str(r["train"]["rows"]),
            str(r["train"]["loss_tokens"]),
            *(_fmt(ev[t]["nll_token"]) for t in names),
            _fmt(mean_nll(r)),
            f"{r['defects']}/{planted_defects}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rand = [r for r in rows if r["arm"].startswith("random-")]
    if rand:
        cells = []
        for t in [*names, None]:
            vals = [
                mean_nll(r) if t is None else r["eval"]["results"][t]["nll_token"] for r in rand
            ]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            cells.append(
                f"{_fmt(statistics.fmean(vals))} ± {_fmt(sd)} [{_fmt(min(vals))}, {_fmt(max(vals))}]"
            )
        kept = [r["defects"] for r in rand]
        lines.append(
            f"| random, mean ± sd [min, max] of {len(rand)} | - | {rand[0]['train']['rows']} | - | "
            + " | ".join(cells)
            + f" | {statistics.fmean(kept):.1f}/{planted_defects} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", default="runs/quality", help="where every step is cached (default: runs/quality)"
    )
    p.add_argument(
        "--base",
        default="gemma3-270m",
        help="the model every arm fine-tunes (default: gemma3-270m; smollm2-135m is cheaper)",
    )
    p.add_argument(
        "--scorer", help="the scoring model of the target-model methods (default: --base)"
    )
    p.add_argument(
        "--small-scorer",
        default="smollm2-135m",
        help="the scoring model of superfiltering and tshirt (default: smollm2-135m)",
    )
    p.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        choices=METHODS,
        help="methods to compare (default: all; none: the random arms and the full pool only)",
    )
    p.add_argument(
        "--no-full-arm",
        action="store_true",
        help="leave out the full-pool arm (it trains on ten times an arm's rows)",
    )
    p.add_argument(
        "--pool-rows", type=int, default=96, help="alpaca_en_demo rows in the pool (default: 96)"
    )
    p.add_argument(
        "--planted",
        type=int,
        default=24,
        help="clean rows of the planted-defect pool; defects come on top (default: 24)",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=0.1,
        help="the budget of every method and random arm (default: 0.1)",
    )
    p.add_argument(
        "--random-arms", type=int, default=3, help="random subsets at the same budget (default: 3)"
    )
    p.add_argument(
        "--target-rows", type=int, default=16, help="items per held-out target (default: 16)"
    )
    p.add_argument(
        "--preset",
        default="cpu",
        help="training recipe (default: cpu, lr 1e-4; --batch-size and --epochs set the rest)",
    )
    p.add_argument(
        "--epochs", type=float, default=2.0, help="epochs over each arm's rows (default: 2)"
    )
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per optimizer step (default: 4)")
    p.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="tokens per example, in training and evaluation (default: 512)",
    )
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="training precision: bfloat16 trains with bf16 autocast (the weights stay float32); "
        "worth it only where the CPU computes bf16 natively (avx512_bf16, amx_bf16) "
        "(default: float32, as TrainConfig)",
    )
    p.add_argument(
        "--template", default="alpaca", help="template of training and evaluation (default: alpaca)"
    )
    p.add_argument(
        "--tshirt-copies",
        type=int,
        default=3,
        help="T-SHIRT perturbed copies (the paper's 30 costs 60 passes; default: 3)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the pool sample and the planted pool (default: 42)",
    )
    p.add_argument("--progress", action="store_true", help="show progress bars")
    a = p.parse_args()
    a.scorer = a.scorer or a.base
    require_shared(("alpaca_en_demo.json", "gsm8k_test.jsonl", "alpaca_eval.json"))
    set_threads(a.threads)
    out = Path(a.out)
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    data = build_data(a, out)
    print(
        f"pool      {data['pool_rows']} rows: {data['alpaca_rows']} alpaca_en_demo + {data['planted_rows']} planted ({data['planted_defects']} defective)"
    )
    pool_read = read(str(data["pool"]), format="alpaca")
    pool = {s.id: s for s in pool_read.samples}
    planted_defects = sum(
        1 for s in pool_read.samples if (s.meta["record"].get("meta") or {}).get("defect")
    )
    print(
        f"readable  {len(pool)} rows ({len(pool_read.rejected)} rejected reading: {sorted({r.reason for r in pool_read.rejected})}); {planted_defects} readable planted defects"
    )

    # arm by arm (select, train, evaluate), so every finished arm is complete and a run cut short
    # resumes at the first unfinished step
    stages.update(select=0.0, train=0.0, eval=0.0)
    base = load_model(a.base)
    t0 = time.perf_counter()
    base_eval = eval_model("base", base, a, data, out / "base_eval.json")
    stages["eval"] += time.perf_counter() - t0
    rows = []
    for arm in arms(a.methods, a.random_arms, full=not a.no_full_arm):
        t0 = time.perf_counter()
        sel = select_arm(arm, a, out, data)
        stages["select"] += time.perf_counter() - t0
        print(
            f"select    {arm.name:<14} {len(sel['ids'])} rows"
            + (" (reused)" if sel["reused"] else f" in {sel['seconds']:.0f} s")
            + (f" - {sel['note']}" if sel.get("note") else ""),
            flush=True,
        )
        t0 = time.perf_counter()
        tr = train_arm(arm, sel["ids"], pool, base, a, out, reselected=sel["changed"])
        stages["train"] += time.perf_counter() - t0
        print(
            f"train     {arm.name:<14} {tr['rows']} rows, {tr['loss_tokens']} loss tokens, {tr['steps']} steps"
            + (" (reused)" if tr["reused"] else f" in {tr['seconds']:.0f} s"),
            flush=True,
        )
        audit = defect_audit(
            [pool[i].meta["record"] for i in sel["ids"]],
            [s.meta["record"] for s in pool_read.samples],
        )
        t0 = time.perf_counter()
        ev = eval_model(
            arm.name,
            out / "arms" / arm.name / "model",
            a,
            data,
            out / "arms" / arm.name / "eval.json",
        )
        stages["eval"] += time.perf_counter() - t0
        print(
            f"eval      {arm.name:<14} "
            + ", ".join(f"{t} {v['nll_token']:.4f}" for t, v in ev["results"].items())
            + (" (reused)" if ev["reused"] else ""),
            flush=True,
        )
        rows.append(
            {
                "arm": arm.name,
                "scorer": sel["scorer"],
                "train": tr,
                "eval": ev,
                "defects": audit["selected"]["defective"],
            }
        )
    stages["total"] = time.perf_counter() - t_start

    names = list(targets(data["heldout"].parent))
    items = {t: base_eval["results"][t]["evaluated"] for t in names}
    text = table(rows, base_eval, names, planted_defects)
    recipe = f"{'full fine-tuning' if a.full else 'LoRA'}, preset {a.preset}, {a.epochs:g} epochs, batch {a.batch_size}, max length {a.max_length}, {a.template} template, {a.dtype} training"
    header = (
        f"base {a.base}; scorer {a.scorer} (superfiltering, tshirt: {a.small_scorer}); budget {a.fraction:g} of {len(pool)} readable pool rows; {recipe}\n"
        f"held-out NLL in nats per response token (lower is better); items per target: {items}\n"
        f"seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
        + " (reused steps count as 0)"
        + f"\n{machine()}; {a.threads} torch thread(s)"
    )
    print("\n" + header + "\n\n" + text)
    (out / "results.md").write_text(header + "\n\n" + text + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(a),
                "data": {k: str(v) for k, v in data.items()},
                "stages_s": stages,
                "base": base_eval,
                "arms": rows,
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
