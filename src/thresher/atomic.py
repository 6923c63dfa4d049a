"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every file thresher writes goes through here (a temp file beside the target, fsync, then
`os.replace`), and an OSError that names no file is re-raised naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an OSError that names no file with `path`: a disk that fills while writing, and
    Arrow's I/O errors, say only "No space left on device", so the user would not learn where."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, os.strerror(e.errno) if e.errno else str(e), str(path)) from e


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp path beside `path` (unique per process, ending in `.tmp`) for the caller to write;
    on success it is fsynced and renamed onto `path`, on failure deleted. Errors name the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with naming(tmp):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write one JSON object per line (UTF-8, not ASCII-escaped) atomically; return the row count.

    Values JSON can't hold (dates, bytes from Parquet) are written as strings; a row holding lone
    surrogates is written ASCII-escaped, which stays valid JSON that reads back the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            try:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            except UnicodeEncodeError:
                f.write(json.dumps(row, ensure_ascii=True, default=str) + "\n")
            count += 1
    return count
