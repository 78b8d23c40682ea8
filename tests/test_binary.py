"""Binary networks of paper 004: BinaryConnect, MD-tanh-S, BNN-WAQ (quantadv.models.binary)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as st_save

from quantadv import models
from quantadv.models._files import sha256_bytes
from quantadv.models.binary import (
    BINARY_METHODS,
    BinaryLinear,
    BinarySmallCNN,
    binary_layers,
    binary_manifest,
    deployed_weights,
    load_packed,
    packed_state,
    sign_ste,
)

KW = {"in_channels": 1, "num_classes": 10, "mean": [0.3], "std": [0.35]}


_CACHE: dict[tuple[str, int], BinarySmallCNN] = {}


def _trained(method: str, steps: int = 2, seed: int = 0) -> BinarySmallCNN:
    """A BinarySmallCNN after ``steps`` SGD steps on random data (cached: tests do not modify it)."""
    if (method, steps) in _CACHE:
        return _CACHE[method, steps]
    torch.manual_seed(seed)
    model = BinarySmallCNN(method=method, **KW)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(8, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _CACHE[method, steps] = model.eval()
    return model


def test_sign_ste_forward_and_documented_gradient():
    x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    out = sign_ste(x)
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # never 0
    g = torch.arange(1.0, 8.0)
    (grad,) = torch.autograd.grad(out, x, g)
    assert grad.tolist() == [0, 2, 3, 4, 5, 6, 0]  # g * 1{|x| <= 1} (hard-tanh STE)


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_deployed_weights_are_exactly_plus_minus_one(method):
    model = _trained(method)
    for name, w in deployed_weights(model).items():
        assert set(w.unique().tolist()) <= {-1.0, 1.0}, name
        layer = binary_layers(model)[name.rsplit(".", 1)[0]]
        assert torch.equal(layer.binary_weight(), w)  # what eval mode computes with


def test_bc_ste_gradient_and_clipping():
    layer = BinaryLinear(4, 3, method="bc", bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -2.0, 0.1, -0.2]] * 3))
    layer.train()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out = layer(x)
    assert float(layer.weight.detach().abs().max()) <= 1.0  # latent weights clipped to [-1, 1]
    assert torch.equal(out, x @ torch.sign(layer.weight).T)
    out.sum().backward()
    # dL/dw_latent = dL/dw_b (straight through), w_latent now inside [-1, 1] so the indicator is 1
    assert torch.equal(layer.weight.grad, x.expand(3, 4))


def test_mdtanh_training_surrogate_and_beta_annealing():
    layer = BinaryLinear(4, 2, method="mdtanh", bias=False, beta_growth=2.0, beta_max=8.0)
    layer.train()
    x = torch.ones(1, 4)
    w = layer.weight.detach().clone()
    out = layer(x)
    assert torch.allclose(out, x @ torch.tanh(w).T)  # beta = 1 at the first step
    out.sum().backward()
    assert torch.allclose(layer.weight.grad, (1 - torch.tanh(w) ** 2) * x)  # d tanh(beta w)/dw, beta = 1
    for _ in range(5):
        layer(x)
    assert float(layer.beta) == 8.0  # annealed upward, capped
    layer.eval()
    before = float(layer.beta)
    assert torch.equal(layer(x), x @ torch.where(w >= 0, 1.0, -1.0).T)  # sign at test time
    assert float(layer.beta) == before


def test_waq_activation_gradient_is_hardtanh_ste():
    model = _trained("waq", steps=1)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert torch.isfinite(grad).all() and bool((grad != 0).any())  # STE lets a gradient through


@pytest.mark.parametrize("method", BINARY_METHODS)
def test_packed_reload_is_bit_identical(tmp_path, method):
    model = _trained(method)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
    state = packed_state(model)
    size = sum(t.numel() * t.element_size() for t in state.values())
    assert size < 600_000  # ~0.47 MB instead of 13 MB
    data = st_save(state, metadata={"format": "quantadv-model"})
    (tmp_path / "m.safetensors").write_bytes(data)
    manifest = {"arch": "small-cnn", "arch_kwargs": KW, "sha256": sha256_bytes(data), "binary": binary_manifest(model)}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    loaded = models.load_file(tmp_path / "m.safetensors")
    assert isinstance(loaded, BinarySmallCNN) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    assert torch.equal(load_packed(state, manifest)(x), ref)
    for name, w in loaded.state_dict().items():
        if name in deployed_weights(loaded):
            assert set(w.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fmnist-cnn-bc", "fmnist-cnn-mdtanh", "fmnist-cnn-waq", "fmnist-cnn-bc-at-linf"])
def test_shipped_binary_models(name):
    if name not in models.list():
        pytest.skip(f"{name} not in the zoo yet")
    model = models.load(name)
    assert isinstance(model, BinarySmallCNN)
    for w in deployed_weights(model).values():
        assert set(w.unique().tolist()) <= {-1.0, 1.0}
    meta = models.manifest(name)
    assert meta["size_bytes"] < 2_000_000 and meta["clean_accuracy"] > 0.7
