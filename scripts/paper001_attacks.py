"""Attack entry for the paper 001 configs: one run gives the accuracy after every 10th step.

PGD, PQGD, DAA-BLOB and BLOB_QG use a fixed step size, so the ``k``-step attack's output is
the ``k``-th iterate of a longer run with the same seed (same random start, same updates).
:func:`tracked` runs one of them for ``steps`` steps through a model wrapper that records
the prediction at every iterate (the engine judges iterate ``k`` with the forward pass of
step ``k``, and the last one with its final check), and returns, besides the usual info,
``adv_at_<k>`` for ``k = every, 2 * every, ..., steps``: whether the ``k``-step attack broke
the image, and ``adv_any``: whether any iterate (start point included) was adversarial, the
criterion of attacks that return their best iterate, such as APGD. Fig. 4 of paper 001
(accuracy vs steps) then comes from the 100-step runs at no extra cost. Use it in a config as::

    attacks:
      - entry: "../scripts/paper001_attacks.py:tracked"
        params: {attack: pqgd, eps: 0.3, step: 0.01, steps: 200, b: 200}
        repeat: 3
"""

from __future__ import annotations

import torch
from torch import nn

from quantadv.attacks import REGISTRY

TRACKABLE = ("pgd", "pqgd", "daa_blob")


class _Recorder(nn.Module):
    """Passes calls to ``net`` and keeps the argmax of every full-batch forward pass."""

    def __init__(self, net: nn.Module, batch: int):
        super().__init__()
        self.net = net
        self.batch = batch
        self.preds: list[torch.Tensor] = []
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if x.shape[0] == self.batch:
            self.preds.append(logits.detach().argmax(dim=1))
        return logits


def tracked(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: str,
    eps: float,
    step: float,
    steps: int,
    b: int | None = None,
    every: int = 10,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_info: bool = False,
):
    """Run ``attack`` (pgd | pqgd | daa_blob, L-inf, random start) and record ``adv_at_<k>``."""
    if attack not in TRACKABLE:
        raise ValueError(f"attack must be one of {TRACKABLE}, got {attack!r}")
    if steps % every:
        raise ValueError(f"steps ({steps}) must be a multiple of every ({every})")
    kwargs: dict = dict(eps=eps, step=step, steps=steps, loss=loss, targets=targets, seed=seed,
                        generator=generator, random_start=True, return_info=True)
    if attack == "pgd":
        if b not in (None, 1):
            raise ValueError("pgd takes no b")
        kwargs["norm"] = "linf"
    elif attack == "pqgd":
        kwargs["b"] = b
    elif b is not None:
        kwargs["b"] = b
    recorder = _Recorder(model, images.shape[0])
    out, info = REGISTRY[attack](recorder, images, labels, **kwargs)
    preds = recorder.preds
    if len(preds) != steps + 1:
        raise RuntimeError(f"expected {steps + 1} judged iterates, recorded {len(preds)}")
    reference = labels if targets is None else targets
    for k in range(every, steps + 1, every):
        hit = preds[k] == reference if targets is not None else preds[k] != reference
        info[f"adv_at_{k}"] = hit
    # broken at some iterate (APGD returns its best iterate; PGD-style attacks their last one)
    info["adv_any"] = torch.stack([p == reference if targets is not None else p != reference
                                   for p in preds]).any(dim=0)
    assert torch.equal(info[f"adv_at_{steps}"], info["success"])
    return (out, info) if return_info else out
