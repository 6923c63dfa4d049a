"""Composition: the first method's top factor x b, then the second method's selector down to b."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import choose
from thresher.compose import chain
from thresher.methods import Method, SignalTable
from thresher.methods.table import TopK


def toy(name: str, column: str, descending: bool = True) -> Method:
    def signals(inputs):
        raise AssertionError("not used")

    return Method(name, {}, {}, signals, column, TopK(column, descending))


def test_second_selector_picks_b_inside_the_first_top_factor_b():
    ids = [f"r{i}" for i in range(10)]
    first_score = np.arange(10.0)  # top 6 by first: r9..r4
    second_score = -np.arange(10.0)  # second alone would pick r0, r1
    plan = chain(toy("one", "s1"), toy("two", "s2"))
    table = SignalTable(ids, {"s1": first_score, "two.s2": second_score}, ["ok"] * 10, "s1")
    sel = choose(plan, table, 2)
    assert sel.ids == ("r4", "r5") and sel.requested == 2 and sel.eligible == 6
    assert plan.params["chain"][0]["method"] == "one" and plan.params["narrow_factor"] == 3.0


def test_rows_the_first_method_filters_never_reach_the_second():
    ids = [f"r{i}" for i in range(6)]
    status = ["ok", "filtered:x", "ok", "ok", "nan_score", "ok"]
    plan = chain(toy("one", "s1"), toy("two", "s2"), narrow_factor=1.5)
    table = SignalTable(ids, {"s1": np.arange(6.0), "two.s2": np.arange(6.0)}, status, "s1")
    sel = choose(plan, table, 2)  # first keeps top 3 of {r0, r2, r3, r5}: r5, r3, r2
    assert sel.ids == ("r5", "r3")


def test_chain_errors():
    with pytest.raises(ValueError, match="repeats"):
        chain(toy("one", "s"), toy("one", "s"))
    with pytest.raises(ValueError, match="at least the budget"):
        chain(toy("one", "s"), toy("two", "s"), narrow_factor=0.5)


def test_cli_flags_set_target_and_then():
    from thresher.cli import _parser, config_from_args

    a = _parser().parse_args(
        [
            "run",
            "--data",
            "d.json",
            "--method",
            "nait",
            "--target",
            "x.jsonl",
            "y.json",
            "--then",
            "mads",
            "--count",
            "5",
        ]
    )
    cfg = config_from_args(a)
    assert cfg.method.params["target"] == ["x.jsonl", "y.json"] and cfg.method.then == "mads"


def test_nait_then_mads_end_to_end(tmp_path):
    from test_mads import ROWS
    from test_nait import TARGET, write_jsonl
    from test_pipeline import config
    from thresher.pipeline import run
    from tiny import FAMILIES

    make_tok, make_model = FAMILIES["gpt2"]
    tok = make_tok()
    model_dir = tmp_path / "gpt2"
    make_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "pool.jsonl", ROWS)
    cfg = config(model_dir, data, tmp_path / "run", method="nait", count=2)
    cfg.method.params["target"] = [str(write_jsonl(tmp_path / "gsm.jsonl", TARGET))]
    cfg.method.then = "mads"
    cfg.method.then_params = {"layers": [0, 1], "tag_rule": "topk", "k": 3}
    result, sel, manifest = run(cfg)
    assert len(sel.ids) == 2
    top6 = set(
        np.array(result.table.ids)[np.argsort(-result.table.columns["nait"], kind="stable")][:6]
    )
    assert set(sel.ids) <= top6
    chain_ = manifest["method"]["params"]["chain"]
    assert [c["method"] for c in chain_] == ["nait", "mads"]
    assert "mads.tag_coverage_subset" in manifest["diagnostics"]
    assert (
        json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["method"]["then"]
        == "mads"
    )
