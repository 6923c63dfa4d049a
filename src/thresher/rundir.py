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
    .lock              held while a run writes the folder (`RunFolder.lock`): pid, host, command

The pipeline, the report, `thresher train` and `thresher eval` read and write through it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thresher.atomic import write_atomic

log = logging.getLogger(__name__)

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
LOCK = ".lock"

# the run folders this process holds locked (resolved path -> depth): `run` locks, then calls
# `score` and `write_outputs`, which lock too; an flock taken twice by one process on two
# descriptors would refuse the process itself
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


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

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the folder's lock while `command` writes it, so two runs never delete each other's
        unfinished shards. The lock is an flock on `RUN/.lock`, which records the holder's pid,
        host, command and start time. A second process refuses at once (`RunFolderBusy`, naming
        the holder and how to proceed). The OS releases an flock when its process dies, so a
        `.lock` that still holds a holder's record but whose flock is free was left by a process
        that ended without cleaning up: it is stale and taken over, with a warning. Reentrant
        within one process; the file is removed when the outermost holder ends."""
        key = self.path.resolve()
        with _held_guard:
            depth = _held.get(key, 0)
            if depth:
                _held[key] = depth + 1
        if depth:
            try:
                yield
            finally:
                with _held_guard:
                    _held[key] -= 1
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = self._acquire(command)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            # removed while still held: a process that opened this file meanwhile sees it gone
            # once it gets the flock, and retries on a new file (`_acquire`)
            (self.path / LOCK).unlink(missing_ok=True)
            os.close(fd)

    def _acquire(self, command: str) -> int:
        path = self.path / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunFolderBusy(self._busy_message(holder)) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file as we locked it: lock the new one
        stale = _holder(fd)
        if stale:
            log.warning(
                "%s: took over a stale lock of `thresher %s` (pid %s on host %s, since %s): that "
                "process ended without releasing it (the OS frees the lock of a process that "
                "dies), so its unfinished shards are discarded and redone",
                self.path,
                stale.get("command", "?"),
                stale.get("pid", "?"),
                stale.get("host", "?"),
                stale.get("started", "?"),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        return fd

    def _busy_message(self, holder: dict[str, Any]) -> str:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        here = host == socket.gethostname()
        stop = f"stop it (`kill {pid}`{'' if here else f' on {host}'})"
        return (
            f"{self.path} is in use: `thresher {holder.get('command', '?')}` (pid {pid} on host "
            f"{host}, since {holder.get('started', '?')}) is writing it. Wait for it to finish, "
            f"{stop} and rerun to resume, or give another --out. A lock whose process has died "
            "is freed by the OS, so the lock file never needs deleting by hand."
        )


def _holder(fd: int) -> dict[str, Any]:
    """The record in a lock file ({} when empty or unreadable: a holder between open and write)."""
    raw = os.pread(fd, 4096, 0)
    try:
        record = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?", "command": raw[:80].decode(errors="replace")}
    return record if isinstance(record, dict) else {}


class ReportNotWritten(RuntimeError):
    """`report.html` could not be written, after every other output of the run was saved.

    `result`, `selection` and `manifest` are what the run produced (what `pipeline.run` would have
    returned), so a caller loses nothing but the page; `thresher report RUN_DIR` writes it again.
    """

    def __init__(self, message: str, result: Any, selection: Any, manifest: dict[str, Any]) -> None:
        super().__init__(message)
        self.result, self.selection, self.manifest = result, selection, manifest
