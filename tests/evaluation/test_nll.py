"""Held-out response NLL on models with closed forms and on hand-made log-probs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from lmstub import sample, uniform_lm
from thresher.evaluation import nll, tasks


def test_nll_of_a_uniform_model_is_ln_v_and_empty_responses_are_skipped():
    uniform = uniform_lm()
    v = len(uniform.tokenizer)
    samples = [
        sample(0, "Add 1 and 2.", "1 + 2 = 3."),
        sample(1, "Name a colour.", "red"),
        sample(2, "Say nothing.", ""),
    ]
    metrics, n, skipped, truncated = nll.response_nll(uniform, samples)
    assert n == 2 and skipped == Counter({"empty_response": 1}) and truncated == 0
    assert metrics["nll_token"] == pytest.approx(math.log(v), abs=1e-5)
    assert metrics["nll_sample"] == pytest.approx(math.log(v), abs=1e-5)
    # every token costs ln V: no spread between items
    assert metrics["nll_token_stderr"] == pytest.approx(0.0, abs=1e-5)


def test_nll_token_weighted_and_per_sample_means_by_hand(monkeypatch):
    uniform = uniform_lm()
    # item A: two tokens of NLL 1 (mean 1); item B: one token of NLL 4 (mean 4); C failed
    lps = [np.array([-1.0, -1.0]), np.array([-4.0]), np.zeros(0)]
    monkeypatch.setattr(nll, "cond_scorer", lambda *a, **k: None)
    monkeypatch.setattr(
        nll,
        "score_samples",
        lambda *a, **k: (["ok", "ok", "error:RuntimeError"], lps, ["", "response", ""]),
    )
    metrics, n, skipped, truncated = nll.response_nll(
        uniform, [sample(i, "q", "a") for i in range(3)]
    )
    assert metrics["nll_token"] == pytest.approx(6 / 3)  # (1 + 1 + 4) / 3 tokens
    assert metrics["nll_sample"] == pytest.approx((1 + 4) / 2)
    # ratio stderr: R = 2; residuals x - R t = 2 - 4, 4 - 2; sqrt((4 + 4) / (2 * 1)) / mean(t) 1.5
    assert metrics["nll_token_stderr"] == pytest.approx(2 / 1.5)
    # per-item means 1 and 4: sample sd 2.1213 / sqrt(2)
    assert metrics["nll_sample_stderr"] == pytest.approx(1.5)
    assert n == 2 and skipped == Counter({"error:RuntimeError": 1}) and truncated == 1


def test_stderr_helpers_by_hand():
    assert tasks.mean_stderr([1.0, 0.0, 1.0]) == pytest.approx(1 / 3)  # sqrt(p(1-p)/(n-1))
    assert math.isnan(tasks.mean_stderr([1.0])) and math.isnan(tasks.ratio_stderr([2.0], [1.0]))
    # equal per-token rates: the ratio has no spread whatever the lengths
    assert tasks.ratio_stderr([2.0, 6.0], [1.0, 3.0]) == 0.0
    assert tasks.split_stderr({"acc": 0.5, "acc_stderr": 0.1, "chance": 0.25}) == (
        {"acc": 0.5, "chance": 0.25},
        {"acc": 0.1},
    )
