"""Lagrangian quantization Q-lambda* (paper 000, Eq. 21-30, Sec. 4.3-4.5)."""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_images
from ..errors import InputError
from . import _loss, _rule


def loss_gradient(
    model: nn.Module,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    loss: str = "prob",
) -> torch.Tensor:
    """Gradient ``g`` of the quantization loss L_Q at ``x_a`` (paper 000, Eq. 21-24).

    Returned per pixel in *pixel units* (derivative with respect to the 0..255 value), as
    float64 with the shape of ``x_adv``. ``L_Q = s(t) - s(kappa_a)`` untargeted, ``s(kappa_a)
    - s(tau)`` targeted (see :mod:`quantadv.quantize`); ``s`` is the softmax probability
    (``loss="prob"``) or the logit (``loss="logit"``). One network call per image.
    """
    check_images(x_adv, "x_adv")
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, x_adv.shape[0], x_adv.device)
    grad, _ = _loss.gradient(model, x_adv, labels_t, targets_t, loss)
    return grad


def fixed_multiplier(
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    multiplier: torch.Tensor | float,
) -> torch.Tensor:
    """Q-lambda of paper 000 (Eq. 26-28) for a given gradient and Lagrange multiplier.

    Per pixel, with ``u = x_a - x_o`` and ``g = grad`` in pixel units: ``x_o + ceil(u)`` if
    ``1 - 2 ceil(u) >= lambda g`` else ``x_o + floor(u)`` (Eq. 28), integer ``u`` kept. At a
    tie on ``J`` (``lambda = r(j)``, Eq. 30) the loss-decreasing choice is taken, as in
    :func:`lagrangian`. ``multiplier = 0`` gives Q0 (Eq. 20), ``inf`` gives Q-infinity
    (Eq. 25). No network call; ``multiplier`` is a number or one value per image (>= 0).
    Use it with :func:`loss_gradient` to trace loss and distortion against ``lambda``
    (Fig. 4 of the paper).
    """
    parts = _rule.split(x_orig, x_adv)
    if not isinstance(grad, torch.Tensor):
        raise InputError(f"grad must be a torch.Tensor, got {type(grad).__name__}")
    g = _rule.flatten_gradient(grad, parts)
    lam = torch.as_tensor(multiplier, dtype=torch.float64).to(g.device)
    if lam.dim() == 0:
        lam = lam.expand(g.shape[0])
    if lam.shape != (g.shape[0],):
        raise InputError(
            f"multiplier must be a number or hold one value per image ({g.shape[0]}), "
            f"got shape {tuple(lam.shape)}"
        )
    if bool(torch.isnan(lam).any()) or bool((lam < 0).any()):
        raise InputError("multiplier (lambda of Eq. 26) must be >= 0")
    flip = _rule.in_j(parts, g) & (_rule.ratios(parts, g) <= lam.unsqueeze(1))
    return _rule.image(parts, _rule.offsets(parts, flip, g), x_adv)


def lagrangian(
    model: nn.Module,
    x_orig: torch.Tensor,
    x_adv: torch.Tensor,
    labels: torch.Tensor,
    *,
    targets: torch.Tensor | None = None,
    margin: float = 0.0,
    loss: str = "prob",
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Q-lambda* of paper 000: the least-distortion Lagrangian quantization that stays adversarial.

    With ``u = x_a - x_o`` in pixel units and ``g`` the gradient of the quantization loss
    ``L_Q`` (Eq. 21-23) at ``x_a`` (computed once, first-order model Eq. 24), each pixel
    solves Eq. 27, ``min (u + q)^2 + lambda g q`` over ``q in {ceil(u), floor(u)} - u``,
    whose solution is Eq. 28: ``ceil`` iff ``1 - 2 ceil(u) >= lambda g``. ``lambda = 0`` is
    Q0 (Eq. 20), ``lambda -> infinity`` is Q-infinity (Eq. 25). Only pixels of ``J``
    (Eq. 29) depend on ``lambda``: a pixel of ``J`` switches from the distortion choice to
    the loss choice when ``lambda`` reaches its ratio ``r = (1 - 2 ceil(u)) / g > 0``
    (Eq. 30). At ``lambda = r`` exactly both choices cost the same in Eq. 27; we take the
    loss choice, so that ``lambda* = r(j*)`` includes pixel ``j*`` as in Sec. 4.4.

    ``lambda*`` is the smallest sorted ratio whose quantization is adversarial under the
    *true* network (Sec. 4.5): ``lambda = 0`` is tried first, then Q-infinity, then a
    binary search over the sorted ratios, run in lock-step for the whole batch (one forward
    pass per step for all images still searching). If Q-infinity is not adversarial, it is
    returned and ``success`` is False. Cost per image: one gradient, then at most
    ``2 + ceil(log2 |J|)`` forward passes.

    Parameters
    ----------
    model : nn.Module
        Returns logits; used as found (mode and ``requires_grad`` flags untouched).
    x_orig : Tensor
        Digital originals ``x_o``, float NCHW in [0, 1] (exactly ``k/255``).
    x_adv : Tensor
        Unquantized adversarial samples ``x_a``, same shape, in [0, 1].
    labels : Tensor
        True classes ``t``.
    targets : Tensor, optional
        Targeted mode: succeed when the prediction is the target ``tau``; L_Q becomes
        ``s(kappa_a) - s(tau)`` with ``kappa_a`` the most likely class other than ``tau``
        at ``x_a`` (our analogue of Eq. 21; see :mod:`quantadv.quantize`).
    margin : float
        ``m <= 0`` (footnote 2). ``0``: success is the argmax criterion (prediction != t,
        or == tau). ``m < 0``: success also needs the true ``L_Q(q) <= m`` (in the units of
        ``loss``: probability or logit differences).
    loss : {"prob", "logit"}
        ``s`` in L_Q: softmax probabilities (the paper) or logits.
    return_info : bool
        Also return a dict of per-image tensors: ``lambda_star`` (float64; ``0`` when Q0
        succeeded, ``inf`` on failure), ``j_size`` (``|J|``), ``success`` (bool),
        ``calls`` (network calls, the gradient counting as one), ``both_pixels`` (pixels
        whose choice lowers both loss and distortion, Table 2) and ``lambda_pixels``
        (pixels of ``J`` switched to the loss choice by ``lambda*``).

    Returns
    -------
    Tensor or (Tensor, dict)
        Digital batch ``x_q`` with the dtype and device of ``x_adv``.
    """
    parts = _rule.split(x_orig, x_adv)
    margin_value = _loss.check_margin(margin)
    batch = x_adv.shape[0]
    device = x_adv.device
    labels_t, targets_t = _loss.check_labels_targets(labels, targets, batch, device)
    grad, objective = _loss.gradient(model, x_adv, labels_t, targets_t, loss, margin_value)
    g = _rule.flatten_gradient(grad, parts)
    r = _rule.ratios(parts, g)
    j_mask = torch.isfinite(r)
    j_size = j_mask.sum(dim=1)
    r_sorted = torch.sort(r, dim=1).values
    calls = torch.ones(batch, dtype=torch.int64, device=device)

    def lam_at(idx: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """lambda = r_(k) (k-th smallest ratio, 1-based) for the images ``idx``; 0 for k = 0."""
        pos = (k - 1).clamp(min=0).unsqueeze(1)
        value = r_sorted[idx].gather(1, pos).squeeze(1)
        return torch.where(k > 0, value, torch.zeros_like(value))

    # Every Q-lambda takes, per pixel, either its Q0 value or its Q-infinity value (they differ
    # on J only), so both images are built once and each search step is a single selection.
    q_zero = _rule.image(parts, _rule.offsets(parts, None, None), x_adv).flatten(1)
    q_inf = _rule.image(parts, _rule.offsets(parts, j_mask, g), x_adv).flatten(1)

    def quantize(idx: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        flip = r[idx] <= lam.unsqueeze(1)  # r = +inf off J, where q_zero == q_inf anyway
        return torch.where(flip, q_inf[idx], q_zero[idx]).reshape(idx.numel(), *x_adv.shape[1:])

    @torch.no_grad()
    def adversarial(idx: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        logits = model(quantize(idx, lam))
        calls[idx] += 1
        return objective.select(idx).success(logits)

    everyone = torch.arange(batch, device=device)
    success = adversarial(everyone, torch.zeros(batch, dtype=torch.float64, device=device))
    lam_star = torch.where(success, 0.0, float("inf")).to(torch.float64)

    # Q0 failed: try Q-infinity (lambda beyond every ratio); pointless when J is empty.
    pending = everyone[~success & (j_size > 0)]
    if pending.numel():
        inf = torch.full((pending.numel(),), float("inf"), dtype=torch.float64, device=device)
        ok = adversarial(pending, inf)
        success[pending] = ok
        searching = pending[ok]
        # Invariant: candidate lo fails, candidate hi succeeds (candidate k: lambda = r_(k)).
        lo = torch.zeros(batch, dtype=torch.int64, device=device)
        hi = j_size.clone()
        while searching.numel():
            active = searching[hi[searching] - lo[searching] > 1]
            if not active.numel():
                break
            mid = (lo[active] + hi[active]) // 2
            ok = adversarial(active, lam_at(active, mid))
            hi[active[ok]] = mid[ok]
            lo[active[~ok]] = mid[~ok]
        if searching.numel():
            lam_star[searching] = lam_at(searching, hi[searching])

    flip = j_mask & (r <= lam_star.unsqueeze(1))
    x_q = torch.where(flip, q_inf, q_zero).reshape(x_adv.shape)
    if not return_info:
        return x_q
    info = {
        "lambda_star": lam_star,
        "j_size": j_size,
        "success": success,
        "calls": calls,
        "both_pixels": _rule.agreeing(parts, g).sum(dim=1),
        "lambda_pixels": flip.sum(dim=1),
    }
    return x_q, info
