"""APGD-CE / APGD-DLR of torchattacks (Croce & Hein, ICML 2020) as a config attack entry.

``entry: "entries/apgd.py:apgd"`` with ``params: {eps: 0.3, steps: 100, loss: ce}`` (``loss`` ce or
dlr, ``norm`` linf or l2, one restart). torchattacks is an optional peer dependency
(``make bench-deps``). APGD returns its best iterate, so compare it with the "any iterate" criterion
of the engine's attacks (``summary: {any: true}``). Its seed comes from the runner's per-batch
generator, so ``repeat: N`` gives N independent runs.
"""

from __future__ import annotations

import torch
from torch import nn

from quantadv.errors import InputError


def apgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int,
         loss: str = "ce", norm: str = "linf", generator: torch.Generator | None = None,
         return_info: bool = False):
    """torchattacks' APGD with one restart; ``info`` holds success and prediction per image."""
    try:
        import torchattacks
    except ImportError:
        raise InputError("torchattacks is not installed: make bench-deps "
                         "(or pip install --no-deps torchattacks)") from None
    if loss not in ("ce", "dlr") or norm not in ("linf", "l2"):
        raise InputError(f"apgd: loss must be ce or dlr and norm linf or l2, got {loss!r}, {norm!r}")
    seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    atk = torchattacks.APGD(model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps,
                            n_restarts=1, loss=loss, seed=seed)
    x_adv = atk(images, labels)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    return (x_adv, {"success": pred != labels, "pred": pred}) if return_info else x_adv
