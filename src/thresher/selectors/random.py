"""Random baseline: uniform sampling without replacement, seeded (METHODS §2.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thresher.selectors.base import Selection, check_count, check_ids, keep_mask, shortfall


def random_k(
    ids: Sequence[str],
    budget: int,
    seed: int = 42,  # T-SHIRT and InstructDiff seed every random step with 42 (METHODS §1.6)
    keep: np.ndarray | None = None,
) -> Selection:
    """`budget` eligible ids drawn uniformly without replacement with `default_rng(seed)`.

    The eligible ids are sorted before the draw, so the subset depends on the set of ids and
    the seed, not on the input order. The draw is a prefix of one permutation, so a smaller
    budget with the same seed picks a subset of a larger one.
    """
    ids_arr = check_ids(ids)
    check_count(budget)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r}: expected an int, e.g. 42")
    mask = keep_mask(keep, len(ids_arr))
    pool = sorted(str(ids[int(i)]) for i in np.flatnonzero(mask))
    order = np.random.default_rng(seed).permutation(len(pool))[:budget]
    chosen = tuple(pool[int(i)] for i in order)
    short = shortfall(len(pool), len(ids_arr), budget, "kept by the filter")
    note = "" if len(chosen) == budget else short
    return Selection(chosen, budget, len(pool), note)
