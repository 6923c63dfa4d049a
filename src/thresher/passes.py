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
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.choices import check_choice

# Bump when the meaning of a stored pass changes (new rendering rule, new reduction...):
# every cache key includes it, so old shards are refused instead of silently mixed.
# 2: pooled activations stored as float32 (float16 overflowed on Gemma-3's hidden states)
# 3: structured specs (pooling and noise parts); exact entropy -sum p (x - lse)
PASS_VERSION = 3

VIEWS = ("cond", "uncond", "oneshot", "oneshot_uncond", "instruction")
DEMO_VIEWS = ("oneshot", "oneshot_uncond")  # views rendered with a demonstration (MIWV)
FIELDS = ("logprob", "entropy")  # per scored token
SOURCES = ("hidden", "mlp")  # pooled activations: the residual stream, or a block's MLP
# what the hf backend computes; checked in `validate`, before any model (or torch) loads
CAPABILITIES = (*FIELDS, *SOURCES)
# drift: span mean minus the sequence's first-token state (NAIT, METHODS §5.3 reading (a));
# last_drift: the span's last token minus the sequence's first token (§5.3 reading (b));
# frac_above: fraction of span tokens whose activation exceeds `threshold` (MADS §6.2)
POOLS = ("mean", "max", "first", "last", "drift", "last_drift", "frac_above")
# "prompt": the whole prompt, template words included; "user": only the user content's tokens
# (the instruction and input texts, or the user messages' contents; templates.Renderer)
POOL_SPANS = ("prompt", "response", "all", "user")
# where the `mlp` source reads a block's MLP: "act" = the activation function's output (SiLU(gate_proj x)
# in Llama-style MLPs); "down_proj_input" = what the down projection reads (SiLU(gate) * up when gated)
MLP_TAPS = ("act", "down_proj_input")
TRUNCATIONS = ("prompt_first", "right", "reject")
# "exact": prompt and response tokenized separately, ids concatenated (the default).
# The others follow a reference implementation's string-based boundary rule (reproduce mode).
BOUNDARIES = ("exact", "cherry", "superfiltering", "tshirt", "instructdiff")
# "per_sample": each copy's noise seeded by (seed, sample id, copy), so any subset in any order
# draws the same values; "reference": T-SHIRT's one global stream in file order (METHODS §12.2)
NOISE_STREAMS = ("per_sample", "reference")


@dataclass(frozen=True)
class Pooling:
    """Activations pooled per sample inside the pass, one [width] vector per (source, layer).

    `layers` are 0-based decoder layers, or "all"; with `depth` set they are positions in a
    model of `depth` layers (a paper's layer numbers), rescaled to the loaded model's depth as
    round(l * (n - 1) / (depth - 1)). Both are resolved once the model loads (`resolve`).
    `how` pools the `span` tokens; `threshold` only for how="frac_above". `final_norm` takes
    the last decoder layer's residual output after the model's final norm (what HF's
    `output_hidden_states` gives as its last entry) instead of before it; other layers have no
    final norm, so it changes the last layer only, and needs the `hidden` source."""

    sources: tuple[str, ...] = ("hidden",)
    layers: tuple[int, ...] | str = "all"
    depth: int | None = None
    how: str = "mean"
    span: str = "response"
    threshold: float | None = None
    mlp_tap: str = "act"
    final_norm: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("pooling has no sources: name 'hidden' (residual stream) and/or 'mlp'")
        for src in self.sources:
            check_choice("pooling.sources", src, SOURCES)
        check_choice("pooling.how", self.how, POOLS)
        check_choice("pooling.span", self.span, POOL_SPANS)
        check_choice("pooling.mlp_tap", self.mlp_tap, MLP_TAPS)
        if isinstance(self.layers, str):
            check_choice("pooling.layers", self.layers, ("all",))
        elif not self.layers:
            raise ValueError(
                "pooling.layers=() is empty: name the decoder layers, e.g. (0, 5, 11), or 'all'"
            )
        if self.depth is not None and (isinstance(self.layers, str) or self.depth < 2):
            raise ValueError(
                f"pooling.depth={self.depth} rescales a list of layers given for a model of that depth "
                f"(>= 2), not layers={self.layers!r}"
            )
        if self.mlp_tap != "act" and "mlp" not in self.sources:
            raise ValueError(
                f"pooling.mlp_tap={self.mlp_tap!r} says where to read the MLP, but sources={list(self.sources)} has no 'mlp'"
            )
        if self.final_norm and "hidden" not in self.sources:
            raise ValueError(
                f"pooling.final_norm=True applies the final norm to the residual stream, but "
                f"sources={list(self.sources)} has no 'hidden'"
            )
        if (self.how == "frac_above") != (self.threshold is not None):
            raise ValueError(
                f"pooling.how={self.how!r} with threshold={self.threshold!r}: a threshold is "
                "required by how='frac_above' and meaningless otherwise"
            )

    @property
    def resolved(self) -> bool:
        return not isinstance(self.layers, str) and self.depth is None

    def resolve(self, n_layers: int) -> Pooling:
        """The same pooling with concrete layers of a model with `n_layers` decoder layers."""
        if self.layers == "all":
            layers: tuple[int, ...] = tuple(range(n_layers))
        elif self.depth is not None:
            layers = tuple(
                sorted({round(x * (n_layers - 1) / (self.depth - 1)) for x in self.layers})
            )
        else:
            layers = tuple(int(x) for x in self.layers)
        bad = [x for x in layers if not 0 <= x < n_layers]
        if bad:
            raise ValueError(
                f"layers {bad} do not exist: the model has {n_layers} decoder layers (0..{n_layers - 1})"
            )
        return dataclasses.replace(self, layers=layers, depth=None)

    def columns(self) -> tuple[str, ...]:
        """The stored column of each pooled activation, e.g. `hidden.3` (layers resolved)."""
        if not self.resolved:
            raise ValueError(
                f"pooling layers {self.layers!r} are not resolved: call resolve(n_layers)"
            )
        return tuple(f"{src}.{layer}" for src in self.sources for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.final_norm:  # absent unless used: passes stored before it keep their keys
            del d["final_norm"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class Noise:
    """T-SHIRT's neighbourhood perturbation: `copies` copies of each row, each with uniform noise
    U(-e, e), e = alpha / sqrt(L * d), added to the input embeddings (METHODS §4.3)."""

    alpha: float
    copies: int
    seed: int = 42
    stream: str = "per_sample"

    def __post_init__(self) -> None:
        if self.copies < 1 or self.alpha < 0:
            raise ValueError(
                f"noise copies={self.copies}, alpha={self.alpha}: expected copies >= 1 and alpha >= 0"
            )
        check_choice("noise.stream", self.stream, NOISE_STREAMS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PassSpec:
    """One forward pass of `model` over `view` of every sample: the unit of caching.

    `fields` ⊆ {logprob, entropy} are kept per scored token; `pooling` adds activations pooled
    per sample, `noise` scores perturbed copies instead of the clean row. `max_length` counts
    every token of the view, BOS included. A pass with no fields and no pooling only tokenizes.
    """

    model: str
    view: str = "cond"
    template: str = "alpaca"
    fields: tuple[str, ...] = ("logprob",)
    max_length: int = 512
    truncation: str = "prompt_first"
    boundary: str = "exact"
    append_eos: bool = False
    pooling: Pooling | None = None
    noise: Noise | None = None

    def __post_init__(self) -> None:
        check_choice("view", self.view, VIEWS)
        for f in self.fields:
            check_choice("fields", f, FIELDS)
        check_choice("truncation", self.truncation, TRUNCATIONS)
        check_choice("boundary", self.boundary, BOUNDARIES)
        if self.max_length < 4:
            raise ValueError(
                f"max_length={self.max_length} is too small: expected at least 4 tokens"
            )
        if self.noise is not None and (
            self.view not in ("cond", "uncond") or self.fields != ("logprob",) or self.pooling
        ):
            raise ValueError(
                f"noisy copies are scored for the cond and uncond views with fields=('logprob',) and "
                f"no pooling, not view={self.view!r} fields={list(self.fields)} pooling={self.pooling}"
            )
        if (
            self.noise is not None
            and self.noise.stream == "reference"
            and self.boundary != "tshirt"
        ):
            raise ValueError(
                f"noise.stream='reference' replays T-SHIRT's draws over its own token lengths: it "
                f"needs boundary='tshirt' (reproduce mode), not boundary={self.boundary!r}"
            )
        if self.pooling is not None and self.pooling.span == "user" and self.boundary != "exact":
            raise ValueError(
                f"pooling span 'user' is located by thresher's own rendering (boundary='exact'), "
                f"not boundary={self.boundary!r}: pool span 'prompt' in a reproduce pass"
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

    @property
    def forward(self) -> bool:
        """Whether the pass runs the model (else it only tokenizes)."""
        return bool(self.fields) or self.pooling is not None

    def activation_columns(self) -> tuple[str, ...]:
        return self.pooling.columns() if self.pooling is not None else ()

    def resolve(self, n_layers: int) -> PassSpec:
        """This pass for a loaded model of `n_layers` decoder layers (pooling layers made concrete)."""
        if self.pooling is None:
            return self
        return dataclasses.replace(self, pooling=self.pooling.resolve(n_layers))

    def to_dict(self) -> dict:
        d = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("pooling", "noise")
        }
        for part in ("pooling", "noise"):  # absent unless used
            if getattr(self, part) is not None:
                d[part] = getattr(self, part).to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PassSpec:
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if d.get("pooling") is not None:
            p = dict(d["pooling"])
            p["sources"] = tuple(p["sources"])
            p["layers"] = p["layers"] if isinstance(p["layers"], str) else tuple(p["layers"])
            d["pooling"] = Pooling(**p)
        if d.get("noise") is not None:
            d["noise"] = Noise(**d["noise"])
        return cls(**d)

    def name(self) -> str:
        """A short human-readable label, e.g. `cond/alpaca`."""
        return f"{self.view}/{self.template}" + (f"/noisy{self.noise.copies}" if self.noise else "")


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
