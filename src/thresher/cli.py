"""`thresher ls | validate | score | select | run | train | eval | report | demo`."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from thresher.config import RunConfig, override
from thresher.rundir import ReportNotWritten

EXAMPLES = {
    "main": """examples:
  thresher ls methods
  thresher run --data alpaca.json --method ifd --fraction 0.1 --out runs/ifd
  thresher run configs/ifd.yaml data.path=alpaca.json select.fraction=0.05
  thresher select runs/ifd --count 500
  thresher demo""",
    "ls": """examples:
  thresher ls                 # everything
  thresher ls methods         # each method with its paper, passes and defaults
  thresher ls models""",
    "validate": """examples:
  thresher validate configs/ifd.yaml data.path=alpaca.json
  thresher validate --data alpaca.json --method ifd --out runs/ifd   # which passes runs/ifd holds
  thresher validate --data alpaca.json --method ifd --probe 32   # time 32 rows on the real model
  thresher validate --data alpaca.json --method superfilterng   # suggests 'superfiltering'""",
    "score": """examples:
  thresher score --data alpaca.json --method ifd --out runs/ifd
  thresher score configs/superfiltering.yaml data.path=alpaca.json model.name=gpt2
  thresher score --data chats.jsonl --format sharegpt --method ppl --template chat --out runs/ppl""",
    "select": """examples:
  thresher select runs/ifd --fraction 0.05
  thresher select runs/ifd --count 520 --seed 1""",
    "run": """examples:
  thresher run --data alpaca.json --method ifd --fraction 0.1 --out runs/ifd
  thresher run --data alpaca.json --method superfiltering --reproduce --fraction 0.1
  thresher run configs/ppl.yaml data.path=alpaca.json method.params.variant=mid select.count=500
  thresher run --data alpaca.json --method entropy --out runs/ifd   # reuses the cond pass of runs/ifd
  thresher run --data alpaca.json --method ifd --fraction 0.1 --engine ray score.ray_concurrency=4   # needs thresher[ray]
  thresher run --data alpaca.json --method nait --target gsm8k_train.jsonl --fraction 0.1 --out runs/nait
  thresher run --data alpaca.json --method nait --target gsm8k.jsonl --then mads --fraction 0.15""",
    "eval": """examples:
  thresher eval smollm2-135m --tasks nll:gsm8k_test.jsonl mc:mmlu_stem_test.jsonl --limit 200
  thresher eval runs/ifd --tasks nll:alpaca_eval.json        # the model trained into runs/ifd, else its scorer
  thresher eval ./my-model --tasks gsm8k:gsm8k_test.jsonl --limit 50 --template chat   # greedy, slow
  thresher eval smollm2-135m --tasks lm_eval:my_task --lm-eval-include my_tasks/   # offline, your task YAMLs
  thresher eval smollm2-135m runs/ifd runs/random --tasks lm_eval:arc_easy --limit 200   # one table per task: differences from the first model""",
    "report": """examples:
  thresher report runs/ifd                       # writes runs/ifd/report.html
  thresher report runs/ifd runs/ppl runs/random --out compare.html""",
    "train": """examples:
  thresher train --data runs/ifd --model smollm2-135m --lora --max-steps 50   # runs/ifd/selected.jsonl -> runs/ifd/model
  thresher train --data runs/ifd/selected.jsonl --model smollm2-135m --preset alpaca --out models/ifd
  thresher train --data alpaca.json --limit 200 --preset cpu --lora --out models/cpu   # rerun to resume
  thresher train --config configs/train/cpu-lora.yaml --data runs/ifd --model smollm2-135m
  thresher score --data held_out.json --method ppl --model models/ifd --out runs/check""",
    "demo": """examples:
  thresher demo                         # the built-in pool, smollm2-135m, IFD, 10%
  thresher demo --out runs/demo --fraction 0.05""",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="thresher",
        description="Select instruction-tuning data with the model's own signals.",
        epilog=EXAMPLES["main"],
        formatter_class=fmt,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser(
        "ls",
        help="list methods, templates, models and formats",
        epilog=EXAMPLES["ls"],
        formatter_class=fmt,
    )
    ls.add_argument(
        "what",
        nargs="?",
        choices=["methods", "templates", "models", "formats"],
        help="one list only",
    )

    for name, help_ in (
        (
            "validate",
            "dry run: read the data, tokenize, show cached passes and the cost (no model)",
        ),
        ("score", "score a dataset (no selection)"),
        ("run", "score, select and export"),
    ):
        sp = sub.add_parser(name, help=help_, epilog=EXAMPLES[name], formatter_class=fmt)
        _add_run_flags(sp, with_budget=name != "score")
        if name == "validate":
            sp.add_argument(
                "--probe",
                type=int,
                default=0,
                metavar="N",
                help="load the model and time N rows of each pass for the estimate (e.g. 32); "
                "default: from a timed matmul of the model's shape",
            )

    sel = sub.add_parser(
        "select",
        help="select again from a scored run folder (no model)",
        epilog=EXAMPLES["select"],
        formatter_class=fmt,
    )
    sel.add_argument("run_dir", help="the --out folder of a finished run or score")
    _add_budget_flags(sel)
    sel.add_argument("overrides", nargs="*", help="dotted key=value overrides")

    ev = sub.add_parser(
        "eval",
        help="held-out NLL, multiple choice, GSM8K exact match, lm-eval tasks",
        epilog=EXAMPLES["eval"],
        formatter_class=fmt,
    )
    _add_eval_flags(ev)
    rep = sub.add_parser(
        "report",
        help="write a self-contained report.html for one or more runs",
        epilog=EXAMPLES["report"],
        formatter_class=fmt,
    )
    rep.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="--out folders of finished runs"
    )
    rep.add_argument(
        "--out",
        help="the HTML file (default: RUN_DIR/report.html for one run, report.html for several)",
    )

    tr = sub.add_parser(
        "train",
        help="fine-tune a model on a subset (TRL SFTTrainer; full or LoRA)",
        epilog=EXAMPLES["train"],
        formatter_class=fmt,
    )
    _add_train_flags(tr)

    demo = sub.add_parser(
        "demo",
        help="score the built-in planted-defect pool once, select 10%% by IFD and compare the methods sharing its passes",
        epilog=EXAMPLES["demo"],
        formatter_class=fmt,
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--model", default="smollm2-135m", help="model (default: smollm2-135m)")
    demo.add_argument("--method", default="ifd", help="method (default: ifd)")
    demo.add_argument(
        "--fraction", type=float, default=0.1, help="budget as a fraction (default: 0.1)"
    )
    demo.add_argument("--threads", type=int, default=None, help="torch threads")
    demo.add_argument("--overwrite", action="store_true", help="start the passes afresh")
    return p


def _add_eval_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "targets",
        nargs="+",
        metavar="MODEL_OR_RUN",
        help="alias, model folder, .gguf file, hub id, or run folder; with several, each task's "
        "table gives the differences from the first",
    )
    sp.add_argument(
        "--tasks",
        nargs="+",
        required=True,
        metavar="KIND:TARGET",
        help="nll:FILE, mc:FILE, gsm8k:FILE, lm_eval:TASK[,TASK]",
    )
    sp.add_argument("--limit", type=int, help="first N items of each task")
    sp.add_argument(
        "--template", default="alpaca", help="prompt template for nll and gsm8k (default: alpaca)"
    )
    sp.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="NAME=COL",
        help="map a field to your column, e.g. output=answer",
    )
    sp.add_argument(
        "--mc-style",
        choices=["cloze", "letters"],
        default="cloze",
        help="continuations: choice text (default) or letters",
    )
    sp.add_argument(
        "--max-length", type=int, default=1024, help="token budget per item (default: 1024)"
    )
    sp.add_argument(
        "--max-new-tokens", type=int, default=256, help="gsm8k generation budget (default: 256)"
    )
    sp.add_argument(
        "--batch-tokens", type=int, default=2048, help="rows x padded length per forward batch"
    )
    sp.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    sp.add_argument(
        "--dtype", help="model dtype (default: a run folder's, else float32), for every task"
    )
    sp.add_argument("--device", help="model device (default: a run folder's, else cpu)")
    sp.add_argument(
        "--out", help="results JSON (also written to RUN/eval.json for every run folder)"
    )
    sp.add_argument(
        "--lm-eval-include",
        metavar="DIR",
        help="lm_eval tasks: a folder of your own task YAMLs (lm-eval's --include_path)",
    )
    sp.add_argument(
        "--lm-eval-metric",
        action="append",
        metavar="NAME",
        help="lm_eval tasks: keep only these metrics, the first one present as the headline "
        "(default: every metric in the task's higher_is_better, headline its first metric_list one)",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_train_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--data",
        required=True,
        help="a run folder (its selected.jsonl), or any supported data file",
    )
    sp.add_argument(
        "--model", default="smollm2-135m", help="the model to fine-tune (default: smollm2-135m)"
    )
    sp.add_argument("--out", help="output folder (default: RUN/model for a run folder)")
    sp.add_argument(
        "--preset", help="recipe: alpaca, instructdiff-general, tshirt, cpu, ... (default: alpaca)"
    )
    sp.add_argument(
        "--config",
        help="a YAML of `preset` and training options (see configs/train/cpu-lora.yaml); flags override it",
    )
    sp.add_argument(
        "--lora", action="store_true", help="train LoRA adapters (merged into the saved model)"
    )
    sp.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    sp.add_argument("--epochs", type=float, help="override the preset's epochs")
    sp.add_argument("--lr", type=float, help="override the preset's learning rate")
    sp.add_argument(
        "--batch-size", type=int, help="override the preset's effective batch (rows per step)"
    )
    sp.add_argument(
        "--micro-batch",
        type=int,
        help="rows per forward; the rest is gradient accumulation (default: 1)",
    )
    sp.add_argument(
        "--template", help="alpaca | plain | chat | a format string (default: alpaca, as scoring)"
    )
    sp.add_argument("--max-length", type=int, help="token budget per example")
    sp.add_argument(
        "--no-eos",
        action="store_true",
        help="do not append EOS to the response (as the IFD passes score)",
    )
    sp.add_argument("--format", help="data format (default: detect)")
    sp.add_argument("--limit", type=int, help="read only the first N rows")
    sp.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    sp.add_argument("--overwrite", action="store_true", help="train afresh into --out")
    sp.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_budget_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--fraction", type=float, help="budget as a fraction of the samples read, e.g. 0.1"
    )
    sp.add_argument("--count", type=int, help="budget as a number of rows, e.g. 500")
    sp.add_argument("--seed", type=int, help="seed for random steps (default 42)")


def _add_run_flags(sp: argparse.ArgumentParser, with_budget: bool) -> None:
    sp.add_argument("config", nargs="?", help="a YAML config (see configs/); optional")
    sp.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. select.fraction=0.05"
    )
    sp.add_argument(
        "--data", help="dataset: .json/.jsonl/.parquet, a save_to_disk folder, or a hub id"
    )
    sp.add_argument(
        "--format", help="alpaca | sharegpt | messages | prompt_completion (default: detect)"
    )
    sp.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="NAME=COL",
        help="map a field to your column, e.g. output=answer",
    )
    sp.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="FROM=ROLE",
        help="ShareGPT role map, e.g. bot=assistant",
    )
    sp.add_argument(
        "--id-column",
        help="column holding a unique id (default: `id` if present, else a content hash)",
    )
    sp.add_argument("--limit", type=int, help="read only the first N rows")
    sp.add_argument(
        "--model", help="alias (smollm2-135m, gemma3-270m), local folder, .gguf file or hub id"
    )
    sp.add_argument(
        "--dtype",
        help="auto (default) | float32 | bfloat16 | bfloat16-mixed | float16; auto is float32 "
        "unless the hardware has native bf16 and bf16 was measured to keep the selection",
    )
    sp.add_argument("--device", help="auto (default: cuda if available, else cpu) | cpu | cuda[:N]")
    sp.add_argument("--method", help="see `thresher ls methods`")
    sp.add_argument(
        "--reproduce",
        action="store_true",
        help="follow the reference code's boundary and budget rules",
    )
    sp.add_argument(
        "--target",
        nargs="+",
        metavar="FILE",
        help="nait: in-domain reference sets (any data format, or question/answer JSONL)",
    )
    sp.add_argument(
        "--then",
        metavar="METHOD",
        help="a second method choosing the budget from the first's top 3 x budget, e.g. --method nait --then mads",
    )
    sp.add_argument("--template", help="alpaca | plain | chat | a format string with {instruction}")
    sp.add_argument("--max-length", type=int, help="token budget per view")
    sp.add_argument("--out", help="output folder (default: runs/thresher)")
    sp.add_argument("--overwrite", action="store_true", help="recompute passes cached in --out")
    sp.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    sp.add_argument("--batch-tokens", type=int, help="rows x padded length per forward batch")
    sp.add_argument(
        "--engine",
        choices=["local", "ray"],
        help="where passes run (default: local; ray needs thresher[ray])",
    )
    sp.add_argument(
        "--capture",
        metavar="METHOD",
        help="nait | mads: also pool that method's activations in this run's cond pass, so running it later in --out needs no new pass",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sp.add_argument("--no-report", action="store_true", help="do not write report.html")
    if with_budget:
        _add_budget_flags(sp)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"{what} {it!r} is not of the form NAME=VALUE")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def config_from_args(a: argparse.Namespace) -> RunConfig:
    if a.config and "=" in a.config and not Path(a.config).exists():  # a first override, not a file
        a.config, a.overrides = None, [a.config, *a.overrides]
    cfg = RunConfig.from_yaml(a.config) if a.config else RunConfig()
    flags: dict[str, Any] = {
        "data.path": a.data,
        "data.format": a.format,
        "data.id_column": a.id_column,
        "data.limit": a.limit,
        "model.name": a.model,
        "model.threads": a.threads,
        "model.dtype": a.dtype,
        "model.device": a.device,
        "method.name": a.method,
        "output.dir": a.out,
        "score.batch_tokens": a.batch_tokens,
        "score.engine": a.engine,
        "score.capture": a.capture,
        "select.fraction": getattr(a, "fraction", None),
        "select.count": getattr(a, "count", None),
        "select.seed": getattr(a, "seed", None),
    }
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    if a.column:
        cfg.data.columns.update(_pairs(a.column, "--column"))
    if a.role:
        cfg.data.roles.update(_pairs(a.role, "--role"))
    if a.template:
        cfg.method.params["template"] = a.template
    if a.max_length:
        cfg.method.params["max_length"] = a.max_length
    if a.target:  # `--target a.jsonl b.jsonl select.count=5`: the dotted overrides after the files are overrides
        files = [t for t in a.target if "=" not in t or Path(t).exists()]
        if not files:
            raise ValueError(
                f"--target {' '.join(a.target)}: expected at least one in-domain file before any key=value override"
            )
        a.overrides = [*a.overrides, *(t for t in a.target if t not in files)]
        cfg.method.params["target"] = files
    if a.then:
        cfg.method.then = a.then
    cfg.method.reproduce |= a.reproduce
    cfg.score.overwrite |= a.overwrite
    cfg.score.progress &= not a.no_progress
    cfg.output.report &= not a.no_report
    for o in a.overrides:
        override(cfg, o)
    return cfg


def cmd_train(a: argparse.Namespace) -> str:
    """`thresher train`: read the data (a run folder means its selected.jsonl), train, summarise."""
    from thresher.data import read
    from thresher.rundir import RunFolder
    from thresher.train import preset, train

    data = Path(a.data)
    run = RunFolder(data) if RunFolder(data).is_run() else None
    if run is not None:
        data = run.selected
        if not data.is_file():
            raise FileNotFoundError(
                f"{run.path} has no {data.name}: run `thresher select {run.path} --fraction 0.1` first"
            )
    out = a.out or (str(run.path / "model") if run is not None else None)
    if out is None:
        raise ValueError(
            "give --out: the folder the fine-tuned model is written to (it can then be passed to --model)"
        )
    got = read(str(data), format=a.format, limit=a.limit)
    base = _train_yaml(a.config) if a.config else {}
    name = a.preset or base.pop("preset", "alpaca")
    base.pop("preset", None)
    cfg = preset(name, **{**base, **_train_flags(a)})
    res = train(got.samples, a.model, out, cfg, progress=not a.no_progress, overwrite=a.overwrite)
    lines = [
        f"data      {data}: {got.rows_read} rows read, {len(got.rejected)} rejected reading, {res.rows} trained"
        + (f", not renderable: {res.rejected}" if res.rejected else ""),
        f"recipe    preset {name}{' + LoRA' if cfg.lora else ''}: lr {cfg.learning_rate}, batch {cfg.batch_size}, epochs {cfg.epochs}, "
        f"max steps {cfg.max_steps}, {cfg.template} template, EOS {'appended' if cfg.append_eos else 'not appended'}",
        f"tokens    {res.tokens} per epoch, {res.loss_tokens} carry the loss (the response tokens)",
        f"model     {out}: {'already finished, reused' if res.reused else f'{res.steps} steps in {res.seconds:.1f} s'}; use it with --model {out}",
    ]
    return "\n".join(lines)


def _train_flags(a: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as `thresher train` flags (unset flags are None)."""
    return {
        k: v
        for k, v in dict(
            lora=a.lora or None,
            max_steps=a.max_steps,
            epochs=a.epochs,
            learning_rate=a.lr,
            batch_size=a.batch_size,
            micro_batch=a.micro_batch,
            template=a.template,
            max_length=a.max_length,
            append_eos=False if a.no_eos else None,
            threads=a.threads,
        ).items()
        if v is not None
    }


def _train_yaml(path: str) -> dict[str, Any]:
    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(d, dict):
        raise ValueError(
            f"{path} must hold a YAML mapping of `preset` and training options, not {type(d).__name__}"
        )
    return d


def cmd_ls(what: str | None) -> None:
    from thresher import data
    from thresher.methods import METHODS
    from thresher.models import ALIASES
    from thresher.templates import ALPACA_PROMPT_NO_INPUT, PLAIN_PROMPT_NO_INPUT

    if what in (None, "methods"):
        print("methods:")
        for m in METHODS.values():
            print(
                f"  {m.name:<15} {m.summary}\n  {'':<15} paper: {m.paper}\n  {'':<15} passes: {m.passes}; paper's scorer: {m.reference_model}; reproduce mode: {'yes' if m.reproducible else 'no'}"
            )
            print(f"  {'':<15} defaults: {json.dumps(m.defaults())}")
    if what in (None, "templates"):
        print("templates:")
        print(f"  alpaca  Stanford Alpaca, verbatim: {ALPACA_PROMPT_NO_INPUT[:60]!r}...")
        print(
            f"  plain   Superfiltering / T-SHIRT, no template: {PLAIN_PROMPT_NO_INPUT!r} (+ '{{input}}\\n')"
        )
        print("  chat    the tokenizer's own chat template (apply_chat_template)")
        print("  custom  any format string with {instruction}, optionally {input} and {system}")
    if what in (None, "models"):
        print("models (also: a local folder, a .gguf file, or a hub id):")
        for name, alias in ALIASES.items():
            print(f"  {name:<15} {alias.description}")
    if what in (None, "formats"):
        print(
            "formats: "
            + ", ".join(data.FORMATS)
            + " (from .json, .jsonl, .parquet, save_to_disk folders, hub ids)"
        )


# the methods `thresher demo` compares when their passes are those the demo's method stored:
# with IFD's defaults, superfiltering (on IFD's alpaca template and 512 tokens, instead of its
# paper's plain template and 1,024), ppl and entropy read IFD's cond and uncond passes, longest
# only tokenizes, random needs nothing
DEMO_COMPARE: dict[str, dict[str, Any]] = {
    "ifd": {},
    "superfiltering": {"template": "alpaca", "max_length": 512},
    "ppl": {},
    "entropy": {},
    "longest": {},
    "random": {},
}


def cmd_demo(a: argparse.Namespace) -> None:
    """Score the planted pool once with `a.method`, write its run folder and report, then select
    with every method of DEMO_COMPARE that needs no new forward pass and compare the defects."""
    from thresher import dryrun, pipeline
    from thresher.demo_data import defect_audit, format_comparison, generate_pool, write_pool
    from thresher.models import load_model
    from thresher.rundir import RunFolder

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = generate_pool()
    pool_path = out / "pool.jsonl"
    write_pool(pool_path, pool)
    print(f"demo pool: {len(pool)} rows of our own making with planted defects -> {pool_path}")

    def config(name: str, params: dict[str, Any]) -> RunConfig:
        cfg = RunConfig()
        cfg.data.path, cfg.data.format = str(pool_path), "alpaca"
        cfg.model.name, cfg.model.threads = a.model, a.threads
        cfg.method.name, cfg.method.params = name, dict(params)
        cfg.select.fraction = a.fraction
        cfg.output.dir = str(out)
        return cfg

    cfg = config(a.method, DEMO_COMPARE.get(a.method, {}))
    cfg.score.overwrite = a.overwrite
    _print_estimate(cfg, need_budget=True)
    m = cfg.model
    loaded = load_model(
        m.name,
        dtype=m.dtype,
        device=m.device,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
    )
    result, sel, manifest = pipeline.run(cfg, loaded=loaded)
    print(pipeline.summary(result, sel, manifest))
    # the pool a method can choose from: rows that were read (empty answers are rejected first)
    readable = [s.meta["record"] for s in result.samples]
    by_id = {s.id: s for s in result.samples}
    audits = {a.method: defect_audit([by_id[i].meta["record"] for i in sel.ids], readable)}
    skipped = []
    for name, params in DEMO_COMPARE.items():
        if name == a.method:
            continue
        other = config(name, params)
        cost = dryrun.plan(other).cost
        if cost is not None and cost.flops:  # would need a forward pass the demo has not run
            skipped.append(name)
            continue
        res = pipeline.score(other, loaded=loaded)
        chosen = pipeline.select(res, other).ids
        label = name + ("" if not params else f" ({', '.join(map(str, params.values()))})")
        audits[label] = defect_audit([by_id[i].meta["record"] for i in chosen], readable)
    print(
        f"\nplanted defects in each method's {a.fraction:.0%} of the {len(readable)} readable rows "
        "(empty answers are rejected in reading; the scorer never sees the labels):"
    )
    print(format_comparison(audits, a.method))
    if skipped:
        print(
            f"not compared (they need forward passes {a.method} does not run): {', '.join(skipped)}"
        )
    report = RunFolder(out).report
    print(
        f"report: {report if report.exists() else 'not written'} ({a.method}'s scores and subset). "
        f"Another method's subset and report from the same passes: thresher run --data "
        f"{pool_path} --method ppl --fraction {a.fraction} --out {out}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `thresher ls methods | head`: the reader has what it wanted
        # stdout goes to /dev/null so the flush at exit cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "interrupted: finished shards are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    except ReportNotWritten as e:  # every other output is saved: show the run, then the error
        from thresher.pipeline import summary

        print(summary(e.result, e.selection, e.manifest))
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, ImportError, FileNotFoundError)) else 1
    except ConnectionError as e:  # the hub (or another server) cannot be reached
        print(
            f"error: {e}. Given {_given(args)}: what is not stored locally was looked for on the "
            "hub, which cannot be reached. Give local files instead: a model folder, a .gguf file "
            "or an alias (thresher ls models), and for lm_eval tasks a --lm-eval-include folder of "
            "task YAMLs whose data are local files.",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        print(f"error: {os_error_message(e, args)}", file=sys.stderr)
        return 1


FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}  # permissions, a read-only file system


def os_error_message(e: OSError, a: argparse.Namespace) -> str:
    """What an OSError means for the command that met it: a full disk or a refused write in the
    output folder keeps the finished shards (rerun to resume); any other path names what was
    given."""
    where = f": {e.filename}" if e.filename else ""
    out = getattr(a, "out", None)
    in_out = bool(e.filename and out) and Path(str(e.filename)).resolve().is_relative_to(
        Path(out).resolve()
    )
    resume = "Finished shards are kept: rerun the same command to resume once fixed."
    if e.errno in FULL_DISK:
        return f"{e.strerror or e}{where}: the disk is full. Free space or pick another --out. {resume}"
    if e.errno in NOT_ALLOWED and in_out:
        return (
            f"{e.strerror or e}{where}: thresher may not write to the output folder {out}. "
            f"Fix its permissions or pick another --out. {resume}"
        )
    if e.errno in NOT_ALLOWED:
        return f"{e.strerror or e}{where}: fix the permissions of that path (given {_given(a)})"
    return f"{e}{where} (given {_given(a)})"


def _given(a: argparse.Namespace) -> str:
    """The models, data and tasks a command was given, for error messages."""
    parts = []
    for key, label in (
        ("targets", "model"),
        ("model", "model"),
        ("data", "data"),
        ("tasks", "tasks"),
    ):
        value = getattr(a, key, None)
        if value:
            parts.append(f"{label} {', '.join(value) if isinstance(value, list) else value}")
    return "; ".join(parts) or "no model or data"


def _print_estimate(cfg: RunConfig, need_budget: bool) -> None:
    """The cost estimate a run prints as it starts (rows spread over the file, no weights)."""
    from thresher import dryrun, pipeline

    method = pipeline.validate(cfg, need_budget=need_budget)
    if method.passes:
        plan = dryrun.plan(cfg, method=method, rows=dryrun.RUN_START_ROWS)
        print(dryrun.format_estimate(plan), flush=True)


def _dispatch(a: argparse.Namespace) -> int:
    from thresher import pipeline
    from thresher.rundir import RunFolder

    if a.command == "ls":
        cmd_ls(a.what)
        return 0
    if a.command == "train":
        print(cmd_train(a))
        return 0
    if a.command == "demo":
        with RunFolder(a.out).lock("demo"):
            cmd_demo(a)
        return 0
    if a.command == "eval":
        from thresher.evaluation import evaluate_models, format_evaluation

        evaluation = evaluate_models(
            a.targets,
            a.tasks,
            template=a.template,
            limit=a.limit,
            columns=_pairs(a.column, "--column") or None,
            mc_style=a.mc_style,
            max_length=a.max_length,
            max_new_tokens=a.max_new_tokens,
            batch_tokens=a.batch_tokens,
            threads=a.threads,
            progress=not a.no_progress,
            out=a.out,
            dtype=a.dtype,
            device=a.device,
            lm_eval_include=a.lm_eval_include,
            lm_eval_metrics=a.lm_eval_metric,
        )
        print(format_evaluation(evaluation))
        return 0
    if a.command == "report":
        from thresher.report import write_report

        print(f"report: {write_report(a.run_dirs, a.out)}")
        return 0
    if a.command == "select":
        overrides = list(a.overrides)
        if a.fraction is not None or a.count is not None:
            overrides += [
                f"select.fraction={a.fraction if a.fraction is not None else 'null'}",
                f"select.count={a.count if a.count is not None else 'null'}",
            ]
        if a.seed is not None:
            overrides.append(f"select.seed={a.seed}")
        with RunFolder(a.run_dir).lock("select"):
            cfg, result = pipeline.load_run(a.run_dir, overrides)
            sel = pipeline.select(result, cfg)
            manifest = pipeline.write_outputs(result, sel, cfg)
        print(pipeline.summary(result, sel, manifest))
        return 0
    cfg = config_from_args(a)
    if a.command == "validate":
        from thresher import dryrun

        if a.probe < 0:
            raise ValueError(f"--probe {a.probe}: expected a row count >= 0 (0: no probe)")
        plan = dryrun.plan(cfg, method=pipeline.validate(cfg, need_budget=False), probe=a.probe)
        print(dryrun.format_plan(plan))
        return 2 if dryrun.would_stop(plan) else 0
    _print_estimate(cfg, need_budget=a.command == "run")
    if a.command == "score":
        t0 = time.perf_counter()
        with RunFolder(cfg.output.dir).lock("score"):  # held from the passes to the manifest
            result = pipeline.score(cfg)
            manifest = pipeline.write_outputs(
                result, None, cfg, timings={"score": time.perf_counter() - t0}
            )
        print(pipeline.summary(result, None, manifest))
        return 0
    result, sel, manifest = pipeline.run(cfg)
    print(pipeline.summary(result, sel, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
