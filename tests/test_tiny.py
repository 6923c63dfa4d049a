"""The tiny tokenizers and models in tests/tiny.py behave like the families they stand for."""

from __future__ import annotations

import math

import pytest
import torch
from jinja2 import TemplateError

from tiny import (
    BOUNDARY_CASES,
    FAMILIES,
    _chatml_backend,
    _gemma_backend,
    _gpt2_backend,
    chatml_llama_tokenizer,
    gemma_tokenizer,
    gpt2_tokenizer,
    tiny_gemma3,
    tiny_llama,
    uniform_llama,
)

torch.set_num_threads(1)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
]

# family -> (bos, eos, pad, BOS added by default)
SPECIALS = {
    "chatml": ("<s>", "</s>", "<pad>", True),
    "gpt2": ("<|endoftext|>", "<|endoftext|>", None, False),
    "gemma": ("<bos>", "<eos>", "<pad>", True),
}


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_special_tokens_and_default_bos(family: str) -> None:
    bos, eos, pad, adds_bos = SPECIALS[family]
    tok = FAMILIES[family][0]()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    ids = tok("Hello world").input_ids
    assert (ids[0] == tok.bos_token_id) is adds_bos
    assert ids == [tok.bos_token_id] * adds_bos + enc(tok, "Hello world")
    assert tok.add_bos_token is adds_bos
    assert tok("Hello world", add_special_tokens=False).input_ids[0] != tok.bos_token_id
    # the tokenizer never appends EOS by itself
    assert ids[-1] != tok.eos_token_id


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vocab_is_small_but_merged(family: str) -> None:
    tok = FAMILIES[family][0]()
    assert 300 <= len(tok) <= 600
    assert len(enc(tok, "Below is an instruction that describes a task.")) < 20
    assert tok.decode(enc(tok, "Héllo → 3.14\n\n  ok")) == "Héllo → 3.14\n\n  ok"


@pytest.mark.parametrize(
    ("backend", "factory"),
    [
        (_chatml_backend, chatml_llama_tokenizer),
        (_gpt2_backend, gpt2_tokenizer),
        (_gemma_backend, gemma_tokenizer),
    ],
)
def test_training_is_deterministic_and_calls_are_independent(backend, factory) -> None:
    assert backend.__wrapped__().to_str() == backend().to_str()
    first = factory()
    first.pad_token = first.eos_token
    first.padding_side = "left"
    first.chat_template = "{{ messages }}"
    first.add_tokens(["<mutated>"])
    fresh = factory()
    assert fresh.padding_side == "right"
    assert len(fresh) == len(first) - 1
    assert fresh.chat_template != first.chat_template


def test_chatml_template() -> None:
    tok = chatml_llama_tokenizer()
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(enc(tok, special)) == 1
    full = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert full == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:-1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert full.startswith(prompt)
    ids = tok.apply_chat_template(MESSAGES[:-1], add_generation_prompt=True, return_dict=True)
    # the template emits no BOS and apply_chat_template adds none; encoding the rendered text
    # with the default add_special_tokens=True does add one
    assert ids["input_ids"] == enc(tok, prompt)
    assert ids["input_ids"][0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok(prompt).input_ids == [tok.bos_token_id, *enc(tok, prompt)]


def test_gemma_template_and_double_bos_trap() -> None:
    tok = gemma_tokenizer()
    for special in ("<start_of_turn>", "<end_of_turn>"):
        assert len(enc(tok, special)) == 1
    full = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert full == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2 + 2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:-1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert full.startswith(prompt)
    bos = tok.bos_token_id
    ids = tok.apply_chat_template(MESSAGES[:-1], add_generation_prompt=True, return_dict=True)
    assert ids["input_ids"] == enc(tok, prompt)
    assert ids["input_ids"][:2] == [bos, tok.convert_tokens_to_ids("<start_of_turn>")]
    # the trap: the rendered text already holds BOS, and the tokenizer adds another
    assert tok(prompt).input_ids[:2] == [bos, bos]
    with pytest.raises(TemplateError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "hi"}], tokenize=False)


def test_gpt2_has_no_chat_template() -> None:
    assert gpt2_tokenizer().chat_template is None


def test_gemma_metaspace_depends_on_left_context() -> None:
    tok = gemma_tokenizer()
    alone, after_space = enc(tok, "Hello"), enc(tok, " Hello")
    assert alone != after_space
    assert tok.convert_ids_to_tokens(after_space) == ["▁Hello"]
    assert enc(tok, "Say Hello")[-1:] == after_space
    # characters outside the training corpus fall back to byte tokens
    assert tok.convert_ids_to_tokens(enc(tok, "→")) == ["<0xE2>", "<0x86>", "<0x92>"]


BOUNDARY_PARAMS = [
    pytest.param(family, prompt, response, id=f"{family}-{prompt[-12:]!r}+{response!r}")
    for family, cases in BOUNDARY_CASES.items()
    for prompt, response in cases
]


def test_boundary_cases_cover_every_family() -> None:
    assert set(BOUNDARY_CASES) == set(FAMILIES)


@pytest.mark.parametrize(("family", "prompt", "response"), BOUNDARY_PARAMS)
def test_boundary_case_merges_across_the_join(family: str, prompt: str, response: str) -> None:
    tok = FAMILIES[family][0]()
    joint = enc(tok, prompt + response)
    split = enc(tok, prompt) + enc(tok, response)
    assert joint != split
    assert tok.decode(joint) == tok.decode(split) == prompt + response


def test_alpaca_byte_level_boundary_is_stable() -> None:
    # GPT-2's pre-tokenizer regex cuts between ":" and a letter, so Alpaca's bare
    # "### Response:" + response is *not* a boundary case for the byte-level families
    for factory in (chatml_llama_tokenizer, gpt2_tokenizer):
        tok = factory()
        assert enc(tok, "### Response:Hello") == enc(tok, "### Response:") + enc(tok, "Hello")


def right_padded_batch(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    if tok.pad_token is None:  # GPT-2: pad with EOS; the attention mask hides it
        tok.pad_token = tok.eos_token
    return tok(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_config_matches_tokenizer(family: str) -> None:
    make_tok, make_model = FAMILIES[family]
    tok = make_tok()
    model = make_model(tok)
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tok.pad_token_id,
        tok.bos_token_id,
        tok.eos_token_id,
    )
    assert cfg._attn_implementation == "sdpa"
    assert model.dtype == torch.float32
    assert not model.training


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_forward_matches_single(family: str) -> None:
    make_tok, make_model = FAMILIES[family]
    tok = make_tok()
    model = make_model(tok)
    # the long row is past Gemma's 16-token sliding window
    texts = [
        "Hello!",
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hello.\n\n### Response:\nHello!",
    ]
    batch = right_padded_batch(tok, texts)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    assert batch["input_ids"].shape[1] > 16
    with torch.inference_mode():
        logits = model(**batch).logits
        single = model(**tok(texts[0], return_tensors="pt")).logits[0]
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    n = single.shape[0]
    torch.testing.assert_close(logits[0, :n], single, atol=1e-5, rtol=1e-5)
    # random weights are far from uniform: next-token log-probs spread over several nats
    logprobs = logits[1].log_softmax(-1)
    assert (logprobs.max(-1).values - logprobs.min(-1).values).min() > 1.0


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    tok = chatml_llama_tokenizer()
    state = torch.random.get_rng_state()
    a, b, c = tiny_llama(tok, seed=0), tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_gemma3_layers_and_softcapping() -> None:
    tok = gemma_tokenizer()
    capped = tiny_gemma3(tok)
    uncapped = tiny_gemma3(tok, final_logit_softcapping=None)
    assert capped.config.layer_types == ["sliding_attention", "full_attention"]
    assert capped.config.final_logit_softcapping == 30.0
    batch = tok("Give three tips for staying healthy.", return_tensors="pt")
    with torch.inference_mode():
        raw = capped.lm_head(capped.model(**batch).last_hidden_state)
        logits = capped(**batch).logits
        plain = uncapped(**batch).logits
    torch.testing.assert_close(logits, 30.0 * torch.tanh(raw / 30.0))
    torch.testing.assert_close(plain, raw)
    # the cap changes logits by far more than float noise, so skipping it is caught
    assert (raw - logits).abs().max() > 1e-3


def test_uniform_llama_gives_closed_forms() -> None:
    tok = chatml_llama_tokenizer()
    model = uniform_llama(tok)
    v = len(tok)
    batch = right_padded_batch(tok, ["Hello!", "The capital of France is Paris."])
    with torch.inference_mode():
        logprobs = model(**batch).logits.log_softmax(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    torch.testing.assert_close(logprobs, torch.full_like(logprobs, -math.log(v)))
    torch.testing.assert_close(entropy, torch.full_like(entropy, math.log(v)))
