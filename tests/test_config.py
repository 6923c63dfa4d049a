"""Configs: YAML, dotted overrides, unknown keys with suggestions, budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from thresher.config import RunConfig, override

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_overrides_parse_yaml_scalars():
    cfg = RunConfig()
    override(cfg, "select.fraction=0.05")
    override(cfg, "data.path=a b.json")
    override(cfg, "method.params.max_length=1024")
    override(cfg, "method.params.template='{instruction}'")  # YAML: quote a format string
    override(cfg, "model.threads=null")
    assert cfg.select.fraction == 0.05 and cfg.data.path == "a b.json"
    assert cfg.method.params == {"max_length": 1024, "template": "{instruction}"}
    assert cfg.model.threads is None


def test_unknown_keys_suggest_near_matches():
    with pytest.raises(ValueError, match="did you mean 'fraction'"):
        override(RunConfig(), "select.fracton=0.1")
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        RunConfig.from_dict({"modle": {"name": "x"}})
    with pytest.raises(ValueError, match="not of the form key=value"):
        override(RunConfig(), "select.fraction")


def test_budget_needs_exactly_one_of_fraction_and_count():
    cfg = RunConfig()
    with pytest.raises(ValueError, match="exactly one"):
        cfg.select.budget()
    cfg.select.count = 5
    assert cfg.select.budget() == 5
    cfg.select.fraction = 0.1
    with pytest.raises(ValueError, match="exactly one"):
        cfg.select.budget()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path, tmp_path):
    from thresher.pipeline import validate

    raw = yaml.safe_load(path.read_text())
    assert raw["method"]["name"] == path.stem
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    extra = (
        [f"method.params.target=[{data}]"] if path.stem == "nait" else []
    )  # nait needs an in-domain file
    cfg = RunConfig.from_yaml(path, [f"data.path={data}", *extra])
    method = validate(cfg)
    assert method.name == path.stem
