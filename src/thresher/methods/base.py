"""What a method is: a declaration, not wiring.

A method names the passes it needs (`PassSpec`s by role), computes its signal columns from their
token stats (`signals`, pure numpy on what the passes return), lists the filters that exclude rows
(`filters`, applied by one shared function that writes the statuses), and chooses the budget
(`select`). An optional `fit` step runs before the pool's passes (MIWV's demonstrations, NAIT's
target directions, InstructDiff's warm-up) and returns what it decided as a `Fitted` value; it
never changes the method or shared state. The pass runner owns models, caches and engines: a
method never imports them.

A builder decorated with `@method(...)` turns flat typed parameters (each default quoted from its
paper, or marked `# ours:` with the reason) into a `Method`, and registers itself by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from thresher.data import Sample
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection


class StreamedPass(Protocol):
    """A stored pass too large to load whole (T-SHIRT's noisy copies, an activation pass of a
    large pool): read shard by shard, or loaded with only some activation columns."""

    def scan(self, activations: tuple[str, ...] | None = None) -> Any: ...

    def load(
        self, activations: tuple[str, ...] | None = None, order: list[str] | None = None
    ) -> TokenStats: ...


@dataclass
class SignalTable:
    """Per-sample signals of one method. `status` is "ok", a reason the row could not be scored
    (it is then rejected), or `filtered:<rule>` (scored, but the method's filter excludes it).
    `score` names the column the selector ranks by."""

    ids: list[str]
    columns: dict[str, np.ndarray]
    status: list[str]
    score: str | None

    @property
    def eligible(self) -> np.ndarray:
        return np.array([s == "ok" for s in self.status], dtype=bool)


@dataclass
class Signals:
    """What `signals` returns when some rows fail there (e.g. T-SHIRT's streamed copies): the
    columns and a status per row ("ok" or the reason). A plain dict of columns means all "ok"."""

    columns: dict[str, np.ndarray]
    status: list[str]


@dataclass
class SignalInputs:
    """What a method's `signals` reads: each pass's token stats by role (a `StreamedPass` for the
    roles the method streams), the samples, the passes as they ran (pooling layers resolved for
    the loaded model), what `fit` returned, and a scratch folder for spill files."""

    stats: dict[str, Any]
    samples: list[Sample]
    passes: dict[str, PassSpec]
    state: Any = None
    scratch: Path | None = None

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


@dataclass
class Fitted:
    """What a `fit` step decided: state for `signals` and `select`, and per pass role the model to
    run instead (InstructDiff's calibrated copy), the demonstration of each sample (MIWV), and
    what the pass's cache key must also hold so a changed decision recomputes it."""

    state: Any = None
    models: dict[str, str] = field(default_factory=dict)
    demos: dict[str, dict[str, Sample]] = field(default_factory=dict)
    key_extra: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class FitContext:
    """What a `fit` step may use: the samples, a folder for what it trains, the run's budget and
    seed, the run's models (loaded once), the pass runner and sentence embeddings (both cached in
    the run folder).

    `run_pass(role, spec)` returns the TokenStats of `spec` over the pool;
    `run_pass(label, spec, samples, data_hash)` over other samples (e.g. a target set), stored
    under `label` (e.g. `target.gsm8k`). `embed(embedder, texts)` returns [n, d] embeddings."""

    samples: list[Sample]
    work_dir: Path
    budget: float | int | None  # None when the run scores without selecting (`thresher score`)
    seed: int
    data_hash: str
    load_model: Callable[[str], Any]
    run_pass: Callable[..., TokenStats]
    embed: Callable[[str, list[str]], np.ndarray]
    progress: bool = True


@dataclass(frozen=True)
class SelectContext:
    """What a selector may need beyond the table: rows read from the file (Superfiltering's
    budget is a fraction of the whole file) and the run's seed."""

    rows_read: int
    seed: int = 42


Selector = Callable[[SignalTable, "float | int", SelectContext], Selection]


@dataclass(frozen=True)
class Method:
    name: str
    params: dict[str, Any]
    passes: dict[str, PassSpec]
    signals: Callable[[SignalInputs], dict[str, np.ndarray] | Signals]
    score: str | None
    select: Selector
    filters: tuple[Any, ...] = ()  # methods.table filters, applied in order
    fit: Callable[[FitContext], Fitted] | None = None
    # figures about a selection (e.g. tag coverage) from the signal table only, so `thresher
    # select` recomputes them without a model; written to the manifest and the summary
    diagnostics: Callable[[SignalTable, Selection | None], dict[str, Any]] | None = None
    # pass roles the method reads shard by shard (`StreamedPass`), never loaded whole
    streamed: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: what `thresher ls methods` prints, and the builder."""

    name: str
    paper: str
    summary: str
    passes: str
    reference_model: str
    reproducible: bool
    build: Callable[..., Method] = field(repr=False)
    # the pool pass this method would run with its defaults, for `score.capture` (a method that
    # pools activations): (model) -> PassSpec
    pool_pass: Callable[[str], PassSpec] | None = field(default=None, repr=False)

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.build)
        return {k: p.default for k, p in sig.parameters.items() if k != "model"}


REGISTRY: dict[str, MethodInfo] = {}


def method(
    name: str,
    *,
    paper: str,
    summary: str,
    passes: str,
    reference_model: str = "-",
    reproducible: bool = False,
    pool_pass: Callable[[str], PassSpec] | None = None,
) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Register a builder `(model, *, params...) -> Method` under `name`."""

    def register(build: Callable[..., Method]) -> Callable[..., Method]:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        REGISTRY[name] = MethodInfo(
            name, paper, summary, passes, reference_model, reproducible, build, pool_pass
        )
        return build

    return register


def merge_status(*passes: TokenStats) -> list[str]:
    """The first non-ok status of each row across the passes it needs."""
    return first_failure(*(p.status for p in passes))


def first_failure(*statuses: list[str]) -> list[str]:
    out = []
    for row in zip(*statuses, strict=True):
        bad = [s for s in row if s != "ok"]
        out.append(bad[0] if bad else "ok")
    return out


def token_counts(stats: TokenStats, prefix: str = "") -> dict[str, np.ndarray]:
    """Token counts after truncation, and what truncation cut ("" or e.g. "prompt+response")."""
    return {
        f"{prefix}n_prompt_tokens": stats.n_prompt_tokens,
        f"{prefix}n_response_tokens": stats.n_response_tokens,
        f"{prefix}n_scored": stats.n_scored,
        f"{prefix}truncated": np.array(stats.truncated, dtype=object),
    }
