"""NAIT's pooling readings (METHODS §5.3 (a) token mean, (b) last token, each minus the first
token), the activation read (residual stream or MLP neurons) and the final norm on the last
layer, against pooled vectors computed here from `output_hidden_states` and forward hooks of the
test's own (batch 1, no padding), never from thresher's pooling code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.backends.hf import HFBackend
from thresher.data import Message, Sample
from thresher.methods import build
from thresher.methods.nait import pool_pass
from thresher.passes import PassSpec, Pooling
from thresher.templates import Renderer
from tiny import FAMILIES

SAMPLES = [
    Sample(
        "a", (Message("user", "Add 2 and 3."), Message("assistant", "2 + 3 = 5.")), "Add 2 and 3."
    ),
    Sample(
        "b",
        (Message("user", "Sort 9, 4, 7 in order."), Message("assistant", "4, 7, 9 is sorted.")),
        "Sort 9, 4, 7 in order.",
    ),
]
N_LAYERS = 3


@pytest.fixture(params=list(FAMILIES), scope="module")
def family(request):
    make_tok, make_model = FAMILIES[request.param]
    tok = make_tok()
    return request.param, tok, make_model(tok, layers=N_LAYERS)


def blocks(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def reference_states(model, ids, neuron):
    """Per layer, [tokens, width] for one sequence: `output_hidden_states` entries 1..L for the
    residual stream (entry L is after the final norm in HF), plus each block's output taken by a
    hook (the last one before the final norm); the MLP activation module's output for `act`."""
    seen = {}

    def keep(i):
        def hook(_m, _a, out):
            seen[i] = (out[0] if isinstance(out, tuple) else out).reshape(len(ids), -1)

        return hook

    mods = [
        b if neuron == "hidden" else getattr(b.mlp, "act_fn", None) or b.mlp.act
        for b in blocks(model)
    ]
    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(mods)]
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    for h in handles:
        h.remove()
    hs = [x[0] for x in out.hidden_states[1:]]
    return hs, [seen[i] for i in range(len(mods))]


def run_nait_pass(tok, model, **kw):
    spec = pool_pass("tiny", **kw).resolve(N_LAYERS)
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    assert len(rows[0].ids) != len(rows[1].ids)  # batched with right padding
    return rows, HFBackend(model, tok).run(rows, spec).activations


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("final_norm", [False, True])
def test_residual_drift_by_hand(family, pooling, final_norm):
    _, tok, model = family
    rows, acts = run_nait_pass(tok, model, pooling=pooling, final_norm=final_norm)
    for i, r in enumerate(rows):
        hs, hooked = reference_states(model, list(r.ids), "hidden")
        # below the last layer, the decoder layer's output is the output_hidden_states entry
        for layer in range(N_LAYERS - 1):
            np.testing.assert_allclose(hooked[layer].numpy(), hs[layer].numpy(), atol=1e-5)
        for layer in range(N_LAYERS):
            x = hs[layer] if final_norm or layer < N_LAYERS - 1 else hooked[layer]
            want = (x.mean(0) if pooling == "mean" else x[-1]) - x[0]
            np.testing.assert_allclose(
                acts[f"hidden.{layer}"][i], want.numpy(), atol=3e-5, rtol=1e-4
            )


def test_output_hidden_states_last_entry_is_after_the_final_norm(family):
    """What `final_norm` stands for: HF's last `output_hidden_states` entry is the model's final
    norm applied to the last block's output, which differs from that output."""
    name, tok, model = family
    ids = Renderer(tok, PassSpec(model="tiny")).render(SAMPLES[0]).ids
    hs, hooked = reference_states(model, list(ids), "hidden")
    norm = model.model.norm if hasattr(model, "model") else model.transformer.ln_f
    with torch.inference_mode():
        np.testing.assert_allclose(norm(hooked[-1]).numpy(), hs[-1].numpy(), atol=1e-5)
    assert not np.allclose(hooked[-1].numpy(), hs[-1].numpy(), atol=1e-2), name


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_mlp_neuron_drift_by_hand(family, pooling):
    _, tok, model = family
    rows, acts = run_nait_pass(tok, model, pooling=pooling, neuron="act")
    assert sorted(acts) == [f"mlp.{k}" for k in range(N_LAYERS)]
    for i, r in enumerate(rows):
        _, hooked = reference_states(model, list(r.ids), "act")
        for layer, x in enumerate(hooked):
            want = (x.mean(0) if pooling == "mean" else x[-1]) - x[0]
            np.testing.assert_allclose(acts[f"mlp.{layer}"][i], want.numpy(), atol=3e-5, rtol=1e-4)


def test_the_two_readings_differ():
    tok = FAMILIES["chatml"][0]()
    model = FAMILIES["chatml"][1](tok, layers=N_LAYERS)
    _, mean = run_nait_pass(tok, model, pooling="mean")
    _, last = run_nait_pass(tok, model, pooling="last")
    assert not np.allclose(mean["hidden.1"], last["hidden.1"], atol=1e-3)


def test_nait_parameters_reach_the_pass_and_are_checked(tmp_path):
    target = tmp_path / "t.jsonl"
    target.write_text('{"instruction": "a", "output": "b"}\n')
    t = {"target": [str(target)]}
    default = build("nait", "m", t).passes["cond"].pooling
    # METHODS §5.4: the residual stream as output_hidden_states gives it, the last after the norm
    assert (default.how, default.sources, default.final_norm) == ("drift", ("hidden",), True)
    raw = build("nait", "m", {**t, "final_norm": False}).passes["cond"].pooling
    assert "final_norm" not in raw.to_dict()  # absent when false, as before the knob
    p = (
        build("nait", "m", {**t, "pooling": "last", "neuron": "down_proj_input"})
        .passes["cond"]
        .pooling
    )
    assert (p.how, p.sources, p.mlp_tap) == ("last_drift", ("mlp",), "down_proj_input")
    assert not p.final_norm  # MLP neurons have no final norm
    normed = build("nait", "m", {**t, "final_norm": True}).passes["cond"]
    assert normed.pooling.final_norm and PassSpec.from_dict(normed.to_dict()) == normed
    with pytest.raises(ValueError, match=r"pooling.*'mean', 'last'"):
        build("nait", "m", {**t, "pooling": "first"})
    with pytest.raises(ValueError, match=r"final_norm=True.*neuron='act'"):
        build("nait", "m", {**t, "neuron": "act", "final_norm": True})
    with pytest.raises(ValueError, match=r"final_norm=True.*no 'hidden'"):
        Pooling(sources=("mlp",), final_norm=True)
