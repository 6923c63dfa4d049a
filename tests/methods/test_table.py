"""Declarative filters and table selectors (methods/table.py), on hand-made columns."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.methods import SelectContext, SignalTable
from thresher.methods.table import Below, Finite, Keep, TopK, TrimTails, apply_filters

IDS = ["a", "b", "c", "d", "e", "f", "g"]
IFD = np.array([0.0, 0.5, 1.0, 1.5, np.nan, np.inf, -np.inf])


@pytest.mark.parametrize(
    ("inclusive", "expected"),
    [
        (True, ["ok", "ok", "ok", "filtered:ifd>1"]),  # Cherry keeps IFD == 1
        (False, ["ok", "ok", "filtered:ifd>=1", "filtered:ifd>=1"]),  # Superfiltering drops it
    ],
)
def test_ifd_rules_and_a_nan_is_never_kept_nor_called_filtered(inclusive, expected):
    label = "filtered:ifd>1" if inclusive else "filtered:ifd>=1"
    filters = (Finite(("ifd",)), Below("ifd", 1.0, inclusive, label))
    status = apply_filters(IDS, {"ifd": IFD}, ["ok"] * 7, filters)
    assert status == [*expected, "nan_score", "nan_score", "nan_score"]


def test_filters_touch_only_rows_still_ok_in_their_order():
    cols = {"ifd": np.array([0.5, 2.0, 0.5]), "fits": np.array([True, True, False])}
    filters = (Keep("fits", "filtered:too_long"), Below("ifd", 1.0, True, "filtered:ifd>1"))
    status = apply_filters(["a", "b", "c"], cols, ["empty_response", "ok", "ok"], filters)
    assert status == ["empty_response", "filtered:ifd>1", "filtered:too_long"]


def test_trim_tails_drops_int_gamma_n_of_the_rows_still_ok_from_each_end():
    ids = [f"r{i}" for i in range(10)]
    status = ["ok"] * 9 + ["nan_score"]
    cols = {"d": np.arange(10.0)}
    out = apply_filters(ids, cols, status, (TrimTails("d", 0.2, "filtered:tail"),))
    # N = 9 ok rows, int(0.2 * 9) = 1 from each end: r0 and r8; r9 keeps its own status
    assert [i for i, s in zip(ids, out, strict=True) if s == "filtered:tail"] == ["r0", "r8"]
    assert out[9] == "nan_score"


@pytest.mark.parametrize(("base", "n"), [("rows", 2), ("eligible", 1), ("rows_read", 4)])
def test_topk_budget_base(base, n):
    status = ["ok", "ok", "filtered:x", "filtered:x"]
    t = SignalTable(["a", "b", "c", "d"], {"s": np.array([4.0, 3, 2, 1])}, status, "s")
    sel = TopK("s", base=base)(t, 0.5, SelectContext(rows_read=8))
    assert len(sel.ids) == min(n, 2) and sel.requested == n
