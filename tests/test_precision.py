"""Precision follows the hardware: the `auto` resolver on made-up hardware, reproduce forcing
float32, the bfloat16-mixed load, and caches keyed by the resolved dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thresher import models
from thresher.cache import CacheMismatch
from thresher.config import RunConfig
from thresher.models import Hardware, cpu_flags, load_model, resolve_precision
from thresher.pipeline import score

CASCADE_LAKE = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})
SAPPHIRE_RAPIDS = CASCADE_LAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}
ZEN4 = CASCADE_LAKE | {"avx512_bf16"}


def cpu(flags: frozenset[str] | None) -> Hardware:
    return Hardware(cuda=False, cuda_capability=None, cpu_flags=flags)


def gpu(capability: tuple[int, int]) -> Hardware:
    return Hardware(cuda=True, cuda_capability=capability, cpu_flags=SAPPHIRE_RAPIDS)


@pytest.fixture
def lower_precision_kept(monkeypatch):
    """As if bench/precision.py had found bfloat16 agrees with float32 for every method."""
    monkeypatch.setattr(models, "AUTO_LOWER_PRECISION", "bfloat16")
    monkeypatch.setattr(models, "AUTO_LOWER_PRECISION_NOTE", "agreement measured")


def auto(hw: Hardware, reproduce: bool = False) -> tuple[str, str, str]:
    p = resolve_precision("auto", "auto", reproduce=reproduce, hardware=hw)
    return p.dtype, p.device, p.reason


def test_cpu_without_bf16_units_runs_float32(lower_precision_kept):
    assert auto(cpu(CASCADE_LAKE)) == (
        "float32",
        "cpu",
        "float32: cpu has no avx512_bf16/amx_bf16",
    )
    assert auto(cpu(None))[::2] == ("float32", "float32: cpu flags unknown (no /proc/cpuinfo)")


def test_bf16_units_pick_the_measured_lower_precision(lower_precision_kept):
    assert auto(cpu(SAPPHIRE_RAPIDS)) == (
        "bfloat16",
        "cpu",
        "bfloat16: cpu has amx_bf16/avx512_bf16 (agreement measured)",
    )
    assert auto(cpu(ZEN4))[2].startswith("bfloat16: cpu has avx512_bf16")
    assert auto(gpu((8, 0)))[:2] == ("bfloat16", "cuda")
    assert auto(gpu((9, 0)))[2].startswith("bfloat16: cuda compute capability 9.0 >= 8.0")
    assert auto(gpu((7, 5))) == ("float32", "cuda", "float32: cuda compute capability 7.5 < 8.0")


def test_without_a_measured_lower_precision_bf16_units_keep_float32(monkeypatch):
    monkeypatch.setattr(models, "AUTO_LOWER_PRECISION", None)
    dtype, _, reason = auto(cpu(SAPPHIRE_RAPIDS))
    assert dtype == "float32"
    assert reason.startswith("float32: cpu has amx_bf16/avx512_bf16, but no lower precision")


def test_reproduce_always_runs_float32(lower_precision_kept):
    for hw in (cpu(SAPPHIRE_RAPIDS), gpu((9, 0))):
        dtype, _, reason = auto(hw, reproduce=True)
        assert (dtype, reason) == ("float32", "float32: --reproduce always runs in float32")
    with pytest.raises(ValueError, match=r"'bfloat16' with --reproduce.*drop --dtype"):
        resolve_precision("bfloat16", "cpu", reproduce=True, hardware=cpu(SAPPHIRE_RAPIDS))
    explicit = resolve_precision("float32", "cpu", reproduce=True, hardware=cpu(None))
    assert (explicit.dtype, explicit.reason) == ("float32", "float32: asked for")


def test_explicit_choices_are_kept_and_misspellings_named():
    p = resolve_precision("bfloat16", "cpu", reproduce=False, hardware=cpu(CASCADE_LAKE))
    assert (p.dtype, p.device, p.reason) == ("bfloat16", "cpu", "bfloat16: asked for")
    assert resolve_precision("float32", "cuda:1", reproduce=False, hardware=gpu((8, 6))).device == (
        "cuda:1"
    )
    with pytest.raises(ValueError, match=r"model.dtype='bf16'.*did you mean"):
        resolve_precision("bf16", "cpu", reproduce=False, hardware=cpu(None))
    with pytest.raises(ValueError, match=r"model.device='gpu' is not one of"):
        resolve_precision("auto", "gpu", reproduce=False, hardware=cpu(None))
    with pytest.raises(ValueError, match="no CUDA device: pass --device cpu"):
        resolve_precision("auto", "cuda", reproduce=False, hardware=cpu(None))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 fma\nbugs\t\t: spectre\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_bf16", "fma"})
    assert cpu_flags(tmp_path / "missing") is None


def test_mixed_precision_runs_the_body_in_bf16_and_the_head_in_fp32(tiny_model_dir):
    fp32 = load_model(str(tiny_model_dir), dtype="float32")
    mixed = load_model(str(tiny_model_dir), dtype="bfloat16-mixed")
    assert (mixed.info.dtype, mixed.info.precision) == (
        "bfloat16-mixed",
        "bfloat16-mixed: asked for",
    )
    m = mixed.model
    assert m.get_output_embeddings().weight.dtype == torch.float32
    assert m.get_input_embeddings().weight.dtype == torch.bfloat16  # the tied copy is untied
    assert m.base_model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    ids = fp32.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.inference_mode():
        hidden = m.base_model(input_ids=ids).last_hidden_state
        got = m(input_ids=ids).logits
        want = fp32.model(input_ids=ids).logits
    assert hidden.dtype == got.dtype == torch.float32
    # bf16 keeps ~3 significant digits in the body: close to fp32, but not equal
    assert 0 < (got - want).abs().max() < 0.1 * want.abs().max()


def _cfg(model_dir, data, out, dtype) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.dtype = str(model_dir), dtype
    cfg.data.path, cfg.method.name, cfg.output.dir = str(data), "ppl", str(out)
    cfg.score.progress = False
    return cfg


def test_a_float32_pass_is_never_reused_as_bfloat16(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "pool.jsonl"
    rows = [{"instruction": f"Add {a} and 2.", "output": f"{a + 2}."} for a in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    first = score(_cfg(tiny_model_dir, data, out, "float32"))
    assert first.model_info["dtype"] == "float32"
    # auto resolves to float32 on a CPU without bf16 units: that is the stored pass, reused
    monkeypatch.setattr(models, "cpu_flags", lambda: CASCADE_LAKE)
    monkeypatch.setattr(models, "AUTO_LOWER_PRECISION", "bfloat16")
    again = score(_cfg(tiny_model_dir, data, out, "auto"))
    assert again.passes["cond"]["reused"] == 5 and again.passes["cond"]["scored"] == 0
    np.testing.assert_array_equal(again.table.columns["ppl"], first.table.columns["ppl"])
    # the same auto on a CPU with bf16 units resolves to bfloat16: a different key, refused
    monkeypatch.setattr(models, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    with pytest.raises(CacheMismatch, match=r"model\.dtype: 'float32' -> 'bfloat16'"):
        score(_cfg(tiny_model_dir, data, out, "auto"))
    bf16 = score(_cfg(tiny_model_dir, data, tmp_path / "bf16", "auto"))
    assert bf16.model_info["dtype"] == "bfloat16"
    assert bf16.model_info["precision"].startswith("bfloat16: cpu has amx_bf16")
    assert not np.array_equal(bf16.table.columns["ppl"], first.table.columns["ppl"])


def test_dtype_and_device_flags_set_the_config_and_are_checked_before_loading(tmp_path, capsys):
    from thresher.cli import _parser, config_from_args, main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    args = ["run", "--data", str(data), "--dtype", "bfloat16-mixed", "--device", "cpu"]
    cfg = config_from_args(_parser().parse_args(args))
    assert (cfg.model.dtype, cfg.model.device) == ("bfloat16-mixed", "cpu")
    default = config_from_args(_parser().parse_args(["run", "--data", str(data)]))
    assert (default.model.dtype, default.model.device) == ("auto", "auto")
    assert main(["validate", "--data", str(data), "--dtype", "bfloat61"]) == 2
    assert "did you mean 'bfloat16'" in capsys.readouterr().err
    assert main(["validate", "--data", str(data), "--dtype", "bfloat16", "--reproduce"]) == 2
    assert "with --reproduce" in capsys.readouterr().err


def test_the_manifest_and_summary_say_which_precision_ran_and_why(tiny_model_dir, tmp_path):
    from thresher.pipeline import run, summary

    data = tmp_path / "pool.jsonl"
    rows = [{"instruction": f"Add {a} and 2.", "output": f"{a + 2}."} for a in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tiny_model_dir, data, tmp_path / "run", "auto")
    cfg.method.reproduce, cfg.method.name, cfg.select.count = True, "ifd", 2
    result, sel, manifest = run(cfg)
    want = {
        "dtype": "float32",
        "device": "cpu",
        "precision": "float32: --reproduce always runs in float32",
    }
    assert manifest["precision"] == want
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["precision"] == want
    assert "precision float32: --reproduce always runs in float32 (on cpu)" in summary(
        result, sel, manifest
    )
