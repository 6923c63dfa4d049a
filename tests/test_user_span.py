"""The `user` pooling span: only the user content's tokens, never the template's words (MADS
`text_scope=instruction`, METHODS §6.2.2), on every tokenizer family and template."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from thresher.backends.hf import HFBackend, decoder_layers, mlp_activation_module
from thresher.data import Message, Sample
from thresher.methods import build
from thresher.passes import PassSpec, Pooling
from thresher.templates import Rendered, Renderer
from tiny import FAMILIES, chatml_llama_tokenizer, tiny_llama

INSTRUCTION, INPUT = "Reverse the word.", "hello"
SYSTEM = "You are terse."


def sample(instruction=INSTRUCTION, input=INPUT, output="olleh", system=SYSTEM, sid="s"):
    user = instruction + ("\n" + input if input else "")
    head = (Message("system", system),) if system else ()
    return Sample(
        sid, (*head, Message("user", user), Message("assistant", output)), instruction, input
    )


def user_spec(template="alpaca", **kw) -> PassSpec:
    return PassSpec(
        model="tiny", template=template, pooling=Pooling(layers=(0,), span="user"), **kw
    )


def pieces(tok, r: Rendered) -> list[str]:
    return [tok.decode(list(r.ids[a:b])) for a, b in r.ranges("user")]


def outside(tok, r: Rendered) -> str:
    """The prompt's tokens that are not user content, decoded."""
    a, b = r.spans["prompt"]
    user = {k for x, y in r.ranges("user") for k in range(x, y)}
    return tok.decode([t for k, t in enumerate(r.ids[a:b], a) if k not in user])


# the template's own words: each must be outside the user span (and inside the prompt)
TEMPLATE_WORDS = {
    "alpaca": ("Below is an instruction", "Instruction:", "Input:", "Response:"),
    "chat": (SYSTEM, "user\n", "<|im_start|>", "<start_of_turn>"),
    "{system}\nQ: {instruction}\nA:": (SYSTEM, "Q:", "A:"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("template", ["alpaca", "plain", "chat", "{system}\nQ: {instruction}\nA:"])
def test_user_span_holds_the_user_content_and_no_template_word(family, template):
    tok = FAMILIES[family][0]()
    if template == "chat" and not tok.chat_template:
        pytest.skip("this tokenizer has no chat template")
    r = Renderer(tok, user_spec(template)).render(sample())
    assert r.status == "ok"
    got = pieces(tok, r)
    if template == "chat":  # one user message: instruction + "\n" + input
        assert [g.strip() for g in got] == [f"{INSTRUCTION}\n{INPUT}"]
    elif template.startswith("{system}"):  # no {input} field
        assert [g.strip() for g in got] == [INSTRUCTION]
    else:  # two ranges: the template writes "### Input:" (or a newline) between them
        # a token may merge template characters with the content's last one (gemma: ".\n\n###")
        assert got[0].strip().startswith(INSTRUCTION) and got[1].strip() == INPUT
    p0, p1 = r.spans["prompt"]
    assert all(p0 <= a < b <= p1 for a, b in r.ranges("user"))
    user_text, rest = "".join(got), outside(tok, r)
    for word in TEMPLATE_WORDS.get(template, ()):
        if template == "chat" and word in ("<|im_start|>", "<start_of_turn>") and word not in rest:
            continue  # the other family's markup
        assert word not in user_text and word in rest, word


@pytest.mark.parametrize("family", list(FAMILIES))
def test_user_span_is_clipped_to_what_truncation_keeps(family):
    tok = FAMILIES[family][0]()
    s = sample(instruction="Sort " + "the numbers " * 30 + "please.", input="3, 1, 2")
    full = Renderer(tok, user_spec(max_length=4096)).render(s)
    for m in (60, 30, 16):
        cut = Renderer(tok, user_spec(max_length=m)).render(s)
        assert cut.status == "ok" and "prompt" in cut.truncated
        lost = full.spans["prompt"][1] - cut.spans["prompt"][1]  # prompt tokens cut (from the left)
        lead = cut.spans["prompt"][0]
        kept = {k - lost for a, b in full.ranges("user") for k in range(a, b) if k - lost >= lead}
        assert {k for a, b in cut.ranges("user") for k in range(a, b)} == kept
    # the whole prompt but its BOS cut away: no user token is left, the row pools NaN
    tiny = Renderer(tok, user_spec(max_length=4)).render(sample(output="olleh " * 10))
    assert tiny.status == "ok" and tiny.ranges("user") == ()


@pytest.mark.parametrize("family", ["chatml", "gemma"])
def test_user_span_in_the_instruction_oneshot_and_uncond_views(family):
    tok = FAMILIES[family][0]()
    s, demo = sample(), sample("Name a colour.", "", "Blue.", None, "d")
    cond = Renderer(tok, user_spec()).render(s)
    inst = Renderer(tok, user_spec(view="instruction")).render(s)
    one = Renderer(tok, user_spec(view="oneshot")).render(s, demo)
    assert pieces(tok, inst) == pieces(tok, cond) == pieces(tok, one)
    assert one.ranges("user")[0][0] > one.spans["demo"][1]  # the demonstration is no user content
    assert Renderer(tok, user_spec(view="uncond")).render(s).ranges("user") == ()
    assert Renderer(tok, user_spec(view="oneshot_uncond")).render(s, demo).ranges("user") == ()


def test_rendered_json_round_trip_keeps_the_user_ranges():
    tok = chatml_llama_tokenizer()
    r = Renderer(tok, user_spec()).render(sample())
    assert len(r.ranges("user")) == 2
    assert Rendered.from_json(r.to_json()) == r


def test_chat_template_that_rewrites_a_content_is_refused_per_row():
    tok = chatml_llama_tokenizer()
    tok.chat_template = tok.chat_template.replace(
        "message['content']", "message['content'] | upper"
    )
    assert Renderer(tok, user_spec("chat")).render(sample()).status == "user_span_unknown"


class NoOffsets:
    """A tokenizer that ignores `return_offsets_mapping`, as transformers' Python backend does."""

    def __init__(self, tok):
        self._tok = tok
        self.name_or_path = "some/slow-tokenizer"

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kw):
        kw.pop("return_offsets_mapping", None)
        return self._tok(text, **kw)


def test_a_tokenizer_without_offsets_is_refused_with_its_name():
    with pytest.raises(ValueError, match=r"NoOffsets \(some/slow-tokenizer\).*fast tokenizer"):
        Renderer(NoOffsets(chatml_llama_tokenizer()), user_spec())
    Renderer(NoOffsets(chatml_llama_tokenizer()), PassSpec(model="tiny"))  # not needed: fine


def test_user_span_needs_thresher_rendering():
    with pytest.raises(ValueError, match="boundary='exact'"):
        user_spec(boundary="cherry")


def states_of(model, module, ids) -> torch.Tensor:
    """[tokens, width]: what `module` outputs for one unpadded sequence (batch 1)."""
    box = {}

    def keep(_m, _a, out):
        box["x"] = out[0] if isinstance(out, tuple) else out

    h = module.register_forward_hook(keep)
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]))
    h.remove()
    return box["x"].reshape(len(ids), -1)


@pytest.mark.parametrize("field", ["hidden", "mlp"])
@pytest.mark.parametrize("how", ["mean", "max"])
def test_pooled_user_span_is_the_mean_over_both_ranges(field, how):
    """Batched, right-padded pooling over the user span equals the naive reduction of the states
    at those positions (batch 1): the mean weighs every user token alike across the two ranges."""
    tok = chatml_llama_tokenizer()
    model = tiny_llama(tok)
    spec = dataclasses.replace(
        user_spec(), pooling=Pooling(sources=(field,), layers=(1,), how=how, span="user")
    )
    rows = [
        Renderer(tok, spec).render(s)
        for s in (sample(), sample("Add 2 and 3 and then 4.", "", "9", None, "b"))
    ]
    out = HFBackend(model, tok).run(rows, spec)
    layer = decoder_layers(model)[1]
    mod = layer if field == "hidden" else mlp_activation_module(layer)
    for i, r in enumerate(rows):
        x = states_of(model, mod, r.ids)
        pos = [k for a, b in r.ranges("user") for k in range(a, b)]
        want = x[pos].mean(0) if how == "mean" else x[pos].amax(0)
        np.testing.assert_allclose(
            out.activations[f"{field}.1"][i], want.numpy(), atol=3e-5, rtol=1e-4
        )


def test_mads_instruction_scope_pools_the_user_span():
    assert build("mads", "m").passes["cond"].pooling.span == "user"
    assert build("mads", "m", {"text_scope": "prompt"}).passes["cond"].pooling.span == "prompt"
