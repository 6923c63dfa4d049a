"""Methods: named recipes from papers, and the registry of names.

A builder turns flat typed parameters into a `Plan`: the passes to run, how to compute the
signals from their token stats, and how to select. Every default is the paper's (quoted) or
marked `# ours:` with the reason. Passes are shared: `ifd`, `ppl` and `entropy` read the same
`cond` pass of the same model, so scoring all three costs two forward passes, not four.
One module per paper family; each lists its registry entries in `INFOS`.
"""

from __future__ import annotations

from typing import Any

from thresher.choices import suggest
from thresher.methods import baselines, ifd, instructdiff, mads, miwv, nait, tshirt
from thresher.methods.base import MethodInfo, Plan, RunContext, SignalTable

__all__ = [
    "METHODS",
    "MethodInfo",
    "Plan",
    "RunContext",
    "SignalTable",
    "build",
    "get_method",
    "suggest",
]

METHODS: dict[str, MethodInfo] = {
    m.name: m
    for module in (ifd, baselines, nait, mads, instructdiff, tshirt, miwv)
    for m in module.INFOS
}


def get_method(name: str) -> MethodInfo:
    if name not in METHODS:
        raise ValueError(
            f"unknown method {name!r}: expected one of {sorted(METHODS)}{suggest(name, list(METHODS))}"
        )
    return METHODS[name]


def build(
    name: str, model: str, params: dict[str, Any] | None = None, *, reproduce: bool = False
) -> Plan:
    """Build a plan, rejecting unknown parameters with near-match suggestions."""
    info = get_method(name)
    params = dict(params or {})
    allowed = list(info.defaults())
    unknown = [k for k in params if k not in allowed]
    if unknown:
        k = unknown[0]
        raise ValueError(
            f"method {name!r} has no parameter {k!r}: it takes {allowed}{suggest(k, allowed)}"
        )
    if reproduce:
        if not info.reproducible:
            raise ValueError(
                f"method {name!r} has no reference code to reproduce; reproduce mode exists for {[m.name for m in METHODS.values() if m.reproducible]}"
            )
        params["reproduce"] = True
    return info.build(model, **params)
