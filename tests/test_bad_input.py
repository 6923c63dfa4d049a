"""The whole pipeline on a file of bad rows (tests/data/bad_input.jsonl, described in
tests/data/README.md): nothing crashes, every row is scored or rejected with its reason and
line number, and no stored score of a scored row is NaN or infinite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from htmlcheck import parse_page
from thresher.config import RunConfig
from thresher.pipeline import run

CORPUS = Path(__file__).parent / "data" / "bad_input.jsonl"

# line -> reason, for every row the alpaca run must reject (line 17 is blank: not a row)
REJECTED = {
    3: "empty_response",
    4: "missing_field:output",
    5: "bad_type:output",
    6: "missing_field:output",  # "output": null
    7: "empty_response",  # whitespace only
    8: "response_truncated_away",  # a prompt longer than max_length, truncation=right
    10: "bad_utf8",  # invalid bytes
    11: "malformed_json",
    12: "duplicate_id",
    13: "format_mismatch:sharegpt",  # a ShareGPT row in an Alpaca file
    14: "bad_utf8",  # valid JSON holding a lone surrogate
    15: "not_an_object",
    16: "bad_type:instruction",
    18: "empty_instruction",
    19: "missing_field:id",
    21: "malformed_json",  # nesting deeper than the JSON parser's recursion limit
}
SCORED = {"ok-1": 1, "ok-2": 2, "response-partly-cut": 9, "control-chars": 20, "ok-3": 22}
ROWS_READ = 21


def _cfg(tiny_model_dir, out, **params) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = str(tiny_model_dir)
    cfg.data.path = str(CORPUS)
    cfg.method.name = "ifd"
    cfg.method.params = {"max_length": 128, "truncation": "right", **params}
    cfg.output.dir = str(out)
    cfg.score.progress = False
    cfg.score.shard_rows = 4
    cfg.score.max_rejected_fraction = 1.0  # this file is mostly bad on purpose
    cfg.select.fraction = 0.5
    return cfg


def _check_accounting(result, out):
    c = result.counts
    assert c["rows_read"] == ROWS_READ and c["scored"] + c["rejected"] == c["rows_read"]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == c["rejected"]
    assert all(r["reason"] and isinstance(r["line"], int) and r["line"] > 0 for r in rejected)
    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert len(table["id"]) == c["scored"] + c["rejected_scoring"]
    for name in ("ifd", "loss_cond", "loss_uncond"):
        for value, status in zip(table[name], table["status"], strict=True):
            if status == "ok" or status.startswith("filtered:"):
                assert value is not None and math.isfinite(value), (name, status)
    for p in out.glob("passes/*/shard-*.parquet"):  # every stored token log-prob is a number
        lp = pq.read_table(p, columns=["logprob"]).column("logprob").combine_chunks().flatten()
        assert np.isfinite(np.asarray(lp)).all(), p
    return {r["line"]: r["reason"] for r in rejected}, dict(
        zip(table["id"], zip(table["line"], table["status"], strict=True), strict=True)
    )


def test_every_bad_row_is_rejected_with_its_reason_and_line(tiny_model_dir, tmp_path):
    out = tmp_path / "alpaca"
    cfg = _cfg(tiny_model_dir, out)
    cfg.data.format = "alpaca"
    result, sel, _ = run(cfg)
    reasons, scored = _check_accounting(result, out)
    assert reasons == REJECTED
    assert {
        i: line
        for i, (line, status) in scored.items()
        if not status.startswith(("error:", "response_"))
    } == SCORED
    assert scored["prompt-too-long"] == (
        8,
        "response_truncated_away",
    )  # read, then rejected by the template
    cond = next(out.glob("passes/cond.alpaca*"))
    parts = {
        r["id"]: r["truncated"]
        for p in cond.glob("shard-*.parquet")
        for r in pq.read_table(p).select(["id", "truncated"]).to_pylist()
    }
    assert parts["response-partly-cut"] == "response" and parts["ok-1"] == ""
    assert len(sel.ids) <= len(SCORED)
    # the report is written although line 14 holds a lone surrogate: replaced, and said so
    text = parse_page(out / "report.html")
    assert all(reason in text for reason in REJECTED.values())
    assert "1 character in this run's rows" in text and "U+FFFD" in text


def test_mixed_formats_and_a_chat_template_without_generation_markers(tiny_model_dir, tmp_path):
    """With allow_mixed the ShareGPT row is read too; the chat template has no
    `{% generation %}` markers, so the response span comes from the prefix diff and rows score."""
    tok_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    template = (
        tok_config.get("chat_template") or (tiny_model_dir / "chat_template.jinja").read_text()
    )
    assert "generation %}" not in template
    out = tmp_path / "chat"
    cfg = _cfg(tiny_model_dir, out, template="chat")
    cfg.data.allow_mixed = True
    result, _, manifest = run(cfg)
    reasons, scored = _check_accounting(result, out)
    assert manifest["data"]["format_counts"] == {"alpaca": 6, "sharegpt": 1}
    assert 13 not in reasons and (
        scored["sharegpt-row"][1] == "ok" or scored["sharegpt-row"][1].startswith("filtered:")
    )
    assert reasons == {k: v for k, v in REJECTED.items() if k != 13}
    i = result.table.ids.index("sharegpt-row")
    assert result.table.columns["n_response_tokens"][i] > 0
