"""Input-output Jacobians and the signal-propagation statistics of paper 004 (Tables 1 and 7).

The logit-vs-input Jacobian ``J_i = d a^K / d x`` of every image is computed for a whole
batch from one forward pass (``d`` backward passes through that graph, or one
``torch.func`` vmap-batched backward; see :func:`input_jacobian`), never per image.
Everything in Tables 1 and 7 follows from ``J`` and the logits alone, for any temperature ``beta`` (Eq. 8 of paper 004):

- Jacobian singular values (JSV) of ``beta J``;
- the error signal ``psi(beta) = p(beta) - y`` (Eq. 9; its norm);
- the input gradient ``d l(beta) / d x = beta psi(beta) J`` (Eq. 8) and ``||sign(.)||_2``,
  the square root of the number of its non-zero components.

:func:`input_jacobian`, :func:`jacobian_singular_values` and :func:`weights_sha256` live in
:mod:`quantadv._jacobian` (below both attacks and diagnostics; PGD++ uses them) and are
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._jacobian import JACOBIAN_STRATEGIES, input_jacobian, jacobian_singular_values, weights_sha256
from .._validate import check_labels

__all__ = [
    "JACOBIAN_STRATEGIES", "JacobianStats", "input_jacobian", "jacobian_singular_values", "jacobian_stats",
    "signal_per_image", "weights_sha256",
]


@dataclass
class JacobianStats:
    """Table 1 / Table 7 statistics of one model at one temperature (means over images)."""

    beta: str
    jsv_mean: float
    jsv_std: float
    psi_norm: float
    grad_norm: float
    sign_grad_norm: float
    zero_grad_fraction: float
    images: int

    def row(self) -> str:
        return (f"beta={self.beta:<8} JSV mean {self.jsv_mean:.3e} std {self.jsv_std:.3e} | "
                f"||psi|| {self.psi_norm:.3e} | ||grad|| {self.grad_norm:.3e} | "
                f"||sign(grad)|| {self.sign_grad_norm:.3e} | zero grads {self.zero_grad_fraction:.4f}")


def signal_per_image(
    jac: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-image Table 1 / 7 quantities at temperature ``beta`` (a float or one per image).

    Returns ``sv`` (N, d): the singular values of ``beta J``; ``psi_norm`` (N,): ``||p(beta) -
    y||_2`` (Eq. 9); ``grad_norm`` (N,): ``||beta psi(beta) J||_2`` (Eq. 8, the input gradient
    of ``CE(beta a, y)``); ``nonzero`` (N,): its number of non-zero components; ``zero_fraction``
    (N,): the fraction that is exactly 0.
    """
    labels = check_labels(labels, logits.shape[0]).to(logits.device)
    b = torch.as_tensor(beta, dtype=jac.dtype, device=jac.device).flatten()
    b = b.expand(jac.shape[0]) if b.numel() == 1 else b
    sv = torch.linalg.svdvals(jac) * b.view(-1, 1)
    p = torch.softmax(logits * b.view(-1, 1), dim=1)
    psi = p - torch.nn.functional.one_hot(labels, logits.shape[1]).to(p.dtype)
    grad = b.view(-1, 1) * torch.einsum("bd,bdn->bn", psi, jac)
    nonzero = (grad != 0).sum(dim=1)
    return {"sv": sv, "psi_norm": psi.norm(dim=1), "grad_norm": grad.norm(dim=1), "nonzero": nonzero,
            "zero_fraction": 1.0 - nonzero.to(torch.float64) / grad.shape[1]}


def jacobian_stats(
    jac: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
    name: str | None = None,
) -> JacobianStats:
    """Table 1 / 7 statistics from precomputed ``J`` and logits at temperature ``beta``.

    ``beta`` is a float or one value per image. Gradients are of the cross-entropy
    ``l(beta) = CE(beta a, y)`` (Eq. 8: ``beta psi(beta) J``); JSV are those of ``beta J``
    (mean and std over all singular values of all images). Means over images of
    :func:`signal_per_image`.
    """
    b = torch.as_tensor(beta, dtype=jac.dtype, device=jac.device).flatten()
    one = signal_per_image(jac, logits, labels, b)
    return JacobianStats(
        beta=name if name is not None else (f"{float(b[0]):.3g}" if bool((b == b[0]).all()) else "per-image"),
        jsv_mean=float(one["sv"].mean()),
        jsv_std=float(one["sv"].std()),
        psi_norm=float(one["psi_norm"].mean()),
        grad_norm=float(one["grad_norm"].mean()),
        sign_grad_norm=float(one["nonzero"].to(torch.float64).sqrt().mean()),
        zero_grad_fraction=float(one["zero_fraction"].mean()),
        images=int(jac.shape[0]),
    )
