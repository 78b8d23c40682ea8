"""Expected distortion after rounding a random perturbation (paper 000, Sec. 3.3).

Model (Sec. 3.3): the attack adds ``U`` uniformly distributed on the sphere of radius
``rho`` in ``R^n`` (pixel units, 0..255 scale); rounding (R, Eq. 12) gives the integer
perturbation ``E = R(U)`` and the squared distortion ``D^2 = ||E||^2 = sum_j E(j)^2``
(Eq. 14). Border effects (clipping to 0..255) are neglected, as in the paper.

Every function here returns the **total** expected squared distortion ``E(D^2)`` in
squared pixel units, directly comparable to ``rho^2``, the squared norm before rounding.
Divide by ``n`` to get the per-pixel power ``E(D^2)/n`` plotted in Fig. 2 of the paper,
and take ``sqrt(E(D^2)/n)`` for a value on the scale of Eq. 31.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc

from .errors import InputError


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise InputError(
            f"n (the number of pixel values per image) must be an integer >= 1, got {n!r}"
        )
    return int(n)


def _check_rho(rho: object) -> np.ndarray:
    try:
        r = np.asarray(rho, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"rho must be a number or an array of numbers, got {rho!r}") from None
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InputError(
            "rho (the norm of the perturbation in pixel units) must be finite and >= 0"
        )
    return r


def _result(value: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(value) if scalar else value


def rounding_tail_probability(level: object, rho: object, n: object) -> float | np.ndarray:
    """``P(|E(j)| >= level)`` for one coordinate, paper 000 Sec. 3.3 (the formula after Fig. 2).

    ``|E(j)| >= l`` iff ``|U(j)| >= l - 1/2``; ``(U(j)/rho)^2`` follows a
    ``Beta(1/2, (n-1)/2)`` law, so with ``c(l) = (2l - 1) / (2 rho)`` the probability is
    ``1`` for ``l = 0``, ``1 - I_{c(l)^2}(1/2, (n-1)/2)`` for ``0 <= c(l) <= 1`` and ``0``
    beyond (``I`` the regularized incomplete beta function). For ``n = 1`` it is the step
    ``1{rho > l - 1/2}`` (``1/2`` at a tie, by the rule of Eq. 13). Broadcasts over
    ``level`` and ``rho``.
    """
    n = _check_n(n)
    r = _check_rho(rho)
    levels = np.asarray(level, dtype=np.float64)
    if np.any(levels < 0) or np.any(levels != np.round(levels)):
        raise InputError("level must hold non-negative integers")
    levels, r = np.broadcast_arrays(levels, r)
    half_width = levels - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(r > 0, half_width / np.where(r > 0, r, 1.0), np.inf)
    if n == 1:
        # U(1) = +-rho with probability 1/2 each; at a tie rho = l - 1/2, Eq. 13 rounds
        # +rho down (|E| = l - 1) and -rho away (|E| = l).
        tail = np.where(r > half_width, 1.0, np.where(r == half_width, 0.5, 0.0))
    else:
        inside = (c >= 0) & (c <= 1)
        tail = np.where(inside, 1.0 - betainc(0.5, (n - 1) / 2.0, np.clip(c, 0, 1) ** 2), 0.0)
    tail = np.where(levels == 0, 1.0, tail)
    return _result(tail, tail.ndim == 0)


def expected_rounding_distortion(rho: object, n: object) -> float | np.ndarray:
    """``E(D^2) = E||R(x_o + U) - x_o||^2``, paper 000 Eq. 16, in squared pixel units.

    ``U`` is uniform on the sphere of radius ``rho`` (pixel units) in ``R^n``. By Eq. 16,
    ``E(D^2) = n E(E(j)^2)`` with ``E(E(j)^2) = sum_l l^2 P(|E(j)| = l)``; summing by parts,
    ``E(E(j)^2) = sum_{l >= 1} (2l - 1) P(|E(j)| >= l)`` with the tail probability of
    :func:`rounding_tail_probability`. The terms vanish exactly once ``l > rho + 1/2``, so
    the sum is finite and exact (the paper's cap at ``l = 255`` is a border effect this
    model neglects). Vectorised over ``rho``; returns a float for a scalar ``rho``.

    The result tends to 0 as ``rho -> 0`` (rounding kills weak perturbations) and to the
    high-resolution value ``rho^2 + n/12`` (:func:`high_resolution_distortion`) as
    ``rho / sqrt(n)`` grows.
    """
    n = _check_n(n)
    r = _check_rho(rho)
    flat = r.reshape(-1)
    total = np.zeros_like(flat)
    top = int(math.floor(float(flat.max()) + 0.5)) if flat.size else 0
    chunk = 4096
    for start in range(1, top + 1, chunk):
        levels = np.arange(start, min(top, start + chunk - 1) + 1, dtype=np.float64)
        tail = rounding_tail_probability(levels[None, :], flat[:, None], n)
        total += (np.asarray(tail) * (2.0 * levels[None, :] - 1.0)).sum(axis=1)
    out = (n * total).reshape(r.shape)
    return _result(out, r.ndim == 0)


def high_resolution_distortion(rho: object, n: object) -> float | np.ndarray:
    """Eq. 15 of paper 000: ``E(D^2) ~ rho^2 + n/12`` (additive uniform quantization noise).

    Valid only in the high-resolution regime ``rho / sqrt(n) >> 1``. Squared pixel units.
    """
    n = _check_n(n)
    r = _check_rho(rho)
    out = r**2 + n / 12.0
    return _result(out, r.ndim == 0)


def fgsm_rounding_distortion(rho: object, n: object) -> float | np.ndarray:
    """Eq. 17 of paper 000: ``D^2 = n R(rho / sqrt(n))^2`` after rounding an FGSM perturbation.

    FGSM moves every pixel by ``+-epsilon`` (Eq. 6), so ``rho = epsilon sqrt(n)`` and
    every pixel rounds to ``+-R(epsilon)``: the distortion is deterministic. ``R`` follows
    the paper's tie rule (Eq. 13: halves round down); at ``epsilon = k + 1/2`` exactly, a
    negative component ``-epsilon`` rounds to ``-(k + 1)``, so the formula then holds for
    the positive components only. Squared pixel units; border clipping neglected.
    """
    n = _check_n(n)
    r = _check_rho(rho)
    epsilon = r / math.sqrt(n)
    rounded = np.ceil(epsilon - 0.5)
    out = n * rounded**2
    return _result(out, r.ndim == 0)


def monte_carlo_rounding_distortion(
    rho: object, n: object, samples: int = 2000, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo estimate of ``E(D^2)`` (Eq. 14) and its standard error, per ``rho``.

    Draws ``samples`` perturbations ``U`` uniform on the sphere of radius ``rho`` in ``R^n``
    (Gaussian directions, float64, one ``torch`` generator seeded with ``seed`` for all the
    ``rho`` in turn), rounds them with ``R`` (Eq. 12; halves go down, Eq. 13) and averages
    ``||R(U)||^2``: the check of :func:`expected_rounding_distortion` (Eq. 16) the paper's Fig. 2
    shows. Returns two float64 arrays of the shape of ``rho`` (squared pixel units).
    """
    import torch

    n = _check_n(n)
    r = _check_rho(rho)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 2:
        raise InputError(f"samples must be an integer >= 2, got {samples!r}")
    gen = torch.Generator().manual_seed(int(seed))
    mean, se = [], []
    for radius in r.reshape(-1):
        u = torch.randn(int(samples), n, generator=gen, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True) * float(radius)
        d2 = torch.ceil(u - 0.5).square().sum(1).numpy()
        mean.append(d2.mean())
        se.append(d2.std(ddof=1) / math.sqrt(samples))
    return np.array(mean).reshape(r.shape), np.array(se).reshape(r.shape)
