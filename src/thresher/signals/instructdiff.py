"""InstructDiff signals (Su et al., arXiv 2601.23006, §3.2; METHODS §7.2): how much a lightly
tuned ("calibrated") copy of the model changes the response's mean NLL and mean entropy.

    L_π(x, y) = -(1/|y|) Σ_t log π(y_t | x, y_<t)                      mean response NLL
    H_π(x, y) = (1/|y|) Σ_t H(π(· | x, y_<t))                           mean full-vocabulary entropy
    ΔNLL = L_inst - L_base                                              paper Eq. 1
    ΔH   = H_base - H_inst                                              paper Eq. 2 (= the code)

The reference code stores ΔNLL with the opposite sign (`base_nll - instruct_nll`); the trim
is symmetric, so the selected set does not depend on it (METHODS §7.5) except for which of
several rows with equal ΔNLL fall in a tail. `reference_diff_nll` and
`reference_diff_entropy` give the reference's own columns for `--reproduce` (METHODS §12.3). Pure numpy: the per-token log-probs and
entropies come from the two `cond` passes.
"""

from __future__ import annotations

import numpy as np

from thresher.passes import Ragged, ragged_mean


def mean_nll(logprob: Ragged) -> np.ndarray:
    """L_π: mean negative log-prob of the response tokens, nats; NaN for an empty row."""
    return -ragged_mean(logprob)


def mean_token_entropy(entropy: Ragged) -> np.ndarray:
    """H_π: mean predictive entropy over the response positions, nats; NaN for an empty row."""
    return ragged_mean(entropy)


def delta_nll(base_logprob: Ragged, inst_logprob: Ragged) -> np.ndarray:
    """ΔNLL = L_inst - L_base (paper Eq. 1); NaN where either row is empty or the two passes
    scored a different number of tokens (the models must share a tokenizer)."""
    out = mean_nll(inst_logprob) - mean_nll(base_logprob)
    out[base_logprob.lengths() != inst_logprob.lengths()] = np.nan
    return out


def delta_entropy(base_entropy: Ragged, inst_entropy: Ragged) -> np.ndarray:
    """ΔH = H_base - H_inst (paper Eq. 2): positive when tuning made the model more certain;
    NaN where either row is empty or the token counts differ."""
    out = mean_token_entropy(base_entropy) - mean_token_entropy(inst_entropy)
    out[base_entropy.lengths() != inst_entropy.lengths()] = np.nan
    return out


def reference_diff_nll(base_logprob: Ragged, inst_logprob: Ragged) -> np.ndarray:
    """The reference's `diff_nll = base_nll - instruct_nll` (`selection.py` @ 28adfe3), i.e. -ΔNLL
    of the paper. Each NLL is rounded to float32 first, as `scoring.py` stores
    `float(nll.item())` of a torch fp32 mean (rounding the float64 mean gives the correctly
    rounded fp32 value, within an ulp of torch's fp32 reduction); the difference is taken in
    float64, as the code's Python floats. NaN where either row is empty or the counts differ."""
    return _fp32_diff(mean_nll(base_logprob), mean_nll(inst_logprob), base_logprob, inst_logprob)


def reference_diff_entropy(base_entropy: Ragged, inst_entropy: Ragged) -> np.ndarray:
    """The reference's `diff_entropy = base_avg_entropy - instruct_avg_entropy` (= ΔH of the
    paper), with each mean rounded to float32 as `reference_diff_nll`."""
    return _fp32_diff(
        mean_token_entropy(base_entropy),
        mean_token_entropy(inst_entropy),
        base_entropy,
        inst_entropy,
    )


def _fp32_diff(base: np.ndarray, inst: np.ndarray, rb: Ragged, ri: Ragged) -> np.ndarray:
    out = base.astype(np.float32).astype(np.float64) - inst.astype(np.float32).astype(np.float64)
    out[rb.lengths() != ri.lengths()] = np.nan
    return out


def warmup_indices(n: int, alpha: float, seed: int) -> np.ndarray:
    """The seeded random warm-up subset (paper Eq. 4: D_warmup ⊂ D, |D_warmup| = α·N):
    `int(alpha * n)` distinct positions out of `n`, sorted, reproducible for a given seed."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: expected the warm-up fraction in (0, 1], e.g. 0.1")
    k = int(alpha * n)
    if k < 1:
        raise ValueError(
            f"alpha={alpha} of {n} samples is {alpha * n:.2f}, less than one sample to warm up on: "
            "raise alpha or give more data"
        )
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
