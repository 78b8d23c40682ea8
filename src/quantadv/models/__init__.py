"""Models: architectures, training, and the shipped model zoo.

* Architectures: :class:`SmallCNN` (Madry et al.'s MNIST network), :class:`ResNet18`
  (CIFAR-style), :class:`Normalize` (the normalisation layer every model starts with).
* Zoo: :func:`load` (a shipped model by name, sha256-verified, in eval mode), :func:`list`
  (the shipped names), :func:`manifest` (how a model was trained and how accurate it is),
  :func:`load_file` (your own ``.safetensors`` + ``.json`` pair), :func:`verify`.
* Training: :func:`train` with a :class:`TrainConfig` (natural, noisy, PGD-L-inf, PGD-L2),
  exact checkpoint/resume; ``quantadv train`` is its command-line front end.
* Deployment: :func:`deploy` quantizes a model with torchao (int8 weight-only, dynamic or
  PT2E static; int4 weight-only) into a :class:`Deployed` module whose forward is the
  quantized model and whose backward is the float model's (``pip install 'quantadv[deploy]'``).

See docs/models.md for the zoo table and the commands that reproduce it.
"""

from .architectures import ARCHITECTURES, Normalize, ResNet18, SmallCNN, build
from .deploy import SCHEMES, Deployed, deploy
from .training import METHODS, EpochStats, TrainConfig, TrainResult, accuracy, channel_stats, train
from .zoo import ZOO_DIR, load, load_file, manifest, read_manifest, verify
from .zoo import list_models as list  # noqa: A001 - the public name is quantadv.models.list

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "SCHEMES",
    "ZOO_DIR",
    "Deployed",
    "EpochStats",
    "Normalize",
    "ResNet18",
    "SmallCNN",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "build",
    "channel_stats",
    "deploy",
    "list",
    "load",
    "load_file",
    "manifest",
    "read_manifest",
    "train",
    "verify",
]
