"""Paper 002, App. B analog: an NSQ classifier fine-tuned behind SoftQuantization(K, alpha) (a model entry).

``{entry: "entries/nsq.py:fine_tuned", kwargs: {levels: K, alpha: A}, defense: "softq:levels=K,alpha=A"}``
fine-tunes ``init`` (a zoo model, ``fmnist-cnn`` by default) for ``epochs`` epochs of noisy training
(uniform noise in [-noise, noise], paper 002 Eq. 10) behind the soft layer, on the first
``train_size`` training images of ``data``, with :func:`quantadv.models.train` (Adam, ``lr``, batch
128, ``seed``) as ``quantadv train --method noisy --init ... --defense ...`` does; it returns the
classifier, and the model entry's ``defense`` puts the same layer back in front (so the runner
knows the model is defended and runs the ``adaptive`` modes). The weights are kept in ``cache``
(one file per setting), so the configs that read the same model train it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from quantadv import data as datasets
from quantadv import models
from quantadv.defenses import Defended, SoftQuantization


def fine_tuned(*, levels: int, alpha: float, noise: float = 0.1, train_size: int = 5000, epochs: int = 1,
               lr: float = 5e-4, seed: int = 0, init: str = "fmnist-cnn", data: str = "fashion-mnist",
               cache: str = "results/paper002/kalpha") -> nn.Module:
    """The classifier of NSQ(K = ``levels``, ``alpha``), trained once per setting (module docstring)."""
    setting = dict(levels=levels, alpha=alpha, noise=noise, train_size=train_size, epochs=epochs, lr=lr,
                   seed=seed, init=init, data=data)
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache) / f"nsq-K{levels}-alpha{alpha:g}-{key}.pt"
    classifier = models.load(init)
    if path.exists():
        classifier.load_state_dict(torch.load(path, weights_only=True))
        return classifier.eval()
    images, labels = datasets.load(data, "train")
    cfg = models.TrainConfig(method="noisy", eps=noise, epochs=epochs, batch_size=128, lr=lr, seed=seed)
    res = models.train(Defended(SoftQuantization(levels, alpha), classifier), images[:train_size],
                       labels[:train_size], cfg, progress=False, log=lambda s: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(res.model.classifier.state_dict(), tmp)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps({**setting, "train_seconds": round(res.train_seconds, 1)}))
    return res.model.classifier.eval()
