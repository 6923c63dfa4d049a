"""`report.html`: one self-contained page about one or more runs that works offline.

Plots are SVG written here in Python: per-signal histograms of the pool and the subset with the
selection threshold marked, subset vs pool length distributions, a 2-D PCA map of pool vs
subset, and a Jaccard overlap matrix of the selected ids when several runs are given. A sample
browser per run (`report_samples`) shows rows to read with their text, signals, rank, status and
why. Tables: `thresher eval`'s results or model comparison (`eval.json`), rejected-row reasons
with examples, and the manifest. Everything is read from the run folder (`scores.parquet`,
`rejected.jsonl`, `manifest.json`, `passes/*/` shards for activations) and, for the browser's
texts, from the run's data. The page loads nothing; its one inline script (sorting and search)
is the only code its Content-Security-Policy lets run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import rundir
from thresher.atomic import write_atomic
from thresher.cache import ACTIVATION_PREFIXES, fixed_rows
from thresher.evaluation.compare import evaluation_html
from thresher.report_samples import (
    REPLACEMENT,
    SCRIPT,
    SURROGATES,
    browser_html,
    make_safe,
    threshold,
)
from thresher.report_svg import MARK, POOL, SUBSET, heatmap_svg, histogram_svg, scatter_svg
from thresher.rundir import RunFolder

NOT_SIGNALS = {"id", "line", "status", "selected", "rank"}
MAX_POINTS = 3000  # ours: bounds the PCA map's SVG (about 80 bytes a point) whatever the pool
EXAMPLES_PER_REASON = 3
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #e3e3e3;padding:6px}figcaption{font-size:12px;color:#555;max-width:420px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
pre{background:#f6f8fa;padding:10px;overflow:auto;max-height:480px;font-size:12px}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.note{background:#fff4e6;border-left:3px solid #f08c00;padding:4px 8px}
table.samples{font-size:12px;width:100%}table.samples th{cursor:pointer;background:#f6f8fa;position:sticky;top:0}
table.samples td{vertical-align:top}table.samples td.txt{min-width:320px;overflow-wrap:anywhere}
table.samples td.why{min-width:200px;color:#444}
table.samples pre{white-space:pre-wrap;max-height:320px;margin:2px 0 6px}summary{cursor:pointer}
input.find{width:360px;margin:4px 0 8px;padding:3px 6px}"""


@dataclass
class RunView:
    """What the report reads from one run folder."""

    dir: Path
    manifest: dict[str, Any]
    ids: list[str]
    status: list[str]
    selected: np.ndarray  # bool per row
    signals: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]  # token-count columns
    rejected: list[dict[str, Any]]
    evaluation: dict[str, Any] | None = None  # eval.json, written by `thresher eval RUN_DIR`
    replaced: int = 0  # lone surrogates replaced by U+FFFD in what was read
    lines: list[int | None] = field(default_factory=list)  # source line per row
    rank: list[int | None] = field(default_factory=list)  # position in the selector's output

    @property
    def name(self) -> str:
        return f"{self.dir.name} ({self.manifest.get('method', {}).get('name', '?')})"


def read_run(run_dir: str | Path) -> RunView:
    run = RunFolder(run_dir)
    d, manifest = run.path, run.read_manifest()
    if not run.scores.is_file():
        raise FileNotFoundError(
            f"{d} has no {run.scores.name}: give the --out folder of a finished `thresher run` or `thresher score`"
        )
    t = pq.read_table(run.scores)
    signals, lengths = {}, {}
    for name in t.column_names:
        col = t.column(name)
        if name in NOT_SIGNALS or not (
            pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
        ):
            continue
        arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        (lengths if name.startswith("n_") else signals)[name] = arr
    rejected_path = run.rejected
    rejected = (
        [json.loads(x) for x in rejected_path.read_text().splitlines() if x.strip()]
        if rejected_path.exists()
        else []
    )
    selected = np.asarray(
        t.column("selected").to_pylist() if "selected" in t.column_names else [False] * t.num_rows,
        dtype=bool,
    )
    evaluation = json.loads(run.evaluation.read_text()) if run.evaluation.is_file() else None
    text, replaced = make_safe(
        [manifest, t.column("id").to_pylist(), t.column("status").to_pylist(), rejected, evaluation]
    )
    manifest, ids, status, rejected, evaluation = text
    column = {n: t.column(n).to_pylist() if n in t.column_names else [] for n in ("line", "rank")}
    return RunView(
        d, manifest, ids, status, selected, signals, lengths, rejected, evaluation, replaced,
        column["line"], column["rank"],
    )  # fmt: skip


def activations(run: RunView) -> tuple[str, np.ndarray] | None:
    """The deepest pooled activation column stored in the run's committed pass shards, aligned to
    the run's rows (NaN rows where missing), or None when the run has none."""
    shards = {
        p: pq.read_schema(p).names
        for p in sorted(RunFolder(run.dir).passes.glob("*/shard-*.parquet"))
        if p.with_suffix(".done").exists()
    }
    names = {n for cols in shards.values() for n in cols if n.startswith(ACTIVATION_PREFIXES)}
    if not names:
        return None
    name = max(names, key=lambda n: (n.startswith("hidden."), int(n.split(".")[1])))
    found: dict[
        str, np.ndarray
    ] = {}  # only this column is read, as float32: one layer a row, not every layer
    for p, cols in shards.items():
        if name in cols:
            t = pq.read_table(p, columns=["id", name])
            found.update(zip(t.column("id").to_pylist(), fixed_rows(t.column(name)), strict=True))
    width = len(next(iter(found.values())))
    rows = np.array([found.get(i, np.full(width, np.nan, dtype=np.float32)) for i in run.ids])
    return name, rows


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on the first two principal components of the standardised columns, and the
    share of variance each explains. Columns with zero spread are dropped."""
    x = x - x.mean(axis=0)
    sd = x.std(axis=0)
    x = x[:, sd > 0] / sd[sd > 0]
    if x.shape[1] == 0:
        return np.zeros((len(x), 2)), np.zeros(2)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    xy = np.zeros((len(x), 2))
    xy[:, :k] = u[:, :k] * s[:k]
    var = np.zeros(2)
    var[:k] = (s[:k] ** 2) / max(float((s**2).sum()), 1e-300)
    return xy, var


def map_features(run: RunView) -> tuple[str, np.ndarray, np.ndarray]:
    """(what was projected, 2-D points, which rows they are): activations when the run stored
    them, else the signals and log token counts."""
    acts = activations(run)
    if acts is not None:
        what, x = f"activations {acts[0]}", acts[1]
    else:
        cols = list(run.signals.values()) + [np.log1p(v) for v in run.lengths.values()]
        what = "features: " + ", ".join(list(run.signals) + [f"log1p({k})" for k in run.lengths])
        x = np.stack(cols, axis=1) if cols else np.zeros((len(run.ids), 0))
    rows = np.flatnonzero(np.all(np.isfinite(x), axis=1)) if x.shape[1] else np.zeros(0, dtype=int)
    if len(rows) > MAX_POINTS:  # a seeded sample; the subset keeps up to half the points
        rng = np.random.default_rng(0)
        subset, pool = rows[run.selected[rows]], rows[~run.selected[rows]]
        n_subset = min(len(subset), max(MAX_POINTS // 2, MAX_POINTS - len(pool)))
        rows = np.sort(
            np.concatenate(
                [
                    rng.choice(subset, size=n_subset, replace=False),
                    rng.choice(pool, size=min(len(pool), MAX_POINTS - n_subset), replace=False),
                ]
            )
        )
    xy, var = pca_2d(x[rows]) if len(rows) > 1 else (np.zeros((len(rows), 2)), np.zeros(2))
    return f"{what} (PC1 {var[0]:.0%}, PC2 {var[1]:.0%} of variance)", xy, rows


def jaccard(sets: list[set[str]]) -> np.ndarray:
    n = len(sets)
    m = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            union = sets[i] | sets[j]
            m[i, j] = len(sets[i] & sets[j]) / len(union) if union else 1.0
    return m


# ------------------------------------------------------------------ page


def _figure(svg: str, caption: str) -> str:
    return (
        f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
        if svg
        else f"<p>{html.escape(caption)}</p>"
    )


def _run_section(k: int, run: RunView) -> str:
    m = run.manifest
    scored = np.array([s == "ok" or s.startswith("filtered:") for s in run.status], dtype=bool)
    eligible = np.array([s == "ok" for s in run.status], dtype=bool)
    counts = m.get("counts", {})
    sel = m.get("selection") or {}
    out = [
        f"<h2>{k}. {html.escape(run.name)}</h2>",
        f"<p>{html.escape(str(run.dir))}: {counts.get('rows_read', '?')} rows read, {counts.get('scored', '?')} scored, "
        f"{counts.get('rejected', '?')} rejected; {int(run.selected.sum())} selected"
        + (f" ({html.escape(sel['note'])})" if sel.get("note") else "")
        + ".</p>",
        _replaced_note(run.replaced, "this run's rows, ids and manifest"),
        f'<p class="key"><span style="background:{POOL}"></span>pool (scored rows, filtered ones included: {int((scored & ~eligible).sum())})'
        f'<span style="background:{SUBSET}"></span>subset<span style="background:{MARK}"></span>threshold (among eligible rows)</p>',
    ]
    out.append("<h3>Signals</h3><div class='grid'>")
    for name, v in run.signals.items():
        # the threshold is read among eligible rows: rows a method's filter excluded are not ranked
        out.append(
            _figure(
                *histogram_svg(
                    v[scored], v[run.selected], threshold(v[eligible], run.selected[eligible]), name
                )
            )
        )
    out.append(
        "</div>"
        if run.signals
        else "<p>this run computed no signals (its method runs no pass)</p></div>"
    )
    out.append("<h3>Lengths, subset vs pool</h3><div class='grid'>")
    for name, v in run.lengths.items():
        out.append(_figure(*histogram_svg(v[scored], v[run.selected], None, name, ranked=False)))
    out.append("</div>" if run.lengths else "<p>this run stored no token counts</p></div>")
    what, xy, rows = map_features(run)
    out.append("<h3>Map of pool vs subset</h3>")
    out.append(
        _figure(scatter_svg(xy, run.selected[rows]), f"PCA of {what}; {len(rows)} rows drawn")
        if len(rows) > 1
        else "<p>too few rows with finite features for a map</p>"
    )
    samples, replaced = browser_html(k, run)
    out.append(
        f"<h3 id='run-{k}-samples'>Samples</h3>" + _replaced_note(replaced, "these texts") + samples
    )
    if run.evaluation is not None:
        out.append("<h3>Evaluation (thresher eval)</h3>" + evaluation_html(run.evaluation))
    out.append("<h3>Rejected rows</h3>" + _rejected_table(run.rejected))
    out.append(
        f"<h3>Manifest</h3><details><summary>manifest.json</summary><pre>{html.escape(json.dumps(m, indent=1))}</pre></details>"
    )
    return "\n".join(out)


def _rejected_table(rejected: list[dict[str, Any]]) -> str:
    if not rejected:
        return "<p>no rows were rejected</p>"
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rejected:
        by.setdefault(str(r.get("reason")), []).append(r)
    rows = []
    for reason, items in sorted(by.items(), key=lambda kv: -len(kv[1])):
        ex = "; ".join(
            f"line {r.get('line')}: {json.dumps(r.get('record'), ensure_ascii=False)[:120]}"
            for r in items[:EXAMPLES_PER_REASON]
        )
        rows.append(
            f"<tr><td>{html.escape(reason)}</td><td>{len(items)}</td><td>{html.escape(ex)}</td></tr>"
        )
    return (
        "<table><tr><th>reason</th><th>rows</th><th>examples</th></tr>" + "".join(rows) + "</table>"
    )


def _replaced_note(count: int, where: str) -> str:
    if not count:
        return ""
    return (
        f'<p class="note">{count} character{"s" if count > 1 else ""} in {where} could not be '
        f"written as UTF-8 (lone surrogates: bad UTF-8 bytes, or escapes such as \\ud800) and "
        f"{'are' if count > 1 else 'is'} shown as {REPLACEMENT} (U+FFFD).</p>"
    )


def render(runs: list[RunView]) -> str:
    body = [f"<h1>thresher report: {len(runs)} run{'s' if len(runs) > 1 else ''}</h1>"]
    if len(runs) > 1:
        sets = [{i for i, s in zip(r.ids, r.selected, strict=True) if s} for r in runs]
        labels = [f"{k + 1}. {r.name}" for k, r in enumerate(runs)]
        body.append("<h2>Overlap of the selected subsets (Jaccard)</h2>")
        body.append(
            _figure(
                heatmap_svg(jaccard(sets), labels),
                "|A ∩ B| / |A ∪ B| of the selected ids; subset sizes: "
                + ", ".join(f"{k + 1}: {len(s)}" for k, s in enumerate(sets)),
            )
        )
    body += [_run_section(k + 1, r) for k, r in enumerate(runs)]
    # what read_run did not see (a folder name, a view built by hand) is made safe here
    page, count = SURROGATES.subn(REPLACEMENT, "".join(body))
    if count:
        page = _replaced_note(count, "this page (outside the rows read)") + page
    # offline by construction: nothing may load, and only SCRIPT (by its hash) may run
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>thresher report</title><style>{CSS}</style></head><body>{page}"
        f"<script>{SCRIPT}</script></body></html>"
    )


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report for these runs; by default `RUN_DIR/report.html` for one run and
    `report.html` in the working folder for several."""
    if not run_dirs:
        raise ValueError("no run folders given: pass one or more --out folders of finished runs")
    runs = [read_run(d) for d in run_dirs]
    dest = (
        Path(out)
        if out
        else (RunFolder(runs[0].dir).report if len(runs) == 1 else Path(rundir.REPORT))
    )
    write_atomic(dest, render(runs).encode("utf-8"))
    return dest
