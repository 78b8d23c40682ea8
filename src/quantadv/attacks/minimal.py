"""Minimum-norm attacks: Carlini-Wagner L2 and DDN.

Both look for the adversarial image of smallest L2 distortion and keep the best one seen
(:class:`~quantadv.attacks.engine.BestTracker`); an image for which no adversarial point is
found is returned unchanged, with ``success`` False in the info dict.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_choice, check_int, check_positive
from ..errors import InputError
from ..quantize.budgeted import budgeted
from .engine import BestTracker, Outcome, State, info, iterate, make_problem
from .gradient import _l2_normalize, cosine_schedule

DDN_QUANTIZERS = (None, "round", "lagrangian")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def cw(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 20,
    search_steps: int = 5,
    lr: float = 0.1,
    c_init: float = 1.0,
    margin: float = 0.0,
    loss: str = "margin",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    return_info: bool = False,
):
    """Carlini-Wagner L2 attack (paper 000 Eq. 9; Carlini & Wagner 2017).

    Minimises ``J(x, c) = ||x - x_o||_2^2 + c * |L_A(x) - m|_+`` over ``x = (tanh(w) + 1) / 2``
    (the box constraint by change of variable) with Adam (``steps`` iterations, learning rate
    ``lr``), inside an outer per-image search on the constant ``c`` (``search_steps`` rounds,
    starting at ``c_init``: halve the bracket after a success, multiply by 10 before the first
    success). ``L_A`` defaults to the margin of Eq. 5; ``margin`` is ``m <= 0``: an iterate
    counts as adversarial when it is misclassified and ``L_A <= m``. The adversarial iterate
    of smallest L2 over all rounds is returned. Total gradient computations per image:
    ``steps * search_steps``. ``temperature`` and ``eot`` are the engine's options
    (:mod:`quantadv.attacks.engine`).

    The default ``lr=0.1`` (Carlini & Wagner used 0.01 with thousands of steps) is chosen for
    the small budgets of paper 000 (5 x 20 steps): pixels at 0 or 1 sit where ``tanh`` is
    saturated (``|w| ~ 7``), and at ``lr=0.01`` they cannot move within 20 Adam steps. On
    ``mnist-cnn`` (97 correctly classified mnist-5k test images, 5 x 20 steps) we measured a
    success rate of 1% at ``lr=0.01``, 23% at 0.05, 82% at 0.1 and 99% at 0.2.
    """
    steps = check_int(steps, "steps")
    search_steps = check_int(search_steps, "search_steps")
    lr = check_positive(lr, "lr")
    c_init = check_positive(c_init, "c_init")
    problem = make_problem(model, images, labels, targets, loss, margin, temperature=temperature, eot=eot)
    x_orig = problem.x_orig
    n = problem.size
    device, dtype = x_orig.device, x_orig.dtype
    beta1, beta2, tiny = 0.9, 0.999, 1e-8

    w0 = torch.atanh((2 * x_orig - 1) * (1 - 1e-6))

    def adam_step(problem, idx, state: State, iteration: int):
        x, w, c = state["x"], state["w"], state["c"]
        x_o = x_orig[idx]

        def lagrangian(xg: torch.Tensor, loss_a: torch.Tensor) -> torch.Tensor:
            dist = (xg - x_o).flatten(1).pow(2).sum(dim=1)
            return dist + c * (loss_a - problem.margin).clamp(min=0)

        _, grad_x, logits = problem.loss_and_grad(x, idx, extra=lagrangian)
        grad_w = grad_x * (1 - torch.tanh(w) ** 2) / 2  # dx/dw of x = (tanh(w) + 1) / 2
        t = iteration + 1
        m = beta1 * state["m"] + (1 - beta1) * grad_w
        v = beta2 * state["v"] + (1 - beta2) * grad_w**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        w_new = w - lr * m_hat / (v_hat.sqrt() + tiny)
        new = {"x": (torch.tanh(w_new) + 1) / 2, "w": w_new, "c": c, "m": m, "v": v}
        return problem.adversarial(logits, idx), new

    best = BestTracker(x_orig)
    all_idx = torch.arange(n, device=device)
    c = torch.full((n,), c_init, device=device, dtype=dtype)
    lower = torch.zeros_like(c)
    upper = torch.full_like(c, float("inf"))
    zeros = torch.zeros_like(x_orig)
    x_start = (torch.tanh(w0) + 1) / 2
    for _ in range(search_steps):
        state = {"x": x_start, "w": w0, "c": c, "m": zeros, "v": zeros}
        round_out = iterate(problem, state, adam_step, steps=steps, keep="best")
        best.update(all_idx, round_out.x, round_out.success, round_out.pred)
        found = round_out.success
        upper = torch.where(found, torch.minimum(upper, c), upper)
        lower = torch.where(found, lower, torch.maximum(lower, c))
        c = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)

    out = Outcome(best.x.clone(), best.found.clone(), best.norm.clone(), best.pred.clone())
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv


def ddn(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
    step: float = 1.0,
    quantize: str | None = None,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    return_info: bool = False,
):
    """Decoupled Direction and Norm (paper 000 Eq. 10-11; Rony et al. 2019).

    Each iteration takes a normalised gradient step ``x_t = x - alpha * g / ||g||`` (Eq. 10,
    ``alpha`` cosine-annealed from ``step`` to ``step / 100``), then puts ``x_t`` on the sphere
    of radius ``rho`` around ``x_o`` and clips (Eq. 11), where ``rho`` shrinks by ``(1 - gamma)``
    when the current iterate is adversarial and grows by ``(1 + gamma)`` when it is not,
    starting from ``init_norm`` ([0, 1] L2 units). The adversarial iterate of smallest L2 is kept.

    ``quantize="round"``: the original quantized DDN: every iterate is also rounded to the
    1/255 grid, so success is judged on, and the output is, a digital image.
    ``quantize="lagrangian"``: the integrated quantization Q-delta* of paper 000, Sec. 6:
    every iterate is quantized by :func:`quantadv.quantize.budgeted` with the scheduled
    budget ``(255 * rho)^2`` (squared pixel units), reusing the gradient this iteration
    computed anyway (no extra network call); the budget is respected when the previous
    iterate was adversarial and exceeded minimally when it was not. ``images`` must then be
    digital (exactly k/255).

    ``temperature`` and ``eot`` are the engine's options (:mod:`quantadv.attacks.engine`).
    """
    steps = check_int(steps, "steps")
    gamma = check_positive(gamma, "gamma")
    if gamma >= 1:
        raise InputError(f"gamma must be in (0, 1), got {gamma}")
    init_norm = check_positive(init_norm, "init_norm")
    step = check_positive(step, "step")
    check_choice(quantize, "quantize", DDN_QUANTIZERS)
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
    x_orig = problem.x_orig

    def ddn_step(problem, idx, state: State, iteration: int):
        x, rho = state["x"], state["rho"]
        _, grad, logits = problem.loss_and_grad(x, idx)
        adv = problem.adversarial(logits, idx)
        alpha = cosine_schedule(step, step / 100, iteration, steps)
        x_t = x - alpha * _l2_normalize(grad)
        rho = torch.where(adv, (1 - gamma) * rho, (1 + gamma) * rho)
        x_o = x_orig[idx]
        x_new = (x_o + _view(rho, x) * _l2_normalize(x_t - x_o)).clamp(0.0, 1.0)
        if quantize == "round":
            x_new = (x_new * 255).round() / 255
        elif quantize == "lagrangian":
            x_new = budgeted(x_o, x_new, grad, (255 * rho.to(torch.float64)) ** 2, adv)
        return adv, {"x": x_new, "rho": rho}

    rho0 = torch.full((problem.size,), init_norm, device=x_orig.device, dtype=x_orig.dtype)
    out = iterate(problem, {"x": x_orig.clone(), "rho": rho0}, ddn_step, steps=steps, keep="best")
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv
