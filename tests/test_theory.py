"""Tests of quantadv.theory against Monte Carlo and closed forms (paper 000, Eq. 14-17)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantadv import InputError
from quantadv.quantize import round_nearest
from quantadv.theory import (
    expected_rounding_distortion,
    fgsm_rounding_distortion,
    high_resolution_distortion,
    rounding_tail_probability,
)


def sphere(samples: int, n: int, rho: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, n, generator=gen).double()
    return z.mul_(rho / z.norm(dim=1, keepdim=True))


@pytest.fixture(scope="module")
def directions() -> torch.Tensor:
    """20,000 independent uniform directions on the unit sphere of R^784."""
    return sphere(20_000, 784, 1.0, seed=0)


@pytest.mark.parametrize("rho", [0.1, 3.0, 8.0, 14.0, 20.0, 30.0])
def test_eq16_matches_monte_carlo_on_the_sphere(rho, directions):
    samples, n = directions.shape
    d2 = torch.round(rho * directions).square_().sum(1)
    mean, se = float(d2.mean()), float(d2.std()) / math.sqrt(samples)
    expected = expected_rounding_distortion(rho, n)
    assert isinstance(expected, float)
    assert abs(mean - expected) <= max(4.0 * se, 1e-12), (mean, se, expected)


def test_monte_carlo_rounding_is_the_library_r(directions):
    """The Monte Carlo above rounds like quantadv.quantize.round_nearest (Eq. 12) does."""
    u = 20.0 * directions[:2000]
    x_o = torch.full((2000, 1, 28, 28), 128 / 255, dtype=torch.float64)
    x_q = round_nearest(x_o + u.view_as(x_o) / 255.0)
    e = ((x_q - x_o) * 255.0).round().flatten(1)
    differ = e != torch.round(u)
    # only values within the snapping tolerance (1e-4) of a half may round the other way
    near_half = ((u - u.floor()) - 0.5).abs() <= 1e-4
    assert not bool((differ & ~near_half).any())
    assert int(differ.sum()) <= 1e-3 * u.numel()


def test_tail_probability_matches_monte_carlo():
    n, rho = 50, 6.0
    u = sphere(40_000, n, rho, seed=1)[:, 0].abs().numpy()
    for level in range(0, 7):
        empirical = float(np.mean(u >= level - 0.5))
        p = rounding_tail_probability(level, rho, n)
        assert abs(empirical - p) <= 4 * math.sqrt(p * (1 - p) / u.size) + 1e-12
    assert rounding_tail_probability(0, rho, n) == 1.0
    assert rounding_tail_probability(7, rho, n) == 0.0  # c(7) = 13/12 > 1


def test_vectorised_and_limits():
    n = 784
    rhos = np.array([0.0, 1e-3, 0.49, 0.5, 5.0, 50.0])
    values = expected_rounding_distortion(rhos, n)
    assert values.shape == rhos.shape
    for rho, value in zip(rhos, values, strict=True):
        assert value == pytest.approx(expected_rounding_distortion(float(rho), n), rel=1e-12)
    # rho -> 0: every coordinate stays below 1/2, rounding returns x_o exactly
    assert values[0] == 0.0 and values[1] == 0.0 and values[2] == 0.0
    # rounding shrinks a weak perturbation (Sec. 3.3): far below the high-resolution value
    assert np.all(values[1:5] < rhos[1:5] ** 2)
    assert np.all(values[1:5] < high_resolution_distortion(rhos[1:5], n) / 2)
    # a 2-D grid of rho keeps its shape
    assert expected_rounding_distortion(rhos.reshape(2, 3), n).shape == (2, 3)


@pytest.mark.parametrize("n", [10, 100, 784])
def test_large_rho_approaches_high_resolution(n):
    rho = 40.0 * math.sqrt(n)  # 40 pixel units of standard deviation per coordinate
    exact = expected_rounding_distortion(rho, n)
    approx = high_resolution_distortion(rho, n)
    # the whole excess over rho^2 is the n/12 of Eq. 15, up to 1%
    assert approx == rho**2 + n / 12
    assert abs(exact - approx) <= 0.01 * n / 12


def test_rounding_crossover_is_near_paper_value():
    """Fig. 2: rounding lowers the distortion when rho^2/n < ~0.08 (n = 3 * 299^2)."""
    n = 3 * 299**2
    power = np.linspace(0.01, 0.5, 200)
    ratio = expected_rounding_distortion(np.sqrt(power * n), n) / (power * n)
    crossing = power[np.argmax(ratio >= 1.0)]
    assert np.all(ratio[power < 0.07] < 1.0)
    assert 0.06 <= crossing <= 0.1


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 3.0), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_fgsm_eq17_matches_rounding_fgsm_images(epsilon, n, seed):
    frac = epsilon - math.floor(epsilon)
    if abs(frac - 0.5) < 1e-3:  # exact halves: see the next test
        epsilon += 0.01
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (1, 1, 1, n), generator=gen).double() * 2 - 1
    x_o = torch.full((1, 1, 1, n), 100 / 255, dtype=torch.float64)
    x_a = x_o + epsilon * signs / 255.0
    d2 = float((((round_nearest(x_a) - x_o) * 255).round() ** 2).sum())
    rho = epsilon * math.sqrt(n)
    assert fgsm_rounding_distortion(rho, n) == pytest.approx(d2, abs=1e-9)


def test_fgsm_eq17_cancels_below_half_and_amplifies_above():
    n = 1000
    eps = np.array([0.3, 0.5, 0.6, 0.99, 1.0, 1.4])
    d2 = fgsm_rounding_distortion(eps * math.sqrt(n), n)
    assert np.array_equal(d2 / n, np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    # Fig. 2: amplified for 1/2 < eps < 1, cancelled for eps < 1/2
    assert d2[2] > (0.6**2) * n and d2[0] == 0.0


def test_small_n_cases():
    # n = 1: U = +-rho, deterministic magnitude; at a half tie the two signs round differently
    assert expected_rounding_distortion(1.2, 1) == pytest.approx(1.0)
    assert expected_rounding_distortion(0.5, 1) == pytest.approx(0.5)
    assert expected_rounding_distortion(2.7, 1) == pytest.approx(9.0)
    # n = 2: U(1) = rho cos(theta), theta uniform; |cos(theta)| >= 1/2 on 2/3 of the circle
    assert rounding_tail_probability(1, 1.0, 2) == pytest.approx(2 / 3, rel=1e-12)


def test_bad_arguments():
    with pytest.raises(InputError, match="n"):
        expected_rounding_distortion(1.0, 0)
    with pytest.raises(InputError, match="n"):
        expected_rounding_distortion(1.0, 2.5)
    with pytest.raises(InputError, match="rho"):
        expected_rounding_distortion(-1.0, 10)
    with pytest.raises(InputError, match="rho"):
        high_resolution_distortion(float("nan"), 10)
    with pytest.raises(InputError, match="level"):
        rounding_tail_probability(-1, 1.0, 10)


def test_the_library_monte_carlo_agrees_with_eq16_and_is_seeded():
    from quantadv.theory import monte_carlo_rounding_distortion

    rho = np.array([3.0, 8.0, 20.0])
    mean, se = monte_carlo_rounding_distortion(rho, 784, 400, seed=3)
    assert mean.shape == se.shape == (3,) and np.all(se > 0)
    assert np.all(np.abs(mean - expected_rounding_distortion(rho, 784)) < 5 * se + 1e-9)
    again, _ = monte_carlo_rounding_distortion(rho, 784, 400, seed=3)
    assert np.array_equal(mean, again)
    scalar, _ = monte_carlo_rounding_distortion(8.0, 784, 400, seed=3)
    assert scalar.shape == ()
    with pytest.raises(InputError):
        monte_carlo_rounding_distortion(1.0, 784, 1)
