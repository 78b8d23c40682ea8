"""``quantadv.evaluate``: AutoAttack's ensemble, plus what quantization calls for, judged on 8-bit images.

The standard ensemble is AutoAttack's (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML, Sec. 4 "standard"):
APGD-CE, APGD-T (targeted DLR over the 9 most likely other classes) and Square
(Andriushchenko et al. 2020, 5000 queries), each with 100 iterations, run as a **cascade**:
each attack sees only the images that every earlier attack left standing, and an image counts
as broken once one attack returns a point the model misclassifies.

On top of it, :func:`evaluate` looks at the model and adds what it calls for, recording each
choice with its reason (:attr:`Evaluation.plan`):

- a :class:`~quantadv.defenses.Defended` model (a preprocessing defense): APGD-CE and APGD-T
  through BPDA (Athalye, Carlini & Wagner 2018, Sec. 4.1: the preprocess's backward pass is the
  identity); when the preprocess is randomised (paper 003's quantizers) also BPDA+EOT (Sec.
  4.2: the gradient averaged over ``eot`` draws);
- a saturated softmax (paper 004: the cross-entropy gradient vanishes on an over-confident
  network; flagged from :func:`quantadv.diagnostics.jacobian_stats` on the standing images):
  PGD++ with HNS (paper 004, Algorithm 2);
- a :class:`~quantadv.models.deploy.Deployed` model (torchao int8/int4): the gradient attacks
  already differentiate its float shadow (BPDA with the float model); the plan adds the
  *transfer* of the float model's own APGD-CE adversarials, judged on the quantized forward;
- a model without any input gradient (e.g. a bare torchao int8 model): the gradient attacks
  are skipped (Square still runs) and a check flags it.

The model-specific attacks run after APGD-CE and APGD-T and before Square, so that Square's
contribution measures what every gradient attack missed (AutoAttack's own masking hint).

**Digital outputs** (``digital=True``, the default; paper 000): an attacker who must ship an
8-bit image cannot send the float point. Every float break is turned into a digital image by
Lagrangian quantization Q-lambda* (:func:`quantadv.quantize.lagrangian`) constrained to the
eps-ball (its ``eps=`` option), and the digital image is re-classified. A break lost in the
rounding is attacked again by APGD-CE in a smaller ball and quantized: for L-inf the largest
8-bit ball, ``floor(255 eps) / 255`` (an eps off the grid forces the ball's surface inward);
for L2 the radius ``eps - sqrt(d) / 510`` (the most that rounding to the nearest level moves a
point of d pixels); what is still lost counts as robust on 8-bit images. Robust accuracy is
reported for float inputs (:attr:`Evaluation.robust_accuracy`) and for real 8-bit images
(:attr:`Evaluation.digital_robust_accuracy`), which is never lower. The originals must be
digital themselves.

Every outcome is re-verified by the model itself on the returned images, after checking that
they lie in the eps-ball and in [0, 1]: one forward pass for a deterministic model; for a
randomised one (a :class:`~quantadv.defenses.Defended` whose preprocess draws noise) the
**majority vote over** ``draws`` **fresh draws** (10), for the clean prediction, every attack's
result and every 8-bit image alike; after the cascade each break of a randomised model gets a
final fresh vote (an attack's own vote keeps lucky breaks), and its 8-bit image is judged on the
same draws. One draw per outcome would count a break that fools the model on one draw in three,
and judge the 8-bit image on another draw than its float break (the 8-bit number then ran 3-12
points above the float one on RandDisc / pRD / swRD).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validate import check_choice, check_images, check_int, check_label_range, check_labels
from ..digital import is_digital
from ..errors import InputError

__all__ = ["Evaluation", "PlannedAttack", "evaluate", "evaluate_attack"]

#: The standard ensemble, in AutoAttack's order (Square moves to the end of the cascade).
STANDARD = ("apgd-ce", "apgd-t", "square")
#: Fraction of the standing images' CE input-gradient components that may be exactly zero
#: before the softmax counts as saturated (a healthy float network has none).
SATURATION_ZERO_FRACTION = 0.01
#: Images the saturation diagnostic and the gradient probe look at.
PROBE_IMAGES = 100
#: Slack (in [0, 1] units) of the ball check on returned images (float32 arithmetic).
BALL_SLACK = 1e-5


@dataclass
class PlannedAttack:
    """One attack of the cascade: its name, why it is there, and what it did."""

    name: str
    reason: str
    attacked: int = 0
    broken: int = 0
    seconds: float = 0.0
    skipped: str | None = None


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Accuracies are fractions of all images. ``robust`` / ``robust_digital`` are per image;
    ``broken_by`` names the attack that broke each image (``"clean"`` for an image the model
    already misclassifies, ``None`` for a robust one); ``adversarial`` holds the float
    adversarial images (originals where nothing was found) and ``digital_images`` the 8-bit
    ones (``None`` without ``digital``).
    """

    norm: str
    eps: float
    images: int
    clean_accuracy: float
    robust_accuracy: float
    digital_robust_accuracy: float | None
    plan: list[PlannedAttack]
    checks: list[Any]
    robust: torch.Tensor
    robust_digital: torch.Tensor | None
    broken_by: list[str | None]
    adversarial: torch.Tensor
    digital_images: torch.Tensor | None
    seconds: float
    model_kind: str
    png: list[str] = field(default_factory=list)
    #: draws whose majority vote judged every outcome (1: a deterministic model, or one draw)
    draws: int = 1

    def contributions(self) -> dict[str, int]:
        """Images broken by each attack of the cascade (its own, not earlier attacks')."""
        return {a.name: a.broken for a in self.plan}

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm, "eps": self.eps, "images": self.images, "model_kind": self.model_kind,
            "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
            "digital_robust_accuracy": self.digital_robust_accuracy, "seconds": self.seconds,
            "draws": self.draws, "plan": [asdict(a) for a in self.plan],
            "checks": [{"name": c.name, "verdict": c.verdict, "evidence": c.evidence} for c in self.checks],
            "per_image": {
                "robust": [bool(b) for b in self.robust.tolist()],
                "robust_digital": (None if self.robust_digital is None
                                   else [bool(b) for b in self.robust_digital.tolist()]),
                "broken_by": self.broken_by,
            },
            "png": self.png,
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The result as JSON text; with ``path`` also written there (to a temporary name, then renamed)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(text + "\n")
            os.replace(tmp, target)
        return text

    def __str__(self) -> str:
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
        judged = f" (each outcome the majority of {self.draws} draws)" if self.draws > 1 else ""
        lines = [f"{self.images} images, {self.norm} eps={self.eps:g}, model: {self.model_kind}{judged}",
                 f"clean accuracy        {pct(self.clean_accuracy)}",
                 f"robust accuracy       {pct(self.robust_accuracy)} (float inputs)"]
        if self.digital_robust_accuracy is not None:
            lines.append(f"robust accuracy       {pct(self.digital_robust_accuracy)} (8-bit images)")
        lines.append("attack                attacked  broken  seconds  why")
        for a in self.plan:
            why = a.reason + (f" [skipped: {a.skipped}]" if a.skipped else "")
            lines.append(f"{a.name:<21} {a.attacked:>8}  {a.broken:>6}  {a.seconds:>7.1f}  {why}")
        lines += [str(c) for c in self.checks]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# helpers


def _kind(model: nn.Module) -> str:
    from ..defenses import Defended
    from ..models.deploy import Deployed

    if isinstance(model, Deployed):
        return f"deployed ({model.scheme})"
    if isinstance(model, Defended):
        return "defended (randomised preprocess)" if model.randomized else "defended"
    return "plain"


def _randomized(model: nn.Module) -> bool:
    from ..defenses import Defended

    return isinstance(model, Defended) and model.randomized


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, seed: int, batch_size: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The model's logits, batch by batch; a randomised :class:`Defended` draws from ``generator``,
    else from a generator seeded with ``seed``."""
    out = []
    gen = None
    if _randomized(model):
        gen = generator if generator is not None else torch.Generator(device=x.device).manual_seed(seed)
    for i in range(0, x.shape[0], batch_size):
        chunk = x[i : i + batch_size]
        out.append(model(chunk, generator=gen) if gen is not None else model(chunk))
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, seed: int, batch_size: int, draws: int) -> torch.Tensor:
    """The class that judges an outcome: argmax of the logits; for a randomised :class:`Defended`
    the majority vote over ``draws`` fresh draws (seeded from ``seed``), ties to the class of
    the higher mean softmax probability."""
    if not _randomized(model) or draws == 1:
        return _logits(model, x, seed, batch_size).argmax(1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    votes = probs = None
    for _ in range(draws):
        logits = _logits(model, x, seed, batch_size, generator=gen)
        one = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
        p = logits.softmax(1)
        votes, probs = (one, p) if votes is None else (votes + one, probs + p)
    return (votes + probs / (draws + 1)).argmax(1)


def _in_ball(x: torch.Tensor, x0: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    d = (x - x0).flatten(1)
    size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    return (size <= eps + BALL_SLACK) & (x.flatten(1).amin(dim=1) >= 0) & (x.flatten(1).amax(dim=1) <= 1)


def _has_gradient(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's output depends differentiably on its input at all (AutoAttack's check
    that a gradient attack can run; a bare torchao int8 model fails it)."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        try:
            out = model(xg)
        except RuntimeError:
            return False
    return isinstance(out, torch.Tensor) and out.requires_grad


def _saturation(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Paper 004's diagnostic on ``x``: the statistics at beta = 1 (:func:`jacobian_stats`)."""
    from ..diagnostics import input_jacobian, jacobian_stats

    jac, logits = input_jacobian(model, x)
    return jacobian_stats(jac, logits, y, 1.0, name="orig")


# ---------------------------------------------------------------------------------------------
# the evaluation


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    digital: bool = True,
    steps: int = 100,
    classes: int = 9,
    queries: int = 5000,
    eot: int = 10,
    draws: int = 10,
    extra: bool = True,
    batch_size: int = 500,
    png: str | os.PathLike[str] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Evaluation:
    """Robust accuracy under AutoAttack's ensemble plus the attacks the model calls for.

    See the module docstring for the cascade, the automatic choices and the digital outputs.

    Parameters
    ----------
    model : nn.Module returning logits (a plain model, a :class:`~quantadv.defenses.Defended`
        or a :class:`~quantadv.models.deploy.Deployed`), used as found (mode untouched).
    images : float NCHW in [0, 1]; with ``digital=True`` exactly on the 8-bit grid.
    labels : int64 (N,).
    norm : ``"linf"`` or ``"l2"``.
    eps : radius in [0, 1] units: in [0, 1] for L-inf; for L2 at most the diameter of the
        image cube, ``sqrt(C*H*W)``.
    digital : quantize every float break into an 8-bit image in the ball (Q-lambda*) and
        re-verify it; report both robust accuracies.
    steps, classes, queries : APGD iterations (100), APGD-T target classes (9), Square queries
        (5000): AutoAttack's standard values.
    eot : gradient draws of BPDA+EOT on a randomised defense (10).
    draws : fresh draws of a randomised defense whose majority vote judges every outcome (clean
        prediction, each attack's result, each 8-bit image); 1 = one draw. Ignored for a
        deterministic model.
    extra : add the model-specific attacks (BPDA, BPDA+EOT, PGD++ HNS, transfer). ``False``
        runs the standard ensemble only (AutoAttack's).
    batch_size : images per attack call.
    png : a directory: write each verified 8-bit adversarial image there as a PNG (with
        ``labels.json``); needs ``digital``.
    seed : the randomness of every attack (and of a randomised model's verification draw).
    log : called with a line of progress per step (e.g. ``print``).

    Returns
    -------
    Evaluation
        ``robust_accuracy``, ``digital_robust_accuracy``, the plan with per-attack
        contributions and reasons, the masking checks, per-image outcomes, ``to_json()``.
    """
    from ..defenses import adaptive
    from ..diagnostics import Check
    from ..models.deploy import Deployed

    t_start = time.perf_counter()
    say = log or (lambda _line: None)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module returning logits, got {type(model).__name__}")
    check_images(images)
    labels = check_labels(labels, images.shape[0]).to(images.device)
    check_choice(norm, "norm", ("linf", "l2"))
    eps = _check_eps(eps, norm, images)
    steps = check_int(steps, "steps", minimum=1)
    classes = check_int(classes, "classes", minimum=1)
    queries = check_int(queries, "queries", minimum=1)
    eot = check_int(eot, "eot", minimum=1)
    draws = check_int(draws, "draws", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if digital:
        on_grid = is_digital(images)
        if not bool(on_grid.all()):
            bad = (~on_grid).nonzero().flatten()[:5].tolist()
            raise InputError(
                f"digital=True needs 8-bit images (values exactly k/255), but images {bad} are not; load them as "
                "uint8 and convert with quantadv.to_float, or pass digital=False (--no-digital)")
    elif png is not None:
        raise InputError("png= writes 8-bit adversarial images and needs digital=True")

    n = images.shape[0]
    x0 = images.detach()
    kind = _kind(model)
    logits0 = _logits(model, x0, seed, batch_size)
    check_label_range(labels, logits0.shape[1])
    voted = _randomized(model) and draws > 1
    correct = (_predict(model, x0, seed, batch_size, draws) if voted else logits0.argmax(1)) == labels
    broken_by: list[str | None] = [None if bool(c) else "clean" for c in correct.tolist()]
    robust = correct.clone()
    x_adv = x0.clone()
    judged = f" (majority of {draws} draws per outcome)" if voted else ""
    say(f"{n} images, {norm} eps={eps:g}, model: {kind}{judged}; clean accuracy "
        f"{100 * float(correct.double().mean()):.2f}%")

    checks: list[Check] = []
    # AutoAttack's checks (its flags_doc.md): randomness, probabilities.
    probe = x0[: min(n, PROBE_IMAGES)]
    with torch.no_grad():
        passes = [torch.cat([model(probe[i : i + batch_size]) for i in range(0, probe.shape[0], batch_size)])
                  for _ in range(2)]
    first = passes[0]
    if not torch.allclose(passes[0], passes[1]):
        checks.append(Check("randomness", extra and _randomized(model),
                            "the logits differ between two forward passes: a randomised model "
                            + ("(BPDA+EOT planned)" if _randomized(model) else
                               "that is not a Defended with a randomised preprocess: EOT is not applied")))
    probs = bool((first >= 0).all() and torch.allclose(first.sum(1), torch.ones_like(first[:, 0]), atol=1e-4))
    if probs:
        checks.append(Check("logits", False, "the model outputs probabilities (non-negative, summing to 1), "
                                             "not logits: cross-entropy and DLR are computed on the wrong scale"))

    # The plan.
    gradient = _has_gradient(model, probe[:2])
    plan: list[tuple[PlannedAttack, Callable | None]] = []

    def apgd_ce(m, e=1):
        from ..attacks import apgd

        return lambda x, y: apgd(m, x, y, norm=norm, eps=eps, steps=steps, loss="ce", eot=e, seed=seed,
                                 return_info=True)

    def apgd_t(m, e=1):
        from ..attacks import apgd_t as attack

        return lambda x, y: attack(m, x, y, norm=norm, eps=eps, steps=steps, classes=classes, eot=e, seed=seed,
                                   loss=t_loss, return_info=True)

    # The targeted DLR (Eq. 7) needs 4 classes; with fewer, APGD-T steers the targeted cross-entropy.
    t_loss = "dlr" if logits0.shape[1] >= 4 else "ce"
    t_note = "" if t_loss == "dlr" else \
        f" (targeted CE: the DLR loss needs 4 classes, the model has {logits0.shape[1]})"

    deployed = isinstance(model, Deployed)
    grad_note = " (gradient of the float shadow: Deployed's backward)" if deployed else ""
    no_grad = None if gradient else "the model has no input gradient (wrap an int8 model with quantadv.models.deploy)"
    plan.append((PlannedAttack("apgd-ce", "standard (AutoAttack)" + grad_note, skipped=no_grad), apgd_ce(model)))
    plan.append((PlannedAttack("apgd-t", "standard (AutoAttack)" + grad_note + t_note, skipped=no_grad),
                 apgd_t(model)))
    if not gradient:
        checks.append(Check("gradient", False, no_grad or ""))

    from ..defenses import Defended

    if extra and isinstance(model, Defended):
        attacked, _ = adaptive(model, "bpda")
        what = type(model.preprocess).__name__
        plan.append((PlannedAttack("bpda:apgd-ce", f"Defended ({what}): BPDA, identity backward through the "
                                                   "preprocess (Athalye et al. 2018)"), apgd_ce(attacked)))
        plan.append((PlannedAttack("bpda:apgd-t", f"Defended ({what}): BPDA"), apgd_t(attacked)))
        if model.randomized:
            attacked_eot, e = adaptive(model, "bpda+eot", eot_samples=eot)
            plan.append((PlannedAttack("bpda+eot:apgd-ce", f"randomised preprocess ({what}): BPDA+EOT, "
                                                           f"{e} draws per gradient"),
                         apgd_ce(attacked_eot, e)))
    saturated_stats = None
    if extra and gradient:
        standing = robust.nonzero().flatten()[:PROBE_IMAGES]
        if standing.numel():
            grad_model = adaptive(model, "bpda")[0] if isinstance(model, Defended) else model
            saturated_stats = _saturation(grad_model, x0[standing], labels[standing])
            saturated = saturated_stats.zero_grad_fraction > SATURATION_ZERO_FRACTION
            evidence = (f"{100 * saturated_stats.zero_grad_fraction:.2f}% of the CE input-gradient components are "
                        f"exactly 0 on {saturated_stats.images} correctly classified images (||psi|| "
                        f"{saturated_stats.psi_norm:.2e}, JSV mean {saturated_stats.jsv_mean:.3g})")
            checks.append(Check("softmax", not saturated, evidence + (" : saturated softmax, PGD++ HNS planned"
                                                                       if saturated else "")))
            if saturated:
                from ..attacks import pgd_pp

                def hns(x, y, m=grad_model):
                    return pgd_pp(m, x, y, norm=norm, eps=eps, step=eps / 4, steps=steps, scaling="hns",
                                  seed=seed, return_info=True)

                plan.append((PlannedAttack("pgd++hns", "saturated softmax (paper 004): PGD++ with HNS temperature, "
                                                       f"{steps} steps of eps/4"), hns))
    if extra and deployed:
        from ..attacks import apgd

        shadow = model.float_model

        def transfer(x, y):
            adv = apgd(shadow, x, y, norm=norm, eps=eps, steps=steps, loss="ce", seed=seed)
            return adv, {}

        plan.append((PlannedAttack("transfer", f"Deployed ({model.scheme}): APGD-CE on the float shadow, "
                                               "judged on the quantized model"), transfer))

    def square_fn(x, y):
        from ..attacks import square

        return square(model, x, y, norm=norm, eps=eps, queries=queries, seed=seed, return_info=True)

    plan.append((PlannedAttack("square", "standard (AutoAttack): score-based, no gradient"), square_fn))
    for p, _ in plan:
        say(f"plan: {p.name:<17} {p.reason}" + (f" [skipped: {p.skipped}]" if p.skipped else ""))

    # The cascade.
    for p, fn in plan:
        todo = robust.nonzero().flatten()
        if p.skipped or fn is None:
            continue
        if todo.numel() == 0:
            p.skipped = "no image left standing"
            continue
        t0 = time.perf_counter()
        outs = []
        for i in range(0, todo.numel(), batch_size):
            idx = todo[i : i + batch_size]
            out = fn(x0[idx], labels[idx])
            outs.append(out[0] if isinstance(out, tuple) else out)
        adv = torch.cat(outs).detach()
        ok = _in_ball(adv, x0[todo], norm, eps)
        if not bool(ok.all()):  # never expected: project rather than trust
            raise RuntimeError(f"{p.name} returned images outside the {norm} ball of radius {eps}")
        pred = _predict(model, adv, seed, batch_size, draws)
        hit = pred != labels[todo]
        p.attacked, p.broken, p.seconds = int(todo.numel()), int(hit.sum()), time.perf_counter() - t0
        won = todo[hit]
        x_adv[won] = adv[hit]
        robust[won] = False
        for i in won.tolist():
            broken_by[i] = p.name
        say(f"{p.name:<17} attacked {p.attacked}, broke {p.broken} ({p.seconds:.1f} s); robust accuracy now "
            f"{100 * float(robust.double().mean()):.2f}%")

    # Masking checks from the cascade (AutoAttack: Square breaking what white box left; ours: BPDA,
    # transfer, temperature).
    contrib = {p.name: p for p, _ in plan}
    white = [p for p, _ in plan if p.name != "square" and not p.skipped]
    if not contrib["square"].skipped and white:
        sq = contrib["square"].broken
        checks.append(Check("square", sq == 0, f"Square broke {sq} image(s) every gradient attack left standing"
                            + (" (a gradient-masking hint: AutoAttack's flag)" if sq else "")))
    for check, prefix, what in (("bpda", "bpda", "BPDA (and BPDA+EOT)"), ("transfer", "transfer",
                                "transfer from the float shadow"), ("temperature", "pgd++", "PGD++ HNS")):
        ran = [p for p, _ in plan if p.name.startswith(prefix) and not p.skipped]
        if ran:
            b = sum(p.broken for p in ran)
            checks.append(Check(check, b == 0, f"{what} broke {b} image(s) APGD-CE and APGD-T left standing"
                                + (" (the plain gradient was masked)" if b else "")))

    # A randomised model: every attack above accepted its breaks on its own vote, so a break on the
    # vote's edge is kept when the vote happens to fall its way (a winner's curse). The final
    # judgment is a fresh vote, on draws shared with the 8-bit images' judgment below.
    breaks = (correct & ~robust).nonzero().flatten()
    judge_seed = seed + 1
    if _randomized(model) and breaks.numel():
        held = _predict(model, x_adv[breaks], judge_seed, batch_size, draws) != labels[breaks]
        for i in breaks[~held].tolist():
            robust[i], broken_by[i] = True, None
        checks.append(Check("judgment", True, f"{int(held.sum())} of {breaks.numel()} breaks held on a fresh vote of "
                                              f"{draws} draws (the one that judges the 8-bit images too); the other "
                                              f"{int((~held).sum())} count as robust"))
        say(checks[-1].evidence)
    robust_acc = float(robust.double().mean())
    robust_digital = None
    digital_images = None
    files: list[str] = []
    if digital:
        robust_digital, digital_images = _digitize(model, x0, x_adv, labels, robust, correct, breaks, norm, eps, seed,
                                                   judge_seed, steps, batch_size, draws, eot, say)
        if png is not None:
            files = _write_png(png, digital_images, labels, robust_digital, correct, model, seed, batch_size, draws)
            say(f"wrote {len(files)} PNG files to {png}")
    result = Evaluation(
        norm=norm, eps=eps, images=n, clean_accuracy=float(correct.double().mean()), robust_accuracy=robust_acc,
        digital_robust_accuracy=None if robust_digital is None else float(robust_digital.double().mean()),
        plan=[p for p, _ in plan], checks=checks, robust=robust.cpu(),
        robust_digital=None if robust_digital is None else robust_digital.cpu(), broken_by=broken_by,
        adversarial=x_adv, digital_images=digital_images, seconds=time.perf_counter() - t_start,
        model_kind=kind, png=files, draws=draws if _randomized(model) else 1)
    return result


def _check_eps(eps: object, norm: str, images: torch.Tensor) -> float:
    try:
        value = float(eps)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number, got {eps!r}") from None
    top = 1.0 if norm == "linf" else math.sqrt(images[0].numel())
    if not 0.0 <= value <= top:
        hint = f" (in [0, 1] pixel units: did you mean {value / 255:.4g}?)" if value > 1 and norm == "linf" else ""
        raise InputError(f"eps must lie in [0, {top:g}] for norm {norm!r}, got {value:g}{hint}")
    return value


class _MeanOfDraws(nn.Module):
    """The logits of a randomised model averaged over ``draws`` forward passes (fresh draws each;
    differentiable where the model is, e.g. through BPDA)."""

    def __init__(self, model: nn.Module, draws: int) -> None:
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def _digitize(model, x0, x_adv, labels, robust, correct, breaks, norm, eps, seed, judge_seed, steps, batch_size, draws,
              eot, say):
    """Q-lambda* in the ball for every float break; re-verified. Returns (robust_digital, images).

    An L-inf float break on the ball's surface (APGD's sign steps end there) can only be rounded
    inward when ``eps`` is off the 8-bit grid (0.1 = 25.5 levels: a pixel at +25.5 must go to 25),
    and Q-lambda* then loses some breaks that an attack inside the 8-bit ball finds. So the lost
    ones are attacked again, by APGD-CE in the largest ball on the grid, ``floor(255 eps) / 255``,
    whose corners are 8-bit values, and quantized by Q-lambda* in that ball. For L2 the retry
    attacks in the ball of radius ``eps - sqrt(d) / 510`` (d pixels: rounding to the nearest
    level moves a point by at most that much, so every nearest rounding of the retry's point,
    Q-lambda*'s start, lies in the eps-ball), and Q-lambda* quantizes in the eps-ball. On a
    randomised defense the retry is BPDA+EOT (``eot`` draws per gradient), and Q-lambda* sees
    the logits averaged over ``eot`` draws (its gradient and its search's forward passes), as
    the majority vote that judges its result sees many draws. The 8-bit images of ``breaks`` (the
    cascade's breaks, in that order) are judged on the draws of ``judge_seed``, the same draws
    that judged their float points (a randomised model), so that the two numbers differ by the
    rounding and not by the draws."""
    from ..defenses import Defended, adaptive
    from ..quantize import lagrangian

    t0 = time.perf_counter()
    grad_model, m = adaptive(model, "bpda+eot", eot_samples=eot) if isinstance(model, Defended) else (model, 1)
    q_model = _MeanOfDraws(grad_model, m) if m > 1 else grad_model
    images = x0.clone()
    robust_digital = correct.clone()
    todo = breaks
    for i in range(0, todo.numel(), batch_size):
        idx = todo[i : i + batch_size]
        x_q = lagrangian(q_model, x0[idx], x_adv[idx], labels[idx], eps=eps, norm=norm)
        images[idx] = x_q
    if todo.numel():
        _check_digital(images[todo], x0[todo], norm, eps)
        pred = _predict(model, images[todo], judge_seed if _randomized(model) else seed, batch_size, draws)
        robust_digital[todo] = pred == labels[todo]
        # an 8-bit image of a break that did not hold on the fresh vote keeps the original's outcome
        robust_digital[todo] |= robust[todo]
        images[todo[robust[todo]]] = x0[todo[robust[todo]]]
    held = int((~robust[todo]).sum())
    say(f"digital: {held} float breaks quantized to 8-bit images in the ball (Q-lambda*), "
        f"{int((~robust_digital[todo]).sum())} still adversarial ({time.perf_counter() - t0:.1f} s)")
    if norm == "linf":  # the attack and the rounding in the largest ball whose corners are 8-bit
        eps_attack = eps_round = math.floor(eps * 255 + 1e-6) / 255
        ball = f"the 8-bit ball eps {round(eps_attack * 255)}/255"
    else:  # nearest rounding moves a point by at most half a level per pixel: sqrt(d) / 510 in L2
        eps_attack, eps_round = eps - math.sqrt(x0[0].numel()) / 510, eps
        ball = f"the L2 ball {eps_attack:.4g} (eps minus the rounding's largest move)"
    retry = (robust_digital & ~robust).nonzero().flatten()
    if retry.numel() and 0 < eps_attack < eps - 1e-9:
        from ..attacks import apgd

        t0 = time.perf_counter()
        for i in range(0, retry.numel(), batch_size):
            idx = retry[i : i + batch_size]
            adv = apgd(grad_model, x0[idx], labels[idx], norm=norm, eps=eps_attack, steps=steps, loss="ce", seed=seed,
                       eot=m)
            x_q = lagrangian(q_model, x0[idx], adv, labels[idx], eps=eps_round, norm=norm)
            _check_digital(x_q, x0[idx], norm, eps)
            hit = _predict(model, x_q, seed, batch_size, draws) != labels[idx]
            images[idx[hit]] = x_q[hit]
            robust_digital[idx[hit]] = False
        won = int(retry.numel() - (robust_digital[retry]).sum())
        say(f"digital retry: APGD-CE in {ball} on the {retry.numel()} "
            f"lost breaks, {won} adversarial 8-bit images ({time.perf_counter() - t0:.1f} s)")
    say(f"robust accuracy on 8-bit images {100 * float(robust_digital.double().mean()):.2f}%")
    return robust_digital, images


def _check_digital(images, x0, norm, eps) -> None:
    if not bool((_in_ball(images, x0, norm, eps) & is_digital(images)).all()):
        raise RuntimeError("Q-lambda* returned an image off the 8-bit grid or outside the ball")


def _write_png(directory, images, labels, robust_digital, correct, model, seed, batch_size, draws) -> list[str]:
    from ..io import save_png

    idx = (correct & ~robust_digital).nonzero().flatten()
    if idx.numel() == 0:
        Path(directory).mkdir(parents=True, exist_ok=True)
        return []
    pred = _predict(model, images[idx], seed, batch_size, draws)
    names = [f"{int(i):05d}_label{int(labels[i])}_pred{int(p)}.png" for i, p in zip(idx, pred, strict=True)]
    written = save_png(images[idx].cpu(), directory, names, labels=labels[idx].cpu())
    return [str(f) for f in written]


def evaluate_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    digital: bool = True,
    steps: int = 100,
    classes: int = 9,
    queries: int = 5000,
    eot: int = 10,
    draws: int = 10,
    extra: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """:func:`evaluate` as an attack (``attack(model, images, labels, ...)``), for configs.

    Returns the 8-bit adversarial images (``digital=True``) or the float ones, the originals
    where nothing was found; with ``return_info`` also ``success`` (per image: the returned
    image is misclassified; for a randomised model by the majority vote over ``draws``),
    ``pred`` and ``attack`` (the position in :attr:`Evaluation.plan` of the attack that broke
    the image, -1 for none; clean errors are not attacked by the runner). The plan depends on
    the model, and on the batch only through the saturated-softmax diagnostic (which adds
    PGD++ HNS before Square).
    The seed comes from ``seed`` or, failing that, one draw of ``generator``.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    result = evaluate(model, images, labels, norm=norm, eps=eps, digital=digital, steps=steps, classes=classes,
                      queries=queries, eot=eot, draws=draws, extra=extra, seed=seed)
    out = result.digital_images if digital else result.adversarial
    if not return_info:
        return out
    robust = result.robust_digital if digital else result.robust
    names = [p.name for p in result.plan]
    code = torch.tensor([names.index(b) if (b in names and not bool(r)) else -1
                         for b, r in zip(result.broken_by, robust.tolist(), strict=True)], dtype=torch.int64)
    pred = _predict(model, out, seed, 500, draws).cpu()
    success = pred != labels.cpu()
    return out, {"success": success, "pred": pred, "attack": code}
