"""APGD, APGD-T and Square (the evaluation ensemble) on models whose answer is known."""

from __future__ import annotations

import pytest
import torch

from conftest import SmallNet, affine_problem, minimal_l2, minimal_linf
from quantadv import InputError
from quantadv.attacks import REGISTRY, apgd, apgd_t, attack_loss, square
from quantadv.attacks.apgd import apgd_checkpoints
from quantadv.attacks.square import eta_rectangle, square_p


def _closed_form_case(classes=4, n=16, seed=3):
    model, x, y = affine_problem(classes=classes, n=n, seed=seed, dtype=torch.float64)
    return model, x, y


def _check_against_closed_form(info, minimal, eps, slack):
    """Broken exactly where the minimal adversarial distance is below eps (with a slack)."""
    ok = info["success"]
    assert not bool(ok[minimal > eps].any())  # impossible: the budget is below the minimum
    assert bool(ok[minimal * slack < eps].all())  # found wherever eps clears the minimum
    assert bool((minimal * slack < eps).sum() >= 3) and bool((minimal > eps).sum() >= 3)  # both sides tested


@pytest.mark.parametrize("norm,loss", [("linf", "ce"), ("linf", "dlr"), ("l2", "ce"), ("l2", "dlr")])
def test_apgd_finds_the_minimal_adversarial_of_a_linear_model(norm, loss):
    model, x, y = _closed_form_case()
    minimal = (minimal_linf if norm == "linf" else minimal_l2)(model, x, y)
    eps = float(minimal.median())
    x_adv, info = apgd(model, x, y, norm=norm, eps=eps, steps=50, loss=loss, seed=0, return_info=True)
    _check_against_closed_form(info, minimal, eps, slack=1.01)
    dist = (x_adv - x).flatten(1).abs().amax(1) if norm == "linf" else (x_adv - x).flatten(1).norm(dim=1)
    assert bool((dist <= eps * (1 + 1e-9)).all())
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) != y, info["success"])


def _square_found_iff_possible(model, x, y, norm, minimal, slack, queries=1000):
    """Found for every image when eps is ``slack`` x the largest minimum; never below the smallest."""
    for eps, expect in ((slack * float(minimal.max()), True), (0.98 * float(minimal.min()), False)):
        x_adv, info = square(model, x, y, norm=norm, eps=eps, queries=queries, seed=0, return_info=True)
        assert bool((info["success"] == expect).all())
        d = (x_adv - x).flatten(1)
        assert bool(((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)) <= eps * (1 + 1e-9)).all())
        assert info["grads"].sum() == 0 and bool((info["calls"] <= queries).all())


@pytest.mark.parametrize("classes,slack", [(2, 1.02), (4, 1.25)])
def test_square_linf_finds_the_minimal_adversarial_of_a_linear_model(classes, slack):
    """Two classes: the margin is linear, so the random search over the vertices of the
    eps-cube reaches the best vertex. More classes: the margin is concave, the search can
    stall at a vertex that is only locally best, so it must succeed above 1.25x the minimum."""
    model, x, y = _closed_form_case(classes=classes, n=8, seed=4)
    _square_found_iff_possible(model, x, y, "linf", minimal_linf(model, x, y), slack)


def test_square_l2_breaks_a_linear_model_within_twice_the_minimal_norm():
    """L2 Square is a random search over structured windows: it does not reach the exact minimal
    perturbation of a generic linear model, but must stay within 2x of it, never below it."""
    model, x, y = _closed_form_case(n=8, seed=5)
    _square_found_iff_possible(model, x, y, "l2", minimal_l2(model, x, y), 2.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["apgd", "apgd_t", "square"])
def test_budget_box_purity_and_seed(norm, name):
    torch.manual_seed(0)
    model = SmallNet().train()  # the mode must be left as found
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x[:, :, :2] = 0.0  # pixels at the box's edges
    x[:, :, -2:] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    x_copy, y_copy = x.clone(), y.clone()
    flags = [p.requires_grad for p in model.parameters()]
    eps = 0.05 if norm == "linf" else 0.5
    kw = dict(norm=norm, eps=eps, seed=7)
    kw.update(dict(queries=60) if name == "square" else dict(steps=8))
    fn = {"apgd": apgd, "apgd_t": apgd_t, "square": square}[name]
    a, info = fn(model, x, y, return_info=True, **kw)
    b = fn(model, x, y, **kw)
    assert torch.equal(a, b)  # same seed, same result
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    d = (a - x).flatten(1)
    assert bool(((d.abs().amax(1) if norm == "linf" else d.norm(dim=1)) <= eps + 1e-6).all())
    with torch.no_grad():
        pred = model(a).argmax(1)
    assert torch.equal(info["pred"], pred)  # the engine's pred, no extra pass needed by callers
    assert torch.equal(info["success"], pred != y)
    if name == "square":
        c = fn(model, x, y, **{**kw, "seed": 8})
        assert not torch.equal(a, c)


def test_targeted_apgd_and_square_reach_their_targets():
    model, x, y = _closed_form_case(classes=4, n=10, seed=6)
    t = (y + 1) % 4
    for fn, kw in ((apgd, dict(steps=50, loss="dlr")), (apgd, dict(steps=50, loss="ce")),
                   (square, dict(queries=500))):
        x_adv, info = fn(model, x, y, eps=0.5, targets=t, seed=0, return_info=True, **kw)
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        assert torch.equal(info["success"], pred == t)
        assert bool(info["success"].all())  # a large budget reaches every target of a linear model
    with pytest.raises(InputError, match="targets must differ"):
        apgd(model, x, y, eps=0.1, targets=y)


def test_apgd_t_counts_any_misclassification_and_tries_the_likely_classes_in_order():
    model, x, y = _closed_form_case(classes=4, n=16, seed=3)
    minimal = minimal_linf(model, x, y)
    eps = float(minimal.median())
    x_adv, info = apgd_t(model, x, y, eps=eps, steps=50, classes=3, seed=0, return_info=True)
    _check_against_closed_form(info, minimal, eps, slack=1.01)
    broken = info["success"]
    assert bool((info["target"][broken] >= 0).all()) and bool((info["target"][~broken] == -1).all())
    assert bool((info["target"][broken] != y[broken]).all())
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) != y, broken)
    # images no target broke were attacked toward each of the 3 classes: more gradients
    assert bool((info["grads"][~broken] >= 3 * 50).all())
    x1, i1 = apgd_t(model, x, y, eps=eps, steps=50, classes=1, seed=0, return_info=True)
    assert int(i1["success"].sum()) <= int(broken.sum())


def test_engine_options_apply_to_apgd_and_square():
    model, x, y = _closed_form_case(classes=4, n=8, seed=2)
    base = apgd(model, x, y, eps=0.01, steps=10, seed=1)
    assert torch.equal(base, apgd(model, x, y, eps=0.01, steps=10, seed=1, temperature=1.0))
    assert torch.equal(base, apgd(model, x, y, eps=0.01, steps=10, seed=1, eot=2))  # deterministic model
    sq = square(model, x, y, eps=0.01, queries=50, seed=1)
    assert torch.equal(sq, square(model, x, y, eps=0.01, queries=50, seed=1, eot=3))
    # temperature changes the CE loss APGD climbs, not the success criterion
    _, hot = apgd(model, x, y, eps=0.01, steps=10, seed=1, temperature=100.0, return_info=True)
    with torch.no_grad():
        assert torch.equal(hot["pred"], model(apgd(model, x, y, eps=0.01, steps=10, seed=1,
                                                   temperature=100.0)).argmax(1))
    _, i1 = apgd(model, x, y, eps=0.004, steps=5, seed=1, return_info=True)
    _, i3 = apgd(model, x, y, eps=0.004, steps=5, seed=1, restarts=3, return_info=True)
    assert bool((i3["success"] | ~i1["success"]).all()) and "restart" in i3
    _, s3 = square(model, x, y, eps=0.004, queries=20, seed=1, restarts=3, return_info=True)
    assert "restart" in s3 and s3["grads"].sum() == 0
    with pytest.raises(InputError, match="random_start"):
        apgd(model, x, y, eps=0.01, steps=5, random_start=False, restarts=2)


def test_apgd_checkpoints_and_square_schedule_follow_the_papers():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert square_p(0.8, 0, 10000) == 0.8 and square_p(0.8, 10, 10000) == 0.8
    assert square_p(0.8, 11, 10000) == 0.4 and square_p(0.8, 8001, 10000) == 0.8 / 512
    assert square_p(0.8, 6, 5000) == 0.4  # the schedule of 10,000 queries, rescaled
    eta = eta_rectangle(3, 5, torch.float64)
    assert eta.shape == (3, 5) and float(eta[1, 2]) == float(eta.max()) and bool((eta > 0).all())


def test_dlr_loss_is_shift_and_scale_invariant_and_needs_enough_classes():
    z = torch.randn(5, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = z.argmax(1)
    t = (y + 3) % 10
    for targets in (None, t):
        a = attack_loss(z, y, targets, "dlr")
        torch.testing.assert_close(attack_loss(7.5 * z + 3.0, y, targets, "dlr"), a)
    top = z.sort(1, descending=True).values
    expected = (z.gather(1, y[:, None]).squeeze(1) - top[:, 1]) / (top[:, 0] - top[:, 2] + 1e-12)
    torch.testing.assert_close(attack_loss(z, y, None, "dlr"), expected)
    with pytest.raises(InputError, match="at least 4 classes"):
        attack_loss(z[:, :3], y.clamp(max=1), (y.clamp(max=1) + 1) % 3, "dlr")


@pytest.mark.parametrize("bad", [dict(norm="l3"), dict(eps=-0.1), dict(steps=0), dict(rho=1.5)])
def test_apgd_refuses_bad_parameters(bad):
    model, x, y = _closed_form_case(n=2)
    with pytest.raises(InputError):
        apgd(model, x, y, **{"eps": 0.1, **bad})


@pytest.mark.parametrize("bad", [dict(norm="l1"), dict(eps=-0.1), dict(queries=0), dict(p_init=1.5)])
def test_square_refuses_bad_parameters(bad):
    model, x, y = _closed_form_case(n=2)
    with pytest.raises(InputError):
        square(model, x, y, **{"eps": 0.1, **bad})


def test_the_ensemble_attacks_are_registered_for_configs_and_the_cli():
    assert REGISTRY["apgd"] is apgd and REGISTRY["apgd_t"] is apgd_t and REGISTRY["square"] is square
