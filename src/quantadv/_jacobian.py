"""Input-output Jacobians of a classifier, for attacks and diagnostics alike.

The logit-vs-input Jacobian ``J_i = d a / d x`` of every image is computed for a whole batch
from one forward pass (:func:`input_jacobian`), never per image. PGD++ (paper 004, Eq. 10,
:mod:`quantadv.attacks.temperature`) needs its singular values for NJS and the Jacobian itself
for HNS; the gradient-masking diagnostics (:mod:`quantadv.diagnostics`, Tables 1 and 7 of paper
004) build their statistics on it. This module sits below both, so that neither imports the
other for it; :mod:`quantadv.diagnostics` re-exports its public names.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ._validate import check_choice, check_images

__all__ = ["JACOBIAN_STRATEGIES", "input_jacobian", "jacobian_singular_values", "weights_sha256"]


JACOBIAN_STRATEGIES = ("auto", "vmap", "backward")


def input_jacobian(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 100, strategy: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J, logits)``: per-image Jacobians ``(N, d, C*H*W)`` and logits ``(N, d)``.

    Per chunk of ``batch_size`` images, **one** forward pass, then the ``d`` rows of every
    image's Jacobian from that one graph:

    - ``"vmap"``: ``torch.func.vjp`` + ``vmap`` over the ``d`` one-hot cotangents (a single
      batched backward);
    - ``"backward"``: ``d`` backward passes through the retained graph (one per class, each
      for the whole chunk);
    - ``"auto"`` (default): ``"backward"`` on the CPU, ``"vmap"`` elsewhere. On this project's
      2-core CPU the batched backward of conv/max-pool layers was 1.5-2x *slower* than ``d``
      plain backward passes, and the first ``vmap`` call in a process also pays a ~10 s
      one-time import (see benchmarks/RESULTS.md, "PGD++ cost").

    Both give the same numbers (tested). The model is used as found (call ``model.eval()``
    first for the deployed network); its parameters' ``.grad`` are not touched.
    """
    check_images(images)
    check_choice(strategy, "strategy", JACOBIAN_STRATEGIES)
    if strategy == "auto":
        strategy = "backward" if images.device.type == "cpu" else "vmap"
    jacs, outs = [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].detach()
        if strategy == "vmap":
            from torch.func import vjp, vmap

            logits, pullback = vjp(model, x)
            d = logits.shape[1]
            basis = torch.eye(d, dtype=logits.dtype, device=logits.device)
            (jac,) = vmap(pullback)(basis.unsqueeze(1).expand(d, x.shape[0], d))  # (d, B, C, H, W)
            jac = jac.transpose(0, 1)
        else:
            with torch.enable_grad():
                xg = x.requires_grad_(True)
                logits = model(xg)
                d = logits.shape[1]
                rows = [torch.autograd.grad(logits[:, c].sum(), xg, retain_graph=c < d - 1)[0] for c in range(d)]
            jac = torch.stack(rows, dim=1)  # (B, d, C, H, W)
        jacs.append(jac.detach().flatten(2))
        outs.append(logits.detach())
    return torch.cat(jacs), torch.cat(outs)


def jacobian_singular_values(
    model: nn.Module, images: torch.Tensor, *, batch_size: int = 100, strategy: str = "auto"
) -> torch.Tensor:
    """Singular values of each image's logit-vs-input Jacobian, ``(N, d)``, descending.

    Paper 004, Sec. 4 (dynamical isometry) and Eq. 10. ``d`` = number of classes (the
    Jacobian is ``d x n`` with ``d < n``, so it has ``d`` singular values).
    """
    jac, _ = input_jacobian(model, images, batch_size=batch_size, strategy=strategy)
    return torch.linalg.svdvals(jac)


def _plain_tensors(name: str, t: torch.Tensor):  # type: ignore[no-untyped-def]
    """``(name, tensor)`` pairs of plain tensors: a tensor subclass (e.g. torchao's int8 weights of
    a :class:`~quantadv.models.Deployed` model) is hashed through the tensors it is made of."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        inner, meta = t.__tensor_flatten__()
        yield f"{name}|{type(t).__name__}|{meta!r}", None
        for part in inner:
            if getattr(t, part) is not None:
                yield from _plain_tensors(f"{name}.{part}", getattr(t, part))
    else:
        yield name, t


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the model's ``state_dict`` (names, dtypes, shapes and bytes), for caches."""
    h = hashlib.sha256()
    tensors = (pair for name, t in sorted(model.state_dict().items()) for pair in _plain_tensors(name, t))
    for name, t in tensors:
        if t is None:  # the description of a tensor subclass
            h.update(f"{name}|".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
