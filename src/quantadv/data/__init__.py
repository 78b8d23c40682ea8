"""Datasets as uint8 NCHW tensors: MNIST, Fashion-MNIST (IDX), mnist-5k, CIFAR-10, image folders.

``load(name, split)`` returns ``(images, labels)``: ``torch.uint8`` images (N, C, H, W) and
``torch.int64`` labels (N,). Names: ``fashion-mnist``, ``mnist``, ``mnist-5k``, ``cifar10``,
``folder:<path>``. ``available()`` tells which of them this machine has and where they come
from. Formats, search folders and safety rules are described in ``docs/data.md`` and in the
modules :mod:`~quantadv.data.idx`, :mod:`~quantadv.data.cifar`, :mod:`~quantadv.data.folder`,
:mod:`~quantadv.data.mnist5k` and :mod:`~quantadv.data.registry`.
"""

from .cifar import RestrictedUnpickler
from .folder import read_image_folder
from .idx import read_idx, read_mnist_pair
from .registry import (
    DATASET_NAMES,
    DATASETS,
    DatasetInfo,
    available,
    class_names,
    load,
    search_dirs,
    user_cache_dir,
)

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "DatasetInfo",
    "RestrictedUnpickler",
    "available",
    "class_names",
    "load",
    "read_idx",
    "read_image_folder",
    "read_mnist_pair",
    "search_dirs",
    "user_cache_dir",
]
