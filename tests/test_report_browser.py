"""report.html in a real browser: headless Chromium renders it, its DOM holds non-empty plots,
and its screenshot is not blank (decoded with a small PNG reader: zlib, no new dependency)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from thresher.config import RunConfig
from thresher.pipeline import run
from thresher.report import write_report
from tiny import FAMILIES

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
ROWS = [
    {
        "instruction": f"Add {a} and {b}.",
        "input": "",
        "output": f"{a} + {b} = {a + b}." * (1 + a % 3),
    }
    for a in range(10)
    for b in range(3)
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "chromium is not installed (`make test` installs Debian's chromium package when apt is available)"
        )
    return found


def read_png(path: Path) -> np.ndarray:
    """[height, width, channels] uint8 from an 8-bit RGB or RGBA, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, (
        f"unsupported PNG: depth {depth}, colour type {color}"
    )
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(
            np.int32
        )
        if kind == 1:  # Sub: running sum per channel
            line = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            line = (line + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential within the row
            cur, up = line.tolist(), prev.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    cur[i] = (cur[i] + (a + b) // 2) % 256
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) % 256
            line = np.array(cur, dtype=np.int32)
        out[y] = line
        prev = line
    return out.reshape(height, width, bpp)[:, :, :3]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    tok = FAMILIES["chatml"][0]()
    model = base / "model"
    FAMILIES["chatml"][1](tok).save_pretrained(model)
    tok.save_pretrained(model)
    data = base / "pool.jsonl"
    data.write_text(
        "".join(
            json.dumps(r) + "\n" for r in [*ROWS, {"instruction": "x", "input": "", "output": ""}]
        )
    )
    dirs = []
    for method in ("ifd", "ppl"):
        cfg = RunConfig()
        cfg.model.name, cfg.data.path, cfg.method.name = str(model), str(data), method
        cfg.output.dir, cfg.score.progress, cfg.select.fraction, cfg.output.report = (
            str(base / method),
            False,
            0.2,
            False,
        )
        run(cfg)
        dirs.append(base / method)
    return write_report(dirs, base / "report.html")


def test_chromium_renders_non_empty_plots(report_html, tmp_path):
    exe = chromium()
    common = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*common, "--dump-dom", report_html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<h1>thresher report: 2 runs</h1>" in dom
    svgs = dom.split('<svg class="plot"')[1:]
    # the browser parsed every plot of the page: per run signals, token counts and the map; plus the Jaccard matrix
    assert len(svgs) == report_html.read_text().count('<svg class="plot"') >= 2 * 3 + 1
    for svg in svgs:
        body = svg.split("</svg>")[0]
        assert body.count("<rect") + body.count("<circle") >= 3, body[:300]
    png = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={png}", "--window-size=1200,2200", report_html.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    img = read_png(png)
    assert img.shape[:2] == (2200, 1200)
    r, g, b = (img[:, :, k].astype(int) for k in range(3))
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    non_white = float(((r < 245) | (g < 245) | (b < 245)).mean())
    subset = int(((r > g + 60) & (r > b + 80)).sum())  # the subset's orange bars and points
    blue = int(((b > r + 80) & (b > g + 40)).sum())  # the Jaccard cells and the threshold line
    print(
        f"screenshot {png}: {colours} colours, {non_white:.1%} non-white, {subset} subset pixels, {blue} blue pixels"
    )
    assert colours > 50 and non_white > 0.05 and subset > 500 and blue > 500
