"""End to end on a tiny model saved to disk: read -> passes -> signals -> selection -> outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.cache import CacheMismatch
from thresher.config import RunConfig
from thresher.pipeline import load_run, run, score, select, write_outputs
from tiny import FAMILIES, uniform_llama

ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (12, 30), (2, 9)]
] + [
    {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
    {"instruction": "Say nothing.", "input": "", "output": ""},  # rejected: empty_response
    {"instruction": "Sort 3, 1, 2.", "input": "", "output": "1, 2, 3."},
]


@pytest.fixture(scope="module")
def uniform_model_dir(tmp_path_factory):
    tok = FAMILIES["chatml"][0]()
    d = tmp_path_factory.mktemp("uniform-llama")
    uniform_llama(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "{not json\n")
    return p


def config(model_dir, data_file, out, method="ifd", **select) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = str(model_dir)
    cfg.data.path = str(data_file)
    cfg.method.name = method
    cfg.output.dir = str(out)
    cfg.score.progress = False
    cfg.score.shard_rows = 3
    cfg.select.fraction = select.get("fraction", 0.5) if "count" not in select else None
    cfg.select.count = select.get("count")
    return cfg


def test_run_writes_every_output_and_accounts_for_every_row(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result, sel, manifest = run(config(tiny_model_dir, data_file, out))
    c = result.counts
    assert c["rows_read"] == 10  # 9 JSON rows + 1 malformed line
    assert c["rejected"] == 2 and c["scored"] == 8 and c["scored"] + c["rejected"] == c["rows_read"]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted((r["reason"], r["line"]) for r in rejected) == [
        ("empty_response", 8),
        ("malformed_json", 10),
    ]
    table = pq.read_table(out / "scores.parquet").to_pydict()
    assert {
        "id",
        "status",
        "ifd",
        "loss_cond",
        "loss_uncond",
        "n_prompt_tokens",
        "n_response_tokens",
        "n_scored",
        "selected",
        "rank",
    } <= set(table)
    ok = [s == "ok" or s.startswith("filtered:") for s in table["status"]]
    assert all(math.isfinite(v) for v, k in zip(table["ifd"], ok, strict=True) if k)
    # exact budget: int(0.5 * 8 samples) = 4, or fewer with a stated reason
    assert len(sel.ids) == min(4, sel.eligible) and (len(sel.ids) == 4 or sel.note)
    chosen = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    assert len(chosen) == len(sel.ids) and set(chosen[0]) == {"instruction", "input", "output"}
    trl = [json.loads(x) for x in (out / "trl.jsonl").read_text().splitlines()]
    assert trl[0]["prompt"].startswith("Below is an instruction") and "completion" in trl[0]
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert next(iter(info.values()))["formatting"] == "alpaca"
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["tokenizer_hash"] and m["template_text"].startswith("Below is an instruction")
    assert m["counts"]["rows_read"] == 10 and m["versions"]["torch"]
    assert manifest["selection"]["returned"] == len(sel.ids)


def test_rerun_reuses_every_shard_and_gives_identical_scores(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    first, sel1, _ = run(config(tiny_model_dir, data_file, out))
    cfg = config(tiny_model_dir, data_file, out)
    cfg.score.batch_tokens = 16  # another batch size reuses the same shards
    second, sel2, _ = run(cfg)
    assert all(p["scored"] == 0 and p["reused"] == 8 for p in second.passes.values())
    np.testing.assert_array_equal(first.table.columns["ifd"], second.table.columns["ifd"])
    assert sel1.ids == sel2.ids


def test_shared_cond_pass_between_methods(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    run(config(tiny_model_dir, data_file, out, method="ifd"))
    result, _, _ = run(config(tiny_model_dir, data_file, out, method="entropy"))
    assert result.passes["cond"]["scored"] == 0 and result.passes["cond"]["reused"] == 8
    assert np.all(np.isfinite(result.table.columns["entropy"][result.table.eligible]))


def test_changed_max_length_is_refused(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    run(config(tiny_model_dir, data_file, out))
    cfg = config(tiny_model_dir, data_file, out)
    cfg.method.params["max_length"] = 256
    with pytest.raises(CacheMismatch, match="max_length: 512 -> 256"):
        score(cfg)
    cfg.score.overwrite = True
    assert score(cfg).passes["cond"]["scored"] == 8


def test_uniform_model_gives_ifd_exactly_one(uniform_model_dir, data_file, tmp_path):
    result = score(config(uniform_model_dir, data_file, tmp_path / "u"))
    ok = result.table.eligible
    np.testing.assert_allclose(result.table.columns["ifd"][ok], 1.0, atol=1e-6)
    # Cherry keeps IFD <= 1; Superfiltering drops IFD >= 1, so nothing is eligible
    sf = score(config(uniform_model_dir, data_file, tmp_path / "s", method="superfiltering"))
    assert not sf.table.eligible.any()
    assert {s for s in sf.table.status if s != "empty_response"} == {"filtered:ifd>=1"}
    cfg = config(uniform_model_dir, data_file, tmp_path / "s", method="superfiltering")
    sel = select(sf, cfg)
    assert sel.ids == () and "eligible" in sel.note


def test_select_again_from_a_run_folder(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    _, sel, _ = run(config(tiny_model_dir, data_file, out, count=2))
    cfg, again = load_run(out, ["select.count=3"])
    sel3 = select(again, cfg)
    assert len(sel3.ids) == 3 and sel3.ids[:2] == sel.ids  # top-k is a prefix of top-(k+1)
    write_outputs(again, sel3, cfg)
    assert len((out / "selected.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("method", ["ppl", "longest", "random", "superfiltering"])
def test_every_method_runs_end_to_end(method, tiny_model_dir, data_file, tmp_path):
    _, sel, _ = run(config(tiny_model_dir, data_file, tmp_path / method, method=method, count=3))
    assert len(sel.ids) == min(3, sel.eligible)
    assert len(set(sel.ids)) == len(sel.ids)
