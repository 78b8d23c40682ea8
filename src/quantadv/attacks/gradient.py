"""Fixed-budget gradient attacks: FGSM, I-FGSM and PGD (L-inf and L2).

All three are the same projected step run by :func:`~quantadv.attacks.engine.iterate`:

- PGD (Madry et al.; paper 000 Eq. 8 for L2): ``x <- clip(proj_eps(x - step * D(grad L_A)))``
  with ``D = sign`` for L-inf and ``D = g / ||g||_2`` for L2;
- I-FGSM (paper 000 Eq. 7): the L-inf step with ``step = eps / steps`` (so the iterate can
  never leave the eps-ball), stopping per image at the first adversarial iterate;
- FGSM (paper 000 Eq. 6): one L-inf step of size ``eps``.

Budgets ``eps`` and ``step`` are in [0, 1] units (divide pixel units by 255).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_positive
from .engine import State, info, iterate, make_problem, random_like, restartable

NORMS = ("linf", "l2")


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norms.view(-1, *([1] * (g.dim() - 1)))


def project(x: torch.Tensor, x_orig: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """Project ``x`` onto the ``norm``-ball of radius ``eps`` around ``x_orig``, then clip to [0, 1]."""
    delta = x - x_orig
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1)
        factor = (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    return (x_orig + delta).clamp(0.0, 1.0)


def _projected_step(norm: str, eps: float, step: float):
    """The PGD step of Eq. 8 (L2) or its L-inf analogue, as an engine step function."""

    def run(problem, idx, state: State, iteration: int):
        x = state["x"]
        _, grad, logits = problem.loss_and_grad(x, idx)
        direction = grad.sign() if norm == "linf" else _l2_normalize(grad)
        x_new = project(x - step * direction, problem.x_orig[idx], norm, eps)
        return problem.adversarial(logits, idx), {"x": x_new}

    return run


def _random_start(x: torch.Tensor, norm: str, eps: float, generator) -> torch.Tensor:
    """A uniform draw from the ``norm``-ball of radius ``eps`` around ``x``, clipped to [0, 1]."""
    if norm == "linf":
        delta = (2 * random_like(x, generator) - 1) * eps
    else:
        direction = _l2_normalize(random_like(x, generator, kind="normal"))
        n = x[0].numel()
        radius = random_like(x[:, :1, :1, :1], generator) ** (1.0 / n) * eps
        delta = direction * radius
    return (x + delta).clamp(0.0, 1.0)


@restartable
def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    step: float,
    steps: int,
    random_start: bool = False,
    early_stop: bool = False,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """Projected gradient descent on ``L_A`` (paper 000 Eq. 8; Madry et al. 2018).

    Parameters
    ----------
    model : nn.Module returning logits; images : float NCHW in [0, 1]; labels : int64 (N,).
    norm : ``"linf"`` (sign step) or ``"l2"`` (normalised-gradient step).
    eps : radius of the ball around the original image, in [0, 1] units.
    step : step size alpha, in [0, 1] units.
    steps : number of gradient steps.
    random_start : start from a uniform point of the ball (drawn from ``seed``/``generator``).
    early_stop : stop each image at its first adversarial iterate (otherwise the last
        iterate is returned, as in Madry et al.).
    loss : ``"ce"`` or ``"margin"`` (paper 000 Eq. 5), see :mod:`quantadv.attacks.losses`.
    targets : int64 (N,) target classes for a targeted attack.
    temperature : beta > 0, the loss is taken on ``beta * logits`` (paper 004; see
        :mod:`quantadv.attacks.engine`).
    eot : gradients averaged over this many passes (randomised defenses, paper 003).
    restarts : rerun from fresh random starts on the images not yet broken
        (:func:`~quantadv.attacks.engine.with_restarts`; needs ``random_start=True``).
    return_info : also return a dict of per-image tensors ``success``, ``calls``, ``grads``,
        ``pred``.

    Returns
    -------
    The adversarial images (a new tensor), or ``(images, info)`` with ``return_info=True``.
    """
    check_choice(norm, "norm", NORMS)
    eps = check_positive(eps, "eps", allow_zero=True)
    step = check_positive(step, "step", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
    x0 = problem.x_orig.clone()
    if random_start:
        x0 = _random_start(x0, norm, eps, generator)
    out = iterate(
        problem,
        {"x": x0},
        _projected_step(norm, eps, step),
        steps=steps,
        early_stop=early_stop,
        keep="last",
        final_check=return_info,
    )
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv


def ifgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step: float | None = None,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    return_info: bool = False,
):
    """Iterative FGSM (paper 000 Eq. 7; Kurakin et al. 2017).

    Repeats ``x <- clip(x - step * sign(grad L_A))`` for at most ``steps`` iterations, each
    image stopping at its first adversarial iterate. ``step`` defaults to ``eps / steps``, so
    the L-inf distortion never exceeds ``eps`` (the iterate is also projected on that ball).
    """
    steps = check_int(steps, "steps", minimum=1)
    eps = check_positive(eps, "eps", allow_zero=True)
    step = eps / steps if step is None else step
    return pgd(
        model, images, labels, norm="linf", eps=eps, step=step, steps=steps,
        early_stop=True, loss=loss, targets=targets, temperature=temperature, eot=eot,
        return_info=return_info,
    )


def fgsm(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    return_info: bool = False,
):
    """Fast gradient sign method (paper 000 Eq. 6; Goodfellow et al. 2015).

    ``x_a = clip(x_o - eps * sign(grad L_A(x_o)))``: one L-inf step of size ``eps``.
    """
    eps = check_positive(eps, "eps", allow_zero=True)
    return pgd(
        model, images, labels, norm="linf", eps=eps, step=eps, steps=1,
        loss=loss, targets=targets, temperature=temperature, eot=eot, return_info=return_info,
    )


def cosine_schedule(start: float, end: float, iteration: int, steps: int) -> float:
    """Cosine annealing from ``start`` (iteration 0) to ``end`` (last iteration)."""
    if steps <= 1:
        return start
    return end + (start - end) * (1 + math.cos(math.pi * iteration / (steps - 1))) / 2
