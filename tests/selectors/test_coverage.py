"""Coverage selectors: exact budgets, no duplicates, monotone coverage, InsTag's first pass."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.selectors.coverage import complexity_first, greedy_max_coverage, select_coverage

T = lambda *t: np.array(t, dtype=np.int64)  # noqa: E731
# sorted by |T| desc, ties by id: a(4) b(3) c(3) d(2) e(2) f(1) g(0)
IDS = ["a", "b", "c", "d", "e", "f", "g"]
TAGS = [T(0, 1, 2, 3), T(0, 1, 4), T(0, 1, 2), T(5, 6), T(2, 3), T(7), T()]
ONES = np.ones(8)


def random_case(seed: int, n: int = 60, universe: int = 40):
    rng = np.random.default_rng(seed)
    tags = [np.unique(rng.integers(0, universe, size=rng.integers(0, 8))) for _ in range(n)]
    return [f"s{i:03d}" for i in range(n)], tags, rng.uniform(0, 2, size=universe)


def test_complexity_first_by_hand():
    sel = select_coverage(IDS, TAGS, ONES, 5)
    # pass 1: a (new 0-3), b (adds 4), c adds nothing, d (5,6), e nothing, f (7) -> a b d f;
    # pass 2 from U = {}: c is first unselected with new tags
    assert sel.ids == ("a", "b", "d", "f", "c") and sel.note == ""


def test_greedy_by_hand():
    sel = select_coverage(IDS, TAGS, ONES, 5, strategy="greedy_max_coverage")
    # gains: a 4; then d 2 (b,c,d: b 1, d 2); then b 1 / f 1 tie -> |T| larger: b; then f;
    # then nothing adds: reset U, the best gain is c (3) over e (2)
    assert sel.ids == ("a", "d", "b", "f", "c")


@pytest.mark.parametrize("strategy", ["complexity_first", "greedy_max_coverage"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_budget_no_duplicates_and_keep(strategy, seed):
    ids, tags, w = random_case(seed)
    keep = np.ones(len(ids), dtype=bool)
    keep[::5] = False
    for b in (0, 1, 7, 30, 48):
        sel = select_coverage(ids, tags, w, b, strategy=strategy, keep=keep)
        assert len(sel.ids) == b and len(set(sel.ids)) == b
        assert all(keep[ids.index(i)] for i in sel.ids)
    sel = select_coverage(ids, tags, w, 55, strategy=strategy, keep=keep)
    assert len(sel.ids) == 48 and "only 48" in sel.note


@pytest.mark.parametrize("pick", [complexity_first, greedy_max_coverage])
def test_covered_weight_grows_with_every_pick_and_a_pass_ends_only_when_nothing_adds(pick):
    """Within a pass every pick adds weight (so the covered weight strictly grows); U is reset
    only when no unselected row adds any; greedy picks the largest gain, so its gains never grow
    within a pass. A selector returning the sorted order, coverage ignored, fails here."""
    ids, tags, w = random_case(3)
    order = np.lexsort((np.array(ids), -np.array([len(t) for t in tags])))
    chosen = pick(tags, w, 50, order)
    covered = np.zeros(len(w), dtype=bool)
    taken = np.zeros(len(tags), dtype=bool)
    gain = lambda j: w[tags[j][~covered[tags[j]]]].sum()  # noqa: E731
    gains: list[float] = []
    for i in chosen:
        if gain(i) == 0:  # a reset, which must follow an exhausted pass
            assert max((gain(j) for j in range(len(tags)) if not taken[j]), default=0) == 0
            covered[:] = False
            gains = []
        if pick is greedy_max_coverage:
            assert gain(i) == max(gain(j) for j in range(len(tags)) if not taken[j])
            assert not gains or gain(i) <= gains[-1]
        before = w[covered].sum()
        gains.append(gain(i))
        covered[tags[i]] = True
        taken[i] = True
        assert w[covered].sum() > before or gains[-1] == 0  # zero only in the final fill


def test_first_pass_is_the_sorted_order_restricted_to_samples_adding_coverage():
    ids, tags, w = random_case(4)
    w = np.ones(len(w))
    order = np.lexsort((np.array(ids), -np.array([len(t) for t in tags])))
    expected, covered = [], np.zeros(len(w), dtype=bool)
    for i in order:
        if not covered[tags[i]].all() and len(tags[i]):
            expected.append(int(i))
            covered[tags[i]] = True
    chosen = complexity_first(tags, w, len(ids), order)
    assert chosen[: len(expected)] == expected


def test_complete_coverage_before_the_first_reset():
    ids, tags, w = random_case(5)
    universe = np.zeros(len(w), dtype=bool)
    for t in tags:
        universe[t] = True
    for strategy in ("complexity_first", "greedy_max_coverage"):
        sel = select_coverage(ids, tags, np.ones(len(w)), len(ids), strategy=strategy)
        covered = np.zeros(len(w), dtype=bool)
        for i in sel.ids:
            t = tags[ids.index(i)]
            if len(t) and covered[t].all():  # the first row adding nothing: a reset follows
                break
            covered[t] = True
        assert (covered == universe).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="strategy"):
        select_coverage(IDS, TAGS, ONES, 2, strategy="greedy")
    with pytest.raises(ValueError, match="one tag set per id"):
        select_coverage(IDS, TAGS[:3], ONES, 2)
