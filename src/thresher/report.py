"""`report.html`: a self-contained page (no script, no CDN, works offline) about one or more runs.

Plots are SVG written here in Python: per-signal histograms of the pool and the subset with the
selection threshold marked, subset vs pool length distributions, a 2-D PCA map of pool vs
subset, and a Jaccard overlap matrix of the selected ids when several runs are given. Tables:
`thresher eval`'s results or model comparison (`eval.json`), rejected-row reasons with examples,
and the manifest. Everything is read from the run folder
(`scores.parquet`, `rejected.jsonl`, `manifest.json`, and `passes/*/` shards for activations).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from thresher import rundir
from thresher.atomic import write_atomic
from thresher.cache import ACTIVATION_PREFIXES, fixed_rows
from thresher.evaluation.compare import evaluation_html
from thresher.rundir import RunFolder

NOT_SIGNALS = {"id", "line", "status", "selected", "rank"}
BINS = 30  # ours: enough to show shape for pools of a few hundred rows and up
MAX_POINTS = 3000  # ours: keeps the PCA map's SVG small; every selected row is always drawn
POOL, SUBSET, MARK = "#8d99a6", "#d9480f", "#1c7ed6"
W, H, PAD = 420, 220, 34
EXAMPLES_PER_REASON = 3
# Code points U+D800-U+DFFF (lone surrogates) cannot be written as UTF-8. Rows bring them in from
# JSON escapes such as "\ud800" and from bad UTF-8 bytes inside a JSON array (read with
# surrogateescape); they are replaced by U+FFFD before anything is written, and counted.
SURROGATES = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}.grid{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #e3e3e3;padding:6px}figcaption{font-size:12px;color:#555;max-width:420px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
pre{background:#f6f8fa;padding:10px;overflow:auto;max-height:480px;font-size:12px}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.note{background:#fff4e6;border-left:3px solid #f08c00;padding:4px 8px}"""


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
    return RunView(
        d, manifest, ids, status, selected, signals, lengths, rejected, evaluation, replaced
    )


def make_safe(value: Any) -> tuple[Any, int]:
    """`value` (a string, or lists and dicts of them as JSON holds) with every lone surrogate
    replaced by U+FFFD, and how many were replaced. Other values are returned as they are."""
    if isinstance(value, str):
        return SURROGATES.subn(REPLACEMENT, value)
    if isinstance(value, list):
        items = [make_safe(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        pairs = [(make_safe(k), make_safe(v)) for k, v in value.items()]
        return {k: v for (k, _), (v, _) in pairs}, sum(a + b for (_, a), (_, b) in pairs)
    return value, 0


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
    if len(rows) > MAX_POINTS:
        rng = np.random.default_rng(0)
        pool_rows = rows[~run.selected[rows]]
        keep = rng.choice(
            pool_rows, size=max(MAX_POINTS - int(run.selected[rows].sum()), 0), replace=False
        )
        rows = np.sort(np.concatenate([rows[run.selected[rows]], keep]))
    xy, var = pca_2d(x[rows]) if len(rows) > 1 else (np.zeros((len(rows), 2)), np.zeros(2))
    return f"{what} (PC1 {var[0]:.0%}, PC2 {var[1]:.0%} of variance)", xy, rows


def threshold(values: np.ndarray, selected: np.ndarray) -> float | None:
    """The selection boundary on this signal, when the subset and the rest are separated by it
    (a top-k or bottom-k on this column); None when they overlap (another column or random)."""
    ok = np.isfinite(values)
    a, b = values[ok & selected], values[ok & ~selected]
    if len(a) == 0 or len(b) == 0:
        return None
    if a.min() >= b.max():
        return float(a.min())
    if a.max() <= b.min():
        return float(a.max())
    return None


def jaccard(sets: list[set[str]]) -> np.ndarray:
    n = len(sets)
    m = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            union = sets[i] | sets[j]
            m[i, j] = len(sets[i] & sets[j]) / len(union) if union else 1.0
    return m


# ------------------------------------------------------------------ SVG


def _num(v: float) -> str:
    return f"{v:.3g}"


def histogram_svg(
    pool: np.ndarray, subset: np.ndarray, mark: float | None, label: str, ranked: bool = True
) -> tuple[str, str]:
    """Pool and subset as shares of their own rows per bin (so a small subset stays visible)."""
    pool, subset = pool[np.isfinite(pool)], subset[np.isfinite(subset)]
    if len(pool) == 0:
        return "", f"{label}: no finite values"
    lo, hi = np.percentile(pool, [0.5, 99.5]) if len(pool) >= 200 else (pool.min(), pool.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, BINS + 1)
    outside = int(((pool < lo) | (pool > hi)).sum())
    hp = np.histogram(np.clip(pool, lo, hi), edges)[0] / len(pool)
    hs = np.histogram(np.clip(subset, lo, hi), edges)[0] / max(len(subset), 1)
    top = max(hp.max(), hs.max() if len(subset) else 0, 1e-12)
    pw, ph = W - 2 * PAD, H - 2 * PAD
    bw = pw / BINS
    parts = [f'<rect x="{PAD}" y="{PAD}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for heights, color, opacity in ((hp, POOL, 0.75), (hs, SUBSET, 0.55)):
        for k, h in enumerate(heights):
            if h > 0:
                y = PAD + ph * (1 - h / top)
                parts.append(
                    f'<rect x="{PAD + k * bw:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{PAD + ph - y:.1f}" fill="{color}" fill-opacity="{opacity}"/>'
                )
    if mark is not None and lo <= mark <= hi:
        x = PAD + pw * (mark - lo) / (hi - lo)
        parts.append(
            f'<line x1="{x:.1f}" y1="{PAD - 6}" x2="{x:.1f}" y2="{PAD + ph}" stroke="{MARK}" stroke-width="2" stroke-dasharray="5,3"/>'
        )
        parts.append(
            f'<text x="{x + 3:.1f}" y="{PAD - 8}" font-size="11" fill="{MARK}">threshold {_num(mark)}</text>'
        )
    parts += _axes(lo, hi, top, label, "share of rows")
    caption = f"{label}: pool {len(pool)} rows, subset {len(subset)} rows" + (
        f"; {outside} pool values outside the 0.5-99.5 percentile range are drawn in the edge bins"
        if outside
        else ""
    )
    if ranked and mark is None and len(subset):
        caption += "; no single threshold separates the subset on this column"
    return _svg(parts), caption


def _axes(lo: float, hi: float, top: float, xlabel: str, ylabel: str) -> list[str]:
    pw, ph = W - 2 * PAD, H - 2 * PAD
    out = []
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(
            f'<text x="{PAD + pw * k / 4:.1f}" y="{H - PAD + 14}" font-size="10" text-anchor="middle">{_num(v)}</text>'
        )
    out.append(
        f'<text x="{W / 2}" y="{H - 4}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    out.append(
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="10" text-anchor="end">{_num(top)}</text>'
    )
    out.append(
        f'<text x="10" y="{PAD + ph / 2}" font-size="10" transform="rotate(-90 10 {PAD + ph / 2})" text-anchor="middle">{ylabel}</text>'
    )
    return out


def scatter_svg(xy: np.ndarray, selected: np.ndarray) -> str:
    pw, ph = W - 2 * PAD, H - 2 * PAD
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    p = 0.03 + 0.94 * (xy - lo) / span  # a margin keeps edge points off the frame
    parts = [f'<rect x="{PAD}" y="{PAD}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for flag, color, r in ((False, POOL, 2.2), (True, SUBSET, 3.0)):  # subset drawn on top
        for x, y in p[selected == flag]:
            parts.append(
                f'<circle cx="{PAD + x * pw:.1f}" cy="{PAD + (1 - y) * ph:.1f}" r="{r}" fill="{color}" fill-opacity="0.7"/>'
            )
    parts.append(f'<text x="{W / 2}" y="{H - 8}" font-size="11" text-anchor="middle">PC1</text>')
    parts.append(
        f'<text x="12" y="{H / 2}" font-size="11" transform="rotate(-90 12 {H / 2})" text-anchor="middle">PC2</text>'
    )
    return _svg(parts)


def heatmap_svg(m: np.ndarray, labels: list[str]) -> str:
    n = len(labels)
    cell, left, topm = 56, 170, 24
    parts = []
    for i in range(n):
        parts.append(
            f'<text x="{left - 6}" y="{topm + i * cell + cell / 2 + 4}" font-size="11" text-anchor="end">{html.escape(labels[i][:26])}</text>'
        )
        parts.append(
            f'<text x="{left + i * cell + cell / 2}" y="{topm - 6}" font-size="11" text-anchor="middle">{i + 1}</text>'
        )
        for j in range(n):
            shade = int(245 - 190 * m[i, j])
            parts.append(
                f'<rect x="{left + j * cell}" y="{topm + i * cell}" width="{cell - 2}" height="{cell - 2}" fill="rgb({shade},{shade + 5 if shade < 250 else 250},255)"/>'
            )
            parts.append(
                f'<text x="{left + j * cell + cell / 2 - 1}" y="{topm + i * cell + cell / 2 + 4}" font-size="12" text-anchor="middle" fill="{"#fff" if m[i, j] > 0.6 else "#222"}">{m[i, j]:.2f}</text>'
            )
    return _svg(parts, left + n * cell + 10, topm + n * cell + 10)


def _svg(parts: list[str], width: int = W, height: int = H) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        + "".join(parts)
        + "</svg>"
    )


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
    return f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>thresher report</title><style>{CSS}</style></head><body>{page}</body></html>"


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
