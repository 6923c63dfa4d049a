"""Tiny offline tokenizers and causal LMs for unit tests.

Everything here is built in memory in a few milliseconds: no download, no files. Three
tokenizer families cover the boundary behaviours the templates must survive:

| family   | tokenizer                     | BOS added by default | chat template                 |
| -------- | ----------------------------- | -------------------- | ----------------------------- |
| `chatml` | byte-level BPE, Llama-like    | yes, `<s>`           | ChatML; emits no BOS          |
| `gpt2`   | byte-level BPE, GPT-2         | no                   | none                          |
| `gemma`  | metaspace BPE, byte fallback  | yes, `<bos>`         | Gemma's; starts with BOS      |

Each BPE is trained on `CORPUS` with a vocabulary of a few hundred, so real merges happen and
so do the cross-boundary effects listed in `BOUNDARY_CASES`. Training is deterministic.

The trained `tokenizers.Tokenizer` is cached per process; every call to a `*_tokenizer()`
function wraps a deep copy of it in a new `PreTrainedTokenizerFast`, so a test may mutate the
tokenizer it gets (pad token, padding side, chat template, ...) without affecting other tests.

Models are float32, eval mode, SDPA attention, with `vocab_size == len(tokenizer)` and the
tokenizer's pad/bos/eos ids in the config. Weights are drawn under `torch.manual_seed(seed)`
inside a forked RNG, so building a model neither depends on nor changes the global RNG.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

# Alpaca's template words, chat-ish turns, digits, punctuation and newlines. Changing this
# text changes every merge: re-check BOUNDARY_CASES (tests/test_tiny.py does) if you do.
CORPUS: tuple[str, ...] = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n"
    "### Response:\n1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep at least 7 hours.",
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "Translate the sentence into French.\n\n### Input:\nHello, how are you?\n\n### Response:\n"
    "Bonjour, comment allez-vous ?",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\nWhat is the capital of France?\n\n"
    "### Response:\nThe capital of France is Paris.",
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "Add the two numbers.\n\n### Input:\n12 and 34\n\n### Response:\n12 + 34 = 46",
    "Hello! How can I help you today? Hello, world. Hello there.",
    "The answer is 42. The answers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10.",
    "Question: What is 2 + 2?\nAnswer: 4\nQuestion: What is 10 - 3?\nAnswer: 7",
    "Sure! Here is a short list:\n- apples\n- bananas\n- cherries\n\nThat is all.",
    "You are a helpful assistant. The user asks a question and the assistant answers it.",
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
    "class Point:\n    x = 0\n\n    y = 0\n\n\nprint(add(1, 2))\n\n",
    'system\nuser\nassistant\nmodel\nuser: hi\nassistant: Hello! (Yes, really.) "Quoted"; '
    "it's done... #1 @home 100% [ok] {x} a/b <tag> 3.14 1,000 2024-01-31",
)

LLAMA_VOCAB = 480
GPT2_VOCAB = 480
GEMMA_MERGES_VOCAB = 320  # plus the 256 byte-fallback tokens <0x00>..<0xFF>
MAX_POSITIONS = 512
# ours: 10x the usual 0.02, so next-token distributions are far from uniform and an
# off-by-one position or a dropped softcap changes log-probs by a visible amount
INIT_STD = 0.2

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma 3's template, reduced to string contents: it emits BOS itself, folds a system turn
# into the first user turn, calls the assistant "model", and trims every content.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# (prompt, response) pairs, per family, where encoding prompt + response as one string gives
# other ids than encoding each alone and concatenating (add_special_tokens=False both ways).
# tests/test_tiny.py asserts every one, with the tokens quoted below.
_BYTE_LEVEL_CASES: tuple[tuple[str, str], ...] = (
    # a trailing space joins the next word: [":", "ĠP", ...] vs [":", "Ġ", "P", ...]
    ("Answer: ", "Paris"),
    # a word cut in two: ["Hello"] vs ["Hel", "lo"]
    ("Hel", "lo"),
    # a prompt ending in a blank line (the one-shot separator) ends with "ĊĊ" alone but with
    # "Ċ", "Ċ" when text follows: [".", "Ċ", "Ċ", "Hello"] vs [".", "ĊĊ", "Hello"]
    ("The capital of France is Paris.\n\n", "Hello"),
)
BOUNDARY_CASES: dict[str, tuple[tuple[str, str], ...]] = {
    "chatml": _BYTE_LEVEL_CASES,
    "gpt2": _BYTE_LEVEL_CASES,
    "gemma": (
        # ["▁P", ...] vs ["▁", "P", ...]
        ("Answer: ", "Paris"),
        ("Hel", "lo"),
        # Alpaca's "### Response:" (no separator) and a response that starts with a newline:
        # ["###", "▁Response:\n", "Hello"] vs ["###", "▁Response", ":", "\n", "Hello"]
        ("### Response:", "\nHello"),
        # the chat generation prompt and a response starting with a digit:
        # [..., "\n3", "4"] vs [..., "\n", "3", "4"]
        ("<start_of_turn>model\n", "34"),
    ),
}


def _train(
    model: models.Model,
    pre_tokenizer: pre_tokenizers.PreTokenizer,
    vocab_size: int,
    special_tokens: list[str],
    initial_alphabet: list[str],
) -> Tokenizer:
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=initial_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@functools.cache
def _chatml_backend() -> Tokenizer:
    tok = _train(
        models.BPE(),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        LLAMA_VOCAB,
        ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"],
        pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.decoder = decoders.ByteLevel()
    # BOS comes from a TemplateProcessing post-processor, as in Llama's tokenizer.json. The
    # wrapper below also passes add_bos_token=True, which keeps `tokenizer.add_bos_token`
    # truthful and regenerates this same processor.
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )
    return tok


@functools.cache
def _gpt2_backend() -> Tokenizer:
    tok = _train(
        models.BPE(),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        GPT2_VOCAB,
        ["<|endoftext|>"],
        pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


@functools.cache
def _gemma_backend() -> Tokenizer:
    # SentencePiece-like: spaces become "▁" and start a new piece, no dummy prefix (Gemma's
    # add_dummy_prefix=False), so "Hello" and " Hello" are different tokens; characters the
    # BPE has never seen fall back to <0xNN> byte tokens.
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = _train(
        models.BPE(unk_token="<unk>", byte_fallback=True),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        GEMMA_MERGES_VOCAB,
        specials,
        [],
    )
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", bos)]
    )
    return tok


def chatml_llama_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE that adds BOS `<s>`; EOS `</s>`, pad `<pad>`; ChatML chat template.

    The template emits no BOS, so `apply_chat_template(..., tokenize=True)` has none either,
    while tokenizing the rendered text with the default `add_special_tokens=True` adds one.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=_chatml_backend(),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML_TEMPLATE,
        add_bos_token=True,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE: adds nothing; `<|endoftext|>` is BOS, EOS and UNK; no pad
    token and no chat template, like the real one."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_gpt2_backend(),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma-style metaspace BPE with byte fallback that adds BOS `<bos>`; EOS `<eos>`, pad
    `<pad>` (id 0), `<start_of_turn>`/`<end_of_turn>`.

    The chat template starts with `{{ bos_token }}`: the rendered text already holds BOS, so
    tokenizing it with the default `add_special_tokens=True` gives BOS twice.
    """
    return PreTrainedTokenizerFast(
        tokenizer_object=_gemma_backend(),
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=GEMMA_TEMPLATE,
        add_bos_token=True,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def _build(cls: type[PreTrainedModel], config: PretrainedConfig, seed: int) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(torch.float32).eval()


def _common(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "attn_implementation": "sdpa",
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
    kv_heads: int = 2,
) -> LlamaForCausalLM:
    """A Llama with grouped-query attention (`kv_heads` < `heads`) and an untied lm_head."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        **_common(tokenizer),
    )
    return _build(LlamaForCausalLM, config, seed)


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerFast,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
) -> GPT2LMHeadModel:
    """A GPT-2 (learned positions, tied lm_head). With `gpt2_tokenizer()` the config's
    pad_token_id is None, as in the real GPT-2."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_inner=intermediate,
        initializer_range=INIT_STD,
        **_common(tokenizer),
    )
    return _build(GPT2LMHeadModel, config, seed)


def tiny_gemma3(
    tokenizer: PreTrainedTokenizerFast,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
    sliding_window: int = 16,
    final_logit_softcapping: float | None = 30.0,
) -> Gemma3ForCausalLM:
    """A Gemma 3 text model: tied lm_head, embeddings scaled by sqrt(hidden), one KV head.

    Layers alternate sliding-window (`sliding_window` tokens) and full attention, starting
    with sliding, so sequences longer than the window exercise both masks. Logits are
    softcapped (`cap * tanh(logits / cap)`) unless `final_logit_softcapping=None`; real
    Gemma 3 does not cap, Gemma 2 caps at 30.
    """
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        head_dim=hidden // heads,
        query_pre_attn_scalar=hidden // heads,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD,
        sliding_window=sliding_window,
        layer_types=[
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)
        ],
        final_logit_softcapping=final_logit_softcapping,
        **_common(tokenizer),
    )
    return _build(Gemma3ForCausalLM, config, seed)


def uniform_llama(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """`tiny_llama` with an all-zero lm_head: every logit is 0, so every next-token
    distribution is exactly uniform (log-prob = -ln V, entropy = ln V, V = len(tokenizer))."""
    model = tiny_llama(tokenizer, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


TokenizerFactory = Callable[[], PreTrainedTokenizerFast]
ModelFactory = Callable[..., PreTrainedModel]
FAMILIES: dict[str, tuple[TokenizerFactory, ModelFactory]] = {
    "chatml": (chatml_llama_tokenizer, tiny_llama),
    "gpt2": (gpt2_tokenizer, tiny_gpt2),
    "gemma": (gemma_tokenizer, tiny_gemma3),
}
