"""Trim-then-rank (InstructDiff §3.3-3.4): exact tails, ascending order, token budgets."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.selectors.trim import lowest_within_budget, trim_both_ends

IDS = [f"r{i:02d}" for i in range(20)]


@pytest.mark.parametrize("gamma,n", [(0.1, 20), (0.1, 19), (0.25, 20), (0.05, 20), (0.0, 20)])
def test_trim_removes_exactly_int_gamma_n_from_each_end(gamma, n):
    rng = np.random.default_rng(0)
    values = rng.normal(size=n)
    kept = trim_both_ends(IDS[:n], values, gamma)
    cut = int(gamma * n)
    order = np.argsort(values)
    assert kept.sum() == n - 2 * cut
    assert not kept[order[:cut]].any() and not kept[order[n - cut :]].any()
    assert kept[order[cut : n - cut]].all()


def test_trim_counts_only_eligible_rows_and_never_keeps_nan():
    values = np.array([5.0, np.nan, 1.0, 2.0, 3.0, 4.0, 0.0, 9.0, 7.0, 8.0, 6.0, np.inf])
    keep = np.ones(12, dtype=bool)
    keep[10] = False  # 6.0 is excluded: N = 9 finite kept rows, int(0.25 * 9) = 2 per end
    kept = trim_both_ends(IDS[:12], values, 0.25, keep=keep)
    assert sorted(values[kept].tolist()) == [2.0, 3.0, 4.0, 5.0, 7.0]


def test_trim_keeps_everything_when_both_tails_would_cover_the_pool():
    # int(0.4 * 2) = 0 and for 3 rows int(0.4*3)=1, 2*1 < 3: the middle one stays
    assert trim_both_ends(IDS[:3], np.array([3.0, 1.0, 2.0]), 0.4).tolist() == [False, False, True]
    assert trim_both_ends(IDS[:2], np.array([3.0, 1.0]), 0.49).all()


def test_trim_ties_break_by_id():
    kept = trim_both_ends(["b", "a", "c", "d"], np.array([1.0, 1.0, 1.0, 1.0]), 0.25)
    assert kept.tolist() == [True, False, True, False]  # a is first, d is last


def test_lowest_selection_ascends_and_is_exact():
    values = np.array([0.3, -0.2, 0.1, np.nan, -0.5, 0.0])
    sel = lowest_within_budget(IDS[:6], values, 3)
    assert sel.ids == ("r04", "r01", "r05") and sel.note == ""
    picked = [values[IDS.index(i)] for i in sel.ids]
    assert picked == sorted(picked)
    short = lowest_within_budget(IDS[:6], values, 9)
    assert len(short.ids) == 5 and "only 5 of 6" in short.note


def test_token_budget_adds_rows_until_the_sum_reaches_it():
    values = np.array([0.1, 0.2, 0.3, 0.4])
    tokens = np.array([5, 4, 3, 10])
    assert lowest_within_budget(IDS[:4], values, 9, unit="tokens", tokens=tokens).ids == (
        "r00",
        "r01",
    )
    assert lowest_within_budget(IDS[:4], values, 10, unit="tokens", tokens=tokens).ids == (
        "r00",
        "r01",
        "r02",
    )
    over = lowest_within_budget(IDS[:4], values, 100, unit="tokens", tokens=tokens)
    assert len(over.ids) == 4 and "hold 22 response tokens" in over.note


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"gamma=0.5"):
        trim_both_ends(IDS[:3], np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="one token count per id"):
        lowest_within_budget(IDS[:3], np.zeros(3), 2, unit="tokens")
