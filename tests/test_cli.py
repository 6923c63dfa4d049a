"""The command line: help, ls, validate (no model loads), errors with suggestions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from thresher.cli import _parser, main

COMMANDS = ["ls", "validate", "score", "select", "run", "demo"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_ends_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args([command, "--help"] if command else ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out.rstrip()
    examples = out[out.rindex("examples:") :]
    assert examples.count("thresher") >= 2 and out.endswith(examples)


def test_ls_methods_lists_papers_passes_and_defaults(capsys):
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("ifd", "superfiltering", "ppl", "entropy", "longest", "random"):
        assert f"  {name} " in out
    assert "Cherry LLM" in out and '"max_length": 512' in out and "gpt2 (124M)" in out


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    return p


def test_validate_suggests_near_matches_before_loading_a_model(data, capsys):
    assert main(["validate", "--data", str(data), "--method", "superfilterng"]) == 2
    assert "did you mean 'superfiltering'" in capsys.readouterr().err
    assert main(["validate", "--data", str(data), "--model", "smollm-135m"]) == 2
    assert "smollm2-135m" in capsys.readouterr().err
    assert main(["validate", "--data", str(data), "method.params.max_lenght=5"]) == 2
    assert "did you mean 'max_length'" in capsys.readouterr().err
    assert main(["validate", "--data", str(data), "--template", "{instruction} {output}"]) == 2
    assert "unknown fields" in capsys.readouterr().err
    assert (
        main(["validate", "--data", str(data), "--method", "ppl", "method.params.variant=median"])
        == 2
    )
    assert "variant" in capsys.readouterr().err


def test_validate_ok_prints_the_plan(data, tiny_model_dir, capsys):
    argv = ["validate", "--data", str(data), "--method", "ifd", "--max-length", "256"]
    assert main([*argv, "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("method    ifd with")
        and '"max_length": 256' in out
        and "cond=cond/alpaca" in out
        and "rows      1 read = 1 readable + 0 rejected reading" in out
    )


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--data",
                str(tmp_path / "nope.json"),
                "--method",
                "random",
                "--count",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "nope.json" in capsys.readouterr().err


def test_random_runs_without_a_model(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert (
        main(["run", "--data", str(data), "--method", "random", "--count", "1", "--out", str(out)])
        == 0
    )
    text = capsys.readouterr().out
    assert "1 read = 1 scored + 0 rejected" in text and "selected  1 of 1 requested" in text
    assert json.loads((out / "selected.jsonl").read_text()) == {"instruction": "a", "output": "b"}


def test_validate_rejects_what_would_only_fail_later(data, tmp_path, capsys):
    """A column or role typo, a missing file, an impossible budget and a misspelt choice all fail
    in `validate`, before any model loads, each naming what was given and what is expected."""
    cases = [
        (["--column", "outptu=answer"], "did you mean 'output'"),
        (["--role", "bot=assistent"], "roles['bot'] = 'assistent'"),
        (["--fraction", "2.0"], "outside (0, 1]"),
        (["method.params.truncation=prompt-first"], "did you mean 'prompt_first'"),
        (["--format", "sharegtp"], "did you mean 'sharegpt'"),
    ]
    for extra, message in cases:
        assert main(["validate", "--data", str(data), "--method", "ifd", *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert (
        main(["validate", "--data", str(tmp_path / "missing" / "d.jsonl"), "--method", "ifd"]) == 2
    )
    assert "no such file or folder" in capsys.readouterr().err


def test_overrides_after_target_files_are_overrides(data, tmp_path, capsys):
    from thresher.cli import config_from_args

    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = config_from_args(
        _parser().parse_args(
            [
                "run",
                "--data",
                str(data),
                "--method",
                "nait",
                "--target",
                str(target),
                "select.count=5",
            ]
        )
    )
    assert cfg.method.params["target"] == [str(target)] and cfg.select.count == 5


def test_capture_flag_sets_the_config(data):
    from thresher.cli import config_from_args

    assert (
        config_from_args(
            _parser().parse_args(
                ["run", "--data", str(data), "--method", "ifd", "--capture", "nait"]
            )
        ).score.capture
        == "nait"
    )
    assert (
        config_from_args(
            _parser().parse_args(["run", "--data", str(data), "--method", "ifd"])
        ).score.capture
        is None
    )


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["ls"], ["ls", "methods"], ["validate", "--help"]])
def test_listing_and_help_import_no_torch(argv):
    """Listing and help print in well under a second: they import neither torch nor a backend."""
    code = (
        "import sys\nfrom thresher import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    """`thresher ls methods | head`: the reader is gone before thresher writes; exit 0, no message."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "thresher.cli", "ls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the only read end: every write of the child now meets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == ""


def test_path_typos_are_missing_files_with_near_matches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata.jsonl").write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    (tmp_path / "models" / "ifd-lora").mkdir(parents=True)
    assert main(["validate", "--data", "mydata", "--method", "random"]) == 2
    err = capsys.readouterr().err
    assert "data 'mydata': no such file or folder" in err and "'mydata.jsonl'" in err
    assert main(["validate", "--data", "mydata.jsonl", "--model", "models/ifd"]) == 2
    err = capsys.readouterr().err
    assert "model 'models/ifd': no such file or folder" in err and "'models/ifd-lora'" in err


def test_os_errors_name_the_path_and_only_blame_the_disk_when_it_is_full(tmp_path):
    import errno

    from thresher.cli import os_error_message

    a = _parser().parse_args(["run", "--data", "d.jsonl", "--out", str(tmp_path / "out")])
    model_file = str(tmp_path / "model" / "model.safetensors")
    denied = os_error_message(OSError(errno.EACCES, "Permission denied", model_file), a)
    assert model_file in denied and "fix the permissions of that path" in denied
    assert "free space" not in denied and "shards" not in denied
    shard = str(tmp_path / "out" / "passes" / "x.parquet")
    in_out = os_error_message(OSError(errno.EACCES, "Permission denied", shard), a)
    assert "output folder" in in_out and "rerun the same command to resume" in in_out
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", shard), a)
    assert "disk is full" in full and "Free space" in full
    other = os_error_message(OSError(errno.EIO, "Input/output error", model_file), a)
    assert "free space" not in other.lower() and "given data d.jsonl" in other


@pytest.mark.slow
def test_demo_compares_the_methods_that_share_its_passes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(tiny_model_dir), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert text.count("estimate  ") == 1  # printed once, as the run starts
    table = text[text.index("planted defects in each method's 10%") :].splitlines()
    names = [line.split()[0] for line in table[2:9]]
    assert names == ["pool", "ifd", "superfiltering", "ppl", "entropy", "longest", "random"]
    k = int(0.1 * int(table[2].split()[1]))  # 10% of the readable rows, rounded down
    assert table[9].startswith(f"reading: at {k} rows a random draw from this pool lands within")
    assert "not compared" not in text and f"report: {out / 'report.html'}" in text
    # the ifd row counts the defects of the subset written to disk
    written = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    ifd = table[3].split()
    assert ifd[1:3] == [str(len(written)), str(sum(bool(r["meta"]["defect"]) for r in written))]
    # one forward pass of each view: the other methods read what ifd stored
    assert sorted(p.name for p in (out / "passes").iterdir()) == [
        "cond.alpaca",
        "cond.alpaca.tokens",
        "uncond.alpaca",
    ]
