"""`thresher eval` on the command line: several models, errors that name what was given."""

from __future__ import annotations

import errno

import pytest

from thresher import evaluation
from thresher.cli import _parser, main


def test_eval_help_ends_with_examples_and_takes_several_models(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "--help"])
    out = capsys.readouterr().out.rstrip()
    assert out[out.rindex("examples:") :].count("thresher eval") >= 4
    a = _parser().parse_args(["eval", "base", "runs/a", "--tasks", "lm_eval:x"])
    assert a.targets == ["base", "runs/a"] and a.lm_eval_metric is None


def test_a_hub_id_offline_says_what_is_missing_not_to_free_space(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["eval", "acme/tiny", "--tasks", "lm_eval:tmc"]) == 2
    err = capsys.readouterr().err
    assert "'acme/tiny'" in err and "not in the local hub cache" in err
    assert "free space" not in err.lower()


@pytest.mark.parametrize(
    ("error", "expected", "unexpected"),
    [
        (
            ConnectionError("Cannot reach the hub"),
            "Given model acme/tiny; tasks lm_eval:gsm8k: what is not stored locally was looked for on the hub",
            "free space",
        ),
        (
            OSError("We couldn't connect to the hub to load the files"),
            "(given model acme/tiny; tasks lm_eval:gsm8k)",
            "free space",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out.json"),
            "No space left on device: out.json: the disk is full. Free space",
            "hub",
        ),
    ],
)
def test_os_errors_advise_on_disks_only_when_a_disk_failed(
    monkeypatch, capsys, error, expected, unexpected
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(evaluation, "evaluate_models", fail)
    assert main(["eval", "acme/tiny", "--tasks", "lm_eval:gsm8k"]) == 1
    err = capsys.readouterr().err
    assert expected in err and unexpected not in err
