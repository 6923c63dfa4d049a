"""Selectors and budgets on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.selectors.base import Selection, budget_count
from thresher.selectors.random import random_k
from thresher.selectors.topk import middle_k, top_k

# --- budget_count ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "n", "expected"),
    [
        (0.1, 52002, 5200),  # 5200.2 floored (Superfiltering: int(52002 * rate))
        (0.05, 52002, 2600),  # 2600.1
        (0.01, 52002, 520),  # 520.02
        (0.15, 52002, 7800),  # 7800.3
        (0.1, 63655, 6365),  # WizardLM: 6365.5 floored, not rounded
        (0.29, 100, 28),  # the reference's float floor: 0.29 * 100 = 28.999999999999996
        (1.0, 7, 7),  # the float 1.0 is every row
        (1, 7, 1),  # the int 1 is one row
        (500, 10, 500),  # a count is not capped here; the selector's note says why fewer
        (np.int64(3), 10, 3),
        (np.float64(0.5), 10, 5),
    ],
)
def test_budget_count(budget: float | int, n: int, expected: int) -> None:
    assert budget_count(budget, n) == expected


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (0, "budget=0 rows"),
        (-3, "budget=-3 rows"),
        (0.0, "budget=0.0 is a float outside"),
        (-0.1, "budget=-0.1 is a float outside"),
        (1.5, "budget=1.5 is a float outside"),
        (5.0, "pass the int 5"),
        (float("nan"), "budget=nan"),
        (True, "budget=True is a bool"),
        (False, "budget=False is a bool"),
        ("0.1", r"budget='0.1' \(str\)"),
    ],
)
def test_budget_count_rejects(budget: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        budget_count(budget, 100)  # type: ignore[arg-type]


# --- top_k ----------------------------------------------------------------------------------

IDS = ["a", "b", "c", "d", "e", "f"]
SCORES = np.array([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])


def test_top_k_exact_budget_in_rank_order() -> None:
    # descending: b .9, e .7, d .5, a .3, f .2, c .1
    assert top_k(IDS, SCORES, 3) == Selection(("b", "e", "d"), 3, 6, "")
    assert top_k(IDS, SCORES, 2, descending=False).ids == ("c", "f")
    assert top_k(IDS, SCORES, 0) == Selection((), 0, 6, "")


def test_top_k_ties_break_by_id_ascending_in_both_directions() -> None:
    ids, scores = ["d", "b", "c", "a"], [1.0, 1.0, 2.0, 1.0]
    assert top_k(ids, scores, 3).ids == ("c", "a", "b")
    assert top_k(ids, scores, 3, descending=False).ids == ("a", "b", "d")
    # string order, not numeric: "10" < "9"
    assert top_k(["9", "10"], [0.0, 0.0], 1).ids == ("10",)
    assert top_k(["9", "10"], [0.0, 0.0], 1, descending=False).ids == ("10",)


def test_top_k_never_selects_nan_inf_or_none_even_when_short() -> None:
    scores = [np.nan, np.inf, -np.inf, None, 1.0, 2.0]
    for descending in (True, False):
        sel = top_k(IDS, scores, 5, descending=descending)
        assert set(sel.ids) == {"e", "f"}
        assert (sel.requested, sel.eligible) == (5, 2)
        assert sel.note == (
            "only 2 of 6 rows are eligible (score finite and kept by the filter); asked for 5"
        )


def test_top_k_respects_keep() -> None:
    keep = np.array([True, False, True, True, False, True])  # drops b .9 and e .7
    sel = top_k(IDS, SCORES, 2, keep=keep)
    assert sel == Selection(("d", "a"), 2, 4, "")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ids=["a", "a"], scores=[1.0, 2.0], budget=1), r"unique.*'a'"),
        (dict(ids=["a", "b"], scores=[1.0], budget=1), "one score per id"),
        (dict(ids=["a"], scores=[1.0], budget=0.5), "budget_count"),
        (dict(ids=["a"], scores=[1.0], budget=-1), "int >= 0"),
        (dict(ids=["a"], scores=[1.0], budget=1, keep=np.array([1])), "bool mask"),
    ],
)
def test_top_k_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        top_k(**kwargs)


# --- middle_k -------------------------------------------------------------------------------


def test_middle_k_hand_case() -> None:
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    scores = [5.0, 3.0, 1.0, 7.0, 2.0, 6.0, 4.0]
    # ascending: c1 e2 b3 g4 a5 f6 d7;  budget 3 -> start (7 - 3) // 2 = 2 -> b g a
    assert middle_k(ids, scores, 3) == Selection(("b", "g", "a"), 3, 7, "")
    # budget 2 -> start (7 - 2) // 2 = 2 -> b g
    assert middle_k(ids, scores, 2).ids == ("b", "g")
    # drop d (7) and c (1) with NaN / keep: e2 b3 g4 a5 f6;  budget 3 -> start 1 -> b g a
    scores[3] = np.nan
    keep = np.array([True, True, False, True, True, True, True])
    assert middle_k(ids, scores, 3, keep=keep) == Selection(("b", "g", "a"), 3, 5, "")


def test_middle_k_ties_by_id_and_short_budget() -> None:
    # all tied: sorted by id a b c d;  budget 2 -> start 1 -> b c
    assert middle_k(["d", "c", "b", "a"], [1.0] * 4, 2).ids == ("b", "c")
    sel = middle_k(["a", "b", "c"], [1.0, None, 2.0], 5)
    assert sel.ids == ("a", "c")
    assert sel.note.startswith("only 2 of 3 rows are eligible")


# --- random_k -------------------------------------------------------------------------------

MANY = [f"id{i:03d}" for i in range(200)]


def test_random_k_exact_reproducible_and_seed_dependent() -> None:
    sel = random_k(MANY, 20)
    assert len(sel.ids) == 20 and len(set(sel.ids)) == 20 and sel.note == ""
    assert set(sel.ids) <= set(MANY)
    assert random_k(MANY, 20, seed=42) == sel  # 42 is the default
    assert set(random_k(MANY, 20, seed=7).ids) != set(sel.ids)


def test_random_k_invariant_to_input_order() -> None:
    shuffled = list(np.random.default_rng(0).permutation(MANY))
    assert shuffled != MANY
    assert random_k(shuffled, 20, seed=3) == random_k(MANY, 20, seed=3)


def test_random_k_smaller_budget_is_a_prefix() -> None:
    assert random_k(MANY, 5).ids == random_k(MANY, 20).ids[:5]


def test_random_k_respects_keep_and_explains_shortfall() -> None:
    keep = np.zeros(len(MANY), dtype=bool)
    keep[:3] = True
    sel = random_k(MANY, 10, keep=keep)
    assert sorted(sel.ids) == MANY[:3]
    assert (sel.requested, sel.eligible) == (10, 3)
    assert sel.note == "only 3 of 200 rows are eligible (kept by the filter); asked for 10"
