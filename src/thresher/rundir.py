"""The run folder: what `thresher run` writes to `--out`, and the one place that names its files.

    scores.parquet     one row per sample: id, source line, status, every signal, selected, rank
    selected.jsonl     the subset, each row as it was read
    trl.jsonl          the subset for TRL (prompt-completion)
    llamafactory/      the subset and its dataset_info.json entry for LLaMA-Factory
    rejected.jsonl     every row that could not be read or scored, with its reason and line
    manifest.json      resolved config, model and tokenizer hashes, template, versions, counts
    report.html        the report (`thresher report`)
    eval.json          `thresher eval`'s results on this run's model(s), and the model comparison
    passes/<label>/    each forward pass's shards and key (thresher.cache)
    embeddings/        sentence embeddings a method computed while fitting (MIWV, k-center)
    calibrators/       models a method trained while fitting (InstructDiff's warm-up)
    scratch/           a method's temporary files (T-SHIRT's spill), removed after use

The pipeline, the report, `thresher train` and `thresher eval` read and write through it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.atomic import write_atomic

MANIFEST = "manifest.json"
SCORES = "scores.parquet"
SELECTED = "selected.jsonl"
TRL = "trl.jsonl"
LLAMAFACTORY = "llamafactory"
REJECTED = "rejected.jsonl"
REPORT = "report.html"
EVAL = "eval.json"
PASSES = "passes"
OUTPUTS = (SCORES, SELECTED, TRL, LLAMAFACTORY + "/", REJECTED, MANIFEST)


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    manifest = property(lambda self: self.path / MANIFEST)
    scores = property(lambda self: self.path / SCORES)
    selected = property(lambda self: self.path / SELECTED)
    trl = property(lambda self: self.path / TRL)
    llamafactory = property(lambda self: self.path / LLAMAFACTORY)
    rejected = property(lambda self: self.path / REJECTED)
    report = property(lambda self: self.path / REPORT)
    evaluation = property(lambda self: self.path / EVAL)
    passes = property(lambda self: self.path / PASSES)
    embeddings = property(lambda self: self.path / "embeddings")

    def is_run(self) -> bool:
        """Whether a finished `thresher run` / `thresher score` wrote this folder."""
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.is_run():
            raise FileNotFoundError(
                f"{self.path} has no {MANIFEST}: is it the --out folder of a finished `thresher run` "
                "or `thresher score`?"
            )
        return json.loads(self.manifest.read_text())

    def write_manifest(self, manifest: dict[str, Any], default: Any = None) -> None:
        write_atomic(self.manifest, json.dumps(manifest, indent=1, default=default).encode())

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """An empty folder `scratch/<name>` for a method's temporary files, removed afterwards."""
        folder = self.path / "scratch" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()


class ReportNotWritten(RuntimeError):
    """`report.html` could not be written, after every other output of the run was saved.

    `result`, `selection` and `manifest` are what the run produced (what `pipeline.run` would have
    returned), so a caller loses nothing but the page; `thresher report RUN_DIR` writes it again.
    """

    def __init__(self, message: str, result: Any, selection: Any, manifest: dict[str, Any]) -> None:
        super().__init__(message)
        self.result, self.selection, self.manifest = result, selection, manifest
