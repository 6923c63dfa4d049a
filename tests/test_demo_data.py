"""The demo pool: deterministic, correct where clean, defective exactly where planted."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from thresher.demo_data import (
    DEFAULT_DEFECT_RATES,
    DEFECT_KINDS,
    defect_audit,
    defect_counts,
    expected_output,
    format_comparison,
    format_defect_audit,
    generate_pool,
    verify_record,
    write_pool,
)

TEXT_FIELDS = ("instruction", "input", "output")


@pytest.fixture(scope="module")
def pool() -> list[dict]:
    return generate_pool()


def _by_defect(pool: list[dict], kind: str | None) -> list[dict]:
    return [r for r in pool if r["meta"]["defect"] == kind]


def test_same_seed_same_pool_other_seed_other_pool(pool: list[dict]) -> None:
    assert generate_pool(seed=42) == pool
    assert generate_pool(seed=43) != pool


def test_defect_counts_for_the_defaults(pool: list[dict]) -> None:
    # rule: int(round(rate * n_clean)); with 300 clean rows every default lands on an integer
    expected = {
        "wrong_answer": 24,
        "truncated_answer": 15,
        "empty_answer": 6,
        "mismatched_answer": 15,
        "duplicate": 15,
    }
    assert defect_counts(300) == expected
    counts = Counter(r["meta"]["defect"] for r in pool)
    assert counts.pop(None) == 300
    assert counts == expected
    assert len(pool) == 300 + 75


def test_defect_counts_round_and_validate() -> None:
    assert defect_counts(10, {"wrong_answer": 0.26, "duplicate": 0.14}) == {
        "wrong_answer": 3,
        "truncated_answer": 0,
        "empty_answer": 0,
        "mismatched_answer": 0,
        "duplicate": 1,
    }
    assert Counter(r["meta"]["defect"] for r in generate_pool(20, defect_rates={})) == {None: 20}
    with pytest.raises(ValueError, match="did you mean 'duplicate'"):
        defect_counts(10, {"duplicates": 0.1})
    with pytest.raises(ValueError, match="expected a fraction"):
        defect_counts(10, {"wrong_answer": -0.1})


def test_records_are_alpaca_rows_with_and_without_input(pool: list[dict]) -> None:
    for r in pool:
        assert set(r) == {"instruction", "input", "output", "meta"}
        assert all(isinstance(r[f], str) for f in TEXT_FIELDS)
        assert r["instruction"]
    clean = _by_defect(pool, None)
    assert {r["meta"]["task"] for r in clean} == {
        "arithmetic",
        "unit_conversion",
        "string_edit",
        "ordering",
        "lookup",
        "word",
    }
    with_input = sum(bool(r["input"]) for r in clean)
    assert 0.2 * len(clean) < with_input < 0.8 * len(clean)
    assert any("\n" in r["input"] for r in clean)  # lookups with their table in `input`


def test_every_clean_row_verifies(pool: list[dict]) -> None:
    for r in _by_defect(pool, None):
        assert verify_record(r) is True, r
        assert r["meta"]["answer"] in r["output"]
        assert r["output"].endswith((".", "?")) and len(r["output"]) < 120


def test_known_answers() -> None:
    row = {
        "instruction": "What is 17 + 25?",
        "input": "",
        "output": "17 + 25 = 42.",
        "meta": {"task": "arithmetic", "args": {"op": "+", "a": 17, "b": 25, "form": 0}},
    }
    assert verify_record(row) is True
    assert verify_record({**row, "output": "17 + 25 = 43."}) is False
    assert (
        verify_record({**row, "instruction": "What is 17 + 26?"}) is None
    )  # meta does not describe the prompt
    assert verify_record({"instruction": "Hi", "input": "", "output": "Hello."}) is None
    temp = {
        "instruction": "Convert 25 °C to °F.",
        "input": "",
        "output": "25 °C is 77 °F.",
        "meta": {
            "task": "unit_conversion",
            "args": {"from": "C", "to": "F", "value": "25", "form": 0},
        },
    }
    assert verify_record(temp) is True
    km = {
        "instruction": "What is 2750 meters in kilometers?",
        "input": "",
        "output": "2750 meters is 2.75 kilometers.",
        "meta": {
            "task": "unit_conversion",
            "args": {"from": "m", "to": "km", "value": "2750", "form": 1},
        },
    }
    assert verify_record(km) is True


def test_wrong_and_mismatched_rows_do_not_verify(pool: list[dict]) -> None:
    clean_outputs = {r["output"] for r in _by_defect(pool, None)}
    for r in _by_defect(pool, "wrong_answer"):
        assert verify_record(r) is False, r
        assert r["output"] and r["output"].endswith(".")  # a whole, natural sentence
    for r in _by_defect(pool, "mismatched_answer"):
        assert verify_record(r) is False, r
        assert r["output"] in clean_outputs  # the correct answer of another instruction


def test_truncated_answers_are_strict_prefixes(pool: list[dict]) -> None:
    for r in _by_defect(pool, "truncated_answer"):
        full = expected_output(r)
        assert (
            full is not None
            and full.startswith(r["output"])
            and 0 < len(r["output"]) <= len(full) // 2
        )
        assert r["output"][-1] not in ".,:;!?\"' "


def test_empty_answers(pool: list[dict]) -> None:
    assert all(
        r["output"] == "" and verify_record(r) is False for r in _by_defect(pool, "empty_answer")
    )


def test_duplicates_copy_the_row_they_name(pool: list[dict]) -> None:
    for r in _by_defect(pool, "duplicate"):
        original = pool[r["meta"]["duplicate_of"]]
        assert original is not r and original["meta"]["defect"] is None
        assert all(r[f] == original[f] for f in TEXT_FIELDS)
        assert verify_record(r) is True
    prompts = Counter(
        (r["instruction"], r["input"]) for r in pool if r["meta"]["defect"] != "duplicate"
    )
    assert max(prompts.values()) == 1  # no repeats besides the planted ones


def test_no_defect_marker_in_text(pool: list[dict]) -> None:
    markers = ("defect", *DEFECT_KINDS, *DEFAULT_DEFECT_RATES)
    for r in pool:
        text = " ".join(r[f] for f in TEXT_FIELDS).lower()
        assert not any(m in text for m in markers), r


def test_write_pool_round_trip(tmp_path, pool: list[dict]) -> None:
    path = tmp_path / "pool.jsonl"
    write_pool(path, pool)
    lines = path.read_text(encoding="utf-8").splitlines()
    back = [json.loads(line) for line in lines]
    assert back == pool
    assert "°" in path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    assert all(verify_record(r) for r in back if r["meta"]["defect"] is None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def test_audit_arithmetic_on_a_hand_built_case() -> None:
    def row(defect: str | None) -> dict:
        return {"instruction": "x", "input": "", "output": "y", "meta": {"defect": defect}}

    pool = [
        row("wrong_answer"),
        row("wrong_answer"),
        row("empty_answer"),
        {"instruction": "x", "input": "", "output": "y"},
        *(row(None) for _ in range(6)),
    ]
    selected = [pool[0], pool[3], pool[4], pool[5]]
    audit = defect_audit(selected, pool)
    assert audit["pool"] == {
        "rows": 10,
        "defective": 3,
        "rate": 0.3,
        "counts": {
            "wrong_answer": 2,
            "truncated_answer": 0,
            "empty_answer": 1,
            "mismatched_answer": 0,
            "duplicate": 0,
        },
    }
    assert audit["selected"]["counts"]["wrong_answer"] == 1 and audit["selected"]["defective"] == 1
    assert audit["selected"]["rate"] == 0.25
    assert audit["ratio"] == pytest.approx(0.25 / 0.3)
    text = format_defect_audit(audit)
    assert text.splitlines()[0].split() == ["defect", "pool", "selected"]
    assert text.splitlines()[1].split() == ["wrong_answer", "2", "1"]
    assert "pool 30.0%, selected 25.0% (0.83x the pool rate)" in text

    clean = defect_audit([], [row(None)])
    assert (
        clean["pool"]["rate"] == 0.0
        and clean["selected"]["rate"] is None
        and clean["ratio"] is None
    )
    assert "(- the pool rate)" in format_defect_audit(clean)


def test_the_comparison_says_only_what_the_numbers_show() -> None:
    """Pool 100 rows, 20 defective (10 wrong, 10 duplicates); at 10 rows one standard error is
    sqrt(0.2 * 0.8 / 10) = 12.6 points: 0 of 10 is below the pool, 6 of 10 above, 2 of 10 neither."""

    def row(defect: str | None) -> dict:
        return {"instruction": "x", "input": "", "output": "y", "meta": {"defect": defect}}

    pool = [row("wrong_answer")] * 10 + [row("duplicate")] * 10 + [row(None)] * 80
    audits = {
        "b": defect_audit(pool[:6] + pool[20:24], pool),
        "a": defect_audit(pool[20:30], pool),
        "c": defect_audit(pool[10:12] + pool[20:28], pool),
    }
    lines = format_comparison(audits, "b").splitlines()
    assert lines[0].split() == ["rows", "defects", "rate", "x", "pool", "wrong", "duplicate"]
    assert lines[1].split() == ["pool", "100", "20", "20.0%", "1.00", "10", "10"]
    assert lines[2].split() == ["b", "10", "6", "60.0%", "3.00", "6", "0"]
    assert lines[3].split() == ["a", "10", "0", "0.0%", "0.00", "0", "0"]
    assert lines[5] == (
        "reading: at 10 rows a random draw from this pool lands within ±12.6% of its 20.0% (one "
        "standard error); below that: a; above: b; lowest a 0.0%, highest b 60.0%; b's selection "
        "holds 6 wrong_answer rows of its 6 defects, 6.0x that kind's share of the pool"
    )
