"""Shared test fixtures: small models whose behaviour is known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class Affine(nn.Module):
    """Logits ``z = W x + b`` on flattened images: minimal adversarials are known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def affine_problem(classes: int = 4, side: int = 6, n: int = 5, seed: int = 0, dtype=torch.float64):
    """An affine classifier and images near 0.5 whose minimal perturbations stay inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    weight = torch.randn(classes, d, generator=g, dtype=dtype)
    bias = torch.zeros(classes, dtype=dtype)
    model = Affine(weight, bias).eval()
    x = 0.45 + 0.1 * torch.rand(n, 1, side, side, generator=g, dtype=dtype)
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels


def minimal_l2(model: Affine, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact minimal L2 distance to misclassification of an affine model (no box constraint)."""
    w, b = model.weight.detach(), model.bias.detach()
    z = x.flatten(1) @ w.T + b
    out = []
    for i in range(x.shape[0]):
        y = labels[i]
        dists = [(z[i, y] - z[i, k]) / (w[y] - w[k]).norm() for k in range(w.shape[0]) if k != y]
        out.append(min(dists))
    return torch.stack(out)


def minimal_linf(model: Affine, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact minimal L-inf distance to misclassification of an affine model (no box constraint)."""
    w, b = model.weight.detach(), model.bias.detach()
    z = x.flatten(1) @ w.T + b
    out = []
    for i in range(x.shape[0]):
        y = labels[i]
        dists = [(z[i, y] - z[i, k]) / (w[y] - w[k]).abs().sum() for k in range(w.shape[0]) if k != y]
        out.append(min(dists))
    return torch.stack(out)


class SmallNet(nn.Module):
    """A tiny CNN (conv + ReLU + linear) for invariance tests."""

    def __init__(self, channels: int = 1, classes: int = 10, side: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * side * side, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class QuadrantNet(nn.Module):
    """conv 3x3/4 -> ReLU -> FC 256->32 -> ReLU -> FC 32->4 on 1x8x8 images (int4-compatible
    widths), for :func:`quadrant_data`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(256, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def quadrant_data(n: int, seed: int, *, bright: float = 0.4, grid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes, each a quadrant of an 8x8 image made ``bright`` brighter, plus uniform noise;
    ``grid=True`` rounds the images to the 8-bit grid."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    x = 0.35 * torch.rand(n, 1, 8, 8, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[labels == k, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += bright
    x = x.clamp(0, 1)
    return ((x * 255).round() / 255 if grid else x), labels


def train_quadrant_net(x: torch.Tensor, y: torch.Tensor) -> QuadrantNet:
    """:class:`QuadrantNet` after 60 full-batch Adam steps (lr 1e-2, seed 0), in eval mode."""
    torch.manual_seed(0)
    model = QuadrantNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    model = SmallNet().double().eval()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(1)
    return model, x, labels
