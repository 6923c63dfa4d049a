"""Readers: every format from every container, mapping, detection, per-row rejection reasons, ids."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher import data
from thresher.data import Message, ReadResult, Rejected, read, rejected_counts, write_rejected

SYS = "Be terse."
M1 = (("user", "Add 2 and 3."), ("assistant", "5"))
M2 = (
    ("system", SYS),
    ("user", "hi"),
    ("assistant", "hello"),
    ("user", "Translate\nchat"),
    ("assistant", "cat"),
)


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def turn(who: str, value: str) -> dict[str, str]:
    return {"from": who, "value": value}


# name -> (format, rows, expected turns per row)
CASES: dict[str, tuple[str, list[dict[str, Any]], list[tuple[tuple[str, str], ...]]]] = {
    "alpaca": (
        "alpaca",
        [
            {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {
                "instruction": "Translate",
                "input": "chat",
                "output": "cat",
                "system": SYS,
                "history": [["hi", "hello"]],
            },
        ],
        [M1, M2],
    ),
    "sharegpt": (
        "sharegpt",
        [
            {"conversations": [turn("human", "Add 2 and 3."), turn("gpt", "5")]},
            {
                "system": SYS,
                "conversations": [
                    turn("human", "hi"),
                    turn("gpt", "hello"),
                    turn("human", "Translate\nchat"),
                    turn("gpt", "cat"),
                ],
            },
        ],
        [M1, M2],
    ),
    "messages": (
        "messages",
        [
            {"messages": [msg("user", "Add 2 and 3."), msg("assistant", "5")]},
            {
                "messages": [
                    msg("system", SYS),
                    msg("user", "hi"),
                    msg("assistant", "hello"),
                    msg("user", "Translate\nchat"),
                    msg("assistant", "cat"),
                ]
            },
        ],
        [M1, M2],
    ),
    "prompt_completion": (
        "prompt_completion",
        [
            {"prompt": "Add 2 and 3.", "completion": "5"},
            {"prompt": "Translate\nchat", "completion": "cat"},
        ],
        [M1, (("user", "Translate\nchat"), ("assistant", "cat"))],
    ),
    "prompt_completion_conversational": (
        "prompt_completion",
        [
            {"prompt": [msg("user", "Add 2 and 3.")], "completion": [msg("assistant", "5")]},
            {
                "prompt": [
                    msg("system", SYS),
                    msg("user", "hi"),
                    msg("assistant", "hello"),
                    msg("user", "Translate\nchat"),
                ],
                "completion": [msg("assistant", "cat")],
            },
        ],
        [M1, M2],
    ),
}


@pytest.fixture(scope="module")
def hf_datasets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`datasets`, with its slow first import and first save_to_disk paid once, in set-up."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"a": [1]}).save_to_disk(str(tmp_path_factory.mktemp("warm") / "ds"))
    return datasets


@pytest.fixture(scope="module")
def parquet_ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    """pyarrow imports pandas on its first Parquet write: pay that once, in set-up."""
    pq.write_table(pa.table({"a": [1]}), tmp_path_factory.mktemp("warm") / "x.parquet")


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_container(
    container: str, rows: list[dict[str, Any]], tmp_path: Path, hf: Any
) -> tuple[str, str]:
    """Write rows in one container; return (source, split)."""
    if container == "json_array":
        (tmp_path / "d.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        return str(tmp_path / "d.json"), "train"
    if container == "jsonl":
        return str(write_lines(tmp_path / "d.jsonl", rows)), "train"
    if container == "json_lines_in_json":
        return str(write_lines(tmp_path / "d.json", rows)), "train"
    keys = list(
        dict.fromkeys(k for r in rows for k in r)
    )  # from_list/from_pylist keep the first row's keys only
    columns = {k: [r.get(k) for r in rows] for k in keys}
    if container == "parquet":
        pq.write_table(pa.table(columns), tmp_path / "d.parquet")
        return str(tmp_path / "d.parquet"), "train"
    ds = hf.Dataset.from_dict(columns)
    if container == "save_to_disk":
        ds.save_to_disk(str(tmp_path / "ds"))
        return str(tmp_path / "ds"), "train"
    hf.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(str(tmp_path / "dd"))
    return str(tmp_path / "dd"), "test"


def turns(sample: data.Sample) -> tuple[tuple[str, str], ...]:
    return tuple((m.role, m.content) for m in sample.messages)


CONTAINERS = [
    "json_array",
    "jsonl",
    "json_lines_in_json",
    "parquet",
    "save_to_disk",
    "save_to_disk_dict",
]


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_from_every_container(
    case: str, container: str, tmp_path: Path, hf_datasets: Any, parquet_ready: None
) -> None:
    fmt, rows, expected = CASES[case]
    source, split = write_container(container, rows, tmp_path, hf_datasets)
    r = read(source, split=split)
    assert (r.format, r.detected, r.rows_read, r.rejected, r.format_counts) == (
        fmt,
        True,
        2,
        [],
        {fmt: 2},
    )
    assert [turns(s) for s in r.samples] == expected
    assert [s.meta["line"] for s in r.samples] == [1, 2]
    assert [s.meta["format"] for s in r.samples] == [fmt, fmt]
    assert r.samples[0].meta["source"] == source
    # present fields survive every container (Arrow adds nulls for a column a row lacks)
    assert [{k: v for k, v in s.meta["record"].items() if v is not None} for s in r.samples] == rows
    if fmt == "alpaca":
        assert [(s.instruction, s.input) for s in r.samples] == [
            ("Add 2 and 3.", ""),
            ("Translate", "chat"),
        ]
        assert r.samples[1].history == (("hi", "hello"),) and r.samples[1].system == SYS
    else:
        assert [(s.instruction, s.input) for s in r.samples] == [
            ("Add 2 and 3.", ""),
            ("Translate\nchat", ""),
        ]
    # ids depend on content only, so the same turns get the same id in every format
    assert (
        r.samples[0].id
        == "h"
        + hashlib.sha256(
            json.dumps(
                {"input": "", "instruction": "Add 2 and 3.", "messages": [list(t) for t in M1]},
                ensure_ascii=False,
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        ).hexdigest()[:16]
    )


def test_alpaca_joins_input_like_llamafactory(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "a.jsonl", [{"instruction": "", "input": "only input", "output": "x"}]
    )
    (s,) = read(str(src), format="alpaca").samples
    assert turns(s) == (("user", "\nonly input"), ("assistant", "x"))
    assert (s.instruction, s.input, s.response, s.system, s.history) == (
        "",
        "only input",
        "x",
        "",
        (),
    )


def test_column_mapping_for_alpaca_and_messages(tmp_path: Path) -> None:
    rows = [{"question": "q1", "context": "c1", "answer": "a1"}, {"question": "q2", "answer": None}]
    src = write_lines(tmp_path / "qa.jsonl", rows)
    r = read(str(src), columns={"instruction": "question", "input": "context", "output": "answer"})
    assert (r.format, r.detected) == ("alpaca", True)
    assert [turns(s) for s in r.samples] == [(("user", "q1\nc1"), ("assistant", "a1"))]
    assert [(x.line, x.reason) for x in r.rejected] == [
        (2, "missing_field:answer")
    ]  # names the user's column

    src = write_lines(
        tmp_path / "chat.jsonl",
        [{"chat": [msg("user", "u"), msg("assistant", "a")], "messages": "ignored"}],
    )
    (s,) = read(str(src), columns={"messages": "chat"}).samples
    assert turns(s) == (("user", "u"), ("assistant", "a"))


def test_column_mapping_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown field 'outptu'; did you mean 'output'"):
        read("unused.jsonl", columns={"outptu": "answer"})
    with pytest.raises(ValueError, match="format='alpacca' is not one of"):
        read("unused.jsonl", format="alpacca")


def test_role_mapping(tmp_path: Path) -> None:
    rows = [{"conversations": [turn("asker", "q"), turn("bot", "a")]}]
    src = write_lines(tmp_path / "s.jsonl", rows)
    assert [x.reason for x in read(str(src), format="sharegpt").rejected] == ["bad_roles"]
    (s,) = read(str(src), format="sharegpt", roles={"asker": "user", "bot": "assistant"}).samples
    assert turns(s) == (("user", "q"), ("assistant", "a"))

    rows = [{"conversations": [{"role": "Q", "text": "q"}, {"role": "A", "text": "a"}]}]
    src = write_lines(tmp_path / "lf.jsonl", rows)
    tags = {"role_tag": "role", "content_tag": "text", "user_tag": "Q", "assistant_tag": "A"}
    (s,) = read(str(src), format="sharegpt", roles=tags).samples
    assert turns(s) == (("user", "q"), ("assistant", "a"))
    with pytest.raises(ValueError, match="roles\\['bot'\\] = 'robot'"):
        read(str(src), roles={"bot": "robot"})


def test_sharegpt_system_turn_wins_over_column(tmp_path: Path) -> None:
    rows = [
        {
            "system": "col",
            "conversations": [turn("system", "turn"), turn("human", "q"), turn("gpt", "a")],
        },
        {"system": "col", "conversations": [turn("human", "q"), turn("gpt", "a")]},
        {"system": "", "conversations": [turn("system", ""), turn("human", "q"), turn("gpt", "a")]},
    ]
    r = read(str(write_lines(tmp_path / "s.jsonl", rows)))
    assert [s.system for s in r.samples] == ["turn", "col", ""]
    assert turns(r.samples[2]) == (
        ("user", "q"),
        ("assistant", "a"),
    )  # an empty system turn is dropped


def test_detection_is_logged_and_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_lines(tmp_path / "a.jsonl", CASES["alpaca"][1])
    with caplog.at_level(logging.INFO, logger="thresher.data"):
        r = read(str(src))
    assert r.detected is True
    assert f"{src}: detected format 'alpaca' from the first 2 rows" in caplog.text
    r = read(str(src), format="alpaca")
    assert (r.format, r.detected) == ("alpaca", False)


def test_ambiguous_or_unknown_detection_asks_for_format(tmp_path: Path) -> None:
    both = write_lines(
        tmp_path / "both.jsonl",
        [
            {
                "instruction": "q",
                "output": "a",
                "messages": [msg("user", "q"), msg("assistant", "a")],
            }
        ],
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "line 1 has keys ['instruction', 'messages', 'output'], which fit ['alpaca', 'messages']. Pass format="
        ),
    ):
        read(str(both))
    assert [turns(s) for s in read(str(both), format="messages").samples] == [
        (("user", "q"), ("assistant", "a"))
    ]

    none = write_lines(tmp_path / "none.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        ValueError,
        match=re.escape("keys seen ['answer', 'question']; formats that fit: none. Pass format="),
    ):
        read(str(none))

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "no JSON object among the first rows (1 rows read; rejected: {'malformed_json': 1})"
        ),
    ):
        read(str(bad))


def test_mixed_formats_rejected_unless_allowed(tmp_path: Path) -> None:
    rows = [
        CASES["alpaca"][1][0],
        CASES["sharegpt"][1][0],
        CASES["messages"][1][1],
        {"text": "plain"},
        {"instruction": "q", "output": "a", "messages": [msg("user", "q"), msg("assistant", "a")]},
    ]
    src = str(write_lines(tmp_path / "mixed.jsonl", rows))
    r = read(src, format="alpaca")
    assert [(x.line, x.reason) for x in r.rejected] == [
        (2, "format_mismatch:sharegpt"),
        (3, "format_mismatch:messages"),
        (4, "format_mismatch:unknown"),
    ]
    assert [s.meta["line"] for s in r.samples] == [1, 5]
    with pytest.raises(
        ValueError,
        match=re.escape(
            "formats that fit: alpaca (first at line 1), sharegpt (first at line 2), messages (first at line 3)"
        ),
    ):
        read(str(write_lines(tmp_path / "m2.jsonl", rows[:3])))

    r = read(src, allow_mixed=True)
    assert (r.format, r.detected, r.format_counts) == (
        "mixed",
        True,
        {"alpaca": 1, "sharegpt": 1, "messages": 1},
    )
    assert [s.meta["format"] for s in r.samples] == ["alpaca", "sharegpt", "messages"]
    assert [(x.line, x.reason) for x in r.rejected] == [
        (4, "format_mismatch:unknown"),
        (5, "format_mismatch:ambiguous"),
    ]
    # a named format decides the ambiguous rows; other rows still go by their own format
    r = read(src, format="messages", allow_mixed=True)
    assert [s.meta["format"] for s in r.samples] == ["alpaca", "sharegpt", "messages", "messages"]


def test_every_rejection_reason_with_its_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"instruction": "ok", "output": "fine"}),  # 1 kept
        json.dumps({"output": "x", "input": ""}),  # 2
        json.dumps({"instruction": "q", "output": None}),  # 3
        json.dumps({"instruction": "q", "output": 5}),  # 4
        json.dumps({"instruction": "q", "input": None, "system": None, "output": "a"}),  # 5 kept
        json.dumps({"instruction": "q", "input": ["x"], "output": "a"}),  # 6
        json.dumps({"instruction": "q", "output": "  \n\t"}),  # 7
        json.dumps({"instruction": " ", "output": "a"}),  # 8
        json.dumps("just a string"),  # 9
        '{"instruction": "q", "output": "a"',  # 10
        None,  # 11 bad bytes
        json.dumps({"instruction": "q", "output": "a", "history": [["one"]]}),  # 12
        "   ",  # 13 blank: not a row
        '{"instruction": "\\ud800", "output": "a"}',  # 14 lone surrogate
        json.dumps({"instruction": "q2", "output": "a2", "system": 3}),  # 15
    ]
    body = b"".join(
        (b'{"instruction": "caf\xe9", "output": "a"}' if x is None else x.encode()) + b"\n"
        for x in lines
    )
    src = tmp_path / "rows.jsonl"
    src.write_bytes(body)
    r = read(str(src), format="alpaca")
    assert [(x.line, x.reason) for x in r.rejected] == [
        (2, "missing_field:instruction"),
        (3, "missing_field:output"),
        (4, "bad_type:output"),
        (6, "bad_type:input"),
        (7, "empty_response"),
        (8, "empty_instruction"),
        (9, "not_an_object"),
        (10, "malformed_json"),
        (11, "bad_utf8"),
        (12, "bad_type:history"),
        (14, "bad_utf8"),
        (15, "bad_type:system"),
    ]
    assert [s.meta["line"] for s in r.samples] == [1, 5]
    assert r.samples[1].input == "" and r.samples[1].system == ""
    assert (r.rows_read, len(r.samples) + len(r.rejected)) == (14, 14)
    by_line = {x.line: x for x in r.rejected}
    assert by_line[10].record == '{"instruction": "q", "output": "a"'
    assert by_line[11].record == '{"instruction": "caf\ufffd", "output": "a"}'
    assert by_line[4].record == {"instruction": "q", "output": 5}
    assert rejected_counts(r.rejected) == {
        "bad_utf8": 2,
        "bad_type:history": 1,
        "bad_type:input": 1,
        "bad_type:output": 1,
        "bad_type:system": 1,
        "empty_instruction": 1,
        "empty_response": 1,
        "malformed_json": 1,
        "missing_field:instruction": 1,
        "missing_field:output": 1,
        "not_an_object": 1,
    }


def test_conversation_rejection_reasons(tmp_path: Path) -> None:
    rows = [
        {"conversations": [turn("gpt", "a"), turn("human", "q")]},  # 1 starts with the assistant
        {
            "conversations": [turn("human", "q"), turn("gpt", "a"), turn("human", "q2")]
        },  # 2 ends with the user
        {
            "conversations": [turn("human", "q"), turn("human", "q2"), turn("gpt", "a")]
        },  # 3 no alternation
        {"conversations": [turn("narrator", "q"), turn("gpt", "a")]},  # 4 unknown role
        {"conversations": []},  # 5
        {"conversations": ["q", "a"]},  # 6
        {"conversations": [turn("human", None), turn("gpt", "a")]},  # 7
        {"conversations": [turn("human", 1), turn("gpt", "a")]},  # 8
        {"conversations": [turn("human", " "), turn("gpt", "a")]},  # 9
        {"conversations": [turn("human", "q"), turn("gpt", "")]},  # 10
        {"conversations": "q"},  # 11
        {"conversations": [turn("human", "q"), turn("gpt", "a")], "system": 7},  # 12
        {"conversations": [turn("human", "q"), turn("gpt", "a")]},  # 13 kept
    ]
    r = read(str(write_lines(tmp_path / "s.jsonl", rows)), format="sharegpt")
    assert [x.reason for x in r.rejected] == [
        "bad_roles",
        "bad_roles",
        "bad_roles",
        "bad_roles",
        "bad_roles",
        "bad_type:conversations",
        "missing_field:value",
        "bad_type:value",
        "empty_instruction",
        "empty_response",
        "bad_type:conversations",
        "bad_type:system",
    ]
    assert [x.line for x in r.rejected] == list(range(1, 13))

    rows = [
        {
            "messages": [msg("user", "q"), msg("system", "s"), msg("assistant", "a")]
        },  # system in the middle
        {
            "messages": [
                msg("user", "q"),
                {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
            ]
        },
        {"messages": [msg("user", "q"), {"role": "assistant"}]},
        {"messages": [msg("user", "q"), msg("tool", "a")]},
        {"prompt": "q", "completion": [msg("assistant", "a")]},
        {"prompt": [msg("user", "q")], "completion": [msg("assistant", "a"), msg("user", "q")]},
        {"prompt": [msg("user", "q")], "completion": [msg("user", "a")]},
        {"prompt": 3, "completion": "a"},
        {"prompt": "q", "completion": None},
    ]
    r = read(str(write_lines(tmp_path / "m.jsonl", rows)), allow_mixed=True)
    assert [(x.line, x.reason) for x in r.rejected] == [
        (1, "bad_roles"),
        (2, "bad_type:content"),
        (3, "missing_field:content"),
        (4, "bad_roles"),
        (5, "bad_type:completion"),
        (6, "bad_roles"),
        (7, "bad_roles"),
        (8, "bad_type:prompt"),
        (9, "missing_field:completion"),
    ]


def test_json_array_lines_are_element_indexes(tmp_path: Path) -> None:
    src = tmp_path / "a.json"
    src.write_text(
        json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}, 3]),
        encoding="utf-8",
    )
    r = read(str(src))
    assert [(x.line, x.reason) for x in r.rejected] == [(2, "empty_response"), (3, "not_an_object")]


def test_json_array_bad_utf8_rejects_only_its_rows(tmp_path: Path) -> None:
    src = tmp_path / "latin1.json"
    src.write_bytes(
        b'[{"instruction": "q", "output": "a"}, {"instruction": "caf\xe9", "output": "a"}, {"instruction": "r", "output": "b"}]'
    )
    r = read(str(src))
    assert [s.instruction for s in r.samples] == ["q", "r"]
    assert [(x.line, x.reason) for x in r.rejected] == [(2, "bad_utf8")]
    write_rejected(
        r.rejected, tmp_path / "rejected.jsonl"
    )  # the bad byte is kept, escaped, not lost
    assert (
        json.loads((tmp_path / "rejected.jsonl").read_text(encoding="utf-8"))["record"][
            "instruction"
        ]
        == "caf\udce9"
    )


def test_whole_file_json_errors_name_the_file(tmp_path: Path) -> None:
    bad_bytes = tmp_path / "latin1.json"
    bad_bytes.write_bytes(
        b'[{"instruction": "q", "output": "a"}\xe9]'
    )  # outside any string: not JSON
    with pytest.raises(ValueError, match=re.escape(f"{bad_bytes}: not valid JSON")):
        read(str(bad_bytes))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "q", "output": "a"},', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{broken}: not valid JSON")):
        read(str(broken))


def test_a_stream_reads_again_as_the_first_time(tmp_path: Path) -> None:
    from thresher.data import DataStream

    rows = [
        {"instruction": "q", "output": "a"},
        {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
    ]
    src = write_lines(tmp_path / "d.jsonl", rows)
    stream = DataStream(str(src), allow_mixed=True)
    first = [(s.id, s.meta["format"]) for s in stream]
    assert stream.format == "mixed" and stream.format_counts == {"alpaca": 1, "sharegpt": 1}
    assert [(s.id, s.meta["format"]) for s in stream] == first and stream.rows_read == 2
    assert stream.format == "mixed" and stream.format_counts == {"alpaca": 1, "sharegpt": 1}


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_a_json_array_is_decoded_a_chunk_at_a_time(tmp_path: Path, monkeypatch, chunk) -> None:
    """Rows, numbers and multi-byte characters cut at every chunk boundary decode as json.loads
    decodes the whole file; the errors name the line where the array breaks."""
    from thresher import data as data_mod

    monkeypatch.setattr(data_mod, "JSON_CHUNK_BYTES", chunk)
    elements = [
        {"instruction": "caf\u00e9 \u00fc\u4e2d\U0001f600", "output": "a\nb", "n": 12345.5e3},
        123456789,
        -0.25,
        [1, [2, {"x": None}]],
        "str",
        True,
        {},
    ]
    src = tmp_path / "a.json"
    src.write_text(" \n[\n" + " ,\r\n\t".join(json.dumps(e) for e in elements) + "\n] \n")
    assert list(data_mod._json_array(src)) == json.loads(src.read_text())
    empty = tmp_path / "empty.json"
    empty.write_text("[ \n ]")
    assert list(data_mod._json_array(empty)) == []
    for text, where in [
        ('[{"a": 1},\n{"a": 2},\n]', "line 3"),  # a trailing comma
        ('[{"a": 1}\n{"a": 2}]', "expected ',' or ']' at line 2"),
        ('[{"a": 1}] [', "extra data after the array at line 1"),
        ('{"a": 1}', "expected '[' at line 1"),
        ('[{"a": 1},\n\n{"a": "unterminated}]', "line 3"),
    ]:
        src.write_text(text)
        with pytest.raises(ValueError, match=re.escape(where)):
            list(data_mod._json_array(src))


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    src = tmp_path / "bom.jsonl"
    src.write_bytes(
        b'\xef\xbb\xbf{"instruction": "q", "output": "a"}\r\n{"instruction": "q2", "output": "a2"}\r\n'
    )
    r = read(str(src))
    assert [s.instruction for s in r.samples] == ["q", "q2"] and r.rejected == []
    arr = tmp_path / "bom.json"
    arr.write_bytes(b'\xef\xbb\xbf  [{"instruction": "q", "output": "a"}]')
    assert [s.instruction for s in read(str(arr)).samples] == ["q"]


def test_hash_ids_are_stable_and_unique(tmp_path: Path) -> None:
    row = {"instruction": "q", "output": "a"}
    src = str(
        write_lines(
            tmp_path / "d.jsonl", [row, {"instruction": "other", "output": "b"}, row, dict(row)]
        )
    )
    first, second = read(src), read(src)
    ids = [s.id for s in first.samples]
    assert ids == [s.id for s in second.samples]
    assert first.content_hash == second.content_hash
    assert re.fullmatch(r"h[0-9a-f]{16}", ids[0])
    assert ids[2:] == [ids[0] + ".2", ids[0] + ".3"] and len(set(ids)) == 4
    # same content, another format: same id
    other = write_lines(
        tmp_path / "m.jsonl", [{"messages": [msg("user", "q"), msg("assistant", "a")]}]
    )
    assert read(str(other)).samples[0].id == ids[0]
    changed = write_lines(
        tmp_path / "c.jsonl", [row, {"instruction": "other", "output": "B"}, row, row]
    )
    assert read(str(changed)).content_hash != first.content_hash


def test_user_ids_and_duplicates(tmp_path: Path) -> None:
    rows = [
        {"uid": 7, "instruction": "q", "output": "a"},
        {"uid": "8", "instruction": "q", "output": ""},
        {"uid": "7", "instruction": "other", "output": "b"},
        {"instruction": "q", "output": "a"},
        {"uid": [1], "instruction": "q", "output": "a"},
        {"uid": "8", "instruction": "q", "output": "a"},
    ]
    r = read(str(write_lines(tmp_path / "u.jsonl", rows)), id_column="uid")
    assert [s.id for s in r.samples] == [
        "7",
        "8",
    ]  # line 2's id "8" was rejected, so line 6 keeps it
    assert [(x.line, x.reason, x.id) for x in r.rejected] == [
        (2, "empty_response", "8"),
        (3, "duplicate_id", "7"),
        (4, "missing_field:uid", None),
        (5, "bad_type:uid", None),
    ]
    src = tmp_path / "s.jsonl"
    src.write_text('{"uid": "\\udc80", "instruction": "q", "output": "a"}\n', encoding="utf-8")
    assert [(x.line, x.reason) for x in read(str(src), id_column="uid").rejected] == [
        (1, "bad_utf8")
    ]
    # an `id` column is used without being named
    r = read(
        str(
            write_lines(
                tmp_path / "i.jsonl",
                [
                    {"id": "a", "instruction": "q", "output": "x"},
                    {"id": "a", "instruction": "q", "output": "x"},
                ],
            )
        )
    )
    assert [s.id for s in r.samples] == ["a"] and [(x.line, x.reason) for x in r.rejected] == [
        (2, "duplicate_id")
    ]


def test_limit_counts_rejected_rows(tmp_path: Path, parquet_ready: None) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text(
        '{"instruction": "q1", "output": "a"}\n{oops\n\n{"instruction": "q2", "output": "a"}\n{"instruction": "q3", "output": "a"}\n',
        encoding="utf-8",
    )
    r = read(str(src), limit=3)
    assert (r.rows_read, [s.instruction for s in r.samples], [x.line for x in r.rejected]) == (
        3,
        ["q1", "q2"],
        [2],
    )
    pq.write_table(
        pa.Table.from_pylist([{"instruction": f"q{i}", "output": "a"} for i in range(5)]),
        tmp_path / "d.parquet",
    )
    r = read(str(tmp_path / "d.parquet"), limit=2)
    assert [s.instruction for s in r.samples] == ["q0", "q1"] and r.rows_read == 2


@pytest.mark.parametrize(
    "source", ["missing.jsonl", "data/missing.json", "./missing_folder", "a/b/c", "x.parquet"]
)
def test_missing_paths_raise_file_not_found(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{source!r}: no such file or folder")):
        read(source)


def test_a_missing_path_names_its_near_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare name is a local file, never a hub id (those are owner/name); so is owner/name when
    `owner` is a folder here. Either way the error lists the near matches in that folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata.jsonl").write_text("")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "alpaca_clean.json").write_text("")
    for source, near in (
        ("mydata", "mydata.jsonl"),
        ("runs/alpaca.json", "runs/alpaca_clean.json"),
    ):
        with pytest.raises(FileNotFoundError) as err:
            read(source)
        assert f"data {source!r}: no such file or folder" in str(err.value)
        assert repr(near) in str(err.value), str(err.value)


def test_hub_ids_go_to_load_dataset(
    hf_datasets: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def fake_load(source: str, split: str) -> Any:
        calls.append((source, split))
        if source == "owner/missing":
            raise FileNotFoundError("Dataset 'owner/missing' doesn't exist on the Hub")
        return hf_datasets.Dataset.from_list(CASES["alpaca"][1])

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load)
    r = read("tatsu-lab/alpaca", split="train[:2]")
    assert (
        calls == [("tatsu-lab/alpaca", "train[:2]")]
        and r.format == "alpaca"
        and len(r.samples) == 2
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "owner/missing: not a local path (no folder 'owner' here), and loading it as a hub dataset (split='train') failed: FileNotFoundError"
        ),
    ) as err:
        read("owner/missing")
    assert "the hub is offline (hf_hub_offline=1)" in str(err.value).lower()  # tests run offline


def test_unreadable_sources_give_clear_errors(
    tmp_path: Path, hf_datasets: Any, parquet_ready: None
) -> None:
    (tmp_path / "d.csv").write_text("instruction,output\nq,a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("unsupported file type '.csv'")):
        read(str(tmp_path / "d.csv"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not one written by datasets' save_to_disk"):
        read(str(tmp_path / "plain"))
    hf_datasets.DatasetDict(
        {"train": hf_datasets.Dataset.from_list([{"instruction": "q", "output": "a"}])}
    ).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=re.escape("no split 'test'; it has ['train']")):
        read(str(tmp_path / "dd"), split="test")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="can't read it as Parquet"):
        read(str(tmp_path / "x.parquet"))


def test_invariant_and_rejected_file(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        ReadResult([], [Rejected(1, "bad_utf8", None, "")], "alpaca", False, "s", 2, {}, "")
    rejected = [
        Rejected(3, "empty_response", "x", {"k": "é"}),
        Rejected(1, "bad_utf8", None, "\ufffd"),
        Rejected(4, "empty_response", None, None),
    ]
    assert list(rejected_counts(rejected).items()) == [("empty_response", 2), ("bad_utf8", 1)]
    out = tmp_path / "rejected.jsonl"
    write_rejected(rejected, out)
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {"line": 3, "reason": "empty_response", "id": "x", "record": {"k": "é"}},
        {"line": 1, "reason": "bad_utf8", "id": None, "record": "\ufffd"},
        {"line": 4, "reason": "empty_response", "id": None, "record": None},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rejected.jsonl"]


def test_message_contract_unchanged() -> None:
    s = data.Sample(
        "i", (Message("system", "s"), Message("user", "u"), Message("assistant", "a")), "u"
    )
    assert (s.response, s.system, s.prompt_messages[-1].content, s.history) == ("a", "s", "u", ())


def test_real_alpaca_file_reads_clean(shared_data: Path) -> None:
    r = read(str(shared_data / "alpaca_en_demo.json"))
    assert (r.format, r.detected, r.rows_read, len(r.samples), r.rejected) == (
        "alpaca",
        True,
        999,
        999,
        [],
    )
    assert len({s.id for s in r.samples}) == 999
    gsm = read(
        str(shared_data / "gsm8k_test.jsonl"),
        columns={"instruction": "question", "output": "answer"},
        limit=5,
    )
    assert (gsm.format, len(gsm.samples)) == ("alpaca", 5)
