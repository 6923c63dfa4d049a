"""A run folder is locked while a run writes it: a second process refuses naming the holder, and
succeeds once the holder has ended, whether it released the lock or died holding it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from thresher.rundir import LOCK, RunFolder

HOLD = """
import sys
from thresher.rundir import RunFolder
with RunFolder(sys.argv[1]).lock("run"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _run(data: Path, run: Path) -> subprocess.CompletedProcess:
    argv = ["run", "--data", str(data), "--method", "random", "--count", "1", "--out", str(run)]
    return subprocess.run(
        [sys.executable, "-m", "thresher.cli", *argv], capture_output=True, text=True
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    return p


@pytest.mark.slow
def test_a_second_run_refuses_while_the_first_holds_the_folder(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        busy = _run(data, run)
        assert busy.returncode == 1, busy.stderr
        assert f"pid {holder.pid} on host" in busy.stderr and "another --out" in busy.stderr
        assert not (run / "manifest.json").exists()  # it wrote nothing
    finally:
        holder.communicate("\n")
    assert holder.returncode == 0 and not (run / LOCK).exists()  # released and removed
    done = _run(data, run)
    assert done.returncode == 0, done.stderr
    assert (run / "manifest.json").is_file() and "stale" not in done.stderr


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_stale_and_taken_over(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert json.loads((run / LOCK).read_text())["pid"] == holder.pid  # left behind
    done = _run(data, run)
    assert done.returncode == 0, done.stderr
    assert "took over a stale lock" in done.stderr and f"pid {holder.pid}" in done.stderr
    assert not (run / LOCK).exists()


def test_one_process_may_nest_the_lock(tmp_path: Path) -> None:
    """`run` locks, then calls `score` and `write_outputs`, which lock the same folder again."""
    folder = RunFolder(tmp_path / "run")
    with folder.lock("run"):
        with folder.lock("score"):
            record = json.loads((folder / LOCK).read_text())
        assert (folder / LOCK).exists()  # the outer holder still holds it
    assert record["command"] == "run" and record["pid"] == os.getpid()
    assert not (folder / LOCK).exists()


def test_the_refusal_names_the_holder_and_how_to_proceed(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    message = folder._busy_message(
        {"pid": 4242, "host": "elsewhere", "command": "score", "started": "2026-01-01T00:00:00"}
    )
    assert "`thresher score` (pid 4242 on host elsewhere" in message
    assert "`kill 4242` on elsewhere" in message and "another --out" in message
