"""Fine-tuning on a subset through TRL's SFTTrainer: full fine-tuning or LoRA (PEFT).

Training examples are rendered by the same `Renderer` as the scoring passes (view `cond`):
the token ids are the ids a pass scores, and the loss mask is the pass's scored range, so
the trained tokens are exactly the scored tokens (labels are -100 elsewhere). The dataset is
handed to SFTTrainer already tokenized (`input_ids` + `labels`), which it uses as is.

EOS policy: the IFD family scores without EOS (`PassSpec.append_eos=False`, as the papers),
while trainers append it (Stanford Alpaca trains on `output + eos`; InstructDiff's
`train_v2.py` on `prompt + response + eos`). `append_eos` is one explicit option, recorded in
`thresher-train.json`; scoring with the same value scores the same tokens.

Output folder: the model (LoRA merged into the weights) and its tokenizer, so
`thresher score --model DIR` loads it; `checkpoints/` for resuming; `thresher-train.json`,
written last, marks a finished run (a rerun with the same settings returns at once).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.atomic import naming, write_atomic
from thresher.choices import check_choice, suggest
from thresher.data import Sample
from thresher.passes import PassSpec
from thresher.templates import Renderer

log = logging.getLogger(__name__)

MARKER = "thresher-train.json"
STARTED = "started.json"  # in the checkpoints folder: the model, data and settings that write it
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. `batch_size` is the effective batch (rows per optimizer step);
    it is reached with `micro_batch` rows per forward and gradient accumulation."""

    learning_rate: float = 2e-5  # Stanford Alpaca / Cherry: `--learning_rate 2e-5`
    epochs: float = 3.0  # Stanford Alpaca / Cherry: `--num_train_epochs 3`
    batch_size: int = 128  # Stanford Alpaca: 4 GPUs x 4 per device x 8 accumulation = 128
    micro_batch: int = 1  # ours: DESIGN measured batches of 1 fastest on CPU (no padding)
    warmup_ratio: float = 0.03  # Stanford Alpaca: `--warmup_ratio 0.03`
    weight_decay: float = 0.0  # Stanford Alpaca: `--weight_decay 0.`
    scheduler: str = "cosine"  # Stanford Alpaca: `--lr_scheduler_type cosine`
    max_length: int = 512  # Stanford Alpaca: `--model_max_length 512`
    max_grad_norm: float = 1.0  # InstructDiff Table 9: "grad clip 1.0" (also HF's default)
    template: str = "alpaca"  # ours: the template the IFD family scores with
    truncation: str = "prompt_first"  # ours: as the scoring passes, never empties the response
    append_eos: bool = True  # Stanford Alpaca: `f"{example['output']}{tokenizer.eos_token}"`
    max_steps: int = -1  # ours: -1 = as many as the epochs give; a positive value caps them
    lora: bool = False
    lora_r: int = 16  # ours: a common small rank; no paper here trains with LoRA
    lora_alpha: int = 32  # ours: 2 x r, the usual scaling
    lora_dropout: float = 0.05  # ours: the usual value for small data
    save_steps: int = 50  # ours: a checkpoint every few minutes of CPU training
    logging_steps: int = 10  # TRL's SFTConfig default
    seed: int = 42  # Stanford Alpaca / HF Trainer default seed
    dtype: str = "float32"  # DESIGN: fp32; bf16 pays only with native bf16 (docs/training.md)
    threads: int | None = None  # torch threads; None leaves torch's default

    def __post_init__(self) -> None:
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        if self.batch_size < 1 or self.micro_batch < 1 or self.batch_size % self.micro_batch:
            raise ValueError(
                f"batch_size={self.batch_size}, micro_batch={self.micro_batch}: expected positive "
                "counts with batch_size a multiple of micro_batch (it is reached by accumulation)"
            )
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise ValueError(
                f"learning_rate={self.learning_rate}, epochs={self.epochs}: both must be positive"
            )


# Named paper recipes (`--preset NAME`); flags override single fields.
PRESETS: dict[str, dict[str, Any]] = {
    # Stanford Alpaca's train.py recipe, which Cherry LLM (IFD) trains with: lr 2e-5, 3 epochs,
    # batch 128, warmup 0.03, wd 0, cosine, max length 512 (the TrainConfig defaults)
    "alpaca": {},
    # InstructDiff Table 9, general domain: "lr 2e-5 / batch 64 / 10 epochs / 2048", AdamW,
    # cosine, 5% warmup, wd 0.01, grad clip 1.0
    "instructdiff-general": dict(
        learning_rate=2e-5,
        batch_size=64,
        epochs=10,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=2048,
    ),
    # InstructDiff Table 9, math: "5e-5 / 256 / 3 / 2048"
    "instructdiff-math": dict(
        learning_rate=5e-5,
        batch_size=256,
        epochs=3,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=2048,
    ),
    # InstructDiff Table 9, medical: "2e-5 / 64 / 3 / 512"
    "instructdiff-medical": dict(
        learning_rate=2e-5,
        batch_size=64,
        epochs=3,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=512,
    ),
    # InstructDiff Table 9, code: "1e-5 / 256 / 5 / 4096"
    "instructdiff-code": dict(
        learning_rate=1e-5,
        batch_size=256,
        epochs=5,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=4096,
    ),
    # InstructDiff warm-up calibration (configs): "3 epochs at the same lr and batch as the
    # domain"; general domain values; max length 512 as the scoring passes (ours)
    "instructdiff-warmup": dict(
        learning_rate=2e-5,
        batch_size=64,
        epochs=3,
        warmup_ratio=0.05,
        weight_decay=0.01,
        max_length=512,
    ),
    # T-SHIRT scripts/train_llama31_8b.sh: "--num_train_epochs 3", "TOTALBSZ=128",
    # "--learning_rate 2e-5", "--warmup_ratio 0.03", "--lr_scheduler_type cosine",
    # "--model_max_length 2048", no weight decay (HF's 0); it formats with the vicuna_v1.1
    # conversation template, which is not built in here (pass --template)
    "tshirt": dict(
        learning_rate=2e-5,
        batch_size=128,
        epochs=3,
        warmup_ratio=0.03,
        weight_decay=0.0,
        max_length=2048,
    ),
    # NAIT App. D: LLaMA-2-7B full FT, "3 epochs, batch 128, lr 2e-5 cosine to 0, Adam(0.9, 0.999),
    # warmup 0.03, weight decay 0.1, cutoff 2048"
    "nait": dict(
        learning_rate=2e-5,
        batch_size=128,
        epochs=3,
        warmup_ratio=0.03,
        weight_decay=0.1,
        max_length=2048,
    ),
    # ours: a few-minute CPU run for small models and smoke tests: batch 8, 1 epoch, LoRA-sized lr
    "cpu": dict(
        learning_rate=1e-4,
        batch_size=8,
        epochs=1,
        warmup_ratio=0.03,
        weight_decay=0.0,
        max_length=512,
    ),
}


def preset(name: str = "alpaca", **overrides: Any) -> TrainConfig:
    """A named recipe with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(
            f"unknown training preset {name!r}: expected one of {sorted(PRESETS)}{suggest(name, list(PRESETS))}"
        )
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = [k for k in overrides if k not in fields]
    if bad:
        raise ValueError(f"unknown training option(s) {bad}: expected some of {sorted(fields)}")
    return TrainConfig(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class TrainResult:
    out_dir: Path
    rows: int  # training examples
    rejected: dict[str, int]  # reason -> rows that could not be rendered
    tokens: int  # tokens per epoch (all positions of the training examples)
    loss_tokens: int  # response tokens that carry the loss, per epoch
    steps: int
    seconds: float  # copy, training and saving
    train_seconds: float  # the optimizer loop alone (SFTTrainer.train)
    reused: bool  # a finished run with the same settings was found; nothing trained


def training_spec(model: str, cfg: TrainConfig) -> PassSpec:
    """The `cond` pass whose rendering the training examples use."""
    return PassSpec(
        model=model,
        view="cond",
        template=cfg.template,
        fields=("logprob",),
        max_length=cfg.max_length,
        truncation=cfg.truncation,
        append_eos=cfg.append_eos,
    )


def build_examples(
    samples: list[Sample], tokenizer: Any, spec: PassSpec
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Pre-tokenized examples: `input_ids` as the pass renders them and `labels` equal to them
    on the pass's scored positions, -100 elsewhere. Rows the pass cannot render are counted."""
    renderer = Renderer(tokenizer, spec)
    examples, rejected = [], {}
    for s in samples:
        r = renderer.render(s)
        if r.status != "ok":
            rejected[r.status] = rejected.get(r.status, 0) + 1
            continue
        a, b = r.scored
        ids = list(r.ids)
        examples.append(
            {"input_ids": ids, "labels": [-100] * a + ids[a:b] + [-100] * (len(ids) - b)}
        )
    return examples, rejected


def train(
    samples: list[Sample],
    model: str | Any,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
) -> TrainResult:
    """Fine-tune `model` (a name for `thresher.models.load_model`, or a `LoadedModel`, which is
    copied and never modified) on `samples`; write the merged model and tokenizer to `out_dir`.

    A rerun resumes from the last checkpoint in `out_dir/checkpoints` when the model, data and
    settings are those that wrote it (`max_steps` and `epochs` may grow), and refuses otherwise;
    once the model is saved, the checkpoints (weights + optimizer states) are deleted unless
    `keep_checkpoints`."""
    from thresher.models import LoadedModel, load_model, set_threads

    cfg = cfg or TrainConfig()
    out = Path(out_dir)
    name = model.info.name if isinstance(model, LoadedModel) else str(model)
    # what the weights depend on (threads and logging do not change them)
    recipe = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("threads", "logging_steps", "save_steps")
    }
    record = {"model": name, "config": recipe, "samples": sorted(s.id for s in samples)}
    done = out / MARKER
    if done.is_file() and not overwrite:
        old = json.loads(done.read_text())
        if {k: old.get(k) for k in record} == record:
            return TrainResult(
                out,
                old["rows"],
                old["rejected"],
                old["tokens"],
                old["loss_tokens"],
                old["steps"],
                old["seconds"],
                old["train_seconds"],
                True,
            )
        raise RuntimeError(
            f"{out} holds a finished training run with other settings or data; pass overwrite=True (--overwrite) or choose another output folder"
        )
    if overwrite:  # start afresh: no finished marker, no checkpoint to resume from
        done.unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    ckpt = out / "checkpoints"
    resume = ckpt.is_dir() and any(ckpt.glob("checkpoint-*"))
    # checkpoints resume only the run that wrote them; the length may grow (resume to train longer)
    started = {
        **record,
        "config": {k: v for k, v in recipe.items() if k not in ("max_steps", "epochs")},
    }
    if resume and (
        not (ckpt / STARTED).is_file() or json.loads((ckpt / STARTED).read_text()) != started
    ):
        raise RuntimeError(
            f"{ckpt} holds checkpoints of a training run with other settings or data (see {ckpt / STARTED}); "
            "pass overwrite=True (--overwrite) to start afresh, or choose another output folder"
        )
    ckpt.mkdir(parents=True, exist_ok=True)
    write_atomic(ckpt / STARTED, json.dumps(started, indent=1).encode())
    set_threads(cfg.threads)
    lm = model if isinstance(model, LoadedModel) else load_model(name, dtype=cfg.dtype)
    tokenizer = copy.deepcopy(lm.tokenizer)  # SFTTrainer sets a pad token on the one it gets
    examples, rejected = build_examples(samples, tokenizer, training_spec(name, cfg))
    if not examples:
        raise ValueError(
            f"none of the {len(samples)} samples can be rendered for training ({rejected}); check the data and the template"
        )
    t0 = time.perf_counter()
    net = _trainable(copy.deepcopy(lm.model) if isinstance(model, LoadedModel) else lm.model, cfg)
    trainer = _trainer(net, tokenizer, examples, out, cfg, progress)
    t1 = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    train_seconds = time.perf_counter() - t1
    steps = trainer.state.global_step
    final = trainer.model.merge_and_unload() if cfg.lora else trainer.model
    final.eval()
    final.config.use_cache = True
    with naming(out):  # a full disk while saving names the folder
        final.save_pretrained(out)
        lm.tokenizer.save_pretrained(out)  # the original tokenizer, not TRL's padded copy
    seconds = time.perf_counter() - t0
    res = TrainResult(
        out,
        len(examples),
        rejected,
        sum(len(e["input_ids"]) for e in examples),
        sum(sum(x != -100 for x in e["labels"]) for e in examples),
        steps,
        seconds,
        train_seconds,
        False,
    )
    meta = {
        **record,
        "rows": res.rows,
        "rejected": rejected,
        "tokens": res.tokens,
        "loss_tokens": res.loss_tokens,
        "steps": steps,
        "seconds": seconds,
        "train_seconds": train_seconds,
        "versions": _versions(),
    }
    write_atomic(done, json.dumps(meta, indent=1).encode())
    if not keep_checkpoints:
        shutil.rmtree(ckpt, ignore_errors=True)
    return res


def _trainable(model: Any, cfg: TrainConfig) -> Any:
    model.train()
    model.config.use_cache = False
    if not cfg.lora:
        return model
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    set_seed(
        cfg.seed
    )  # the adapter's random init, so a run and its resumed copy agree (as Trainer seeds)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _trainer(
    model: Any,
    tokenizer: Any,
    examples: list[dict[str, list[int]]],
    out: Path,
    cfg: TrainConfig,
    progress: bool,
) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch,
        gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        max_grad_norm=cfg.max_grad_norm,
        max_length=cfg.max_length,  # the rendering already fits; SFTTrainer truncates nothing
        seed=cfg.seed,
        # SFTConfig turns bf16 and gradient checkpointing on by default; both slow CPU training
        bf16=cfg.dtype == "bfloat16",
        fp16=False,
        activation_checkpointing=False,
        use_cpu=model.device.type == "cpu",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,  # ours: a checkpoint of a full model holds weights + Adam states
        logging_steps=cfg.logging_steps,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataset_num_proc=None,
    )
    data = Dataset.from_list(examples)
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {}
    for p in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out
