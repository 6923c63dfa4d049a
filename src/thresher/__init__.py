"""thresher: select instruction-tuning data with the model's own signals.

Python API (mirrors the CLI):

    from thresher import RunConfig, run
    cfg = RunConfig()
    cfg.data.path = "alpaca.json"
    cfg.method.name = "ifd"
    cfg.select.fraction = 0.1
    result, selection, manifest = run(cfg)
"""

from __future__ import annotations

from typing import Any

from thresher.config import RunConfig, override
from thresher.data import Message, Sample

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Message",
    "RunConfig",
    "Sample",
    "__version__",
    "build",
    "get_method",
    "load_run",
    "override",
    "read",
    "run",
    "score",
    "select",
    "validate",
    "write_outputs",
]


def __getattr__(name: str) -> Any:
    # heavier modules load on first use, so `import thresher` stays cheap
    if name == "read":
        from thresher.data import read

        return read
    if name in ("METHODS", "build", "get_method"):
        from thresher import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'thresher' has no attribute {name!r}")


def validate(cfg: RunConfig, **kw: Any) -> Any:
    from thresher import pipeline

    return pipeline.validate(cfg, **kw)


def score(cfg: RunConfig, **kw: Any) -> Any:
    from thresher import pipeline

    return pipeline.score(cfg, **kw)


def select(result: Any, cfg: RunConfig) -> Any:
    from thresher import pipeline

    return pipeline.select(result, cfg)


def run(cfg: RunConfig, **kw: Any) -> Any:
    from thresher import pipeline

    return pipeline.run(cfg, **kw)


def write_outputs(result: Any, selection: Any, cfg: RunConfig) -> Any:
    """Write scores.parquet, selected.jsonl, the exports, rejected.jsonl and manifest.json (what
    `thresher score` and `thresher select` write after `score` / `select`); returns the manifest."""
    from thresher import pipeline

    return pipeline.write_outputs(result, selection, cfg)


def load_run(run_dir: str, overrides: list[str] | None = None) -> Any:
    from thresher import pipeline

    return pipeline.load_run(run_dir, overrides)
