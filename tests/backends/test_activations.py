"""Activation capture: the drift and frac_above pools against their naive definitions on every
tokenizer family, the MLP activation tensor per architecture, and pass sharing by superset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.backends.hf import HFBackend, decoder_layers, mlp_activation_module
from thresher.cache import find_pass, key_material, pass_label, satisfies
from thresher.data import Message, Sample
from thresher.passes import PassSpec, Pooling
from thresher.templates import Renderer
from tiny import FAMILIES

SAMPLES = [
    Sample(
        "a", (Message("user", "Add 2 and 3."), Message("assistant", "2 + 3 = 5.")), "Add 2 and 3."
    ),
    Sample(
        "b",
        (Message("user", "Sort 9, 4, 7 in ascending order."), Message("assistant", "4, 7, 9.")),
        "x",
    ),
]


@pytest.fixture(params=list(FAMILIES), scope="module")
def family(request):
    make_tok, make_model = FAMILIES[request.param]
    tok = make_tok()
    return tok, make_model(tok)


def naive_states(model, ids, field, layer):
    """Per-token states of one sequence, batch 1, no padding: output_hidden_states for `hidden`
    (layers before the last, whose entry is after the final norm), a hook for `mlp`."""
    with torch.inference_mode():
        if field == "hidden":
            return model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[
                layer + 1
            ][0]
        box = {}
        h = mlp_activation_module(decoder_layers(model)[layer]).register_forward_hook(
            lambda m, i, o: box.setdefault("x", o[0].clone())
        )
        model(input_ids=torch.tensor([ids]))
        h.remove()
        return box["x"]


@pytest.mark.parametrize("field", ["hidden", "mlp"])
@pytest.mark.parametrize(
    "pool,span", [("drift", "all"), ("drift", "response"), ("frac_above", "prompt")]
)
def test_pools_match_their_naive_definitions(family, field, pool, span):
    tok, model = family
    spec = PassSpec(
        model="tiny",
        fields=("logprob",),
        pooling=Pooling(
            sources=(field,),
            layers=(0,),
            how=pool,
            span=span,
            threshold=0.05 if pool == "frac_above" else None,
        ),
    )
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    out = HFBackend(model, tok).run(rows, spec)  # batched, right-padded
    for i, r in enumerate(rows):
        x = naive_states(model, list(r.ids), field, 0)
        a, b = (0, len(r.ids)) if span == "all" else r.spans[span]
        want = x[a:b].mean(0) - x[0] if pool == "drift" else (x[a:b] > 0.05).float().mean(0)
        np.testing.assert_allclose(
            out.activations[f"{field}.0"][i], want.numpy(), atol=3e-5, rtol=1e-4
        )


def test_mlp_module_is_the_activation_of_each_architecture(family):
    tok, model = family
    act = mlp_activation_module(decoder_layers(model)[0])
    name = type(model).__name__
    # Llama/Gemma: act_fn(gate_proj x) (SiLU / GELU-tanh); GPT-2: act(c_fc x) (GELU)
    assert act is (
        decoder_layers(model)[0].mlp.act
        if name.startswith("GPT2")
        else decoder_layers(model)[0].mlp.act_fn
    )
    spec = PassSpec(
        model="tiny",
        fields=(),
        pooling=Pooling(sources=("mlp",), layers=(0,), how="mean", span="all"),
    )
    width = HFBackend(model, tok).activation_widths(spec)["mlp.0"]
    assert (
        width == model.config.intermediate_size
        if not name.startswith("GPT2")
        else width == model.config.n_inner
    )


def test_down_proj_input_is_the_gated_product(family):
    """mlp_tap="down_proj_input" pools what the down projection reads: act(gate x) * (up x) in
    gated MLPs (Llama, Gemma), act(c_fc x) in GPT-2, computed here from the weights by hand."""
    tok, model = family
    spec = PassSpec(
        model="tiny",
        fields=(),
        pooling=Pooling(
            sources=("mlp",), layers=(0,), how="mean", span="all", mlp_tap="down_proj_input"
        ),
    )
    r = Renderer(tok, spec).render(SAMPLES[0])
    got = HFBackend(model, tok).run([r], spec).activations["mlp.0"][0]
    block = decoder_layers(model)[0]
    box = {}
    h = block.mlp.register_forward_hook(lambda m, i, o: box.setdefault("x", i[0][0].clone()))
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(r.ids)]))
        h.remove()
        mlp, x = block.mlp, box["x"]
        want = (
            mlp.act(mlp.c_fc(x))
            if type(model).__name__.startswith("GPT2")
            else mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        )
    np.testing.assert_allclose(got, want.mean(0).numpy(), atol=3e-5, rtol=1e-4)
    assert pass_label(spec) != pass_label(
        PassSpec(
            model="tiny",
            fields=(),
            pooling=Pooling(sources=("mlp",), layers=(0,), how="mean", span="all"),
        )
    )


def test_frac_above_needs_its_threshold_and_keys_stay_stable():
    with pytest.raises(ValueError, match="threshold"):
        PassSpec(
            model="m", fields=(), pooling=Pooling(sources=("mlp",), layers=(0,), how="frac_above")
        )
    with pytest.raises(ValueError, match="threshold"):
        PassSpec(
            model="m",
            fields=(),
            pooling=Pooling(sources=("mlp",), layers=(0,), how="mean", threshold=0.5),
        )
    assert "pooling" not in PassSpec(model="m").to_dict()  # absent unless used
    spec = PassSpec(
        model="m",
        fields=(),
        pooling=Pooling(sources=("mlp",), layers=(0, 3), how="frac_above", threshold=0.5),
    )
    assert PassSpec.from_dict(spec.to_dict()) == spec


def material(**kw):
    spec = PassSpec(model="m", **kw)
    return key_material(spec, {"hf_id": "m"}, "tpl", "data")


def test_a_superset_pass_satisfies_a_subset_request():
    ifd = material(fields=("logprob", "entropy"))
    nait = material(
        fields=(
            "logprob",
            "entropy",
        ),
        pooling=Pooling(sources=("hidden",), layers=(0, 1), how="drift", span="all"),
    )
    assert satisfies(nait, ifd) and not satisfies(ifd, nait)
    assert satisfies(
        nait,
        material(
            fields=("logprob",),
            pooling=Pooling(sources=("hidden",), layers=(1,), how="drift", span="all"),
        ),
    )
    assert not satisfies(
        nait,
        material(
            fields=(), pooling=Pooling(sources=("hidden",), layers=(1,), how="mean", span="all")
        ),
    )  # other pooling
    assert not satisfies(
        nait,
        material(
            fields=(), pooling=Pooling(sources=("hidden",), layers=(2,), how="drift", span="all")
        ),
    )  # other layer
    assert not satisfies(nait, material(fields=("logprob",), max_length=256))
    other_data = dict(ifd, data_hash="other")
    assert not satisfies(nait, other_data)


def test_find_pass_and_labels(tmp_path):
    from thresher.cache import PassStore

    nait_spec = PassSpec(
        model="m",
        fields=(
            "logprob",
            "entropy",
        ),
        pooling=Pooling(sources=("hidden",), layers=(0, 1), how="drift", span="all"),
    )
    ifd_spec = PassSpec(model="m", fields=("logprob", "entropy"))
    assert pass_label(ifd_spec) == "cond.alpaca" and pass_label(nait_spec).startswith(
        "cond.alpaca.hidden-"
    )
    assert find_pass(tmp_path, material(fields=("logprob",))) is None
    m = key_material(nait_spec, {"hf_id": "m"}, "tpl", "data")
    PassStore(tmp_path, nait_spec, m).open()
    label, found = find_pass(tmp_path, key_material(ifd_spec, {"hf_id": "m"}, "tpl", "data"))
    assert label == pass_label(nait_spec) and found == m
