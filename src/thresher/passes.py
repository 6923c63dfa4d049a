"""Passes: what one forward pass of one model over one view of every sample computes.

A `PassSpec` is frozen and hashable: it is the unit of caching. A pass yields `TokenStats`
per sample: the log-probability of every scored target token, optionally the predictive
entropy at those positions, optionally activations pooled per layer inside the pass, and
the token counts. Scored tokens are stored as ragged arrays (flat values + row offsets),
the same layout Arrow uses for list columns, so that signals can reduce them with numpy
without Python loops.

This module imports no torch: it is shared by signals (pure numpy) and backends.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field

import numpy as np

# Bump when the meaning of a stored pass changes (new rendering rule, new reduction...):
# every cache key includes it, so old shards are refused instead of silently mixed.
# 2: pooled activations stored as float32 (float16 overflowed on Gemma-3's hidden states)
PASS_VERSION = 2

VIEWS = ("cond", "uncond", "oneshot", "oneshot_uncond", "instruction")
DEMO_VIEWS = ("oneshot", "oneshot_uncond")  # views rendered with a demonstration (MIWV)
FIELDS = ("logprob", "entropy", "hidden", "mlp")
# drift: span mean minus the sequence's first-token state (NAIT, METHODS §5.3);
# frac_above: fraction of span tokens whose activation exceeds `pool_threshold` (MADS §6.2)
POOLS = ("mean", "max", "first", "last", "drift", "frac_above")
POOL_SPANS = ("prompt", "response", "all")
# where the `mlp` field reads a block's MLP: "act" = the activation function's output (SiLU(gate_proj x)
# in Llama-style MLPs); "down_proj_input" = what the down projection reads (SiLU(gate) * up when gated)
MLP_TAPS = ("act", "down_proj_input")
TRUNCATIONS = ("prompt_first", "right", "reject")
# "exact": prompt and response tokenized separately, ids concatenated (the default).
# The others follow a reference implementation's string-based boundary rule (reproduce mode).
BOUNDARIES = ("exact", "cherry", "superfiltering", "instructdiff")


@dataclass(frozen=True)
class PassSpec:
    """One forward pass of `model` over `view` of every sample.

    `fields` ⊆ {logprob, entropy, hidden, mlp}. `layers` are 0-based decoder layer indices
    whose hidden state (`hidden`) or MLP activation (`mlp`) is pooled over `pool_span`
    with `pool`. `max_length` counts every token of the view, BOS included.
    """

    model: str
    view: str = "cond"
    template: str = "alpaca"
    fields: tuple[str, ...] = ("logprob",)
    layers: tuple[int, ...] = ()
    max_length: int = 512
    truncation: str = "prompt_first"
    boundary: str = "exact"
    append_eos: bool = False
    pool: str = "mean"
    pool_span: str = "response"
    # T-SHIRT neighbourhood perturbation: `noise_copies` copies of each row, each with uniform
    # noise U(-e, e), e = noise_alpha / sqrt(L * d), added to the input embeddings; seeded by
    # (noise_seed, sample id, copy). 0 copies = the clean pass.
    noise_alpha: float = 0.0
    noise_copies: int = 0
    noise_seed: int = 42
    pool_threshold: float | None = None  # only for pool="frac_above"
    mlp_tap: str = "act"  # one of MLP_TAPS; only read with fields containing "mlp"

    def __post_init__(self) -> None:
        check_choice("view", self.view, VIEWS)
        for f in self.fields:
            check_choice("fields", f, FIELDS)
        check_choice("pool", self.pool, POOLS)
        check_choice("pool_span", self.pool_span, POOL_SPANS)
        check_choice("mlp_tap", self.mlp_tap, MLP_TAPS)
        check_choice("truncation", self.truncation, TRUNCATIONS)
        check_choice("boundary", self.boundary, BOUNDARIES)
        if self.max_length < 4:
            raise ValueError(
                f"max_length={self.max_length} is too small: expected at least 4 tokens"
            )
        if ("hidden" in self.fields or "mlp" in self.fields) and not self.layers:
            raise ValueError(
                f"fields={list(self.fields)} asks for activations but layers=() is empty: "
                "name the decoder layers to pool, e.g. layers=(0, 5, 11)"
            )
        if self.mlp_tap != "act" and "mlp" not in self.fields:
            raise ValueError(
                f"mlp_tap={self.mlp_tap!r} says where to read the MLP, but fields={list(self.fields)} has no 'mlp'"
            )
        if (self.pool == "frac_above") != (self.pool_threshold is not None):
            raise ValueError(
                f"pool={self.pool!r} with pool_threshold={self.pool_threshold!r}: pool_threshold is "
                "required by pool='frac_above' and meaningless otherwise"
            )
        if self.noise_copies < 0 or self.noise_alpha < 0:
            raise ValueError(
                f"noise_copies={self.noise_copies} and noise_alpha={self.noise_alpha}: expected both >= 0"
            )
        if self.noise_copies and (
            self.view not in ("cond", "uncond") or tuple(self.fields) != ("logprob",)
        ):
            raise ValueError(
                f"noisy copies (noise_copies={self.noise_copies}) are scored for the cond and uncond views with "
                f"fields=('logprob',) only, not view={self.view!r} fields={list(self.fields)}"
            )
        if self.noise_alpha and not self.noise_copies:
            raise ValueError(
                f"noise_alpha={self.noise_alpha} needs noise_copies >= 1 (how many perturbed copies to score)"
            )
        if self.boundary != "exact" and self.view not in ("cond", "uncond"):
            raise ValueError(
                f"boundary={self.boundary!r} reproduces a reference's IFD passes and applies to the "
                f"cond and uncond views only, not view={self.view!r}"
            )

    @property
    def scored_span(self) -> str:
        """Which span's tokens get a log-prob: the prompt for `instruction`, else the response."""
        return "prompt" if self.view == "instruction" else "response"

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if d["pool_threshold"] is None:  # absent unless used, so earlier cache keys stay valid
            del d["pool_threshold"]
        if d["mlp_tap"] == "act":
            del d["mlp_tap"]
        if not self.noise_copies:  # likewise for the T-SHIRT noise settings of a clean pass
            for k in ("noise_alpha", "noise_copies", "noise_seed"):
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PassSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def name(self) -> str:
        """A short human-readable label, e.g. `cond/alpaca`."""
        return f"{self.view}/{self.template}" + (
            f"/noisy{self.noise_copies}" if self.noise_copies else ""
        )


def check_choice(what: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Raise naming the value, the choices and the nearest one when `value` is not a choice."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
        raise ValueError(
            f"{what}={value!r} is not one of {list(choices)}"
            + (f"; did you mean {close[0]!r}?" if close else "")
        )


@dataclass
class Ragged:
    """Variable-length rows stored flat: row i is `values[offsets[i]:offsets[i+1]]`."""

    values: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if self.offsets[-1] != len(self.values):
            raise ValueError(
                f"offsets end at {self.offsets[-1]} but there are {len(self.values)} values"
            )

    @classmethod
    def from_rows(cls, rows: list, dtype: type = np.float64) -> Ragged:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = (
            np.concatenate([np.asarray(r, dtype=dtype) for r in rows])
            if len(rows) and offsets[-1]
            else np.zeros(0, dtype=dtype)
        )
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def rows(self) -> list[np.ndarray]:
        return [self.row(i) for i in range(len(self))]

    def take(self, index: np.ndarray) -> Ragged:
        return Ragged.from_rows([self.row(int(i)) for i in index], dtype=self.values.dtype)


def ragged_sum(r: Ragged) -> np.ndarray:
    """Sum of each row (0.0 for an empty row)."""
    csum = np.concatenate([[0.0], np.cumsum(r.values, dtype=np.float64)])
    return csum[r.offsets[1:]] - csum[r.offsets[:-1]]


def ragged_mean(r: Ragged) -> np.ndarray:
    """Mean of each row; NaN for an empty row (never a made-up number)."""
    n = r.lengths()
    out = np.full(len(r), np.nan)
    ok = n > 0
    out[ok] = ragged_sum(r)[ok] / n[ok]
    return out


@dataclass
class TokenStats:
    """What one pass yields for a set of samples, as columns.

    `logprob` holds log p(target) in nats at each scored position, `entropy` the full-vocabulary
    predictive entropy in nats at the same positions. `activations` maps a column name such as
    `hidden.5` or `mlp.5` to an array [n_samples, width] pooled inside the pass. `status` is
    "ok" or the reason a row could not be scored (`response_truncated_away`, ...); rows that
    are not ok have empty token arrays and NaN activations.
    """

    ids: list[str]
    status: list[str]
    n_prompt_tokens: np.ndarray
    n_response_tokens: np.ndarray
    n_scored: np.ndarray
    truncated: list[str]
    logprob: Ragged
    entropy: Ragged | None = None
    activations: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        return {i: k for k, i in enumerate(self.ids)}

    def align(self, ids: list[str]) -> TokenStats:
        """Rows in the order of `ids` (every id must be present)."""
        pos = self.index_of()
        missing = [i for i in ids if i not in pos]
        if missing:
            raise KeyError(f"{len(missing)} ids have no row in this pass, e.g. {missing[:3]}")
        idx = np.array([pos[i] for i in ids], dtype=np.int64)
        return TokenStats(
            ids=list(ids),
            status=[self.status[i] for i in idx],
            n_prompt_tokens=self.n_prompt_tokens[idx],
            n_response_tokens=self.n_response_tokens[idx],
            n_scored=self.n_scored[idx],
            truncated=[self.truncated[i] for i in idx],
            logprob=self.logprob.take(idx),
            entropy=self.entropy.take(idx) if self.entropy is not None else None,
            activations={k: v[idx] for k, v in self.activations.items()},
        )


def spec_json(spec: PassSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
