"""The Ray engine: same shards, same fp32 scores, same selection as the local engine; runs
started on one engine resume on the other. Skipped when Ray is not installed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.config import RunConfig
from thresher.engine.ray import RayOptions, check_reachable
from thresher.pipeline import run, validate
from thresher.templates import NoiseKey, Rendered
from tiny import FAMILIES

ROWS = [
    {
        "instruction": f"Add {i} and {i * 7 % 13}.",
        "input": "" if i % 3 else "carefully",
        "output": f"{i} + {i * 7 % 13} = {i + i * 7 % 13}. " * (1 + i % 3),
    }
    for i in range(40)
]
ROWS.append({"instruction": "Say nothing.", "output": ""})  # rejected by the reader: empty_response


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module: two worker CPUs, like the 2-core CI machine."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("ray-job")
    make_tok, make_model = FAMILIES["chatml"]
    tok = make_tok()
    make_model(tok).save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def _cfg(job, out, engine) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name = str(job / "model")
    cfg.data.path = str(job / "data.jsonl")
    cfg.method.name = "ifd"
    cfg.output.dir = str(out)
    cfg.score.progress = False
    cfg.score.shard_rows = 6
    cfg.score.engine = engine
    cfg.score.ray_concurrency = 2
    cfg.select.fraction = 0.25
    return cfg


def _shards(out):
    """Every committed shard's rows, keyed by their sorted ids (file names are random)."""
    out_ = {}
    for p in sorted(out.glob("passes/*/shard-*.parquet")):
        t = pq.read_table(p)
        out_[(p.parent.name, tuple(t.column("id").to_pylist()))] = t
    return out_


def test_rendered_survives_the_trip_to_a_worker():
    r = Rendered(
        ids=(1, 5, 9, 2),
        scored=(2, 4),
        spans={"prompt": (1, 2), "response": (2, 4)},
        n_prompt_tokens=1,
        n_response_tokens=2,
        truncated="prompt",
        status="ok",
    )
    assert Rendered.from_json(r.to_json()) == r
    noisy = dataclasses.replace(r, noise=NoiseKey("s1", 4, 2))  # a noisy pass's row keeps its key
    assert Rendered.from_json(noisy.to_json()) == noisy


def test_engine_ray_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    cfg = RunConfig()
    cfg.data.path = "data.jsonl"
    cfg.score.engine = "ray"
    with pytest.raises(
        ImportError, match=r"score.engine=ray needs Ray Data.*pip install 'thresher\[ray\]'"
    ):
        validate(cfg, need_budget=False)


def test_ray_options_reject_nonsense():
    with pytest.raises(ValueError, match="ray_concurrency=0"):
        RayOptions(concurrency=0)
    with pytest.raises(ValueError, match="ray_num_gpus=-1"):
        RayOptions(num_gpus=-1)


def test_an_unreachable_ray_address_fails_fast_and_says_what_to_do():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "auto", "local", ""):
            check_reachable(address)  # something listens, or the address is Ray's to resolve
    with pytest.raises(
        RuntimeError,
        match=rf"RAY_ADDRESS='ray://127.0.0.1:{port}': can't connect to 127.0.0.1:{port}.*unset RAY_ADDRESS",
    ):
        check_reachable(f"ray://127.0.0.1:{port}")  # closed now


@pytest.fixture(scope="module")
def local_run(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    result, sel, _ = run(_cfg(job, out, "local"))
    return out, result, sel


@pytest.mark.slow
def test_local_and_ray_give_identical_scores_shards_and_selection(
    ray_local, job, local_run, tmp_path
):
    local_out, local, sel_local = local_run
    remote, sel_ray, manifest = run(_cfg(job, tmp_path / "ray", "ray"))
    assert manifest["config"]["score"]["engine"] == "ray"
    assert remote.table.ids == local.table.ids and remote.table.status == local.table.status
    for name in ("ifd", "loss_cond", "loss_uncond"):  # fp32, bit for bit
        np.testing.assert_array_equal(remote.table.columns[name], local.table.columns[name])
    assert sel_ray.ids == sel_local.ids
    a, b = _shards(local_out), _shards(tmp_path / "ray")
    assert a.keys() == b.keys()  # the same (length, id) shard boundaries
    for k in a:
        assert a[k].equals(b[k]), k
    assert remote.counts == local.counts and remote.counts["rejected"] == 1


@pytest.mark.slow
def test_a_run_started_on_one_engine_resumes_on_the_other(ray_local, job, local_run, tmp_path):
    local_out, want, _ = local_run
    out = tmp_path / "mixed"
    shutil.copytree(local_out / "passes", out / "passes")
    # keep 3 of the 7 committed shards per pass, as if the local run had been killed
    for d in out.glob("passes/*"):
        for p in sorted(d.glob("shard-*.done"))[3:]:
            p.with_suffix(".parquet").unlink()
            p.unlink()
    kept = {p.name for p in out.glob("passes/*/shard-*.parquet")}
    cfg = _cfg(job, out, "ray")
    cfg.score.ray_concurrency = 1  # ours: one actor per pass keeps this test's start-up short
    got, _, manifest = run(cfg)
    assert kept <= {
        p.name for p in out.glob("passes/*/shard-*.parquet")
    }  # finished shards untouched
    for p in manifest["passes"].values():
        assert p["reused"] + p["scored"] == len(ROWS) - 1 and p["reused"] > 0 and p["scored"] > 0
    ids = (
        pa.concat_tables([pq.read_table(p) for p in out.glob("passes/cond*/shard-*.parquet")])
        .column("id")
        .to_pylist()
    )
    assert len(ids) == len(set(ids)) == len(ROWS) - 1  # nothing lost, nothing twice
    np.testing.assert_array_equal(got.table.columns["ifd"], want.table.columns["ifd"])


@pytest.mark.slow
def test_tshirt_reproduce_noise_is_the_same_on_ray(ray_local, job, tmp_path):
    """The reference noise stream is replayed on the driver and each row's generator state
    travels to the workers with it: the Ray engine draws the local engine's values."""
    got = {}
    for engine in ("local", "ray"):
        cfg = _cfg(job, tmp_path / engine, engine)
        cfg.method.name, cfg.method.reproduce = "tshirt", True
        cfg.method.params = {"copies": 2}
        cfg.data.limit, cfg.score.ray_concurrency = 12, 1
        result, _, _ = run(cfg)
        got[engine] = result.table
    for name in ("sifd_mean", "sifd_std", "avg_noisy_ifd"):
        np.testing.assert_array_equal(got["ray"].columns[name], got["local"].columns[name])
