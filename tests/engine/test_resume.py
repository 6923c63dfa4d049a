"""A scoring subprocess killed with SIGKILL midway resumes with nothing lost and nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from tiny import FAMILIES

pytestmark = pytest.mark.slow


def _cmd(model_dir, data, out):
    return [
        sys.executable,
        "-m",
        "thresher.cli",
        "score",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "score.shard_rows=4",
    ]


def _scores(out):
    t = pq.read_table(out / "scores.parquet").to_pydict()
    return dict(zip(t["id"], t["ifd"], strict=True)), t["id"]


def test_sigkill_midway_then_resume(tmp_path):
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    model_dir = tmp_path / "model"
    make_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    rows = [
        {
            "instruction": f"Add {i} and {i * 3 % 17}.",
            "output": f"{i} + {i * 3 % 17} = {i + i * 3 % 17}. " * (1 + i % 4),
        }
        for i in range(600)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}

    clean = tmp_path / "clean"
    subprocess.run(_cmd(model_dir, data, clean), check=True, env=env, capture_output=True)
    want, _ = _scores(clean)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(model_dir, data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("passes/*/shard-*.done"))) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(list(out.glob("passes/*/shard-*.done")))
    assert committed > 0 and not (out / "scores.parquet").exists()

    res = subprocess.run(
        _cmd(model_dir, data, out), check=True, env=env, capture_output=True, text=True
    )
    assert "reused from cache" in res.stdout
    got, ids = _scores(out)
    assert len(ids) == len(set(ids)) == len(rows)  # no duplicate, no missing id
    assert got.keys() == want.keys()
    np.testing.assert_array_equal([got[k] for k in want], [want[k] for k in want])
