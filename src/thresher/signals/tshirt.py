"""T-SHIRT signals (Fu, Hamman, Dutta, NeurIPS 2025; METHODS §4): token informativeness,
Selective-IFD over perturbed copies, and the dataset-wide top-k% threshold.

    Δ_t      = log p(y_t | x, y_<t) − log p(y_t | y_<t)              (token PMI)
    S-IFD_k  = exp(−Σ_t w_t Δ_t / Σ_t w_t),  w_t = [|Δ_t| > τ_k]     (count clamped to 1)
    τ_k      = numpy.percentile(|Δ| over every token of every noisy copy, (1 − k)·100)

The reference code stores pmi = −Δ, so S-IFD = exp(mean selected pmi); the same number. Copies
are rows of an [M, T] array. The threshold is found exactly in bounded memory: a two-pass radix
select on the float32 bit patterns of |Δ| (monotonic for non-negative floats), read from any
re-iterable source of chunks, then numpy's own linear interpolation between the two order
statistics, so the value is bit-for-bit `np.percentile` of the same float32 values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

_BINS = 1 << 16


def token_delta(cond: np.ndarray, uncond: np.ndarray) -> np.ndarray:
    """Δ per copy and token, [M, T_u], in float32 as the reference subtracts its float32 losses.

    `cond` [M, T_c] and `uncond` [M, T_u] hold log-probs. Without a document-start token the
    unconditioned pass cannot score the first response token (GPT-2, reproduce mode), so
    T_c = T_u + 1 and the first conditional token is dropped (the reference's `offset = 1`)."""
    cond, uncond = np.asarray(cond, np.float32), np.asarray(uncond, np.float32)
    offset = cond.shape[1] - uncond.shape[1]
    if cond.shape[0] != uncond.shape[0] or offset not in (0, 1):
        raise ValueError(
            f"cond {cond.shape} and uncond {uncond.shape}: expected the same copies and T_c = T_u or T_u + 1"
        )
    return cond[:, offset:] - uncond


def copy_ifd(cond: np.ndarray, uncond: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """IFD of each copy as the reference computes it: PPL(y|x) / PPL(y) over each pass's own
    tokens (T and T − 1 in reproduce mode on GPT-2). NaN for a copy with no tokens.
    `dtype=np.float32`: `exp(mean cond loss) / exp(mean uncond loss)` in float32, as the code."""
    cond, uncond = np.asarray(cond, dtype), np.asarray(uncond, dtype)
    if cond.shape[1] == 0 or uncond.shape[1] == 0:
        return np.full(cond.shape[0], np.nan)
    if dtype is np.float32:
        loss_c, loss_u = -cond.mean(axis=1, dtype=dtype), -uncond.mean(axis=1, dtype=dtype)
        return np.exp(loss_c) / np.exp(loss_u)
    return np.exp(uncond.mean(axis=1) - cond.mean(axis=1))


def sifd(delta: np.ndarray, threshold: float, dtype: type = np.float64) -> np.ndarray:
    """S-IFD of each copy: exp(−mean Δ over tokens with |Δ| > threshold), strict as the reference;
    a copy where no token survives gets count 1 and sum 0, so S-IFD = 1 (reference clamp).
    `dtype=np.float32` computes as the reference's torch code: the threshold compared in float32
    (a Python float against a float32 tensor) and the mean and exp in float32."""
    delta = np.asarray(delta, dtype)
    keep = np.abs(delta) > dtype(threshold)
    counts = np.maximum(keep.sum(axis=1), 1).astype(dtype)
    return np.exp(-np.where(keep, delta, dtype(0)).sum(axis=1, dtype=dtype) / counts)


def copy_moments(values: np.ndarray, dtype: type = np.float64) -> tuple[float, float]:
    """μ̂ and σ̂ over copies: mean and population standard deviation (1/M, the poster's Eq. 4 and
    the code's `std(unbiased=False)`), in `dtype` (the reference's torch mean and std of S-IFD
    are float32). NaN for no copies."""
    values = np.asarray(values, dtype)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean(dtype=dtype)), float(values.std(dtype=dtype))


def abs_percentile(chunks: Callable[[], Iterable[np.ndarray]], q: float) -> float:
    """`np.percentile(np.abs(all values), q)` (linear) over the float32 values yielded by
    `chunks()`, exactly, holding one chunk and two 65,536-bin histograms at a time.

    `chunks` is called twice (two passes). Raises on no values or a non-finite value."""
    hist = np.zeros(_BINS, np.int64)
    n = 0
    for c in chunks():
        bits = _abs_bits(c)
        hist += np.bincount(bits >> 16, minlength=_BINS)
        n += bits.size
    if n == 0:
        raise ValueError("no token values to take a percentile of: every noisy copy is empty")
    vi = (n - 1) * np.true_divide(q, 100)  # numpy's 'linear' virtual index
    lo = int(np.floor(vi))
    if lo >= n - 1:
        return float(_order_stats(chunks, hist, [n - 1])[0])
    a, b = _order_stats(chunks, hist, [lo, lo + 1])
    # numpy's interpolation on a two-element array with the same gamma is numpy's own _lerp
    return float(np.quantile(np.array([a, b], np.float64), vi - np.floor(vi)))


def _abs_bits(chunk: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(chunk, np.float32)).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(
            "a token value is NaN or infinite: rows with non-finite log-probs must be rejected first"
        )
    return a.view(np.uint32)


def _order_stats(
    chunks: Callable[[], Iterable[np.ndarray]], hist: np.ndarray, ranks: list[int]
) -> list[np.float32]:
    """Values at 0-based `ranks` of the ascending order: the high 16 bits come from `hist`, the
    low 16 bits from a second pass over the chunks restricted to those high-bit bins."""
    cum = np.cumsum(hist)
    tops = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    low = {t: np.zeros(_BINS, np.int64) for t in set(tops)}
    for c in chunks():
        bits = _abs_bits(c)
        for t, h in low.items():
            h += np.bincount(bits[(bits >> 16) == t] & 0xFFFF, minlength=_BINS)
    out = []
    for r, t in zip(ranks, tops, strict=True):
        within = r - (int(cum[t - 1]) if t else 0)
        lo16 = int(np.searchsorted(np.cumsum(low[t]), within, side="right"))
        out.append(np.array([(t << 16) | lo16], np.uint32).view(np.float32)[0])
    return out
