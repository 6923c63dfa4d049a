"""Method plans on hand-made token stats: signals, filters, statuses and budget rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import choose, table_of
from thresher.data import Message, Sample
from thresher.methods import METHODS, build
from thresher.passes import Ragged, TokenStats


def stats(ids, rows, status=None, n_prompt=None):
    n = len(ids)
    lp = Ragged.from_rows([np.asarray(r, dtype=np.float64) for r in rows])
    return TokenStats(
        ids=list(ids),
        status=status or ["ok"] * n,
        n_prompt_tokens=np.asarray(n_prompt or [10] * n),
        n_response_tokens=lp.lengths(),
        n_scored=lp.lengths(),
        truncated=[""] * n,
        logprob=lp,
        entropy=Ragged.from_rows([np.full(len(r), 2.0 + k) for k, r in enumerate(rows)]),
    )


def samples(ids):
    return [
        Sample(i, (Message("user", "q"), Message("assistant", "a" * (k + 1))), "q")
        for k, i in enumerate(ids)
    ]


IDS = ["a", "b", "c", "d"]
# cond losses 1, 2, 3, 1 ; uncond losses 2, 2, 2, 4  -> IFD 0.5, 1.0, 1.5, 0.25
COND = [[-1.0, -1.0], [-2.0], [-3.0, -3.0], [-0.5, -1.5]]
UNCOND = [[-2.0], [-1.0, -3.0], [-2.0], [-4.0]]


def test_ifd_plan_computes_cherry_ifd_and_drops_above_one():
    plan = build("ifd", "m")
    t = table_of(plan, {"cond": stats(IDS, COND), "uncond": stats(IDS, UNCOND)}, samples(IDS))
    np.testing.assert_allclose(t.columns["ifd"], [0.5, 1.0, 1.5, 0.25])
    np.testing.assert_allclose(t.columns["loss_cond"], [1, 2, 3, 1])
    assert t.status == ["ok", "ok", "filtered:ifd>1", "ok"]  # Cherry keeps IFD == 1
    sel = choose(plan, t, 2, 4)
    assert sel.ids == ("b", "a")  # highest eligible IFD first
    # int(0.5 * 4 samples) = 2 in the default mode
    assert len(choose(plan, t, 0.5, 4).ids) == 2


def test_superfiltering_plan_uses_ppl_ratio_and_drops_at_one():
    plan = build("superfiltering", "m")
    t = table_of(plan, {"cond": stats(IDS, COND), "uncond": stats(IDS, UNCOND)}, samples(IDS))
    np.testing.assert_allclose(t.columns["ifd"], np.exp([1 - 2, 2 - 2, 3 - 2, 1 - 4]))
    assert t.status == ["ok", "filtered:ifd>=1", "filtered:ifd>=1", "ok"]


def test_rejected_and_nan_rows_never_become_numbers():
    plan = build("ifd", "m")
    cond = stats(IDS, [[-1.0], [], [-1.0], [-1.0]], status=["ok", "empty_response", "ok", "ok"])
    uncond = stats(IDS, [[-2.0], [], [0.0], [-2.0]])
    t = table_of(plan, {"cond": cond, "uncond": uncond}, samples(IDS))
    assert t.status[1] == "empty_response" and math.isnan(t.columns["ifd"][1])
    assert t.status[2] == "nan_score" and math.isnan(t.columns["ifd"][2])  # s(A) = 0
    assert set(choose(plan, t, 4, 4).ids) == {"a", "d"}


def test_cherry_reproduce_filter_and_budget_on_kept_rows():
    plan = build("ifd", "m", reproduce=True)
    assert plan.passes["cond"].boundary == "cherry" and plan.passes["uncond"].boundary == "cherry"
    # instruct_len 512 + 1 uncond response token > 512 -> skipped as in data_by_IFD.py
    uncond = stats(IDS, UNCOND, n_prompt=[10, 10, 10, 512])
    t = table_of(plan, {"cond": stats(IDS, COND), "uncond": uncond}, samples(IDS))
    assert t.status == ["ok", "ok", "filtered:ifd>1", "filtered:response_would_be_truncated"]
    # Cherry: int(#kept * rate) = int(2 * 0.5) = 1
    assert choose(plan, t, 0.5, 100).ids == ("b",)


def test_superfiltering_reproduce_budget_counts_rows_read():
    plan = build("superfiltering", "m", reproduce=True)
    t = table_of(plan, {"cond": stats(IDS, COND), "uncond": stats(IDS, UNCOND)}, samples(IDS))
    # int(rows_read * rate) = int(10 * 0.2) = 2, of which 2 are eligible
    assert len(choose(plan, t, 0.2, 10).ids) == 2


@pytest.mark.parametrize(
    ("variant", "expected"), [("min", ("a", "d")), ("max", ("c", "b")), ("mid", ("d", "b"))]
)
def test_ppl_variants(variant, expected):
    plan = build("ppl", "m", {"variant": variant})
    t = table_of(plan, {"cond": stats(IDS, COND)}, samples(IDS))
    np.testing.assert_allclose(t.columns["ppl"], np.exp([1, 2, 3, 1]))
    # ascending: a(e^1), d(e^1), b(e^2), c(e^3): ties by id; mid start = (4 - 2) // 2 = 1
    assert choose(plan, t, 2, 4).ids == expected


def test_entropy_plan_reads_the_entropy_of_the_cond_pass():
    plan = build("entropy", "m")
    t = table_of(plan, {"cond": stats(IDS, COND)}, samples(IDS))
    np.testing.assert_allclose(t.columns["entropy"], [2, 3, 4, 5])
    assert choose(plan, t, 1, 4).ids == ("a",)


def test_longest_ties_by_characters_then_id():
    plan = build("longest", "m")
    tok = stats(IDS, [[0.0] * 3, [0.0] * 3, [0.0] * 1, [0.0] * 3])
    t = table_of(plan, {"tokens": tok}, samples(IDS))  # chars 1, 2, 3, 4
    assert choose(plan, t, 3, 4).ids == ("d", "b", "a")


def test_shared_cond_pass_across_methods():
    specs = {m: build(m, "x").passes.get("cond") for m in ("ifd", "ppl", "entropy")}
    assert specs["ifd"] == specs["ppl"] == specs["entropy"]


def test_build_rejects_unknown_parameters_and_reproduce():
    with pytest.raises(ValueError, match="did you mean 'max_length'"):
        build("ifd", "m", {"max_lenght": 3})
    with pytest.raises(ValueError, match="no reference code"):
        build("ppl", "m", reproduce=True)
    with pytest.raises(ValueError, match=r"unknown method 'ifdd'.*did you mean 'ifd'"):
        build("ifdd", "m")


def test_every_default_quotes_its_source(tmp_path):
    """Every method's parameters with a default carry a comment in the builder's signature (the
    paper's words or `ours:` with the reason), and the built method records every parameter."""
    import inspect
    import re

    target = tmp_path / "t.jsonl"
    target.write_text('{"instruction": "a", "output": "b"}\n')
    assert {
        "ifd",
        "superfiltering",
        "tshirt",
        "miwv",
        "nait",
        "mads",
        "instructdiff",
        "kcenter",
    } <= set(METHODS)
    for name, info in METHODS.items():
        assert info.paper and info.summary and info.passes, name
        src = inspect.getsource(info.build)
        sig = src[src.index("def ") : src.index(") -> Method:")]
        params = [k for k in info.defaults() if k != "reproduce"]
        for k, nxt in zip(params, [*params[1:], None][: len(params)], strict=True):
            start = re.search(rf"[\s(,]{k}:", sig).start()
            end = re.search(rf"[\s(,]{nxt}:", sig).start() if nxt else len(sig)
            assert "#" in sig[start:end], f"{name}.{k} has no source comment"
        extra = {"target": [str(target)]} if name == "nait" else {}
        built = build(name, "m", extra)
        assert built.name == name, name
        assert set(built.params) - {"reproduce", "ratio", "filter"} <= set(info.defaults()), name
