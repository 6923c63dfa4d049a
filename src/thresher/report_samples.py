"""The report's sample browser: rows to read, with their text, signals, rank, status and a "why".

Per run it shows the selected rows (all of them up to `SELECTED_HEAD + SELECTED_SPREAD +
SELECTED_TAIL`, else the head of the ranking, rows spread evenly over the rest, and the tail just
above the cut), the eligible rows just below the cut, the lowest-ranked rows, and the filtered and
rejected rows (every status or reason in turn, so each one has examples). The number shown is
bounded whatever the pool size, which bounds the page; every row is in `scores.parquet`,
`selected.jsonl` and `rejected.jsonl`.

The ranking is derived from the table alone: the method's score column (`manifest.method.score`;
for older runs, the signal column that separates the subset from the other eligible rows), its
direction (the subset's side), each eligible row's rank on it (ties by id, as the selectors), and
the last selected value as the cut.

Texts come from the run's data, read again with the manifest's data config (`thresher.data.read`,
as `thresher select` does) and checked against the manifest's content hash; rejected rows show
their record from `rejected.jsonl`. When the data is gone or changed, the rows are shown without
text and a note says why.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from thresher.data import Sample
    from thresher.report import RunView

# ours: enough rows to judge each part of a selection by eye, few enough to read; together at most
# 180 rows per run, which bounds the page (docs/evaluation.md states the size)
SELECTED_HEAD = 20  # the top of the ranking
SELECTED_SPREAD = 20  # evenly spaced over the rest of the subset
SELECTED_TAIL = 20  # the last selected rows, just above the cut
BELOW_CUT = 20  # the example: "the next 20 eligible" after the cut
LOWEST = 20
FILTERED = 40
REJECTED = 40
PREVIEW_CHARS = 120  # ours: one line of each side in the collapsed row
FULL_CHARS = 3000  # ours: a long answer stays readable; the rest is at its line in the data

# Sorting by a column (click its header) and filtering by text: a few lines, no dependency. The
# page's Content-Security-Policy allows only this script (by its hash), so no text from the data
# can run as code even if it escaped the escaping.
SCRIPT = """for(const t of document.querySelectorAll("table.samples")){
const b=t.tBodies[0],box=document.getElementById(t.id+"-find");box.hidden=false;
box.oninput=()=>{const q=box.value.toLowerCase();for(const r of b.rows)r.hidden=q!==""&&!r.textContent.toLowerCase().includes(q)};
t.querySelectorAll("th").forEach((h,k)=>{h.title="click to sort";h.onclick=()=>{const d=h.dataset.d=h.dataset.d==="1"?"-1":"1";
const key=r=>{const c=r.cells[k];return c.dataset.v===undefined?c.textContent:c.dataset.v===""?null:Number(c.dataset.v)};
const cmp=(p,q)=>p===null?(q===null?0:1):q===null?-1:d*(typeof p==="number"?p-q:String(p).localeCompare(String(q)));
[...b.rows].sort((x,y)=>cmp(key(x),key(y))).forEach(r=>b.appendChild(r))}})}"""


# Code points U+D800-U+DFFF (lone surrogates) cannot be written as UTF-8. Rows bring them in from
# JSON escapes such as "\ud800" and from bad UTF-8 bytes inside a JSON array (read with
# surrogateescape); they are replaced by U+FFFD before anything is written, and counted.
SURROGATES = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def make_safe(value: Any) -> tuple[Any, int]:
    """`value` (a string, or lists and dicts of them as JSON holds) with every lone surrogate
    replaced by U+FFFD, and how many were replaced. Other values are returned as they are."""
    if isinstance(value, str):
        return SURROGATES.subn(REPLACEMENT, value)
    if isinstance(value, list):
        items = [make_safe(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        pairs = [(make_safe(k), make_safe(v)) for k, v in value.items()]
        return {k: v for (k, _), (v, _) in pairs}, sum(a + b for (_, a), (_, b) in pairs)
    return value, 0


def threshold(values: np.ndarray, selected: np.ndarray) -> float | None:
    """The selection boundary on this signal, when the subset and the rest are separated by it
    (a top-k or bottom-k on this column); None when they overlap (another column or random)."""
    ok = np.isfinite(values)
    a, b = values[ok & selected], values[ok & ~selected]
    if len(a) == 0 or len(b) == 0:
        return None
    if a.min() >= b.max():
        return float(a.min())
    if a.max() <= b.min():
        return float(a.max())
    return None


@dataclass
class Ranking:
    """How a run's eligible rows are ordered by its score column (best first)."""

    column: str | None  # None: the method ranks by no column (random, k-center)
    descending: bool
    order: np.ndarray  # eligible rows with a finite score, best first
    position: dict[int, int]  # row -> 1-based rank among them
    cut: float | None  # the score of the last selected row in `order`
    first: int  # the position of the first selected row (0 when nothing is selected)
    last: int  # the position of the last one
    contiguous: bool  # the subset is exactly the first `last` rows


@dataclass
class Shown:
    row: int | None  # index in scores.parquet; None for a row rejected while reading
    group: str
    why: str
    status: str
    line: int | None
    record: Any = None  # a rejected row's record, shown as JSON


def ranking(run: RunView) -> Ranking:
    ids = np.array(run.ids, dtype=object)
    eligible = np.array([s == "ok" for s in run.status], dtype=bool)
    method = run.manifest.get("method") or {}
    column = method.get("score")
    values = _column(run, column) if column else None
    if "score" not in method:  # a run written before the manifest named it: the separating column
        column = next(
            (
                n
                for n, v in run.signals.items()
                if threshold(v[eligible], run.selected[eligible]) is not None
            ),
            None,
        )
        values = run.signals.get(column) if column else None
    if values is None:
        return Ranking(None, True, np.zeros(0, dtype=int), {}, None, 0, 0, False)
    rows = np.flatnonzero(eligible & np.isfinite(values))
    sel, rest = values[rows[run.selected[rows]]], values[rows[~run.selected[rows]]]
    # the subset's side: higher values selected means best first is highest
    descending = not (len(sel) and len(rest)) or bool(np.median(sel) >= np.median(rest))
    key = -values[rows] if descending else values[rows]
    order = rows[np.lexsort((ids[rows].astype(str), key))]
    position = {int(r): k + 1 for k, r in enumerate(order)}
    chosen = [position[int(r)] for r in order if run.selected[r]]
    first, last = min(chosen, default=0), max(chosen, default=0)
    cut = float(values[order[last - 1]]) if last else None
    return Ranking(column, descending, order, position, cut, first, last, last == len(chosen))


def choose(run: RunView, rank: Ranking) -> tuple[list[Shown], list[str]]:
    """The rows the browser shows, in display order, and notes on what was left out."""
    notes: list[str] = []
    shown: list[Shown] = []
    seen: set[int] = set()

    def add(rows: Any, group: str) -> None:
        for r in map(int, rows):
            if r not in seen:
                seen.add(r)
                line = run.lines[r] if run.lines else None
                shown.append(Shown(r, group, _why(run, rank, r, group), run.status[r], line))

    # in rank order; a selected row without a finite score (a composed method's) in the selector's
    in_order = [int(r) for r in rank.order if run.selected[r]]
    unranked = [int(r) for r in np.flatnonzero(run.selected) if int(r) not in rank.position]
    selected = in_order + sorted(unranked, key=lambda r: _selector_position(run, r))
    limit = SELECTED_HEAD + SELECTED_SPREAD + SELECTED_TAIL
    if len(selected) > limit:
        middle = selected[SELECTED_HEAD:-SELECTED_TAIL]
        spread = [middle[int(k)] for k in np.linspace(0, len(middle) - 1, SELECTED_SPREAD)]
        notes.append(
            f"{limit} of the {len(selected)} selected rows: the first {SELECTED_HEAD}, "
            f"{SELECTED_SPREAD} evenly spaced and the last {SELECTED_TAIL} "
            f"{'in rank order' if rank.column else 'in the order the selector returned'} "
            f"(every selected row is in selected.jsonl)"
        )
        selected = selected[:SELECTED_HEAD] + spread + selected[-SELECTED_TAIL:]
    add(selected, "selected")
    if rank.column:
        after = [int(r) for r in rank.order[rank.last :] if not run.selected[r]]
        add(after[:BELOW_CUT], "below the cut" if rank.last else "top ranked")
        add([r for r in rank.order[-LOWEST:] if not run.selected[r]], "lowest ranked")
    else:
        rest = np.flatnonzero(~run.selected & np.array([s == "ok" for s in run.status]))
        picks = rest[np.linspace(0, len(rest) - 1, min(BELOW_CUT, len(rest))).astype(int)]
        add(picks, "not selected")
    filtered = [r for r, s in enumerate(run.status) if s.startswith("filtered:")]
    picked = _in_turn(filtered, lambda r: run.status[r], FILTERED)
    if len(filtered) > len(picked):
        notes.append(f"{len(picked)} of the {len(filtered)} filtered rows, each rule in turn")
    add(picked, "filtered")
    picked_rej = _in_turn(run.rejected, lambda x: str(x.get("reason")), REJECTED)
    if len(run.rejected) > len(picked_rej):
        notes.append(
            f"{len(picked_rej)} of the {len(run.rejected)} rejected rows, each reason in turn "
            "(every one is in rejected.jsonl)"
        )
    row_of = {i: k for k, i in enumerate(run.ids)}
    for x in picked_rej:
        reason, line = str(x.get("reason")), x.get("line")
        row = row_of.get(x.get("id"))
        # a row rejected while scoring has its (partial) signals; a duplicate id is another row's
        row = row if row is not None and run.status[row] == reason else None
        why = f"rejected at line {line}: {reason}"
        shown.append(Shown(row, "rejected", why, reason, line, x.get("record")))
    return shown, notes


def _in_turn(items: list[Any], key: Any, limit: int) -> list[Any]:
    """Up to `limit` items taking one of each key in turn (most frequent key first), so that
    every status or reason has examples."""
    by: dict[str, list[Any]] = {}
    for x in items:
        by.setdefault(key(x), []).append(x)
    groups = sorted(by.values(), key=len, reverse=True)
    out = [x for turn in zip_longest(*groups) for x in turn if x is not None]
    return out[:limit]


def _why(run: RunView, rank: Ranking, r: int, group: str) -> str:
    method = (run.manifest.get("method") or {}).get("name", "the method")
    if group == "filtered":
        value = _value(run, rank, r)
        return f"{run.status[r]}: scored, then excluded by {method}'s filter" + (
            f" ({rank.column} {value})" if value else ""
        )
    if rank.column is None:
        if group == "selected":
            return (
                f"selected as #{_selector_position(run, r) + 1} of {int(run.selected.sum())} by "
                f"{method}, which ranks by no single column"
            )
        return f"not selected by {method}, which ranks by no single column"
    pos = rank.position.get(r)
    if pos is None:
        return (
            f"{'selected' if group == 'selected' else 'not selected'} by {method}; "
            f"{rank.column} has no finite value for this row, so it has no rank"
        )
    head = f"{rank.column} {_value(run, rank, r)}: rank {pos} of {len(rank.order)} eligible"
    if rank.last == 0:
        return f"{head}; nothing is selected yet"
    if not rank.contiguous:
        return (
            f"{head}, {'selected' if group == 'selected' else 'not selected'}; {method} does not "
            f"cut at one {rank.column} value (selected ranks {rank.first} to {rank.last})"
        )
    if group == "selected":
        return f"{head}, threshold {rank.cut:.4g}"
    return f"{head}, {pos - rank.last} below the threshold {rank.cut:.4g}"


def _selector_position(run: RunView, r: int) -> int:
    """Where the selector returned row `r` (0 first); 0 when the table has no rank column."""
    return (run.rank[r] if run.rank else None) or 0


def _value(run: RunView, rank: Ranking, r: int) -> str:
    v = _column(run, rank.column) if rank.column else None
    return f"{v[r]:.4g}" if v is not None and np.isfinite(v[r]) else ""


def _column(run: RunView, name: str) -> np.ndarray | None:
    found = run.signals.get(name)
    return found if found is not None else run.lengths.get(name)


def read_texts(run: RunView, ids: set[str]) -> tuple[dict[str, tuple[str, str]], str]:
    """(prompt, response) of the given sample ids from the run's data, and a note when the texts
    cannot be shown (the data is gone, unreadable or changed since the run)."""
    from thresher import data
    from thresher.config import RunConfig

    stored = run.manifest.get("data") or {}
    try:
        d = RunConfig.from_dict(run.manifest.get("config") or {}).data
        if not d.path:
            return {}, "texts are not shown: the manifest names no data.path"
        got = data.read(
            str(d.path),
            format=d.format,
            columns=d.columns or None,
            roles=d.roles or None,
            id_column=d.id_column,
            split=d.split,
            limit=d.limit,
            allow_mixed=d.allow_mixed,
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        source = stored.get("source", "the run's data")
        return (
            {},
            f"texts are not shown: {source} could not be read again ({type(e).__name__}: {e})",
        )
    if got.content_hash != stored.get("content_hash"):
        return {}, (
            f"texts are not shown: {got.source} changed since the run (its content hash differs "
            "from the manifest's), so its rows may not be the ones scored"
        )
    return {s.id: (_prompt(s), s.response) for s in got.samples if s.id in ids}, ""


def _prompt(s: Sample) -> str:
    turns = s.prompt_messages
    if len(turns) == 1:
        return turns[0].content
    return "\n\n".join(f"[{m.role}] {m.content}" for m in turns)


# ------------------------------------------------------------------ HTML


def browser_html(k: int, run: RunView) -> tuple[str, int]:
    """The browser of run `k`, and how many lone surrogates its texts held (replaced)."""
    rank = ranking(run)
    shown, notes = choose(run, rank)
    texts, missing = read_texts(run, {run.ids[s.row] for s in shown if s.row is not None})
    texts, replaced = make_safe({i: list(t) for i, t in texts.items()})
    if missing:
        notes.insert(0, missing)
    columns = list(run.signals)
    if rank.column and rank.column not in columns:
        columns.insert(0, rank.column)
    table = f"samples-{k}"
    head = "".join(
        f"<th>{html.escape(c)}</th>"
        for c in ["group", "rank", "line", "status", *columns, "why", "instruction → response"]
    )
    body = "".join(_row(n, run, rank, s, columns, texts) for n, s in enumerate(shown))
    counts = ", ".join(f"{n} {g}" for g, n in _counts(shown))
    side = "the subset's side" if rank.last else "nothing is selected yet to tell the method's side"
    order = (
        f"Ranked by {rank.column}, {'highest' if rank.descending else 'lowest'} first ({side}), "
        "ties by id; the threshold is the last selected value. "
        if rank.column
        else "The method ranks by no single column: selected rows are in the selector's order. "
    )
    intro = (
        f"<p>{len(shown)} rows ({counts}). {order}Click a header to sort, ▸ to read a row whole"
        + ("" if not notes else "; " + "; ".join(html.escape(n) for n in notes))
        + ".</p>"
    )
    find = f'<input type="search" id="{table}-find" class="find" placeholder="search these rows (text, status, why)" hidden>'
    out = f'{intro}{find}<table class="samples" id="{table}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return out, replaced


def _counts(shown: list[Shown]) -> Iterator[tuple[str, int]]:
    groups: dict[str, int] = {}
    for s in shown:
        groups[s.group] = groups.get(s.group, 0) + 1
    yield from groups.items()


def _row(
    k: int, run: RunView, rank: Ranking, s: Shown, columns: list[str], texts: dict[str, list[str]]
) -> str:
    pos = rank.position.get(s.row) if s.row is not None and s.group != "rejected" else None
    if rank.column is None and s.group == "selected" and s.row is not None:
        pos = _selector_position(run, s.row) + 1  # no ranking column: the selector's order
    cells = [
        f'<td data-v="{k}">{html.escape(s.group)}</td>',  # sorting by it restores this order
        _num_cell(pos),
        _num_cell(s.line),
        f"<td>{html.escape(s.status)}</td>",
    ]
    for c in columns:
        v = _column(run, c) if s.row is not None else None
        value = float(v[s.row]) if v is not None else float("nan")
        cells.append(
            f'<td data-v="{value!r}">{value:.4g}</td>'
            if np.isfinite(value)
            else '<td data-v="">–</td>'
        )
    cells.append(f'<td class="why">{html.escape(s.why)}</td>')
    if s.group == "rejected":
        cells.append(_record_cell(s.record))
    elif s.row is not None and run.ids[s.row] in texts:
        cells.append(_text_cell(*texts[run.ids[s.row]]))
    else:
        cells.append("<td>(text not shown: see the note above)</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _num_cell(v: int | None) -> str:
    return f'<td data-v="{v}">{v}</td>' if v is not None else '<td data-v="">–</td>'


def _content(text: str) -> str:
    """Text as element content: only & < > need escaping there (quotes stay: JSON records are
    full of them)."""
    return html.escape(text, quote=False)


def _clip(text: str, n: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _full(text: str) -> str:
    if len(text) <= FULL_CHARS:
        return _content(text)
    return _content(text[:FULL_CHARS]) + (
        f"<i>… {len(text) - FULL_CHARS} more characters (the whole row is at its line in the data)</i>"
    )


def _text_cell(prompt: str, response: str) -> str:
    summary = f"{_clip(prompt, PREVIEW_CHARS)} → {_clip(response, PREVIEW_CHARS)}"
    return (
        f'<td class="txt"><details><summary>{_content(summary)}</summary>'
        f"<b>instruction</b><pre>{_full(prompt)}</pre><b>response</b><pre>{_full(response)}</pre>"
        "</details></td>"
    )


def _record_cell(record: Any) -> str:
    text = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False, indent=1)
    return (
        f'<td class="txt"><details><summary>{_content(_clip(text, 2 * PREVIEW_CHARS))}</summary>'
        f"<b>record as read</b><pre>{_full(text)}</pre></details></td>"
    )
