"""Evaluation: success, distortion (paper 000 Eq. 31), and curves over many images."""

from .metrics import adversarial_from_logits, distortion, is_adversarial, predict

__all__ = ["adversarial_from_logits", "distortion", "is_adversarial", "predict"]
