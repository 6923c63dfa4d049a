"""MADS-like activation tags (METHODS §6.2, a reconstruction): a sample carries the tag (layer,
neuron) when that neuron is strongly activated by it. Tags are sorted int arrays of global tag
ids (`layer_index * width + neuron`); everything here is numpy on the pooled activations.
"""

from __future__ import annotations

import numpy as np

from thresher.choices import check_choice

TAG_RULES = ("quantile", "topk", "zscore", "absolute")
WEIGHTS = ("none", "idf")


def tag_thresholds(pooled: np.ndarray, q: float, sample: int, seed: int) -> float:
    """tau_l: the q-quantile of all pooled values of one layer, over a seeded random subset of at
    most `sample` finite rows (numpy's linear interpolation)."""
    rows = threshold_rows(np.all(np.isfinite(pooled), axis=1), sample, seed)
    return quantile_threshold(pooled[rows], q)


def threshold_rows(finite: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """The rows tau_l is estimated on: at most `sample` of the finite rows, drawn with
    `default_rng(seed)`, ascending. Needs only which rows are finite, so a streamed pass picks
    them before reading any activation."""
    rows = np.flatnonzero(finite)
    if len(rows) == 0:
        raise ValueError(
            "no row of this layer has finite activations: nothing to set a threshold on"
        )
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=sample, replace=False))
    return rows


def quantile_threshold(values: np.ndarray, q: float) -> float:
    """The q-quantile of every value of the threshold rows [rows, width] (linear)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q={q}: expected a number in (0, 1), e.g. 0.99")
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


class NeuronMoments:
    """Per-neuron mean and population standard deviation over rows added in batches (Chan et
    al.'s pairwise update, float64), for the z-score rule over a pool read shard by shard."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if not len(x):
            return
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = len(x), mean, m2
            return
        n = self.n + len(x)
        delta = mean - self.mean
        self.mean = self.mean + delta * len(x) / n
        self.m2 = self.m2 + m2 + delta**2 * self.n * len(x) / n
        self.n = n

    def result(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            return np.zeros(width), np.zeros(width)
        return self.mean, np.sqrt(self.m2 / self.n)


def layer_tags(
    pooled: np.ndarray,
    rule: str,
    *,
    tau: float | None = None,
    k: int | None = None,
    z0: float | None = None,
    moments: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Neuron indices tagged per row of one layer [n, width]. A row with NaN gets no tag.

    quantile / absolute: p >= tau; topk: the k largest (ties by lower index), exactly k;
    zscore: per-neuron z over the rows >= z0 (a neuron with zero spread is never tagged), with
    the per-neuron (mean, std) of the whole pool in `moments` when `pooled` is one shard of it.
    """
    check_choice("tag_rule", rule, TAG_RULES)
    x = np.asarray(pooled, dtype=np.float64)
    ok = np.all(np.isfinite(x), axis=1)
    if rule in ("quantile", "absolute"):
        if tau is None:
            raise ValueError(f"tag_rule={rule!r} needs a threshold tau")
        hit = x >= tau
    elif rule == "topk":
        if k is None or not 1 <= k <= x.shape[1]:
            raise ValueError(f"topk k={k}: expected 1 <= k <= {x.shape[1]} (the layer's width)")
        order = np.argsort(-x, axis=1, kind="stable")[:, :k]
        hit = np.zeros(x.shape, dtype=bool)
        np.put_along_axis(hit, order, True, axis=1)
    else:
        if z0 is None:
            raise ValueError("tag_rule='zscore' needs z0, e.g. 3.0")
        if moments is not None:
            mu, sd = moments
        else:
            mu = x[ok].mean(axis=0) if ok.any() else np.zeros(x.shape[1])
            sd = x[ok].std(axis=0) if ok.any() else np.zeros(x.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, (x - mu) / np.where(sd > 0, sd, 1.0), -np.inf)
        hit = z >= z0
    hit[~ok] = False
    return [np.flatnonzero(h) for h in hit]


def merge_layers(per_layer: list[list[np.ndarray]], width: int) -> list[np.ndarray]:
    """Namespace each layer's neuron ids as (layer_index, j) -> layer_index * width + j."""
    n = len(per_layer[0])
    return [
        np.concatenate([t[i] + li * width for li, t in enumerate(per_layer)]).astype(np.int64)
        for i in range(n)
    ]


def document_frequency(tags: list[np.ndarray], n_tags: int) -> np.ndarray:
    """df(t) = number of samples carrying tag t."""
    flat = np.concatenate(tags) if tags else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=n_tags)


def keep_tags(df: np.ndarray, n_samples: int, min_df: int, max_df_frac: float) -> np.ndarray:
    """Tags kept for coverage: min_df <= df(t) <= max_df_frac * N (drops the near-universal
    ones); a tag nobody carries is never kept."""
    if min_df < 1 or not 0.0 < max_df_frac <= 1.0:
        raise ValueError(
            f"min_df={min_df}, max_df_frac={max_df_frac}: expected min_df >= 1 and 0 < max_df_frac <= 1"
        )
    return (df >= min_df) & (df <= max_df_frac * n_samples)


def filter_tags(tags: list[np.ndarray], kept: np.ndarray) -> list[np.ndarray]:
    return [t[kept[t]] for t in tags]


def tag_weights(df: np.ndarray, n_samples: int, weight: str) -> np.ndarray:
    """w(t): 1 for `none`; log(N / df) for `idf` (0 for tags nobody carries)."""
    check_choice("weight", weight, WEIGHTS)
    if weight == "none":
        return np.ones(len(df))
    with np.errstate(divide="ignore"):
        return np.where(df > 0, np.log(n_samples / np.maximum(df, 1)), 0.0)


def coverage_rate(tags: list[np.ndarray], chosen: list[int], universe: np.ndarray) -> float:
    """Fraction of the tag universe (tags kept for coverage) carried by at least one chosen sample."""
    n_universe = int(universe.sum())
    if n_universe == 0:
        return float("nan")
    covered = np.zeros(len(universe), dtype=bool)
    for i in chosen:
        covered[tags[i]] = True
    return float((covered & universe).sum() / n_universe)
