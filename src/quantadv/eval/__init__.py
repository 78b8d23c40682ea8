"""Evaluation: success, distortion (paper 000 Eq. 31), and curves over many images (Eq. 32)."""

from .curves import best_effort, operating_characteristic, robust_accuracy
from .metrics import adversarial_from_logits, distortion, is_adversarial, predict

__all__ = [
    "adversarial_from_logits",
    "best_effort",
    "distortion",
    "is_adversarial",
    "operating_characteristic",
    "predict",
    "robust_accuracy",
]
