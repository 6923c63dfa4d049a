"""Baseline signals on hand-computed arrays (METHODS §2.2-2.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thresher.passes import Ragged
from thresher.selectors.topk import top_k
from thresher.signals.basic import mean_entropy, perplexity, response_length


def test_perplexity_golden_and_nan_for_empty() -> None:
    # [-1, -3] -> mean NLL 2 -> exp(2) = 7.38905609893065;  [-0.5] -> exp(0.5) = 1.6487212707001282
    out = perplexity(Ragged.from_rows([[-1.0, -3.0], [-0.5], []]))
    np.testing.assert_allclose(out[:2], [7.38905609893065, 1.6487212707001282], rtol=1e-15)
    assert np.isnan(out[2])


def test_perplexity_of_uniform_model_is_vocab_size() -> None:
    # every log-prob -ln V -> exp(ln V) = V
    out = perplexity(Ragged.from_rows([[-math.log(32000)] * 4]))
    np.testing.assert_allclose(out, [32000.0], rtol=1e-12)


def test_mean_entropy_golden_and_nan_for_empty() -> None:
    # [1, 2, 3] -> 2;  [0.5] -> 0.5;  [] -> NaN
    out = mean_entropy(Ragged.from_rows([[1.0, 2.0, 3.0], [0.5], []]))
    np.testing.assert_array_equal(out, [2.0, 0.5, np.nan])


def test_response_length_key_orders_tokens_then_chars() -> None:
    # max chars 99 -> fraction chars / 100:  10 + 0.40,  10 + 0.55,  3 + 0.99,  0 + 0
    key = response_length(np.array([10, 10, 3, 0]), np.array([40, 55, 99, 0]))
    np.testing.assert_allclose(key, [10.40, 10.55, 3.99, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(np.floor(key), [10, 10, 3, 0])  # the integer part is tokens
    # 3 tokens with many characters still ranks below 10 tokens with few
    sel = top_k(["a", "b", "c", "d"], key, 3)
    assert sel.ids == ("b", "a", "c")


def test_response_length_equal_tokens_and_chars_tie_by_id() -> None:
    key = response_length(np.array([5, 5, 5]), np.array([20, 20, 9]))
    assert top_k(["z", "m", "a"], key, 3).ids == ("m", "z", "a")


def test_response_length_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="shape"):
        response_length(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="negative"):
        response_length(np.array([1, -2]), np.array([1, 2]))
