"""Randomized vector quantization of the input: RandDisc, pRD and swRD (paper 003).

Three preprocessing defenses that replace an image by a randomized quantized version of it
before the classifier sees it (paper 003, Dong & Mao 2023, "Adversarial Defenses via Vector
Quantization", built on Zhang & Liang 2019, "Randomized Discretization"):

- :class:`RandDisc` quantizes every pixel (a vector of ``C`` channel values) on its own;
- :class:`PatchRandDisc` (pRD, Sec. 3.1) quantizes non-overlapping ``s x s`` patches
  (vectors of ``C s^2`` values), zero-padding the image to a multiple of ``s``;
- :class:`SlidingWindowRandDisc` (swRD, Sec. 3.2) quantizes every ``s x s`` window at stride
  one, then gives each pixel the softmax-weighted mean of its reconstructions over the windows
  that cover it (Eq. 2-4).

All three run the same three steps on a set of points (pixels, patches or windows) per image:
Gaussian noise of standard deviation ``sigma`` is added to the points, the noisy points are
clustered into ``k`` centres (k-means++ initialisation, then a fixed number of Lloyd
iterations), and every point, after *fresh* Gaussian noise of standard deviation ``tau``, is
replaced by its nearest centre (Eq. 1). ``sigma`` and ``tau`` are in ``[0, 1]`` image units
(the paper's MNIST setting ``sigma = tau = 4/255``); ``beta`` of swRD multiplies squared
distances in the same units (the paper's MNIST setting ``beta = 1``).

Implementation notes
--------------------
- **Batched.** The clustering of all images of a batch is one tensor program on the inputs'
  device: k-means++ is a loop over the ``k`` centres (not over images) and every Lloyd
  iteration is a few batched matrix products. There is no per-image Python loop.
- **Randomness, reproducible per image.** ``forward(x, generator=g)`` draws one 62-bit seed
  per image from ``g`` (one ``torch.randint`` call, in batch order; ``g=None`` uses torch's
  global generator). A generator seeded with an image's seed then draws, in this order, the
  image's ``sigma`` noise, its ``k`` k-means++ uniforms and its ``tau`` noise (a short Python
  loop over the images that only fills noise buffers; the clustering itself is batched). So an
  image's draws depend only on its seed: quantizing a data set in batches of any size with one
  generator gives the same images as quantizing it in one batch, and an image gives the same
  output at any position once its seed is fixed. On the CPU generator one ``randint`` call of
  ``n`` values equals ``n`` calls of one value (tested), which is what makes the batch size
  irrelevant. (A counter-based hash in tensor ops was tried first: device-independent, but
  three times slower than torch's own generator on a CPU.)
- **Empty clusters** keep their previous centre (scikit-learn would move them to a far point;
  the tests compare with scikit-learn on inputs where no cluster empties).
- **Output range.** Centres of noisy points can leave ``[0, 1]`` by a few ``sigma``; the output
  is clamped to ``[0, 1]`` so the classifier sees a valid image.
- **Gradients.** The forward pass is left differentiable where it is (centres are means of
  their members, swRD's weights are smooth in the distances); the assignments are not. A
  "naive" attack therefore differentiates the real function, and an adaptive one wraps the
  quantizer in BPDA (identity backward) plus EOT (Athalye et al. 2018).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_images, check_int, check_positive
from ..errors import InputError

__all__ = [
    "SPECS",
    "PatchRandDisc",
    "RandDisc",
    "SlidingWindowRandDisc",
    "draw_seeds",
    "from_spec",
    "kmeans",
    "kmeans_plus_plus",
    "draw_noise",
]

# ----------------------------------------------------------------------------------------------
# Per-image random draws
# ----------------------------------------------------------------------------------------------


def draw_seeds(batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One 62-bit seed per image, drawn from ``generator`` (torch's global generator if None).

    On the CPU generator, drawing ``n`` seeds at once equals drawing them one by one, so the
    seed an image gets does not depend on how a data set is cut into batches.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=gen_device, dtype=torch.int64)
    return seeds.to(device)


def draw_noise(
    seeds: torch.Tensor, n: int, d: int, k: int, sigma: bool, tau: bool, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Every random number the quantization of each image needs, from that image's seed alone.

    A generator on ``device`` seeded with ``seeds[i]`` draws, in this order: ``n d`` standard
    normals (the ``sigma`` noise, if ``sigma``), ``k`` uniforms in [0, 1) (k-means++), ``n d``
    standard normals (the ``tau`` noise, if ``tau``). Returns ``(B, n, d)`` or None, ``(B, k)``,
    ``(B, n, d)`` or None.
    """
    b = seeds.shape[0]
    sig = torch.empty(b, n * d, dtype=dtype, device=device) if sigma else None
    uni = torch.empty(b, k, dtype=dtype, device=device)
    tn = torch.empty(b, n * d, dtype=dtype, device=device) if tau else None
    gen = torch.Generator(device=device)
    reseed = gen.manual_seed
    # Tensor.normal_ / uniform_ on a row draw what torch.randn / torch.rand(out=row) draw.
    for i, seed in enumerate(seeds.tolist()):
        reseed(seed)
        if sig is not None:
            sig[i].normal_(generator=gen)
        uni[i].uniform_(generator=gen)
        if tn is not None:
            tn[i].normal_(generator=gen)
    shape = (b, n, d)
    return (sig.view(shape) if sig is not None else None), uni, (tn.view(shape) if tn is not None else None)


# ----------------------------------------------------------------------------------------------
# Batched k-means
# ----------------------------------------------------------------------------------------------


def _first_argmin(dist: torch.Tensor) -> torch.Tensor:
    """``dist.argmin(-1)`` (first index of the minimum) for a few columns, by comparisons.

    ``argmin`` over a short last dimension is a slow inner reduction on a CPU; a chain of
    ``k - 1`` element-wise comparisons gives the same indices (ties keep the lower index).
    """
    k = dist.shape[-1]
    if k == 2:
        return (dist[..., 1] < dist[..., 0]).long()
    if k == 1 or k > 4:
        return dist.argmin(-1)
    best = dist[..., 0]
    label = torch.zeros(best.shape, dtype=torch.int64, device=dist.device)
    for j in range(1, k):
        column = dist[..., j]
        closer = column < best
        label.masked_fill_(closer, j)
        if j < k - 1:
            best = torch.where(closer, column, best)
    return label


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre ``(B, N)`` for ``(B, N, D)`` points and ``(B, k, D)`` centres.

    Small ``k D``: exact differences (``torch.cdist`` without the matrix-product shortcut, the
    fastest on a CPU here); larger: ``||p||^2 - 2 p.c + ||c||^2`` with one batched product.
    """
    if centres.shape[1] * centres.shape[2] <= 64:
        return _first_argmin(torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist"))
    pn = (points * points).sum(-1, keepdim=True)
    cn = (centres * centres).sum(-1).unsqueeze(1)
    return (pn - 2.0 * torch.bmm(points, centres.transpose(1, 2)) + cn).argmin(-1)


def kmeans_plus_plus(points: torch.Tensor, k: int, uniforms: torch.Tensor) -> torch.Tensor:
    """k-means++ initial centres (Arthur & Vassilvitskii 2007), batched over images.

    Parameters
    ----------
    points : Tensor, shape (B, N, D)
    k : int
        Number of centres.
    uniforms : Tensor, shape (B, k)
        Uniform numbers in (0, 1): the first centre is point ``floor(u_0 N)``; centre ``j`` is
        drawn with probability proportional to the squared distance to the nearest centre
        chosen so far, by inverting the cumulative distribution at ``u_j``. When all those
        distances are zero (fewer distinct points than ``k``) the choice is uniform.

    Returns
    -------
    Tensor, shape (B, k, D)
    """
    b, n, d = points.shape
    batch = torch.arange(b, device=points.device)
    u = uniforms.to(points.dtype)
    first = (u[:, 0] * n).long().clamp_(max=n - 1)
    centres = [points[batch, first]]
    dist = ((points - centres[0].unsqueeze(1)) ** 2).sum(-1)  # (B, N)
    for j in range(1, k):
        cum = torch.cumsum(dist, dim=1)
        total = cum[:, -1]
        target = (u[:, j] * total).unsqueeze(1)
        by_weight = torch.searchsorted(cum, target, right=True).squeeze(1).clamp_(max=n - 1)
        uniform = (u[:, j] * n).long().clamp_(max=n - 1)
        idx = torch.where(total > 0, by_weight, uniform)
        c = points[batch, idx]
        centres.append(c)
        if j < k - 1:  # the distances after the last centre are not needed
            dist = torch.minimum(dist, ((points - c.unsqueeze(1)) ** 2).sum(-1))
    return torch.stack(centres, dim=1)


def _counts(labels: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Members of each of the ``k`` clusters, ``(B, k)``, from ``(B, N)`` labels (exact)."""
    if k == 2:
        ones = labels.sum(1)
        return torch.stack([labels.shape[1] - ones, ones], dim=1).to(dtype)
    if k <= 4:
        return torch.stack([(labels == j).sum(1) for j in range(k)], dim=1).to(dtype)
    b = labels.shape[0]
    offset = torch.arange(b, device=labels.device).unsqueeze(1) * k
    return torch.bincount((labels + offset).flatten(), minlength=b * k).view(b, k).to(dtype)


def _centre_update(points: torch.Tensor, labels: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's points (``old`` where a cluster is empty).

    The sums are one ``scatter_add`` (members added in point order, differentiable); the
    counts are exact integers however they are computed.
    """
    b, n, d = points.shape
    k = old.shape[1]
    sums = points.new_zeros(b, k, d).scatter_add(1, labels.unsqueeze(-1).expand(b, n, d), points)
    counts = _counts(labels, k, points.dtype).unsqueeze(-1)
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), old)


def kmeans(points: torch.Tensor, init: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm from given initial centres, batched over images.

    Runs at most ``iters`` iterations (assign every point to its nearest centre, move every
    centre to the mean of its points; an empty cluster keeps its centre). An image whose
    assignments no longer change is at a fixed point and leaves the loop (its result is what
    more iterations would give); the others go on, so the work shrinks as images converge.
    Gradients flow from the returned centres to the points through the last mean (the
    assignments are treated as constants).

    Parameters
    ----------
    points : Tensor, shape (B, N, D)
    init : Tensor, shape (B, k, D)
    iters : int
        Maximum number of Lloyd iterations (``0`` returns ``init``).

    Returns
    -------
    centres : Tensor, shape (B, k, D)
    labels : Tensor, shape (B, N)
        Nearest-centre index of every point for the returned centres.
    """
    with torch.no_grad():
        data = points.detach()
        labels = _nearest(data, init)
        centres = init
        # What produced the returned centres (the last update's labels and previous centres),
        # kept only for the autograd recomputation below.
        keep_prev = iters > 0 and points.requires_grad
        prev, prev_labels = init, labels
        # The working set: images not known to be at a fixed point, compacted only when enough
        # of them have stopped (an image at a fixed point that stays in it recomputes the same
        # centres and labels bit for bit, so carrying it along changes nothing but the work).
        idx, d_a, l_a, c_a = None, data, labels, centres
        for it in range(iters):
            new_c = _centre_update(d_a, l_a, c_a)
            new_l = _nearest(d_a, new_c)
            moved = (new_l != l_a).any(1)
            n_moved = int(moved.sum())
            if n_moved == 0 or it == iters - 1 or 4 * n_moved <= 3 * moved.numel():
                # Store the working set's results; keep going with the images that moved.
                if idx is None:
                    if keep_prev:
                        prev, prev_labels = c_a, l_a
                    centres, labels = new_c, new_l
                    if n_moved:
                        centres, labels = centres.clone(), labels.clone()
                        if keep_prev:
                            prev, prev_labels = prev.clone(), prev_labels.clone()
                else:
                    if keep_prev:
                        prev[idx], prev_labels[idx] = c_a, l_a
                    centres[idx], labels[idx] = new_c, new_l
                if n_moved == 0 or it == iters - 1:
                    break
                idx = moved.nonzero().squeeze(1) if idx is None else idx[moved]
                d_a, l_a, c_a = d_a[moved], new_l[moved], new_c[moved]
            else:
                l_a, c_a = new_l, new_c
    if keep_prev:
        # Recompute the last update with autograd (same ops, same values).
        centres = _centre_update(points, prev_labels, prev)
    return (centres if iters > 0 else centres.clone()), labels


# ----------------------------------------------------------------------------------------------
# The shared quantization step
# ----------------------------------------------------------------------------------------------


def _codebook(
    points: torch.Tensor, k: int, sigma: float, iters: int, seeds: torch.Tensor, tau: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The random codebook ``C`` of paper 003 (Sec. 3.3, ``Q_{C|X}``): k-means of the noisy points.

    Returns the centres ``(B, k, D)`` and, when ``tau > 0``, the ``tau`` noise of the same draws.
    """
    b, n, d = points.shape
    points = points.contiguous()
    sig_noise, uni, tau_noise = draw_noise(seeds, n, d, k, sigma > 0, tau > 0, points.dtype, points.device)
    # (sigma * noise) + points, computed in the noise buffer.
    noisy = sig_noise.mul_(sigma).add_(points) if sig_noise is not None else points
    init = kmeans_plus_plus(noisy.detach(), k, uni)
    centres, _ = kmeans(noisy, init, iters)
    return centres, tau_noise


def _quantize_points(
    points: torch.Tensor, k: int, sigma: float, tau: float, iters: int, seeds: torch.Tensor
) -> torch.Tensor:
    """Eq. 1 of paper 003 on ``(B, N, D)`` points: noisy k-means codebook, then nearest centre."""
    b, n, d = points.shape
    centres, tau_noise = _codebook(points, k, sigma, iters, seeds, tau)
    probe = tau_noise.mul_(tau).add_(points.detach()) if tau_noise is not None else points
    with torch.no_grad():
        labels = _nearest(probe.detach(), centres.detach())
    return torch.gather(centres, 1, labels.unsqueeze(-1).expand(b, n, d))


class _RandomQuantizer(nn.Module, abc.ABC):
    """Shared parameter checks, input checks and seeding of the three quantizers.

    Subclasses say which vectors are clustered (:meth:`points`: pixels, patches or windows).
    ``randomized`` tells :func:`quantadv.defenses.adaptive` that EOT has draws to average.
    """

    randomized = True

    def __init__(self, k: int, sigma: float, tau: float, iters: int) -> None:
        super().__init__()
        self.k = check_int(k, "k", minimum=1)
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        self.tau = check_positive(tau, "tau", allow_zero=True)
        self.iters = check_int(iters, "iters", minimum=0)
        if self.sigma > 1 or self.tau > 1:
            raise InputError(
                f"sigma and tau are in [0, 1] image units (got sigma={sigma!r}, tau={tau!r}); "
                "for a noise level of 4 on the 0..255 scale pass 4/255"
            )

    def _prepare(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        check_images(x.detach(), "x")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return draw_seeds(x.shape[0], generator, x.device)

    @abc.abstractmethod
    def points(self, x: torch.Tensor) -> torch.Tensor:
        """The vectors this quantizer clusters, shape ``(B, N, D)`` (pixels, patches or windows)."""

    def codebook(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random codebook ``C`` (cluster centres) of each image, shape ``(B, k, D)``.

        With the same generator state, these are exactly the centres ``forward`` uses (paper 003,
        Sec. 3.3: ``Q_{C|X}``); certification (:mod:`quantadv.defenses.certify`) samples them.
        """
        seeds = self._prepare(x, generator)
        return _codebook(self.points(x), self.k, self.sigma, self.iters, seeds)[0]

    def extra_repr(self) -> str:
        return f"k={self.k}, sigma={self.sigma:g}, tau={self.tau:g}, iters={self.iters}"


class RandDisc(_RandomQuantizer):
    """Randomized discretization per pixel (Zhang & Liang 2019; the ``s = 1`` case of paper 003).

    Every pixel (a vector of ``C`` channel values) gets Gaussian noise of standard deviation
    ``sigma``; the noisy pixels of the image are clustered into ``k`` centres (k-means++ then
    ``iters`` Lloyd iterations); every pixel, with fresh noise of standard deviation ``tau``,
    is replaced by its nearest centre (paper 003, Eq. 1 with patches of one pixel).

    Parameters
    ----------
    k : int
        Number of centres (the paper's MNIST setting: 2).
    sigma, tau : float
        Noise standard deviations in [0, 1] image units (paper: 4/255 on MNIST).
    iters : int, default 10
        Maximum number of Lloyd iterations (stops earlier at a fixed point).

    Call as ``quantizer(x, generator=None)`` with ``x`` a float NCHW batch in [0, 1]; returns a
    tensor of the same shape, dtype and device, values in [0, 1].
    """

    def __init__(self, k: int, sigma: float, tau: float, iters: int = 10) -> None:
        super().__init__(k, sigma, tau, iters)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, h * w).transpose(1, 2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seeds = self._prepare(x, generator)
        b, c, h, w = x.shape
        q = _quantize_points(self.points(x), self.k, self.sigma, self.tau, self.iters, seeds)
        return q.transpose(1, 2).reshape(b, c, h, w).clamp(0.0, 1.0)


class PatchRandDisc(_RandomQuantizer):
    """pRD: randomized vector quantization of non-overlapping ``s x s`` patches (paper 003, Sec. 3.1).

    The image is zero-padded at the bottom and right to multiples of ``s`` and cut into
    ``s x s`` patches (vectors of ``C s^2`` values); noise ``sigma`` is added to every patch,
    the noisy patches are clustered into ``k`` centres, and every patch plus fresh noise ``tau``
    is replaced by its nearest centre (Eq. 1). The padding is cropped off the output. With
    ``s = 1`` this is :class:`RandDisc` (same draws for the same seed).

    Parameters
    ----------
    s : int
        Patch side (paper MNIST: 2).
    k : int
        Number of centres (paper MNIST: 2).
    sigma, tau : float
        Noise standard deviations in [0, 1] image units (paper MNIST: 4/255).
    iters : int, default 10
        Maximum number of Lloyd iterations.
    """

    def __init__(self, s: int, k: int, sigma: float, tau: float, iters: int = 10) -> None:
        super().__init__(k, sigma, tau, iters)
        self.s = check_int(s, "s", minimum=1)

    def points(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.s
        ph, pw = -h % s, -w % s
        xp = F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x
        return F.unfold(xp, kernel_size=s, stride=s).transpose(1, 2)  # (B, N, C s^2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        seeds = self._prepare(x, generator)
        b, c, h, w = x.shape
        s = self.s
        hp, wp = h + (-h % s), w + (-w % s)
        q = _quantize_points(self.points(x), self.k, self.sigma, self.tau, self.iters, seeds)
        out = F.fold(q.transpose(1, 2), output_size=(hp, wp), kernel_size=s, stride=s)
        return out[:, :, :h, :w].clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"s={self.s}, " + super().extra_repr()


class SlidingWindowRandDisc(_RandomQuantizer):
    """swRD: randomized vector quantization of all ``s x s`` windows (paper 003, Sec. 3.2, Eq. 2-4).

    Every ``s x s`` window at stride one (``(H - s + 1)(W - s + 1)`` windows, no padding) is a
    point; noise ``sigma`` is added, the noisy windows are clustered into ``k`` centres, and
    every window ``p`` plus fresh noise ``tau`` is reconstructed as its nearest centre ``p_hat``
    (Eq. 1). Each pixel ``i`` then becomes the weighted mean of its reconstructions over the
    windows ``P(i)`` covering it, with weights ``softmax_p(-beta ||p - p_hat||^2)`` over ``P(i)``
    (Eq. 2-4; ``p`` is the window of the input image). ``beta = inf`` gives every pixel the
    reconstruction from its closest window (ties averaged). With ``s = 1`` this is
    :class:`RandDisc` (same draws for the same seed).

    Parameters
    ----------
    s : int
        Window side (paper MNIST: 2); must not exceed the image's height or width.
    k : int
        Number of centres (paper MNIST: 2).
    sigma, tau : float
        Noise standard deviations in [0, 1] image units (paper MNIST: 4/255).
    beta : float
        Inverse temperature on squared distances in [0, 1] image units (paper MNIST: 1), or
        ``math.inf``.
    iters : int, default 10
        Maximum number of Lloyd iterations.
    """

    def __init__(self, s: int, k: int, sigma: float, tau: float, beta: float = 1.0, iters: int = 10) -> None:
        super().__init__(k, sigma, tau, iters)
        self.s = check_int(s, "s", minimum=1)
        self.beta = check_positive(beta, "beta", allow_zero=True)

    def reconstructions(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows' reconstructions and their squared distances to the input windows.

        Returns ``(p_hat, dist)`` of shapes ``(B, C s^2, L)`` (in :func:`torch.nn.functional.unfold`
        layout, ``L`` windows) and ``(B, L)``: the ingredients of Eq. 2-4. ``forward`` with the same
        generator state combines exactly these.
        """
        seeds = self._prepare(x, generator)
        windows = self.points(x).transpose(1, 2)  # (B, C s^2, L)
        q = _quantize_points(windows.transpose(1, 2), self.k, self.sigma, self.tau, self.iters, seeds)
        p_hat = q.transpose(1, 2)
        dist = ((windows - p_hat) ** 2).sum(1)
        return p_hat, dist

    def points(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.s
        if s > h or s > w:
            raise InputError(f"swRD window side s={s} exceeds the image size {h}x{w}; use s <= {min(h, w)}")
        return F.unfold(x, kernel_size=s).transpose(1, 2)  # (B, L, C s^2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p_hat, dist = self.reconstructions(x, generator)
        b, c, h, w = x.shape
        s = self.s
        lh, lw = h - s + 1, w - s + 1
        # Per-pixel softmax over the covering windows, stabilised by the per-pixel maximum score.
        # Window (y, x) covers pixel (y + a, x + b) at offset (a, b) of its s x s grid: every
        # sum over the covering windows is s^2 shifted slice additions, in offset order.
        score = (-dist if math.isinf(self.beta) else -self.beta * dist).view(b, lh, lw)
        offsets = [(a, o) for a in range(s) for o in range(s)]
        with torch.no_grad():
            pixel_max = score.new_full((b, h, w), -math.inf)
            for a, o in offsets:
                region = pixel_max[:, a : a + lh, o : o + lw]
                torch.maximum(region, score.detach(), out=region)
            # (B, s^2, L): the maximum at each pixel of each window, offsets in unfold order.
            max_unf = torch.stack([pixel_max[:, a : a + lh, o : o + lw] for a, o in offsets], 1)
        max_unf = max_unf.view(b, s * s, -1)
        score = score.view(b, 1, -1)
        if math.isinf(self.beta):
            weight = (score >= max_unf).to(x.dtype)
        else:
            weight = torch.exp(score - max_unf)  # (B, s^2, L), <= 1, = 1 at the argmax
        contrib = (p_hat.view(b, c, s * s, -1) * weight.unsqueeze(1)).view(b, c, s * s, lh, lw)
        weight = weight.view(b, s * s, lh, lw)
        num = x.new_zeros(b, c, h, w)
        den = x.new_zeros(b, h, w)
        if x.requires_grad or p_hat.requires_grad:  # out-of-place, for autograd
            for i, (a, o) in enumerate(offsets):
                num = num + F.pad(contrib[:, :, i], (o, s - 1 - o, a, s - 1 - a))
                den = den + F.pad(weight[:, i], (o, s - 1 - o, a, s - 1 - a))
        else:
            for i, (a, o) in enumerate(offsets):
                num[:, :, a : a + lh, o : o + lw] += contrib[:, :, i]
                den[:, a : a + lh, o : o + lw] += weight[:, i]
        return (num / den.unsqueeze(1)).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"s={self.s}, " + super().extra_repr() + f", beta={self.beta:g}"


# ----------------------------------------------------------------------------------------------
# Spec strings
# ----------------------------------------------------------------------------------------------

#: Defense spec names this module provides, for the general ``--defense NAME:k=v,...`` parser.
SPECS: dict[str, type[nn.Module]] = {
    "randdisc": RandDisc,
    "prd": PatchRandDisc,
    "swrd": SlidingWindowRandDisc,
}

_PARAM_TYPES = {"s": int, "k": int, "iters": int, "sigma": float, "tau": float, "beta": float}


def _parse_value(name: str, key: str, value: object) -> object:
    kind = _PARAM_TYPES.get(key)
    if kind is None or not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if kind is int:
            return int(text)
        if "/" in text:  # "4/255"
            num, den = text.split("/", 1)
            return float(num) / float(den)
        if "*" in text:  # "0.5*2"
            a, b = text.split("*", 1)
            return float(a) * float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"{name}: parameter {key}={value!r} is not a valid {kind.__name__}") from None


def from_spec(name: str, params: dict[str, object]) -> nn.Module:
    """Build one of this module's quantizers from a spec name and its parameters.

    ``from_spec("swrd", {"s": "2", "k": "2", "sigma": "4/255", "tau": "4/255", "beta": "1"})``;
    values may be strings (as parsed from ``swrd:s=2,k=2,...``; ``4/255`` is accepted) or numbers.
    Parameters: ``randdisc``: k, sigma, tau, iters; ``prd``: s, k, sigma, tau, iters; ``swrd``:
    s, k, sigma, tau, beta, iters. ``sigma`` and ``tau`` default to 0, ``beta`` to 1.
    """
    key = name.strip().lower()
    if key not in SPECS:
        raise InputError(f"unknown vector-quantization defense {name!r}; choose one of {', '.join(SPECS)}")
    cls = SPECS[key]
    allowed = {"k", "sigma", "tau", "iters"} | ({"s"} if key != "randdisc" else set()) | (
        {"beta"} if key == "swrd" else set()
    )
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InputError(f"{key}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    required = {"k"} | ({"s"} if key != "randdisc" else set())
    missing = sorted(required - set(params))
    if missing:
        raise InputError(f"{key}: missing parameter(s) {', '.join(missing)} (e.g. {key}:{_example(key)})")
    kwargs = {p: _parse_value(key, p, v) for p, v in params.items()}
    kwargs.setdefault("sigma", 0.0)
    kwargs.setdefault("tau", 0.0)
    return cls(**kwargs)


def _example(key: str) -> str:
    return {
        "randdisc": "k=2,sigma=4/255,tau=4/255",
        "prd": "s=2,k=2,sigma=4/255,tau=4/255",
        "swrd": "s=2,k=2,sigma=4/255,tau=4/255,beta=1",
    }[key]
