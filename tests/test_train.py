"""Training on a subset: the trained tokens are the scored tokens; checkpoints resume; the
output folder is a model `thresher score --model` loads."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from thresher.data import read
from thresher.engine.scorer import Scorer
from thresher.models import load_model, resolve_model
from thresher.passes import PassSpec
from thresher.templates import Renderer
from thresher.train import (
    PRESETS,
    TrainConfig,
    _trainer,
    build_examples,
    preset,
    train,
    training_spec,
)
from tiny import FAMILIES

ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5."},
    {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
    {"instruction": "Greet", "input": "", "output": " Hello there!\nHow are you?"},
    {"instruction": "Sort 3, 1, 2.", "input": "", "output": "1, 2, 3."},
]
CASES = [
    (f, t)
    for f in FAMILIES
    for t in ("alpaca", "plain", "chat")
    if not (f == "gpt2" and t == "chat")
]


@pytest.fixture
def samples(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return read(str(p)).samples


@pytest.mark.parametrize("append_eos", [False, True])
@pytest.mark.parametrize("family,template", CASES)
def test_trained_tokens_equal_scored_tokens(family, template, append_eos, samples, tmp_path):
    make_tok, make_model = FAMILIES[family]
    tok = make_tok()
    model = make_model(tok)
    cfg = TrainConfig(template=template, append_eos=append_eos, batch_size=1, max_length=64)
    examples, rejected = build_examples(samples, tok, training_spec("m", cfg))
    assert rejected == {} and len(examples) == len(samples) == 4
    # what SFTTrainer actually feeds the model, after its own dataset preparation and collation
    trainer = _trainer(
        copy.deepcopy(model).train(), copy.deepcopy(tok), examples, tmp_path, cfg, progress=False
    )
    fed = [trainer.data_collator([row]) for row in trainer.train_dataset]
    # the scoring pass with the same template and EOS option, through a real forward
    spec = PassSpec(
        model="m",
        view="cond",
        template=template,
        fields=("logprob",),
        max_length=64,
        append_eos=append_eos,
    )
    renderer = Renderer(tok, spec)
    ok = samples
    cols = Scorer(spec, model, tok)(ok)
    assert len(fed) == len(ok)
    for s, batch, n_scored in zip(ok, fed, cols["n_scored"], strict=True):
        r = renderer.render(s)
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert ids == list(r.ids)
        a, b = r.scored
        trained = [t for t, lab in enumerate(labels) if lab != -100]
        assert trained == list(range(a, b)) and len(trained) == n_scored
        assert [ids[t] for t in trained] == labels[a:b]
        if append_eos:  # EOS closes the response and carries the loss
            assert ids[-1] == labels[-1] == tok.eos_token_id
        elif template != "chat":
            assert tok.eos_token_id not in ids[a:]


def test_presets_quote_the_papers_and_flags_override():
    assert preset("alpaca") == TrainConfig()
    g = preset("instructdiff-general", max_steps=5, lora=True)
    assert (
        g.learning_rate,
        g.batch_size,
        g.epochs,
        g.warmup_ratio,
        g.weight_decay,
        g.scheduler,
    ) == (2e-5, 64, 10, 0.05, 0.01, "cosine")
    assert g.max_steps == 5 and g.lora
    assert set(PRESETS) >= {
        "alpaca",
        "instructdiff-general",
        "instructdiff-warmup",
        "tshirt",
        "cpu",
    }
    with pytest.raises(ValueError, match=r"unknown training preset 'tshrt'.*'tshirt'"):
        preset("tshrt")
    with pytest.raises(ValueError, match="unknown training option"):
        preset("alpaca", learning_rte=1.0)
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        TrainConfig(batch_size=3, micro_batch=2)


@pytest.fixture
def tiny_dir(tmp_path):
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    d = tmp_path / "base"
    make_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_train_writes_a_scorable_model_and_resumes(lora, tiny_dir, samples, tmp_path):
    # constant rate: the first half of a 4-step run is a 2-step run, so resuming can be compared
    cfg = TrainConfig(
        batch_size=2,
        max_steps=4,
        save_steps=2,
        learning_rate=1e-2,
        lora=lora,
        scheduler="constant",
        warmup_ratio=0.0,
    )
    out = tmp_path / "out"
    res = train(samples, str(tiny_dir), out, cfg, progress=False)
    assert res.steps == 4 and res.rows == 4 and res.rejected == {} and not res.reused
    assert not (out / "checkpoints").exists()  # finished: only the model is kept
    assert resolve_model(str(out)).kind == "local"
    base, tuned = load_model(str(tiny_dir)), load_model(str(out))
    assert tuned.info.tokenizer_hash == base.info.tokenizer_hash
    assert not any(
        n.startswith("base_model") or "lora" in n for n, _ in tuned.model.named_parameters()
    )
    diff = max(
        (p - q).abs().max().item()
        for p, q in zip(base.model.parameters(), tuned.model.parameters(), strict=True)
    )
    assert diff > 1e-4
    # finished: the same call returns at once; other settings refuse
    assert train(samples, str(tiny_dir), out, cfg, progress=False).reused
    with pytest.raises(RuntimeError, match="other settings"):
        train(samples, str(tiny_dir), out, TrainConfig(batch_size=2, max_steps=5), progress=False)
    # killed after the step-2 checkpoint: a rerun resumes there and ends with the same weights
    out2 = tmp_path / "out2"
    half = train(
        samples,
        str(tiny_dir),
        out2,
        dataclasses.replace(cfg, max_steps=2),
        progress=False,
        keep_checkpoints=True,
    )
    assert half.steps == 2 and (out2 / "checkpoints" / "checkpoint-2").is_dir()
    (out2 / "thresher-train.json").unlink()  # as if the process died right after the checkpoint
    for other in (
        dataclasses.replace(cfg, learning_rate=1e-3),
        dataclasses.replace(cfg, lora=not lora),
    ):  # not the run that wrote them
        with pytest.raises(RuntimeError, match="checkpoints of a training run with other settings"):
            train(samples, str(tiny_dir), out2, other, progress=False)
    with pytest.raises(RuntimeError, match="other settings or data"):
        train(samples[:3], str(tiny_dir), out2, cfg, progress=False)
    resumed = train(samples, str(tiny_dir), out2, cfg, progress=False)
    assert resumed.steps == 4
    again = load_model(str(out2)).model
    assert all(
        torch.allclose(p, q, atol=1e-6)
        for p, q in zip(tuned.model.parameters(), again.parameters(), strict=True)
    )


def test_loaded_model_is_copied_not_modified(tiny_dir, samples, tmp_path):
    lm = load_model(str(tiny_dir))
    before = [p.detach().clone() for p in lm.model.parameters()]
    train(
        samples,
        lm,
        tmp_path / "out",
        TrainConfig(batch_size=1, max_steps=2, learning_rate=1e-2),
        progress=False,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, lm.model.parameters(), strict=True))
    assert not lm.model.training


@pytest.mark.slow
def test_cli_train_then_score_with_the_trained_model(tiny_dir, samples, tmp_path, capsys):
    from thresher.cli import main

    data = tmp_path / "rows.jsonl"
    out = tmp_path / "tuned"
    recipe = tmp_path / "train.yaml"
    recipe.write_text("preset: cpu\nlora: true\nbatch_size: 2\nmax_steps: 9\n")
    # the YAML gives the recipe, a flag overrides one field of it
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        str(tiny_dir),
        "--out",
        str(out),
        "--config",
        str(recipe),
        "--max-steps",
        "2",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 steps" in printed and "preset cpu + LoRA" in printed and "EOS appended" in printed
    assert main(args) == 0 and "already finished, reused" in capsys.readouterr().out
    assert (
        main(
            [
                "score",
                "--data",
                str(data),
                "--model",
                str(out),
                "--method",
                "ppl",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "4 scored" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("  thresher ")


def test_shipped_training_recipe_is_valid():
    from pathlib import Path

    import yaml

    d = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "train" / "cpu-lora.yaml").read_text()
    )
    cfg = preset(d.pop("preset"), **d)
    assert cfg.lora and cfg.max_steps == 50 and cfg.learning_rate == PRESETS["cpu"]["learning_rate"]
