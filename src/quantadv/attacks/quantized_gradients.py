"""Quantized-gradient attacks: PQGD, DAA-BLOB and BLOB_QG (paper 001, Liu & Tsang).

Sign gradients keep the sign of every gradient component and drop their relative
magnitudes. Paper 001 replaces ``sgn(g)`` by the quantized gradient of Eq. 4,

    ``qg = zeta(b * g / max_i |g_i|)``  (per image),

where ``zeta`` rounds to the nearest integer but maps ``0 < |v| < 1`` to ``sgn(v)``: every
non-zero component moves by at least one step, the largest ones by up to ``b`` steps.

- :func:`pqgd` (Eq. 7): projected gradient descent on ``L_A`` with ``qg`` in place of the
  sign, ``x <- clip_[0,1](proj_eps(x - step * qg(grad L_A)))``. ``b = 1`` is exactly PGD-Linf.
- :func:`daa_blob` (Eq. 8-11): the Distributionally Adversarial Attack with the Lagrangian
  blob method (Zheng, Chen & Ren 2018): the images of a batch are particles that interact
  through an RBF kernel; the update is the sign (DAA-BLOB) or the quantized gradient
  (BLOB_QG, ``b`` an integer) of the kernel-smoothed direction.

Convention (:mod:`quantadv.attacks.losses`): the attacker *minimises* ``L_A``, so the
ascent direction of the paper's loss is ``-grad L_A``. Budgets ``eps`` and ``step`` are in
[0, 1] units. Restarts (Sec. 4.1, "Practical issues") come from
:func:`~quantadv.attacks.engine.with_restarts`, losses (``"ce"``, ``"margin"``),
``temperature`` and ``eot`` from the engine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_int, check_positive
from ..errors import InputError
from .engine import State, info, iterate, make_problem, restartable
from .gradient import _random_start, project


def _check_b(b: object, name: str = "b") -> int:
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise InputError(
            f"{name} must be a positive integer (the largest quantized step, paper 001 Eq. 4; "
            f"1 gives the sign gradient, the paper uses 100-1000), got {b!r}"
        )
    return b


def quantized_gradient(g: torch.Tensor, b: int) -> torch.Tensor:
    """The quantized gradient ``zeta(b * g / max|g|)`` of paper 001, Eq. 4, per sample.

    Parameters
    ----------
    g : tensor of shape (N, ...), one gradient per sample (the first dimension).
    b : positive integer; the largest component (in absolute value) of each sample becomes
        ``+-b``. ``b = 1`` gives ``sign(g)`` exactly.

    Returns
    -------
    A tensor like ``g`` with integer values in ``[-b, b]``: ``round(v)`` where
    ``|v| >= 1`` (``v = b * g / max|g|``; ties round half to even, as ``numpy.round``), and
    ``sign(g)`` where ``|v| < 1``, so that every component with ``g != 0`` is non-zero, even
    one too small for ``v`` to be representable. A sample whose gradient is all zero gives
    zeros (as ``sign`` would).
    """
    if not isinstance(g, torch.Tensor) or g.dim() < 1:
        raise InputError("g must be a tensor whose first dimension indexes samples, e.g. (N, C, H, W)")
    if not g.is_floating_point():
        raise InputError(f"g must be a floating-point tensor, got {g.dtype}")
    b = _check_b(b)
    if g.numel() == 0:
        return g.clone()
    shape = (-1,) + (1,) * (g.dim() - 1)
    mag = g.abs()
    top = mag.flatten(1).amax(dim=1) if g.dim() > 1 else mag.clone()
    safe = torch.where(top > 0, top, torch.ones_like(top)).view(shape)
    # |v| = |g| / max|g| * b (<= b, never overflows); zeta(v) = sign(v) * max(round(|v|), 1) for
    # v != 0 (round half to even is symmetric), and sign(g) keeps components whose v underflowed.
    # In place on |g|: a few passes over the tensor, a small fraction of a gradient's cost.
    mag.div_(safe).mul_(b).round_().clamp_min_(1)
    return mag.mul_(g.sign())


def _pqgd_step(eps: float, step: float, b: int):
    """Eq. 7 of paper 001 as an engine step function (descent on ``L_A``)."""

    def run(problem, idx, state: State, iteration: int):
        x = state["x"]
        _, grad, logits = problem.loss_and_grad(x, idx)
        x_new = project(x - step * quantized_gradient(grad, b), problem.x_orig[idx], "linf", eps)
        return problem.adversarial(logits, idx), {"x": x_new}

    return run


@restartable
def pqgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    b: int,
    random_start: bool = True,
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
    """Projected Quantized Gradient Descent (PQGD; paper 001, Eq. 4 and Eq. 7).

    PGD-Linf with the sign of the gradient replaced by the quantized gradient
    ``qg = zeta(b * g / max|g|)`` (:func:`quantized_gradient`): each iteration takes
    ``x - step * qg(grad L_A)`` and projects it onto the L-inf ball of radius ``eps`` and
    onto [0, 1]. A component may move by up to ``b * step`` in one iteration before the
    projection (Eq. 7 taken literally). ``b = 1`` gives exactly the iterates of
    :func:`~quantadv.attacks.pgd` with ``norm="linf"`` (same seed, same random start).

    Parameters
    ----------
    model : nn.Module returning logits; images : float NCHW in [0, 1]; labels : int64 (N,).
    eps : radius of the L-inf ball, in [0, 1] units (MNIST: 0.3).
    step : step size alpha in [0, 1] units (MNIST: 0.01).
    steps : number of gradient steps.
    b : positive integer, the largest quantized component (paper: 100, 200, 500, 1000).
    random_start : start from a uniform point of the eps-ball (default, as in paper 001).
    early_stop : stop each image at its first adversarial iterate (default: return the
        last iterate, as PGD does).
    loss : ``"ce"`` (the paper's cross-entropy) or ``"margin"`` (CW margin).
    targets : int64 (N,) target classes for a targeted attack.
    temperature, eot : see :mod:`quantadv.attacks.engine`.
    restarts : independent random starts; an image is broken when any restart breaks it
        (paper 001 Sec. 4.1; :func:`~quantadv.attacks.engine.with_restarts`).
    seed, generator : the randomness of the random start (one or the other).
    return_info : also return a dict of per-image tensors ``success``, ``calls``,
        ``grads``, ``pred`` (and ``restart`` with ``restarts > 1``).

    Returns
    -------
    The adversarial images (a new tensor), or ``(images, info)`` with ``return_info=True``.
    Every image is independent of the others in the batch.
    """
    eps = check_positive(eps, "eps", allow_zero=True)
    step = check_positive(step, "step", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    b = _check_b(b)
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
    x0 = problem.x_orig.clone()
    if random_start:
        x0 = _random_start(x0, "linf", eps, generator)
    out = iterate(problem, {"x": x0}, _pqgd_step(eps, step, b), steps=steps, early_stop=early_stop,
                  keep="last", final_check=return_info)
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv


# --- DAA with the Lagrangian blob method ------------------------------------------------------


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    """The median-heuristic bandwidth ``h^2 = 0.5 * median(d^2) / log(B)`` of DAA-BLOB.

    ``sq_dists`` is the (B, B) matrix of squared distances between the particles, diagonal
    included; the median is numpy's (mean of the two middle values for an even count) over
    all ``B^2`` entries, as in the public reference code (``blob_rand.py`` of
    tianzheng4/Distributionally-Adversarial-Attack). Needs ``B >= 2``; a zero median (most
    particles identical) is floored at 1e-12 so the kernel stays finite.
    """
    n = sq_dists.shape[0]
    if n < 2:
        raise InputError("the median heuristic needs at least two particles")
    flat = sq_dists.flatten().sort().values
    m = flat.numel()
    median = (flat[(m - 1) // 2] + flat[m // 2]) / 2
    return (0.5 * median / math.log(n)).clamp_min(1e-12)


def blob_kernel_terms(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two interaction terms of DAA-BLOB (paper 001 Eq. 8) for particles ``x``, gradients ``g``.

    With ``K_ij = exp(-||x_i - x_j||^2 / (2 h^2))`` (median-heuristic ``h``,
    :func:`median_bandwidth`) returns ``(sum_j K_ij g_j, sum_j K_ij (x_i - x_j) / h^2, K)``,
    each term shaped like ``x`` (flattened per particle internally). Costs O(B^2 d): the
    squared distances come from one Gram matrix, both sums from one product ``K @ [g, x]``.
    With one particle ``K = [[1]]`` and the second term is zero.
    """
    n = x.shape[0]
    xf = x.flatten(1)
    gf = g.flatten(1)
    if n == 1:
        return g.clone(), torch.zeros_like(x), torch.ones(1, 1, dtype=x.dtype, device=x.device)
    sq = (xf * xf).sum(dim=1)
    sq_dists = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (xf @ xf.T)).clamp_min(0.0)
    sq_dists.fill_diagonal_(0.0)
    h2 = median_bandwidth(sq_dists)
    kernel = torch.exp(-sq_dists / (2.0 * h2))
    both = kernel @ torch.cat([gf, xf], dim=1)
    weighted_grad = both[:, : gf.shape[1]]
    repulsion = (xf * kernel.sum(dim=1, keepdim=True) - both[:, gf.shape[1]:]) / h2
    return weighted_grad.view_as(g), repulsion.view_as(x), kernel


def blob_direction(x: torch.Tensor, g: torch.Tensor, c: float) -> torch.Tensor:
    """``eg_i = g_i + (c / B) (sum_j K_ij g_j - sum_j K_ij (x_i - x_j) / h^2)`` (Eq. 8).

    ``g`` is the ascent direction of the attacker's objective (the gradient of the paper's
    loss). This is the update of the reference code, ``sign(c * (-(K @ -g + dK) / B) + g)``.
    """
    weighted_grad, repulsion, _ = blob_kernel_terms(x, g)
    return g + (c / x.shape[0]) * (weighted_grad - repulsion)


def _blob_step(eps: float, step: float, c: float, b: int | None):
    """Eq. 9 (``b=None``, sign) or Eq. 11 (BLOB_QG) of paper 001 as an engine step function."""

    def run(problem, idx, state: State, iteration: int):
        x = state["x"]
        _, grad, logits = problem.loss_and_grad(x, idx)
        eg = blob_direction(x, -grad, c)  # -grad L_A: ascent on the paper's loss
        direction = eg.sign() if b is None else quantized_gradient(eg, b)
        x_new = project(x + step * direction, problem.x_orig[idx], "linf", eps)
        return problem.adversarial(logits, idx), {"x": x_new}

    return run


@restartable
def daa_blob(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
    c: float = 1.1,
    b: int | None = None,
    random_start: bool = True,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    eot: int = 1,
    restarts: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """Distributionally Adversarial Attack, Lagrangian blob method (paper 001 Eq. 8-11).

    The images of the batch are the particles ``x_1..x_B`` of a Wasserstein gradient flow
    (Zheng, Chen & Ren 2018). Each iteration computes, per image, ::

        eg_i = g_i + (c / B) * (sum_j K_ij g_j - sum_j K_ij (x_i - x_j) / h^2)

    with ``g`` the gradient of the loss (ascent direction), the RBF kernel
    ``K_ij = exp(-||x_i - x_j||^2 / (2 h^2))`` and the median-heuristic bandwidth
    ``h^2 = 0.5 * median(d^2) / log(B)`` (public reference code, ``blob_rand.py``), then
    ``x_i <- clip_[0,1](proj_eps(x_i + step * D(eg_i)))`` with ``D = sign`` (DAA-BLOB, Eq. 9,
    ``b=None``) or ``D = zeta(b * eg / max|eg|)`` (BLOB_QG, Eq. 10-11, ``b`` an integer).
    The kernel costs O(B^2 d): one Gram matrix and one matrix product per iteration.

    **The result of an image depends on the batch it is attacked with** (that is the method:
    the particles interact). Attack the same images in another batch composition or batch
    size and the outputs differ; the experiment runner fixes the particle batch with its
    ``batch_size``. A batch of one image has ``K = [[1]]``, so ``eg = (1 + c) g`` and
    DAA-BLOB takes PGD's sign steps. Restarts (``restarts > 1``) rerun the attack on the
    images not broken yet, so later restarts have fewer, different particles. The reference
    code also reshuffles the particle batches every 10 steps across the whole test set; here
    a batch keeps its particles.

    Parameters
    ----------
    model, images, labels, eps, step, steps, loss, targets, temperature, eot, restarts,
    seed, generator, return_info : as in :func:`pqgd`.
    c : weight of the interaction terms; 1.1 is the reference code's value for
        cross-entropy (it uses 10 with its CW loss).
    b : ``None`` for DAA-BLOB (sign update), a positive integer for BLOB_QG.
    random_start : start from a uniform point of the eps-ball (default, as the reference).

    Returns
    -------
    The adversarial images (a new tensor), or ``(images, info)`` with ``return_info=True``.
    """
    eps = check_positive(eps, "eps", allow_zero=True)
    step = check_positive(step, "step", allow_zero=True)
    steps = check_int(steps, "steps", minimum=1)
    c = check_positive(c, "c", allow_zero=True)
    if b is not None:
        b = _check_b(b, "b (None for the sign update of DAA-BLOB)")
    problem = make_problem(model, images, labels, targets, loss, temperature=temperature, eot=eot)
    x0 = problem.x_orig.clone()
    if random_start:
        x0 = _random_start(x0, "linf", eps, generator)
    out = iterate(problem, {"x": x0}, _blob_step(eps, step, c, b), steps=steps, early_stop=False,
                  keep="last", final_check=return_info)
    x_adv = out.x.detach().clone()
    return (x_adv, info(problem, out)) if return_info else x_adv
