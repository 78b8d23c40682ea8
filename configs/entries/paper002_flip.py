"""Paper 002: a greedy pixel-flip attack made for a binarising (K = 1) input layer (a config entry).

Behind ``SoftQuantization(1, alpha)`` with a large alpha the classifier sees (almost exactly) the
binarised image ``b = [x >= 0.5]``. An L-inf attacker with budget eps can change ``b`` only at the
pixels within eps of 0.5 (pushing the pixel by eps across the threshold). The attack searches over
those flips directly instead of following a BPDA gradient through all pixels:

    repeat: g = gradient of the CW-inf margin loss L_A (paper 000 Eq. 5) w.r.t. the classifier's input
            at the current b; flip the ``per_step`` reachable, not yet flipped pixels with the largest
            first-order decrease -g_i (1 - 2 b_i) > 0; judge the real defended model at that x'.

``x'`` moves each flipped pixel by the full eps toward the other side (clipped to [0, 1]), so
``||x' - x||_inf <= eps``; success is judged on the defended model (soft layer included). Use it as
``entry: "entries/paper002_flip.py:flip"`` on a ``Defended(SoftQuantization(1, alpha), ...)`` model
(``configs/paper002-mnist.yaml``); under the ``bpda`` mode the wrapper is looked through (the attack
never differentiates the soft layer).
"""

from __future__ import annotations

import torch
from torch import nn

from quantadv.attacks.losses import attack_loss
from quantadv.defenses import BPDA, Defended, SoftQuantization
from quantadv.errors import InputError


def flip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int = 100,
         per_step: int = 2, return_info: bool = False):
    """Greedy flips of the reachable binarised pixels (see the module docstring)."""
    layer = model.preprocess if isinstance(model, Defended) else None
    layer = layer.module if isinstance(layer, BPDA) else layer
    if not isinstance(layer, SoftQuantization) or layer.levels != 1:
        raise InputError("the flip attack needs a Defended model behind SoftQuantization(levels=1, ...)")
    if steps < 1 or per_step < 1:
        raise InputError(f"steps and per_step must be >= 1, got {steps} and {per_step}")
    clf, x, y = model.classifier, images, labels
    b0 = (x >= 0.5).to(x.dtype)
    pushed = torch.where(b0 > 0, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    margin = 20.0 / layer.alpha  # beyond it the sigmoid is saturated in float32
    reachable = torch.where(b0 > 0, pushed <= 0.5 - margin, pushed >= 0.5 + margin)
    flipped = torch.zeros_like(b0, dtype=torch.bool)
    with torch.no_grad():
        done = model(x).argmax(1) != y
    calls = torch.ones(len(x), dtype=torch.int64)
    grads = torch.zeros(len(x), dtype=torch.int64)
    for _ in range(steps):
        active = (~done).nonzero().flatten()
        if active.numel() == 0:
            break
        b = torch.where(flipped[active], 1 - b0[active], b0[active]).requires_grad_(True)
        loss = attack_loss(clf(b), y[active], None, "margin")
        (g,) = torch.autograd.grad(loss.sum(), b)
        grads[active.cpu()] += 1
        gain = -g * (1 - 2 * b.detach())  # L_A is minimised (<= 0 means adversarial)
        gain = torch.where(reachable[active] & ~flipped[active], gain, torch.full_like(gain, -float("inf")))
        top = gain.flatten(1).topk(per_step, dim=1)
        choose = torch.zeros_like(gain.flatten(1), dtype=torch.bool)
        choose.scatter_(1, top.indices, top.values > 0)
        if not bool(choose.any()):
            break
        flipped[active] |= choose.view_as(b)
        x_adv = torch.where(flipped[active], pushed[active], x[active])
        with torch.no_grad():
            done[active] = model(x_adv).argmax(1) != y[active]
        calls[active.cpu()] += 2
    x_adv = torch.where(flipped, pushed, x)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    info = {"success": pred != y, "pred": pred, "calls": calls + 1, "grads": grads,
            "flips": flipped.flatten(1).sum(1)}
    return (x_adv, info) if return_info else x_adv
