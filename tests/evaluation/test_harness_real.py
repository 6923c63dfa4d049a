"""The real lm-evaluation-harness (requirements/eval.txt) on a tiny local task folder and the
tiny uniform model: a multiple-choice task and a generate_until task with two filters.

The uniform model (every logit 0) gives closed forms: every continuation token has log-prob
-ln V, so the choice with the fewest tokens wins (ties: the first); greedy generation yields no
digit, so each regex filter returns its `fallback`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from thresher.cli import main
from thresher.evaluation import MCItem, harness, multiple_choice
from tiny import FAMILIES, uniform_llama

pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed: pip install -r requirements/eval.txt"
)
pytestmark = pytest.mark.slow  # a few seconds: lm-eval builds its model and datasets

LONG = "the quick brown fox jumps over the lazy dog"
MC_ROWS = [  # (choices, answer)
    (["yes", LONG], 0),  # the shorter choice wins: right
    ([LONG, "yes"], 0),  # wrong
    (["yes", "yes"], 0),  # a tie goes to the first: right
    (["yes", "yes"], 1),  # wrong
    ([LONG, "no"], 1),  # right
]
GEN_ANSWERS = ["0", "0", "7"]

MC_YAML = """task: tmc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
GEN_YAML = """task: tgen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 4
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        fallback: "0"
      - function: take_first
  - name: flexible-extract
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        group_select: -1
        fallback: "7"
      - function: take_first
"""


@pytest.fixture(scope="module")
def uniform_dir(tmp_path_factory) -> Path:
    tok = FAMILIES["chatml"][0]()
    d = tmp_path_factory.mktemp("uniform-llama")
    uniform_llama(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def tasks(tmp_path) -> Path:
    """tasks/ with tmc.yaml and tgen.yaml reading JSON lines from data/ (the test's tmp dir)."""
    data, folder = tmp_path / "data", tmp_path / "tasks"
    data.mkdir()
    folder.mkdir()
    mc = [{"question": f"Pick {k}.", "choices": c, "answer": a} for k, (c, a) in enumerate(MC_ROWS)]
    gen = [{"question": f"What is {k}?", "answer": a} for k, a in enumerate(GEN_ANSWERS)]
    for name, rows, yaml in (("mc", mc, MC_YAML), ("gen", gen, GEN_YAML)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"t{name}.yaml").write_text(yaml.format(data=data / f"{name}.jsonl"))
    return folder


def expected_acc() -> float:
    tok = FAMILIES["chatml"][0]()
    hits = []
    for choices, answer in MC_ROWS:
        n = [len(tok(" " + c, add_special_tokens=False).input_ids) for c in choices]
        hits.append(n.index(min(n)) == answer)
    return sum(hits) / len(hits)


def test_real_harness_metrics_filters_and_stderr(uniform_dir, tasks):
    rs = harness.lm_eval_tasks(str(uniform_dir), ["tmc", "tgen"], limit=None, include=str(tasks))
    by = {r.task: r for r in rs}
    assert sorted(by) == ["lm_eval:tgen", "lm_eval:tmc"]
    mc, gen = by["lm_eval:tmc"], by["lm_eval:tgen"]
    p, n = expected_acc(), len(MC_ROWS)
    assert p == 0.6
    assert set(mc.metrics) == {"acc", "acc_norm"} and mc.headline == "acc"
    assert mc.metrics["acc"] == pytest.approx(p)
    assert mc.stderr["acc"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert mc.evaluated == n and not mc.skipped
    assert mc.higher_is_better == {"acc": True, "acc_norm": True}
    # each filter keeps its own score: the strict one falls back to "0", the other to "7"
    assert gen.metrics == pytest.approx(
        {"exact_match[strict-match]": 2 / 3, "exact_match[flexible-extract]": 1 / 3}
    )
    assert gen.headline == "exact_match[strict-match]" and gen.evaluated == 3
    assert set(gen.stderr) == set(gen.metrics)


def test_thresher_mc_and_the_harness_agree_on_the_same_items(uniform_dir, tasks):
    from thresher.models import load_model

    lm = load_model(str(uniform_dir))
    items = [MCItem(str(k), f"Pick {k}.", tuple(c), a) for k, (c, a) in enumerate(MC_ROWS)]
    ours = multiple_choice(lm, items)[0]["acc"]
    [theirs] = harness.lm_eval_tasks(str(uniform_dir), ["tmc"], limit=None, include=str(tasks))
    assert ours == pytest.approx(theirs.metrics["acc"]) == pytest.approx(expected_acc())


def test_eval_command_compares_two_models_on_real_lm_eval_tasks(
    uniform_dir, tiny_model_dir, tasks, tmp_path, capsys
):
    out = tmp_path / "eval.json"
    argv = ["eval", str(uniform_dir), str(tiny_model_dir), "--tasks", "lm_eval:tmc,tgen"]
    argv += ["--lm-eval-include", str(tasks), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"lm_eval:tmc: difference from {uniform_dir}" in printed
    assert "sqrt(se_model² + se_baseline²)" in printed
    record = json.loads(out.read_text())
    assert [m["folder"] for m in record["models"]] == [str(uniform_dir), str(tiny_model_dir)]
    [tmc, tgen] = record["comparisons"]
    assert tmc["task"] == "lm_eval:tmc" and tgen["task"] == "lm_eval:tgen"
    rows = {(r["metric"], r["model"]): r for r in tgen["rows"]}
    assert len(rows) == 4  # two filters x two models
    base = rows["exact_match[strict-match]", str(uniform_dir)]
    other = rows["exact_match[strict-match]", str(tiny_model_dir)]
    assert base["diff"] is None and other["diff"] == pytest.approx(other["value"] - base["value"])
    assert other["diff_stderr"] == pytest.approx(math.hypot(other["stderr"], base["stderr"]))
