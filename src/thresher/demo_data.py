"""The demo pool: an instruction pool of our own making, with planted defects.

Every clean row is a checkable task (integer arithmetic, unit conversion, string edits,
ordering, table lookups, word forms) with a short correct answer. A row is built from a few
arguments that stay in `meta["args"]`, so `verify_record` can rebuild the prompt and recompute
the answer. On top of the clean rows come planted defects, named only in `meta["defect"]` and
never in the text: wrong, truncated, empty and mismatched answers, and exact duplicates.
`thresher demo` and the benchmarks use the pool to ask whether a selection keeps the chaff
out (`defect_audit`). Prompts are unique across the pool, so the only repeats are the planted
duplicates.
"""

from __future__ import annotations

import copy
import difflib
import json
import operator
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

Args = dict[str, Any]

DEFECT_KINDS = (
    "wrong_answer",
    "truncated_answer",
    "empty_answer",
    "mismatched_answer",
    "duplicate",
)
# ours: 25 defective rows per 100 clean ones (a fifth of the pool) is enough chaff for a 10%
# selection to show whether a method avoids it; empty answers stay rare because the reader
# rejects them (as `empty_response`) before any method sees them.
DEFAULT_DEFECT_RATES = {
    "wrong_answer": 0.08,
    "truncated_answer": 0.05,
    "empty_answer": 0.02,
    "mismatched_answer": 0.05,
    "duplicate": 0.05,
}


@dataclass(frozen=True)
class _Family:
    make: Callable[[random.Random], Args]  # the arguments of one task
    solve: Callable[[Args], str]  # its canonical answer
    text: Callable[[Args, str], tuple[str, str, str]]  # instruction, input, output for an answer
    corrupt: Callable[[Args, random.Random], str]  # a plausible answer that may be wrong
    weight: float  # ours: families with room for many distinct prompts give most rows


def _num(x: Fraction) -> str:
    return format((Decimal(x.numerator) / Decimal(x.denominator)).normalize(), "f")


def _swap_adjacent(items: list[str], rng: random.Random) -> list[str]:
    spots = [
        i for i in range(len(items) - 1) if items[i] != items[i + 1] and " " not in items[i : i + 2]
    ]
    i = rng.choice(spots)
    return [*items[:i], items[i + 1], items[i], *items[i + 2 :]]


# -- arithmetic ---------------------------------------------------------------------------
_OPS = {  # op: (instruction when the numbers are in `input`, what it computes)
    "+": ("Add the two numbers.", operator.add),
    "-": ("Subtract the second number from the first.", operator.sub),
    "×": ("Multiply the two numbers.", operator.mul),
    "÷": ("Divide the first number by the second.", operator.floordiv),  # exact: a = b * q
}


def _arith_make(rng: random.Random) -> Args:
    op = rng.choice(list(_OPS))
    if op == "÷":
        b = rng.randint(2, 12)
        a = b * rng.randint(2, 12)
    elif op == "×":
        a, b = rng.randint(2, 25), rng.randint(2, 12)
    else:
        a, b = rng.randint(10, 99), rng.randint(1, 99)
        if op == "-" and b > a:
            a, b = b, a
    return {"op": op, "a": a, "b": b, "form": rng.randrange(3)}


def _arith_text(x: Args, answer: str) -> tuple[str, str, str]:
    a, op, b = x["a"], x["op"], x["b"]
    instruction = (f"What is {a} {op} {b}?", f"Calculate {a} {op} {b}.", _OPS[op][0])[x["form"]]
    return instruction, f"{a}, {b}" if x["form"] == 2 else "", f"{a} {op} {b} = {answer}."


# -- unit conversion ----------------------------------------------------------------------
_UNITS = {
    "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "h": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "C": ("°C", "°C"),
    "F": ("°F", "°F"),
}
_FACTORS = {
    ("km", "m"): Fraction(1000),
    ("m", "km"): Fraction(1, 1000),
    ("kg", "g"): Fraction(1000),
    ("g", "kg"): Fraction(1, 1000),
    ("h", "min"): Fraction(60),
    ("min", "h"): Fraction(1, 60),
    ("C", "F"): Fraction(9, 5),
}


def _qty(value: Fraction, unit: str) -> str:
    one, many = _UNITS[unit]
    return f"{_num(value)} {one if value == 1 else many}"


# source values chosen so that every result is exact in a few decimals
_SOURCE = {
    "km": (1, 40, Fraction(1, 2)),
    "kg": (1, 40, Fraction(1, 2)),
    "h": (1, 20, Fraction(1, 2)),
    "m": (1, 40, 250),
    "g": (1, 40, 250),
    "min": (1, 16, 15),
    "C": (-8, 20, 5),
}


def _unit_make(rng: random.Random) -> Args:
    src, dst = rng.choice(list(_FACTORS))
    low, high, step = _SOURCE[src]
    return {
        "from": src,
        "to": dst,
        "value": _num(rng.randint(low, high) * Fraction(step)),
        "form": rng.randrange(3),
    }


def _convert(x: Args) -> Fraction:
    return Fraction(x["value"]) * _FACTORS[x["from"], x["to"]] + (32 if x["from"] == "C" else 0)


def _unit_text(x: Args, answer: str) -> tuple[str, str, str]:
    source, target = _qty(Fraction(x["value"]), x["from"]), _UNITS[x["to"]][1]
    instruction = (
        f"Convert {source} to {target}.",
        f"What is {source} in {target}?",
        f"Convert the quantity below to {target}.",
    )[x["form"]]
    return instruction, source if x["form"] == 2 else "", f"{source} is {answer}."


def _unit_corrupt(x: Args, rng: random.Random) -> str:
    right = _convert(x)
    wrong = (
        right - rng.choice([32, 5, -5])
        if x["from"] == "C"
        else right * rng.choice([10, Fraction(1, 10)])
    )
    return _qty(wrong, x["to"])


# -- string edits -------------------------------------------------------------------------
_WORDS = (
    "planet",
    "garden",
    "window",
    "silver",
    "rocket",
    "banana",
    "pencil",
    "summer",
    "bridge",
    "castle",
    "yellow",
    "marble",
    "orange",
    "basket",
    "candle",
    "forest",
    "guitar",
    "island",
    "jacket",
    "kitten",
    "letter",
    "mirror",
    "pepper",
    "rabbit",
    "school",
    "tomato",
    "violin",
    "cherry",
    "dragon",
    "button",
)
_STRINGS = {  # op: (the word inline, the word in `input`, the answer, how to compute it)
    "reverse": (
        'Reverse the word "{w}".',
        "Reverse the following word.",
        'The word "{w}" reversed is "{a}".',
        lambda w, c: w[::-1],
    ),
    "upper": (
        'Convert "{w}" to uppercase.',
        "Write the following text in uppercase.",
        '"{w}" in uppercase is "{a}".',
        lambda w, c: w.upper(),
    ),
    "count": (
        'How many times does the letter "{c}" appear in "{w}"?',
        'Count how many times the letter "{c}" appears in the following word.',
        'The letter "{c}" appears {a} {times} in "{w}".',
        lambda w, c: str(w.count(c)),
    ),
    "vowels": (
        'Remove all vowels from the word "{w}".',
        "Remove the vowels (a, e, i, o, u) from the following word.",
        '"{w}" without vowels is "{a}".',
        lambda w, c: "".join(ch for ch in w if ch not in "aeiou"),
    ),
}


def _string_make(rng: random.Random) -> Args:
    op = rng.choice(list(_STRINGS))
    word = " ".join(rng.sample(_WORDS, 2)) if op == "upper" else rng.choice(_WORDS)
    return {
        "op": op,
        "word": word,
        "letter": rng.choice(word) if op == "count" else "",
        "form": rng.randrange(2),
    }


def _string_text(x: Args, answer: str) -> tuple[str, str, str]:
    inline, with_input, say, _ = _STRINGS[x["op"]]
    fields = {
        "w": x["word"],
        "c": x["letter"],
        "a": answer,
        "times": "time" if answer == "1" else "times",
    }
    instruction = (inline if x["form"] == 0 else with_input).format(**fields)
    return instruction, x["word"] if x["form"] == 1 else "", say.format(**fields)


def _string_corrupt(x: Args, rng: random.Random) -> str:
    right = _STRINGS[x["op"]][3](x["word"], x["letter"])
    if x["op"] == "count":
        return str(int(right) + rng.choice([-1, 1]))  # the letter is in the word, so never -1
    return "".join(_swap_adjacent(list(right), rng))


# -- ordering -----------------------------------------------------------------------------
def _order_make(rng: random.Random) -> Args:
    op = rng.choice(("ascending", "descending", "alphabetical"))
    items = (
        rng.sample(_WORDS, rng.randint(4, 5))
        if op == "alphabetical"
        else [str(n) for n in rng.sample(range(1, 100), rng.randint(4, 6))]
    )
    return {"op": op, "items": items, "form": rng.randrange(2)}


def _order_sorted(x: Args) -> list[str]:
    return sorted(
        x["items"], key=None if x["op"] == "alphabetical" else int, reverse=x["op"] == "descending"
    )


def _order_text(x: Args, answer: str) -> tuple[str, str, str]:
    listed = ", ".join(x["items"])
    if x["op"] == "alphabetical":
        ask, say = (
            (
                "Put these words in alphabetical order: {}.",
                "Put the following words in alphabetical order.",
            ),
            "In alphabetical order: {}.",
        )
    else:
        ask, say = (
            (
                f"Sort these numbers in {x['op']} order: {{}}.",
                f"Sort the following numbers in {x['op']} order.",
            ),
            "The sorted list is: {}.",
        )
    return ask[x["form"]].format(listed), listed if x["form"] == 1 else "", say.format(answer)


# -- lookups in a small fixed table -------------------------------------------------------
_TABLES = {  # name: (key column, value column, table, question, answer sentence)
    "capital": (
        "Country",
        "Capital",
        {
            "France": "Paris",
            "Japan": "Tokyo",
            "Italy": "Rome",
            "Spain": "Madrid",
            "Egypt": "Cairo",
            "Canada": "Ottawa",
            "Kenya": "Nairobi",
            "Peru": "Lima",
            "Norway": "Oslo",
            "Australia": "Canberra",
            "Germany": "Berlin",
            "Portugal": "Lisbon",
        },
        "What is the capital of {k}?",
        "The capital of {k} is {v}.",
    ),
    "symbol": (
        "Element",
        "Symbol",
        {
            "hydrogen": "H",
            "helium": "He",
            "carbon": "C",
            "nitrogen": "N",
            "oxygen": "O",
            "sodium": "Na",
            "magnesium": "Mg",
            "potassium": "K",
            "iron": "Fe",
            "copper": "Cu",
            "silver": "Ag",
            "gold": "Au",
        },
        "What is the chemical symbol for {k}?",
        "The chemical symbol for {k} is {v}.",
    ),
}


def _lookup_make(rng: random.Random) -> Args:
    table = rng.choice(list(_TABLES))
    keys = list(_TABLES[table][2])
    key = rng.choice(keys)
    rows = None
    if rng.random() < 0.5:  # half the lookups carry (part of) the table in `input`
        rows = [*rng.sample([k for k in keys if k != key], rng.randint(3, 5)), key]
        rng.shuffle(rows)
    return {"table": table, "key": key, "rows": rows}


def _lookup_text(x: Args, answer: str) -> tuple[str, str, str]:
    key_col, value_col, table, ask, say = _TABLES[x["table"]]
    question, output = ask.format(k=x["key"]), say.format(k=x["key"], v=answer)
    if not x["rows"]:
        return question, "", output
    lines = [f"{key_col} | {value_col}", *(f"{k} | {table[k]}" for k in x["rows"])]
    return f"Use the table to answer: {question}", "\n".join(lines), output


# -- word forms ---------------------------------------------------------------------------
_WORD_TABLES = {
    "plural": {
        "child": "children",
        "mouse": "mice",
        "foot": "feet",
        "tooth": "teeth",
        "goose": "geese",
        "man": "men",
        "woman": "women",
        "person": "people",
        "box": "boxes",
        "city": "cities",
        "knife": "knives",
        "leaf": "leaves",
        "bus": "buses",
        "baby": "babies",
        "wolf": "wolves",
        "potato": "potatoes",
        "cactus": "cacti",
        "sheep": "sheep",
    },
    "antonym": {
        "hot": "cold",
        "early": "late",
        "happy": "sad",
        "tall": "short",
        "fast": "slow",
        "open": "closed",
        "strong": "weak",
        "rich": "poor",
        "loud": "quiet",
        "hard": "soft",
        "wet": "dry",
        "young": "old",
        "near": "far",
        "heavy": "light",
        "high": "low",
        "cheap": "expensive",
    },
}
_WORD_ASK = {
    "plural": (
        'What is the plural of "{w}"?',
        "Write the plural form of the following noun.",
        'The plural of "{w}" is "{a}".',
    ),
    "antonym": (
        'What is the opposite of "{w}"?',
        "Give an antonym for the following word.",
        'The opposite of "{w}" is "{a}".',
    ),
}


def _word_make(rng: random.Random) -> Args:
    op = rng.choice(list(_WORD_TABLES))
    return {"op": op, "word": rng.choice(list(_WORD_TABLES[op])), "form": rng.randrange(2)}


def _word_text(x: Args, answer: str) -> tuple[str, str, str]:
    inline, with_input, say = _WORD_ASK[x["op"]]
    instruction = inline.format(w=x["word"]) if x["form"] == 0 else with_input
    return instruction, x["word"] if x["form"] == 1 else "", say.format(w=x["word"], a=answer)


def _word_corrupt(x: Args, rng: random.Random) -> str:
    if x["op"] == "plural":  # the regular rule applied where it does not hold
        return x["word"] + rng.choice(["s", "es"])
    return rng.choice(list(_WORD_TABLES["antonym"].values()))


_FAMILIES = {
    "arithmetic": _Family(
        _arith_make,
        lambda x: str(_OPS[x["op"]][1](x["a"], x["b"])),
        _arith_text,
        lambda x, rng: str(
            abs(_OPS[x["op"]][1](x["a"], x["b"]) + rng.choice([-10, -2, -1, 1, 2, 10]))
        ),
        3,
    ),
    "unit_conversion": _Family(
        _unit_make, lambda x: _qty(_convert(x), x["to"]), _unit_text, _unit_corrupt, 2
    ),
    "string_edit": _Family(
        _string_make,
        lambda x: _STRINGS[x["op"]][3](x["word"], x["letter"]),
        _string_text,
        _string_corrupt,
        2,
    ),
    "ordering": _Family(
        _order_make,
        lambda x: ", ".join(_order_sorted(x)),
        _order_text,
        lambda x, rng: ", ".join(_swap_adjacent(_order_sorted(x), rng)),
        2,
    ),
    "lookup": _Family(
        _lookup_make,
        lambda x: _TABLES[x["table"]][2][x["key"]],
        _lookup_text,
        lambda x, rng: _TABLES[x["table"]][2][
            rng.choice(x["rows"] or list(_TABLES[x["table"]][2]))
        ],
        1,
    ),
    "word": _Family(
        _word_make, lambda x: _WORD_TABLES[x["op"]][x["word"]], _word_text, _word_corrupt, 1
    ),
}
_MAX_TRIES = 10_000  # consecutive prompt collisions before a pool counts as too large


def defect_counts(n_clean: int, defect_rates: dict[str, float] | None = None) -> dict[str, int]:
    """Rows planted per defect kind: `int(round(rate * n_clean))`, Python's round (halves go
    to the even neighbour: 2.5 -> 2). `defect_rates` is the full specification: kinds it leaves out get no rows; None
    means `DEFAULT_DEFECT_RATES`."""
    rates = DEFAULT_DEFECT_RATES if defect_rates is None else defect_rates
    for kind, rate in rates.items():
        if kind not in DEFECT_KINDS:
            close = difflib.get_close_matches(kind, DEFECT_KINDS, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown defect kind {kind!r}{hint}; expected one of {', '.join(DEFECT_KINDS)}"
            )
        if not rate >= 0:
            raise ValueError(
                f"defect rate for {kind!r} is {rate!r}; expected a fraction of n_clean >= 0"
            )
    return {kind: round(rates.get(kind, 0.0) * n_clean) for kind in DEFECT_KINDS}


def _fresh(rng: random.Random, seen: set[tuple[str, str]]) -> dict[str, Any]:
    names = list(_FAMILIES)
    weights = [_FAMILIES[n].weight for n in names]
    for _ in range(_MAX_TRIES):
        task = rng.choices(names, weights)[0]
        family = _FAMILIES[task]
        args = family.make(rng)
        answer = family.solve(args)
        instruction, input_, output = family.text(args, answer)
        if (instruction, input_) not in seen:
            seen.add((instruction, input_))
            return {
                "instruction": instruction,
                "input": input_,
                "output": output,
                "meta": {"task": task, "defect": None, "answer": answer, "args": args},
            }
    raise ValueError(
        f"could not find a new distinct prompt after {len(seen)} rows; ask for fewer rows"
    )


def _plant(kind: str, row: dict[str, Any], clean: list[dict[str, Any]], rng: random.Random) -> None:
    family, args = _FAMILIES[row["meta"]["task"]], row["meta"]["args"]
    row["meta"]["defect"] = kind
    if kind == "wrong_answer":
        while (wrong := family.corrupt(args, rng)) == row["meta"]["answer"]:
            pass
        row["output"] = family.text(args, wrong)[2]
    elif kind == "truncated_answer":
        cut = row["output"][
            : rng.randint(len(row["output"]) // 4, len(row["output"]) // 2)
        ]  # in the first half
        row["output"] = cut.rstrip(" .,:;!?\"'") or row["output"][0]
    elif kind == "empty_answer":
        row["output"] = ""
    else:  # the answer of another clean row; a small sample spares a scan of the pool per row
        donors = [
            c["output"]
            for c in rng.sample(clean, min(len(clean), 4))
            if c["output"] != row["output"]
        ]
        if not donors:
            raise ValueError(
                f"found no other answer to put under {row['instruction']!r}; ask for more clean rows"
            )
        row["output"] = donors[0]


def generate_pool(
    n_clean: int = 300, seed: int = 42, defect_rates: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Alpaca records: `n_clean` correct rows plus `defect_counts(n_clean, defect_rates)`
    defective ones, shuffled; the same seed gives the same pool. A duplicate's
    `meta["duplicate_of"]` is the index of its original in the returned list. Past a few
    thousand rows the mix leans towards arithmetic and ordering, as the small fixed tables run
    out of distinct prompts."""
    if n_clean < 1:
        raise ValueError(f"n_clean is {n_clean}; expected at least 1 clean row")
    counts = defect_counts(n_clean, defect_rates)
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    clean = [_fresh(rng, seen) for _ in range(n_clean)]
    rows = list(clean)
    for kind in DEFECT_KINDS[:-1]:
        for _ in range(counts[kind]):
            row = _fresh(rng, seen)
            _plant(kind, row, clean, rng)
            rows.append(row)
    k = counts["duplicate"]
    for i in rng.sample(range(n_clean), k) if k <= n_clean else rng.choices(range(n_clean), k=k):
        twin = copy.deepcopy(clean[i])
        twin["meta"].update(defect="duplicate", duplicate_of=i)
        rows.append(twin)
    order = list(range(len(rows)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    pool = [rows[i] for i in order]
    for row in pool:
        if row["meta"]["defect"] == "duplicate":
            row["meta"]["duplicate_of"] = position[row["meta"]["duplicate_of"]]
    return pool


def write_pool(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Write records as UTF-8 JSONL; the file appears complete or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def expected_output(record: dict[str, Any]) -> str | None:
    """The correct output for a record's prompt, rebuilt from `meta`; None when the record
    carries no task arguments we know, or they do not rebuild its instruction and input."""
    meta = record.get("meta")
    family = _FAMILIES.get(meta.get("task")) if isinstance(meta, dict) else None
    if family is None or not isinstance(meta.get("args"), dict):
        return None
    instruction, input_, output = family.text(meta["args"], family.solve(meta["args"]))
    if (instruction, input_) != (record.get("instruction"), record.get("input", "")):
        return None
    return output


def verify_record(record: dict[str, Any]) -> bool | None:
    """Whether the output is the correct answer to the record's prompt; None when it cannot
    be re-checked (see `expected_output`)."""
    expected = expected_output(record)
    return None if expected is None else record.get("output") == expected


def defect_audit(
    selected_records: list[dict[str, Any]], pool_records: list[dict[str, Any]]
) -> dict[str, Any]:
    """Defects in the pool and in a selection from it. Records without meta count as clean.
    Returns `{"pool": side, "selected": side, "ratio": selected rate / pool rate or None}`,
    each side `{"rows", "defective", "rate" (None for no rows), "counts": {kind: n}}`."""
    sides = {}
    for name, records in (("pool", pool_records), ("selected", selected_records)):
        kinds = [
            r["meta"].get("defect") if isinstance(r.get("meta"), dict) else None for r in records
        ]
        counts = {kind: kinds.count(kind) for kind in DEFECT_KINDS}
        counts |= {
            kind: kinds.count(kind)
            for kind in sorted({k for k in kinds if k is not None and k not in counts})
        }
        defective = sum(k is not None for k in kinds)
        sides[name] = {
            "rows": len(records),
            "defective": defective,
            "rate": defective / len(records) if records else None,
            "counts": counts,
        }
    pool_rate, selected_rate = sides["pool"]["rate"], sides["selected"]["rate"]
    ratio = selected_rate / pool_rate if pool_rate and selected_rate is not None else None
    return {**sides, "ratio": ratio}


def format_defect_audit(audit: dict[str, Any]) -> str:
    """A small aligned table for the run summary: one row per defect kind, then the rates."""
    kinds = list(dict.fromkeys([*audit["pool"]["counts"], *audit["selected"]["counts"]]))
    table = [
        ("defect", "pool", "selected"),
        *(
            (k, str(audit["pool"]["counts"].get(k, 0)), str(audit["selected"]["counts"].get(k, 0)))
            for k in kinds
        ),
    ]
    table.append(("any", str(audit["pool"]["defective"]), str(audit["selected"]["defective"])))
    width = max(len(row[0]) for row in table)
    lines = [f"{a:<{width}}  {b:>6}  {c:>8}" for a, b, c in table]
    pool, selected = (
        ("-" if r is None else f"{r:.1%}")
        for r in (audit["pool"]["rate"], audit["selected"]["rate"])
    )
    ratio = "-" if audit["ratio"] is None else f"{audit['ratio']:.2f}x"
    lines.append(f"defect rate: pool {pool}, selected {selected} ({ratio} the pool rate)")
    return "\n".join(lines)


def format_comparison(audits: dict[str, dict[str, Any]], first: str) -> str:
    """One table of several methods' selections from one pool (each value a `defect_audit`, all
    against the same pool): selected rows, defects per kind, the rate and its ratio to the pool
    rate; then one line that says only what these numbers show. A rate differs from the pool's
    by more than one standard error of a random draw of that many rows (sqrt(p (1 - p) / k))
    before it is called below or above the pool; `first` is the method whose defect kinds are
    named."""
    pool = next(iter(audits.values()))["pool"]
    kinds = [k for k, n in pool["counts"].items() if n]
    short = {k: k.removesuffix("_answer") for k in kinds}
    width = max(len(name) for name in [*audits, "pool"])
    head = f"{'':<{width}}  {'rows':>5}  {'defects':>7}  {'rate':>6}  {'x pool':>6}  " + "  ".join(
        f"{short[k]:>9}" for k in kinds
    )

    def row(name: str, side: dict[str, Any]) -> str:
        rate = side["rate"]
        ratio = "-" if rate is None or not pool["rate"] else f"{rate / pool['rate']:.2f}"
        return (
            f"{name:<{width}}  {side['rows']:>5}  {side['defective']:>7}  "
            f"{'-' if rate is None else f'{rate:.1%}':>6}  {ratio:>6}  "
            + "  ".join(f"{side['counts'].get(k, 0):>9}" for k in kinds)
        )

    lines = [head, row("pool", pool), *(row(name, a["selected"]) for name, a in audits.items())]
    return "\n".join([*lines, "reading: " + _reading(audits, first, pool, kinds)])


def _reading(
    audits: dict[str, dict[str, Any]], first: str, pool: dict[str, Any], kinds: list[str]
) -> str:
    p = pool["rate"] or 0.0
    rated = {n: a["selected"] for n, a in audits.items() if a["selected"]["rate"] is not None}
    if not rated or not p:
        return "no defects in the pool, or nothing selected: nothing to compare"
    k = round(sum(s["rows"] for s in rated.values()) / len(rated))
    se = (p * (1 - p) / k) ** 0.5 if k else 0.0
    below = [n for n, s in rated.items() if s["rate"] < p - se]
    above = [n for n, s in rated.items() if s["rate"] > p + se]
    lo, hi = min(rated, key=lambda n: rated[n]["rate"]), max(rated, key=lambda n: rated[n]["rate"])
    text = (
        f"at {k} rows a random draw from this pool lands within ±{se:.1%} of its {p:.1%} "
        f"(one standard error); below that: {', '.join(below) or 'none'}; above: "
        f"{', '.join(above) or 'none'}; lowest {lo} {rated[lo]['rate']:.1%}, highest {hi} "
        f"{rated[hi]['rate']:.1%}"
    )
    s = rated.get(first)
    if s and s["defective"]:
        # the kind most over-represented in `first`'s selection relative to the pool's share
        share = {
            kind: (s["counts"].get(kind, 0) / s["rows"]) / (pool["counts"][kind] / pool["rows"])
            for kind in kinds
        }
        top = max(kinds, key=lambda kind: (share[kind], s["counts"].get(kind, 0)))
        text += (
            f"; {first}'s selection holds {s['counts'].get(top, 0)} {top} rows of its "
            f"{s['defective']} defects, {share[top]:.1f}x that kind's share of the pool"
        )
    return text
