"""Composition, which none of the papers offers: one method's score narrows the pool, another
method's selector picks the budget from what is left (`--method nait --then mads`).

The first method's own selector takes its top `narrow_factor * b` rows (its filters included);
the second selects exactly b among them. The factor 3 is ours: wide enough that a coverage
selector still has choices at b (at 2b, as T-SHIRT's gamma = 2, half of the narrowed pool is
kept), narrow enough that the first score still decides what is eligible.

Also here: `score.capture`, which adds a method's pooled activations to a pass another method
runs anyway, so the activation method later finds its pass stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thresher.cache import same_reading
from thresher.choices import check_choice
from thresher.methods import (
    FitContext,
    Fitted,
    Method,
    SelectContext,
    SignalInputs,
    Signals,
    SignalTable,
    build,
    methods,
)
from thresher.methods.base import merge_status
from thresher.methods.table import make_table
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection, budget_count

NARROW_FACTOR = 3.0  # ours: see the module docstring


def method_for(cfg: Any) -> Method:
    """The method of a run config: one method, or `method.name` then `method.then`."""
    m = cfg.method
    first = build(m.name, cfg.model.name, m.params, reproduce=m.reproduce)
    if not m.then:
        if m.then_params:
            raise ValueError(
                f"method.then_params={m.then_params} is set but method.then is empty: name the second method, e.g. --then mads"
            )
        return first
    return chain(first, build(m.then, cfg.model.name, m.then_params), m.narrow_factor)


def _part(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in d.items() if k.startswith(prefix)}


def chain(first: Method, second: Method, narrow_factor: float = NARROW_FACTOR) -> Method:
    """A method running both methods' passes; selection = second's selector on first's top factor*b."""
    if first.name == second.name:
        raise ValueError(
            f"--then {second.name!r} repeats the first method; chain two different methods"
        )
    if narrow_factor < 1:
        raise ValueError(
            f"narrow_factor={narrow_factor}: the narrowed pool must hold at least the budget (>= 1)"
        )
    parts = ((f"{first.name}.", first), (f"{second.name}.", second))
    p2 = parts[1][0]

    def fit(ctx: FitContext) -> Fitted:
        out = Fitted(state={})
        for prefix, m in parts:
            f = m.fit(ctx) if m.fit else Fitted()
            out.state[prefix] = f.state
            for name in ("models", "demos", "key_extra"):
                getattr(out, name).update({prefix + r: v for r, v in getattr(f, name).items()})
        return out

    def signals(x: SignalInputs) -> Signals:
        tables = []
        for prefix, m in parts:
            stats = _part(x.stats, prefix)
            sub = SignalInputs(
                stats, x.samples, _part(x.passes, prefix), (x.state or {}).get(prefix), x.scratch
            )
            loaded = [s for s in stats.values() if isinstance(s, TokenStats)]
            status = merge_status(*loaded) if loaded else ["ok"] * len(x.samples)
            tables.append(make_table(m, sub, status))
        t1, t2 = tables
        status = [a if a != "ok" else b for a, b in zip(t1.status, t2.status, strict=True)]
        return Signals({**t1.columns, **{p2 + k: v for k, v in t2.columns.items()}}, status)

    def split(table: SignalTable) -> tuple[SignalTable, SignalTable]:
        c1 = {k: v for k, v in table.columns.items() if not k.startswith(p2)}
        return (
            SignalTable(table.ids, c1, table.status, first.score),
            SignalTable(table.ids, _part(table.columns, p2), table.status, second.score),
        )

    def select(table: SignalTable, budget: float | int, ctx: SelectContext) -> Selection:
        b = budget_count(budget, len(table.ids))
        t1, t2 = split(table)
        if b == 0:
            return Selection((), 0, int(table.eligible.sum()), "")
        narrowed = first.select(t1, max(int(narrow_factor * b), b), ctx)
        inside = set(narrowed.ids)
        status = [
            s if i in inside else "filtered:outside_narrowed_pool"
            for i, s in zip(t2.ids, t2.status, strict=True)
        ]
        sel = second.select(SignalTable(t2.ids, t2.columns, status, t2.score), b, ctx)
        note = sel.note or (
            "" if len(sel.ids) == b else f"{first.name} left {len(narrowed.ids)} rows"
        )
        return Selection(sel.ids, b, len(narrowed.ids), note)

    def diagnostics(table: SignalTable, sel: Selection | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (prefix, m), t in zip(parts, split(table), strict=True):
            if m.diagnostics:
                out.update({prefix + k: v for k, v in m.diagnostics(t, sel).items()})
        return out

    params = {
        "chain": [
            {
                "method": first.name,
                "params": first.params,
                "keeps": f"its top {narrow_factor:g} x budget",
            },
            {"method": second.name, "params": second.params, "keeps": "the budget"},
        ],
        "narrow_factor": narrow_factor,
    }
    return Method(
        f"{first.name}+{second.name}",
        params,
        {prefix + r: s for prefix, m in parts for r, s in m.passes.items()},
        signals,
        first.score,
        select,
        fit=fit if first.fit or second.fit else None,
        diagnostics=diagnostics,
        streamed=tuple(prefix + r for prefix, m in parts for r in m.streamed),
    )


def captures() -> list[str]:
    """The methods `score.capture` can name: those that pool activations in a pool pass."""
    return sorted(name for name, info in methods().items() if info.pool_pass is not None)


def capture_pass(name: str, model: str) -> PassSpec:
    """The pool pass that `name` (with its default parameters) would run."""
    check_choice("score.capture", name, captures())
    return methods()[name].pool_pass(model)


def capturing_roles(passes: dict[str, PassSpec], extra: PassSpec) -> list[str]:
    """The passes that can also pool `extra`'s activations: a pass that reads the same tokens
    (model, view, template, length, truncation) and pools none of its own."""
    return [r for r, s in passes.items() if s.pooling is None and same_reading(s, extra)]


def with_capture(spec: PassSpec, extra: PassSpec) -> PassSpec:
    """`spec` keeping its own fields and adding `extra`'s pooled activations: the pass the
    activation method will find stored, so it runs no new forward pass of the pool."""
    fields = tuple(dict.fromkeys(spec.fields + extra.fields))
    return dataclasses.replace(spec, fields=fields, pooling=extra.pooling)
