"""Exports of a selected subset: the input's own format, TRL, and LLaMA-Factory.

Every file is written atomically (`thresher.atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from thresher.atomic import write_atomic, write_jsonl
from thresher.data import Sample

LLAMAFACTORY_ROLES = {"user": "human", "assistant": "gpt"}  # LLaMA-Factory's default ShareGPT tags


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
