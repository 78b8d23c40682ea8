"""PGD++ / FGSM++ and the temperatures of paper 004 (NJS Eq. 10 + Prop. 1, HNS Eq. 11)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import affine_problem
from quantadv.attacks import REGISTRY, fgsm_pp, njs_temperature, pgd, pgd_pp
from quantadv.attacks.temperature import _one_minus_pk, hessian_norms, hns_temperature, prop1_temperature
from quantadv.errors import InputError


class Scaled(nn.Module):
    """``scale * model(x)``: an over-confident copy with the same decision boundary."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x) * self.scale


def _mlp(seed: int, side: int = 5, classes: int = 4, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 12), nn.ReLU(), nn.Linear(12, classes)).to(dtype).eval()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(1e-3, 1e3))
def test_temperature_never_changes_predictions(seed, beta):
    model = _mlp(seed)
    x = torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = torch.arange(6) % 4
    with torch.no_grad():
        logits = model(x)
    assert torch.equal((beta * logits).argmax(1), logits.argmax(1))
    x_adv, info = pgd_pp(model, x, y, eps=0.1, step=0.03, steps=3, temperature=beta, seed=seed, return_info=True)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    assert torch.equal(info["pred"], pred)  # success judged on the unscaled logits
    assert torch.equal(info["success"], pred != y)


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=20),
    rho=st.floats(1e-9, 0.5),
)
def test_prop1_beta_keeps_error_signal(logits, rho):
    a = torch.tensor([logits], dtype=torch.float64)
    d = a.shape[1]
    if not rho < (d - 1) / d:
        return
    beta = prop1_temperature(a, rho)
    scaled = beta.view(-1, 1) * a
    top = scaled.argmax(1)
    # Strict up to float64 rounding: at rho -> (d-1)/d the bound -> 0, beta * a -> 0 and 1 - p_k
    # -> (d-1)/d itself (hypothesis found rho = 0.5 - 2**-54, d = 2: both sides 0.49999999999999994).
    assert float(_one_minus_pk(scaled, top)) > rho * (1 - 1e-12)


def test_prop1_rejects_bad_rho():
    with pytest.raises(InputError, match="rho"):
        prop1_temperature(torch.zeros(1, 3), 0.9)


def test_njs_beta1_on_linear_model_is_closed_form():
    model, x, y = affine_problem(classes=5, side=6, n=7)
    sv = torch.linalg.svdvals(model.weight.detach())
    expected = sv.numel() / float(sv.sum())  # J = W for every image: beta1 = d / sum(mu_j)
    assert njs_temperature(model, x) == pytest.approx(expected, rel=1e-10)
    assert njs_temperature(model, x, y, samples=3) == pytest.approx(expected, rel=1e-10)


def test_hns_hessian_equals_autograd_gauss_newton():
    model = _mlp(3)
    x = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([2])
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 5, 5)).squeeze(0), x.flatten())
    with torch.no_grad():
        logits = model(x)
    for beta in (0.05, 0.7, 3.0):
        def loss(v, beta=beta):
            return nn.functional.cross_entropy(beta * model(v.view(1, 1, 5, 5)), y)

        hess = torch.autograd.functional.hessian(loss, x.flatten())
        p = torch.softmax(beta * logits[0], 0)
        gn = beta**2 * jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
        assert torch.allclose(hess, gn, atol=1e-12)  # ReLU net: psi dJ/dx = 0, Hessian = Gauss-Newton term
        ours = hessian_norms(logits, (jac @ jac.T).unsqueeze(0), torch.tensor([[beta]], dtype=torch.float64))
        assert float(ours) == pytest.approx(float(torch.linalg.norm(hess)), rel=1e-9)


def test_hns_picks_interior_maximum_or_one():
    model = _mlp(5)
    x = torch.rand(8, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    beta, (betas, norms) = hns_temperature(model, x, return_grid=True)
    best = norms.argmax(1)
    for i in range(8):
        if 0 < int(best[i]) < betas.shape[1] - 1:
            assert float(beta[i]) == pytest.approx(float(betas[i, best[i]]))
        else:
            assert float(beta[i]) == 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_pp_with_beta_one_is_pgd_bit_for_bit(norm):
    model, x, y = affine_problem(classes=4, side=6, n=6, dtype=torch.float32)
    kw = dict(norm=norm, eps=0.05 if norm == "linf" else 0.5, step=0.01 if norm == "linf" else 0.1, steps=7)
    ref = pgd(model, x, y, random_start=True, seed=3, **kw)
    assert torch.equal(pgd_pp(model, x, y, temperature=1.0, seed=3, **kw), ref)
    # the NJS code path (per-step temperature from the step's own logits) with beta1 = 1, no beta2
    assert torch.equal(pgd_pp(model, x, y, scaling="njs", beta1=1.0, rho=0.0, seed=3, **kw), ref)


def test_pgd_pp_breaks_an_overconfident_model_that_pgd_cannot():
    base, x, y = affine_problem(classes=4, side=6, n=8, dtype=torch.float32)
    model = Scaled(base, 1e4).eval()  # softmax one-hot in float32: CE gradients are exactly 0
    kw = dict(eps=0.3, step=0.05, steps=10, seed=0, return_info=True)
    _, info_pgd = pgd(model, x, y, random_start=True, **kw)
    for scaling in ("njs", "hns"):
        _, info_pp = pgd_pp(model, x, y, scaling=scaling, **kw)
        assert int(info_pp["success"].sum()) > int(info_pgd["success"].sum())
        assert bool((info_pp["temperature"] > 0).all())
    x1, info1 = fgsm_pp(model, x, y, eps=0.3, scaling="hns", return_info=True)
    assert (x1 - x).abs().max() <= 0.3 + 1e-6


def test_njs_uses_prop1_when_saturated():
    base, x, y = affine_problem(classes=4, side=6, n=5, dtype=torch.float64)
    model = Scaled(base, 50.0).eval()
    _, info = pgd_pp(model, x, y, eps=0.01, step=0.001, steps=1, scaling="njs", beta1=1.0, rho=0.01, random_start=False,
                     seed=0, return_info=True)
    with torch.no_grad():
        logits = model(x)
    gamma = logits.amax(1) - logits.amin(1)
    assert torch.allclose(info["temperature"], prop1_temperature(logits, 0.01), rtol=1e-6)
    assert bool((info["temperature"] * gamma > 0).all())


def test_registry_and_validation():
    assert REGISTRY["pgd_pp"] is pgd_pp and REGISTRY["fgsm_pp"] is fgsm_pp
    model, x, y = affine_problem()
    with pytest.raises(InputError, match="scaling"):
        pgd_pp(model, x, y, eps=0.1, step=0.1, steps=1, scaling="xyz")
    with pytest.raises(InputError, match="rho"):
        pgd_pp(model, x, y, eps=0.1, step=0.1, steps=1, rho=2.0)
    x_r, info = pgd_pp(model, x, y, eps=0.05, step=0.01, steps=2, restarts=2, seed=0, return_info=True)
    assert x_r.shape == x.shape and "restart" in info
