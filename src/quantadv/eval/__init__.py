"""Evaluation: success, distortion (paper 000 Eq. 31), curves over many images (Eq. 32), and the
ensemble :func:`evaluate` (AutoAttack's cascade plus the quantization-aware attacks; ``quantadv.evaluate``)."""

from .curves import best_effort, operating_characteristic, robust_accuracy
from .ensemble import Evaluation, evaluate, evaluate_attack
from .metrics import adversarial_from_logits, distortion, is_adversarial, predict

__all__ = [
    "adversarial_from_logits",
    "best_effort",
    "distortion",
    "Evaluation",
    "evaluate",
    "evaluate_attack",
    "is_adversarial",
    "operating_characteristic",
    "predict",
    "robust_accuracy",
]
