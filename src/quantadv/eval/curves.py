"""Curves over many attacked images: operating characteristic, robust accuracy, best effort.

Paper 000 (Sec. 5.1.2) compares attacks by their *operating characteristic*
``d_bar -> P_suc(d_bar)`` (Eq. 32)::

    P_suc(d_bar) = M^-1 * |{m : d(x_q,m, x_o,m) < d_bar}|

over the ``M`` attacked images, where images on which the attack failed are discarded from
the set but still counted in ``M``: failures count against the attack. ``d`` is the distortion
of Eq. 31 (:func:`quantadv.eval.distortion`). For fixed-budget attacks (FGSM, I-FGSM, PGD)
the paper runs a sweep of budgets and keeps, per image, the lowest distortion that succeeds
(:func:`best_effort`) before building the curve.

All functions accept torch tensors, numpy arrays or sequences, and return float64 / bool /
int64 torch tensors on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError


def _vector(x: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    try:
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x)  # float64 for Python floats (torch would pick float32)
            if x.dtype == object:
                raise TypeError("mixed or non-numeric values")
        t = torch.as_tensor(x).detach().to("cpu")
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{name} must be a 1-D array of numbers, got {type(x).__name__} ({exc})") from None
    if t.dim() != 1:
        raise InputError(f"{name} must be 1-D (one value per image), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        return t.to(dtype)
    if dtype == torch.bool:
        if t.dtype != torch.bool and (t.dtype.is_floating_point or t.dtype.is_complex):
            raise InputError(f"{name} must be booleans (or 0/1 integers), got dtype {t.dtype}")
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise InputError(f"{name} must hold only 0/1 or True/False values")
    elif t.dtype == torch.bool or t.dtype.is_complex:
        raise InputError(f"{name} must be real numbers, got dtype {t.dtype}")
    return t.to(dtype)


def _pair(d: Any, success: Any, d_name: str = "d") -> tuple[torch.Tensor, torch.Tensor]:
    dv = _vector(d, d_name, torch.float64)
    sv = _vector(success, "success", torch.bool)
    if dv.shape != sv.shape:
        raise InputError(
            f"{d_name} has {dv.shape[0]} entries but success has {sv.shape[0]}; give one of each "
            "per attacked image"
        )
    if dv.numel() == 0:
        raise InputError("no attacked images: d and success are empty")
    bad = sv & ~torch.isfinite(dv)
    if bool(bad.any()):
        raise InputError(
            f"{d_name} is NaN or infinite for {int(bad.sum())} successful image(s); a success needs "
            "a finite distortion (failures may hold any value)"
        )
    if bool((sv & (dv < 0)).any()):
        raise InputError(f"{d_name} must be >= 0")
    return dv, sv


def operating_characteristic(
    d: Any,
    success: Any,
    thresholds: Any = None,
    *,
    inclusive: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The operating characteristic ``P_suc(d_bar)`` of paper 000, Eq. 32.

    Parameters
    ----------
    d : per-image distortion of the adversarial image (paper 000 Eq. 31; any non-negative
        measure works). Values of failed images are ignored.
    success : per-image success of the attack. Failures count in ``M`` but never in the
        numerator, so the curve tops out at the success rate.
    thresholds : distortion budgets ``d_bar`` at which to evaluate the curve. When omitted,
        the curve is returned at its jumps: the sorted distortions ``d_k`` of the successes
        with the value reached there, ``|{m : d_m <= d_k}| / M`` (the right limit of Eq. 32),
        which is what a step plot (``drawstyle="steps-post"``) needs.
    inclusive : count ``d_m <= d_bar`` instead of Eq. 32's strict ``d_m < d_bar``.

    Returns
    -------
    (thresholds, p_suc) : two float64 tensors of the same length.
    """
    dv, sv = _pair(d, success)
    m = dv.numel()
    ok = dv[sv].sort().values
    if thresholds is None:
        # Value just after each jump: number of successes with d <= d_k, ties included.
        counts = torch.searchsorted(ok, ok, right=True).to(torch.float64)
        keep = torch.ones_like(ok, dtype=torch.bool)
        if ok.numel() > 1:
            keep[:-1] = ok[1:] != ok[:-1]
        return ok[keep].clone(), counts[keep] / m
    th = _vector(thresholds, "thresholds", torch.float64)
    counts = torch.searchsorted(ok, th, right=inclusive).to(torch.float64)
    return th.clone(), counts / m


def robust_accuracy(
    norms: Any,
    success: Any,
    eps: Any,
    *,
    clean_correct: Any = None,
) -> torch.Tensor:
    """Robust accuracy at each budget ``eps``: the fraction of images still correctly classified.

    An image counts as robust at budget ``e`` when it is correctly classified without attack
    (``clean_correct``, default all True) and the attack did not find an adversarial example
    within the budget (``not (success and norm <= e)``). With ``norms`` the per-image
    minimal successful perturbation size (from a minimal-norm attack such as CW or DDN, or
    :func:`best_effort` over a budget sweep), this is the usual robust-accuracy-vs-epsilon
    curve; ``1 - robust_accuracy`` is the inclusive operating characteristic restricted to
    clean-correct images.

    Parameters
    ----------
    norms : per-image perturbation size in the budget's norm (L2, L-inf or ``d``).
    success : per-image success; failed images are robust at every budget.
    eps : budgets at which to evaluate (any order).
    clean_correct : per-image boolean, clean prediction equals the label.

    Returns
    -------
    float64 tensor, one accuracy per entry of ``eps``.
    """
    nv, sv = _pair(norms, success, "norms")
    if clean_correct is None:
        cv = torch.ones_like(sv)
    else:
        cv = _vector(clean_correct, "clean_correct", torch.bool)
        if cv.shape != sv.shape:
            raise InputError(
                f"clean_correct has {cv.shape[0]} entries but there are {sv.shape[0]} images"
            )
    ev = _vector(eps, "eps", torch.float64)
    if not bool(torch.isfinite(ev).all()) or bool((ev < 0).any()):
        raise InputError("eps must hold finite budgets >= 0")
    broken = sv.unsqueeze(0) & (nv.unsqueeze(0) <= ev.unsqueeze(1))
    robust = cv.unsqueeze(0) & ~broken
    return robust.to(torch.float64).mean(dim=1)


def best_effort(
    index: Any, d: Any, success: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image best effort over a parameter sweep (paper 000 Sec. 5.1.2).

    "For FGSM, IFGSM, and PGD2 ... several parameter values are tested. For each image, we
    record the lowest distortion obtained for a success." Given one entry per (image, sweep
    point), returns per image the lowest distortion among its successes.

    Parameters
    ----------
    index : image identifier of each entry (int).
    d : distortion of each entry (failures may hold any value).
    success : success of each entry.

    Returns
    -------
    (images, d_min, success_any) : the sorted unique image ids (int64), the minimum
    distortion over successful entries (``inf`` where none succeeded) and whether any entry
    of the image succeeded. Feed ``d_min, success_any`` to :func:`operating_characteristic`.
    """
    iv = _vector(index, "index", torch.int64)
    dv, sv = _pair(d, success)
    if iv.shape != dv.shape:
        raise InputError(f"index has {iv.shape[0]} entries but d has {dv.shape[0]}")
    images, inverse = torch.unique(iv, sorted=True, return_inverse=True)
    masked = torch.where(sv, dv, torch.full_like(dv, float("inf")))
    d_min = torch.full((images.numel(),), float("inf"), dtype=torch.float64)
    d_min = d_min.scatter_reduce(0, inverse, masked, reduce="amin", include_self=True)
    any_ok = torch.zeros(images.numel(), dtype=torch.int64)
    any_ok = any_ok.scatter_reduce(0, inverse, sv.to(torch.int64), reduce="amax") > 0
    return images, d_min, any_ok
