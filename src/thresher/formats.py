"""Row parsers for the four dataset formats, and per-row format detection.

A parser takes one row after column mapping (a dict keyed by our canonical names) and returns
the turns as (role, content) pairs plus the Alpaca `instruction` and `input` fields, or raises
`RowError` with the reason the row is rejected. Reasons name the user's own column
(`missing_field:answer` when `output` is mapped to `answer`), so they point into the file.

Formats (ECOSYSTEM A1):
  alpaca             instruction, input?, output, system?, history? ([user, assistant] pairs);
                     the user turn is LLaMA-Factory's join `instruction + "\\n" + input`.
  sharegpt           conversations [{from, value}], system?; a leading system turn wins over the
                     system column, as in LLaMA-Factory's converter.
  messages           messages [{role, content}] with roles system/user/assistant.
  prompt_completion  TRL: prompt and completion both strings, or both lists of messages
                     (conversational; the completion is exactly one assistant message).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")

# A row is recognised as a format when all of these keys hold a non-null value.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
}
CANONICAL_KEYS = (
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "conversations",
    "messages",
    "prompt",
    "completion",
)

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
# LLaMA-Factory `tags` that name a role value (data/README.md); role_tag/content_tag name the keys
ROLE_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}

Turns = list[tuple[str, str]]


class RowError(ValueError):
    """A row that cannot become a sample; `reason` goes to rejected.jsonl."""

    def __init__(self, reason: str, id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = id


@dataclass(frozen=True)
class Parsed:
    turns: Turns
    instruction: str
    input: str


@dataclass(frozen=True)
class Schema:
    """Where the canonical fields live in the user's rows, and how ShareGPT names its roles."""

    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> user's column
    role_map: dict[str, str] = field(default_factory=lambda: dict(SHAREGPT_ROLES))
    role_key: str = "from"
    content_key: str = "value"

    def name(self, key: str) -> str:
        return self.columns.get(key, key)


def make_schema(columns: dict[str, str] | None, roles: dict[str, str] | None) -> Schema:
    """Check `columns` and `roles` up front so a typo fails before any row is read.

    `roles` accepts LLaMA-Factory tag names (`role_tag`, `content_tag`, `user_tag`,
    `assistant_tag`, `system_tag`) and plain `{from value: user|assistant|system}` pairs; both add
    to the default ShareGPT role names.
    """
    columns = dict(columns or {})
    for key, col in columns.items():
        if key not in CANONICAL_KEYS:
            near = difflib.get_close_matches(key, CANONICAL_KEYS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"columns: unknown field {key!r}{hint} Expected keys among {list(CANONICAL_KEYS)}, mapped to your column names, e.g. {{'output': 'answer'}}"
            )
        if not isinstance(col, str) or not col:
            raise ValueError(
                f"columns[{key!r}] = {col!r}: expected the name of a column in your data"
            )
    role_map, role_key, content_key = dict(SHAREGPT_ROLES), "from", "value"
    for key, value in (roles or {}).items():
        if key == "role_tag":
            role_key = value
        elif key == "content_tag":
            content_key = value
        elif key in ROLE_TAGS:
            role_map[value] = ROLE_TAGS[key]
        elif value in MESSAGE_ROLES:
            role_map[key] = value
        else:
            raise ValueError(
                f"roles[{key!r}] = {value!r}: expected a role (user, assistant or system) for the ShareGPT "
                f"`from` value {key!r}, or a LLaMA-Factory tag among role_tag, content_tag, {', '.join(ROLE_TAGS)}"
            )
    return Schema(columns, role_map, role_key, content_key)


def map_columns(row: dict[str, Any], schema: Schema) -> dict[str, Any]:
    """The row keyed by canonical names: a mapped field is read only from the user's column."""
    view = dict(row)
    for key, col in schema.columns.items():
        view.pop(key, None)
        if col in row:
            view[key] = row[col]
    return view


def full_matches(view: dict[str, Any]) -> list[str]:
    return [f for f, keys in REQUIRED_KEYS.items() if all(view.get(k) is not None for k in keys)]


def row_format(view: dict[str, Any]) -> str:
    """The one format this row belongs to, else "ambiguous" (several) or "unknown" (none).

    A row missing a required value still belongs to the only format it partly matches, so
    `{"instruction": "x"}` is an Alpaca row with `missing_field:output`, not an unknown row.
    """
    full = full_matches(view)
    if full:
        return full[0] if len(full) == 1 else "ambiguous"
    partial = [f for f, keys in REQUIRED_KEYS.items() if any(view.get(k) is not None for k in keys)]
    return partial[0] if len(partial) == 1 else "unknown"


def fits(view: dict[str, Any], fmt: str) -> bool:
    """Whether a row can be parsed as `fmt` (otherwise it is a `format_mismatch`)."""
    found = row_format(view)
    if found == "ambiguous":
        return fmt in full_matches(view)
    if found == "unknown":  # e.g. every field null: parse it, so the reason names the missing field
        return any(k in view for k in REQUIRED_KEYS[fmt])
    return found == fmt


def _text(view: dict[str, Any], key: str, schema: Schema, *, required: bool) -> str:
    value = view.get(key)
    if value is None:
        if required:
            raise RowError(f"missing_field:{schema.name(key)}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"bad_type:{schema.name(key)}")
    return value


def _turn_list(
    items: Any, list_name: str, role_key: str, content_key: str, role_map: dict[str, str]
) -> Turns:
    if not isinstance(items, list):
        raise RowError(f"bad_type:{list_name}")
    turns = []
    for item in items:
        if not isinstance(item, dict):
            raise RowError(f"bad_type:{list_name}")
        role, content = item.get(role_key), item.get(content_key)
        if not isinstance(role, str) or role not in role_map:
            raise RowError("bad_roles")
        if content is None:
            raise RowError(f"missing_field:{content_key}")
        if not isinstance(content, str):
            raise RowError(f"bad_type:{content_key}")
        turns.append((role_map[role], content))
    return turns


def _finish(turns: Turns, instruction: str | None = None, input: str = "") -> Parsed:
    """Check the shape every sample shares: [system], (user, assistant)+, non-empty final pair."""
    if turns and turns[0] == ("system", ""):
        turns = turns[1:]
    body = [role for role, _ in (turns[1:] if turns and turns[0][0] == "system" else turns)]
    if (
        not body
        or len(body) % 2
        or any(role != ("user", "assistant")[i % 2] for i, role in enumerate(body))
    ):
        raise RowError("bad_roles")
    if not turns[-1][1].strip():
        raise RowError("empty_response")
    if not turns[-2][1].strip():
        raise RowError("empty_instruction")
    return Parsed(turns, turns[-2][1] if instruction is None else instruction, input)


def parse_alpaca(view: dict[str, Any], schema: Schema) -> Parsed:
    instruction = _text(view, "instruction", schema, required=True)
    input = _text(view, "input", schema, required=False)
    output = _text(view, "output", schema, required=True)
    system = _text(view, "system", schema, required=False)
    history = view.get("history")
    history = [] if history is None else history
    if not isinstance(history, list) or not all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        for pair in history
    ):
        raise RowError(f"bad_type:{schema.name('history')}")
    turns: Turns = [("system", system)] if system else []
    for user, assistant in history:
        turns += [("user", user), ("assistant", assistant)]
    turns += [("user", f"{instruction}\n{input}" if input else instruction), ("assistant", output)]
    return _finish(turns, instruction, input)


def parse_sharegpt(view: dict[str, Any], schema: Schema) -> Parsed:
    conversations = view.get("conversations")
    if conversations is None:
        raise RowError(f"missing_field:{schema.name('conversations')}")
    turns = _turn_list(
        conversations,
        schema.name("conversations"),
        schema.role_key,
        schema.content_key,
        schema.role_map,
    )
    if not (turns and turns[0][0] == "system"):
        system = _text(view, "system", schema, required=False)
        turns = [("system", system), *turns] if system else turns
    return _finish(turns)


def parse_messages(view: dict[str, Any], schema: Schema) -> Parsed:
    messages = view.get("messages")
    if messages is None:
        raise RowError(f"missing_field:{schema.name('messages')}")
    return _finish(_turn_list(messages, schema.name("messages"), "role", "content", MESSAGE_ROLES))


def parse_prompt_completion(view: dict[str, Any], schema: Schema) -> Parsed:
    prompt, completion = view.get("prompt"), view.get("completion")
    for key, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise RowError(f"missing_field:{schema.name(key)}")
        if not isinstance(value, (str, list)):
            raise RowError(f"bad_type:{schema.name(key)}")
    if isinstance(prompt, str) and isinstance(completion, str):
        return _finish([("user", prompt), ("assistant", completion)])
    if not (
        isinstance(prompt, list) and isinstance(completion, list)
    ):  # TRL needs both in one form
        raise RowError(f"bad_type:{schema.name('completion')}")
    head = _turn_list(prompt, schema.name("prompt"), "role", "content", MESSAGE_ROLES)
    tail = _turn_list(completion, schema.name("completion"), "role", "content", MESSAGE_ROLES)
    if len(tail) != 1 or tail[0][0] != "assistant":
        raise RowError("bad_roles")
    return _finish(head + tail)


PARSERS: dict[str, Callable[[dict[str, Any], Schema], Parsed]] = {
    "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt,
    "messages": parse_messages,
    "prompt_completion": parse_prompt_completion,
}
