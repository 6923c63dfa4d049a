"""MIWV, the Model Instruction Weakness Value (Jiang et al., AAAI-26; METHODS §3).

    L(y | x)    = mean response loss given the prompt                 (the `cond` pass)
    L(y | x, C) = mean response loss after a one-shot demonstration C (the `oneshot` pass)
    MIWV        = L(y | x, C) − L(y | x)                              (Eq. 8; high = weak)

Variants (§3.6): ICL + IFD = L(y | x, C) / L(y) and High Prompt Loss = L(y | x, C). Both losses
must read the same response tokens; a row where the two passes scored different counts, or
nothing, gets NaN, never a made-up number.
"""

from __future__ import annotations

import numpy as np

from thresher.passes import Ragged, ragged_mean

VARIANTS = ("miwv", "icl_ifd", "prompt_loss")


def response_loss(logprob: Ragged) -> np.ndarray:
    """Mean negative log-probability per row, in nats; NaN for an empty row."""
    return -ragged_mean(logprob)


def _same_tokens(a: Ragged, b: Ragged) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(
            f"{len(a)} rows vs {len(b)} rows: both passes must be aligned to the same sample ids"
        )
    return (a.lengths() == b.lengths()) & (a.lengths() > 0)


def miwv(oneshot: Ragged, zero_shot: Ragged) -> np.ndarray:
    """L(y|x,C) − L(y|x); NaN where the passes scored different or no response tokens."""
    out = np.full(len(oneshot), np.nan)
    ok = _same_tokens(oneshot, zero_shot)
    out[ok] = (response_loss(oneshot) - response_loss(zero_shot))[ok]
    return out


def icl_ifd(oneshot: Ragged, direct: Ragged) -> np.ndarray:
    """L(y|x,C) / L(y|C) (`direct` = the demonstration then the response, METHODS §3.6) or
    L(y|x,C) / L(y) (`direct` = the response alone): the IFD with the retrieved demonstration in
    context. NaN where the passes scored different or no tokens, or the denominator is <= 0."""
    out = np.full(len(oneshot), np.nan)
    l_c, l_d = response_loss(oneshot), response_loss(direct)
    ok = _same_tokens(oneshot, direct) & (l_d > 0)
    out[ok] = l_c[ok] / l_d[ok]
    return out


def prompt_loss(oneshot: Ragged) -> np.ndarray:
    """L(y|x,C) alone (the paper's "High Prompt Loss" ablation); NaN for an empty row."""
    return response_loss(oneshot)
