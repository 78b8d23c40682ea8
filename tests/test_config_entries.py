"""The attack and model entries under configs/entries/ that the paper configs use."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from quantadv.defenses import Defended, SoftQuantization, adaptive
from quantadv.errors import InputError

ENTRIES = Path(__file__).resolve().parents[1] / "configs" / "entries"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"entries_{name}", ENTRIES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pixel_flip_stays_in_the_ball_and_flips_only_reachable_pixels():
    flip = _module("paper002_flip").flip
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
    model = Defended(SoftQuantization(1, 1000.0), clf).eval()
    x = torch.rand(40, 1, 6, 6)
    y = model(x).argmax(1)
    eps = 0.2
    x_adv, info = flip(model, x, y, eps=eps, steps=30, per_step=1, return_info=True)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    moved = (x_adv != x)
    assert bool(((x[moved] - 0.5).abs() <= eps).all())  # only pixels within eps of the threshold
    assert torch.equal(info["pred"], model(x_adv).argmax(1))
    assert torch.equal(info["success"], info["pred"] != y) and bool(info["success"].any())
    assert torch.equal(info["flips"], moved.flatten(1).sum(1))
    # the BPDA view of the model is looked through; the result is the same
    bpda_model, _ = adaptive(model, "bpda")
    assert torch.equal(flip(bpda_model, x, y, eps=eps, steps=30, per_step=1), x_adv)
    with pytest.raises(InputError, match="SoftQuantization"):
        flip(clf, x, y, eps=eps)


def test_scaled_logits_keep_predictions_and_prop1_pgd_runs():
    mod = _module("paper004")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4)).eval()
    x = torch.rand(10, 1, 6, 6)
    big = mod.ScaledLogits(net, 5.0)
    assert torch.allclose(big(x), 5 * net(x)) and torch.equal(big(x).argmax(1), net(x).argmax(1))
    y = net(x).argmax(1)
    out, info = mod.prop1_pgd(net, x, y, rho=1e-5, eps=0.1, step=0.025, steps=3, seed=0, return_info=True)
    assert float((out - x).abs().max()) <= 0.1 + 1e-6 and info["success"].shape == (10,)
    with pytest.raises(InputError):
        mod.scaled("fmnist-cnn", scale=0)


def test_float64_entry_keeps_the_error_signal_that_float32_rounds_away():
    mod = _module("numerics")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 3, bias=False)).eval()
    with torch.no_grad():  # logit margin 20 > 16.6: float32 softmax rounds p_y to exactly 1
        net[1].weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    x, y = torch.tensor([[[[1.0, 0.5]]]]), torch.tensor([0])
    wide = mod.Float64(net)
    grads = []
    for model in (net, wide):
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()
        grads.append(xi.grad[0, 0, 0])
    assert wide(x).dtype == torch.float64 and grads[1].dtype == torch.float32  # the input keeps its dtype
    # float32: psi_y = p_y - 1 = 0, so d loss / d x_0 loses the true class's -20 (1 - p_y) term;
    # float64 keeps it: d/dx_0 = -20 * (1 - p_y) = -40 e^-20 / (1 + 2 e^-20)
    assert float(grads[0][0]) == 0.0
    assert float(grads[1][0]) == pytest.approx(-40 * math.exp(-20) / (1 + 2 * math.exp(-20)), rel=1e-5)


def test_ddn_jpeg_float_and_on_the_jpeg_grid():
    pytest.importorskip("jpeglib")
    ddn_jpeg = _module("jpeg_ddn").ddn_jpeg
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    x = (torch.rand(6, 1, 8, 8) * 255).round() / 255
    y = model(x).argmax(1)
    out = ddn_jpeg(model, x, y, steps=30)
    adv = model(out).argmax(1) != y
    assert bool(adv.any()) and bool(torch.equal(out[~adv], x[~adv]))  # kept: adversarial iterates only
    assert out.min() >= 0 and out.max() <= 1
    q = ddn_jpeg(model, x, y, steps=30, quality=90)
    assert torch.equal(q, (q * 255).round() / 255)  # the libjpeg decode of a written file: 8-bit
    from quantadv import to_float
    from quantadv.io import jpeg as jio

    # a file with the same tables reproduces it: re-encoding the decode at quality 90 is (nearly) lossless
    again = to_float(jio.decode(jio.encode(q, 90)))
    assert float((again - q).abs().max()) <= 3 / 255


def test_clean_entry_and_tinted_data():
    clean = _module("clean").identity
    x = torch.rand(3, 1, 4, 4)
    out = clean(torch.nn.Identity(), x, torch.zeros(3, dtype=torch.long))
    assert torch.equal(out, x) and out is not x
    tinted = _module("tinted")
    grey = torch.tensor([[[[0, 255]]], [[[128, 64]]]], dtype=torch.uint8)
    rgb = tinted.tint(grey, seed=1)
    assert rgb.shape == (2, 3, 1, 2) and rgb.dtype == torch.uint8 and torch.equal(rgb, tinted.tint(grey, seed=1))
    assert not torch.equal(rgb[:, 0], rgb[:, 1])  # colours, not grey


@pytest.mark.slow
def test_tinted_jpeg_data_returns_the_files_it_decoded():
    pytest.importorskip("jpeglib")
    from quantadv.io import jpeg as jio

    tinted = _module("tinted")
    x, y, files = tinted.tinted("test", jpeg_quality=85, subsampling="4:2:0")
    assert x.shape == (10000, 3, 28, 28) and len(files) == len(y) == 10000
    assert torch.equal(jio.decode(files[:5]), x[:5]) and jio.read_coefficients(files[0]).subsampling == "4:2:0"
