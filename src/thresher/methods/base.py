"""What every method is made of: a Plan (passes, signal computation, selection), the signal
table it produces, and the registry entry that describes it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.data import Sample
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection


@dataclass
class RunContext:
    """What a plan's `prepare` step may use before the passes run."""

    run_dir: Path
    samples: list[Sample]
    load_model: Callable[[str], Any]  # model name -> LoadedModel, loaded once per run
    config: Any  # the RunConfig
    progress: bool = True
    data_hash: str = ""  # the dataset's content hash, for the cache keys of passes run in `prepare`


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
class Plan:
    method: str
    params: dict[str, Any]
    passes: dict[str, PassSpec]
    compute: Callable[[dict[str, TokenStats], list[Sample]], SignalTable]
    choose: Callable[[SignalTable, float | int, int, int], Selection] = field(repr=False)
    # optional step before the passes: returns extra inputs per pass role, e.g.
    # {"oneshot": {"demos": {sample_id: demo_sample}}}; {"role": {"model": path}} sets the model
    # of that pass (e.g. InstructDiff's calibrated copy, trained into the run folder)
    prepare: Callable[[RunContext], dict[str, dict[str, Any]]] | None = field(
        default=None, repr=False
    )
    # optional figures about a selection (e.g. tag coverage), written to the manifest and summary;
    # computed from the signal table only, so `thresher select` can recompute them without a model
    diagnostics: Callable[[SignalTable, Selection | None], dict[str, Any]] | None = field(
        default=None, repr=False
    )
    # pass roles too large to load whole (T-SHIRT's noisy copies): `compute` gets their PassStore
    # instead of TokenStats and reads them shard by shard (PassStore.scan)
    streamed: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodInfo:
    name: str
    paper: str
    summary: str
    passes: str
    reference_model: str
    reproducible: bool
    build: Callable[..., Plan] = field(repr=False)

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.build)
        return {k: p.default for k, p in sig.parameters.items() if k != "model"}


def merge_status(*passes: TokenStats) -> list[str]:
    """The first non-ok status of each row across the passes it needs."""
    out = []
    for row in zip(*(p.status for p in passes), strict=True):
        bad = [s for s in row if s != "ok"]
        out.append(bad[0] if bad else "ok")
    return out


def token_counts(stats: TokenStats, prefix: str) -> dict[str, np.ndarray]:
    """Token counts after truncation, and what truncation cut ("" or e.g. "prompt+response")."""
    return {
        f"{prefix}n_prompt_tokens": stats.n_prompt_tokens,
        f"{prefix}n_response_tokens": stats.n_response_tokens,
        f"{prefix}n_scored": stats.n_scored,
        f"{prefix}truncated": np.array(stats.truncated, dtype=object),
    }
