"""The report's sample browser: which rows it shows, their rank and "why", their texts read back
from the data, and the size of the page of a 10,000-row run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from htmlcheck import parse_page
from synthetic_run import make_run
from thresher import report_samples as rs
from thresher.report import RunView, read_run, write_report

# the page of a 10,000-row run stays under this (docs/evaluation.md): the browser shows at most
# 180 rows per run with at most FULL_CHARS characters per field, and the map at most 3,000 points
PAGE_BYTES_10K = 1_000_000


def view(values, selected, status=None, manifest=None, rejected=(), ids=None) -> RunView:
    n = len(values)
    ids = ids or [f"s{k:03d}" for k in range(n)]
    sel = np.array(selected, dtype=bool)
    order = [k for k in np.argsort(-np.asarray(values), kind="stable") if sel[k]]
    rank = [None] * n
    for pos, k in enumerate(order):
        rank[k] = pos
    return RunView(
        Path("run"),
        manifest if manifest is not None else {"method": {"name": "ifd", "score": "ifd"}},
        ids,
        status or ["ok"] * n,
        sel,
        {"ifd": np.asarray(values, dtype=float)},
        {},
        list(rejected),
        lines=list(range(1, n + 1)),
        rank=rank,
    )


def test_ranking_follows_the_subset_side_with_ties_by_id():
    run = view([0.5, 0.9, 0.7, 0.9, 0.1, np.nan], [0, 1, 1, 1, 0, 0])
    r = rs.ranking(run)
    assert r.column == "ifd" and r.descending
    assert r.order.tolist() == [1, 3, 2, 0, 4]  # 0.9 (s001, s003), 0.7, 0.5, 0.1; NaN unranked
    assert (r.cut, r.last, r.contiguous) == (0.7, 3, True)
    low = rs.ranking(view([0.5, 0.9, 0.7, 0.2], [1, 0, 0, 1]))  # the lowest values were selected
    assert not low.descending and low.order.tolist() == [3, 0, 2, 1] and low.cut == 0.5
    gap = rs.ranking(view([0.5, 0.9, 0.7, 0.2], [0, 1, 0, 1]))  # not a cut on this column
    assert not gap.contiguous


def test_why_lines_state_value_rank_and_threshold():
    run = view(
        [0.93, 0.85, 0.99, 0.5, 0.84, 1.2], [1, 1, 1, 0, 0, 0], ["ok"] * 5 + ["filtered:ifd>1"]
    )
    shown, notes = rs.choose(run, rs.ranking(run))
    why = {run.ids[s.row]: (s.group, s.why) for s in shown}
    assert why["s000"] == ("selected", "ifd 0.93: rank 2 of 5 eligible, threshold 0.85")
    assert why["s004"] == (
        "below the cut",
        "ifd 0.84: rank 4 of 5 eligible, 1 below the threshold 0.85",
    )
    assert why["s003"] == (
        "below the cut",
        "ifd 0.5: rank 5 of 5 eligible, 2 below the threshold 0.85",
    )
    assert why["s005"] == (
        "filtered",
        "filtered:ifd>1: scored, then excluded by ifd's filter (ifd 1.2)",
    )
    assert notes == []
    gap = view([0.5, 0.9, 0.7, 0.2], [0, 1, 0, 1])
    shown, _ = rs.choose(gap, rs.ranking(gap))
    # the subset's median (0.55) is below the rest's (0.6): ranked lowest first
    assert shown[0].why == (
        "ifd 0.2: rank 1 of 4 eligible, selected; ifd does not cut at one ifd value "
        "(selected ranks 1 to 4)"
    )


def test_a_large_run_shows_bounded_slices_and_says_what_it_left_out():
    n = 400
    values = np.linspace(1.0, 0.0, n)  # s000 is the best
    status = [
        "filtered:a" if k % 10 == 5 else "filtered:b" if k % 50 == 7 else "ok" for k in range(n)
    ]
    eligible = [k for k in range(n) if status[k] == "ok"]
    selected = np.zeros(n, bool)
    selected[eligible[:150]] = True
    rejected = [{"line": 1000 + k, "reason": "empty_response" if k < 50 else "bad_utf8", "id": None,
                 "record": {"k": k}} for k in range(53)]  # fmt: skip
    run = view(values, selected, status, rejected=rejected)
    shown, notes = rs.choose(run, rs.ranking(run))
    groups = {g: [s for s in shown if s.group == g] for g in dict.fromkeys(s.group for s in shown)}
    assert list(groups) == ["selected", "below the cut", "lowest ranked", "filtered", "rejected"]
    top = [s.row for s in groups["selected"]]
    assert len(top) == 60 and top[:20] == eligible[:20] and top[-20:] == eligible[130:150]
    assert all(eligible[20] <= r < eligible[130] for r in top[20:40]) and len(set(top)) == 60
    assert [s.row for s in groups["below the cut"]] == eligible[150:170]
    assert [s.row for s in groups["lowest ranked"]] == eligible[-20:]
    filtered = [run.status[s.row] for s in groups["filtered"]]
    assert len(filtered) == 40 and filtered.count("filtered:b") == 8  # every rule has examples
    reasons = [s.status for s in groups["rejected"]]
    assert (
        len(reasons) == 40 and reasons.count("bad_utf8") == 3 and groups["rejected"][0].line == 1000
    )
    assert any("60 of the 150 selected rows" in x for x in notes)
    assert any("40 of the 53 rejected rows" in x for x in notes)


def test_no_score_column_keeps_the_selectors_order_and_old_manifests_find_the_column():
    run = view([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0], manifest={"method": {"name": "random"}})
    run.signals = {}
    run.rank = [1, None, 0, None]
    shown, _ = rs.choose(run, rs.ranking(run))
    assert [(s.row, s.group) for s in shown[:2]] == [(2, "selected"), (0, "selected")]
    assert shown[0].why == "selected as #1 of 2 by random, which ranks by no single column"
    assert {s.group for s in shown[2:]} == {"not selected"}
    old = view([0.5, 0.9, 0.7, 0.2], [0, 1, 1, 0], manifest={"method": {"name": "ifd"}})
    assert rs.ranking(old).column == "ifd"  # the column that separates the subset


def test_a_score_of_none_means_no_ranking_and_an_unscored_subset_is_said_so():
    run = view(
        [0.5, 0.9, 0.7, 0.2], [0, 1, 1, 0], manifest={"method": {"name": "random", "score": None}}
    )
    assert rs.ranking(run).column is None  # no guess from a column that happens to separate
    scored_only = view([0.5, 0.9, 0.7], [0, 0, 0])
    shown, _ = rs.choose(scored_only, rs.ranking(scored_only))
    assert [(s.row, s.group) for s in shown] == [
        (1, "top ranked"),
        (2, "top ranked"),
        (0, "top ranked"),
    ]
    assert shown[0].why == "ifd 0.9: rank 1 of 3 eligible; nothing is selected yet"
    html, _ = rs.browser_html(1, scored_only)
    assert "nothing is selected yet to tell the method's side" in html
    nan_pick = view([0.5, np.nan, 0.7], [0, 1, 1])  # e.g. the first method's pick in a composition
    shown, _ = rs.choose(nan_pick, rs.ranking(nan_pick))
    assert [(s.row, s.group) for s in shown[:2]] == [(2, "selected"), (1, "selected")]
    assert (
        shown[1].why == "selected by ifd; ifd has no finite value for this row, so it has no rank"
    )


def test_a_rejected_duplicate_id_is_not_shown_with_the_scored_rows_signals():
    rejected = [{"line": 12, "reason": "duplicate_id", "id": "s000", "record": {"id": "s000"}}]
    run = view([0.9, 0.1], [1, 0], rejected=rejected)
    shown, _ = rs.choose(run, rs.ranking(run))
    assert [(s.group, s.row, s.status, s.why) for s in shown if s.group == "rejected"] == [
        ("rejected", None, "duplicate_id", "rejected at line 12: duplicate_id")
    ]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("samples") / "run", 300)


def test_the_page_shows_each_rows_text_read_back_from_the_data(small_run, tmp_path):
    page = write_report([small_run.path], tmp_path / "r.html").read_text()
    text = parse_page(tmp_path / "r.html")
    rows = {json.loads(x)["id"]: json.loads(x) for x in (small_run / "pool.jsonl").open()}
    run = read_run(small_run.path)
    best = run.ids[int(rs.ranking(run).order[0])]
    assert rows[best]["instruction"] in text and rows[best]["output"][:500] in text
    assert "texts are not shown" not in text
    assert page.count("<script>") == 1 and "<script src" not in page
    digest = re.search(r"script-src 'sha256-([^']+)'", page).group(1)
    assert digest == rs_digest()
    cut = rs._full("<" * (rs.FULL_CHARS + 5))  # a long field is cut, and says how much is left
    assert cut.startswith("&lt;" * rs.FULL_CHARS) and "… 5 more characters" in cut


def rs_digest() -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(rs.SCRIPT.encode()).digest()).decode()


def test_the_page_renders_with_a_note_when_the_data_is_gone_or_changed(small_run, tmp_path):
    pool = small_run / "pool.jsonl"
    kept = pool.read_bytes()
    try:
        pool.write_bytes(kept.replace(b'"output": "', b'"output": "Changed. ', 1))
        text = parse_page(write_report([small_run.path], tmp_path / "changed.html"))
        assert "changed since the run (its content hash differs" in text
        pool.unlink()
        text = parse_page(write_report([small_run.path], tmp_path / "gone.html"))
        assert f"texts are not shown: {pool} could not be read again (FileNotFoundError" in text
        assert "text not shown: see the note above" in text and "rank 1 of" in text
    finally:
        pool.write_bytes(kept)


@pytest.mark.slow
def test_the_page_of_a_10000_row_run_stays_under_its_stated_size(tmp_path):
    run = make_run(tmp_path / "run", 10_000)
    page = write_report([run.path])
    size = page.stat().st_size
    html_text = page.read_text()
    browser = len(
        re.search(r'<table class="samples".*?</table>', html_text, re.S).group(0).encode()
    )
    plots = sum(len(s.encode()) for s in re.findall(r"<svg.*?</svg>", html_text, re.S))
    print(f"10,000 rows: page {size:,} bytes (browser {browser:,}, plots {plots:,})")
    assert html_text.count("<tr><td data-v=") == 180  # the bounded slices, not the pool
    assert size < PAGE_BYTES_10K
    parse_page(page)
