"""Options the engine gives every attack: temperature, EOT, restarts and ``pred`` in info."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import SmallNet, affine_problem
from quantadv import InputError
from quantadv.attacks import cw, ddn, fgsm, ifgsm, pgd
from quantadv.attacks.engine import make_problem, with_restarts


class NoisyNet(nn.Module):
    """A randomised model: ``SmallNet(x + sigma * noise)`` with noise from a seeded generator."""

    def __init__(self, net: nn.Module, sigma: float, seed: int):
        super().__init__()
        self.net, self.sigma = net, sigma
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.gen, dtype=x.dtype)
        return self.net(x + self.sigma * noise)


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd", "cw", "ddn"])
def test_info_pred_is_the_models_class_at_the_output(small_net, name):
    model, x, y = small_net
    kw = {"fgsm": dict(eps=0.1), "ifgsm": dict(eps=0.1, steps=5), "pgd": dict(eps=0.1, step=0.02, steps=5),
          "cw": dict(steps=5, search_steps=2), "ddn": dict(steps=10)}[name]
    fn = {"fgsm": fgsm, "ifgsm": ifgsm, "pgd": pgd, "cw": cw, "ddn": ddn}[name]
    x_adv, info = fn(model, x, y, return_info=True, **kw)
    with torch.no_grad():
        expected = model(x_adv).argmax(1)
    assert torch.equal(info["pred"], expected)
    assert torch.equal(info["success"], expected != y)


def test_temperature_one_is_bit_identical_and_scales_the_loss(small_net):
    model, x, y = small_net
    a = pgd(model, x, y, eps=0.05, step=0.01, steps=4)
    b = pgd(model, x, y, eps=0.05, step=0.01, steps=4, temperature=1.0)
    assert torch.equal(a, b)
    p1 = make_problem(model, x, y)
    p3 = make_problem(model, x, y, temperature=3.0)
    idx = torch.arange(x.shape[0])
    l1, _, z1 = p1.loss_and_grad(x, idx)
    l3, _, z3 = p3.loss_and_grad(x, idx)
    assert torch.equal(z1, z3)  # logits (and so success) are never scaled
    expected = -torch.nn.functional.cross_entropy(3.0 * z1, y, reduction="none")
    torch.testing.assert_close(l3, expected)
    # a per-image temperature restricted to the active images
    t = torch.linspace(0.5, 2.0, x.shape[0], dtype=x.dtype)
    pt = make_problem(model, x, y, temperature=t)
    sub = torch.tensor([1, 4])
    ls, _, _ = pt.loss_and_grad(x[sub], sub)
    expected = -torch.nn.functional.cross_entropy(t[sub, None] * z1[sub], y[sub], reduction="none")
    torch.testing.assert_close(ls, expected)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), "hot"])
def test_bad_temperature_is_refused(small_net, bad):
    model, x, y = small_net
    with pytest.raises(InputError, match="temperature"):
        pgd(model, x, y, eps=0.05, step=0.01, steps=2, temperature=bad)


def test_eot_of_a_deterministic_model_equals_one_draw(small_net):
    model, x, y = small_net
    idx = torch.arange(x.shape[0])
    l1, g1, z1 = make_problem(model, x, y).loss_and_grad(x, idx)
    p = make_problem(model, x, y, eot=4)
    l4, g4, z4 = p.loss_and_grad(x, idx)
    torch.testing.assert_close(g4, g1)
    torch.testing.assert_close(l4, l1)
    assert p.calls.tolist() == [4] * x.shape[0] and p.grads.tolist() == [4] * x.shape[0]
    with pytest.raises(InputError, match="eot"):
        make_problem(model, x, y, eot=0)


def test_eot_averages_the_gradient_over_draws(small_net):
    net, x, y = small_net
    idx = torch.arange(x.shape[0])
    m = 5
    averaged = make_problem(NoisyNet(net, 0.1, seed=7), x, y, eot=m).loss_and_grad(x, idx)[1]
    manual_model = NoisyNet(net, 0.1, seed=7)  # same seed: the same m draws, one at a time
    single = make_problem(manual_model, x, y)
    manual = sum(single.loss_and_grad(x, idx)[1] for _ in range(m)) / m
    torch.testing.assert_close(averaged, manual)
    one = make_problem(NoisyNet(net, 0.1, seed=7), x, y).loss_and_grad(x, idx)[1]
    assert not torch.allclose(averaged, one)


def test_restarts_never_worse_and_report_the_breaking_restart():
    model, x, y = affine_problem(classes=4, n=12, seed=5, dtype=torch.float32)
    kw = dict(norm="linf", eps=0.02, step=0.004, steps=3, random_start=True)
    x1, i1 = pgd(model, x, y, seed=3, return_info=True, **kw)
    xr, ir = pgd(model, x, y, seed=3, restarts=6, return_info=True, **kw)
    assert bool((ir["success"] | ~i1["success"]).all())  # never worse than the first run
    # the images the first run broke are untouched, with restart index 0
    assert torch.equal(xr[i1["success"]], x1[i1["success"]])
    assert bool((ir["restart"][i1["success"]] == 0).all())
    later = ir["success"] & ~i1["success"]
    assert bool((ir["restart"][later] > 0).all())
    assert bool((ir["restart"][~ir["success"]] == -1).all())
    with torch.no_grad():
        assert torch.equal(model(xr).argmax(1) != y, ir["success"])
        assert torch.equal(ir["pred"], model(xr).argmax(1))
    # calls: broken images cost nothing after their restart
    assert bool((ir["calls"][i1["success"]] == i1["calls"][i1["success"]]).all())
    assert bool((ir["calls"][~i1["success"]] > i1["calls"][~i1["success"]]).all())
    assert bool(((xr - x).abs() <= 0.02 + 1e-6).all())


def test_restarts_break_an_image_only_a_later_start_breaks():
    """An attack that succeeds only from some random starts: restarts find them, one run may not."""
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    kw = dict(norm="linf", eps=0.03, step=0.01, steps=2, random_start=True)
    _, i1 = pgd(net, x, y, seed=0, return_info=True, **kw)
    _, i8 = pgd(net, x, y, seed=0, restarts=8, return_info=True, **kw)
    assert int(i8["success"].sum()) >= int(i1["success"].sum())
    with pytest.raises(InputError, match="random_start"):
        pgd(net, x, y, eps=0.03, step=0.01, steps=2, restarts=2)
    with pytest.raises(InputError, match="restarts"):
        with_restarts(pgd, net, x, y, restarts=0, generator=None)


def _restart_case():
    torch.manual_seed(0)
    net = SmallNet().eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


@pytest.mark.parametrize("name", ["pgd", "pqgd", "daa_blob", "pgd_pp"])
def test_restartable_prologue_equals_the_explicit_restart_loop(name):
    """The ``@restartable`` prologue is bit-identical to the explicit code it replaced:
    ``with_restarts`` over single runs, one generator from the seed, one NJS beta1 for PGD++."""
    from quantadv.attacks import daa_blob, njs_temperature, pgd_pp, pqgd

    net, x, y = _restart_case()
    fn = {"pgd": pgd, "pqgd": pqgd, "daa_blob": daa_blob, "pgd_pp": pgd_pp}[name]
    kw = dict(eps=0.03, step=0.01, steps=3, random_start=True)
    kw.update({"pqgd": dict(b=10), "pgd_pp": dict(samples=8)}.get(name, {}))
    got, got_info = fn(net, x, y, restarts=3, seed=1, return_info=True, **kw)
    explicit = dict(kw)
    if name == "pgd_pp":
        explicit["beta1"] = njs_temperature(net, x, y, samples=8)
    want, want_info = with_restarts(fn, net, x, y, restarts=3, generator=torch.Generator().manual_seed(1),
                                    return_info=True, **explicit)
    assert torch.equal(got, want)
    assert set(got_info) == set(want_info) and "restart" in got_info
    for key in got_info:
        assert torch.equal(got_info[key], want_info[key]), key
    # restarts=1 with a seed is the body called once with that seed's generator
    one = fn(net, x, y, seed=1, **kw)
    assert torch.equal(one, fn(net, x, y, generator=torch.Generator().manual_seed(1), **kw))
    with pytest.raises(InputError, match="random_start"):
        fn(net, x, y, restarts=2, **{**kw, "random_start": False})
    with pytest.raises(InputError, match="either seed= or generator="):
        fn(net, x, y, seed=1, generator=torch.Generator(), **kw)


def test_restartable_keeps_the_signature_and_slices_per_image_temperature():
    import inspect

    net, x, y = _restart_case()
    params = inspect.signature(pgd).parameters
    assert {"eps", "step", "steps", "restarts", "seed", "generator", "temperature"} <= set(params)
    assert "Projected gradient descent" in (pgd.__doc__ or "")
    t = torch.linspace(0.5, 3.0, x.shape[0])
    kw = dict(eps=0.03, step=0.01, steps=3, random_start=True, temperature=t)
    x1, i1 = pgd(net, x, y, seed=4, return_info=True, **kw)
    xr, ir = pgd(net, x, y, seed=4, restarts=4, return_info=True, **kw)  # later restarts see t[todo]
    assert torch.equal(xr[i1["success"]], x1[i1["success"]])
    assert bool((ir["success"] | ~i1["success"]).all())
    with torch.no_grad():
        assert torch.equal(net(xr).argmax(1) != y, ir["success"])


def test_attacks_import_nothing_from_the_layers_above():
    """No import runs upward: quantadv.attacks never imports diagnostics, eval, experiments or cli."""
    import ast
    from pathlib import Path

    import quantadv.attacks
    import quantadv.diagnostics
    from quantadv import _jacobian

    above = ("diagnostics", "eval", "experiments", "cli", "defenses")
    root = Path(quantadv.attacks.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert not any(module == a or module.startswith(a + ".") for a in above) or node.level == 0, \
                    f"{path.name} imports ..{module}"
                assert not any(f"quantadv.{a}" in module for a in above), f"{path.name} imports {module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not any(alias.name.startswith(f"quantadv.{a}") for a in above), path.name
    assert quantadv.diagnostics.jacobian_singular_values is _jacobian.jacobian_singular_values
    assert quantadv.diagnostics.input_jacobian is _jacobian.input_jacobian


# ---- loss numerics: "ce" (log_softmax) vs "ce-clipped" (clipped probabilities) -----------------

def _logit_grad(kind: str, logits: torch.Tensor, labels: torch.Tensor, targets=None) -> torch.Tensor:
    from quantadv.attacks import attack_loss

    z = logits.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(attack_loss(z, labels, targets, kind).sum(), z)
    return g


@pytest.mark.parametrize("margin", [17.0, 20.0, 40.0, 80.0])
def test_clipped_ce_gradient_is_exactly_zero_where_log_softmax_ce_is_not(margin):
    # three classes, true class 0 ahead by `margin`: in float32 p_0 rounds to 1, so "ce-clipped"
    # (clip to [1e-7, 1 - 1e-7]) is flat; the log_softmax CE keeps -p_j != 0 on the other classes
    # (d L_A / d z = y - p, L_A = log p_y), exp(-margin) and exp(-margin - 1) in closed form.
    logits = torch.tensor([[margin, 0.0, -1.0]])
    y = torch.tensor([0])
    g_clip = _logit_grad("ce-clipped", logits, y)
    g_ce = _logit_grad("ce", logits, y)
    assert torch.equal(g_clip, torch.zeros_like(g_clip))
    assert g_ce[0, 0] == 0  # the true-class term p_y - 1 has rounded away ...
    expected = -torch.exp(torch.tensor([-margin, -margin - 1.0], dtype=torch.float64))
    assert torch.allclose(g_ce[0, 1:].double(), expected, rtol=1e-4)  # ... the others have not
    assert bool((g_ce[0, 1:] != 0).all())


def test_clipped_ce_equals_ce_away_from_the_clip_and_flips_for_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 10, generator=gen)  # margins of a few units: no probability near the clip
    y = torch.randint(0, 10, (6,), generator=gen)
    t = (y + 1) % 10
    from quantadv.attacks import attack_loss

    for targets in (None, t):
        a = attack_loss(logits, y, targets, "ce-clipped")
        b = attack_loss(logits, y, targets, "ce")
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(_logit_grad("ce-clipped", logits, y, targets), _logit_grad("ce", logits, y, targets),
                              atol=1e-6)
    # targeted: a target with p_t below 1e-7 gives no gradient either
    far = torch.tensor([[30.0, 0.0, -10.0]])
    assert torch.equal(_logit_grad("ce-clipped", far, torch.tensor([0]), torch.tensor([2])), torch.zeros(1, 3))


def test_naive_log_softmax_has_the_stable_gradient_until_underflow():
    # why "ce-clipped" and not plain log(softmax(z)): under autograd the naive form's gradient is
    # the same p - y (through the softmax) at margins 17-80; it only differs (NaN) once p_y = 0.
    for margin in (17.0, 40.0, 80.0):
        z = torch.tensor([[margin, 0.0, -1.0]], requires_grad=True)
        (g,) = torch.autograd.grad(torch.log(torch.softmax(z, 1))[0, 0], z)
        assert torch.equal(g, _logit_grad("ce", z.detach(), torch.tensor([0])))


def test_pgd_with_clipped_ce_does_not_move_a_saturated_image():
    # a linear model with a huge logit gap: p_y == 1 in float32 on every image; PGD on "ce-clipped"
    # has a zero gradient (sign 0) and returns its start point; on "ce" it moves.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].weight.normal_()
        net[1].bias.copy_(torch.tensor([60.0, 0.0, 0.0]))
    x = torch.rand(4, 1, 4, 4) * 0.1
    y = torch.zeros(4, dtype=torch.long)
    assert bool((torch.softmax(net(x), 1)[:, 0] == 1).all())
    stuck = pgd(net, x, y, eps=0.05, step=0.01, steps=3, random_start=False, loss="ce-clipped")
    moved = pgd(net, x, y, eps=0.05, step=0.01, steps=3, random_start=False, loss="ce")
    assert torch.equal(stuck, x)
    assert not torch.equal(moved, x)
