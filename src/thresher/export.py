"""Exports of a selected subset: the input's own format, TRL, and LLaMA-Factory.

Every file is written atomically (a temp file beside it, then `os.replace`), so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # data.py imports this module; samples are only read here
    from thresher.data import Sample

LLAMAFACTORY_ROLES = {"user": "human", "assistant": "gpt"}  # LLaMA-Factory's default ShareGPT tags


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


def write_selected(samples: Iterable[Sample], path: str | os.PathLike[str]) -> int:
    """The selected rows as they were read (`meta["record"]`), in the given order."""
    return write_jsonl((s.meta["record"] for s in samples), path)


def write_trl(
    samples: list[Sample], path: str | os.PathLike[str], prompts: list[str] | None
) -> int:
    """A TRL prompt-completion file; TRL trains on the completion only by default.

    Without `prompts`: the conversational form, `{"prompt": [messages before the response],
    "completion": [the assistant response]}`, for the trainer's chat template. With `prompts`
    (one rendered prompt per sample, from our template): the standard form
    `{"prompt": text, "completion": response}`, so training sees exactly the scored prompt.
    """
    if prompts is None:
        rows = (
            {
                "prompt": [{"role": m.role, "content": m.content} for m in s.prompt_messages],
                "completion": [{"role": "assistant", "content": s.response}],
            }
            for s in samples
        )
        return write_jsonl(rows, path)
    if len(prompts) != len(samples):
        raise ValueError(
            f"write_trl: {len(prompts)} prompts for {len(samples)} samples; expected one rendered prompt per sample"
        )
    return write_jsonl(
        ({"prompt": p, "completion": s.response} for s, p in zip(samples, prompts, strict=True)),
        path,
    )


def write_llamafactory(
    samples: list[Sample], folder: str | os.PathLike[str], name: str = "thresher_selected"
) -> dict[str, Any]:
    """`<folder>/<name>.jsonl` plus its entry in `<folder>/dataset_info.json` (merged); returns the entry.

    Alpaca layout when every sample came from Alpaca (`system`/`history` columns only when some
    sample has them), else ShareGPT layout with human/gpt tags and a `system` column, following
    LLaMA-Factory's data/README. Use it with `dataset_dir: <folder>` and `dataset: <name>`.
    """
    folder = Path(folder)
    file_name = f"{name}.jsonl"
    if all(s.meta.get("format") == "alpaca" for s in samples):
        with_system = any(s.system for s in samples)
        with_history = any(s.history for s in samples)
        rows = []
        for s in samples:
            row: dict[str, Any] = {
                "instruction": s.instruction,
                "input": s.input,
                "output": s.response,
            }
            if with_system:
                row["system"] = s.system
            if with_history:
                row["history"] = [list(pair) for pair in s.history]
            rows.append(row)
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        columns |= {"system": "system"} if with_system else {}
        columns |= {"history": "history"} if with_history else {}
        entry: dict[str, Any] = {"file_name": file_name, "formatting": "alpaca", "columns": columns}
    else:
        rows = [
            {
                "conversations": [
                    {"from": LLAMAFACTORY_ROLES[m.role], "value": m.content}
                    for m in s.messages
                    if m.role != "system"
                ],
                "system": s.system,
            }
            for s in samples
        ]
        entry = {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    write_jsonl(rows, folder / file_name)
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    if not isinstance(info, dict):
        raise ValueError(
            f"{info_path}: expected a JSON object of dataset entries, found {type(info).__name__}; move it away or fix it"
        )
    info[name] = entry
    write_atomic(info_path, (json.dumps(info, ensure_ascii=False, indent=2) + "\n").encode())
    return entry
