"""The config schema (issue 18): one description -> `quantadv schema`, first checks, editor support."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from quantadv.cli import main
from quantadv.errors import ConfigError
from quantadv.experiments import parse_config
from quantadv.experiments.schema import check_structure, json_schema

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_quantadv_schema_prints_the_committed_schema(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json_schema()
    jsonschema.Draft202012Validator.check_schema(printed)
    # configs/schema.json is what editors point at: it must be the current one
    assert json.loads((ROOT / "configs" / "schema.json").read_text()) == printed, (
        "configs/schema.json is stale: run quantadv schema --out configs/schema.json")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_dry_runs(path, capsys):
    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(doc, json_schema())
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "runs x" in capsys.readouterr().out


@pytest.mark.parametrize("doc, message", [
    ({"experiment": "x", "models": ["m"], "data": "mnist", "attacks": ["fgsm"], "atacks": 1},
     "unknown key atacks (did you mean 'attacks'?); allowed keys: experiment, "),
    ({"experiment": "x", "models": [{"name": "m", "eot": 0}], "data": "mnist", "attacks": ["fgsm"]},
     "models[0].eot must be an integer >= 1 (draws per gradient in bpda+eot), got 0 (int)"),
    ({"experiment": "x", "models": ["m"], "data": "mnist", "attacks": [{"name": "pgd", "repeat": "a"}]},
     "attacks[0].repeat must be an integer >= 1 (independent runs with other seeds), got 'a' (string)"),
    ({"experiment": "x", "models": ["m"], "data": {"name": "mnist", "split": "val"}, "attacks": ["fgsm"]},
     "data.split must be one of 'train', 'test', got 'val' (string)"),
    ({"experiment": "x", "models": ["m"], "data": "mnist", "attacks": [{"name": "pgd", "source": {"nme": 1}}]},
     "unknown key attacks[0].source.nme (did you mean 'name'?)"),
    ({"experiment": "x", "models": ["m"], "data": "mnist", "attacks": ["fgsm"], "summary": {"steps": [-1]}},
     "summary.steps[0]"),
    ({"models": ["m"], "data": "mnist", "attacks": ["fgsm"]}, "missing key 'experiment': 1-64 letters"),
])
def test_schema_errors_are_one_clear_line(doc, message):
    with pytest.raises(ConfigError) as info:
        check_structure(doc)
    text = str(info.value)
    assert message in text and "\n" not in text
    with pytest.raises(ConfigError, match="^" + message[:20].replace("[", r"\[").replace("(", r"\(")):
        parse_config(doc)  # the config parser reports the same, before looking at names


def test_the_schema_rejects_what_the_parser_rejects_structurally():
    schema = json_schema()
    bad = {"experiment": "x", "models": ["m"], "data": "mnist", "attacks": ["fgsm"], "batch_size": 0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        check_structure(bad)
