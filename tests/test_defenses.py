"""Paper 002 toolkit: SoftQuantization / HardQuantization, Defended, bpda, adaptive, EOT, specs, NSQ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantadv
from quantadv.attacks.engine import make_problem
from quantadv.defenses import (
    BPDA,
    Defended,
    HardQuantization,
    SoftQuantization,
    adaptive,
    bpda,
    format_spec,
    is_randomized,
    parse_defense,
)
from quantadv.errors import InputError, QuantadvError


def _grid_images(n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 6, 6), generator=g).float() / 255.0


class Linear(nn.Module):
    def __init__(self, d: int = 36, classes: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, d, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


class NoisyPreprocess(nn.Module):
    """A randomized defense: adds Gaussian noise from torch's global generator (or generator=)."""

    randomized = True

    def forward(self, x, generator=None):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return (x + 0.1 * noise).clamp(0, 1)


# ---------------------------------------------------------------------------- soft quantization


@pytest.mark.parametrize("levels", [1, 2, 4, 7])
def test_soft_tends_to_hard_and_is_exact_on_digital_images(levels):
    x = _grid_images(16)
    hard = HardQuantization(levels)(x)
    assert set((hard * levels).round().unique().tolist()) <= set(range(levels + 1))
    gaps = [(SoftQuantization(levels, a)(x) - hard).abs().max().item() for a in (10, 100, 1000, 1e4)]
    assert all(b <= a + 1e-7 for a, b in zip(gaps, gaps[1:], strict=False)), gaps  # shrinking as alpha grows
    # digital images never lie on a threshold (2k+1)/(2K): large alpha gives exactly K+1 levels
    assert torch.equal(SoftQuantization(levels, 1e7)(x), hard)


def test_soft_quantization_range_monotone_and_equation_3():
    x = torch.linspace(0, 1, 10001)
    for levels, alpha in [(1, 1000), (1, 5), (3, 50), (8, 1000)]:
        s = SoftQuantization(levels, alpha)(x)
        assert float(s.min()) >= 0 and float(s.max()) <= 1
        assert bool((s[1:] >= s[:-1]).all()), (levels, alpha)
    # Eq. 3 by hand: K = 2, x = 0.3 lies in interval k = 0, centre 1/4
    s = SoftQuantization(2, 40)(torch.tensor([0.3, 0.8], dtype=torch.float64))
    expect = torch.tensor([0.5 * torch.sigmoid(torch.tensor(40 * 0.05, dtype=torch.float64)),
                           0.5 * torch.sigmoid(torch.tensor(40 * 0.05, dtype=torch.float64)) + 0.5])
    assert torch.allclose(s, expect)


def test_soft_quantization_gradient_is_eq_8_and_masked_at_large_alpha():
    x = torch.rand(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    sq = SoftQuantization(2, 30)
    (g,) = torch.autograd.grad(sq(x).sum(), x)
    assert torch.allclose(g, sq.derivative(x.detach()))
    # alpha = 1000, K = 1: a pixel at 0 or 1 has an exactly zero float32 gradient
    x0 = torch.tensor([0.0, 1.0, 0.3, 0.5], requires_grad=True)
    (g0,) = torch.autograd.grad(SoftQuantization(1, 1000)(x0).sum(), x0)
    assert g0[0] == 0 and g0[1] == 0 and g0[3] == 250


def test_quantizer_parameter_errors():
    for bad in (lambda: SoftQuantization(0, 10), lambda: SoftQuantization(1, -1), lambda: HardQuantization(1.5)):
        with pytest.raises(QuantadvError):
            bad()
    with pytest.raises(InputError):
        SoftQuantization(1, 10)(torch.zeros(2, 2, dtype=torch.uint8))


# ---------------------------------------------------------------------------- bpda


@pytest.mark.parametrize("module", [HardQuantization(2), SoftQuantization(1, 1000), NoisyPreprocess()])
def test_bpda_forward_is_bit_identical(module):
    x = torch.rand(5, 1, 6, 6, requires_grad=True)
    wrapped = bpda(module)
    if is_randomized(module):
        a = wrapped(x, generator=torch.Generator().manual_seed(3))
        b = module(x.detach(), generator=torch.Generator().manual_seed(3))
    else:
        a, b = wrapped(x), module(x.detach())
    assert torch.equal(a, b)
    assert a.requires_grad


def test_bpda_backward_identity_and_given_function():
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    (g,) = torch.autograd.grad(bpda(HardQuantization(1))(x), x, v)
    assert torch.equal(g, v)  # identity: the vector passes through unchanged
    smooth = SoftQuantization(1, 8)
    (g2,) = torch.autograd.grad(bpda(HardQuantization(1), backward=smooth)(x), x, v)
    (ref,) = torch.autograd.grad(smooth(x), x, v)
    assert torch.allclose(g2, ref)
    # a non-elementwise approximation: its full vector-Jacobian product is used
    (g3,) = torch.autograd.grad(bpda(HardQuantization(1), backward=lambda t: t * t.sum())(x), x, v)
    expect = v * x.detach().sum() + (v * x.detach()).sum()
    assert torch.allclose(g3, expect)
    # through a whole Defended model, against a finite-difference-free closed form
    clf = Linear()
    model = Defended(bpda(HardQuantization(1)), clf)
    xf = torch.rand(2, 1, 6, 6, requires_grad=True)
    (gx,) = torch.autograd.grad(model(xf)[:, 1].sum(), xf)
    assert torch.allclose(gx, clf.w[1].detach().view(1, 1, 6, 6).expand(2, 1, 6, 6))


def test_bpda_errors():
    with pytest.raises(InputError):
        bpda(lambda t: t)
    with pytest.raises(InputError):
        bpda(HardQuantization(1), backward="zero")


# ---------------------------------------------------------------------------- Defended / adaptive


def test_defended_parts_and_generator_passthrough():
    clf = Linear()
    det = Defended(SoftQuantization(1, 1000), clf)
    assert det.preprocess.levels == 1 and det.classifier is clf and not det.randomized
    x = torch.rand(3, 1, 6, 6)
    assert torch.equal(det(x, generator=torch.Generator()), clf(SoftQuantization(1, 1000)(x)))  # ignored
    rnd = Defended(NoisyPreprocess(), clf)
    assert rnd.randomized
    a = rnd(x, generator=torch.Generator().manual_seed(1))
    b = rnd(x, generator=torch.Generator().manual_seed(1))
    c = rnd(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(k.split(".")[0] for k in det.state_dict()) == {"classifier"}
    with pytest.raises(InputError):
        Defended(lambda t: t, clf)


def test_adaptive_modes():
    clf = Linear()
    det = Defended(SoftQuantization(1, 1000), clf)
    assert adaptive(det, "none") == (det, 1)
    m, eot = adaptive(det, "bpda")
    assert isinstance(m.preprocess, BPDA) and m.classifier is clf and eot == 1
    assert adaptive(det, "bpda+eot", eot_samples=10)[1] == 1  # deterministic: one draw is enough
    rnd = Defended(NoisyPreprocess(), clf)
    m, eot = adaptive(rnd, "bpda+eot", eot_samples=7)
    assert eot == 7 and isinstance(m.preprocess, BPDA) and m.randomized
    assert adaptive(rnd, "bpda")[1] == 1
    assert adaptive(clf, "bpda+eot") == (clf, 1)  # an undefended model is attacked as is
    x = torch.rand(4, 1, 6, 6)
    assert torch.equal(m(x, generator=torch.Generator().manual_seed(0)),
                       rnd(x, generator=torch.Generator().manual_seed(0)))
    for bad in [("x", 10), ("bpda", 0)]:
        with pytest.raises(InputError):
            adaptive(det, *bad)


def test_paper003_quantizers_count_as_randomized():
    from quantadv.defenses import RandDisc

    assert is_randomized(RandDisc(2, 0.0, 0.0))
    assert adaptive(Defended(RandDisc(2, 0.0, 0.0), Linear()), "bpda+eot", 5)[1] == 5


# ---------------------------------------------------------------------------- EOT through Defended


def _grad(model, x, y, eot):
    problem = make_problem(model, x, y, loss="ce", eot=eot)
    _, g, _ = problem.loss_and_grad(x, torch.arange(x.shape[0]))
    return g


def test_eot_deterministic_defense_equals_one_draw():
    model, _ = adaptive(Defended(SoftQuantization(1, 20), Linear()), "bpda")
    x, y = torch.rand(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    model = model.double()
    assert torch.allclose(_grad(model, x, y, eot=5), _grad(model, x, y, eot=1), rtol=1e-12, atol=0)


def test_eot_random_defense_is_manual_average_with_same_seeds():
    clf = Linear().double()
    model, m = adaptive(Defended(NoisyPreprocess(), clf), "bpda+eot", eot_samples=6)
    x, y = torch.rand(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(123)
    g_eot = _grad(model, x, y, eot=m)
    torch.manual_seed(123)
    manual = torch.stack([_grad(model, x, y, eot=1) for _ in range(m)]).mean(0)
    assert torch.allclose(g_eot, manual, rtol=1e-10, atol=1e-12)
    torch.manual_seed(124)
    assert not torch.allclose(_grad(model, x, y, eot=m), g_eot)  # other draws, other gradient
    # and one draw differs from the average (the defense is really random)
    torch.manual_seed(123)
    assert not torch.allclose(_grad(model, x, y, eot=1), g_eot)


def test_pgd_on_bpda_breaks_hard_quantized_linear_model():
    # the naive attack sees zero gradients through HardQuantization; BPDA does not
    clf = Linear(seed=1)
    x = torch.full((6, 1, 6, 6), 0.45) + 0.1 * torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    defended = Defended(HardQuantization(1), clf)
    y = defended(x).argmax(1)
    naive = quantadv.attacks.pgd(defended, x, y, eps=0.1, step=0.02, steps=20, return_info=True)[1]
    attacked, eot = adaptive(defended, "bpda")
    adapt = quantadv.attacks.pgd(attacked, x, y, eps=0.1, step=0.02, steps=20, eot=eot, return_info=True)[1]
    assert int(naive["success"].sum()) == 0
    assert int(adapt["success"].sum()) == 6


# ---------------------------------------------------------------------------- spec strings


def test_parse_defense_specs_and_errors():
    sq = parse_defense("softq:levels=2,alpha=100*255")
    assert isinstance(sq, SoftQuantization) and sq.levels == 2 and sq.alpha == 25500
    assert isinstance(parse_defense(" HardQ : levels = 3 "), HardQuantization)
    assert format_spec("SoftQ: levels=1, alpha=1000") == "softq:levels=1,alpha=1000"
    rd = parse_defense("randdisc:k=2,sigma=4/255,tau=4/255")
    assert type(rd).__name__ == "RandDisc"
    for bad, needle in [
        ("", "string"),
        ("nope:x=1", "known defenses"),
        ("softq:levels=1", "missing"),
        ("softq:levels=1,alpha=10,beta=2", "unknown parameter"),
        ("softq:levels=one,alpha=10", "integer"),
        ("softq:levels", "key=value"),
        ("softq:levels=1,levels=2,alpha=3", "twice"),
        ("softq:levels=0,alpha=3", ">= 1"),
    ]:
        with pytest.raises(QuantadvError, match=needle):
            parse_defense(bad)


# ---------------------------------------------------------------------------- NSQ training


@pytest.mark.slow
def test_nsq_short_training_run_reaches_stated_accuracy():
    """NSQ (K = 1, alpha = 1000, noise 0.3) on 1,000 mnist-5k images for 2 epochs: >= 85% clean."""
    from quantadv import data, models

    torch.manual_seed(0)
    train_x, train_y = data.load("mnist-5k", "train")
    test_x, test_y = data.load("mnist-5k", "test")
    model = Defended(SoftQuantization(1, 1000), models.SmallCNN(1, 10, mean=0.13, std=0.31))
    cfg = models.TrainConfig(method="noisy", eps=0.3, epochs=2, batch_size=32, lr=1e-3, seed=0)
    result = models.train(model, train_x[:1000], train_y[:1000], cfg, progress=False, log=lambda s: None)
    assert isinstance(result.model, Defended)
    assert models.accuracy(result.model, test_x, test_y) >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-cnn-nsq", "fmnist-cnn-nsq"])
def test_defended_zoo_models_load_as_defended(name):
    from quantadv import models

    if name not in models.list():
        pytest.skip(f"{name} is not in the zoo yet")
    model = models.load(name)
    meta = models.manifest(name)
    assert isinstance(model, Defended) and isinstance(model.preprocess, SoftQuantization)
    assert format_spec(meta["defense"]) == meta["defense"]
    assert not model.training


def test_linf_pgd_through_soft_derivative_bpda_equals_identity_bpda():
    """A positive element-wise backward never changes a gradient's sign: for sign-step PGD,
    bpda(backward=SoftQuantization(K, low alpha)) takes exactly the steps of identity BPDA
    (docs/paper-002-soft-quantization.md, "one step past the paper")."""
    clf = Linear(seed=2)
    x = torch.rand(6, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    hard = HardQuantization(1)
    y = Defended(hard, clf)(x).argmax(1)
    kw = dict(eps=0.2, step=0.02, steps=10, random_start=True, seed=0)
    a = quantadv.attacks.pgd(Defended(bpda(hard), clf), x, y, **kw)
    b = quantadv.attacks.pgd(Defended(bpda(hard, backward=SoftQuantization(1, 20)), clf), x, y, **kw)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_train_cli_with_defense_stores_classifier_and_loads_defended(tmp_path):
    import json

    from safetensors.torch import load_file

    from quantadv import models
    from quantadv.cli import main

    argv = ["train", "--arch", "small-cnn", "--data", "mnist-5k", "--method", "noisy", "--noise", "0.3",
            "--defense", "SoftQ: levels=1, alpha=1000", "--epochs", "1", "--train-size", "64",
            "--out", "tiny-nsq", "--out-dir", str(tmp_path), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "tiny-nsq.json").read_text())
    assert meta["defense"] == "softq:levels=1,alpha=1000"
    assert "--defense softq:levels=1,alpha=1000" in meta["command"] and "--eps 0.3" in meta["command"]
    keys = set(load_file(str(tmp_path / "tiny-nsq.safetensors")))
    assert not any(k.startswith(("preprocess.", "classifier.normalize")) for k in keys)  # the bare classifier
    model = models.load_file(tmp_path / "tiny-nsq.safetensors")
    assert isinstance(model, Defended) and model.preprocess.alpha == 1000
    assert main([*argv[:-7], "--defense", "nope:x=1", "--out", "bad", "--out-dir", str(tmp_path)]) == 2
