"""Paper 000 reproduction: configs, figure helpers, the benchmark baseline, and a small-scale
version of the issue-4 acceptance (the full 1,000-image measurement is in
docs/paper-000-digital-images.md). Fast: a few seconds on 2 CPU cores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import quantadv
import quantadv.data
import quantadv.eval
import quantadv.io
import quantadv.models
from quantadv import attacks, quantize
from quantadv.experiments import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("paper000-*.yaml"))


def _module(path: Path, name: str):
    """Import a script as ``python path`` runs it: its own folder on ``sys.path`` (scripts/
    share ``scripts/_figures.py``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_validate(path):
    if "robust" in path.stem and "fmnist-cnn-at-l2" not in quantadv.models.list():
        pytest.skip("fmnist-cnn-at-l2 is not in the zoo of this installation")
    cfg = load_config(path)
    assert cfg.store.name.startswith("paper000-")


def test_configs_present():
    names = {p.stem for p in CONFIGS}
    assert {"paper000-acceptance", "paper000-fig05", "paper000-budget-natural",
            "paper000-budget-robust"} <= names


def test_operating_characteristic_and_best_effort():
    """The script's curves come from quantadv.experiments.tables' best effort (tests/test_tables.py)."""
    from quantadv.experiments.tables import best_effort_rows

    fig = _module(ROOT / "scripts" / "paper000_figures.py", "paper000_figures")
    rows = [{"model": "m", "attack": "a", "postprocess": "none", "run_id": f"r{k}", "idx": i, "success": ok,
             "d": d, "l2": d, "linf": d, "label": 0, "clean_pred": 0}
            for k, (i, ok, d) in enumerate([(0, True, 3.0), (0, True, 2.0), (1, False, 1.0), (1, True, 5.0),
                                            (2, False, 0.5), (2, False, 0.1)])]
    (best,) = best_effort_rows(rows)
    assert best["idx"].tolist() == [0, 1, 2]
    assert best["d_min"].tolist() == [2.0, 5.0, np.inf]        # failures never count, whatever their d
    # Eq. 32: strict inequality, failures count against the attack (M = 3)
    assert fig.oc(best, np.array([2.0, 2.5, 10.0])).tolist() == pytest.approx([0, 1 / 3, 2 / 3])


@pytest.fixture(scope="module")
def fmnist():
    try:
        model = quantadv.models.load("fmnist-cnn")
        x_u8, y = quantadv.data.load("fashion-mnist", split="test")
    except Exception as exc:  # noqa: BLE001 - data or weights missing on this machine
        pytest.skip(f"fmnist-cnn or Fashion-MNIST unavailable: {exc}")
    torch.manual_seed(0)
    x = x_u8[:24].float() / 255
    y = y[:24]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return model, x[keep], y[keep]


def test_benchmark_loop_is_the_same_algorithm(fmnist):
    model, x, y = fmnist
    bench = _module(ROOT / "benchmarks" / "quantization.py", "bench_quantization")
    x, y = x[:4], y[:4]
    x_a = attacks.ddn(model, x, y, steps=10)
    x_q, info = quantize.lagrangian(model, x, x_a, y, return_info=True)
    for i in range(len(y)):
        xq_i, calls = bench.loop_lagrangian(model, x[i], x_a[i], int(y[i]))
        assert torch.equal(xq_i, x_q[i])
        assert calls == int(info["calls"][i])


def test_acceptance_small(fmnist, tmp_path):
    """Q-lambda* keeps the DDN successes at ~the same median d, and they survive PNG."""
    model, x, y = fmnist
    x_a, info = attacks.ddn(model, x, y, steps=20, return_info=True)
    ok = info["success"]
    x_q, qinfo = quantize.lagrangian(model, x, x_a, y, return_info=True)
    kept = (qinfo["success"] & ok).sum() / ok.sum()
    assert kept >= 0.99
    d_a = quantadv.eval.distortion(x_a, x)[ok]
    d_q = quantadv.eval.distortion(x_q, x)[qinfo["success"]]
    assert d_q.median() <= 1.02 * d_a.median()
    # success reported by the quantizer is what a classifier sees after a PNG round trip
    quantadv.io.save_png(x_q[qinfo["success"]], tmp_path, labels=y[qinfo["success"]])
    back = quantadv.io.load_png(tmp_path)
    back = back.float() / 255 if back.dtype == torch.uint8 else back
    with torch.no_grad():
        pred = model(back).argmax(1)
    assert (pred != y[qinfo["success"]]).all()
