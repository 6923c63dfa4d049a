"""Evaluation on local files: held-out response NLL, multiple choice by log-likelihood, GSM8K
exact match by greedy generation, and a pass-through to lm-evaluation-harness.

Log-likelihoods come from the scoring machinery itself (a `cond` pass through `Scorer`:
`templates.Renderer` + `backends.hf.HFBackend`), so an evaluation scores response tokens
exactly as selection does. Every task reports how many items it evaluated and how many it
skipped, with a reason per skipped item; a skipped item is never counted as a zero.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from thresher import data as data_mod
from thresher.atomic import write_atomic
from thresher.data import Message, Sample
from thresher.passes import PassSpec

TASK_KINDS = ("nll", "mc", "gsm8k", "lm_eval")
# ours: the scoring passes' length budget; longer responses keep their first tokens (counted
# as `truncated` in the result, never dropped silently)
EVAL_MAX_LENGTH = 1024
# ours: GSM8K worked answers are ~100-200 tokens; 256 new tokens leaves room without running on
GSM8K_MAX_NEW_TOKENS = 256
CHUNK_ROWS = 64  # ours: rows per Scorer call, for a progress bar and bounded memory
MC_LETTERS = "ABCDEFGHIJ"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# generation stops at the next turn of the template (Alpaca "###", plain Q/A restarts)
STOPS = ("\n\n###", "\n### ", "\nQuestion:", "\n\nQuestion:")


@dataclass
class TaskResult:
    """One task's figures. `headline` names the metric to compare models by."""

    task: str  # e.g. "nll:gsm8k_test.jsonl"
    kind: str
    source: str
    metrics: dict[str, float]
    headline: str
    evaluated: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "task",
                "kind",
                "source",
                "metrics",
                "headline",
                "evaluated",
                "skipped",
                "notes",
            )
        }


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    target: str  # a file path, or lm-eval task names joined by ","


def parse_task(text: str) -> TaskSpec:
    """`nll:FILE`, `mc:FILE`, `gsm8k:FILE` or `lm_eval:TASK[,TASK...]`."""
    kind, sep, target = text.partition(":")
    if not sep or kind not in TASK_KINDS or not target:
        raise ValueError(
            f"task {text!r} is not of the form KIND:TARGET with KIND one of {list(TASK_KINDS)}, e.g. "
            "nll:gsm8k_test.jsonl, mc:mmlu_stem_test.jsonl, gsm8k:gsm8k_test.jsonl, lm_eval:hellaswag"
        )
    if kind != "lm_eval" and not Path(target).exists():
        raise FileNotFoundError(f"task {text!r}: no such file {target!r}")
    return TaskSpec(kind, target)


# ------------------------------------------------------------------ held-out split


def content_hash(sample: Sample) -> str:
    """sha256 of the turns (role, text): equal for the same example under different ids."""
    turns = [[m.role, m.content] for m in sample.messages]
    return hashlib.sha256(
        json.dumps(turns, ensure_ascii=False, separators=(",", ":")).encode()
    ).hexdigest()


def split_heldout(
    samples: list[Sample], fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(pool, heldout): about `fraction` of the rows held out, deterministic for a seed.

    Rows are assigned by content, not by id, so copies of one example always land on the same
    side; the result is checked to share no id and no content hash.
    """
    if not 0 < fraction < 1:
        raise ValueError(
            f"fraction={fraction}: expected a share strictly between 0 and 1, e.g. 0.1"
        )
    hashes = [content_hash(s) for s in samples]
    order = sorted(set(hashes), key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    size = Counter(hashes)
    target, held, n = round(fraction * len(samples)), set(), 0
    for h in order:
        if n >= target:
            break
        held.add(h)
        n += size[h]
    pool = [s for s, h in zip(samples, hashes, strict=True) if h not in held]
    heldout = [s for s, h in zip(samples, hashes, strict=True) if h in held]
    check_disjoint(pool, heldout)
    return pool, heldout


def check_disjoint(train: list[Sample], heldout: list[Sample]) -> None:
    """Raise if any held-out row shares an id or a content hash with the training rows."""
    ids = {s.id for s in train} & {s.id for s in heldout}
    train_hashes = {content_hash(s) for s in train}
    same = [s.id for s in heldout if content_hash(s) in train_hashes]
    if ids or same:
        raise ValueError(
            f"the held-out rows overlap the training rows: {len(ids)} shared ids (e.g. {sorted(ids)[:3]}), "
            f"{len(same)} held-out rows with training content (e.g. {same[:3]}); split again with split_heldout"
        )


def write_split(
    source: str, out_dir: str | Path, fraction: float, seed: int = 0, **read_kwargs: Any
) -> tuple[Path, Path]:
    """Read `source`, split it, write `pool.jsonl` and `heldout.jsonl` (original records) into `out_dir`."""
    from thresher.atomic import write_jsonl

    read = data_mod.read(source, **read_kwargs)
    pool, heldout = split_heldout(read.samples, fraction, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "pool.jsonl", out / "heldout.jsonl"
    for path, rows in zip(paths, (pool, heldout), strict=True):
        write_jsonl([s.meta["record"] for s in rows], path)
    return paths


# ------------------------------------------------------------------ log-likelihood tasks


def _scorer(lm: Any, template: str, max_length: int, batch_tokens: int) -> Any:
    from thresher.engine.scorer import Scorer

    spec = PassSpec(
        model=lm.info.name,
        view="cond",
        template=template,
        fields=("logprob",),
        max_length=max_length,
    )
    return Scorer(spec, lm.model, lm.tokenizer, batch_tokens=batch_tokens)


def _score(
    scorer: Any, samples: list[Sample], desc: str, progress: bool
) -> tuple[list[str], list[np.ndarray], list[str]]:
    from tqdm.auto import tqdm

    status: list[str] = []
    logprob: list[np.ndarray] = []
    truncated: list[str] = []
    for a in tqdm(
        range(0, len(samples), CHUNK_ROWS), desc=desc, unit="chunk", disable=not progress
    ):
        cols = scorer(samples[a : a + CHUNK_ROWS])
        status += cols["status"]
        logprob += cols["logprob"]
        truncated += cols["truncated"]
    return status, logprob, truncated


def response_nll(
    lm: Any,
    samples: list[Sample],
    *,
    template: str = "alpaca",
    max_length: int = EVAL_MAX_LENGTH,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter, int]:
    """Mean NLL (nats) of the response tokens given the prompt.

    Returns metrics `nll_token` (sum of NLL over every response token / number of tokens: the
    headline, the quantity a trainer's loss averages) and `nll_sample` (mean over items of each
    item's mean token NLL), the items evaluated, skip reasons, and how many were truncated.
    """
    status, logprob, truncated = _score(
        _scorer(lm, template, max_length, batch_tokens), samples, "nll", progress
    )
    ok = [i for i, s in enumerate(status) if s == "ok" and len(logprob[i])]
    skipped = Counter(s for s in status if s != "ok")
    if not ok:
        return {"nll_token": math.nan, "nll_sample": math.nan, "tokens": 0.0}, 0, skipped, 0
    total = sum(float(-logprob[i].astype(np.float64).sum()) for i in ok)
    tokens = sum(len(logprob[i]) for i in ok)
    per_item = [float(-logprob[i].astype(np.float64).mean()) for i in ok]
    metrics = {
        "nll_token": total / tokens,
        "nll_sample": float(np.mean(per_item)),
        "tokens": float(tokens),
    }
    return metrics, len(ok), skipped, sum(1 for i in ok if truncated[i])


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def read_mc(path: str | Path, limit: int | None = None) -> tuple[list[MCItem], Counter]:
    """MMLU-style JSON lines: `question`, `choices` (list of text), `answer` (index or letter)."""
    items, skipped = [], Counter()
    with open(path, encoding="utf-8") as f:
        lines = [x for x in f if x.strip()]
    for n, line in enumerate(lines[:limit] if limit is not None else lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped["malformed_json"] += 1
            continue
        q, choices, ans = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not q.strip():
            skipped["missing_field:question"] += 1
            continue
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            skipped["bad_choices"] += 1
            continue
        if isinstance(ans, str) and len(ans) == 1 and ans.upper() in MC_LETTERS:
            ans = MC_LETTERS.index(ans.upper())
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(choices):
            skipped["bad_answer"] += 1
            continue
        items.append(
            MCItem(
                str(row.get("id", n)),
                q,
                tuple(choices),
                ans,
                str(row.get("type") or row.get("subject") or ""),
            )
        )
    return items, skipped


def mc_prompt(item: MCItem, style: str) -> tuple[str, list[str]]:
    """The context and each choice's continuation.

    `cloze` (the default): "Question: ...\\nAnswer:" continued by " <choice text>", the
    lm-evaluation-harness form for small models that cannot yet map letters to answers.
    `letters`: the MMLU prompt with lettered choices, continued by " A", " B", ...
    """
    if style == "cloze":
        return f"Question: {item.question}\nAnswer:", [f" {c}" for c in item.choices]
    if style == "letters":
        subject = f" about {item.subject.replace('_', ' ')}" if item.subject else ""
        body = "\n".join(f"{MC_LETTERS[k]}. {c}" for k, c in enumerate(item.choices))
        return (
            f"The following is a multiple choice question{subject}.\n\n{item.question}\n{body}\nAnswer:",
            [f" {MC_LETTERS[k]}" for k in range(len(item.choices))],
        )
    raise ValueError(f"mc style {style!r} is not one of ['cloze', 'letters']")


def choose(loglik: np.ndarray, n_bytes: np.ndarray) -> tuple[int, int]:
    """(choice by summed log-likelihood, choice by log-likelihood per byte of continuation).

    Tie rule: among equal scores the lowest choice index wins (np.argmax takes the first), so
    a model that cannot tell the choices apart always answers the first one.
    """
    return int(np.argmax(loglik)), int(np.argmax(loglik / n_bytes))


def multiple_choice(
    lm: Any,
    items: list[MCItem],
    *,
    style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter]:
    """Accuracy by continuation log-likelihood. Headline: `acc` (the summed log-likelihood);
    `acc_norm` divides by the continuation's UTF-8 bytes, as lm-evaluation-harness does."""
    samples = []
    for item in items:
        context, conts = mc_prompt(item, style)
        for c, cont in enumerate(conts):
            samples.append(
                Sample(
                    f"{item.id}#{c}",
                    (Message("user", context), Message("assistant", cont)),
                    context,
                )
            )
    # the custom template "{instruction}" renders the context verbatim, with BOS when the
    # tokenizer adds one; each continuation is tokenized on its own, so its span is exact
    status, logprob, truncated = _score(
        _scorer(lm, "{instruction}", max_length, batch_tokens), samples, "mc", progress
    )
    skipped: Counter = Counter()
    hits = hits_norm = n = 0
    a = 0
    for item in items:
        b = a + len(item.choices)
        bad = [status[i] for i in range(a, b) if status[i] != "ok"] + [
            "choice_truncated" for i in range(a, b) if "response" in truncated[i]
        ]
        if bad:
            skipped[f"choice_unscorable:{bad[0]}"] += 1
        else:
            ll = np.array([float(logprob[i].astype(np.float64).sum()) for i in range(a, b)])
            nb = np.array(
                [len(samples[i].response.encode()) for i in range(a, b)], dtype=np.float64
            )
            pick, pick_norm = choose(ll, nb)
            hits += pick == item.answer
            hits_norm += pick_norm == item.answer
            n += 1
        a = b
    nan = math.nan
    return (
        {
            "acc": hits / n if n else nan,
            "acc_norm": hits_norm / n if n else nan,
            "chance": float(np.mean([1 / len(i.choices) for i in items])) if items else nan,
        },
        n,
        skipped,
    )


# ------------------------------------------------------------------ GSM8K exact match


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return _norm_number(found[-1]) if found else None


def gold_number(answer: str) -> str | None:
    """The final answer after `####` in a GSM8K worked answer."""
    if "####" not in answer:
        return None
    return last_number(answer.split("####")[-1])


def _norm_number(text: str) -> str | None:
    try:
        return str(Decimal(text.replace(",", "")).normalize())
    except InvalidOperation:
        return None


def gsm8k_exact(
    lm: Any,
    samples: list[Sample],
    *,
    template: str = "alpaca",
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    progress: bool = False,
) -> tuple[dict[str, float], int, Counter]:
    """Greedy generation, then the last number of the generation against the number after `####`."""
    import torch
    from tqdm.auto import tqdm

    from thresher.templates import Renderer

    renderer = Renderer(lm.tokenizer, PassSpec(model=lm.info.name, template=template))
    lead = [] if renderer.template.name == "chat" else renderer.bos
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    hits, n, skipped = 0, 0, Counter()
    for s in tqdm(samples, desc="gsm8k", unit="item", disable=not progress):
        gold = gold_number(s.response)
        if gold is None:
            skipped["no_gold_number"] += 1
            continue
        ids = torch.tensor([lead + renderer.enc(renderer.template.prompt(s, tok))])
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in STOPS:
            text = text.split(stop)[0]
        hits += last_number(text) == gold
        n += 1
    return {"exact_match": hits / n if n else math.nan}, n, skipped


# ------------------------------------------------------------------ lm-evaluation-harness


def lm_eval_tasks(
    model_path: str,
    tasks: list[str],
    *,
    limit: int | None,
    device: str = "cpu",
    include: str | None = None,
) -> list[TaskResult]:
    """Run lm-evaluation-harness's `simple_evaluate` on a transformers model folder or hub id;
    `include` is a folder of task YAMLs of the user's own (lm-eval's `--include_path`)."""
    try:
        import lm_eval
    except ImportError:
        raise ImportError(
            "the lm_eval task needs lm-evaluation-harness, which is optional and not installed: "
            "pip install -r requirements/eval.txt (or pip install lm_eval==0.4.13)"
        ) from None
    extra = {}
    if include is not None:
        if not Path(include).is_dir():
            raise ValueError(
                f"--lm-eval-include {include!r} is not a folder: give the folder that holds your task YAMLs"
            )
        from lm_eval.tasks import TaskManager

        extra["task_manager"] = TaskManager(include_path=str(include))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": model_path, "dtype": "float32", "device": device},
        tasks=tasks,
        limit=limit,
        **extra,
    )
    results = []
    for name, metrics in out["results"].items():
        counts = out.get("n-samples", {}).get(name, {})
        original, effective = counts.get("original"), counts.get("effective")
        values = {
            k.split(",")[0]: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and "stderr" not in k
        }
        skipped = (
            {"over_limit": original - effective}
            if original and effective is not None and original > effective
            else {}
        )
        results.append(
            TaskResult(
                f"lm_eval:{name}",
                "lm_eval",
                name,
                values,
                next(iter(values), ""),
                effective or 0,
                skipped,
            )
        )
    return results


# ------------------------------------------------------------------ targets and the task loop


def resolve_target(target: str) -> tuple[str, Path | None]:
    """(model to load, run folder or None). A run folder means the model a `thresher train` wrote
    into it (the one sub-folder with config.json), else the model that scored the run."""
    path = Path(target)
    if not (path / "manifest.json").is_file():
        return target, None
    found = sorted(p.parent for p in path.glob("*/config.json")) + sorted(
        p.parent for p in path.glob("*/*/config.json")
    )
    found = [p for p in found if "passes" not in p.parts]
    if len(found) > 1:
        raise ValueError(
            f"run folder {target} holds several models {[str(p) for p in found]}: pass the one to evaluate"
        )
    if found:
        return str(found[0]), path
    return json.loads((path / "manifest.json").read_text())["config"]["model"]["name"], path


def pool_hashes(run_dir: Path) -> set[str]:
    """Content hashes of a run's whole input pool (what a model trained from it may have seen)."""
    cfg = json.loads((run_dir / "manifest.json").read_text())["config"]["data"]
    read = data_mod.read(
        cfg["path"],
        format=cfg["format"],
        columns=cfg["columns"] or None,
        roles=cfg["roles"] or None,
        id_column=cfg["id_column"],
        split=cfg["split"],
        limit=cfg["limit"],
        allow_mixed=cfg["allow_mixed"],
    )
    return {content_hash(s) for s in read.samples}


def read_pairs(path: str, columns: dict[str, str] | None, limit: int | None) -> data_mod.ReadResult:
    """A dataset file for NLL / GSM8K; `question`/`answer` files (GSM8K) map to instruction/output."""
    if columns is None:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        if '"question"' in first and '"answer"' in first and '"instruction"' not in first:
            columns = {"instruction": "question", "output": "answer"}
    return data_mod.read(path, format="alpaca" if columns else None, columns=columns, limit=limit)


def run_task(
    lm: Any,
    spec: TaskSpec,
    *,
    template: str = "alpaca",
    limit: int | None = None,
    columns: dict[str, str] | None = None,
    exclude: set[str] | None = None,
    mc_style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    batch_tokens: int = 2048,
    progress: bool = False,
) -> TaskResult:
    """One task of `thresher eval` on a loaded model. `exclude` holds content hashes (a run's pool)
    whose rows are skipped as `in_training_pool`."""
    label = f"{spec.kind}:{Path(spec.target).name}"
    if spec.kind == "mc":
        items, skipped = read_mc(spec.target, limit)
        metrics, n, more = multiple_choice(
            lm,
            items,
            style=mc_style,
            max_length=max_length,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        return TaskResult(
            label,
            "mc",
            spec.target,
            metrics,
            "acc",
            n,
            dict(skipped + more),
            [
                f"style={mc_style}; acc_norm divides by continuation bytes; ties go to the lowest choice index"
            ],
        )
    read = read_pairs(spec.target, columns, limit)
    skipped = Counter(r.reason for r in read.rejected)
    samples = read.samples
    if exclude:
        kept = [s for s in samples if content_hash(s) not in exclude]
        skipped["in_training_pool"] += len(samples) - len(kept)
        samples = kept
    if spec.kind == "nll":
        metrics, n, more, n_trunc = response_nll(
            lm,
            samples,
            template=template,
            max_length=max_length,
            batch_tokens=batch_tokens,
            progress=progress,
        )
        notes = [
            f"template={template}; nll_token = total NLL / response tokens (headline), nll_sample = mean of per-item means"
        ]
        if n_trunc:
            notes.append(f"{n_trunc} items truncated to max_length={max_length}")
        return TaskResult(
            label, "nll", spec.target, metrics, "nll_token", n, dict(skipped + more), notes
        )
    if spec.kind == "gsm8k":
        metrics, n, more = gsm8k_exact(
            lm, samples, template=template, max_new_tokens=max_new_tokens, progress=progress
        )
        return TaskResult(
            label,
            "gsm8k",
            spec.target,
            metrics,
            "exact_match",
            n,
            dict(skipped + more),
            [
                f"greedy, max_new_tokens={max_new_tokens}, template={template}; last number of the generation vs the number after ####"
            ],
        )
    raise ValueError(
        f"run_task does not handle kind {spec.kind!r}; lm_eval tasks go through lm_eval_tasks"
    )


def format_results(results: list[TaskResult]) -> str:
    lines = [f"{'task':<34} {'metric':<12} {'value':>9} {'items':>7} {'skipped':>8}  notes"]
    for r in results:
        value = r.metrics.get(r.headline, math.nan)
        others = ", ".join(f"{k}={v:.4g}" for k, v in r.metrics.items() if k != r.headline)
        lines.append(
            f"{r.task:<34} {r.headline:<12} {value:>9.4f} {r.evaluated:>7} {sum(r.skipped.values()):>8}  {others}"
        )
        if r.skipped:
            lines.append(
                f"{'':<34} skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(r.skipped.items()))
            )
        for note in r.notes:
            lines.append(f"{'':<34} {note}")
    return "\n".join(lines)


def evaluate(
    target: str,
    tasks: list[str],
    *,
    template: str = "alpaca",
    limit: int | None = None,
    columns: dict[str, str] | None = None,
    mc_style: str = "cloze",
    max_length: int = EVAL_MAX_LENGTH,
    max_new_tokens: int = GSM8K_MAX_NEW_TOKENS,
    batch_tokens: int = 2048,
    threads: int | None = None,
    progress: bool = True,
    out: str | Path | None = None,
    lm_eval_include: str | None = None,
) -> list[TaskResult]:
    """`thresher eval`: load the target's model once, run every task, write the results as JSON
    (to `out`, or `eval.json` in a run folder). Rows of a run's own pool are skipped."""
    from thresher.models import load_model, set_threads

    specs = [parse_task(t) for t in tasks]
    model_name, run_dir = resolve_target(target)
    exclude = (
        pool_hashes(run_dir)
        if run_dir is not None and any(s.kind in ("nll", "gsm8k") for s in specs)
        else None
    )
    set_threads(threads)
    local = [s for s in specs if s.kind != "lm_eval"]
    lm = load_model(model_name) if local else None
    results: list[TaskResult] = []
    for spec in specs:
        if spec.kind == "lm_eval":
            path = lm.info.path if lm is not None else model_name
            results += lm_eval_tasks(
                path, spec.target.split(","), limit=limit, include=lm_eval_include
            )
        else:
            results.append(
                run_task(
                    lm,
                    spec,
                    template=template,
                    limit=limit,
                    columns=columns,
                    exclude=exclude,
                    mc_style=mc_style,
                    max_length=max_length,
                    max_new_tokens=max_new_tokens,
                    batch_tokens=batch_tokens,
                    progress=progress,
                )
            )
    dest = Path(out) if out else (run_dir / "eval.json" if run_dir is not None else None)
    if dest is not None:
        record = {"target": target, "model": model_name, "tasks": [r.to_dict() for r in results]}
        write_atomic(dest, json.dumps(record, indent=1, allow_nan=True).encode())
    return results
