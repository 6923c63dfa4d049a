"""Run configuration: dataclasses built from YAML, CLI flags or keyword arguments, with
dotted `key=value` overrides (`select.fraction=0.05`). Values are parsed as YAML scalars;
nothing is ever `eval`ed or imported from a string."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from thresher.choices import suggest


@dataclass
class DataConfig:
    path: str | None = None  # file, save_to_disk folder, or hub dataset id
    format: str | None = None  # alpaca | sharegpt | messages | prompt_completion; None = detect
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> your column
    roles: dict[str, str] = field(
        default_factory=dict
    )  # ShareGPT `from` value -> user/assistant/system
    id_column: str | None = None
    split: str = "train"
    limit: int | None = None
    allow_mixed: bool = False


@dataclass
class ModelConfig:
    name: str = (
        "smollm2-135m"  # ours: the packaged offline model, so every command runs out of the box
    )
    revision: str | None = None
    # DESIGN "precision follows the hardware": auto = CUDA if available; bf16 only where matmul
    # has native bf16 units and bench/precision.py found it agrees with fp32; fp32 otherwise and
    # always with method.reproduce (thresher.models.resolve_precision)
    dtype: str = "auto"  # auto | float32 | bfloat16 | bfloat16-mixed | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch threads; None leaves torch's default
    trust_remote_code: bool = False


@dataclass
class MethodConfig:
    name: str = "ifd"
    reproduce: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    then: str | None = (
        None  # a second method selecting the budget from the first's top narrow_factor x budget
    )
    then_params: dict[str, Any] = field(default_factory=dict)
    narrow_factor: float = 3.0  # ours: see thresher.compose


@dataclass
class ScoreConfig:
    engine: str = "local"
    batch_tokens: int = 2048
    shard_rows: int = 64
    overwrite: bool = False
    progress: bool = True
    max_rejected_fraction: float = 0.5  # ours: more than half the rows failing means a wrong setup
    # ours: "nait" or "mads" adds that method's pooled activations (its default parameters) to
    # this run's cond pass, so the method run later in the same folder needs no new forward pass
    capture: str | None = None
    # engine=ray only (see engine/ray.py RayOptions for the reasons behind each default)
    ray_concurrency: int = 2
    ray_num_gpus: float = 0.0
    ray_num_cpus: float = 1.0
    ray_batch_size: int = 1


@dataclass
class SelectConfig:
    fraction: float | None = None
    count: int | None = None
    seed: int = 42  # T-SHIRT and InstructDiff use seed 42

    def budget(self) -> float | int:
        if (self.fraction is None) == (self.count is None):
            raise ValueError(
                f"give exactly one of select.fraction and select.count (got fraction={self.fraction}, "
                f"count={self.count}), e.g. select.fraction=0.1 or select.count=500"
            )
        return self.count if self.count is not None else float(self.fraction)


@dataclass
class OutputConfig:
    dir: str = "runs/thresher"
    report: bool = True  # write report.html with every run (thresher report reads the same files)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        cfg = cls()
        apply(cfg, d)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        text = Path(path).read_text()
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ValueError(
                f"{path} must hold a YAML mapping of sections (data, model, method, ...), not {type(d).__name__}"
            )
        cfg = cls.from_dict(d)
        for o in overrides or []:
            override(cfg, o)
        return cfg


def apply(obj: Any, d: dict[str, Any], prefix: str = "") -> None:
    """Set fields of nested dataclasses from a nested dict; unknown keys are errors."""
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in d.items():
        if key not in names:
            raise ValueError(
                f"unknown config key {prefix + key!r}: expected one of {names}{suggest(key, names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(
                    f"config key {prefix + key!r} is a section; give a mapping, not {value!r}"
                )
            apply(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, value)


def override(cfg: RunConfig, text: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ValueError(
            f"override {text!r} is not of the form key=value, e.g. select.fraction=0.05"
        )
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    parts = key.strip().split(".")
    if parts[:2] == ["method", "params"] and len(parts) > 2:
        cfg.method.params[".".join(parts[2:])] = value
        return
    nested: dict[str, Any] = {}
    cur = nested
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    apply(cfg, nested)
