"""Composition, which none of the papers offers: one method's score narrows the pool, another
method's selector picks the budget from what is left (`--method nait --then mads`).

The first method's own selector takes its top `narrow_factor * b` rows (its filters included);
the second selects exactly b among them. The factor 3 is ours: wide enough that a coverage
selector still has choices at b (at 2b, as T-SHIRT's gamma = 2, half of the narrowed pool is
kept), narrow enough that the first score still decides what is eligible.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from thresher.cache import ACTIVATION_FIELDS, same_reading
from thresher.choices import check_choice
from thresher.data import Sample
from thresher.methods import Plan, RunContext, SignalTable, build
from thresher.passes import PassSpec, TokenStats
from thresher.selectors.base import Selection, budget_count

NARROW_FACTOR = 3.0  # ours: see the module docstring


def plan_for(cfg: Any) -> Plan:
    """The plan of a run config: one method, or `method.name` then `method.then`."""
    m = cfg.method
    first = build(m.name, cfg.model.name, m.params, reproduce=m.reproduce)
    if not m.then:
        if m.then_params:
            raise ValueError(
                f"method.then_params={m.then_params} is set but method.then is empty: name the second method, e.g. --then mads"
            )
        return first
    return chain(first, build(m.then, cfg.model.name, m.then_params), m.narrow_factor)


def _sub(stats: dict[str, TokenStats], prefix: str) -> dict[str, TokenStats]:
    return {role[len(prefix) :]: s for role, s in stats.items() if role.startswith(prefix)}


def chain(first: Plan, second: Plan, narrow_factor: float = NARROW_FACTOR) -> Plan:
    """A plan running both methods' passes; selection = second's selector on first's top factor*b."""
    if first.method == second.method:
        raise ValueError(
            f"--then {second.method!r} repeats the first method; chain two different methods"
        )
    if narrow_factor < 1:
        raise ValueError(
            f"narrow_factor={narrow_factor}: the narrowed pool must hold at least the budget (>= 1)"
        )
    p1, p2 = f"{first.method}.", f"{second.method}."
    passes = {
        **{p1 + r: s for r, s in first.passes.items()},
        **{p2 + r: s for r, s in second.passes.items()},
    }

    def prepare(ctx: RunContext) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for prefix, plan in ((p1, first), (p2, second)):
            if plan.prepare:
                out.update({prefix + r: v for r, v in plan.prepare(ctx).items()})
            # a prepare step may resolve its passes (e.g. layers once the depth is known)
            passes.update({prefix + r: s for r, s in plan.passes.items()})
        return out

    def compute(stats: dict[str, TokenStats], samples: list[Sample]) -> SignalTable:
        t1, t2 = first.compute(_sub(stats, p1), samples), second.compute(_sub(stats, p2), samples)
        status = [a if a != "ok" else b for a, b in zip(t1.status, t2.status, strict=True)]
        return SignalTable(
            t1.ids, {**t1.columns, **{p2 + k: v for k, v in t2.columns.items()}}, status, t1.score
        )

    def split(table: SignalTable) -> tuple[SignalTable, SignalTable]:
        c1 = {k: v for k, v in table.columns.items() if not k.startswith(p2)}
        c2 = {k[len(p2) :]: v for k, v in table.columns.items() if k.startswith(p2)}
        return SignalTable(table.ids, c1, table.status, first.method), SignalTable(
            table.ids, c2, table.status, second.method
        )

    def choose(table: SignalTable, budget: float | int, n_rows_read: int, seed: int) -> Selection:
        b = budget_count(budget, len(table.ids))
        t1, t2 = split(table)
        if b == 0:
            return Selection((), 0, int(table.eligible.sum()), "")
        narrowed = first.choose(t1, max(int(narrow_factor * b), b), n_rows_read, seed)
        inside = set(narrowed.ids)
        status = [
            s if i in inside else "filtered:outside_narrowed_pool"
            for i, s in zip(t2.ids, t2.status, strict=True)
        ]
        sel = second.choose(SignalTable(t2.ids, t2.columns, status, t2.score), b, n_rows_read, seed)
        note = sel.note or (
            "" if len(sel.ids) == b else f"{first.method} left {len(narrowed.ids)} rows"
        )
        return Selection(sel.ids, b, len(narrowed.ids), note)

    def diagnostics(table: SignalTable, sel: Selection | None) -> dict[str, Any]:
        t1, t2 = split(table)
        out: dict[str, Any] = {}
        for prefix, plan, t in ((p1, first, t1), (p2, second, t2)):
            if plan.diagnostics:
                out.update({prefix + k: v for k, v in plan.diagnostics(t, sel).items()})
        return out

    params = {
        "chain": [
            {
                "method": first.method,
                "params": first.params,
                "keeps": f"its top {narrow_factor:g} x budget",
            },
            {"method": second.method, "params": second.params, "keeps": "the budget"},
        ],
        "narrow_factor": narrow_factor,
    }
    streamed = tuple(p1 + r for r in first.streamed) + tuple(p2 + r for r in second.streamed)
    return Plan(
        f"{first.method}+{second.method}",
        params,
        passes,
        compute,
        choose,
        prepare=prepare,
        diagnostics=diagnostics,
        streamed=streamed,
    )


# `score.capture`: the pool pass of an activation method, built by its `pool_pass(model, n_layers)`
CAPTURES = ("nait", "mads")


def capture_pass(name: str, model: str, n_layers: int | None) -> PassSpec:
    """The `cond` pass that `name` (one of CAPTURES, with its default parameters) would run."""
    from thresher.methods import mads, nait

    check_choice("score.capture", name, CAPTURES)
    return {"nait": nait.pool_pass, "mads": mads.pool_pass}[name](model, n_layers)


def capturing_roles(passes: dict[str, PassSpec], extra: PassSpec) -> list[str]:
    """The passes that can also pool `extra`'s activations: a `cond` pass of the same model,
    template, length and truncation that pools none of its own."""
    fixed = dataclasses.asdict(extra)
    return [
        role
        for role, spec in passes.items()
        if not set(ACTIVATION_FIELDS) & set(spec.fields)
        and same_reading(dataclasses.asdict(spec), fixed)
    ]


def with_capture(spec: PassSpec, extra: PassSpec) -> PassSpec:
    """`spec` keeping its own fields and adding `extra`'s pooled activations: the pass the
    activation method will find stored, so it runs no new forward pass of the pool."""
    return dataclasses.replace(extra, fields=tuple(dict.fromkeys(spec.fields + extra.fields)))
