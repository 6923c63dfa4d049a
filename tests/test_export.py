"""Exports: atomic JSONL, the selected subset in its own format, TRL and LLaMA-Factory files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thresher.data import read
from thresher.export import write_jsonl, write_llamafactory, write_selected, write_trl


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def read_lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {
        "instruction": "Translate",
        "input": "chat",
        "output": "cat",
        "system": "Be terse.",
        "history": [["hi", "hello"]],
    },
    {"instruction": "Name a café.", "output": "Café Zoë"},
]
MESSAGES = [
    {
        "messages": [
            msg("system", "Be terse."),
            msg("user", "hi"),
            msg("assistant", "hello"),
            msg("user", "q"),
            msg("assistant", "a"),
        ]
    },
    {"messages": [msg("user", "Add 2 and 3."), msg("assistant", "5")]},
]


def test_write_jsonl_is_utf8_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl([{"a": "é"}, {"b": "\ud800"}], out) == 2
    text = out.read_bytes().decode("utf-8")
    assert (
        text == '{"a": "é"}\n{"b": "\\ud800"}\n'
    )  # a lone surrogate is escaped, so the file stays UTF-8
    assert read_lines(out) == [{"a": "é"}, {"b": "\ud800"}]
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.jsonl"]


def test_write_jsonl_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text("old\n", encoding="utf-8")

    def rows() -> Any:
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_jsonl(rows(), out)
    assert out.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_selected_round_trips_in_the_input_format(tmp_path: Path) -> None:
    rows = [
        {"question": r["instruction"], "context": r.get("input"), "answer": r["output"]}
        for r in ALPACA
    ]
    columns = {"instruction": "question", "input": "context", "output": "answer"}
    src = read(str(write_lines(tmp_path / "in.jsonl", rows)), columns=columns)
    chosen = [src.samples[2], src.samples[0]]
    out = tmp_path / "selected.jsonl"
    assert write_selected(chosen, out) == 2
    assert read_lines(out) == [rows[2], rows[0]]  # the user's own columns, in the given order
    back = read(str(out), columns=columns)
    assert back.samples == chosen  # same ids, turns, instruction and input
    assert [s.meta["record"] for s in back.samples] == [rows[2], rows[0]]

    src = read(str(write_lines(tmp_path / "m.jsonl", MESSAGES)))
    write_selected(src.samples, out)
    assert read(str(out)).samples == src.samples


def test_trl_conversational_and_standard(tmp_path: Path) -> None:
    samples = read(str(write_lines(tmp_path / "m.jsonl", MESSAGES))).samples
    out = tmp_path / "trl.jsonl"
    assert write_trl(samples, out, None) == 2
    assert read_lines(out) == [
        {
            "prompt": [
                msg("system", "Be terse."),
                msg("user", "hi"),
                msg("assistant", "hello"),
                msg("user", "q"),
            ],
            "completion": [msg("assistant", "a")],
        },
        {"prompt": [msg("user", "Add 2 and 3.")], "completion": [msg("assistant", "5")]},
    ]
    back = read(str(out))  # our reader takes TRL's conversational form, with the same content
    assert (back.format, back.samples) == ("prompt_completion", samples)

    write_trl(samples, out, ["P1", "P2"])
    assert read_lines(out) == [
        {"prompt": "P1", "completion": "a"},
        {"prompt": "P2", "completion": "5"},
    ]
    with pytest.raises(ValueError, match="1 prompts for 2 samples"):
        write_trl(samples, out, ["P1"])


def test_llamafactory_alpaca_layout_and_merged_info(tmp_path: Path) -> None:
    samples = read(str(write_lines(tmp_path / "a.jsonl", ALPACA))).samples
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(
        json.dumps({"mine": {"file_name": "mine.json"}}), encoding="utf-8"
    )
    entry = write_llamafactory(samples, folder)
    assert entry == {
        "file_name": "thresher_selected.jsonl",
        "formatting": "alpaca",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    }
    assert read_lines(folder / "thresher_selected.jsonl") == [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5", "system": "", "history": []},
        {
            "instruction": "Translate",
            "input": "chat",
            "output": "cat",
            "system": "Be terse.",
            "history": [["hi", "hello"]],
        },
        {
            "instruction": "Name a café.",
            "input": "",
            "output": "Café Zoë",
            "system": "",
            "history": [],
        },
    ]
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    assert info == {"mine": {"file_name": "mine.json"}, "thresher_selected": entry}
    assert read(str(folder / "thresher_selected.jsonl")).samples == samples

    entry = write_llamafactory(samples[:1], folder, name="small")
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}
    assert read_lines(folder / "small.jsonl") == [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    ]
    assert sorted(json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))) == [
        "mine",
        "small",
        "thresher_selected",
    ]


def test_llamafactory_sharegpt_layout_for_other_formats(tmp_path: Path) -> None:
    rows = [*MESSAGES, ALPACA[0]]
    samples = read(str(write_lines(tmp_path / "mixed.jsonl", rows)), allow_mixed=True).samples
    entry = write_llamafactory(samples, tmp_path / "lf")
    assert entry == {
        "file_name": "thresher_selected.jsonl",
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
    assert read_lines(tmp_path / "lf" / "thresher_selected.jsonl") == [
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ],
            "system": "Be terse.",
        },
        {
            "conversations": [
                {"from": "human", "value": "Add 2 and 3."},
                {"from": "gpt", "value": "5"},
            ],
            "system": "",
        },
        {
            "conversations": [
                {"from": "human", "value": "Add 2 and 3."},
                {"from": "gpt", "value": "5"},
            ],
            "system": "",
        },
    ]
    assert json.loads((tmp_path / "lf" / "dataset_info.json").read_text(encoding="utf-8")) == {
        "thresher_selected": entry
    }
    back = read(str(tmp_path / "lf" / "thresher_selected.jsonl"))
    assert [s.messages for s in back.samples] == [s.messages for s in samples]


def test_llamafactory_empty_selection(tmp_path: Path) -> None:
    entry = write_llamafactory([], tmp_path)
    assert (
        entry["formatting"] == "alpaca"
        and (tmp_path / "thresher_selected.jsonl").read_text(encoding="utf-8") == ""
    )
