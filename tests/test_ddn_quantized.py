"""DDN with quantization inside the loop (paper 000 Sec. 3.2 quantized DDN, Sec. 6 Q-delta*)."""

from __future__ import annotations

import pytest
import torch

from conftest import SmallNet
from quantadv import InputError, is_digital
from quantadv.attacks import ddn


def _digital_batch(n=12, seed=0):
    torch.manual_seed(seed)
    model = SmallNet().eval()
    x = (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 255).round() / 255
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("quantize", ["round", "lagrangian"])
def test_quantized_ddn_outputs_digital_adversarial_images(quantize):
    model, x, y = _digital_batch()
    x_adv, info = ddn(model, x, y, steps=40, quantize=quantize, return_info=True)
    assert bool(is_digital(x_adv).all())
    with torch.no_grad():
        really = model(x_adv).argmax(1) != y
    assert torch.equal(really, info["success"]), "success is judged on the quantized point"
    assert bool(info["success"].any())
    # no extra network call for the quantization: steps gradients + one final check
    assert info["grads"].tolist() == [40] * x.shape[0]
    assert info["calls"].tolist() == [41] * x.shape[0]


def test_lagrangian_ddn_needs_digital_originals():
    model, x, y = _digital_batch()
    with pytest.raises(InputError, match="digital"):
        ddn(model, (x + 0.3 / 255).clamp(0, 1), y, steps=2, quantize="lagrangian")


def test_unknown_quantizer_is_refused():
    model, x, y = _digital_batch()
    with pytest.raises(InputError, match="quantize"):
        ddn(model, x, y, steps=2, quantize="floor")
