"""Certification of randomized quantization (paper 003, Theorem 1, Eq. 6-9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from quantadv.defenses import PatchRandDisc, RandDisc, SlidingWindowRandDisc
from quantadv.defenses.certify import (
    certify,
    codebook_vectors,
    gmm_kl,
    kl_bound,
    margins,
    plot_certified,
    randdisc_pixel_kl,
)
from quantadv.errors import InputError

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, above all on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gmm_kl_two_gaussians_within_tolerance():
    """Known KL between Gaussians; stated tolerance: 0.05 absolute (5,000 samples per side)."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5000, 2))
    q = rng.normal(size=(5000, 2)) + np.array([1.0, 0.5])
    for components in (1, 2):
        est = gmm_kl(p, q, components=components, mc_samples=50_000, seed=1)
        assert abs(est - 0.625) < 0.05, (components, est)  # ||mu||^2 / 2
    p1 = rng.normal(size=5000)
    q1 = 0.5 + 2.0 * rng.normal(size=5000)
    true = math.log(2.0) + (1.0 + 0.25) / 8.0 - 0.5  # KL(N(0,1) || N(0.5, 2^2))
    assert abs(gmm_kl(p1, q1, components=1, mc_samples=50_000) - true) < 0.05
    assert abs(gmm_kl(p, rng.normal(size=(5000, 2)), components=2, mc_samples=20_000)) < 0.05  # same law


def test_randdisc_closed_form_matches_monte_carlo():
    centres = torch.tensor([[0.1, 0.6, 0.9]], dtype=torch.float64)
    tau = 0.2
    x, xa = torch.tensor([[0.3]]), torch.tensor([[0.45]])
    g = torch.Generator().manual_seed(0)

    def freqs(v):
        noisy = v + tau * torch.randn(400_000, generator=g, dtype=torch.float64)
        lab = (noisy.unsqueeze(1) - centres[0]).abs().argmin(1)
        return torch.bincount(lab, minlength=3).double() / len(lab)

    p, q = freqs(0.3), freqs(0.45)
    mc = float((p * (p / q).log()).sum())
    cf = float(randdisc_pixel_kl(x, xa, centres, tau)[0])
    assert abs(cf - mc) < 3e-3 and cf > 0
    assert float(randdisc_pixel_kl(x, x, centres, tau)[0]) == pytest.approx(0.0, abs=1e-15)
    # Far tails stay finite and positive (log-space CDFs).
    far = float(randdisc_pixel_kl(torch.tensor([[0.0]]), torch.tensor([[0.3]]), torch.tensor([[0.0, 1.0]]), 4 / 255)[0])
    assert 0 < far < math.inf


def test_margins():
    counts = torch.tensor([[8, 2, 0], [3, 5, 2], [0, 0, 10]])
    labels = torch.tensor([0, 0, 2])
    torch.testing.assert_close(margins(counts, labels), torch.tensor([0.6, -0.2, 1.0], dtype=torch.float64))
    lower = margins(counts, labels, alpha=0.05)
    assert (lower < margins(counts, labels)).all()


def test_codebook_vectors_sorted_by_norm():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    v = codebook_vectors(PatchRandDisc(2, 3, 0.05, 0.05), x, 50, generator=torch.Generator().manual_seed(1))
    assert v.shape == (50, 12)
    norms = np.linalg.norm(v.reshape(50, 3, 4), axis=2)
    assert (np.diff(norms, axis=1) >= 0).all()


class Brightness(nn.Module):
    """Two classes: 1 if the mean intensity exceeds 0.5."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], 1) * 40


def toy_data(n=6):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(-1, 1, 1, 1) == 1, 0.8, 0.2)
    x = (base + 0.1 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    labels[0] = 1  # one wrong label: clean accuracy < 1
    return x, labels


def shift_attack(model, images, labels, eps):
    direction = torch.where(labels.view(-1, 1, 1, 1) == 1, -1.0, 1.0)
    return (images + eps * direction).clamp(0, 1)


def test_certified_accuracy_never_exceeds_clean_accuracy():
    x, y = toy_data()
    eps = [0.0, 0.02, 0.1, 0.4]
    for q in (RandDisc(2, 0.05, 0.05), SlidingWindowRandDisc(2, 2, 0.05, 0.05, beta=1.0)):
        cert = certify(
            (q, Brightness()), x, y, eps, samples=20, attack=shift_attack, codebooks=200, mc_samples=2000,
            generator=torch.Generator().manual_seed(0),
        )
        assert cert.clean_accuracy == pytest.approx(5 / 6)
        assert all(a <= cert.clean_accuracy for a in cert.certified_accuracy)
        assert not cert.certified[0].any()  # the mislabeled image is never certified
        assert cert.certified_accuracy[0] == pytest.approx(5 / 6)  # eps = 0: every correct vote with margin
        assert cert.certified_accuracy[-1] < cert.certified_accuracy[0]  # eps 0.4 moves every image across
        assert (cert.kl[:, 0] == 0).all() and (cert.kl >= 0).all()
        assert cert.to_dict()["images"] == 6


def test_bound_is_monotone_in_eps_and_tiny_radii_only():
    x, y = toy_data()
    eps = [0.0, 1e-4, 1e-3, 0.01, 0.1]
    for q in (RandDisc(2, 0.05, 0.05), PatchRandDisc(2, 2, 0.05, 0.05), SlidingWindowRandDisc(2, 2, 0.05, 0.05)):
        cert = certify((q, Brightness()), x, y, eps, samples=20, kl="bound", codebooks=8,
                       generator=torch.Generator().manual_seed(0))
        acc = cert.certified_accuracy
        assert all(a >= b for a, b in zip(acc, acc[1:], strict=False))
        assert acc[0] == pytest.approx(5 / 6) and acc[-1] == 0.0
        assert (cert.kl[:, 1:].diff(dim=1) >= 0).all()
    # swRD counts each pixel in up to s^2 windows: its first term is larger than pRD's.
    b_sw = kl_bound(SlidingWindowRandDisc(2, 2, 0.05, 0.05), x, 0.01)
    b_p = kl_bound(PatchRandDisc(2, 2, 0.05, 0.05), x, 0.01)
    assert (b_sw > b_p).all()


def test_default_attack_runs_and_plot(tmp_path):
    x, y = toy_data(2)
    cert = certify((RandDisc(2, 0.05, 0.05), Brightness()), x, y, [0.0, 0.05], samples=10, codebooks=100,
                   mc_samples=1000, generator=torch.Generator().manual_seed(0))
    assert cert.settings["attack"].startswith("PGD-40")
    path = tmp_path / "cert.png"
    plot_certified({"RandDisc": cert}, str(path))
    assert path.stat().st_size > 0
    cert.save(str(tmp_path / "cert.json"))


def test_certify_user_errors():
    x, y = toy_data(2)
    with pytest.raises(InputError, match="sigma > 0"):
        certify((RandDisc(2, 0.0, 0.05), Brightness()), x, y, [0.1])
    with pytest.raises(InputError, match="RandDisc, PatchRandDisc or SlidingWindowRandDisc"):
        certify((nn.Identity(), Brightness()), x, y, [0.1])
    with pytest.raises(InputError, match="defended model"):
        certify(Brightness(), x, y, [0.1])
    with pytest.raises(InputError, match="kl must be"):
        certify((RandDisc(2, 0.1, 0.1), Brightness()), x, y, [0.1], kl="exact")


@pytest.mark.slow
def test_cli_certify_end_to_end(tmp_path, capsys):
    import json

    from quantadv.cli import main

    out = tmp_path / "cert"
    code = main([
        "certify", "--model", "mnist-cnn", "--defense", "swrd:s=2,k=2,sigma=4/255,tau=4/255,beta=1", "--n", "2",
        "--eps", "0,0.0001,0.01", "--kl", "bound", "--samples", "10", "--out", str(out), "--threads", "1",
    ])
    assert code == 0
    summary = json.loads((out / "certificate.json").read_text())
    assert summary["eps"] == [0.0, 0.0001, 0.01] and summary["n"] == 2
    assert all(a <= summary["clean_accuracy"] for a in summary["certified_accuracy"])
    assert (out / "certified.png").stat().st_size > 0
    assert main(["certify", "--model", "mnist-cnn", "--n", "2"]) == 2  # no defense: a user error
    assert "pass --defense" in capsys.readouterr().err
