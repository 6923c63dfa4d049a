"""Multiple choice by continuation log-likelihood: the tie rule, a uniform model, the reader."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from lmstub import uniform_lm
from thresher.evaluation import mc


def test_choose_sum_and_per_byte_with_the_tie_rule():
    assert mc.choose(np.array([-3.0, -2.0, -2.0]), np.array([3.0, 1.0, 4.0])) == (
        1,
        2,
    )  # tie 1/2 -> 1; per byte -1, -2, -0.5
    assert mc.choose(np.array([-2.0, -2.0]), np.array([2.0, 2.0])) == (
        0,
        0,
    )  # full tie -> the first choice


def test_multiple_choice_on_a_uniform_model():
    uniform = uniform_lm()
    tok = uniform.tokenizer
    v = math.log(len(tok))
    long_, short = "the quick brown fox jumps", "no"
    n_long, n_short = (
        len(tok(" " + c, add_special_tokens=False).input_ids) for c in (long_, short)
    )
    assert n_long > n_short
    items = [
        mc.MCItem(
            "a", "Pick one.", (long_, short), 1
        ),  # fewer tokens -> higher summed log-likelihood
        mc.MCItem("b", "Pick one.", ("yes", "yes"), 1),  # identical -> tie -> choice 0 -> wrong
        mc.MCItem("c", "Pick one.", ("yes", "yes"), 0),  # tie -> choice 0 -> right
    ]
    metrics, n, skipped = mc.multiple_choice(uniform, items)
    assert n == 3 and not skipped
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 2))  # p(1-p)/(n-1)
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
    items, skipped = mc.read_mc(p)
    assert [i.answer for i in items] == [1, 2]
    assert skipped == Counter(
        {"missing_field:question": 1, "bad_choices": 1, "bad_answer": 1, "malformed_json": 1}
    )
