"""Attacks: closed-form checks on affine models, invariants of DESIGN.md section 1, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import SmallNet, affine_problem, minimal_l2, minimal_linf
from quantadv import InputError
from quantadv.attacks import REGISTRY, cw, ddn, fgsm, ifgsm, pgd
from quantadv.eval import distortion, is_adversarial

# ---------------------------------------------------------------- closed forms (affine models)


def test_fgsm_reaches_predicted_point_on_binary_affine():
    model, x, y = affine_problem(classes=2)
    w = model.weight.detach()
    eps = 0.03
    x_adv = fgsm(model, x, y, eps=eps)
    direction = torch.stack([(w[k] - w[1 - k]).sign() for k in y.tolist()]).view_as(x)
    assert torch.equal(x_adv, (x - eps * direction).clamp(0, 1))


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_linf_reaches_corner_of_ball(loss):
    model, x, y = affine_problem(classes=2)
    w = model.weight.detach()
    eps = 0.02
    x_adv = pgd(model, x, y, norm="linf", eps=eps, step=0.007, steps=5, loss=loss)
    direction = torch.stack([(w[k] - w[1 - k]).sign() for k in y.tolist()]).view_as(x)
    assert torch.equal(x_adv, (x - eps * direction).clamp(0, 1))


def test_pgd_l2_reaches_predicted_point():
    model, x, y = affine_problem(classes=2)
    w = model.weight.detach()
    eps = 0.05
    x_adv = pgd(model, x, y, norm="l2", eps=eps, step=0.02, steps=6)
    normal = torch.stack([w[k] - w[1 - k] for k in y.tolist()])
    expected = x - eps * (normal / normal.norm(dim=1, keepdim=True)).view_as(x)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("attack", ["ddn", "cw"])
def test_minimal_attacks_within_ten_percent_of_optimum(attack):
    model, x, y = affine_problem(classes=4, n=6, seed=3)
    optimum = minimal_l2(model, x, y)
    # every pixel starts in [0.45, 0.55]: an L2 change below 0.45 cannot leave the box [0, 1]
    assert float(optimum.max()) < 0.45
    if attack == "ddn":
        x_adv, info = ddn(model, x, y, steps=200, init_norm=0.1, step=0.3, return_info=True)
    else:
        x_adv, info = cw(model, x, y, steps=100, search_steps=9, lr=0.01, c_init=1.0, return_info=True)
    assert bool(info["success"].all())
    assert bool(is_adversarial(model, x_adv, y).all())
    found = distortion(x_adv, x, "l2")
    assert bool((found >= optimum * (1 - 1e-6)).all()), "cannot beat the exact optimum"
    assert bool((found <= 1.1 * optimum).all()), (found / optimum).tolist()


# ---------------------------------------------------------------- invariants

ATTACKS = {
    "fgsm": lambda m, x, y, **k: fgsm(m, x, y, eps=0.05, **k),
    "ifgsm": lambda m, x, y, **k: ifgsm(m, x, y, eps=0.05, steps=5, **k),
    "pgd-linf": lambda m, x, y, **k: pgd(m, x, y, norm="linf", eps=0.05, step=0.02, steps=5, **k),
    "pgd-l2": lambda m, x, y, **k: pgd(m, x, y, norm="l2", eps=0.5, step=0.2, steps=5, **k),
    "cw": lambda m, x, y, **k: cw(m, x, y, steps=5, search_steps=2, **k),
    "ddn": lambda m, x, y, **k: ddn(m, x, y, steps=10, **k),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_invariants(name, small_net):
    model, x, y = small_net
    model.train()  # no dropout/BN: mode must simply be left as found
    model.conv.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    x_adv, info = ATTACKS[name](model, x, y, return_info=True)
    assert torch.equal(x, x_before), "input modified in place"
    assert model.training, "model mode changed"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "parameter gradients written"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv is not x
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert set(info) >= {"success", "calls", "grads"}
    assert info["success"].dtype == torch.bool and info["success"].shape == (x.shape[0],)
    with torch.no_grad():
        really = model(x_adv).argmax(1) != y
    assert torch.equal(info["success"], really)
    # each image alone gives the same result as in the batch
    for i in range(x.shape[0]):
        alone = ATTACKS[name](model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(alone, x_adv[i : i + 1], rtol=0, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 2.0),
    step=st.floats(0.0, 1.0),
    steps=st.integers(1, 6),
    random_start=st.booleans(),
)
def test_pgd_stays_in_ball_and_box(norm, eps, step, steps, random_start):
    model = SmallNet().eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    x_adv = pgd(model, x, y, norm=norm, eps=eps, step=step, steps=steps, random_start=random_start, seed=1)
    kind = "linf" if norm == "linf" else "l2"
    assert bool((distortion(x_adv, x, kind) <= eps + 1e-5).all())
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_ifgsm_stops_at_first_adversarial_iterate(small_net):
    model, x, y = small_net
    x_adv, info = ifgsm(model, x, y, eps=0.3, steps=30, return_info=True)
    assert bool(info["success"].all())
    # an image that stopped early spent fewer gradient computations than the budget
    assert int(info["grads"].min()) < 30
    assert bool((distortion(x_adv, x, "linf") <= 0.3 + 1e-12).all())


@pytest.mark.parametrize("name", ["pgd-linf", "pgd-l2", "ddn", "cw"])
def test_targeted_reaches_target(name, small_net):
    model, x, y = small_net
    targets = (y + 1) % 10
    big = {
        "pgd-linf": lambda: pgd(model, x, y, norm="linf", eps=0.5, step=0.05, steps=40, targets=targets),
        "pgd-l2": lambda: pgd(model, x, y, norm="l2", eps=8.0, step=0.5, steps=60, targets=targets),
        "ddn": lambda: ddn(model, x, y, steps=100, targets=targets),
        "cw": lambda: cw(model, x, y, steps=50, search_steps=5, c_init=10.0, lr=0.05, targets=targets),
    }[name]
    x_adv = big()
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1), targets)


def test_same_seed_same_output_and_seeds_differ(small_net):
    model, x, y = small_net
    kw = dict(norm="linf", eps=0.1, step=0.01, steps=3, random_start=True)
    a = pgd(model, x, y, seed=7, **kw)
    b = pgd(model, x, y, seed=7, **kw)
    c = pgd(model, x, y, generator=torch.Generator().manual_seed(7), **kw)
    d = pgd(model, x, y, seed=8, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)


def test_margin_tightens_cw_success(small_net):
    model, x, y = small_net
    x_adv, info = cw(model, x, y, steps=30, search_steps=4, c_init=10.0, lr=0.05, margin=-2.0, return_info=True)
    with torch.no_grad():
        z = model(x_adv)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    margin = z.gather(1, y[:, None]).squeeze(1) - other
    assert bool((margin[info["success"]] <= -2.0 + 1e-9).all())


def test_registry_names():
    assert {"fgsm", "ifgsm", "pgd", "cw", "ddn"} <= set(REGISTRY)
    assert all(callable(fn) and name == fn.__name__ for name, fn in REGISTRY.items())


def test_float32_and_calls_are_counted():
    model = SmallNet().eval()
    x = torch.rand(3, 1, 8, 8)
    y = torch.zeros(3, dtype=torch.long)
    x_adv, info = pgd(model, x, y, norm="linf", eps=0.1, step=0.02, steps=4, return_info=True)
    assert x_adv.dtype == torch.float32
    assert info["grads"].tolist() == [4, 4, 4]
    assert info["calls"].tolist() == [5, 5, 5]  # 4 gradients + the final success check


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y: (x[0], y), "4-D"),
        (lambda x, y: ((x * 255).to(torch.uint8), y), "floating-point"),
        (lambda x, y: (x * 2, y), "[0, 1]"),
        (lambda x, y: (x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(0, torch.tensor([0]), 1),
                                     float("nan")), y), "NaN"),
        (lambda x, y: (x, y[:-1]), "entries"),
        (lambda x, y: (x, y.float()), "integer"),
        (lambda x, y: (x, y + 10), "logits"),
        (lambda x, y: (x, y - 10), ">= 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message, small_net):
    model, x, y = small_net
    bx, by = mutate(x, y)
    for name in ATTACKS:
        with pytest.raises(InputError, match=message if message != "[0, 1]" else r"\[0, 1\]"):
            ATTACKS[name](model, bx, by)


def test_bad_parameters_raise(small_net):
    model, x, y = small_net
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, norm="l3", eps=0.1, step=0.1, steps=1)
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, eps=-1, step=0.1, steps=1)
    with pytest.raises(ValueError, match="steps"):
        ddn(model, x, y, steps=0)
    with pytest.raises(ValueError, match="loss"):
        fgsm(model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="margin"):
        cw(model, x, y, margin=1.0)
    with pytest.raises(ValueError, match="targets must differ"):
        pgd(model, x, y, eps=0.1, step=0.1, steps=1, targets=y)
    with pytest.raises(ValueError, match="seed"):
        pgd(model, x, y, eps=0.1, step=0.1, steps=1, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="nn.Module"):
        fgsm(lambda t: t, x, y, eps=0.1)
    with pytest.raises(ValueError, match="gamma"):
        ddn(model, x, y, gamma=1.5)


def test_model_with_wrong_output_shape_raises():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError, match="logits"):
        fgsm(nn.Identity(), x, torch.zeros(2, dtype=torch.long), eps=0.1)


# ---------------------------------------------------------------- budget search (Sec. 5.4)


def test_budget_search_brackets_the_minimal_fgsm_eps_on_binary_affine():
    """Binary affine model: FGSM succeeds iff eps >= margin / ||w_y - w_k||_1 (closed form)."""
    from quantadv.attacks import budget_search

    model, x, y = affine_problem(classes=2, n=12, seed=3)
    exact = minimal_linf(model, x, y)
    low, high, rounds = 0.0, 0.4, 6
    x_adv, info = budget_search(fgsm, model, x, y, low=low, high=high, rounds=rounds, return_info=True)
    width = (high - low) / 2**rounds
    inside = exact < high - width
    assert inside.sum() >= 6
    b = info["budget"]
    assert torch.all(b[inside] >= exact[inside] - 1e-9) and torch.all(b[inside] <= exact[inside] + width + 1e-9)
    assert torch.equal(info["success"], torch.isfinite(b))
    assert torch.all(info["calls"] == rounds * 2) and torch.all(info["grads"] == rounds)  # FGSM: 1 grad + check
    # the returned image is FGSM at the found budget
    for i in torch.nonzero(info["success"]).flatten().tolist():
        ref = fgsm(model, x[i : i + 1], y[i : i + 1], eps=float(b[i]))
        assert torch.allclose(x_adv[i : i + 1], ref)
    # images that never succeed keep the last (largest) budget tried; batch == per image
    for i in range(3):
        one = budget_search(fgsm, model, x[i : i + 1], y[i : i + 1], low=low, high=high, rounds=rounds)
        assert torch.allclose(one, x_adv[i : i + 1])


def test_budget_search_rejects_bad_input(small_net):
    from quantadv.attacks import budget_search

    model, x, y = small_net
    with pytest.raises(InputError, match="low < high"):
        budget_search(pgd, model, x, y, low=0.5, high=0.1, step=0.1, steps=3)
    with pytest.raises(InputError, match="searched"):
        budget_search(ifgsm, model, x, y, low=0.0, high=0.1, eps=0.2)
    # the attack's own steps pass through: 2 rounds of 3-step I-FGSM = at most 6 gradients
    _, info = budget_search(ifgsm, model, x, y, low=0.0, high=0.2, rounds=2, steps=3, return_info=True)
    assert int(info["grads"].max()) <= 6 and int(info["grads"].min()) >= 2
    with pytest.raises(InputError, match="attack function"):
        budget_search("pgd", model, x, y, low=0.0, high=0.1)
