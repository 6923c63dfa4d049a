"""Failures that must not lose or invent a score: one failing row, too many failures, a full
disk, an output folder that cannot be written, a crash between a shard and its marker,
SIGINT/SIGTERM, repeated SIGKILLs, and a resume whose inputs changed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from thresher import cache, cli
from thresher.backends.hf import HFBackend
from tiny import FAMILIES

ROWS = [
    {
        "instruction": f"Add {i} and {i * 3 % 17}.",
        "output": f"{i} + {i * 3 % 17} = {i + i * 3 % 17}. " * (1 + i % 4),
    }
    for i in range(24)
]
POISON = "ZEBRA"  # a row whose text holds this fails inside the backend (see `_poison`)


def _data(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(tiny_model_dir, data, out, *extra: str, shard_rows: int = 4) -> list[str]:
    return [
        "score",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *extra,
        f"score.shard_rows={shard_rows}",
    ]


def _scores(out: Path) -> dict[str, tuple[str, float]]:
    t = pq.read_table(out / "scores.parquet").to_pydict()
    return {i: (s, v) for i, s, v in zip(t["id"], t["status"], t["ifd"], strict=True)}


def _poison(monkeypatch) -> list[int]:
    """Make HFBackend.run raise for any batch holding a poisoned row; returns the sizes of the
    batches that held one, so a test can show the poisoned row really shared a batch."""
    real, seen = HFBackend.run, []

    def run(self, rows, spec, **kw):
        if any(POISON in self.tok.decode(r.ids) for r in rows):
            seen.append(len(rows))
            raise RuntimeError("injected failure")
        return real(self, rows, spec, **kw)

    monkeypatch.setattr(HFBackend, "run", run)
    return seen


def test_a_failing_row_rejects_only_itself(tiny_model_dir, tmp_path, monkeypatch, capsys):
    clean = tmp_path / "clean"
    assert (
        cli.main(
            _args(
                tiny_model_dir,
                _data(tmp_path / "clean.jsonl", ROWS),
                clean,
                "--batch-tokens",
                "100000",
            )
        )
        == 0
    )
    rows = [
        *ROWS[:5],
        {"instruction": "Add 5 and 15.", "output": f"5 + 15 = 20 {POISON}."},
        *ROWS[5:],
    ]
    seen = _poison(monkeypatch)
    out = tmp_path / "poisoned"
    assert (
        cli.main(
            _args(
                tiny_model_dir,
                _data(tmp_path / "poisoned.jsonl", rows),
                out,
                "--batch-tokens",
                "100000",
            )
        )
        == 0
    )
    assert max(seen) > 1  # the poisoned row shared a batch, which was then retried row by row
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [(6, "error:RuntimeError")]
    got, want = _scores(out), _scores(clean)
    assert (
        len(got) == len(ROWS) + 1 and sum(s == "error:RuntimeError" for s, _ in got.values()) == 1
    )
    for i, (
        status,
        value,
    ) in want.items():  # every batch-mate scored, to fp32 rounding of a new batch shape
        assert got[i][0] == status
        np.testing.assert_allclose(got[i][1], value, rtol=1e-5)
    assert "1 rejected" in capsys.readouterr().out


def test_a_row_that_failed_is_scored_again_by_the_next_run(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """A fault is often transient (an out-of-memory batch): the rerun scores the failed row again,
    once, and its new row replaces the failed one; finished rows are reused."""
    rows = [
        *ROWS[:5],
        {"instruction": "Add 5 and 15.", "output": f"5 + 15 = 20 {POISON}."},
        *ROWS[5:],
    ]
    data, out = _data(tmp_path / "d.jsonl", rows), tmp_path / "run"
    with monkeypatch.context() as m:
        _poison(m)
        assert cli.main(_args(tiny_model_dir, data, out)) == 0
    assert sum(s == "error:RuntimeError" for s, _ in _scores(out).values()) == 1
    capsys.readouterr()
    assert cli.main(_args(tiny_model_dir, data, out)) == 0  # the fault is gone
    assert f"1 scored, {len(ROWS)} reused from cache" in capsys.readouterr().out
    got = _scores(out)
    assert len(got) == len(ROWS) + 1 and all(
        s == "ok" or s.startswith("filtered:") for s, _ in got.values()
    )
    assert not (out / "rejected.jsonl").read_text().strip()
    stored = [
        i
        for p in out.glob("passes/cond*/shard-*.parquet")
        for i in pq.read_table(p).column("id").to_pylist()
    ]
    assert len(stored) == len(ROWS) + 2  # the failed row stays in its shard, superseded
    assert cli.main(_args(tiny_model_dir, data, out)) == 0
    assert f"0 scored, {len(ROWS) + 1} reused from cache" in capsys.readouterr().out


def test_too_many_failed_rows_stop_the_run_with_a_clear_message(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    rows = [
        {**r, "output": r["output"] + POISON} if k % 3 else r for k, r in enumerate(ROWS[:12])
    ]  # 8 of 12 fail
    _poison(monkeypatch)
    out = tmp_path / "run"
    code = cli.main(
        _args(
            tiny_model_dir,
            _data(tmp_path / "d.jsonl", rows),
            out,
            "score.max_rejected_fraction=0.5",
        )
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "8 of 12 rows were rejected (67% > score.max_rejected_fraction=0.5)" in err
        and "error:RuntimeError" in err
    )
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 8
    assert not (out / "scores.parquet").exists()


def _fill_disk_after(monkeypatch, shards: int) -> None:
    """After `shards` shard files the disk is full: the write leaves a partial temp file and
    fails the way pyarrow does, with ENOSPC and no file name."""
    real, calls = pq.write_table, []

    def write_table(table, where, *a, **kw):
        if str(where).endswith(".parquet.tmp"):
            calls.append(where)
            if len(calls) > shards:
                Path(where).write_bytes(b"PAR1 partial")
                raise OSError(
                    errno.ENOSPC,
                    "Error writing bytes to file. Detail: [errno 28] No space left on device",
                )
        return real(table, where, *a, **kw)

    monkeypatch.setattr(cache.pq, "write_table", write_table)


def test_a_full_disk_names_the_path_and_keeps_finished_shards(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    data = _data(tmp_path / "d.jsonl", ROWS)
    assert cli.main(_args(tiny_model_dir, data, tmp_path / "clean")) == 0
    capsys.readouterr()
    out = tmp_path / "full"
    with monkeypatch.context() as m:
        _fill_disk_after(m, 3)
        assert cli.main(_args(tiny_model_dir, data, out)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out / "passes") in err and ".parquet.tmp" in err
    kept = sorted(p.name for p in out.glob("passes/*/shard-*.done"))
    assert len(kept) == 3
    assert cli.main(_args(tiny_model_dir, data, out)) == 0  # the disk has room again: resume
    assert "12 reused from cache" in capsys.readouterr().out
    assert set(kept) <= {p.name for p in out.glob("passes/*/shard-*.done")}
    assert _scores(out) == _scores(tmp_path / "clean")


def _mount_tmpfs(where: Path, size: int) -> bool:
    opts = f"size={size}" if not os.path.ismount(where) else f"remount,size={size}"
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.slow
def test_a_real_full_disk_names_the_path_wherever_it_fills(tiny_model_dir, tmp_path, capsys):
    """A small real file system (tmpfs) fills at nine sizes between 10% and 90% of what a run
    writes, so the disk runs out in a shard, in a marker or in the final outputs. Each failure
    exits 1 naming a file in the output folder, every committed shard matches its marker, and once
    the disk grows the same command finishes with the scores of a clean run."""
    data = _data(tmp_path / "d.jsonl", ROWS)
    assert cli.main(_args(tiny_model_dir, data, tmp_path / "clean")) == 0
    need = sum(
        -(-p.stat().st_size // 4096) * 4096 for p in (tmp_path / "clean").rglob("*") if p.is_file()
    )
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, need):
        pytest.skip(
            "cannot mount a tmpfs here (needs root): the simulated full disk above still runs"
        )
    named = set()
    try:
        for k in range(1, 10):
            subprocess.run(["umount", str(disk)], check=True)
            assert _mount_tmpfs(disk, need * k // 10 // 4096 * 4096)
            out = disk / "run"
            capsys.readouterr()
            code = cli.main(_args(tiny_model_dir, data, out))
            err = capsys.readouterr().err
            if code != 0:
                assert code == 1 and "No space left on device" in err and str(out) in err, err
                named.add(
                    "shard" if ".parquet.tmp" in err else "marker" if ".done" in err else "output"
                )
            for marker in out.glob("passes/*/shard-*.done"):
                shard = marker.with_suffix(".parquet")
                assert (
                    hashlib.sha256(shard.read_bytes()).hexdigest()
                    == json.loads(marker.read_text())["sha256"]
                )
            assert _mount_tmpfs(disk, 4 * need)  # the disk has room again: resume
            assert cli.main(_args(tiny_model_dir, data, out)) == 0
            assert _scores(out) == _scores(tmp_path / "clean")
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert named == {"shard", "marker", "output"}, named


def test_an_output_folder_that_cannot_be_written_is_named(tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = cli.main(_args(tiny_model_dir, _data(tmp_path / "d.jsonl", ROWS[:4]), blocker / "run"))
    err = capsys.readouterr().err
    assert code == 1 and str(blocker) in err and "Traceback" not in err


def test_a_read_only_output_folder_is_named(tiny_model_dir, tmp_path, capsys):
    """A folder without write permission; as root (who may write anyway) a read-only mount."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        reason = "Permission denied"
    elif (
        _mount_tmpfs(ro, 1 << 20)
        and subprocess.run(["mount", "-o", "remount,ro", str(ro)]).returncode == 0
    ):
        reason = "Read-only file system"
    else:
        pytest.skip("running as root without the right to mount: root may write into any folder")
    try:
        code = cli.main(_args(tiny_model_dir, _data(tmp_path / "d.jsonl", ROWS[:4]), ro / "run"))
    finally:
        if os.geteuid() != 0:
            ro.chmod(0o755)
        else:
            subprocess.run(["umount", str(ro)], capture_output=True)
    err = capsys.readouterr().err
    assert code == 1 and reason in err and str(ro / "run") in err, err


def test_a_crash_between_a_shard_and_its_marker_redoes_that_shard(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """The third shard is renamed into place, then the process dies before its marker: the rerun
    deletes it (and a half-written temp file) and scores its rows again, once."""
    data = _data(tmp_path / "d.jsonl", ROWS)
    assert cli.main(_args(tiny_model_dir, data, tmp_path / "clean")) == 0
    out = tmp_path / "crashed"
    real, markers = cache.write_atomic, []

    def atomic_write(path, payload):
        if path.suffix == ".done":
            markers.append(path)
            if len(markers) == 3:
                raise KeyboardInterrupt  # stands in for a kill right after the rename
        real(path, payload)

    with monkeypatch.context() as m:
        m.setattr(cache, "write_atomic", atomic_write)
        assert cli.main(_args(tiny_model_dir, data, out)) == 130
    orphan = markers[2].with_suffix(".parquet")
    assert orphan.exists() and not markers[2].exists()
    (orphan.parent / "shard-halfwritten.parquet.tmp").write_bytes(b"PAR1 half")
    capsys.readouterr()
    assert cli.main(_args(tiny_model_dir, data, out)) == 0
    summary = capsys.readouterr().out
    assert "8 reused from cache, 1 unfinished shards redone" in summary
    assert not orphan.exists() and not list(out.glob("passes/*/*.tmp"))
    ids = [
        i
        for p in out.glob("passes/cond*/shard-*.parquet")
        for i in pq.read_table(p).column("id").to_pylist()
    ]
    assert len(ids) == len(set(ids)) == len(ROWS)
    assert _scores(out) == _scores(tmp_path / "clean")


def test_resume_refuses_a_changed_model_template_or_input(tiny_model_dir, tmp_path, capsys):
    data = _data(tmp_path / "d.jsonl", ROWS[:8])
    out = tmp_path / "run"
    t1, t2 = "--template=Q: {instruction}\nA: ", "--template=Question: {instruction}\nAnswer: "
    assert cli.main(_args(tiny_model_dir, data, out, t1)) == 0
    other_model = tmp_path / "other-model"
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    make_model(tok, seed=1).save_pretrained(other_model)
    tok.save_pretrained(other_model)
    changed_data = _data(tmp_path / "d2.jsonl", [*ROWS[:7], ROWS[9]])
    cases = [
        (_args(other_model, data, out, t1), "model.weights_sha256"),
        (_args(tiny_model_dir, data, out, t2), "template_sha256"),
        (_args(tiny_model_dir, changed_data, out, t1), "data_hash"),
    ]
    for args, changed in cases:
        capsys.readouterr()
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert (
            "computed with different inputs" in err and changed in err and "--overwrite" in err
        ), err


# --- subprocesses: real signals ---------------------------------------------------------------


def _sigint_as_at_a_terminal() -> None:
    """A shell that starts a command in the background without job control (`make test &` in a
    script, some CI runners) sets SIGINT to "ignore"; children inherit it, and Python then installs
    no KeyboardInterrupt handler, so the run would rightly go on. The test means Ctrl-C at a
    terminal: give the child SIGINT's default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(tiny_model_dir, data, out) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "thresher.cli",
        *_args(tiny_model_dir, data, out, "--threads", "1", shard_rows=2),
    ]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_at_a_terminal,
    )


def _wait_for_shards(proc: subprocess.Popen, out: Path, n: int) -> None:
    deadline = time.time() + 120
    while (
        time.time() < deadline
        and proc.poll() is None
        and len(list(out.glob("passes/*/shard-*.done"))) < n
    ):
        time.sleep(0.01)
    assert proc.poll() is None, (
        f"the run ended before the signal (exit {proc.returncode}): {proc.stderr.read()}"
    )


@pytest.mark.slow
def test_sigint_sigterm_and_sigkills_keep_finished_shards_and_resume_exactly(
    tiny_model_dir, tmp_path, capsys
):
    """One output folder, interrupted four times in turn (SIGINT, SIGTERM, SIGKILL, SIGKILL), each
    after a few more shards, then rerun to the end: exit codes 130 / 143, finished shards kept,
    nothing lost, nothing twice, and the same scores as an uninterrupted run. The 20-kill
    figures come from bench/reliability.py."""
    data = _data(tmp_path / "d.jsonl", ROWS * 4)  # ids repeat with a suffix: 96 distinct rows
    assert cli.main(_args(tiny_model_dir, data, tmp_path / "clean", shard_rows=2)) == 0
    out = tmp_path / "run"
    for sig, code in [
        (signal.SIGINT, 130),
        (signal.SIGTERM, 143),
        (signal.SIGKILL, -9),
        (signal.SIGKILL, -9),
    ]:
        before = {p.name for p in out.glob("passes/*/shard-*.done")}
        proc = _spawn(tiny_model_dir, data, out)
        _wait_for_shards(proc, out, len(before) + 3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        if sig == signal.SIGINT:
            assert "finished shards are kept" in err
        assert before <= {
            p.name for p in out.glob("passes/*/shard-*.done")
        }  # nothing finished is lost
        assert not (out / "scores.parquet").exists()
    proc = _spawn(tiny_model_dir, data, out)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "reused from cache" in stdout
    for d in out.glob("passes/*"):
        ids = [
            i for p in d.glob("shard-*.parquet") for i in pq.read_table(p).column("id").to_pylist()
        ]
        assert len(ids) == len(set(ids)) == 96, d.name
    assert _scores(out) == _scores(tmp_path / "clean")


@pytest.mark.slow
def test_seeded_sigkills_lose_nothing_and_change_no_score(tmp_path):
    """bench/reliability.py with 5 seeded SIGKILLs at random points, each followed by a rerun:
    rows lost 0, duplicate ids 0, max |delta score| 0 (fp32), subset Jaccard 1.0, kills landed."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "reliability.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(bench),
        "--kills",
        "5",
        "--rows",
        "48",
        "--seed",
        "3",
        "--work-dir",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    figures = {
        line[:21].strip(): line[21:].strip() for line in out.splitlines()[1:]
    }  # "label   value" rows
    assert (
        figures["rows lost"] == "0"
        and figures["duplicate ids"] == "0"
        and figures["max |delta score|"] == "0"
    )
    assert figures["subset Jaccard"].startswith("1.000") and figures["targets"].startswith("met")
    landed = int(figures["kills"].split()[0])
    assert landed >= 3, out
