"""Auto-PGD: APGD and APGD-T (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML; Algorithm 1).

APGD is PGD without a step size to tune. It *maximises* an objective ``f`` (here
``f = -L_A``, :mod:`quantadv.attacks.losses`) from a random start ``x^(0)`` with

- a first step ``x^(1) = P(x^(0) + eta^(0) D(grad f(x^(0))))`` with ``eta^(0) = 2 eps``
  (``D = sign`` for L-inf, ``g / ||g||_2`` for L2, ``P`` the projection onto the eps-ball and
  [0, 1]);
- momentum (Eq. 2, ``alpha = 0.75``): ``z = P(x^(k) + eta^(k) D(grad f(x^(k))))``,
  ``x^(k+1) = P(x^(k) + alpha (z - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))``;
- checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (Sec. 3.2). At a checkpoint the step is
  halved, and the iterate restarts from the best point ``x_max`` found so far (with its
  gradient), when
  (1) fewer than ``rho (w_j - w_{j-1})`` of the steps since the last checkpoint increased
  ``f`` (``rho = 0.75``; Eq. 3, condition 1), or
  (2) the step was *not* halved at the last checkpoint and ``f_max`` did not improve since
  (condition 2: ``eta^(w_{j-1}) = eta^(w_j)`` and ``f_max^(w_{j-1}) = f_max^(w_j)``). As in
  the authors' code, condition 2 is not applied at the first checkpoint.

The losses are the cross-entropy (APGD-CE) and the Difference of Logits Ratio (``"dlr"``,
Eq. 6); :func:`apgd_t` is APGD-T: APGD on the targeted DLR (Eq. 7) toward each of the ``k``
most likely other classes of the clean image in turn (``k = 9`` in AutoAttack), each run
only on the images the previous ones left standing, success being any misclassification.

Both run on the shared loop (:mod:`quantadv.attacks.engine`): each iteration is one gradient
at ``x^(k)`` whose forward pass also judges ``x^(k)``; an image leaves at its first
adversarial iterate (the "any iterate" success of the authors' code, which keeps every
misclassified iterate). ``N`` steps cost ``N`` gradients plus one forward pass for the last
iterate (the authors' code takes a last, unused, gradient there). ``temperature``, ``eot``,
``restarts`` (independent random starts on the images not yet broken) and ``info["pred"]``
come from the engine. Budgets are in [0, 1] units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_choice, check_int, check_positive
from ..errors import InputError
from .engine import State, info, iterate, make_generator, make_problem, random_like, restartable
from .gradient import NORMS, _l2_normalize, project

__all__ = ["apgd", "apgd_t", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations ``w_1 < w_2 < ...`` (< ``steps``) at which APGD may halve its step.

    ``w_j = ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)`` (Croce & Hein 2020, Sec. 3.2). For ``N = 100``: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    out = []
    prev, p = 0.0, 0.22
    while True:
        w = math.ceil(p * steps - 1e-9)  # the p_j are sums of decimals: no float ceil surprises
        if w >= steps:
            break
        if w > 0 and (not out or w > out[-1]):
            out.append(w)
        prev, p = p, p + max(p - prev - 0.03, 0.06)
    return out


def _start(x: torch.Tensor, norm: str, eps: float, generator) -> torch.Tensor:
    """A random point on the eps-sphere around ``x`` (the authors' initialisation), in [0, 1]."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        t = 2 * random_like(x, generator) - 1
        t = t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(shape)
    else:
        t = _l2_normalize(random_like(x, generator, kind="normal"))
    return (x + eps * t).clamp(0.0, 1.0)


def _apgd_step(norm: str, eps: float, steps: int, rho: float, alpha: float):
    """One APGD iteration (Algorithm 1) as an engine step function."""
    marks = apgd_checkpoints(steps)
    window = {w: w - (marks[j - 1] if j else 0) for j, w in enumerate(marks)}

    def run(problem, idx, state: State, i: int):
        x = state["x"]
        loss, grad, logits = problem.loss_and_grad(x, idx)
        adv = problem.adversarial(logits, idx)
        f = -loss.detach()  # APGD maximises f = -L_A
        shape = (-1,) + (1,) * (x.dim() - 1)
        count = state["count"] + (f > state["f_prev"]).to(state["count"].dtype) if i > 0 else state["count"]
        better = f > state["f_best"]
        f_best = torch.where(better, f, state["f_best"])
        x_best = torch.where(better.view(shape), x, state["x_best"])
        g_best = torch.where(better.view(shape), grad, state["g_best"])
        eta, reduced, f_check = state["eta"], state["reduced"], state["f_check"]
        if i in window:
            oscillating = count < rho * window[i]
            stalled = ~reduced & (f_best <= f_check)
            halve = oscillating | stalled
            eta = torch.where(halve, eta / 2, eta)
            x = torch.where(halve.view(shape), x_best, x)
            grad = torch.where(halve.view(shape), g_best, grad)
            reduced, f_check, count = halve, f_best, torch.zeros_like(count)
        direction = -(grad.sign() if norm == "linf" else _l2_normalize(grad))  # ascent on f
        x_orig = problem.x_orig[idx]
        z = project(x + eta.view(shape) * direction, x_orig, norm, eps)
        x_new = z if i == 0 else project(x + alpha * (z - x) + (1 - alpha) * (x - state["x_prev"]), x_orig, norm, eps)
        new = {"x": x_new, "x_prev": x, "x_best": x_best, "g_best": g_best, "f_prev": f, "f_best": f_best,
               "f_check": f_check, "eta": eta, "count": count, "reduced": reduced}
        return adv, new

    return run


@restartable
def _apgd_run(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    untargeted_goal: bool = False,
    rho: float = 0.75,
    momentum: float = 0.75,
    random_start: bool = True,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """APGD with every option, including ``untargeted_goal`` (APGD-T's runs); see :func:`apgd`."""
    check_choice(norm, "norm", NORMS)
    eps = check_positive(eps, "eps", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    rho = check_positive(rho, "rho")
    momentum = check_positive(momentum, "momentum")
    if not rho <= 1 or not momentum <= 1:
        raise InputError(f"rho and momentum must lie in (0, 1] (the paper: 0.75 both), got rho={rho}, "
                         f"momentum={momentum}")
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot,
                           untargeted_goal=untargeted_goal)
    x = problem.x_orig
    x0 = _start(x, norm, eps, generator) if random_start else x.clone()
    n = problem.size
    vec = lambda value: torch.full((n,), value, dtype=x.dtype, device=x.device)  # noqa: E731
    state = {"x": x0, "x_prev": x0, "x_best": x0, "g_best": torch.zeros_like(x0),
             "f_prev": vec(-math.inf), "f_best": vec(-math.inf), "f_check": vec(-math.inf),
             "eta": vec(2 * eps), "count": torch.zeros(n, dtype=torch.int64, device=x.device),
             "reduced": torch.ones(n, dtype=torch.bool, device=x.device)}
    out = iterate(problem, state, _apgd_step(norm, eps, steps, rho, momentum), steps=steps, early_stop=True,
                  keep="last", final_check=return_info)
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv


def apgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    steps: int = 100,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    random_start: bool = True,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """APGD (Croce & Hein 2020, Algorithm 1): step-size-free PGD with momentum and checkpoints.

    Parameters
    ----------
    model : nn.Module returning logits; images : float NCHW in [0, 1]; labels : int64 (N,).
    norm : ``"linf"`` or ``"l2"``.
    eps : radius of the ball, in [0, 1] units.
    steps : N, the iterations (the paper and AutoAttack: 100).
    loss : ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR, Eq. 6; with ``targets`` Eq. 7) or
        ``"margin"``.
    targets : int64 (N,) target classes: a targeted attack (success = classified as target).
    rho : the fraction of increasing steps below which a checkpoint halves the step (0.75).
    momentum : ``alpha`` of Eq. 2 (0.75).
    random_start : start from a random point on the eps-sphere (the authors' code; default);
        ``False`` starts at the image.
    temperature, eot : see :mod:`quantadv.attacks.engine`.
    restarts : independent random starts on the images not yet broken
        (:func:`~quantadv.attacks.engine.with_restarts`).
    seed, generator : the randomness of the start (one or the other).
    return_info : also return a dict of per-image tensors ``success``, ``calls``, ``grads``,
        ``pred`` (and ``restart`` with ``restarts > 1``).

    Returns
    -------
    The adversarial images (a new tensor): per image the first adversarial iterate, else the
    last iterate; or ``(images, info)`` with ``return_info=True``.
    """
    return _apgd_run(model, images, labels, norm=norm, eps=eps, steps=steps, loss=loss, targets=targets,
                     rho=rho, momentum=momentum, random_start=random_start, temperature=temperature, eot=eot,
                     restarts=restarts, seed=seed, generator=generator, return_info=return_info)


def apgd_t(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    steps: int = 100,
    classes: int = 9,
    loss: str = "dlr",
    rho: float = 0.75,
    momentum: float = 0.75,
    random_start: bool = True,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """APGD-T (Croce & Hein 2020, Sec. 4): APGD on the targeted DLR loss toward several classes.

    The targets are the ``classes`` most likely classes other than the label at the clean
    image (one forward pass), tried in order of likelihood; each targeted run (``steps``
    iterations, ``restarts`` random starts) attacks only the images no earlier run broke.
    Success is **any misclassification** (the targets only steer the loss), as in AutoAttack,
    whose standard version uses ``classes=9``. ``classes`` is capped at (number of classes - 1).

    Parameters are those of :func:`apgd`, plus ``classes`` (k) and ``loss`` (``"dlr"``, the
    targeted DLR of Eq. 7, default; ``"ce"`` or ``"margin"`` toward the target).

    Returns
    -------
    The adversarial images, or ``(images, info)``: ``success``, ``calls`` and ``grads``
    (summed over the runs, with the clean forward pass), ``pred`` and ``target`` (the target
    class of the run that broke the image, -1 if none). An image no run broke keeps the first
    run's output.
    """
    check_choice(norm, "norm", NORMS)
    eps = check_positive(eps, "eps", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    classes = check_int(classes, "classes", minimum=1)
    restarts = check_int(restarts, "restarts", minimum=1)
    generator = make_generator(seed, generator)
    problem = make_problem(model, images, labels, eot=eot)
    n, device = problem.size, images.device
    all_idx = torch.arange(n, device=device)
    _, clean = problem.scores(problem.x_orig, all_idx)
    d = clean.shape[1]
    k = min(classes, d - 1)
    if k < 1:
        raise InputError(f"APGD-T needs a model with at least 2 classes, got {d}")
    others = clean.scatter(1, problem.labels.unsqueeze(1), float("-inf"))
    order = others.argsort(dim=1, descending=True)[:, :k]  # the k most likely other classes
    out = problem.x_orig.clone()
    success = torch.zeros(n, dtype=torch.bool, device=device)
    target = torch.full((n,), -1, dtype=torch.int64, device=device)
    calls, grads = problem.calls.clone(), problem.grads.clone()
    pred = torch.full((n,), -1, dtype=torch.int64, device=device)
    todo = all_idx
    per_image_t = isinstance(temperature, torch.Tensor) and temperature.numel() > 1
    for r in range(k):
        t_r = temperature[todo] if per_image_t else temperature
        x_r, info_r = _apgd_run(model, images[todo], labels[todo], norm=norm, eps=eps, steps=steps, loss=loss,
                                targets=order[todo, r], untargeted_goal=True, rho=rho, momentum=momentum,
                                random_start=random_start, temperature=t_r, eot=eot, restarts=restarts,
                                generator=generator, return_info=True)
        ok = info_r["success"].to(device)
        cpu_todo = todo.cpu()
        calls[cpu_todo] += info_r["calls"].cpu()
        grads[cpu_todo] += info_r["grads"].cpu()
        if r == 0:
            out[todo] = x_r
            pred[todo] = info_r["pred"].to(device)
        else:
            out[todo[ok]] = x_r[ok]
            pred[todo[ok]] = info_r["pred"].to(device)[ok]
        success[todo[ok]] = True
        target[todo[ok]] = order[todo[ok], r]
        todo = todo[~ok]
        if todo.numel() == 0:
            break
    x_adv = out.detach()
    if not return_info:
        return x_adv
    return x_adv, {"success": success, "calls": calls, "grads": grads, "pred": pred, "target": target}
