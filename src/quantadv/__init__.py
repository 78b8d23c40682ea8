"""quantadv: adversarial machine learning where quantization matters.

Images are float NCHW tensors in [0, 1]; models are ``nn.Module``s returning logits.
See README.md and docs/ for the papers implemented and the numbers measured.
"""

from .digital import is_digital, to_float, to_uint8
from .errors import ConfigError, DataError, InputError, ModelError, QuantadvError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "InputError",
    "ModelError",
    "QuantadvError",
    "__version__",
    "is_digital",
    "to_float",
    "to_uint8",
]
