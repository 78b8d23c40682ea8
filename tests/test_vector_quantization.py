"""RandDisc, pRD and swRD (paper 003): identities between them, batching, randomness, k-means."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from quantadv.defenses import PatchRandDisc, RandDisc, SlidingWindowRandDisc
from quantadv.defenses.vector_quantization import (
    SPECS,
    draw_noise,
    from_spec,
    kmeans,
    kmeans_plus_plus,
)
from quantadv.errors import InputError

SIG = 4 / 255


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, above all on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b=4, c=1, h=12, w=12, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype)


def all_quantizers(sigma=SIG, tau=SIG, k=2):
    return [
        RandDisc(k, sigma, tau),
        PatchRandDisc(2, k, sigma, tau),
        PatchRandDisc(3, k, sigma, tau),
        SlidingWindowRandDisc(2, k, sigma, tau, beta=1.0),
        SlidingWindowRandDisc(3, k, sigma, tau, beta=math.inf),
    ]


# ----------------------------------------------------------------------------------------------
# Identities
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[0.0, 0.25, 0.5, 1.0], [0.0, 3 / 255, 128 / 255, 200 / 255, 1.0]])
def test_randdisc_without_noise_and_enough_centres_is_identity(levels):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, len(levels), (5, 2, 9, 7), generator=g)
    x = torch.tensor(levels)[idx]
    for k in (len(levels), len(levels) + 2):
        y = RandDisc(k, 0.0, 0.0)(x[:, :1], generator=gen(3))
        # Centres are means of identical values: exact for dyadic levels, within 1 ulp otherwise.
        torch.testing.assert_close(y, x[:, :1], rtol=0, atol=1e-6)
    # Two channels: a pixel is a 2-vector; k >= the number of distinct colours.
    colours = len(torch.unique(x.permute(0, 2, 3, 1).reshape(-1, 2), dim=0))
    torch.testing.assert_close(RandDisc(colours, 0.0, 0.0)(x, generator=gen(3)), x, rtol=0, atol=1e-6)
    # Vector case: pRD with k >= number of distinct patches is also the identity.
    xp = torch.tensor(levels)[idx[:, :, :8, :6]]
    npatch = len(torch.unique(torch.nn.functional.unfold(xp, 2, stride=2).transpose(1, 2).reshape(-1, 8), dim=0))
    torch.testing.assert_close(PatchRandDisc(2, npatch, 0.0, 0.0)(xp, generator=gen(0)), xp, rtol=0, atol=1e-6)


def test_prd_with_s1_equals_randdisc():
    x = images(3, 3, 10, 11)
    for k in (2, 5):
        a = RandDisc(k, SIG, 2 * SIG)(x, generator=gen(7))
        b = PatchRandDisc(1, k, SIG, 2 * SIG)(x, generator=gen(7))
        assert torch.equal(a, b)


def test_swrd_with_s1_equals_randdisc():
    x = images(3, 1, 10, 11)
    for beta in (1.0, 50.0, math.inf):
        a = RandDisc(3, SIG, SIG)(x, generator=gen(5))
        b = SlidingWindowRandDisc(1, 3, SIG, SIG, beta=beta)(x, generator=gen(5))
        assert torch.equal(a, b)


def _closest_reconstruction(p_hat, dist, c, h, w, s):
    """Eq. 2-4 as beta -> inf, by hand: each pixel from its closest covering window (ties averaged)."""
    lw = w - s + 1
    out = torch.zeros(c, h, w, dtype=p_hat.dtype)
    for i in range(h):
        for j in range(w):
            rows = range(max(0, i - s + 1), min(i, h - s) + 1)
            cols = range(max(0, j - s + 1), min(j, w - s) + 1)
            cover = [(a, b) for a in rows for b in cols]
            d = torch.stack([dist[a * lw + b] for a, b in cover])
            best = [cv for cv, dv in zip(cover, d, strict=True) if dv == d.min()]
            vals = [p_hat.view(c, s, s, -1)[:, i - a, j - b, a * lw + b] for a, b in best]
            out[:, i, j] = torch.stack(vals).mean(0)
    return out


def test_swrd_large_beta_picks_the_closest_reconstruction():
    x = images(2, 2, 6, 7, seed=4, dtype=torch.float64)
    s = 3
    q_inf = SlidingWindowRandDisc(s, 3, SIG, SIG, beta=math.inf)
    p_hat, dist = q_inf.reconstructions(x, generator=gen(2))
    y_inf = q_inf(x, generator=gen(2))
    for n in range(x.shape[0]):
        expected = _closest_reconstruction(p_hat[n], dist[n], 2, 6, 7, s)
        torch.testing.assert_close(y_inf[n], expected.clamp(0, 1), rtol=0, atol=1e-12)
    # The softmax weights tend to that choice as beta grows.
    gaps = [
        (SlidingWindowRandDisc(s, 3, SIG, SIG, beta=beta)(x, generator=gen(2)) - y_inf).abs().max().item()
        for beta in (1.0, 100.0, 1e6)
    ]
    assert gaps[2] < 1e-9 and gaps[0] > gaps[1] > gaps[2]


def test_swrd_beta_zero_is_the_plain_mean_of_reconstructions():
    x = images(1, 1, 5, 5)
    q = SlidingWindowRandDisc(2, 2, SIG, SIG, beta=0.0)
    p_hat, _ = q.reconstructions(x, generator=gen(0))
    y = q(x, generator=gen(0))
    fold = torch.nn.functional.fold
    ones = torch.ones_like(p_hat)
    expected = fold(p_hat, (5, 5), 2) / fold(ones, (5, 5), 2)
    torch.testing.assert_close(y, expected.clamp(0, 1))


# ----------------------------------------------------------------------------------------------
# Shape, range, dtype, batching, randomness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 7, 9)])
def test_shape_range_dtype(dtype, shape):
    x = images(*shape, dtype=dtype)
    x[0, :, :2] = 0.0  # pixels on the borders of the range
    x[-1, :, -2:] = 1.0
    for q in all_quantizers(sigma=0.2, tau=0.2):
        y = q(x, generator=gen(0))
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.isfinite(y).all()
    assert x[0, :, :2].eq(0).all()  # input untouched


def test_batch_independence_and_split_batches():
    x = images(6, 1, 12, 12, seed=2)
    for q in all_quantizers():
        whole = q(x, generator=gen(11))
        g = gen(11)
        parts = torch.cat([q(x[:1], generator=g), q(x[1:4], generator=g), q(x[4:], generator=g)])
        assert torch.equal(whole, parts), q
        # An image's output does not depend on the other images of its batch.
        other = x.clone()
        other[[0, 1, 3, 4, 5]] = images(5, 1, 12, 12, seed=9)
        assert torch.equal(q(other, generator=gen(11))[2], whole[2]), q


def test_reproducible_and_random():
    x = images(2, 1, 12, 12)
    for q in all_quantizers(sigma=0.1, tau=0.1):
        a, b = q(x, generator=gen(1)), q(x, generator=gen(1))
        assert torch.equal(a, b)
        assert not torch.equal(a, q(x, generator=gen(2)))
    torch.manual_seed(0)
    a = RandDisc(2, 0.1, 0.1)(x)
    torch.manual_seed(0)
    assert torch.equal(a, RandDisc(2, 0.1, 0.1)(x))  # generator=None: torch's global generator


def test_draws_depend_only_on_the_seed():
    seeds = torch.tensor([5, 2**40 + 3, 5], dtype=torch.int64)
    sig, uni, tau = draw_noise(seeds, 300, 2, 3, True, True, torch.float64, torch.device("cpu"))
    assert sig.shape == (3, 300, 2) and uni.shape == (3, 3) and tau.shape == (3, 300, 2)
    assert torch.equal(sig[0], sig[2]) and torch.equal(uni[0], uni[2]) and not torch.equal(sig[0], sig[1])
    assert not torch.equal(sig[0], tau[0])
    assert abs(float(sig.mean())) < 0.1 and abs(float(sig.std()) - 1) < 0.1
    assert 0 <= float(uni.min()) and float(uni.max()) < 1
    # Without sigma noise, the same uniforms come first: codebooks stay comparable.
    none, uni2, _ = draw_noise(seeds[:1], 300, 2, 3, False, False, torch.float64, torch.device("cpu"))
    assert none is None and uni2.shape == (1, 3)


def test_gradients_flow_through_centres():
    x = images(2, 1, 8, 8).requires_grad_(True)
    for q in all_quantizers():
        y = q(x, generator=gen(0))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, q
    assert x.grad is None


# ----------------------------------------------------------------------------------------------
# Batched k-means against scikit-learn
# ----------------------------------------------------------------------------------------------


def test_batched_kmeans_equals_sklearn():
    sk = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(0)
    b, n, d, k = 4, 60, 3, 4
    means = torch.rand(b, k, 1, d, generator=g, dtype=torch.float64) * 4
    pts = (means + 0.6 * torch.randn(b, k, n // k, d, generator=g, dtype=torch.float64)).reshape(b, n, d)
    init = kmeans_plus_plus(pts, k, torch.rand(b, k, generator=g, dtype=torch.float64))
    for iters in (1, 3, 20):
        centres, labels = kmeans(pts, init, iters)
        for i in range(b):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = sk.KMeans(k, init=init[i].numpy(), n_init=1, max_iter=iters, tol=0, algorithm="lloyd").fit(
                    pts[i].numpy()
                )
            np.testing.assert_allclose(centres[i].numpy(), ref.cluster_centers_, rtol=0, atol=1e-10)
            np.testing.assert_array_equal(labels[i].numpy(), ref.labels_)


def test_kmeans_plus_plus_picks_distinct_points_and_follows_d2_weights():
    # Three distinct values: k-means++ must pick all three (zero weight on chosen ones).
    pts = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 1.0]).view(1, 6, 1).expand(500, 6, 1)
    u = torch.rand(500, 3, generator=gen(0))
    c = kmeans_plus_plus(pts, 3, u).squeeze(-1)
    assert torch.equal(c.sort(1).values, torch.tensor([0.0, 0.5, 1.0]).expand(500, 3))
    # Second centre after first = 0: P(1.0) = 3*1 / (3*1 + 0.25) by the D^2 rule.
    pts2 = torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0]).view(1, 5, 1).expand(20000, 5, 1)
    u2 = torch.rand(20000, 2, generator=gen(1)) * torch.tensor([0.2, 1.0])  # first pick: point 0
    c2 = kmeans_plus_plus(pts2, 2, u2)[:, 1, 0]
    assert abs(float((c2 == 1.0).double().mean()) - 3 / 3.25) < 0.01


def test_fewer_distinct_points_than_centres():
    x = torch.full((2, 1, 6, 6), 0.5)
    for q in all_quantizers(sigma=0.0, tau=0.0, k=4):
        torch.testing.assert_close(q(x, generator=gen(0)), x)


# ----------------------------------------------------------------------------------------------
# Specs and errors
# ----------------------------------------------------------------------------------------------


def test_from_spec():
    q = from_spec("swrd", {"s": "2", "k": "2", "sigma": "4/255", "tau": "0.0157", "beta": "1"})
    assert isinstance(q, SlidingWindowRandDisc) and q.s == 2 and q.k == 2 and q.beta == 1.0
    assert q.sigma == pytest.approx(4 / 255) and q.tau == pytest.approx(0.0157)
    assert isinstance(from_spec("RandDisc", {"k": 2}), RandDisc)
    assert isinstance(from_spec("prd", {"s": 2, "k": 3, "sigma": 0.01}), PatchRandDisc)
    assert set(SPECS) == {"randdisc", "prd", "swrd"}
    with pytest.raises(InputError, match="unknown parameter"):
        from_spec("randdisc", {"k": "2", "s": "2"})
    with pytest.raises(InputError, match="missing parameter"):
        from_spec("prd", {"k": "2"})
    with pytest.raises(InputError, match="not a valid int"):
        from_spec("prd", {"k": "two", "s": "2"})
    with pytest.raises(InputError, match="unknown vector-quantization defense"):
        from_spec("jpeg", {})


def test_user_errors():
    with pytest.raises(InputError, match="4/255"):
        RandDisc(2, 4.0, 4.0)
    with pytest.raises(InputError, match="k must be"):
        RandDisc(0, 0.1, 0.1)
    with pytest.raises(InputError, match="floating-point"):
        RandDisc(2, 0.1, 0.1)(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        RandDisc(2, 0.1, 0.1)(torch.full((1, 1, 4, 4), 255.0))
    with pytest.raises(InputError, match="exceeds the image size"):
        SlidingWindowRandDisc(5, 2, 0.1, 0.1)(torch.rand(1, 1, 4, 4))
    with pytest.raises(InputError, match="generator"):
        RandDisc(2, 0.1, 0.1)(torch.rand(1, 1, 4, 4), generator=0)


def test_codebook_is_the_one_forward_uses():
    x = images(3, 1, 10, 10)
    for q in (RandDisc(3, 0.05, 0.05), PatchRandDisc(2, 3, 0.05, 0.05)):
        centres = q.codebook(x, generator=gen(4))  # (B, k, D)
        out = q.points(q(x, generator=gen(4)))  # quantized points are centres (up to the clamp)
        for b in range(3):
            d = torch.cdist(out[b], centres[b].clamp(0, 1)).min(1).values
            assert float(d.max()) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-cnn-swrd", "fmnist-cnn-swrd"])
def test_t_swrd_zoo_models(name):
    """t-swRD zoo models load as Defended(swRD) (their float16 check: tests/test_zoo_budget.py)."""
    from quantadv import models
    from quantadv.defenses import Defended

    if name not in models.list():
        pytest.skip(f"{name} is not in the zoo yet")
    model = models.load(name)
    assert isinstance(model, Defended) and isinstance(model.preprocess, SlidingWindowRandDisc)
    assert not model.training


# ----------------------------------------------------------------------------------------------
# The faster implementation (issue 19) gives the outputs of the earlier one, bit for bit
# ----------------------------------------------------------------------------------------------


def _reference_quantize(x, kind, s, k, sigma, tau, beta, iters, generator):
    """The implementation before issue 19, kept plain and slow: the same draws, ``argmin``,
    ``scatter_add`` counts, every Lloyd iteration on the full subset, ``fold`` for Eq. 2-4."""
    import torch.nn.functional as F

    def nearest(p, c):
        if c.shape[1] * c.shape[2] <= 64:
            return torch.cdist(p, c, compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)
        pn = (p * p).sum(-1, keepdim=True)
        return (pn - 2.0 * torch.bmm(p, c.transpose(1, 2)) + (c * c).sum(-1).unsqueeze(1)).argmin(-1)

    def update(p, lab, old):
        bb, nn_, dd = p.shape
        sums = p.new_zeros(bb, old.shape[1], dd).scatter_add(1, lab.unsqueeze(-1).expand(bb, nn_, dd), p)
        counts = p.new_zeros(bb, old.shape[1]).scatter_add_(1, lab, p.new_ones(bb, nn_)).unsqueeze(-1)
        return torch.where(counts > 0, sums / counts.clamp_min(1.0), old)

    b, c, h, w = x.shape
    seeds = torch.randint(0, 2**62, (b,), generator=generator, dtype=torch.int64)
    if kind == "randdisc":
        pts = x.reshape(b, c, h * w).transpose(1, 2)
    elif kind == "prd":
        hp, wp = h + (-h % s), w + (-w % s)
        pts = F.unfold(F.pad(x, (0, wp - w, 0, hp - h)), kernel_size=s, stride=s).transpose(1, 2)
    else:
        windows = F.unfold(x, kernel_size=s)
        pts = windows.transpose(1, 2)
    pts = pts.contiguous()
    n, d = pts.shape[1:]
    sig, uni, tn = (torch.empty(b, n * d), torch.empty(b, k), torch.empty(b, n * d))
    g = torch.Generator()
    for i, seed in enumerate(seeds.tolist()):
        g.manual_seed(seed)
        if sigma > 0:
            torch.randn(n * d, generator=g, out=sig[i])
        torch.rand(k, generator=g, out=uni[i])
        if tau > 0:
            torch.randn(n * d, generator=g, out=tn[i])
    noisy = pts + sigma * sig.view(b, n, d) if sigma > 0 else pts
    # k-means++
    batch = torch.arange(b)
    first = (uni[:, 0] * n).long().clamp_(max=n - 1)
    centres = [noisy[batch, first]]
    dist = ((noisy - centres[0].unsqueeze(1)) ** 2).sum(-1)
    for j in range(1, k):
        cum = torch.cumsum(dist, dim=1)
        total = cum[:, -1]
        by_weight = torch.searchsorted(cum, (uni[:, j] * total).unsqueeze(1), right=True).squeeze(1)
        idx = torch.where(total > 0, by_weight.clamp_(max=n - 1), (uni[:, j] * n).long().clamp_(max=n - 1))
        centres.append(noisy[batch, idx])
        dist = torch.minimum(dist, ((noisy - centres[-1].unsqueeze(1)) ** 2).sum(-1))
    cent = torch.stack(centres, dim=1)
    # Lloyd, one image at a time
    for i in range(b):
        lab = nearest(noisy[i : i + 1], cent[i : i + 1])
        for _ in range(iters):
            new_c = update(noisy[i : i + 1], lab, cent[i : i + 1])
            new_l = nearest(noisy[i : i + 1], new_c)
            cent[i : i + 1] = new_c
            if torch.equal(new_l, lab):
                break
            lab = new_l
    probe = pts + tau * tn.view(b, n, d) if tau > 0 else pts
    q = torch.gather(cent, 1, nearest(probe, cent).unsqueeze(-1).expand(b, n, d))
    if kind == "randdisc":
        return q.transpose(1, 2).reshape(b, c, h, w).clamp(0.0, 1.0)
    if kind == "prd":
        return F.fold(q.transpose(1, 2), (hp, wp), kernel_size=s, stride=s)[:, :, :h, :w].clamp(0.0, 1.0)
    p_hat = q.transpose(1, 2)
    score = -((windows - p_hat) ** 2).sum(1)
    score = score if math.isinf(beta) else beta * score
    lh, lw = h - s + 1, w - s + 1
    smap = F.pad(score.view(b, 1, lh, lw), (s - 1,) * 4, value=-math.inf)
    max_unf = F.unfold(F.max_pool2d(smap, s, stride=1), kernel_size=s)
    if math.isinf(beta):
        weight = (score.unsqueeze(1) >= max_unf).to(x.dtype)
    else:
        weight = torch.exp(score.unsqueeze(1) - max_unf)
    num = F.fold((p_hat.view(b, c, s * s, -1) * weight.unsqueeze(1)).view(b, c * s * s, -1), (h, w), s)
    return (num / F.fold(weight, (h, w), s)).clamp(0.0, 1.0)


@pytest.mark.parametrize(
    "kind,s,k,sigma,beta,iters",
    [
        ("swrd", 2, 2, SIG, 1.0, 10),  # the paper's MNIST setting
        ("swrd", 3, 3, 0.05, 1.0, 10),
        ("swrd", 2, 5, 0.1, math.inf, 10),
        ("swrd", 2, 2, 0.1, 0.0, 3),
        ("randdisc", 1, 2, SIG, 1.0, 10),
        ("randdisc", 1, 8, 0.05, 1.0, 1),
        ("prd", 2, 2, SIG, 1.0, 10),
        ("prd", 4, 6, 0.05, 1.0, 10),
    ],
)
def test_outputs_identical_to_the_reference_implementation(kind, s, k, sigma, beta, iters):
    x = images(24, 1, 28, 28, seed=3)
    x[:8] = (x[:8] > 0.7).float()  # MNIST-like: mostly flat background, fixed points early
    if kind == "swrd":
        q = SlidingWindowRandDisc(s, k, sigma, sigma, beta=beta, iters=iters)
    elif kind == "prd":
        q = PatchRandDisc(s, k, sigma, sigma, iters=iters)
    else:
        q = RandDisc(k, sigma, sigma, iters=iters)
    for seed in (0, 1):
        expected = _reference_quantize(x, kind, s, k, sigma, sigma, beta, iters, gen(seed))
        assert torch.equal(q(x, generator=gen(seed)), expected)
    # With autograd on, the same values (the combination runs out of place).
    xg = x[:6].clone().requires_grad_(True)
    expected = _reference_quantize(x[:6], kind, s, k, sigma, sigma, beta, iters, gen(4))
    assert torch.equal(q(xg, generator=gen(4)).detach(), expected)
