"""The HF backend's fast path against its naive definition, on every tokenizer family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thresher.backends.hf import HFBackend, decoder_layers, logprob_entropy, reference_logprobs
from thresher.data import Message, Sample
from thresher.passes import PassSpec, Pooling
from thresher.templates import Renderer
from tiny import FAMILIES, uniform_llama


def alpaca(instruction: str, output: str, sid: str) -> Sample:
    return Sample(sid, (Message("user", instruction), Message("assistant", output)), instruction)


SAMPLES = [
    alpaca("Add 2 and 3.", "2 + 3 = 5.", "a"),
    alpaca("Sort the numbers 9, 4, 7 in ascending order.", "The sorted list is: 4, 7, 9.", "b"),
    alpaca("Reverse the word stone.", "enots", "c"),
]


@pytest.fixture(params=list(FAMILIES))
def family(request):
    make_tok, make_model = FAMILIES[request.param]
    tok = make_tok()
    return tok, make_model(tok)


@pytest.mark.parametrize("view", ["cond", "uncond", "instruction"])
def test_fast_path_matches_naive(family, view):
    tok, model = family
    spec = PassSpec(model="tiny", view=view, fields=("logprob", "entropy"))
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    out = HFBackend(model, tok).run(rows, spec)  # one padded batch
    for r, lp, ent in zip(rows, out.logprob, out.entropy, strict=True):
        ref_lp, ref_ent = reference_logprobs(model, r)
        assert lp.shape == (r.n_scored,)
        np.testing.assert_allclose(lp, ref_lp, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(ent, ref_ent, atol=2e-5, rtol=1e-5)


def test_uniform_model_closed_forms():
    make_tok = FAMILIES["chatml"][0]
    tok = make_tok()
    model = uniform_llama(tok)
    spec = PassSpec(model="tiny", fields=("logprob", "entropy"))
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    out = HFBackend(model, tok).run(rows, spec)
    v = model.config.vocab_size
    for lp, ent in zip(out.logprob, out.entropy, strict=True):
        np.testing.assert_allclose(lp, -math.log(v), atol=1e-6)
        np.testing.assert_allclose(ent, math.log(v), atol=1e-6)


def test_small_logit_chunks_give_the_same_numbers(family, monkeypatch):
    tok, model = family
    spec = PassSpec(model="tiny", fields=("logprob", "entropy"))
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    whole = HFBackend(model, tok).run(rows, spec)
    monkeypatch.setattr("thresher.backends.hf.LOGIT_CHUNK_ELEMENTS", 3 * len(tok))  # 3 rows a chunk
    chunked = HFBackend(model, tok).run(rows, spec)
    for a, b in zip(whole.logprob + whole.entropy, chunked.logprob + chunked.entropy, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_hooks_match_output_hidden_states(family):
    tok, model = family
    n = len(decoder_layers(model))
    layers = tuple(range(n - 1))  # the last layer's hidden_states entry is after the final norm
    spec = PassSpec(
        model="tiny",
        fields=("logprob",),
        pooling=Pooling(sources=("hidden",), layers=layers, how="mean", span="response"),
    )
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    out = HFBackend(model, tok).run(rows, spec)
    for i, r in enumerate(rows):
        with torch.inference_mode():
            hs = model(input_ids=torch.tensor([r.ids]), output_hidden_states=True).hidden_states
        a, b = r.spans["response"]
        for layer in layers:
            want = hs[layer + 1][0, a:b].mean(0).numpy()
            np.testing.assert_allclose(
                out.activations[f"hidden.{layer}"][i], want, atol=2e-5, rtol=1e-4
            )


@pytest.mark.parametrize("pool", ["mean", "max", "first", "last"])
def test_pooling_over_spans(pool):
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    model = make_model(tok)
    spec = PassSpec(
        model="tiny",
        fields=("logprob",),
        pooling=Pooling(sources=("mlp",), layers=(0,), how=pool, span="prompt"),
    )
    rows = [Renderer(tok, spec).render(s) for s in SAMPLES]
    captured = {}
    act = model.base_model.layers[0].mlp.act_fn
    h = act.register_forward_hook(lambda m, i, o: captured.setdefault("x", o.detach().clone()))
    single = []
    for r in rows:
        captured.clear()
        with torch.inference_mode():
            model(input_ids=torch.tensor([r.ids]))
        a, b = r.spans["prompt"]
        x = captured["x"][0, a:b]
        single.append(
            {"mean": x.mean(0), "max": x.amax(0), "first": x[0], "last": x[-1]}[pool].numpy()
        )
    h.remove()
    out = HFBackend(model, tok).run(rows, spec)
    assert out.activations["mlp.0"].shape == (3, model.config.intermediate_size)
    np.testing.assert_allclose(out.activations["mlp.0"], np.stack(single), atol=2e-5, rtol=1e-4)


def test_capability_and_layer_checks():
    make_tok, make_model = FAMILIES["gpt2"]
    tok = make_tok()
    backend = HFBackend(make_model(tok), tok)
    with pytest.raises(ValueError, match="do not exist"):
        backend.check(
            PassSpec(model="tiny", fields=(), pooling=Pooling(sources=("hidden",), layers=(7,)))
        )


def test_entropy_and_logprob_match_float64_where_fp32_softmax_does_not_sum_to_one():
    g = torch.Generator().manual_seed(0)
    vocab = 49152  # SmolLM2's; large logits far from zero make the fp32 softmax drift most
    spreads = [(1, 30), (3, 40), (0.5, 60), (8, 20), (2, 100), (0.1, 120), (5, -30)]
    logits = torch.stack([torch.randn(vocab, generator=g) * s + shift for s, shift in spreads])
    targets = torch.randint(0, vocab, (len(logits),), generator=g)
    x = logits.double()
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    want_h = -(logp.exp() * logp).sum(-1).numpy()
    want_lp = logp.gather(1, targets[:, None]).squeeze(1).numpy()
    # the case this guards: fp32 softmax sums off 1, and lse - sum(p x) is then off by > 1e-5
    p32 = torch.softmax(logits, dim=-1)
    assert (p32.sum(-1).double() - 1).abs().max() > 1e-7
    naive = torch.logsumexp(logits, dim=-1) - (p32 * logits).sum(-1)
    assert np.abs(naive.double().numpy() - want_h).max() > 1e-5
    lp, h = logprob_entropy(logits.clone(), targets, with_entropy=True)
    np.testing.assert_allclose(h.double().numpy(), want_h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lp.double().numpy(), want_lp, rtol=0, atol=2e-6)
    lp_only, none = logprob_entropy(logits.clone(), targets, with_entropy=False)
    assert none is None
    np.testing.assert_array_equal(lp_only.numpy(), lp.numpy())


@pytest.mark.parametrize("family_name", ["chatml", "gpt2"])
def test_bf16_head_writes_its_own_dtype_then_float32(family_name):
    """A bf16 lm_head's GEMM fills a bf16 buffer that is widened to fp32 before log-softmax:
    one row at a time this matches the naive definition on the same bf16 model."""
    make_tok, make_model = FAMILIES[family_name]
    tok = make_tok()
    model = make_model(tok).to(torch.bfloat16)
    spec = PassSpec(model="tiny", fields=("logprob", "entropy"))
    backend = HFBackend(model, tok)
    for s in SAMPLES:
        row = Renderer(tok, spec).render(s)
        out = backend.run([row], spec)
        ref_lp, ref_ent = reference_logprobs(model, row)
        np.testing.assert_allclose(out.logprob[0], ref_lp, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(out.entropy[0], ref_ent, atol=2e-5, rtol=1e-5)
    assert [b.dtype for b in backend._buffers] == [torch.float32, torch.float32, torch.bfloat16]
