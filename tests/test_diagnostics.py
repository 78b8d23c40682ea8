"""quantadv.diagnostics: Jacobian singular values, Table 1/7 statistics, masking checks, CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import affine_problem
from quantadv.diagnostics import (
    input_jacobian,
    jacobian_singular_values,
    jacobian_stats,
    masking_checks,
    signal_report,
)


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


def test_singular_values_of_affine_model_are_those_of_w():
    model, x, _ = affine_problem(classes=5, side=6, n=4)
    sv = jacobian_singular_values(model, x)
    expected = torch.linalg.svdvals(model.weight.detach())
    assert sv.shape == (4, 5)
    for row in sv:
        assert torch.allclose(row, expected, rtol=1e-10)
        assert bool((row[:-1] >= row[1:]).all())  # descending


def test_batched_jacobian_matches_per_class_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    model = model.double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    jac, logits = input_jacobian(model, x, batch_size=2)
    jac_v, logits_v = input_jacobian(model, x, batch_size=2, strategy="vmap")
    assert torch.allclose(jac, jac_v, atol=1e-12) and torch.equal(logits, logits_v)
    for i in range(3):
        ref = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), x[i])
        assert torch.allclose(jac[i], ref.flatten(1), atol=1e-12)
    assert torch.allclose(logits, model(x))
    for p in model.parameters():
        assert p.grad is None


def test_stats_see_vanishing_gradients_and_temperature_restores_them():
    base, x, y = affine_problem(classes=4, side=6, n=6, dtype=torch.float32)
    model = Scaled(base, 1e4).eval()
    jac, logits = input_jacobian(model, x)
    orig = jacobian_stats(jac, logits, y, 1.0)
    assert orig.zero_grad_fraction == 1.0 and orig.psi_norm == 0.0  # one-hot softmax in float32
    njs, hns = signal_report(model, x, y)[1:]
    assert njs.jsv_mean == pytest.approx(1.0, rel=1e-5)  # Eq. 10: mean JSV of beta1 J is 1
    assert njs.zero_grad_fraction < 0.5 and hns.psi_norm > 0


def test_masking_checks_flag_an_overconfident_model_and_pass_a_plain_one():
    base, x, y = affine_problem(classes=4, side=6, n=10, dtype=torch.float32)
    kw = dict(eps=0.3, steps=8, checks=("temperature", "one-step", "transfer"), surrogate=base)
    plain = {c.name: c for c in masking_checks(base, x, y, **kw)}
    assert plain["temperature"].passed and plain["one-step"].passed and plain["transfer"].passed
    masked = {c.name: c for c in masking_checks(Scaled(base, 1e4).eval(), x, y, **kw)}
    assert not masked["temperature"].passed
    assert "FLAG" in str(masked["temperature"]) and "PGD++" in masked["temperature"].evidence
    assert not masked["transfer"].passed  # transfer from the float model beats white-box PGD


def test_radius_and_iteration_checks_report_numbers():
    model, x, y = affine_problem(classes=3, side=5, n=6, dtype=torch.float32)
    checks = {c.name: c for c in masking_checks(model, x, y, eps=0.1, steps=4, checks=("radius", "iterations"))}
    assert checks["radius"].values["eps=1"] == 0.0 and checks["radius"].passed
    assert set(checks["iterations"].values) == {"steps=1", "steps=4", "steps=20"}


def test_weights_sha256_handles_scalar_buffers_and_changes_with_weights():
    from quantadv.diagnostics import weights_sha256
    from quantadv.models.binary import BinarySmallCNN

    model = BinarySmallCNN(method="mdtanh")  # has 0-dim buffers (beta, num_batches_tracked)
    before = weights_sha256(model)
    with torch.no_grad():
        model.fc2.bias.add_(1)
    assert weights_sha256(model) != before


@pytest.mark.slow
def test_cli_diagnose_exit_code(capsys):
    from quantadv.cli import main

    code = main(["diagnose", "--model", "fmnist-cnn", "--images", "20", "--steps", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    assert ("FLAG" in out) == (code == 1)
    assert "JSV mean" in out and "radius" in out


def test_start_gradients_is_the_ascent_direction_at_the_seeded_start():
    from quantadv.diagnostics import start_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    x0, g = start_gradients(model, x, y, eps=0.1, seed=3)
    assert float((x0 - x).abs().max()) <= 0.1 + 1e-7 and x0.min() >= 0 and x0.max() <= 1
    x1, g1 = start_gradients(model, x, y, eps=0.1, seed=3)
    assert torch.equal(x0, x1) and torch.equal(g, g1)
    z = x0.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(z), y, reduction="sum")
    (ref,) = torch.autograd.grad(loss, z)
    assert torch.allclose(g, ref, atol=1e-6)  # cross-entropy ascent: what a first PGD step follows
    with pytest.raises(ValueError, match="eps must be > 0"):
        start_gradients(model, x, y, eps=0)


@pytest.mark.slow
def test_cli_diagnose_gradients_writes_the_quantized_gradients(tmp_path, capsys):
    import numpy as np

    from quantadv.attacks import quantized_gradient
    from quantadv.cli import main

    out = tmp_path / "g.npz"
    argv = ["diagnose", "--model", "fmnist-cnn", "--images", "4", "--eps", "0.1", "--step", "0.01",
            "--gradients", str(out), "--gradient-b", "10,200", "--threads", "1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| sign (b = 1) | 100.0 | 0.0 |" in text and "b = 200" in text and "check" not in text
    z = np.load(out)
    g = torch.from_numpy(z["gradient"])
    assert g.shape == (4, 1, 28, 28) and list(z["b"]) == [10, 200] and float(z["eps"] / z["step"]) == pytest.approx(10)
    for b in (10, 200):
        assert np.array_equal(z[f"quantized_{b}"], quantized_gradient(g, b).numpy())
    assert main(argv[:-4] + ["--gradients", str(tmp_path / "g.txt")]) == 2
    assert main(argv[:-2] + ["--gradient-b", "a,b"]) == 2


def test_signal_report_per_image_values_agree_with_the_rows_and_chunking():
    base, x, y = affine_problem(classes=4, side=6, n=9, dtype=torch.float32)
    model = Scaled(base, 30.0).eval()
    rows, values = signal_report(model, x, y, per_image=True, chunk=2)
    whole = signal_report(model, x, y, chunk=500)
    assert [r.jsv_mean for r in rows] == [r.jsv_mean for r in whole]  # chunking HNS changes nothing
    assert [r.psi_norm for r in rows] == [r.psi_norm for r in whole]
    n = rows[0].images
    assert values["index"].shape == (n,) and bool((values["margin"] > 0).all())  # correctly classified only
    for key, row in zip(("orig", "njs", "hns"), rows, strict=True):
        assert float(values[f"psi_norm_{key}"].mean()) == pytest.approx(row.psi_norm, rel=1e-6)
        assert float(values[f"grad_norm_{key}"].mean()) == pytest.approx(row.grad_norm, rel=1e-6)
    # Eq. 10: beta1 makes the mean singular value 1; the per-image JSV means average to the row's
    assert float(values["jsv_mean"].mean()) * values["beta_njs"] == pytest.approx(1.0, rel=1e-5)
    assert float(values["jsv_mean"].mean()) == pytest.approx(rows[0].jsv_mean, rel=1e-6)


def test_margin_shares_match_float32_softmax_rounding():
    from quantadv.diagnostics import MARGIN_ROUNDS, MARGIN_UNDERFLOWS, margin_shares

    # just past MARGIN_ROUNDS float32 gives p_y == 1 exactly (psi_y = 0); just before it does not
    for m, rounds in ((MARGIN_ROUNDS + 0.05, True), (MARGIN_ROUNDS - 0.5, False)):
        p = torch.softmax(torch.tensor([m, 0.0]), 0)
        assert (float(p[0]) == 1.0) is rounds and float(p[1]) > 0
    # past MARGIN_UNDERFLOWS the other class's probability is subnormal, soon exactly 0
    assert float(torch.softmax(torch.tensor([MARGIN_UNDERFLOWS + 1, 0.0]), 0)[1]) < torch.finfo(torch.float32).tiny
    assert float(torch.softmax(torch.tensor([110.0, 0.0]), 0)[1]) == 0.0
    s = margin_shares(torch.tensor([1.0, 10.0, 20.0, 50.0, 90.0]))
    assert s == {"images": 5, "median": 20.0, "rounds": 0.6, "underflows": 0.2}
    assert margin_shares(torch.tensor([]))["images"] == 0


def test_cli_diagnose_json_has_the_signal_rows_checks_and_per_image_values(tmp_path, capsys):
    import json

    from quantadv.cli import main

    out = tmp_path / "d.json"
    code = main(["diagnose", "--model", "fmnist-cnn", "--images", "6", "--signal-images", "10", "--steps", "2",
                 "--checks", "one-step", "--threads", "1", "--no-progress", "--json", str(out)])
    assert code in (0, 1)
    doc = json.loads(out.read_text())
    assert [r["beta"].split()[0] for r in doc["signal"]] == ["orig", "NJS", "HNS"]
    assert doc["signal"][1]["jsv_mean"] == pytest.approx(1.0, rel=1e-4)
    assert [c["name"] for c in doc["checks"]] == ["one-step"] and doc["check_images"] == 6
    per = doc["per_image"]
    n = doc["signal"][0]["images"]
    assert doc["signal_images"] == 10 and 0 < n <= 10
    assert all(len(per[k]) == n for k in ("index", "label", "margin", "psi_norm_orig", "grad_norm_hns"))
    assert all(0 <= i < 10 for i in per["index"])
    assert sum(per["psi_norm_njs"]) / n == pytest.approx(doc["signal"][1]["psi_norm"], rel=1e-5)
    shares = doc["margins"]  # margin_shares of the per-image margins, also printed
    above = sum(m > 24 * math.log(2) for m in per["margin"]) / n
    assert shares["images"] == n and shares["rounds"] == pytest.approx(above)
    assert f"{100 * shares['rounds']:.1f}% above 16.6" in capsys.readouterr().out
    assert main(["diagnose", "--model", "fmnist-cnn", "--checks", "radius,bogus"]) == 2
    assert "unknown check bogus" in capsys.readouterr().err
