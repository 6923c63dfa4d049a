"""Samples and readers.

CONTRACT (other modules rely on it; the reader implementation lands below it):

A `Sample` is one training example. `messages` are the turns in order: an optional system
turn, then user/assistant pairs; the last turn is always the assistant response that every
signal scores. `instruction` and `input` are the Alpaca fields of the final user turn (for
other formats `instruction` is the final user content and `input` is ""), so the Alpaca and
plain templates can render them exactly as the reference code does. `meta` carries the
1-based source line (`line`), the `format`, the `source` path and the original `record`;
templates never read `meta`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

from thresher.atomic import write_jsonl
from thresher.choices import check_choice
from thresher.formats import (
    FORMATS,
    PARSERS,
    RowError,
    Schema,
    fits,
    full_matches,
    make_schema,
    map_columns,
    row_format,
)
from thresher.paths import is_hub_id, missing_path, offline_reason


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Sample:
    id: str
    messages: tuple[Message, ...]
    instruction: str
    input: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def response(self) -> str:
        return self.messages[-1].content

    @property
    def system(self) -> str:
        return (
            self.messages[0].content if self.messages and self.messages[0].role == "system" else ""
        )

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Every turn before the scored response (system, history, final user turn)."""
        return self.messages[:-1]

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """(user, assistant) pairs before the final user turn."""
        turns = [m for m in self.messages[:-2] if m.role != "system"]
        return tuple((turns[i].content, turns[i + 1].content) for i in range(0, len(turns) - 1, 2))


# ---------------------------------------------------------------------------------------------
# Readers. Sources: .json (an array, or JSON lines), .jsonl, .parquet, a `save_to_disk` folder,
# or a hub dataset id. Per-format parsing lives in thresher.formats.
#
# Line numbers (`meta["line"]`, `Rejected.line`) are 1-based: the physical line for JSON lines
# (blank lines are not rows but still count as lines), the element index for a JSON array, and
# the row index for Parquet and `datasets` sources.

__all__ = [
    "FORMATS",
    "Message",
    "ReadResult",
    "Rejected",
    "Sample",
    "read",
    "rejected_counts",
    "write_rejected",
]

log = logging.getLogger(__name__)

DETECT_ROWS = 100  # ours: enough rows to see a file's shape, few enough to stay instant
RAW_TEXT_CHARS = 2000  # ours: keeps rejected.jsonl readable when a whole file is one bad line
READABLE_SUFFIXES = (".json", ".jsonl", ".parquet")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".gz", ".zst")


@dataclass
class Rejected:
    line: int
    reason: str
    id: str | None
    record: Any  # the raw row, or the raw text of a line that is not a JSON value


@dataclass
class ReadResult:
    samples: list[Sample]
    rejected: list[Rejected]
    format: str  # one of FORMATS, or "mixed" when allow_mixed found several
    detected: bool
    source: str
    rows_read: int
    format_counts: dict[str, int]  # samples per format
    content_hash: str  # sha256 over sample ids and contents in order; part of every cache key

    def __post_init__(self) -> None:
        assert len(self.samples) + len(self.rejected) == self.rows_read, (
            len(self.samples),
            len(self.rejected),
            self.rows_read,
        )


Row = tuple[int, Any]  # (line, parsed value)


class DataStream:
    """The rows of `source`, read one at a time: iterating yields each row in file order as a
    `Sample` or a `Rejected` with its reason. Only the first rows (to detect the format), the ids
    (to find repeats) and a running content hash are kept, so a 52K-row file is read in the memory
    of one row. `format`, `detected`, `rows_read`, `format_counts` and `content_hash` are final
    once an iteration has ended; iterating again reads the source again.

    Arguments as for `read`, which collects one iteration into a `ReadResult`.
    """

    def __init__(
        self,
        source: str,
        *,
        format: str | None = None,
        columns: dict[str, str] | None = None,
        roles: dict[str, str] | None = None,
        id_column: str | None = None,
        split: str = "train",
        limit: int | None = None,
        allow_mixed: bool = False,
    ) -> None:
        if format is not None:
            check_choice("format", format, FORMATS)
        if limit is not None and limit < 0:
            raise ValueError(f"limit={limit}: expected a row count >= 0, or None for every row")
        self.source = str(source)
        self.schema = make_schema(columns, roles)
        self.given = format  # what was asked; `format` is what the last iteration read
        self.format, self.detected = format, format is None
        self.id_column, self.split, self.limit = id_column, split, limit
        self.allow_mixed = allow_mixed
        self.rows_read = 0
        self.format_counts: dict[str, int] = {}
        self.content_hash = ""

    def __iter__(self) -> Iterator[Sample | Rejected]:
        rows = _rows(self.source, self.split, self.limit)
        head: list[Row | Rejected] = []  # rows up to the DETECT_ROWS-th object
        objects: list[Row] = []
        for item in rows:
            head.append(item)
            if isinstance(item, tuple) and isinstance(item[1], dict):
                objects.append(item)
                if len(objects) == DETECT_ROWS:
                    break
        format, id_column = self.given, self.id_column
        if self.detected and not self.allow_mixed:
            format = _detect(objects, self.schema, self.source, head)
        if id_column is None and objects and "id" in objects[0][1]:
            id_column = "id"
        repeats: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        digest = hashlib.sha256()
        self.rows_read = 0
        for item in chain(head, rows):
            self.rows_read += 1
            if isinstance(item, Rejected):
                yield item
                continue
            line, row = item
            try:
                sample, content = _sample(
                    line, row, self.source, self.schema, format, self.allow_mixed, id_column
                )
                repeats[sample.id] += 1
                if repeats[sample.id] > 1:
                    if id_column is not None:  # a user's id must be unique: the first row keeps it
                        raise RowError("duplicate_id", sample.id)
                    # identical content: the k-th copy gets ".k", unique and stable for a fixed file order
                    sample = replace(sample, id=f"{sample.id}.{repeats[sample.id]}")
            except RowError as e:
                yield Rejected(line, e.reason, e.id, row)
                continue
            counts[sample.meta["format"]] += 1
            digest.update(sample.id.encode() + b"\0" + content + b"\n")
            yield sample
        if self.allow_mixed:
            format = "mixed" if len(counts) > 1 else next(iter(counts), format or "mixed")
        self.format, self.format_counts = format, dict(counts)
        self.content_hash = digest.hexdigest()


def read(
    source: str,
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    id_column: str | None = None,
    split: str = "train",
    limit: int | None = None,
    allow_mixed: bool = False,
) -> ReadResult:
    """Read every row of `source` into samples; rows that can't be samples are rejected with a reason.

    `format=None` detects the format from the first rows, only when exactly one fits. `columns`
    maps canonical field names to yours (`{"output": "answer"}`); `roles` renames ShareGPT roles
    (`{"bot": "assistant"}` or LLaMA-Factory tags). Ids come from `id_column` (or an `id`
    column), else from a hash of the content. `limit` counts rows read, rejected ones included.
    `DataStream` takes the same arguments and yields the rows one at a time.
    """
    stream = DataStream(
        source,
        format=format,
        columns=columns,
        roles=roles,
        id_column=id_column,
        split=split,
        limit=limit,
        allow_mixed=allow_mixed,
    )
    samples: list[Sample] = []
    rejected: list[Rejected] = []
    for item in stream:
        (rejected if isinstance(item, Rejected) else samples).append(item)
    assert stream.format is not None
    return ReadResult(
        samples,
        rejected,
        stream.format,
        stream.detected,
        stream.source,
        stream.rows_read,
        stream.format_counts,
        stream.content_hash,
    )


def _sample(
    line: int,
    row: Any,
    source: str,
    schema: Schema,
    format: str | None,
    allow_mixed: bool,
    id_column: str | None,
) -> tuple[Sample, bytes]:
    """One row as a Sample (with its hash id, before repeat suffixes) and its canonical content bytes."""
    if not isinstance(row, dict):
        raise RowError("not_an_object")
    user_id = None
    if id_column is not None:
        value = row.get(id_column)
        if value is None or value == "":
            raise RowError(f"missing_field:{id_column}")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise RowError(f"bad_type:{id_column}")
        user_id = str(value)
    view = map_columns(row, schema)
    fmt = format
    if allow_mixed and (fmt is None or not fits(view, fmt)):
        fmt = row_format(view)
    if fmt not in FORMATS or not fits(view, fmt):
        raise RowError(f"format_mismatch:{row_format(view)}", user_id)
    try:
        parsed = PARSERS[fmt](view, schema)
    except RowError as e:
        raise RowError(e.reason, user_id) from None
    messages = tuple(Message(role, content) for role, content in parsed.turns)
    canonical = json.dumps(
        {
            "messages": [[m.role, m.content] for m in messages],
            "instruction": parsed.instruction,
            "input": parsed.input,
        },
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    )
    try:  # valid JSON may still carry lone surrogates (`"\ud800"`), which no tokenizer or file can hold
        content = canonical.encode("utf-8")
        (user_id or "").encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("bad_utf8", user_id) from None
    sample_id = user_id if user_id is not None else "h" + hashlib.sha256(content).hexdigest()[:16]
    meta = {"line": line, "format": fmt, "source": source, "record": row}
    return Sample(sample_id, messages, parsed.instruction, parsed.input, meta), content


def _detect(objects: list[Row], schema: Schema, source: str, items: list[Any]) -> str:
    matched: dict[str, int] = {}
    keys: set[str] = set()
    for line, row in objects:
        keys.update(row)
        found = full_matches(map_columns(row, schema))
        if len(found) > 1:
            raise ValueError(
                f"{source}: can't detect the format: line {line} has keys {sorted(row)}, which fit {found}. Pass format= one of {list(FORMATS)}."
            )
        for fmt in found:
            matched.setdefault(fmt, line)
    if len(matched) == 1:
        format = next(iter(matched))
        log.info("%s: detected format %r from the first %d rows", source, format, len(objects))
        return format
    if not objects:
        reasons = rejected_counts([i for i in items if isinstance(i, Rejected)])
        raise ValueError(
            f"{source}: can't detect the format: no JSON object among the first rows ({len(items)} rows read; rejected: {reasons}). Check the file, or pass format=."
        )
    seen = ", ".join(f"{f} (first at line {line})" for f, line in matched.items()) or "none"
    raise ValueError(
        f"{source}: can't detect the format from the first {len(objects)} rows: keys seen {sorted(keys)}; formats that fit: {seen}. "
        f"Pass format= one of {list(FORMATS)} (with columns= if your fields have other names, e.g. {{'output': 'answer'}}), "
        "or allow_mixed=True to parse each row by its own format."
    )


def check_source(source: str, what: str = "data") -> str:
    """What `source` is ("dir", "file" or "hub"), reading nothing: a local path that does not exist
    or a file type no reader takes is an error here, before any model loads. Only the
    `owner/name` form is a hub id (`thresher.paths.is_hub_id`); any other missing path is
    reported with the near matches in its folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "dir"
    if path.is_file():
        if path.suffix.lower() not in READABLE_SUFFIXES:
            raise ValueError(
                f"{what} {source!r}: unsupported file type {path.suffix.lower()!r}; expected .json, .jsonl or .parquet, a save_to_disk folder, or a hub dataset id"
            )
        return "file"
    if is_hub_id(source, FILE_SUFFIXES):
        return "hub"
    raise FileNotFoundError(
        missing_path(
            what,
            source,
            "Expected a .json/.jsonl/.parquet file, a save_to_disk folder, or a hub dataset id "
            "of the form owner/name.",
        )
    )


def _rows(source: str, split: str, limit: int | None) -> Iterator[Row | Rejected]:
    path = Path(source)
    kind = check_source(source)
    if kind == "dir":
        yield from _numbered(_dataset_dir(path, split), limit)
    elif kind == "file":
        suffix = path.suffix.lower()
        if suffix == ".jsonl" or (suffix == ".json" and not _starts_with_bracket(path)):
            yield from _json_lines(path, limit)
        elif suffix == ".json":
            yield from _numbered(_json_array(path), limit)
        else:
            yield from _numbered(_parquet(path, limit), limit)
    else:
        yield from _numbered(_hub(source, split), limit)


def _numbered(rows: Iterable[Any], limit: int | None) -> Iterator[Row]:
    for i, row in enumerate(rows, 1):
        if limit is not None and i > limit:
            return
        yield i, row


def _json_lines(path: Path, limit: int | None) -> Iterator[Row | Rejected]:
    """One row per non-blank line, decoded with strict UTF-8 line by line, so one bad line costs one row."""
    count = 0
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            if line == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            count += 1
            if limit is not None and count > limit:
                return
            raw_text = raw.decode("utf-8", errors="replace").rstrip("\r\n")[:RAW_TEXT_CHARS]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Rejected(line, "bad_utf8", None, raw_text)
                continue
            try:
                yield line, json.loads(text)
            except (ValueError, RecursionError):  # JSONDecodeError, huge ints, absurd nesting
                yield Rejected(line, "malformed_json", None, raw_text)


def _starts_with_bracket(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"["


JSON_CHUNK_BYTES = 1 << 20  # ours: a JSON array is read this much at a time


def _json_array(path: Path) -> Iterator[Any]:
    """The elements of a whole-file JSON array, decoded one at a time as the file is read in
    chunks, so neither the file's text nor its rows are held. It can't be split into rows, so a
    file that is not a JSON array raises, naming the line where it stops being one.

    Bytes that are not UTF-8 are decoded as lone surrogates (`surrogateescape`): inside a string
    they reject only the rows holding them (`bad_utf8`, as for JSON lines); outside one the file is
    not JSON.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    buf, i, dropped, lines, eof = "", 0, 0, 0, False  # dropped: chars of the file before buf

    with open(path, "rb") as f:

        def more() -> bool:
            """Drop what was read (before i), append the next chunk; False at the end of the
            file."""
            nonlocal buf, i, eof, dropped, lines
            if eof:
                return False
            chunk = f.read(JSON_CHUNK_BYTES)
            eof = not chunk
            text = utf8.decode(chunk, final=eof)
            if not dropped and not buf:
                text = text.removeprefix("\ufeff")  # a byte order mark
            lines += buf.count("\n", 0, i)  # drop what was read, keep the rest
            dropped += i
            buf, i = buf[i:] + text, 0
            return True

        def next_char() -> str:
            """The next character after white space ("" at the end of the file)."""
            nonlocal i
            while True:
                i = _JSON_SPACE.match(buf, i).end()  # type: ignore[union-attr]
                if i < len(buf) or not more():
                    return buf[i : i + 1]

        def fail(pos: int, why: str) -> ValueError:
            line = lines + buf.count("\n", 0, pos) + 1
            return ValueError(
                f"{path}: not valid JSON ({why} at line {line}, char {dropped + pos}); fix the "
                "file, or write it as JSON lines (.jsonl) so only the bad rows are rejected"
            )

        more()
        if next_char() != "[":
            raise fail(i, "expected '['")
        i += 1
        if next_char() == "]":
            i += 1
        else:
            while True:
                while True:  # a row may run past the chunk read: read on until it decodes
                    try:
                        row, end = decoder.raw_decode(buf, i)
                        # a number may go on in the next chunk ("-0." decodes as -0): a row
                        # is whole when what follows it is read
                        if eof or buf[end : end + 1] in (" ", "\t", "\n", "\r", ",", "]"):
                            break
                    except json.JSONDecodeError as e:
                        if eof:
                            raise fail(e.pos, e.msg) from e
                    except (ValueError, RecursionError) as e:  # huge ints, absurd nesting
                        raise fail(i, str(e) or type(e).__name__) from e
                    more()
                i = end
                yield row
                c = next_char()
                if c == ",":
                    i += 1
                    next_char()
                elif c == "]":
                    i += 1
                    break
                else:
                    raise fail(i, "expected ',' or ']'")
        if next_char():
            raise fail(i, "extra data after the array")


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
PARQUET_BATCH_ROWS = 1024  # ours: rows decoded at a time; a batch of Alpaca rows is about 1 MB


def _parquet(path: Path, limit: int | None) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file, a batch of PARQUET_BATCH_ROWS decoded at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        for batch in batches:
            yield from batch.to_pylist()
            if limit is not None:
                limit -= batch.num_rows
                if limit <= 0:
                    return
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: can't read it as Parquet ({e})") from e


def _dataset_dir(path: Path, split: str) -> Iterable[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ValueError(
            f"{path}: a folder, but not one written by datasets' save_to_disk ({e}); pass a .json/.jsonl/.parquet file instead"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(
                f"{path}: no split {split!r}; it has {sorted(ds)}. Pass split= one of them."
            )
        ds = ds[split]
    return ds


def _hub(source: str, split: str) -> Iterable[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # the hub raises many types (network, auth, missing repo, bad split)
        owner = source.split("/", 1)[0]
        offline = offline_reason()
        fix = (
            f" {offline[0].upper()}{offline[1:]}: give a local .json/.jsonl/.parquet file or "
            "save_to_disk folder, or run where the hub is reachable."
            if offline
            else ""
        )
        raise ValueError(
            f"{source}: not a local path (no folder {owner!r} here), and loading it as a hub "
            f"dataset (split={split!r}) failed: {type(e).__name__}: {e}.{fix}"
        ) from e


def rejected_counts(rejected: Iterable[Rejected]) -> dict[str, int]:
    """Reason -> count, most frequent first (ties by reason)."""
    counts = Counter(r.reason for r in rejected)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_rejected(rejected: Iterable[Rejected], path: str | os.PathLike[str]) -> None:
    """rejected.jsonl: one `{line, reason, id, record}` per rejected row, written atomically."""
    write_jsonl(
        ({"line": r.line, "reason": r.reason, "id": r.id, "record": r.record} for r in rejected),
        path,
    )
