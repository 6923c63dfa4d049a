"""Greedy k-center core set (Sener & Savarese, ICLR 2018, Algorithm 1): hand-checked picks,
exact budgets, eligibility, chunk-size invariance, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.selectors.kcenter import kcenter_greedy

LINE_IDS = [f"p{i:02d}" for i in range(11)]
LINE = np.arange(11, dtype=np.float32)[:, None]  # p00..p10 at 0, 1, ..., 10 on a line


def seed_starting_at(position: int, n: int) -> int:
    """A seed whose first center is `position` of the id-ranked eligible rows (the spec's draw)."""
    return next(s for s in range(1000) if np.random.default_rng(s).integers(n) == position)


def brute_force(x: np.ndarray, ids: list[str], budget: int, seed: int) -> list[str]:
    """Algorithm 1 from its definition, with the full n x n distance matrix."""
    rank = np.argsort(np.array(ids))
    y = x[rank].astype(np.float64)
    dist = np.sqrt(((y[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    chosen = [int(np.random.default_rng(seed).integers(len(y)))]
    while len(chosen) < budget:
        nearest = dist[:, chosen].min(axis=1)
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
    return [ids[rank[p]] for p in chosen]


def test_points_on_a_line_hand_checked():
    seed = seed_starting_at(0, 11)
    sel = kcenter_greedy(LINE_IDS, LINE, 6, seed=seed)
    # from 0: the far end 10; then 5 (5 from both); then the distance-2 points 2, 3, 7, 8 tie
    # and the smallest id wins (2); then 7 and 8 are still 2 away: 7; then every other point is
    # 1 away: the smallest id left, p01
    assert sel.ids == ("p00", "p10", "p05", "p02", "p07", "p01") and sel.note == ""


def test_from_the_middle_the_extremes_come_next():
    seed = seed_starting_at(5, 11)
    # 0 and 10 are both 5 away: the smaller id first, then the other end
    assert kcenter_greedy(LINE_IDS, LINE, 3, seed=seed).ids == ("p05", "p00", "p10")


def test_exact_budget_and_the_definition_on_random_points():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    ids = [f"r{i}" for i in rng.permutation(60)]  # id order is not row order
    sel = kcenter_greedy(ids, x, 17, seed=3)
    assert len(sel.ids) == 17 == len(set(sel.ids)) and sel.requested == 17 and sel.eligible == 60
    assert list(sel.ids) == brute_force(x, ids, 17, 3)


def test_same_picks_for_any_chunk_size():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x[50] = x[10]  # duplicates: equal distances must stay equal whatever the chunk
    x[120] = x[10]
    ids = [f"r{i:03d}" for i in range(200)]
    picks = {c: kcenter_greedy(ids, x, 40, seed=7, chunk=c).ids for c in (1, 7, 64, 1000)}
    assert len(set(picks.values())) == 1
    for metric in ("euclidean", "cosine"):
        runs = {kcenter_greedy(ids, x, 40, seed=7, chunk=c, metric=metric).ids for c in (1, 1000)}
        assert len(runs) == 1


def test_seed_sets_the_start_and_input_order_does_not_matter():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    ids = [f"r{i:02d}" for i in range(30)]
    a = kcenter_greedy(ids, x, 10, seed=11)
    assert a == kcenter_greedy(ids, x, 10, seed=11)
    assert a.ids[0] == ids[int(np.random.default_rng(11).integers(30))]
    other = next(
        s for s in range(100) if np.random.default_rng(s).integers(30) != ids.index(a.ids[0])
    )
    assert kcenter_greedy(ids, x, 10, seed=other).ids[0] != a.ids[0]
    perm = rng.permutation(30)
    assert kcenter_greedy([ids[i] for i in perm], x[perm], 10, seed=11).ids == a.ids


def test_mask_and_non_finite_rows_are_never_picked():
    x = LINE.copy()
    x[3] = np.nan
    keep = np.ones(11, dtype=bool)
    keep[[0, 10]] = False  # the extremes are not eligible: 9 - 1 (NaN) = 8 rows are
    sel = kcenter_greedy(LINE_IDS, x, 8, seed=0, keep=keep)
    assert set(sel.ids) == {f"p{i:02d}" for i in (1, 2, 4, 5, 6, 7, 8, 9)}
    assert sel.eligible == 8 and sel.note == ""
    more = kcenter_greedy(LINE_IDS, x, 20, seed=0, keep=keep)
    assert len(more.ids) == 8 and more.requested == 20
    assert "only 8 of 11 rows are eligible" in more.note and "asked for 20" in more.note


def test_budget_zero_and_duplicates():
    sel = kcenter_greedy(LINE_IDS, LINE, 0, seed=0)
    assert sel.ids == () and sel.note == ""
    same = np.ones((5, 3), dtype=np.float32)  # every distance is 0: after the start, smallest ids
    ids = ["e", "d", "c", "b", "a"]
    seed = seed_starting_at(2, 5)  # "c"
    assert kcenter_greedy(ids, same, 4, seed=seed).ids == ("c", "a", "b", "d")


def test_cosine_is_euclidean_on_normalised_rows():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    scaled = x * rng.uniform(0.1, 10, size=(40, 1)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"r{i:02d}" for i in range(40)]
    cos = kcenter_greedy(ids, scaled, 12, seed=5, metric="cosine")
    assert cos.ids == kcenter_greedy(ids, unit, 12, seed=5).ids
    assert cos.ids != kcenter_greedy(ids, scaled, 12, seed=5).ids  # the norms matter to l2


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"shape \(11, 1\).*one row per id \(n = 10\)"):
        kcenter_greedy(LINE_IDS[:10], LINE, 2)
    with pytest.raises(ValueError, match="chunk=0"):
        kcenter_greedy(LINE_IDS, LINE, 2, chunk=0)
    with pytest.raises(ValueError, match="metric"):
        kcenter_greedy(LINE_IDS, LINE, 2, metric="manhattan")
    with pytest.raises(ValueError, match=r"all zeros, e\.g\. ids \['p00'\]"):
        kcenter_greedy(LINE_IDS, LINE, 2, metric="cosine")
    with pytest.raises(ValueError, match="budget=-1"):
        kcenter_greedy(LINE_IDS, LINE, -1)


def test_kcenter_method_reuses_miwv_embeddings_and_reselects_without_a_model(
    embed_dirs, tmp_path, monkeypatch
):
    """`kcenter` after `miwv` in one folder embeds nothing again, selects exactly b by greedy
    k-center over the same embeddings, and `thresher select` re-selects from scores.parquet."""
    import thresher.embed
    from test_miwv import ROWS, _config
    from thresher.methods.miwv import instruction_text
    from thresher.pipeline import load_run, run, select

    out = tmp_path / "run"
    run(_config(embed_dirs, ROWS, out))  # miwv: embeds the instructions into the run folder
    cached = list((out / "embeddings").glob("*.npy"))
    assert len(cached) == 1

    def refuse(*a, **k):
        raise AssertionError("kcenter embedded again instead of reading miwv's embeddings")

    monkeypatch.setattr(thresher.embed.Embedder, "encode", refuse)
    cfg = _config(embed_dirs, ROWS, out)
    cfg.method.name, cfg.select.count = "kcenter", 3
    result, sel, manifest = run(cfg)
    emb = np.load(cached[0])
    want = kcenter_greedy(result.table.ids, emb, 3, seed=cfg.select.seed)
    assert sel.ids == want.ids and len(sel.ids) == 3 and manifest["passes"] == {}
    assert [instruction_text(s) for s in result.samples]  # the embedded texts are the instructions
    cfg2, reopened = load_run(out, ["select.count=2"])
    assert select(reopened, cfg2).ids == want.ids[:2]  # the greedy order: a prefix of the 3
