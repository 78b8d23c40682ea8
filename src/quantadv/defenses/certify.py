"""Certified accuracy of randomized quantization defenses (paper 003, Theorem 1 and Eq. 6-9).

Theorem 1 (Zhang & Liang 2019, restated by paper 003): classify ``t`` independent quantizations
of an input and take the most frequent label. If the quantized clean image is classified
correctly and

    delta = margin^2 / 2 - KL(Q_{X^|X=x} || Q_{X^|X=x'})  >= 0        (Eq. 5)

then the vote on ``x'`` is correct with probability at least ``1 - m exp(-2 t delta^2)``
(``m`` classes). ``margin`` is the frequency of the true label minus the largest frequency of
a wrong label among the quantized clean images' predictions, estimated here from ``samples``
draws (optionally replaced by a Hoeffding lower confidence bound, ``alpha=``).

The KL term is bounded by the chain rule (Eq. 6-8): the KL between the distributions of the
codebooks ``C`` (cluster centres) plus the expected KL of the quantized points given the same
codebook. Two ways to get a number are offered:

``kl="paper"`` (Sec. 4.2, what the paper plots in Fig. 6)
    For each image and each ``eps``, ``x'`` is an adversarial image at that radius (by default
    PGD-40, step ``eps/20``, through BPDA (identity backward through the quantizer) with EOT over
    10 draws). ``codebooks`` codebooks are drawn for ``x`` and for ``x'``, each set of centres is
    turned into a vector (centres sorted by ascending L2 norm, concatenated), a Gaussian mixture
    with ``gmm_components`` components is fitted to each sample set (scikit-learn), and the KL
    of the two fits is estimated by Monte Carlo with ``mc_samples`` draws from the first (Eq. 9).
    For per-pixel RandDisc on one-channel images the second term is added in closed form
    (categorical distributions over the codebook's Voronoi intervals, Gaussian CDFs, averaged
    over sampled codebooks); for pRD and swRD it is left out, as in the paper (which measured it
    at about 1e-5). **This is an estimate at one attack point, not a guarantee over the ball**:
    a different ``x'`` in the same ball can have a larger KL.

``kl="bound"`` (a guarantee over the whole L-inf ball, closed form)
    By data processing, the codebook KL is at most the KL of the noisy points,
    ``sum_points ||p - p'||^2 / (2 sigma^2)``, maximised over the ball intersected with
    ``[0, 1]^n`` (each pixel counted once per point that contains it: once for RandDisc and
    pRD, up to ``s^2`` times for swRD). The second term is, for one-channel RandDisc, the
    closed-form categorical KL maximised per pixel over a grid of 33 values of the pixel's
    interval (averaged over ``codebooks`` sampled codebooks), and otherwise the data-processing
    bound through the ``tau`` noise, ``sum ||p - p'||^2 / (2 tau^2)``. This bound is valid for
    every ``x'`` in the ball but very loose for images: it certifies only tiny radii.

Images are certified at ``eps`` when the majority vote on the clean image is correct, the
margin is positive and ``delta >= 0``; so certified accuracy never exceeds the clean (vote)
accuracy. scikit-learn (the ``defenses`` extra) is needed for ``kl="paper"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._validate import check_images, check_int, check_labels, check_positive
from ..errors import InputError

__all__ = [
    "Certificate",
    "certify",
    "codebook_vectors",
    "gmm_kl",
    "kl_bound",
    "margins",
    "plot_certified",
    "randdisc_pixel_kl",
    "vote_counts",
]

KL_METHODS = ("paper", "bound")
DEFAULT_ATTACK = "PGD-40 step eps/20, BPDA + EOT m=10"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _split(model) -> tuple[nn.Module, nn.Module]:
    if isinstance(model, tuple | list) and len(model) == 2:
        return model[0], model[1]
    pre, clf = getattr(model, "preprocess", None), getattr(model, "classifier", None)
    if pre is None or clf is None:
        raise InputError(
            "certify needs a defended model: a quantadv.defenses.Defended(preprocess, classifier) "
            "or a (preprocess, classifier) pair"
        )
    return pre, clf


def _quantize(pre: nn.Module, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    try:
        return pre(x, generator=generator)
    except TypeError:  # a preprocessing module without a generator keyword
        return pre(x)


def _check_quantizer(pre: nn.Module) -> None:
    for attr in ("codebook", "points", "sigma", "tau", "k"):
        if not hasattr(pre, attr):
            raise InputError(
                f"certification needs a RandDisc, PatchRandDisc or SlidingWindowRandDisc preprocess, "
                f"got {type(pre).__name__} (no .{attr})"
            )
    if pre.sigma <= 0:
        raise InputError(
            "certification needs sigma > 0: without noise before clustering the codebook is deterministic "
            "and its KL between x and x' is 0 or infinite"
        )


def vote_counts(
    model,
    images: torch.Tensor,
    samples: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Class counts of the predictions on ``samples`` quantizations of each image, ``(N, classes)``.

    Image ``i``'s draws are rows ``i * samples .. (i + 1) * samples - 1`` of one long sequence of
    per-image seeds from ``generator``, so the counts do not depend on ``batch_size``.
    """
    pre, clf = _split(model)
    samples = check_int(samples, "samples")
    counts = None
    per = max(1, batch_size // samples)
    with torch.no_grad():
        for start in range(0, images.shape[0], per):
            chunk = images[start : start + per]
            rep = chunk.repeat_interleave(samples, dim=0)
            pred = clf(_quantize(pre, rep, generator)).argmax(1).view(chunk.shape[0], samples)
            if counts is None:
                classes = clf(chunk[:1]).shape[1]
                counts = torch.zeros(images.shape[0], classes, dtype=torch.long, device=images.device)
            counts[start : start + chunk.shape[0]] = torch.nn.functional.one_hot(pred, counts.shape[1]).sum(1)
    return counts


def margins(counts: torch.Tensor, labels: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
    """Theorem 1's margin from vote counts: frequency of the label minus the top wrong frequency.

    With ``alpha`` the margin is a one-sided lower confidence bound at level ``1 - alpha``
    (Hoeffding on both frequencies, ``alpha/2`` each): ``margin - 2 sqrt(log(2/alpha) / (2 t))``.
    """
    t = counts.sum(1, keepdim=True).clamp_min(1).to(torch.float64)
    freq = counts.to(torch.float64) / t
    true = freq.gather(1, labels.view(-1, 1)).squeeze(1)
    wrong = freq.scatter(1, labels.view(-1, 1), -1.0).max(1).values
    m = true - wrong
    if alpha is not None:
        m = m - 2.0 * torch.sqrt(math.log(2.0 / alpha) / (2.0 * t.squeeze(1)))
    return m


def codebook_vectors(
    quantizer: nn.Module,
    image: torch.Tensor,
    n: int,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 1000,
) -> np.ndarray:
    """``n`` draws of an image's codebook as vectors (Sec. 4.2): centres sorted by L2 norm, concatenated.

    ``image`` is one image, shape ``(1, C, H, W)`` or ``(C, H, W)``; returns ``(n, k D)`` float64.
    """
    if image.dim() == 3:
        image = image.unsqueeze(0)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            centres = quantizer.codebook(image.expand(m, *image.shape[1:]), generator=generator)
            order = centres.norm(dim=2).argsort(dim=1)
            centres = torch.gather(centres, 1, order.unsqueeze(-1).expand_as(centres))
            out.append(centres.reshape(m, -1).double().cpu().numpy())
    return np.concatenate(out)


def gmm_kl(
    p_samples: np.ndarray,
    q_samples: np.ndarray,
    *,
    components: int = 2,
    mc_samples: int = 100_000,
    seed: int = 0,
    standardize: bool = True,
) -> float:
    """Monte Carlo KL(P || Q) between Gaussian mixtures fitted to two sample sets (Eq. 9 of paper 003).

    Both sets are first mapped by the same affine standardisation (mean and standard deviation of
    ``p_samples`` per coordinate; KL is invariant to it) so the fits' covariance regulariser
    (scikit-learn's ``reg_covar``) is negligible. Then GMMs with ``components`` full-covariance
    components are fitted to each set and ``E_{u ~ P}[log P(u) - log Q(u)]`` is averaged over
    ``mc_samples`` draws from the fit of P. The estimate can be slightly negative (sampling
    noise); callers that need a KL clamp it at 0.
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    p = np.asarray(p_samples, dtype=np.float64)
    q = np.asarray(q_samples, dtype=np.float64)
    if p.ndim == 1:
        p, q = p[:, None], q[:, None]
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise InputError(f"p_samples and q_samples must be (n, d) arrays of the same d, got {p.shape} and {q.shape}")
    if standardize:
        mu, sd = p.mean(0), p.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        p, q = (p - mu) / sd, (q - mu) / sd
    # Small fits: one BLAS/OpenMP thread is faster and does not oversubscribe a shared machine.
    with threadpool_limits(1):
        fp = GaussianMixture(components, covariance_type="full", random_state=seed).fit(p)
        fq = GaussianMixture(components, covariance_type="full", random_state=seed + 1).fit(q)
        fp.random_state = seed + 2  # sample() draws from the fitted model's random_state
        u, _ = fp.sample(mc_samples)
        return float(np.mean(fp.score_samples(u) - fq.score_samples(u)))


def _categorical_probs(x: torch.Tensor, centres: torch.Tensor, tau: float) -> torch.Tensor:
    """Log-probabilities that ``x + N(0, tau^2)`` is nearest to each sorted 1-D centre.

    ``x``: (..., P) pixel values; ``centres``: (..., k) sorted; returns (..., P, k).
    """
    bounds = (centres[..., 1:] + centres[..., :-1]) / 2  # (..., k-1)
    lo = torch.cat([torch.full_like(centres[..., :1], -math.inf), bounds], -1).unsqueeze(-2)
    hi = torch.cat([bounds, torch.full_like(centres[..., :1], math.inf)], -1).unsqueeze(-2)
    z_hi = (hi - x.unsqueeze(-1)) / tau
    z_lo = (lo - x.unsqueeze(-1)) / tau
    # log(Phi(z_hi) - Phi(z_lo)) computed stably in both tails.
    upper = z_lo > 0  # interval entirely above x: use the upper tail by symmetry
    a = torch.where(upper, -z_hi, z_lo)
    b = torch.where(upper, -z_lo, z_hi)
    log_b = torch.special.log_ndtr(b)
    d = (torch.special.log_ndtr(a) - log_b).clamp(max=0.0)  # log(Phi(a) / Phi(b)) <= 0
    # log(1 - exp(d)) accurately on both sides of -log 2 (Maechler 2012); -inf for an empty interval.
    log1mexp = torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    return log_b + log1mexp


def randdisc_pixel_kl(x: torch.Tensor, x_adv: torch.Tensor, centres: torch.Tensor, tau: float) -> torch.Tensor:
    """Closed-form KL of one-channel RandDisc's output given a codebook (second term of Eq. 6).

    Given sorted 1-D centres ``c_1 < ... < c_k``, pixel ``x_i`` becomes ``c_j`` with probability
    ``Phi((b_j - x_i)/tau) - Phi((b_{j-1} - x_i)/tau)`` (``b_j`` the midpoints); pixels are
    independent given the codebook, so the KL of the quantized images is the sum over pixels of
    the categorical KLs. ``x``, ``x_adv``: (..., P) pixel values; ``centres``: (..., k), any order.
    Returns (...,) float64.
    """
    c = centres.double().sort(-1).values
    lp = _categorical_probs(x.double(), c, tau)
    lq = _categorical_probs(x_adv.double(), c, tau)
    kl = (lp.exp() * (lp - lq)).nan_to_num(nan=0.0, posinf=math.inf)
    return kl.sum(-1).clamp_min(0.0).sum(-1)


def _coverage(quantizer: nn.Module, shape: tuple[int, ...], device) -> torch.Tensor:
    """How many points (pixels, patches, windows) contain each pixel: ``(1, 1, H, W)``."""
    h, w = shape[-2:]
    s = getattr(quantizer, "s", 1)
    ones = torch.ones(1, 1, h, w, device=device, dtype=torch.float64)
    if type(quantizer).__name__ == "SlidingWindowRandDisc" and s > 1:
        f = torch.nn.functional
        return f.fold(f.unfold(ones, s), (h, w), s)
    return ones


def kl_bound(
    quantizer: nn.Module,
    images: torch.Tensor,
    eps: float,
    *,
    codebooks: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Upper bound on ``KL(Q_{X^|x} || Q_{X^|x'})`` valid for every ``x'`` with ``||x' - x||_inf <= eps``.

    See the module docstring (``kl="bound"``). Returns ``(N,)`` float64 (``inf`` where ``tau = 0``
    and ``eps > 0`` for quantizers without a closed form).
    """
    _check_quantizer(quantizer)
    eps = check_positive(eps, "eps", allow_zero=True)
    x = images.double()
    n = x.shape[0]
    if eps == 0:
        return torch.zeros(n, dtype=torch.float64)
    # Largest feasible change of every pixel inside the ball and [0, 1].
    reach = torch.maximum(torch.clamp(1.0 - x, max=eps), torch.clamp(x, max=eps))
    cover = _coverage(quantizer, x.shape, x.device)
    weighted = (cover * reach**2).flatten(1).sum(1)
    first = weighted / (2.0 * quantizer.sigma**2)
    closed_form = type(quantizer).__name__ == "RandDisc" and x.shape[1] == 1
    if closed_form and quantizer.tau > 0:
        grid = torch.linspace(-1.0, 1.0, 33, dtype=torch.float64, device=x.device)
        second = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            cb = codebook_vectors(quantizer, images[i : i + 1], codebooks, generator=generator)
            c = torch.as_tensor(cb, device=x.device)  # (codebooks, k) sorted by |c| = by value
            px = x[i].flatten()  # (P,)
            cand = (px.unsqueeze(0) + eps * grid.unsqueeze(1)).clamp(0.0, 1.0)  # (33, P)
            kls = []
            for cj in c:
                lp = _categorical_probs(px, cj.sort().values, quantizer.tau)  # (P, k)
                lq = _categorical_probs(cand, cj.sort().values, quantizer.tau)  # (33, P, k)
                per = (lp.exp() * (lp - lq)).nan_to_num(nan=0.0).sum(-1).clamp_min(0.0)  # (33, P)
                kls.append(per.max(0).values.sum())
            second[i] = torch.stack(kls).mean()
    elif quantizer.tau > 0:
        second = weighted / (2.0 * quantizer.tau**2)
    else:
        second = torch.full((n,), math.inf, dtype=torch.float64)
    return (first + second).cpu()


# ----------------------------------------------------------------------------------------------
# The certificate
# ----------------------------------------------------------------------------------------------


@dataclass
class Certificate:
    """Certified accuracy vs eps (Theorem 1 of paper 003) and the per-image numbers behind it.

    ``certified_accuracy[j]`` is the fraction of images certified at ``eps[j]``;
    ``clean_accuracy`` the accuracy of the majority vote over ``samples`` quantizations;
    ``margin`` (N,), ``kl``, ``delta`` and ``certified`` (N, len(eps)) per image;
    ``confidence`` (N, len(eps)) Theorem 1's probability ``1 - m exp(-2 t delta^2)`` for ``t =
    samples`` votes (0 where not certified).
    """

    eps: list[float]
    certified_accuracy: list[float]
    clean_accuracy: float
    margin: torch.Tensor
    kl: torch.Tensor
    delta: torch.Tensor
    certified: torch.Tensor
    confidence: torch.Tensor
    method: str
    samples: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (the per-image arrays as lists)."""
        return {
            "eps": self.eps,
            "certified_accuracy": self.certified_accuracy,
            "clean_accuracy": self.clean_accuracy,
            "method": self.method,
            "samples": self.samples,
            "images": int(self.margin.shape[0]),
            "settings": self.settings,
            "margin": self.margin.tolist(),
            "kl": self.kl.tolist(),
            "certified": self.certified.int().tolist(),
        }

    def save(self, path: str) -> None:
        """Write :meth:`to_dict` as JSON (temporary file, then rename)."""
        import os

        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        os.replace(tmp, path)


def _default_attack(model, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD-40, step eps/20 (paper 003's MNIST setting) through BPDA (identity) with EOT over 10 draws."""
    from ..attacks import pgd

    pre, clf = _split(model)

    class _Bpda(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre, self.clf = pre, clf

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.clf(x + (_quantize(self.pre, x, None) - x).detach())

    return pgd(_Bpda(), images, labels, eps=eps, step=eps / 20, steps=40, eot=10)


def certify(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: Sequence[float],
    *,
    samples: int = 100,
    kl: str = "paper",
    attack: Callable[..., torch.Tensor] | None = None,
    codebooks: int = 1000,
    gmm_components: int = 2,
    mc_samples: int = 100_000,
    second_term: bool = True,
    alpha: float | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Certificate:
    """Certified accuracy of a randomized-quantization defense vs ``eps`` (paper 003, Theorem 1).

    Parameters
    ----------
    model : Defended or (preprocess, classifier)
        ``preprocess`` a :class:`RandDisc`, :class:`PatchRandDisc` or :class:`SlidingWindowRandDisc`
        with ``sigma > 0``; ``classifier`` returns logits.
    images : float NCHW in [0, 1]; labels : int64 (N,).
    eps : L-inf radii in [0, 1] units.
    samples : int
        ``t``: quantizations per clean image for the margin (and the vote).
    kl : ``"paper"`` or ``"bound"``
        How the KL term is obtained (module docstring).
    attack : callable ``attack(model, images, labels, eps) -> x'``, ``kl="paper"`` only
        The point where the KL is estimated; default PGD-40 (step eps/20) with BPDA and EOT m = 10.
    codebooks : int
        Codebook draws per image (and per adversarial image) for the GMM fits (paper: 10,000);
        with ``kl="bound"``, the codebooks averaged in RandDisc's closed-form second term.
    gmm_components : int
        ``k_gmm`` (paper: 2 on MNIST, 8 on CIFAR-10).
    mc_samples : int
        Monte Carlo draws for Eq. 9 (paper: 100,000).
    second_term : bool
        Add the closed-form second term for one-channel RandDisc (``kl="paper"``).
    alpha : float, optional
        Use a Hoeffding lower confidence bound (level 1 - alpha) on the margin instead of the estimate.
    generator, seed : randomness of the quantizer draws (``generator``) and of the GMM fits (``seed``).
    progress : callable taking a message, optional.

    Returns
    -------
    Certificate
    """
    pre, clf = _split(model)
    _check_quantizer(pre)
    check_images(images, "images")
    labels = check_labels(labels, images.shape[0])
    if kl not in KL_METHODS:
        raise InputError(f"kl must be one of {', '.join(KL_METHODS)}, got {kl!r}")
    eps = [check_positive(e, "eps", allow_zero=True) for e in eps]
    if not eps:
        raise InputError("eps must list at least one radius, e.g. [0, 0.1, 0.2, 0.3]")
    if alpha is not None and not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    samples = check_int(samples, "samples")
    codebooks = check_int(codebooks, "codebooks", minimum=2)
    say = progress or (lambda _msg: None)

    counts = vote_counts((pre, clf), images, samples, generator=generator)
    correct = counts.argmax(1) == labels
    margin = margins(counts, labels, alpha).cpu()
    n, classes = counts.shape
    kls = torch.zeros(n, len(eps), dtype=torch.float64)
    closed_form = type(pre).__name__ == "RandDisc" and images.shape[1] == 1 and pre.tau > 0
    clean_codebooks: list[np.ndarray] = []
    if kl == "paper" and any(e > 0 for e in eps):
        say(f"sampling {codebooks} codebooks per clean image")
        clean_codebooks = [codebook_vectors(pre, images[i], codebooks, generator=generator) for i in range(n)]
    for j, e in enumerate(eps):
        if e == 0:
            continue
        say(f"eps {e:g}: KL ({kl})")
        if kl == "bound":
            kls[:, j] = kl_bound(pre, images, e, codebooks=min(codebooks, 64), generator=generator)
            continue
        x_adv = (attack or _default_attack)((pre, clf), images, labels, e).detach()
        if float((x_adv - images).abs().max()) > e + 1e-6:
            raise InputError(f"the attack returned images outside the eps={e:g} ball")
        for i in range(n):
            cp = clean_codebooks[i]
            cq = codebook_vectors(pre, x_adv[i], codebooks, generator=generator)
            value = max(gmm_kl(cp, cq, components=gmm_components, mc_samples=mc_samples, seed=seed + i), 0.0)
            if second_term and closed_form:
                c = torch.as_tensor(cp[: min(codebooks, 64)])
                value += float(
                    randdisc_pixel_kl(images[i].flatten().double().cpu(), x_adv[i].flatten().double().cpu(), c, pre.tau)
                    .mean()
                )
            kls[i, j] = value
    delta = 0.5 * margin.unsqueeze(1) ** 2 - kls
    ok = correct.cpu().unsqueeze(1) & (margin.unsqueeze(1) > 0) & (delta >= 0)
    confidence = torch.where(ok, (1.0 - classes * torch.exp(-2.0 * samples * delta**2)).clamp_min(0.0), 0.0)
    cert_acc = [float(v) for v in ok.double().mean(0)]
    settings = {
        "quantizer": repr(pre),
        "codebooks": codebooks,
        "gmm_components": gmm_components,
        "mc_samples": mc_samples,
        "alpha": alpha,
        "second_term": "closed form" if (closed_form and (second_term or kl == "bound")) else (
            "data-processing bound" if kl == "bound" else "omitted (paper: ~1e-5)"
        ),
        "attack": None if kl == "bound" else ("custom" if attack is not None else DEFAULT_ATTACK),
    }
    return Certificate(
        eps=eps,
        certified_accuracy=cert_acc,
        clean_accuracy=float(correct.double().mean()),
        margin=margin,
        kl=kls,
        delta=delta,
        certified=ok,
        confidence=confidence,
        method=kl,
        samples=samples,
        settings=settings,
    )


def plot_certified(results, path: str | None = None, *, ax=None, title: str | None = None):
    """Plot certified accuracy vs eps for one :class:`Certificate` or a ``{label: Certificate}`` dict.

    Draws each curve and its clean (vote) accuracy as a dotted line; saves to ``path`` if given.
    Returns the matplotlib Axes.
    """
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(results, Certificate):
        results = {results.settings.get("quantizer", "defense"): results}
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, res in results.items():
        acc = [100 * a for a in res.certified_accuracy]
        (line,) = ax.plot(res.eps, acc, marker="o", label=f"{label} ({res.method})")
        ax.axhline(100 * res.clean_accuracy, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("eps (L-inf, [0, 1] units)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
    return ax
