"""`thresher eval` plumbing: task specs, run folders as targets, the training-pool exclusion."""

from __future__ import annotations

import json
import math

import pytest
from lmstub import LM, Info

from thresher import evaluation as ev
from tiny import FAMILIES, tiny_llama


def test_parse_task_errors(tmp_path):
    with pytest.raises(ValueError, match="KIND:TARGET"):
        ev.parse_task("accuracy:file.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ev.parse_task(f"nll:{tmp_path / 'missing.jsonl'}")
    assert ev.parse_task("lm_eval:hellaswag,arc_easy") == ev.TaskSpec(
        "lm_eval", "hellaswag,arc_easy"
    )


def test_resolve_target_prefers_a_trained_model_in_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"config": {"model": {"name": "smollm2-135m"}}}))
    assert ev.resolve_target(str(run)) == ("smollm2-135m", run)
    (run / "passes" / "x").mkdir(parents=True)
    (run / "passes" / "x" / "config.json").write_text("{}")  # not a model
    assert ev.resolve_target(str(run))[0] == "smollm2-135m"
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    assert ev.resolve_target(str(run)) == (str(run / "model"), run)
    assert ev.resolve_target("gpt2") == ("gpt2", None)


def test_run_task_skips_rows_of_the_training_pool(tmp_path):
    tok = FAMILIES["chatml"][0]()
    lm = LM(tiny_llama(tok), tok, Info())
    p = tmp_path / "gsm.jsonl"
    p.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {k} + 1?", "answer": f"{k} + 1 = {k + 1}\n#### {k + 1}"}
            )
            + "\n"
            for k in range(4)
        )
    )
    read = ev.read_pairs(str(p), None, None)
    exclude = {ev.content_hash(read.samples[0])}
    r = ev.run_task(lm, ev.TaskSpec("nll", str(p)), exclude=exclude)
    assert r.evaluated == 3 and r.skipped == {"in_training_pool": 1} and r.headline == "nll_token"
    assert math.isfinite(r.metrics["nll_token"]) and r.metrics["tokens"] > 0
    assert "in_training_pool: 1" in ev.format_results([r])
