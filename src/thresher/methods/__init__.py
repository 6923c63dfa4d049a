"""Methods: named recipes from papers, and the registry of names.

Each module of this package declares one method (or a paper's family) with `@method(...)`: its
builder turns flat typed parameters into a `Method` (passes, signals, filters, selector, optional
fit step). Every module here is imported on first use, so a new file registers itself: nothing
outside this package names a method. Passes are shared: `ifd`, `ppl` and `entropy` read the same
`cond` pass of the same model, so scoring all three costs two forward passes, not four.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from thresher.choices import suggest
from thresher.methods.base import (
    REGISTRY,
    FitContext,
    Fitted,
    Method,
    MethodInfo,
    SelectContext,
    SignalInputs,
    Signals,
    SignalTable,
)

__all__ = [
    "METHODS",
    "FitContext",
    "Fitted",
    "Method",
    "MethodInfo",
    "SelectContext",
    "SignalInputs",
    "SignalTable",
    "Signals",
    "build",
    "get_method",
    "methods",
]

_SUPPORT = {"base", "table"}  # modules of this package that declare no method


def methods() -> dict[str, MethodInfo]:
    """Every registered method by name (importing each method module once)."""
    for m in pkgutil.iter_modules(__path__):
        if m.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{m.name}")
    return REGISTRY


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # the registry, filled on first use
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_method(name: str) -> MethodInfo:
    known = methods()
    if name not in known:
        raise ValueError(
            f"unknown method {name!r}: expected one of {sorted(known)}{suggest(name, known)}"
        )
    return known[name]


def build(
    name: str, model: str, params: dict[str, Any] | None = None, *, reproduce: bool = False
) -> Method:
    """Build a method, rejecting unknown parameters with near-match suggestions."""
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
            have = [m.name for m in methods().values() if m.reproducible]
            raise ValueError(
                f"method {name!r} has no reference code to reproduce; reproduce mode exists for {have}"
            )
        params["reproduce"] = True
    return info.build(model, **params)
