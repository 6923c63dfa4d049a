"""InstructDiff `--reproduce` pieces (METHODS §12.3): the reference's scoring of
prompt + "\n" + response, its diff columns, and its trim-then-token-budget selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thresher.data import Message, Sample
from thresher.engine.scorer import Scorer
from thresher.passes import PassSpec, Ragged
from thresher.selectors.trim import instructdiff_reference, trim_both_ends
from thresher.signals.instructdiff import (
    mean_nll,
    mean_token_entropy,
    reference_diff_entropy,
    reference_diff_nll,
)
from thresher.templates import ALPACA_PROMPT_NO_INPUT
from tiny import chatml_llama_tokenizer, tiny_llama

ROWS = [
    ("Give the sum of 17 and 25.", "", "17 + 25 = 42."),
    ("Reverse the word.", "hello", "The reversed word is olleh."),
    ("Name a colour.", "", "Blue, like the sea."),
    ("Say nothing.", "", ""),
]


def sample(i: int, instruction: str, input: str, output: str) -> Sample:
    user = instruction + ("\n" + input if input else "")
    return Sample(str(i), (Message("user", user), Message("assistant", output)), instruction, input)


def reference_metrics(model, tok, instruction: str, response: str) -> dict[str, float]:
    """scoring.py's `_compute_metrics`, written here from METHODS §12.3 (fp32, not fp16)."""
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)  # the input is ignored
    prompt_ids = tok(prompt, return_tensors="pt").input_ids
    full_ids = tok(prompt + "\n" + response, return_tensors="pt").input_ids
    labels = full_ids[:, 1:]
    with torch.no_grad():
        logits = model(full_ids).logits[:, :-1, :]
    prompt_len = prompt_ids.shape[1] - 1
    target_len = labels.shape[1] - prompt_len
    t_logits = logits[:, prompt_len : prompt_len + target_len]
    t_labels = labels[:, prompt_len : prompt_len + target_len]
    log_probs = torch.log_softmax(t_logits, dim=-1)
    nll = -log_probs.gather(2, t_labels.unsqueeze(2)).squeeze(2).mean()
    entropy = -(torch.softmax(t_logits, dim=-1) * log_probs).sum(-1).mean()
    return {"nll": float(nll), "avg_entropy": float(entropy), "n_tokens": int(target_len)}


def test_scorer_on_the_reference_text_gives_the_reference_metrics_and_diffs():
    torch.set_num_threads(1)
    tok = chatml_llama_tokenizer()
    base, calibrated = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    samples = [sample(i, *r) for i, r in enumerate(ROWS)]
    spec = PassSpec(
        model="m", view="cond", fields=("logprob", "entropy"), boundary="instructdiff",
        max_length=4096,
    )  # fmt: skip
    cols = {name: Scorer(spec, lm, tok)(samples) for name, lm in (("b", base), ("c", calibrated))}
    ref = {
        name: [reference_metrics(lm, tok, r[0], r[2]) for r in ROWS]
        for name, lm in (("b", base), ("c", calibrated))
    }
    assert cols["b"]["status"] == ["ok"] * 4  # the empty response is scored: its "\n" alone
    assert cols["b"]["n_response_tokens"] == [m["n_tokens"] for m in ref["b"]]
    assert cols["b"]["n_response_tokens"][3] == 1
    lp = {k: Ragged.from_rows(c["logprob"]) for k, c in cols.items()}
    h = {k: Ragged.from_rows(c["entropy"]) for k, c in cols.items()}
    np.testing.assert_allclose(mean_nll(lp["b"]), [m["nll"] for m in ref["b"]], atol=1e-5)
    np.testing.assert_allclose(
        mean_token_entropy(h["c"]), [m["avg_entropy"] for m in ref["c"]], atol=1e-5
    )
    # selection.py: diff = base - instruct, for both columns
    want_nll = [b["nll"] - c["nll"] for b, c in zip(ref["b"], ref["c"], strict=True)]
    want_h = [b["avg_entropy"] - c["avg_entropy"] for b, c in zip(ref["b"], ref["c"], strict=True)]
    np.testing.assert_allclose(reference_diff_nll(lp["b"], lp["c"]), want_nll, atol=1e-5)
    np.testing.assert_allclose(reference_diff_entropy(h["b"], h["c"]), want_h, atol=1e-5)


def test_reference_diffs_golden():
    base = Ragged.from_rows([[-1.0, -3.0], [-0.1], [-1.0], []])
    inst = Ragged.from_rows([[-0.5, -0.5], [-0.3], [-1.0, -1.0], []])
    d = reference_diff_nll(base, inst)
    # base - calibrated: 2.0 - 0.5, the paper's ΔNLL (calibrated - base) negated
    assert d[0] == 1.5
    # each NLL is a float32 (scoring.py: float(fp32 mean)), the difference a Python float
    assert d[1] == float(np.float32(0.1)) - float(np.float32(0.3)) != 0.1 - 0.3
    assert math.isnan(d[2]) and math.isnan(d[3])  # other token counts; empty rows
    h = reference_diff_entropy(Ragged.from_rows([[2.0, 4.0]]), Ragged.from_rows([[1.0, 1.0]]))
    assert h.tolist() == [2.0]  # base - calibrated = the paper's ΔH


# file order: id, diff_nll, diff_entropy, n_tokens. Ties: diff_nll -1.0 at positions 0 and 3
# and 2.0 at 6 and 8 (the later one has the smaller id, so id order and file order disagree);
# diff_entropy 0.2 at positions 1, 2, 5.
TABLE = [
    ("j", -1.0, 0.5, 10),
    ("b", 0.3, 0.2, 4),
    ("c", 0.1, 0.2, 6),
    ("a", -1.0, 0.0, 5),
    ("e", 0.2, -0.1, 7),
    ("f", 0.4, 0.2, 3),
    ("i", 2.0, 0.9, 8),
    ("h", 0.0, 0.3, 2),
    ("g", 2.0, -0.5, 9),
    ("d", 0.5, 0.1, 6),
]
IDS = [r[0] for r in TABLE]
DNLL = np.array([r[1] for r in TABLE])
DH = np.array([r[2] for r in TABLE])
TOKENS = np.array([r[3] for r in TABLE])


def select(gamma: float, beta: float, keep=None):
    return instructdiff_reference(IDS, DNLL, DH, TOKENS, gamma=gamma, beta=beta, keep=keep)


def test_reference_trim_breaks_ties_by_file_order():
    survivors, _ = select(0.1, 0.5)
    # stable ascending diff_nll: j a h c e b f d i g; int(10 * 0.1) = 1 from each end
    assert [IDS[i] for i in np.flatnonzero(~survivors)] == ["j", "g"]
    np.testing.assert_array_equal(survivors, trim_both_ends(IDS, DNLL, 0.1, ties="position"))
    # thresher's own rule orders ties by id: a before j, g before i
    by_id = trim_both_ends(IDS, DNLL, 0.1)
    assert [IDS[i] for i in np.flatnonzero(~by_id)] == ["a", "i"]


def test_reference_token_budget_overshoots_with_entropy_ties_in_nll_order():
    # total_tokens = 60 over all scored rows, before the trim; int(60 * 0.5) = 30
    # survivors in diff_nll order: a h c e b f d i; stable by diff_entropy:
    # e(-0.1, 7) a(0.0, 5) d(0.1, 6) c, b, f (0.2: their diff_nll order, not file or id order:
    # 6, 4, 3) h(0.3) i(0.9); cumulative 7 12 18 24 28 31: f crosses 30 and is taken
    _, sel = select(0.1, 0.5)
    assert sel.ids == ("e", "a", "d", "c", "b", "f") and sel.note == ""
    # a budget met exactly stops there: int(60 * 0.47) = 28
    assert select(0.1, 0.47)[1].ids == ("e", "a", "d", "c", "b")
    # a budget of int(60 * 0.01) = 0 still takes the first row (the code appends, then checks)
    assert select(0.1, 0.01)[1].ids == ("e",)


def test_reference_without_trim_keeps_file_order_for_ties():
    # gamma = 0: filter_by_diff_nll returns the rows unsorted, so the 0.2 ties are b, c, f;
    # ascending diff_entropy: g(9) e(7) a(5) d(6) b(4) -> 31 >= 30
    survivors, sel = select(0.0, 0.5)
    assert survivors.all() and sel.ids == ("g", "e", "a", "d", "b")


def test_reference_returns_every_survivor_when_they_cannot_reach_the_budget():
    # survivors hold 60 - 10 (j) - 9 (g) = 41 < int(60 * 1.0)
    survivors, sel = select(0.1, 1.0)
    assert set(sel.ids) == {IDS[i] for i in np.flatnonzero(survivors)} and len(sel.ids) == 8
    assert "hold 41 response tokens, fewer than int(60 * 1.0) = 60" in sel.note


def test_reference_counts_only_kept_finite_rows():
    keep = np.ones(10, dtype=bool)
    keep[6] = False  # i is not scored
    dh = DH.copy()
    dh[0] = np.nan  # j has no finite diff_entropy
    survivors, sel = instructdiff_reference(IDS, DNLL, dh, TOKENS, gamma=0.1, beta=0.5, keep=keep)
    # N = 8 rows, int(8 * 0.1) = 0: nothing trimmed; total = 42 tokens, budget int(21.0) = 21
    assert not survivors[0] and not survivors[6] and survivors.sum() == 8
    # g(-0.5, 9) e(-0.1, 7) a(0.0, 5): 9 16 21
    assert sel.ids == ("g", "e", "a")


def test_reference_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"beta=1\.5"):
        select(0.1, 1.5)
    with pytest.raises(ValueError, match=r"gamma=0\.5"):
        select(0.5, 0.1)
    with pytest.raises(ValueError, match="one token count per id"):
        instructdiff_reference(IDS, DNLL, DH, TOKENS[:3], gamma=0.1, beta=0.1)
    with pytest.raises(ValueError, match="ties='file'"):
        trim_both_ends(IDS, DNLL, 0.1, ties="file")


POOL = [
    ("Give the sum of 17 and 25.", "", "17 + 25 = 42."),
    ("Reverse the word.", "hello", "The reversed word is olleh."),
    ("Name a colour.", "", "Blue, like the sea."),
    ("Count to three.", "", "One, two, three."),
    ("Translate to French.", "cat", "chat"),
    ("What is 2 times 8?", "", "16"),
    ("Write a greeting.", "", "Hello there, friend!"),
    ("Spell the word.", "dog", "d-o-g"),
    ("Name a fruit.", "", "An apple."),
    ("Add 5 and 6.", "", "5 + 6 = 11."),
    ("Give an antonym of hot.", "", "Cold."),
    ("Finish the phrase.", "once upon", "a time."),
]


@pytest.fixture(scope="module")
def reproduce_setup(tmp_path_factory):
    import json

    d = tmp_path_factory.mktemp("idiff-repro")
    tok = chatml_llama_tokenizer()
    for name, seed in (("base", 0), ("calibrated", 1)):
        tiny_llama(tok, seed=seed).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    rows = [{"instruction": i, "input": x, "output": o} for i, x, o in POOL]
    (d / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _reproduce_config(d, out, **params):
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.model.name, cfg.data.path, cfg.output.dir = str(d / "base"), str(d / "pool.jsonl"), str(out)
    cfg.method.name, cfg.method.reproduce = "instructdiff", True
    cfg.method.params = {"calibrated_model": str(d / "calibrated"), "gamma": 0.1, **params}
    cfg.select.fraction = 0.3
    cfg.score.progress = False
    return cfg


def test_reproduce_with_a_calibrated_model_gives_the_reference_selection(reproduce_setup, tmp_path):
    """`instructdiff --reproduce` with `calibrated_model=`: no warm-up, and the values and the
    selection of the reference's scoring.py + selection.py, re-implemented here from §12.3."""
    from transformers import AutoModelForCausalLM

    from thresher.pipeline import run

    torch.set_num_threads(1)
    d = reproduce_setup
    result, sel, manifest = run(_reproduce_config(d, tmp_path / "run"))
    assert not (tmp_path / "run" / "calibrators").exists()  # nothing was trained
    tok = chatml_llama_tokenizer()
    models = {k: AutoModelForCausalLM.from_pretrained(d / k).eval() for k in ("base", "calibrated")}
    ref = [{k: reference_metrics(m, tok, i, o) for k, m in models.items()} for i, _, o in POOL]
    diff_nll = [
        float(np.float32(r["base"]["nll"])) - float(np.float32(r["calibrated"]["nll"])) for r in ref
    ]
    diff_h = [
        float(np.float32(r["base"]["avg_entropy"]))
        - float(np.float32(r["calibrated"]["avg_entropy"]))
        for r in ref
    ]
    t = result.table
    np.testing.assert_allclose(t.columns["diff_nll"], diff_nll, atol=1e-5)
    np.testing.assert_allclose(t.columns["delta_entropy"], diff_h, atol=1e-5)
    n_tokens = [r["base"]["n_tokens"] for r in ref]  # response tokens + the "\n"
    assert t.columns["n_response_tokens"].tolist() == n_tokens
    # selection.py: stable sort by diff_nll, drop int(N * gamma) from each end, then stable sort
    # of the survivors by diff_entropy, rows appended until the tokens reach int(total * beta)
    order = sorted(range(len(POOL)), key=lambda k: diff_nll[k])
    cut = int(len(order) * 0.1)
    survivors = sorted(order[cut : len(order) - cut], key=lambda k: diff_h[k])
    budget, got, want = int(sum(n_tokens) * 0.3), 0, []
    for k in survivors:
        want.append(t.ids[k])
        got += n_tokens[k]
        if got >= budget:
            break
    assert list(sel.ids) == want
    assert sum(s == "filtered:dnll_tail" for s in t.status) == 2 * cut
    calibrated = manifest["passes"]["calibrated"]
    assert calibrated["model"] == str(d / "calibrated") and len(calibrated["model_sha256"]) == 64


def test_calibrated_model_needs_the_same_tokenizer_and_one_round(reproduce_setup, tmp_path):
    from thresher.methods import build
    from thresher.pipeline import validate
    from tiny import gpt2_tokenizer, tiny_gpt2

    other = tmp_path / "gpt2"
    tok = gpt2_tokenizer()
    tiny_gpt2(tok).save_pretrained(other)
    tok.save_pretrained(other)
    cfg = _reproduce_config(reproduce_setup, tmp_path / "run", calibrated_model=str(other))
    with pytest.raises(ValueError, match=r"gpt2'.*another tokenizer than the run's model.*base'"):
        validate(cfg)
    with pytest.raises(ValueError, match="iterations=1"):
        build("instructdiff", "m", {"calibrated_model": "x", "iterations": 2})
    with pytest.raises(ValueError, match="give one"):
        build("instructdiff", "m", {"calibrated_model": "x", "calibrator": "y"})
    assert "instructdiff" in [
        line.split()[0] for line in _ls_methods() if "reproduce mode: yes" in line
    ]


def _ls_methods() -> list[str]:
    """`thresher ls methods` as (method, its passes line) pairs joined into one line each."""
    import contextlib
    import io

    from thresher.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["ls", "methods"])
    lines = buf.getvalue().splitlines()[1:]
    return [" ".join(lines[k : k + 4]) for k in range(0, len(lines), 4)]
