"""``import quantadv`` gives lazy access to the sub-packages and stays cheap (issue 13, part 5).

The checks run in one fresh interpreter (importing torch costs seconds on a loaded machine),
where nothing of quantadv has been imported yet. Cheapness is checked by what gets imported,
not by a stopwatch: ``import quantadv`` may load torch (the digital-image helpers need it)
and its own small core modules, nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import quantadv

FRESH = """
import json, sys, types
import torch
before = set(sys.modules)
import quantadv
loaded = sorted(set(sys.modules) - before)
attacks_before = "quantadv.attacks" in sys.modules
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
x = torch.full((2, 1, 2, 2), 0.5)
adv = quantadv.attacks.pgd(model, x, torch.tensor([0, 1]), eps=0.1, step=0.05, steps=2)
try:
    quantadv.no_such_thing
    error = None
except AttributeError as exc:
    error = str(exc)
print(json.dumps({
    "loaded": loaded,
    "attacks_before": attacks_before,
    "attacks_after": "quantadv.attacks" in sys.modules,
    "shape": list(adv.shape),
    "dir": [n for n in quantadv.SUBMODULES if n in dir(quantadv)],
    "theory": callable(quantadv.theory.expected_rounding_distortion),
    "quantize": callable(quantadv.quantize.lagrangian),
    "modules": {n: isinstance(getattr(quantadv, n), types.ModuleType) for n in quantadv.SUBMODULES},
    "error": error,
    "has": hasattr(quantadv, "attackz"),
}))
"""


@pytest.fixture(scope="module")
def fresh() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FRESH)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_quantadv_loads_nothing_heavy_beyond_torch(fresh):
    assert set(fresh["loaded"]) <= {"quantadv", "quantadv.digital", "quantadv.errors", "quantadv._validate"}
    assert not fresh["attacks_before"]


def test_sub_packages_load_on_first_access(fresh):
    assert fresh["attacks_after"] and fresh["shape"] == [2, 1, 2, 2]
    assert fresh["theory"] and fresh["quantize"]
    assert all(fresh["modules"].values()), fresh["modules"]


def test_dir_lists_sub_packages_and_unknown_names_raise(fresh):
    assert fresh["dir"] == list(quantadv.SUBMODULES)
    assert set(quantadv.SUBMODULES) <= set(dir(quantadv))
    assert fresh["error"] == "module 'quantadv' has no attribute 'no_such_thing'"
    assert fresh["has"] is False
