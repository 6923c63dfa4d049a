"""The report's plots as SVG strings drawn in Python: histograms of the pool and the subset with a
threshold mark, the PCA scatter of pool vs subset, and the Jaccard heatmap of several runs."""

from __future__ import annotations

import html

import numpy as np

BINS = 30  # ours: enough to show shape for pools of a few hundred rows and up
POOL, SUBSET, MARK = "#8d99a6", "#d9480f", "#1c7ed6"
W, H, PAD = 420, 220, 34


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
