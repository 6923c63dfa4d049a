"""report.html: the numbers behind the plots, and the page a run writes."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from htmlcheck import parse_page
from thresher import report
from thresher.cli import main
from thresher.config import RunConfig
from thresher.pipeline import run
from thresher.rundir import ReportNotWritten

ROWS = [
    {
        "instruction": f"Add {a} and {b}.",
        "input": "",
        "output": f"{a} + {b} = {a + b}." * (1 + a % 3),
    }
    for a in range(8)
    for b in range(3)
]
ROWS.append({"instruction": "Say nothing.", "input": "", "output": ""})


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    data = base / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = {}
    for method in ("ifd", "random"):
        cfg = RunConfig()
        cfg.model.name, cfg.data.path, cfg.method.name = str(tiny_model_dir), str(data), method
        cfg.output.dir, cfg.score.progress, cfg.select.fraction = str(base / method), False, 0.25
        run(cfg)
        out[method] = base / method
    return out


def test_threshold_only_when_the_subset_is_separated():
    v = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert report.threshold(v, np.array([0, 0, 1, 1, 0], bool)) == 3.0  # top-k: lowest kept value
    assert (
        report.threshold(v, np.array([1, 1, 0, 0, 0], bool)) == 2.0
    )  # bottom-k: highest kept value
    assert report.threshold(v, np.array([1, 0, 1, 0, 0], bool)) is None  # interleaved
    assert report.threshold(v, np.zeros(5, bool)) is None


def test_jaccard_by_hand():
    m = report.jaccard([{"a", "b"}, {"b", "c"}, set()])
    assert m[0, 1] == pytest.approx(1 / 3) and m[1, 0] == pytest.approx(1 / 3)
    assert m[0, 0] == 1.0 and m[0, 2] == 0.0 and m[2, 2] == 1.0


def test_pca_2d_finds_the_line_the_points_lie_on():
    t = np.linspace(-1, 1, 21)
    x = np.stack([t, 2 * t, np.full_like(t, 5.0)], axis=1)  # a constant column is dropped
    xy, var = report.pca_2d(x)
    assert var[0] == pytest.approx(1.0) and var[1] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.abs(np.corrcoef(xy[:, 0], t)[0, 1]), 1.0) and np.allclose(
        xy[:, 1], 0, atol=1e-9
    )


def test_histogram_marks_the_threshold_and_says_when_there_is_none():
    svg, caption = report.histogram_svg(np.arange(10.0), np.array([7.0, 8.0, 9.0]), 7.0, "ifd")
    assert (
        "threshold 7" in svg and svg.count("<rect") > 3 and "pool 10 rows, subset 3 rows" in caption
    )
    svg, caption = report.histogram_svg(np.arange(10.0), np.array([1.0, 8.0]), None, "ppl")
    assert "threshold" not in svg and "no single threshold" in caption
    assert report.histogram_svg(np.array([np.nan]), np.array([]), None, "x") == (
        "",
        "x: no finite values",
    )


def test_the_map_draws_at_most_max_points_and_keeps_a_small_subset_whole():
    n = 10_000
    rng = np.random.default_rng(0)
    for chosen, drawn in ((5_000, report.MAX_POINTS // 2), (40, 40)):
        selected = np.zeros(n, bool)
        selected[rng.choice(n, chosen, replace=False)] = True
        view = report.RunView(
            report.Path("x"), {}, [str(k) for k in range(n)], ["ok"] * n, selected,
            {"a": rng.normal(size=n), "b": rng.normal(size=n)}, {}, [],
        )  # fmt: skip
        _, xy, rows = report.map_features(view)
        assert len(rows) == len(xy) == report.MAX_POINTS and selected[rows].sum() == drawn


def test_activations_come_from_committed_shards_only(tmp_path):
    d = tmp_path / "passes" / "cond.alpaca"
    d.mkdir(parents=True)
    for name, ids, done in (("shard-a", ["x", "y"], True), ("shard-b", ["z"], False)):
        arr = np.arange(len(ids) * 3, dtype=np.float32).reshape(len(ids), 3) + (10 if done else 100)
        t = pa.table(
            {
                "id": ids,
                "hidden.1": pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), 3),
                "mlp.1": pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), 3),
            }
        )
        pq.write_table(t, d / f"{name}.parquet")
        if done:
            (d / f"{name}.done").write_text("{}")
    view = report.RunView(
        tmp_path, {}, ["y", "z", "x"], ["ok"] * 3, np.array([1, 0, 0], bool), {}, {}, []
    )
    name, rows = report.activations(view)
    assert name == "hidden.1"
    assert (
        rows[0].tolist() == [13.0, 14.0, 15.0]
        and np.isnan(rows[1]).all()
        and rows[2].tolist() == [10.0, 11.0, 12.0]
    )


def test_a_run_writes_its_report_with_every_section(runs):
    page = (runs["ifd"] / "report.html").read_text()
    # offline: one inline script (the sample browser's), nothing loaded, a policy that forbids both
    assert page.count("<script") == 1 and "<script>" in page and "src=" not in page
    assert (
        "http:" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        and "https:" not in page
    )
    assert "default-src 'none'" in page
    for section in (
        "Signals",
        "Lengths, subset vs pool",
        "Map of pool vs subset",
        "Samples",
        "Rejected rows",
        "Manifest",
    ):
        assert re.search(f"<h3[^>]*>{section}", page), section
    assert "empty_response" in page and "threshold" in page
    assert 'class="plot"' in page and "PCA of features: ifd" in page
    svgs = re.findall(r'<svg class="plot".*?</svg>', page)
    assert len(svgs) >= 5 and all(s.count("<rect") + s.count("<circle") > 2 for s in svgs)


def test_the_sample_browser_of_a_real_run(runs):
    text = parse_page(runs["ifd"] / "report.html")
    table = pq.read_table(runs["ifd"] / "scores.parquet").to_pydict()
    top = table["id"][table["rank"].index(0)]
    row = ROWS[table["line"][table["id"].index(top)] - 1]
    assert "Ranked by ifd, highest first" in text
    assert row["instruction"] in text and row["output"] in text  # read back from the data
    assert "below the threshold" in text and "rejected at line 25: empty_response" in text
    selected = sum(table["selected"])
    assert f"rank 1 of {table['status'].count('ok')} eligible, threshold" in text
    assert f"{selected} selected" in text


def test_report_cli_compares_runs_with_jaccard(runs, tmp_path, capsys):
    out = tmp_path / "both.html"
    assert main(["report", str(runs["ifd"]), str(runs["random"]), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert "Overlap of the selected subsets (Jaccard)" in page and page.count("<h2>") == 3
    tables = [pq.read_table(runs[m] / "scores.parquet").to_pydict() for m in ("ifd", "random")]
    ids = [{i for i, s in zip(t["id"], t["selected"], strict=True) if s} for t in tables]
    j = len(ids[0] & ids[1]) / len(ids[0] | ids[1])
    assert f">{j:.2f}</text>" in page


def _random_run(data, out, *flags) -> list[str]:
    return ["run", "--data", str(data), "--method", "random", "--count", "2", "--out", str(out),
            "--no-progress", *flags]  # fmt: skip


def test_no_report_flag_and_config_remove_a_stale_report(tmp_path, capsys):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:6]))
    out = tmp_path / "run"
    assert main(_random_run(data, out)) == 0 and (out / "report.html").exists()
    capsys.readouterr()
    assert main(_random_run(data, out, "--no-report")) == 0
    assert (out / "manifest.json").exists() and not (out / "report.html").exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["output"]["report"] is False
    outputs = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("outputs"))
    assert "manifest.json" in outputs and "report.html" not in outputs


def test_a_report_that_cannot_be_written_fails_the_run_after_every_other_output(
    tmp_path, capsys, monkeypatch
):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:6]))
    out = tmp_path / "run"
    assert main(_random_run(data, out)) == 0
    capsys.readouterr()

    def fail(runs):
        raise MemoryError("no room for the page")

    monkeypatch.setattr(report, "render", fail)
    assert main(_random_run(data, out, "--count", "3")) == 1
    got = capsys.readouterr()
    assert f"error: {out / 'report.html'} was not written (MemoryError: no room" in got.err
    assert f"`thresher report {out}`" in got.err
    assert "selected  3 of 3 requested" in got.out  # the summary of what was saved
    assert not (out / "report.html").exists()  # the earlier page would describe the old subset
    assert len((out / "selected.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "manifest.json").read_text())["selection"]["returned"] == 3

    cfg = RunConfig()
    cfg.data.path, cfg.method.name, cfg.output.dir = str(data), "random", str(out)
    cfg.select.count, cfg.score.progress = 4, False
    with pytest.raises(ReportNotWritten, match=r"report\.html was not written") as e:
        run(cfg)
    assert e.value.manifest["selection"]["returned"] == 4 and len(e.value.selection.ids) == 4
    assert e.value.result.counts["rows_read"] == 6 and (out / "scores.parquet").exists()


def test_make_safe_replaces_and_counts_lone_surrogates():
    value = {"a\ud800": ["ok", "x\udcff\udcfe", 3, None], "b": {"c": "\udfff"}}
    safe, n = report.make_safe(value)
    assert n == 4 and safe == {"a\ufffd": ["ok", "x\ufffd\ufffd", 3, None], "b": {"c": "\ufffd"}}
    assert report.make_safe("plain") == ("plain", 0)
    json.dumps(safe, ensure_ascii=False).encode("utf-8")  # writable now


def test_bad_utf8_inside_a_json_array_reaches_the_report_replaced(tmp_path):
    rows = [json.dumps(r).encode() for r in ROWS[:4]]
    bad = b'{"instruction": "Hello \xff\xfe there", "input": "", "output": "Hi."}'
    data = tmp_path / "pool.json"
    data.write_bytes(b"[" + b",\n".join([*rows, bad]) + b"]")
    assert main(_random_run(data, tmp_path / "run")) == 0
    text = parse_page(tmp_path / "run" / "report.html")
    assert "bad_utf8" in text and "Hello \ufffd\ufffd there" in text
    assert "2 characters in this run's rows, ids and manifest" in text


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no manifest\.json"):
        report.write_report([tmp_path])
