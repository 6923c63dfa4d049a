"""report.html in a real browser: headless Chromium renders it, its DOM holds non-empty plots,
and its screenshot is not blank (decoded with a small PNG reader: zlib, no new dependency). The
sample browser is driven over the DevTools protocol on a pipe (no new dependency either): its
script runs under the page's Content-Security-Policy, sorts, searches and expands rows."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

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


class DevTools:
    """Headless Chromium driven over the DevTools protocol: `--remote-debugging-pipe` reads
    commands on the child's fd 3 and answers on its fd 4, one JSON message per NUL byte."""

    def __init__(self, exe: str, profile: Path) -> None:
        commands, self._send = os.pipe()
        self._recv, answers = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: put the pipe ends on 3 and 4
            a, b = os.dup(commands), os.dup(answers)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
            preexec_fn=child_fds,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands)
        os.close(answers)
        self._buffer, self._id, self.events = b"", 0, []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]

    def _message(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._recv], [], [], left)[0]:
                raise TimeoutError(f"chromium sent nothing for {timeout} s")
            chunk = os.read(self._recv, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, *, page: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if page:
            message["sessionId"] = self.session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        while True:
            got = self._message(60)
            if got.get("id") == self._id:
                assert "error" not in got, (method, got["error"])
                return got["result"]
            self.events.append(got)

    def open(self, url: str, width: int, height: int) -> None:
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(domain, page=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            page=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", page=True, url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(60))

    def js(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in got, got["exceptionDetails"]
        return got["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", page=True)["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(EOFError, OSError):  # it may close the pipe before answering
            self.call("Browser.close")
        self.proc.wait(timeout=30)
        os.close(self._send)
        os.close(self._recv)


ROWS_JS = "[...document.querySelectorAll('#samples-1 tbody tr')]"


def test_the_sample_browser_sorts_searches_and_expands_in_chromium(report_html, tmp_path):
    browser = DevTools(chromium(), tmp_path / "profile")
    try:
        browser.open(report_html.as_uri(), 1200, 1400)
        # the script ran under the page's policy: it shows the search boxes and titles the headers
        assert browser.js("[...document.querySelectorAll('input.find')].map(x => x.hidden)") == [
            False,
            False,
        ]
        headers = browser.js(
            "[...document.querySelectorAll('#samples-1 th')].map(h => h.title + ':' + h.textContent)"
        )
        assert all(h.startswith("click to sort:") for h in headers)
        names = [h.split(":", 1)[1] for h in headers]
        total = browser.js(f"{ROWS_JS}.length")
        assert total == report_html.read_text().split('id="samples-1"')[1].split("</table>")[
            0
        ].count("<tr><td")

        def column(name: str) -> list[float | None]:
            k = names.index(name)
            cells = browser.js(f"{ROWS_JS}.map(r => r.cells[{k}].dataset.v)")
            return [float(v) if v else None for v in cells]

        browser.js(f"document.querySelectorAll('#samples-1 th')[{names.index('ifd')}].click()")
        up = column("ifd")
        numbers = [v for v in up if v is not None]
        assert numbers == sorted(numbers) and up[: len(numbers)] == numbers  # blanks last
        browser.js(f"document.querySelectorAll('#samples-1 th')[{names.index('ifd')}].click()")
        down = column("ifd")
        assert [v for v in down if v is not None] == sorted(numbers, reverse=True)
        assert down[len(numbers) :] == [None] * (total - len(numbers))

        query = "Add 9 and 2."
        shown = browser.js(
            "(() => { const box = document.getElementById('samples-1-find'); box.value = "
            f"{json.dumps(query.upper())}; box.dispatchEvent(new Event('input')); "
            f"return {ROWS_JS}.filter(r => !r.hidden).map(r => r.textContent); }})()"
        )
        assert 1 <= len(shown) < total and all(query in t for t in shown)
        assert browser.js(
            "[...document.querySelectorAll('#samples-2 tbody tr')].every(r => !r.hidden)"
        )

        # clear the search, put the rows back in their first order, look, open the first row, look
        browser.js(
            "(() => { const box = document.getElementById('samples-1-find'); box.value = ''; "
            "box.dispatchEvent(new Event('input')); document.querySelector('#samples-1 th').click(); "
            "document.getElementById('run-1-samples').scrollIntoView(); })()"
        )
        assert browser.js(f"{ROWS_JS}[0].cells[0].textContent") == "selected"
        closed = browser.screenshot(tmp_path / "samples-closed.png")
        browser.js("document.querySelector('#samples-1 details').open = true")
        opened = browser.screenshot(tmp_path / "samples.png")
        errors = [
            e for e in browser.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]  # fmt: skip
        assert errors == []  # no script error, nothing the policy had to block
    finally:
        browser.close()

    def pixels(png: Path) -> tuple[int, int]:
        img = read_png(png)
        assert img.shape[:2] == (1400, 1200)
        r, g, b = (img[:, :, k].astype(int) for k in range(3))
        dark = int(((r < 120) & (g < 120) & (b < 120)).sum())  # text
        boxes = int(((r == 246) & (g == 248) & (b == 250)).sum())  # header row and text boxes
        return dark, boxes

    (text_closed, boxes_closed), (text_opened, boxes_opened) = pixels(closed), pixels(opened)
    print(
        f"screenshot {opened}: {text_opened} text pixels; opening the first row added "
        f"{boxes_opened - boxes_closed} pixels of its text boxes"
    )
    assert text_closed > 20_000 and text_opened > 20_000
    assert boxes_opened - boxes_closed > 10_000  # its instruction and response boxes
