"""quantadv: adversarial machine learning where quantization matters.

Images are float NCHW tensors in [0, 1]; models are ``nn.Module``s returning logits.
See README.md and docs/ for the papers implemented and the numbers measured.

The sub-packages (``quantadv.attacks``, ``quantadv.quantize``, ``quantadv.models``, ...) are
imported on first access, as in numpy and scipy: ``import quantadv`` then
``quantadv.attacks.pgd(...)`` works, and ``import quantadv`` alone stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .digital import is_digital, to_float, to_uint8
from .errors import ConfigError, DataError, InputError, ModelError, QuantadvError

__version__ = "0.1.0"

#: Sub-packages and modules loaded on first attribute access (module-level ``__getattr__``).
SUBMODULES = (
    "attacks",
    "cli",
    "data",
    "defenses",
    "diagnostics",
    "eval",
    "experiments",
    "io",
    "models",
    "quantize",
    "theory",
)

__all__ = [
    "ConfigError",
    "DataError",
    "InputError",
    "ModelError",
    "QuantadvError",
    "__version__",
    "evaluate",
    "is_digital",
    "to_float",
    "to_uint8",
]


#: Functions of sub-packages offered at the top level, imported on first access.
FUNCTIONS = {"evaluate": "eval"}


def __getattr__(name: str) -> Any:
    if name in FUNCTIONS:
        value = getattr(importlib.import_module(f"{__name__}.{FUNCTIONS[name]}"), name)
        globals()[name] = value  # later accesses skip this function
        return value
    if name in SUBMODULES:
        # import_module also binds the sub-module as an attribute of this package, so this
        # function runs once per name.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES) | set(FUNCTIONS))
