"""A synthetic colour set and a small colour CNN for the colour JPEG experiment (docs/jpeg.md, issue 21).

Fashion-MNIST tinted to RGB: each image gets a random background and foreground colour,
``x_rgb = bg + (fg - bg) * x_grey`` (28x28, not a multiple of 16). A stand-in for photos, said
plainly: the chroma carries the garment's shape, as in photos, but it is not a natural-image set.

- ``data: {entry: "entries/tinted.py:tinted", kwargs: {split: test}}``: the tinted images; with
  ``jpeg_quality`` (and ``subsampling``) each is saved as a JPEG file first and the data are the
  files' libjpeg decodes, returned with the files, so ``postprocess: {params: {originals: data}}``
  writes adversarial files that keep each original's tables and subsampling (in place).
- ``models: [{entry: "entries/tinted.py:colour_cnn"}]``: two conv layers, trained on the first
  ``train_size`` tinted training images with :func:`quantadv.models.train` (Adam 1e-3, batch
  128, ``seed``); the weights are kept in ``cache`` so the configs that read it train it once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from quantadv import data as datasets
from quantadv import models


def tint(images: torch.Tensor, seed: int) -> torch.Tensor:
    """uint8 ``(N, 1, H, W)`` grey images -> uint8 ``(N, 3, H, W)``, a random colour pair per image."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    bg = torch.rand(n, 3, 1, 1, generator=g) * 0.5
    fg = 0.4 + torch.rand(n, 3, 1, 1, generator=g) * 0.6
    grey = images.to(torch.float32) / 255.0
    return ((bg + (fg - bg) * grey) * 255.0).round().clamp(0, 255).to(torch.uint8)


def tinted(split: str = "test", seed: int = 2, jpeg_quality: int | None = None, subsampling: str = "4:4:4"):
    """(uint8 RGB images, labels) of tinted Fashion-MNIST, or (decoded images, labels, JPEG files)."""
    from quantadv.io import jpeg as jio

    images, labels = datasets.load("fashion-mnist", split)
    x = tint(images, seed)
    if jpeg_quality is None:
        return x, labels
    files = jio.encode(x, jpeg_quality, subsampling)
    return jio.decode(files), labels, files


class ColourCNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def colour_cnn(train_size: int = 20000, epochs: int = 2, seed: int = 0,
               cache: str = "results/jpeg-colour") -> nn.Module:
    """The colour CNN trained on tinted training images (seed 1 colours), once per setting."""
    path = Path(cache) / f"colour-cnn-{train_size}-{epochs}-{seed}.pt"
    torch.manual_seed(seed)
    model = ColourCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    images, labels = datasets.load("fashion-mnist", "train")
    cfg = models.TrainConfig(method="natural", epochs=epochs, batch_size=128, lr=1e-3, seed=seed)
    res = models.train(model, tint(images[:train_size], seed=1), labels[:train_size], cfg, progress=False,
                       log=lambda s: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(res.model.state_dict(), tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({"train_seconds": round(res.train_seconds, 1),
                                                     "history": [str(h) for h in res.history]}))
    return res.model.eval()
