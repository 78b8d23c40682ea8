"""quantadv.models.deploy: torchao-quantized forward, float-shadow backward (issue 20, part 2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")

from conftest import quadrant_data, train_quadrant_net  # noqa: E402
from quantadv.attacks import pgd  # noqa: E402
from quantadv.errors import InputError, ModelError  # noqa: E402
from quantadv.models import SCHEMES, Deployed, deploy  # noqa: E402
from quantadv.models.binary import BinarySmallCNN  # noqa: E402

CLASSES = 4


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = quadrant_data(512, 0)
    model = train_quadrant_net(x, y)
    xt, yt = quadrant_data(256, 1)
    return model, x[:128], xt, yt


@pytest.fixture(scope="module")
def deployed(trained) -> dict[str, Deployed]:
    model, calib, _, _ = trained
    return {s: deploy(model, s, calibration=calib) for s in SCHEMES}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_is_quantized_model_and_close_to_float(trained, deployed, scheme):
    model, _, xt, _ = trained
    d = deployed[scheme]
    assert d.scheme == scheme and not d.training
    with torch.no_grad():
        q, f = d.quantized(xt), model(xt)
    out = d(xt)
    assert torch.equal(out, q)
    x = xt.clone().requires_grad_(True)
    assert torch.equal(d(x).detach(), q)  # the gradient path returns the same bits
    gap = (q - f).abs().max().item()
    assert gap > 0  # it really is quantized
    bound = 0.08 if scheme == "int4-weight" else 0.03  # relative to the logit range
    assert gap <= bound * f.abs().max().item()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradient_is_float_models(trained, deployed, scheme):
    model, _, xt, yt = trained
    d = deployed[scheme]
    x = xt[:32].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(d(x), yt[:32], reduction="sum"), x)
    xf = xt[:32].clone().requires_grad_(True)
    # the float loss at the float logits; the Deployed loss is evaluated at the quantized logits,
    # so the upstream gradients differ: compare the vector-Jacobian product with the same upstream
    up = torch.softmax(d(xt[:32]), 1) - nn.functional.one_hot(yt[:32], CLASSES)
    (gf,) = torch.autograd.grad(model(xf), xf, up)
    torch.testing.assert_close(g, gf, rtol=1e-5, atol=1e-7)
    # gradients are taken w.r.t. the input only: neither the shadow nor the user's model accumulates any
    assert all(p.grad is None for p in d.float_model.parameters())
    assert model.conv.weight.grad is None


def test_inputs_untouched_and_layers_reported(trained, deployed):
    _, _, xt, _ = trained
    x = xt.clone().requires_grad_(True)
    before = x.detach().clone()
    deployed["int8-dynamic"](x).sum().backward()
    assert torch.equal(x.detach(), before)
    assert deployed["int8-weight"].quantized_layers == ("fc1", "fc2")
    assert set(deployed["int8-static"].quantized_layers) == {"conv", "fc1", "fc2"}
    with pytest.raises(InputError, match="training mode"):
        deployed["int8-weight"].train()
    assert deployed["int8-weight"].eval() is deployed["int8-weight"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_accuracy_of_each_scheme(trained, deployed, scheme):
    model, _, xt, yt = trained
    with torch.no_grad():
        acc_float = (model(xt).argmax(1) == yt).float().mean().item()
        acc = (deployed[scheme](xt).argmax(1) == yt).float().mean().item()
    assert acc_float >= 0.95
    assert acc >= acc_float - 0.02


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-static"])
def test_pgd_success_is_judged_on_quantized_forward(trained, deployed, scheme):
    model, _, xt, yt = trained
    d = deployed[scheme]
    x, y = xt[:64], yt[:64]
    adv, info = pgd(d, x, y, eps=0.3, step=0.05, steps=10, return_info=True)
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        pred_q = d.quantized(adv).argmax(1)
        pred_f = model(adv).argmax(1)
    assert torch.equal(info["pred"], pred_q)
    assert torch.equal(info["success"], pred_q != y)
    assert info["success"].float().mean() >= 0.5  # the float gradient does break the quantized model
    # the quantized model's own integer ops give no gradient to attack with
    if scheme == "int8-static":
        xg = x.clone().requires_grad_(True)
        out = d.quantized(xg)
        assert not out.requires_grad
    assert pred_f.shape == pred_q.shape


def test_bad_input(trained):
    model, calib, _, _ = trained
    with pytest.raises(InputError, match="scheme"):
        deploy(model, "int3-magic", calibration=calib)
    with pytest.raises(InputError, match="calibration"):
        deploy(model, "int8-static")
    with pytest.raises(InputError, match="calibration must be a 4-D"):
        deploy(model, "int8-weight", calibration=calib[:, 0])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        deploy(model, "int8-weight", calibration=calib * 3)
    with pytest.raises(ModelError, match=r"shape \(128, 3, 8, 8\)"):
        deploy(model, "int8-static", calibration=calib.repeat(1, 3, 1, 1))
    with pytest.raises(ModelError, match="shape"):
        deploy(model, "int8-dynamic", calibration=calib[:, :, :6, :6])
    with pytest.raises(InputError, match="already deployed"):
        deploy(deploy(model, "int8-weight"), "int8-weight")


def test_layers_that_cannot_be_quantized_are_named():
    with pytest.raises(ModelError, match=r"layer 'fc1' \(BinaryLinear\)"):
        deploy(BinarySmallCNN().eval(), "int8-weight")
    narrow = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 3))
    with pytest.raises(ModelError, match=r"layer '3' has 20 input features"):
        deploy(narrow, "int4-weight")
    deploy(narrow, "int8-weight")  # int8 has no group constraint
    convs = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="no nn.Linear layer"):
        deploy(convs, "int8-dynamic")


ATTACK_PARAMS = {
    "fgsm": {"eps": 0.3}, "ifgsm": {"eps": 0.3, "steps": 3}, "pgd": {"eps": 0.3, "step": 0.1, "steps": 3},
    "cw": {"steps": 3, "search_steps": 1}, "ddn": {"steps": 5}, "pqgd": {"eps": 0.3, "step": 0.1, "steps": 3, "b": 50},
    "daa_blob": {"eps": 0.3, "step": 0.1, "steps": 3}, "pgd_pp": {"eps": 0.3, "step": 0.1, "steps": 3, "samples": 8},
    "fgsm_pp": {"eps": 0.3, "samples": 8, "grid": 8},
    "apgd": {"eps": 0.3, "steps": 5}, "apgd_t": {"eps": 0.3, "steps": 5, "classes": 2},
    "square": {"eps": 0.3, "queries": 20, "seed": 0},
}


def test_every_attack_runs_on_a_deployed_model(trained, deployed):
    from quantadv.attacks import REGISTRY

    assert set(ATTACK_PARAMS) == set(REGISTRY)  # a new attack must be added here
    _, _, xt, yt = trained
    d = deployed["int8-dynamic"]
    x, y = xt[:16], yt[:16]
    for name, attack in REGISTRY.items():
        adv, info = attack(d, x, y, return_info=True, **ATTACK_PARAMS[name])
        with torch.no_grad():
            pred_q = d.quantized(adv).argmax(1)
        assert torch.equal(info["success"], pred_q != y), name


@pytest.mark.slow
def test_cli_diagnose_deploy_bad_scheme(capsys):
    from quantadv.cli import main

    assert main(["diagnose", "--model", "mnist-cnn", "--images", "4", "--deploy", "int3"]) == 2
    err = capsys.readouterr().err
    assert "scheme" in err and "int8-dynamic" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("strategy", ["backward", "vmap"])
def test_jacobian_is_float_models_under_torch_func(trained, deployed, strategy):
    from quantadv.diagnostics import input_jacobian

    model, _, xt, _ = trained
    d = deployed["int8-static"]
    jac, logits = input_jacobian(d, xt[:4], strategy=strategy)
    jac_f, _ = input_jacobian(model, xt[:4], strategy="backward")
    torch.testing.assert_close(jac, jac_f, rtol=1e-5, atol=1e-7)
    assert torch.equal(logits, d(xt[:4]))
