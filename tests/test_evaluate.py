"""quantadv.evaluate: the cascade, the automatic choices, digital outputs (issue 20, part 3)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import quantadv
from conftest import quadrant_data, train_quadrant_net
from quantadv import is_digital
from quantadv.attacks import apgd, apgd_t, square
from quantadv.defenses import Defended, SoftQuantization
from quantadv.errors import InputError
from quantadv.quantize import lagrangian

CLASSES = 4
# Small budgets: the properties do not depend on them, the run time does.
FAST = {"steps": 10, "classes": 3, "queries": 60, "batch_size": 64}


class Scaled(nn.Module):
    """``scale * model(x)``: the same decisions, an over-confident softmax (paper 004)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.model(x)


class Noise(nn.Module):
    """A randomised preprocess: uniform noise of +-2/255 (draws from ``generator`` when given)."""

    randomized = True

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + (noise - 0.5) * 4 / 255).clamp(0, 1)


@pytest.fixture(scope="module")
def trained():
    x, y = quadrant_data(512, 0, bright=0.3, grid=True)
    model = train_quadrant_net(x, y)
    for p in model.parameters():
        p.requires_grad_(False)
    xt, yt = quadrant_data(48, 1, bright=0.3, grid=True)
    return model, xt, yt


EPS = 0.1  # 25.5 levels: rounding away from the original can leave the ball


def _robust(model, adv, y):
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).double().mean())


def test_cascade_attacks_only_standing_images_and_beats_each_attack(trained):
    model, x, y = trained
    res = quantadv.evaluate(model, x, y, eps=EPS, seed=0, **FAST)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    # Each attack attacks exactly the images the earlier ones left standing.
    standing = int(correct.sum())
    for p in res.plan:
        if p.skipped:
            continue
        assert p.attacked == standing, p.name
        standing -= p.broken
    assert standing == int(res.robust.sum())
    assert [p.name for p in res.plan] == ["apgd-ce", "apgd-t", "square"]  # a plain, healthy model
    broken = [b for b in res.broken_by if b not in (None, "clean")]
    assert sum(p.broken for p in res.plan) == len(broken)
    assert res.robust_accuracy == pytest.approx(float(res.robust.double().mean()))
    assert 0 < res.robust_accuracy < res.clean_accuracy  # the test must exercise both outcomes
    # The ensemble is at least as strong as each of its members alone (same settings, same seed).
    singles = {
        "apgd-ce": apgd(model, x, y, eps=EPS, steps=10, seed=0),
        "apgd-t": apgd_t(model, x, y, eps=EPS, steps=10, classes=3, seed=0),
        "square": square(model, x, y, eps=EPS, queries=60, seed=0),
    }
    for name, adv in singles.items():
        assert res.robust_accuracy <= _robust(model, adv, y) + 1e-12, name
    # The float adversarials the result holds are real: in the ball and misclassified.
    idx = [i for i, b in enumerate(res.broken_by) if b not in (None, "clean")]
    adv = res.adversarial[idx]
    assert float((adv - x[idx]).abs().amax()) <= EPS + 1e-6
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y[idx]).all())


def test_breaks_the_rounding_loses_are_attacked_again_inside_the_8bit_ball(trained, monkeypatch):
    """eps 0.1 is 25.5 levels: a float break on the ball's surface can only be rounded inward. A
    quantizer that loses every break in the float ball (here: returns the original) must not
    make the model look robust on 8-bit images: the retry attacks in the 25-level ball."""
    import quantadv.quantize as qz

    model, x, y = trained
    real, calls = qz.lagrangian, []

    def loses_in_the_float_ball(m, x0, xa, labels, *, eps, norm):
        calls.append(round(eps * 255, 6))
        return x0.clone() if eps == EPS else real(m, x0, xa, labels, eps=eps, norm=norm)

    monkeypatch.setattr(qz, "lagrangian", loses_in_the_float_ball)
    res = quantadv.evaluate(model, x, y, eps=EPS, seed=0, **FAST)
    assert 25.5 in calls and 25.0 in calls  # first the float ball, then the largest 8-bit one
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    broken = (correct & ~res.robust_digital).nonzero().flatten()
    assert broken.numel() > 0 and res.digital_robust_accuracy < 1.0
    assert bool((res.robust_digital | ~res.robust).all())  # still never below the float robust accuracy
    q = res.digital_images[broken]
    assert bool(is_digital(q).all())
    assert float(((q - x[broken]) * 255).round().abs().amax()) <= 25
    with torch.no_grad():
        assert bool((model(q).argmax(1) != y[broken]).all())


def test_l2_breaks_the_rounding_loses_are_attacked_again_inside_a_smaller_ball(trained, monkeypatch):
    """L2: a quantizer that loses every break of the first pass must not make the model look
    robust; the retry attacks at eps - sqrt(d)/510 and quantizes in the eps-ball."""
    import math

    import quantadv.quantize as qz

    model, x, y = trained
    eps = 1.0
    real, calls = qz.lagrangian, []

    def loses_the_first_time(m, x0, xa, labels, *, eps, norm):
        calls.append(float(((xa - x0).flatten(1).norm(dim=1)).amax()))
        return x0.clone() if len(calls) == 1 else real(m, x0, xa, labels, eps=eps, norm=norm)

    monkeypatch.setattr(qz, "lagrangian", loses_the_first_time)
    res = quantadv.evaluate(model, x, y, norm="l2", eps=eps, seed=0, **FAST)
    assert len(calls) >= 2
    assert calls[1] <= eps - math.sqrt(x[0].numel()) / 510 + 1e-5  # the retry's attack stays in the smaller ball
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    broken = (correct & ~res.robust_digital).nonzero().flatten()
    assert broken.numel() > 0 and res.digital_robust_accuracy < 1.0
    assert bool((res.robust_digital | ~res.robust).all())
    q = res.digital_images[broken]
    assert bool(is_digital(q).all())
    assert float((q - x[broken]).flatten(1).norm(dim=1).amax()) <= eps + 1e-5
    with torch.no_grad():
        assert bool((model(q).argmax(1) != y[broken]).all())


def test_digital_images_are_8bit_in_the_ball_and_reverified(trained, tmp_path):
    model, x, y = trained
    res = quantadv.evaluate(model, x, y, eps=EPS, seed=0, png=tmp_path / "png", **FAST)
    assert res.digital_robust_accuracy is not None
    # Robust on floats implies robust on 8-bit images (a digital image is one float input).
    assert bool((res.robust_digital | ~res.robust).all())
    assert res.digital_robust_accuracy >= res.robust_accuracy
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    broken = (correct & ~res.robust_digital).nonzero().flatten()
    assert broken.numel() > 0
    q = res.digital_images[broken]
    assert bool(is_digital(q).all())
    steps = ((q - x[broken]) * 255).round().abs().flatten(1).amax(1)
    assert float(steps.max()) <= 25  # floor(25.5): the L-inf ball in 8-bit levels
    with torch.no_grad():
        assert bool((model(q).argmax(1) != y[broken]).all())  # re-verified
    # The PNGs are the digital adversarials, byte for byte.
    from quantadv.io import load_png

    assert len(res.png) == broken.numel()
    loaded = load_png(tmp_path / "png")
    assert torch.equal((loaded.float() / 255), q)
    data = json.loads(res.to_json(tmp_path / "r.json"))
    assert data["robust_accuracy"] == res.robust_accuracy
    assert json.loads((tmp_path / "r.json").read_text())["digital_robust_accuracy"] == res.digital_robust_accuracy
    assert [a["name"] for a in data["plan"]] == [p.name for p in res.plan]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6)])
def test_lagrangian_in_a_ball_stays_in_it(trained, norm, eps):
    model, x, y = trained
    # A float adversarial on the sphere: rounding away from x_o would leave the ball.
    adv = apgd(model, x, y, norm=norm, eps=eps, steps=10, seed=0)
    q, info = lagrangian(model, x, adv, y, eps=eps, norm=norm, return_info=True)
    assert bool(is_digital(q).all())
    d = (q - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-6
    free = lagrangian(model, x, adv, y)  # no constraint: the paper's Q-lambda*
    dfree = (free - x).flatten(1)
    outside = (dfree.abs().amax(1) if norm == "linf" else dfree.norm(dim=1)) > eps + 1e-6
    if norm == "linf":
        assert bool(outside.any())  # the constraint is not vacuous here
    with torch.no_grad():
        assert torch.equal(info["success"], model(q).argmax(1) != y)
    with pytest.raises(InputError, match="outside the"):
        lagrangian(model, x, (x + 2 * eps).clamp(0, 1), y, eps=eps, norm="linf")


def test_automatic_choices(trained):
    model, x, y = trained
    x, y = x[:16], y[:16]
    small = dict(FAST, queries=10, steps=3)
    defended = Defended(SoftQuantization(1, alpha=1000.0), model).eval()
    plan = [p.name for p in quantadv.evaluate(defended, x, y, eps=EPS, digital=False, **small).plan]
    assert "bpda:apgd-ce" in plan and "bpda:apgd-t" in plan and "bpda+eot:apgd-ce" not in plan
    assert plan[-1] == "square"
    noisy = Defended(Noise(), model).eval()
    res = quantadv.evaluate(noisy, x, y, eps=EPS, digital=False, eot=2, **small)
    assert "bpda+eot:apgd-ce" in [p.name for p in res.plan]
    assert next(c for c in res.checks if c.name == "randomness").passed  # random logits, and EOT planned
    assert not any(c.name == "randomness" for c in quantadv.evaluate(defended, x, y, eps=EPS, digital=False,
                                                                      **small).checks)
    # HNS for an over-confident copy (same decisions), not for the model itself.
    over = Scaled(model, 1000.0).eval()
    res_over = quantadv.evaluate(over, x, y, eps=EPS, digital=False, **small)
    res_plain = quantadv.evaluate(model, x, y, eps=EPS, digital=False, **small)
    assert "pgd++hns" in [p.name for p in res_over.plan]
    assert "pgd++hns" not in [p.name for p in res_plain.plan]
    assert not next(c for c in res_over.checks if c.name == "softmax").passed
    assert next(c for c in res_plain.checks if c.name == "softmax").passed
    # extra=False is AutoAttack's ensemble alone.
    assert [p.name for p in quantadv.evaluate(defended, x, y, eps=EPS, digital=False, extra=False,
                                              **small).plan] == ["apgd-ce", "apgd-t", "square"]


def test_deployed_gets_the_shadow_and_transfer(trained):
    pytest.importorskip("torchao")
    from quantadv.models import deploy

    model, x, y = trained
    dep = deploy(model, "int8-dynamic", calibration=x)
    res = quantadv.evaluate(dep, x[:16], y[:16], eps=EPS, **dict(FAST, queries=10, steps=3))
    plan = {p.name: p for p in res.plan}
    assert "transfer" in plan and "shadow" in plan["transfer"].reason
    assert "float shadow" in plan["apgd-ce"].reason and plan["apgd-ce"].skipped is None
    # The bare torchao model has no gradient: gradient attacks are skipped and flagged, Square runs.
    bare = quantadv.evaluate(dep.quantized, x[:16], y[:16], eps=EPS, digital=False, **dict(FAST, queries=10))
    skipped = {p.name for p in bare.plan if p.skipped}
    assert skipped == {"apgd-ce", "apgd-t"}
    assert not next(c for c in bare.checks if c.name == "gradient").passed


def test_bad_input_is_one_line(trained):
    model, x, y = trained
    for eps, match in ((1.5, "eps must lie in"), (-0.1, "eps must lie in"), (8, "8/255|0.03137")):
        with pytest.raises(InputError, match=match):
            quantadv.evaluate(model, x, y, eps=eps)
    off = (x + 0.001).clamp(0, 1)
    with pytest.raises(InputError, match="digital=True needs 8-bit images") as err:
        quantadv.evaluate(model, off, y, eps=0.1)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="png"):
        quantadv.evaluate(model, x, y, eps=0.1, digital=False, png="out")


def test_evaluate_is_an_attack_entry_of_the_runner(tmp_path):
    from quantadv.experiments import load_config, load_results, run_experiment
    from test_experiments import BASE_CONFIG, write_setup

    config = dict(BASE_CONFIG, experiment="ev", postprocess=["none"])
    config["attacks"] = [{"name": "evaluate", "params": {"eps": 0.1, "steps": 3, "classes": 2, "queries": 10}}]
    cfg = load_config(write_setup(tmp_path, config))
    run_experiment(cfg, quiet=True)
    rows = load_results(cfg.store, as_frame=False)
    attacked = [r for r in rows if r["clean_pred"] == r["label"]]
    assert attacked and any(r["success"] for r in attacked)
    for r in attacked:  # 8-bit outputs in the ball, judged by the runner
        assert r["linf"] <= 0.1 + 1e-6
        assert r["success"] == (r["adv_pred"] != r["label"])


@pytest.mark.slow
def test_cli_evaluate_and_its_errors(tmp_path, capsys):
    from quantadv.cli import main

    assert main(["evaluate", "--model", "fmnist-cnn", "--eps", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--eps must lie in [0, 1]" in err and len(err.strip().splitlines()) == 1
    code = main(["evaluate", "--model", "fmnist-cnn", "--n", "4", "--eps", "0.05", "--steps", "3", "--queries",
                 "20", "--png", str(tmp_path / "png"), "--json", str(tmp_path / "r.json")])
    assert code == 0
    out, err = capsys.readouterr()
    assert "robust accuracy" in out and "(8-bit images)" in out
    assert "plan: apgd-ce" in err  # progress on stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 4 and len(result["png"]) == len(list((tmp_path / "png").glob("*.png")))


class Decoy(nn.Module):
    """A randomised preprocess that, on a fraction ``rate`` of the draws per image, shows the
    classifier the all-zero image instead (a stand-in for a quantizer draw that flips the decision)."""

    randomized = True

    def __init__(self, rate: float = 0.2) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.rate
        return torch.where(flip.view(-1, 1, 1, 1), torch.zeros_like(x), x)


def test_a_randomised_model_is_judged_by_the_majority_of_fresh_draws(trained):
    """One draw per outcome counts the decoy draws as breaks, even of an attack that cannot move
    the image (eps 0); the majority of 31 draws (a flip rate of 1/5: P(>= 16 of 31) ~ 2e-4 per
    image) gives back the deterministic classifier's decisions, clean and robust alike."""
    model, x, y = trained
    with torch.no_grad():
        zero_class = int(model(torch.zeros_like(x[:1])).argmax(1))
        truth = model(x).argmax(1) == y
    keep = y != zero_class  # images where a decoy draw is an error
    x, y, truth = x[keep], y[keep], truth[keep]
    noisy = Defended(Decoy(), model).eval()
    small = dict(FAST, queries=10, steps=3)
    vote = quantadv.evaluate(noisy, x, y, eps=0.0, draws=31, eot=2, **small)
    assert vote.draws == 31
    assert torch.equal(vote.robust, truth.cpu()) and torch.equal(vote.robust_digital, truth.cpu())
    assert vote.clean_accuracy == vote.robust_accuracy == vote.digital_robust_accuracy
    one = quantadv.evaluate(noisy, x, y, eps=0.0, draws=1, eot=2, **small)
    assert one.draws == 1
    assert one.robust_accuracy < vote.robust_accuracy  # lucky draws counted as breaks at eps 0
    # A few draws: the cascade's attacks accept lucky votes; the final fresh vote, shared with the
    # 8-bit images' judgment, gives the same outcome for the same image (eps 0: nothing moved).
    # A vote of 3 at a flip rate of 0.45 is wrong 43% of the time.
    few = quantadv.evaluate(Defended(Decoy(0.45), model).eval(), x, y, eps=0.0, draws=3, eot=2, **small)
    judged = next(c for c in few.checks if c.name == "judgment")
    assert "breaks held on a fresh vote" in judged.evidence
    assert 0 < few.robust_accuracy < float(truth.double().mean())
    assert torch.equal(few.robust, few.robust_digital)
    with pytest.raises(InputError, match="draws"):
        quantadv.evaluate(noisy, x, y, eps=0.0, draws=0)


def test_randomised_model_digital_images_are_8bit_in_the_ball_and_never_below_float(trained):
    """The digital step on a randomised defense (Q-lambda* on logits averaged over eot draws,
    the retry with BPDA+EOT): 8-bit images in the ball, judged by the vote like the float ones."""
    model, x, y = trained
    noisy = Defended(Noise(), model).eval()
    res = quantadv.evaluate(noisy, x, y, eps=EPS, draws=5, eot=2, **FAST)
    broken = (~res.robust_digital).nonzero().flatten()
    assert (~res.robust).sum() > 0 and res.draws == 5
    assert bool((res.robust_digital | ~res.robust).all())
    q = res.digital_images
    assert bool(is_digital(q).all()) and float(((q - x) * 255).round().abs().amax()) <= 25.5
    assert broken.numel() >= int((~res.robust).sum()) * 0.5  # most float breaks survive as 8-bit images
