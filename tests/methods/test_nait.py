"""NAIT signals on hand-computed arrays, and the method end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thresher.signals.nait import (
    combine_targets,
    fit_directions,
    layer_projections,
    sum_layers,
    zscore,
)

# centred: [[-2, 0], [2, 0], [0, .5], [0, -.5]] -> first principal axis is +-e1; mean (3, 0)
POS = np.array([[1.0, 0.0], [5.0, 0.0], [3.0, 0.5], [3.0, -0.5]])


def test_first_component_is_sign_calibrated_to_the_in_domain_mean():
    d = fit_directions({"hidden.0": POS})
    np.testing.assert_allclose(d.components["hidden.0"], [[1.0, 0.0]], atol=1e-12)
    flipped = fit_directions({"hidden.0": -POS})  # mean (-3, 0): the axis must point to -e1
    np.testing.assert_allclose(flipped.components["hidden.0"], [[-1.0, 0.0]], atol=1e-12)
    for x, dd in ((POS, d), (-POS, flipped)):  # METHODS §8.1: mean in-domain projection >= 0
        assert layer_projections({"hidden.0": x}, dd)["hidden.0"].mean() >= 0


def test_projections_summed_over_layers_by_hand():
    d = fit_directions({"a": POS, "b": POS[:, ::-1].copy()})  # layer b's axis is e2
    cand = {"a": np.array([[2.0, 7.0], [-1.0, 0.0]]), "b": np.array([[0.0, 3.0], [4.0, -2.0]])}
    per = layer_projections(cand, d)
    np.testing.assert_allclose(per["a"], [2.0, -1.0])
    np.testing.assert_allclose(per["b"], [3.0, -2.0])
    np.testing.assert_allclose(sum_layers(per), [5.0, -3.0])
    # zscore per layer: a -> [1, -1], b -> [1, -1]
    np.testing.assert_allclose(sum_layers(per, "zscore"), [2.0, -2.0])


def test_centroid_form_by_hand_and_sign_free():
    d = fit_directions({"a": POS}, n_components=2)
    # basis is +-e1, +-e2; centroid (3, 0): score = x . (V^T V mu) = 3 * x1 whatever the signs
    out = layer_projections({"a": np.array([[2.0, 9.0], [-1.0, 1.0]])}, d, form="centroid")["a"]
    np.testing.assert_allclose(out, [6.0, -3.0], atol=1e-12)


def test_constant_shift_of_first_token_state_keeps_the_ranking():
    rng = np.random.default_rng(0)
    ind, cand = rng.normal(size=(20, 6)) + 1.0, rng.normal(size=(30, 6))
    # METHODS §8.1's invariant holds while the shift keeps the sign of mean(drift) . v; a shift
    # larger than the in-domain mean along v would flip the calibrated sign (and the ranking)
    shift = 0.1 * rng.normal(size=6)
    base = sum_layers(layer_projections({"h": cand}, fit_directions({"h": ind})))
    # drift = mean - first; a constant added to every first-token state shifts all drifts equally
    moved = sum_layers(layer_projections({"h": cand - shift}, fit_directions({"h": ind - shift})))
    np.testing.assert_array_equal(np.argsort(base), np.argsort(moved))


def test_z_normalised_combination_by_hand():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([10.0, 10.0, 40.0])
    # z(a) = [-1.2247, 0, 1.2247]; z(b) = [-0.7071, -0.7071, 1.4142]
    np.testing.assert_allclose(combine_targets([a, b]), [-1.93185, -0.70711, 2.63896], atol=1e-5)
    np.testing.assert_array_equal(combine_targets([a]), a)
    assert np.isnan(combine_targets([np.array([1.0, np.nan]), np.array([2.0, 3.0])])[1])
    np.testing.assert_array_equal(zscore(np.array([4.0, 4.0])), [0.0, 0.0])


def test_nan_rows_are_left_out_of_the_fit_and_scored_nan():
    x = np.vstack([POS, [[np.nan, np.nan]]])
    d = fit_directions({"h": x})
    np.testing.assert_allclose(d.components["h"], [[1.0, 0.0]], atol=1e-12)
    assert np.isnan(sum_layers(layer_projections({"h": np.array([[np.nan, 1.0]])}, d)))[0]
    with pytest.raises(ValueError, match="at least 2"):
        fit_directions({"h": POS[:1]})


def test_in_domain_sample_ranks_above_the_pool_median_on_a_synthetic_pool():
    rng = np.random.default_rng(1)
    direction = np.zeros(16)
    direction[3] = 1.0
    ind = rng.normal(size=(40, 16)) * 0.3 + direction * rng.uniform(2, 4, size=(40, 1))
    pool = rng.normal(size=(200, 16)) * 0.3
    pool[7] = direction * 3 + rng.normal(size=16) * 0.3  # one in-domain-like candidate
    s = sum_layers(layer_projections({"h": pool}, fit_directions({"h": ind})))
    assert s[7] > np.median(s)


ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (2, 9)]
] + [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
    {"instruction": "Write a greeting.", "input": "", "output": "Hello there, friend."},
]
TARGET = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
    for a, b in [(4, 4), (6, 1), (8, 3), (5, 9)]
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_nait_runs_end_to_end_and_keeps_targets_out_of_the_pool(tiny_model_dir, tmp_path):
    from test_pipeline import config
    from thresher.pipeline import run

    data = write_jsonl(tmp_path / "pool.jsonl", ROWS)
    target = write_jsonl(tmp_path / "qa.jsonl", TARGET)
    cfg = config(tiny_model_dir, data, tmp_path / "run", method="nait", count=3)
    cfg.method.params["target"] = [str(target)]
    result, sel, _ = run(cfg)
    assert len(sel.ids) == 3 and len(result.samples) == len(ROWS)
    assert np.isfinite(result.table.columns["nait"]).all()
    passes = sorted(p.name for p in (tmp_path / "run" / "passes").iterdir())
    assert "target.qa" in passes and len(passes) == 2
    # the target pass holds the 4 target rows only
    store_dir = tmp_path / "run" / "passes" / "target.qa"
    assert sum(json.loads(p.read_text())["rows"] for p in store_dir.glob("*.done")) == len(TARGET)
    # ifd afterwards in the same folder reads nait's cond pass: no new cond pass
    cfg2 = config(tiny_model_dir, data, tmp_path / "run", method="ifd", count=3)
    r2, _, _ = run(cfg2)
    assert (
        r2.passes["cond"]["scored"] == 0
        and r2.passes["cond"]["label"] == result.passes["cond"]["label"]
    )


def test_capture_lets_ifd_pay_for_nait_and_ppl_for_mads(tiny_model_dir, tmp_path):
    from test_pipeline import config
    from thresher.pipeline import run, validate

    data = write_jsonl(tmp_path / "pool.jsonl", ROWS)
    target = write_jsonl(tmp_path / "qa.jsonl", TARGET)
    cfg = config(tiny_model_dir, data, tmp_path / "run", method="ifd", count=3)
    cfg.score.capture = "nait"
    first, _, _ = run(cfg)
    assert first.passes["cond"]["scored"] == len(ROWS)
    later = config(tiny_model_dir, data, tmp_path / "run", method="nait", count=3)
    later.method.params["target"] = [str(target)]
    r, sel, _ = run(later)
    assert (
        r.passes["cond"]["scored"] == 0
        and r.passes["cond"]["label"] == first.passes["cond"]["label"]
    )
    fresh = config(
        tiny_model_dir, data, tmp_path / "fresh", method="nait", count=3
    )  # the same scores as a nait-first run
    fresh.method.params["target"] = [str(target)]
    rf, self_, _ = run(fresh)
    assert (
        np.array_equal(r.table.columns["nait"], rf.table.columns["nait"]) and sel.ids == self_.ids
    )
    # one folder, two captures: mads pools differently, so it gets a cond pass of its own
    cfg = config(tiny_model_dir, data, tmp_path / "run", method="ppl", count=3)
    cfg.score.capture = "mads"
    assert run(cfg)[0].passes["cond"]["scored"] == len(ROWS)
    r, _, _ = run(config(tiny_model_dir, data, tmp_path / "run", method="mads", count=3))
    assert r.passes["cond"]["scored"] == 0
    # nowhere to capture: superfiltering's passes use the plain template; a misspelt method
    cfg = config(tiny_model_dir, data, tmp_path / "x", method="superfiltering", count=3)
    cfg.score.capture = "nait"
    with pytest.raises(
        ValueError,
        match=r"score.capture='nait' adds activations to a pass.*'superfiltering' has none",
    ):
        validate(cfg)
    cfg = config(tiny_model_dir, data, tmp_path / "x", method="ifd", count=3)
    cfg.score.capture = "niat"
    with pytest.raises(ValueError, match=r"niat.*nait"):
        validate(cfg)


def test_every_pass_of_a_nait_run_goes_to_the_configured_engine(
    tiny_model_dir, tmp_path, monkeypatch
):
    import thresher.engine.ray as ray_engine
    from test_pipeline import config
    from thresher.engine.local import run_pass
    from thresher.pipeline import run

    seen = []

    def on_ray(samples, scorer, store, load, options, **kw):  # records the call, scores locally
        seen.append((store.dir.name, load.name, options.concurrency))
        return run_pass(samples, scorer, store, **kw)

    monkeypatch.setattr(ray_engine, "run_pass_ray", on_ray)
    cfg = config(
        tiny_model_dir,
        write_jsonl(tmp_path / "pool.jsonl", ROWS),
        tmp_path / "run",
        method="nait",
        count=3,
    )
    cfg.method.params["target"] = [str(write_jsonl(tmp_path / "qa.jsonl", TARGET))]
    cfg.score.engine, cfg.score.ray_concurrency = "ray", 3
    run(cfg)
    assert (
        sorted(name for name, _, _ in seen)[1:] == ["target.qa"] and len(seen) == 2
    )  # the pool's cond pass and the target's
    assert {(m, c) for _, m, c in seen} == {(str(tiny_model_dir), 3)}


def test_nait_needs_a_target():
    from thresher.methods import build

    with pytest.raises(ValueError, match="--target"):
        build("nait", "tiny", {})


@pytest.mark.integration
def test_nait_on_40_real_rows_with_20_gsm8k_targets(smollm2, shared_data, tmp_path):
    from thresher.config import RunConfig
    from thresher.pipeline import run

    # the pool: 36 Alpaca rows + 4 held-out GSM8K rows (not among the 20 targets)
    alpaca = json.loads((shared_data / "alpaca_en_demo.json").read_text())[:36]
    gsm = [
        json.loads(x) for x in (shared_data / "gsm8k_test.jsonl").read_text().splitlines()[100:104]
    ]
    pool = alpaca + [
        {"instruction": g["question"], "input": "", "output": g["answer"]} for g in gsm
    ]
    data = write_jsonl(tmp_path / "pool.jsonl", pool)
    cfg = RunConfig()
    cfg.data.path = str(data)
    cfg.method.name = "nait"
    cfg.method.params = {"target": [str(shared_data / "gsm8k_test.jsonl")], "target_limit": 20}
    cfg.select.count = 4
    cfg.output.dir = str(tmp_path / "run")
    cfg.score.progress = False
    result, sel, _ = run(cfg, loaded=smollm2)
    t = result.table
    s = t.columns["nait"]
    ok = np.array(t.eligible)
    assert ok.sum() >= 38 and np.isfinite(s[ok]).all() and len(sel.ids) == 4
    # every held-out GSM8K row ranks above the pool median
    gsm_rows = np.arange(36, 40)
    assert (s[gsm_rows] > np.median(s[ok])).all(), s[gsm_rows]
    assert len(list((tmp_path / "run" / "passes" / "target.gsm8k_test").glob("*.done"))) >= 1
    # pass sharing with ifd is tested on a tiny model above (it would cost one more pass here)
