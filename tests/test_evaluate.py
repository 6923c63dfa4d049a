"""Evaluation numerics on models with closed forms, the held-out split, and task plumbing."""

from __future__ import annotations

import json
import math
import sys
import types
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from thresher import evaluate as ev
from thresher.data import Message, Sample
from tiny import FAMILIES, tiny_llama, uniform_llama


@dataclass
class Info:
    name: str = "tiny"
    path: str = "tiny"


@dataclass
class LM:
    model: object
    tokenizer: object
    info: Info


@pytest.fixture(scope="module")
def uniform():
    tok = FAMILIES["chatml"][0]()
    return LM(uniform_llama(tok), tok, Info())


def sample(i: int, instruction: str, response: str) -> Sample:
    return Sample(
        f"s{i}", (Message("user", instruction), Message("assistant", response)), instruction
    )


def test_nll_of_a_uniform_model_is_ln_v_and_empty_responses_are_skipped(uniform):
    v = len(uniform.tokenizer)
    samples = [
        sample(0, "Add 1 and 2.", "1 + 2 = 3."),
        sample(1, "Name a colour.", "red"),
        sample(2, "Say nothing.", ""),
    ]
    metrics, n, skipped, truncated = ev.response_nll(uniform, samples)
    assert n == 2 and skipped == Counter({"empty_response": 1}) and truncated == 0
    assert metrics["nll_token"] == pytest.approx(math.log(v), abs=1e-5)
    assert metrics["nll_sample"] == pytest.approx(math.log(v), abs=1e-5)


def test_nll_token_weighted_and_per_sample_means_by_hand(monkeypatch, uniform):
    # item A: two tokens of NLL 1 (mean 1); item B: one token of NLL 4 (mean 4); C failed
    lps = [np.array([-1.0, -1.0]), np.array([-4.0]), np.zeros(0)]
    monkeypatch.setattr(ev, "_scorer", lambda *a, **k: None)
    monkeypatch.setattr(
        ev,
        "_score",
        lambda *a, **k: (["ok", "ok", "error:RuntimeError"], lps, ["", "response", ""]),
    )
    metrics, n, skipped, truncated = ev.response_nll(
        uniform, [sample(i, "q", "a") for i in range(3)]
    )
    assert metrics["nll_token"] == pytest.approx(6 / 3)  # (1 + 1 + 4) / 3 tokens
    assert metrics["nll_sample"] == pytest.approx((1 + 4) / 2)
    assert n == 2 and skipped == Counter({"error:RuntimeError": 1}) and truncated == 1


def test_choose_sum_and_per_byte_with_the_tie_rule():
    assert ev.choose(np.array([-3.0, -2.0, -2.0]), np.array([3.0, 1.0, 4.0])) == (
        1,
        2,
    )  # tie 1/2 -> 1; per byte -1, -2, -0.5
    assert ev.choose(np.array([-2.0, -2.0]), np.array([2.0, 2.0])) == (
        0,
        0,
    )  # full tie -> the first choice


def test_multiple_choice_on_a_uniform_model(uniform):
    tok = uniform.tokenizer
    v = math.log(len(tok))
    long_, short = "the quick brown fox jumps", "no"
    n_long, n_short = (
        len(tok(" " + c, add_special_tokens=False).input_ids) for c in (long_, short)
    )
    assert n_long > n_short
    items = [
        ev.MCItem(
            "a", "Pick one.", (long_, short), 1
        ),  # fewer tokens -> higher summed log-likelihood
        ev.MCItem("b", "Pick one.", ("yes", "yes"), 1),  # identical -> tie -> choice 0 -> wrong
        ev.MCItem("c", "Pick one.", ("yes", "yes"), 0),  # tie -> choice 0 -> right
    ]
    metrics, n, skipped = ev.multiple_choice(uniform, items)
    assert n == 3 and not skipped
    assert metrics["acc"] == pytest.approx(2 / 3)
    # per byte: -n_tokens * ln V / bytes; the larger (less negative) wins
    per_byte = [
        -n_long * v / len((" " + long_).encode()),
        -n_short * v / len((" " + short).encode()),
    ]
    first_right = int(np.argmax(per_byte)) == 1
    assert metrics["acc_norm"] == pytest.approx((first_right + 0 + 1) / 3)
    assert metrics["chance"] == pytest.approx(0.5)


def test_read_mc_skips_bad_items_with_reasons(tmp_path):
    rows = [
        {"question": "q1", "choices": ["a", "b"], "answer": 1},
        {"question": "q2", "choices": ["a", "b", "c"], "answer": "C"},
        {"question": "", "choices": ["a", "b"], "answer": 0},
        {"question": "q4", "choices": ["a"], "answer": 0},
        {"question": "q5", "choices": ["a", "b"], "answer": 5},
    ]
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad\n")
    items, skipped = ev.read_mc(p)
    assert [i.answer for i in items] == [1, 2]
    assert skipped == Counter(
        {"missing_field:question": 1, "bad_choices": 1, "bad_answer": 1, "malformed_json": 1}
    )


def test_gsm8k_numbers():
    assert ev.gold_number("so 9 * 2 = 18\n#### 1,234") == "1234"
    assert ev.gold_number("no marker 5") is None
    assert ev.last_number("It is 3, then -2.50 dollars.") == "-2.5"
    assert ev.last_number("18.00") == ev.gold_number("#### 18")
    assert ev.last_number("no digits") is None


def test_gsm8k_exact_cuts_at_the_next_turn_and_compares_the_last_number():
    tok = FAMILIES["chatml"][0]()

    class Echo(torch.nn.Module):  # "generates" a fixed continuation after the prompt
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

        def generate(self, input_ids, **kwargs):
            cont = torch.tensor([tok(self.text, add_special_tokens=False).input_ids])
            return torch.cat([input_ids, cont], dim=1)

    samples = [sample(0, "Eggs?", "9 * 2 = 18\n#### 18"), sample(1, "No gold.", "nothing")]
    right = LM(Echo("She makes 18 dollars.\n\n### Instruction:\n5"), tok, Info())
    metrics, n, skipped = ev.gsm8k_exact(right, samples)
    assert metrics["exact_match"] == 1.0 and n == 1 and skipped == Counter({"no_gold_number": 1})
    wrong = LM(Echo("She makes 19 dollars."), tok, Info())
    assert ev.gsm8k_exact(wrong, samples)[0]["exact_match"] == 0.0


def rows(n: int) -> list[Sample]:
    out = [sample(i, f"instruction {i}", f"response {i}") for i in range(n)]
    # three copies of one example under other ids: content duplicates
    return out + [sample(100 + k, "instruction 0", "response 0") for k in range(3)]


def test_split_heldout_never_overlaps_by_id_or_content():
    samples = rows(200)
    for seed in range(3):
        pool, held = ev.split_heldout(samples, 0.1, seed)
        assert len(pool) + len(held) == len(samples)
        assert abs(len(held) - 20) <= 4  # copies of one example move together
        assert not {s.id for s in pool} & {s.id for s in held}
        assert not {ev.content_hash(s) for s in pool} & {ev.content_hash(s) for s in held}
    assert ev.split_heldout(samples, 0.1, 0) == ev.split_heldout(samples, 0.1, 0)
    assert ev.split_heldout(samples, 0.1, 0)[1] != ev.split_heldout(samples, 0.1, 1)[1]


def test_check_disjoint_catches_shared_ids_and_shared_content():
    a = [sample(0, "q", "a"), sample(1, "q1", "a1")]
    with pytest.raises(ValueError, match="1 shared ids"):
        ev.check_disjoint(a, [sample(1, "other", "text")])
    with pytest.raises(ValueError, match="1 held-out rows with training content"):
        ev.check_disjoint(a, [sample(7, "q", "a")])
    ev.check_disjoint(a, [sample(7, "q2", "a2")])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ev.split_heldout(a, 1.0)


def test_write_split_round_trips_records(tmp_path):
    src = tmp_path / "pool.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": f"i{k}", "input": "", "output": f"o{k}"}) + "\n"
            for k in range(50)
        )
    )
    pool_path, held_path = ev.write_split(str(src), tmp_path / "split", 0.2, seed=3)
    pool = [json.loads(x) for x in pool_path.read_text().splitlines()]
    held = [json.loads(x) for x in held_path.read_text().splitlines()]
    assert len(held) == 10 and len(pool) == 40
    assert not {r["instruction"] for r in pool} & {r["instruction"] for r in held}


def test_parse_task_errors(tmp_path):
    with pytest.raises(ValueError, match="KIND:TARGET"):
        ev.parse_task("accuracy:file.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ev.parse_task(f"nll:{tmp_path / 'missing.jsonl'}")
    assert ev.parse_task("lm_eval:hellaswag,arc_easy") == ev.TaskSpec(
        "lm_eval", "hellaswag,arc_easy"
    )


def test_resolve_target_prefers_a_trained_model_in_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"config": {"model": {"name": "smollm2-135m"}}}))
    assert ev.resolve_target(str(run)) == ("smollm2-135m", run)
    (run / "passes" / "x").mkdir(parents=True)
    (run / "passes" / "x" / "config.json").write_text("{}")  # not a model
    assert ev.resolve_target(str(run))[0] == "smollm2-135m"
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    assert ev.resolve_target(str(run)) == (str(run / "model"), run)
    assert ev.resolve_target("gpt2") == ("gpt2", None)


def test_run_task_skips_rows_of_the_training_pool(tmp_path):
    tok = FAMILIES["chatml"][0]()
    lm = LM(tiny_llama(tok), tok, Info())
    p = tmp_path / "gsm.jsonl"
    p.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {k} + 1?", "answer": f"{k} + 1 = {k + 1}\n#### {k + 1}"}
            )
            + "\n"
            for k in range(4)
        )
    )
    read = ev.read_pairs(str(p), None, None)
    exclude = {ev.content_hash(read.samples[0])}
    r = ev.run_task(lm, ev.TaskSpec("nll", str(p)), exclude=exclude)
    assert r.evaluated == 3 and r.skipped == {"in_training_pool": 1} and r.headline == "nll_token"
    assert math.isfinite(r.metrics["nll_token"]) and r.metrics["tokens"] > 0
    assert "in_training_pool: 1" in ev.format_results([r])


def test_lm_eval_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"requirements/eval\.txt"):
        ev.lm_eval_tasks("model", ["hellaswag"], limit=5)


def test_lm_eval_results_are_reported_with_counts(monkeypatch):
    calls = {}

    def simple_evaluate(**kwargs):
        calls.update(kwargs)
        return {
            "results": {
                "hellaswag": {
                    "alias": "hellaswag",
                    "acc,none": 0.25,
                    "acc_stderr,none": 0.1,
                    "acc_norm,none": 0.3,
                }
            },
            "n-samples": {"hellaswag": {"original": 100, "effective": 5}},
        }

    monkeypatch.setitem(
        sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate)
    )
    [r] = ev.lm_eval_tasks("/models/m", ["hellaswag"], limit=5)
    assert (
        calls["model"] == "hf"
        and calls["model_args"]["pretrained"] == "/models/m"
        and calls["limit"] == 5
    )
    assert r.metrics == {"acc": 0.25, "acc_norm": 0.3} and r.headline == "acc"
    assert r.evaluated == 5 and r.skipped == {"over_limit": 95}
    assert "task_manager" not in calls


def test_lm_eval_local_task_yamls_go_through_a_task_manager(monkeypatch, tmp_path):
    calls, made = {}, []

    class TaskManager:
        def __init__(self, include_path=None):
            made.append(include_path)

    def simple_evaluate(**kwargs):
        calls.update(kwargs)
        return {
            "results": {"my_qa": {"exact_match,none": 0.5}},
            "n-samples": {"my_qa": {"original": 4, "effective": 4}},
        }

    fake = types.SimpleNamespace(
        simple_evaluate=simple_evaluate, tasks=types.SimpleNamespace(TaskManager=TaskManager)
    )
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", fake.tasks)
    [r] = ev.lm_eval_tasks("/models/m", ["my_qa"], limit=None, include=str(tmp_path))
    assert (
        made == [str(tmp_path)]
        and isinstance(calls["task_manager"], TaskManager)
        and calls["tasks"] == ["my_qa"]
    )
    assert r.task == "lm_eval:my_qa" and r.metrics == {"exact_match": 0.5}
    with pytest.raises(ValueError, match="not a folder"):
        ev.lm_eval_tasks("/models/m", ["my_qa"], limit=None, include=str(tmp_path / "missing"))
