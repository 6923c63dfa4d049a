"""Baseline signals: perplexity, mean predictive entropy, response length (METHODS §2.2-2.3)."""

from __future__ import annotations

import numpy as np

from thresher.passes import Ragged, ragged_mean

# The length key below stays exact (one character more is a larger float) while
# (max_tokens + 1) * (max_chars + 1) < 2**52 (float64 keeps 52 fraction bits).
_EXACT_KEY_LIMIT = 2**52


def perplexity(logprob: Ragged) -> np.ndarray:
    """PPL(y|x) = exp(mean response-token loss) (InstructDiff App. B); NaN for an empty row."""
    return np.exp(-ragged_mean(logprob))


def mean_entropy(entropy: Ragged) -> np.ndarray:
    """Mean per-token predictive entropy over the response, in nats (InstructDiff §3.2 H);
    NaN for an empty row."""
    return ragged_mean(entropy)


def response_length(n_response_tokens: np.ndarray, n_chars: np.ndarray) -> np.ndarray:
    """Long Is More's length as one sortable key: response tokens, then characters.

    The integer part is the token count; the fraction `chars / (max_chars + 1)` is below 1 and
    only orders rows with the same token count (METHODS §2.2: ties by characters, then id).
    So `floor(key)` is the token count, and top-k on the key needs no second column.
    """
    tokens = np.asarray(n_response_tokens, dtype=np.float64)
    chars = np.asarray(n_chars, dtype=np.float64)
    if tokens.shape != chars.shape or tokens.ndim != 1:
        raise ValueError(
            f"n_response_tokens has shape {tokens.shape} and n_chars {chars.shape}: "
            "expected two 1-D arrays with one entry per sample"
        )
    if (tokens < 0).any() or (chars < 0).any():
        raise ValueError("token and character counts must be >= 0; got a negative count")
    top = chars.max(initial=0.0) + 1.0
    if (tokens.max(initial=0.0) + 1.0) * top >= _EXACT_KEY_LIMIT:
        raise ValueError(
            f"counts too large for an exact length key: up to {tokens.max():.0f} tokens and "
            f"{top - 1:.0f} characters, expected (tokens + 1) * (chars + 1) < 2**52"
        )
    return tokens + chars / top
