"""`thresher validate` is a dry run: it reads the data, tokenizes every row for every pass, finds
the passes the output folder holds and estimates the cost, loading the tokenizer and config but
never the weights (unless `--probe` asks for a timed probe); `thresher run` prints the same
estimate as it starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers

from thresher import dryrun, models
from thresher.cli import main
from thresher.data import read
from thresher.passes import PassSpec

CORPUS = Path(__file__).parent / "data" / "bad_input.jsonl"
ROWS = [
    {"instruction": f"Add {i} and {2 * i}.", "output": f"{i} + {2 * i} = {3 * i}. " * (1 + i % 3)}
    for i in range(12)
]


@pytest.fixture
def no_weights(monkeypatch):
    """Loading a model's weights fails: what validate does must not need them."""

    def refuse(*args, **kwargs):
        raise AssertionError("validate loaded model weights")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def _data(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _validate(tiny_model_dir, data, *extra: str) -> list[str]:
    argv = ["validate", "--data", str(data), "--model", str(tiny_model_dir), *extra]
    return argv


def test_validate_reads_the_bad_rows_with_their_lines_and_loads_no_weights(
    tiny_model_dir, no_weights, capsys
):
    argv = _validate(tiny_model_dir, CORPUS, "--format", "alpaca", "--method", "ifd")
    argv += ["--max-length", "128", "method.params.truncation=right"]
    assert main([*argv, "score.max_rejected_fraction=1.0"]) == 0
    out = capsys.readouterr().out
    assert "data      " + str(CORPUS) + ": alpaca (given)" in out
    assert "rows      21 read = 6 readable + 15 rejected reading" in out
    for reason in (
        "malformed_json 2 (lines 11, 21)",
        "bad_utf8 2 (lines 10, 14)",
        "empty_response 2 (lines 3, 7)",
        "missing_field:output 2 (lines 4, 6)",
        "duplicate_id 1 (line 12)",
        "format_mismatch:sharegpt 1 (line 13)",
    ):
        assert reason in out, reason
    # read, then rejected by the template: the prompt of line 8 leaves no room for the response
    assert "rejected  by the cond pass: response_truncated_away 1 (line 8)" in out
    assert "tokenizer and config only, no weights loaded" in out
    assert "truncation touches 2 rows" in out  # line 8 (rejected) and line 9 (response cut)
    assert "output <- 'output'" in out and "id <- 'id'" in out and "not read: conversations" in out
    # the file is mostly bad: with the default threshold the run would stop, so validate fails
    assert main(argv) == 2
    assert "the run would stop: about 16 of 21 rows" in capsys.readouterr().out


def test_token_percentiles_and_the_estimate_follow_the_rendered_rows(
    tiny_model_dir, tmp_path, no_weights, capsys
):
    data = _data(tmp_path / "d.jsonl", ROWS)
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.data.path, cfg.model.name, cfg.method.name = str(data), str(tiny_model_dir), "ifd"
    cfg.output.dir = str(tmp_path / "out")
    plan = dryrun.plan(cfg)
    from thresher.templates import Renderer

    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = read(str(data)).samples
    for p in plan.passes:
        want = [len(Renderer(tok, p.spec).render(s).ids) for s in samples]
        assert p.lengths.tolist() == want and p.todo.all()
    cost = plan.cost
    assert cost.tokens == sum(p.lengths.sum() for p in plan.passes)
    assert cost.flops == pytest.approx(sum(p.flops(plan.shape) for p in plan.passes))
    assert cost.seconds == pytest.approx(cost.flops / cost.rate) and cost.rate > 0
    assert main(_validate(tiny_model_dir, data, "--method", "ifd")) == 0
    out = capsys.readouterr().out
    cond = plan.passes[0].lengths
    row = next(line for line in out.splitlines() if line.startswith("  cond cond.alpaca"))
    assert row.split()[2:7] == [
        "12",
        f"{np.percentile(cond, 50):.0f}",
        f"{np.percentile(cond, 90):.0f}",
        f"{np.percentile(cond, 99):.0f}",
        str(cond.max()),
    ]
    assert f"estimate  {cost.tokens:,} forward tokens in 2 passes still to run" in out


def test_validate_streams_the_rows_and_keeps_none_of_them(tiny_model_dir, tmp_path, monkeypatch):
    """The eager reader is never called, and of the samples the stream has yielded at most the
    first row (a demonstration for the last) and the one before the current are still alive."""
    import weakref

    from thresher import data as data_mod
    from thresher import pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("validate read every row into memory")

    monkeypatch.setattr(data_mod, "read", refuse)
    monkeypatch.setattr(pipeline, "read_data", refuse)
    streams, alive = pipeline.stream_data, []

    class watched:
        def __init__(self, cfg):
            self.stream = streams(cfg)

        def __getattr__(self, name):  # format, rows_read, ... once iterated
            return getattr(self.stream, name)

        def __iter__(self):
            refs: list[weakref.ref] = []
            alive.append([])
            for item in self.stream:  # no cycles in a Sample: refcounting frees it at once
                alive[-1].append(sum(r() is not None for r in refs))
                refs.append(weakref.ref(item))
                yield item

    monkeypatch.setattr(pipeline, "stream_data", watched)
    data = _data(tmp_path / "d.jsonl", ROWS * 5)  # 60 rows, 48 of them repeats with ".k" ids
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.data.path, cfg.model.name, cfg.method.name = str(data), str(tiny_model_dir), "miwv"
    cfg.output.dir = str(tmp_path / "out")
    plan = dryrun.plan(cfg, probe=1)
    assert plan.read.readable == 60 and [len(a) for a in alive] == [60, 60, 60]
    counts, render, probe = (max(a) for a in alive)
    # the probe's read keeps its row and that row's demonstration for each of the two passes
    # (the reading loop still holds the row before the current one as its loop variable)
    assert counts <= 1 and render <= 2 and probe <= 4, (counts, render, probe)
    oneshot = next(p for p in plan.passes if p.spec.view in dryrun.DEMO_VIEWS)
    ids = [s.id for s in data_mod.DataStream(str(data))]
    assert oneshot.ids == ids and oneshot.demos == ids[1:] + ids[:1]
    assert plan.cost.how.startswith("timed probe:")


def test_run_start_renders_rows_spread_over_the_file(tiny_model_dir, tmp_path):
    data = _data(tmp_path / "d.jsonl", ROWS)
    from thresher.config import RunConfig

    cfg = RunConfig()
    cfg.data.path, cfg.model.name, cfg.method.name = str(data), str(tiny_model_dir), "ifd"
    plan = dryrun.plan(cfg, rows=4)
    ids = [s.id for s in read(str(data)).samples]
    assert plan.rendered == 4 and plan.passes[0].ids == [ids[k] for k in (0, 3, 7, 11)]
    assert plan.scale == 3.0


def test_the_flops_of_a_pass_count_the_body_the_scored_head_and_attention():
    shape = dryrun.ModelShape(params=0, body=1000, vocab=50, width=8, layers=2, ffn=32)
    p = dryrun.PassPlan(
        "cond",
        PassSpec(model="m", fields=("logprob",)),
        "cond.alpaca",
        1,
        np.array([3, 5]),
        np.array([1, 2]),
        ["a", "b"],
        ["", ""],
        {},
        dryrun.Counter(),
        set(),
    )
    body, head, attention = 2 * 1000 * 8, 2 * 50 * 8 * 3, 2 * 2 * 8 * (9 + 25)
    assert p.flops(shape) == body + head + attention
    assert p.flops(shape, np.array([False, True])) == 2 * 1000 * 5 + 2 * 50 * 8 * 2 + 2 * 2 * 8 * 25
    tokens_only = dryrun.PassPlan(**{**p.__dict__, "spec": PassSpec(model="m", fields=())})
    assert tokens_only.flops(shape) == 0


def test_the_model_shape_counts_the_parameters_without_weights(tiny_model_dir):
    real = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shape = dryrun.model_shape(real.config)
    embed = real.get_input_embeddings().weight
    assert shape.params == sum(p.numel() for p in real.parameters())
    head = real.get_output_embeddings().weight
    untied = 0 if head is embed else head.numel()  # the tiny Llama has its own LM head
    assert untied and shape.body == shape.params - embed.numel() - untied
    assert (shape.vocab, shape.width, shape.layers) == (
        embed.shape[0],
        embed.shape[1],
        real.config.num_hidden_layers,
    )


def test_validate_names_the_passes_stored_in_out(tiny_model_dir, tmp_path, capsys):
    from thresher.config import RunConfig
    from thresher.pipeline import run

    data = _data(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out"
    cfg = RunConfig()
    cfg.data.path, cfg.model.name, cfg.method.name = str(data), str(tiny_model_dir), "ifd"
    cfg.output.dir, cfg.score.progress, cfg.select.count = str(out), False, 3
    run(cfg)
    base = _validate(tiny_model_dir, data, "--out", str(out))
    assert main([*base, "--method", "ppl"]) == 0  # ppl reads the cond pass ifd stored
    text = capsys.readouterr().out
    assert f"pass      cond cond.alpaca: stored in {out / 'passes' / 'cond.alpaca'}" in text
    assert "(same spec and data)" in text and "12 of 12 rows done" in text
    assert "estimate  no forward pass to run: every one is stored in" in text
    assert main([*base, "--method", "instructdiff"]) == 0  # its fit step trains a calibrated copy
    text = capsys.readouterr().out
    assert "pass      cond cond.alpaca: stored in" in text
    assert "pass      calibrated cond.alpaca: runs on a model the fit step makes" in text
    assert "not included: instructdiff's fit step" in text
    assert main([*base, "--method", "superfiltering"]) == 0  # plain template: other passes
    assert "pass      cond cond.plain: not stored; 12 rows to score" in capsys.readouterr().out
    changed = _data(tmp_path / "d.jsonl", ROWS[:-1])
    assert main([*_validate(tiny_model_dir, changed, "--out", str(out)), "--method", "ifd"]) == 0
    text = capsys.readouterr().out
    assert "holds this pass computed with other data_hash: the run will refuse it" in text


def test_a_probe_times_the_real_model_on_the_rows_asked(tiny_model_dir, tmp_path, capsys):
    data = _data(tmp_path / "d.jsonl", ROWS)
    assert main(_validate(tiny_model_dir, data, "--method", "ifd", "--probe", "3")) == 0
    assert "(timed probe: 6 rows scored in" in capsys.readouterr().out  # 3 rows x 2 passes


def test_run_prints_the_estimate_as_it_starts(tiny_model_dir, tmp_path, capsys):
    data = _data(tmp_path / "d.jsonl", ROWS)
    argv = ["run", "--data", str(data), "--model", str(tiny_model_dir), "--method", "ifd"]
    assert main([*argv, "--count", "2", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimate  ") and out.index("estimate") < out.index("selected  2")


def test_a_probe_takes_runs_of_similar_lengths_from_short_to_long():
    lengths = np.random.default_rng(0).permutation(100)  # row i has length rank lengths[i]
    pick = dryrun.probe_rows(lengths, 8)
    ranks = sorted(lengths[pick].tolist())
    assert len(set(pick.tolist())) == 8
    assert ranks == [11, 12, 36, 37, 61, 62, 86, 87]  # two consecutive ranks in each quarter
    assert sorted(dryrun.probe_rows(lengths, 500).tolist()) == list(range(100))
