"""Input-quantization defenses (papers 002 and 003) and their evaluation.

- :mod:`.vector_quantization`: randomized vector quantization of the input, paper 003:
  :class:`RandDisc` (per pixel), :class:`PatchRandDisc` (pRD), :class:`SlidingWindowRandDisc`
  (swRD).
- :mod:`.base`: the adaptive-attack toolkit (paper 002): :class:`Defended` (classifier behind a
  preprocess), :func:`bpda` (Athalye et al. 2018), :func:`adaptive` (what an attack should see
  for the modes none / bpda / bpda+eot).
- :mod:`.soft_quantization`: :class:`SoftQuantization` (paper 002, Eq. 3), :class:`HardQuantization`.
- :mod:`.certify`: :func:`certify` (paper 003, Theorem 1): certified accuracy vs eps of a
  RandDisc / pRD / swRD defense, KL estimated as the paper does or bounded over the ball.
- :mod:`.spec`: :func:`parse_defense` (``"softq:levels=1,alpha=1000"`` -> module).
"""

from .base import ADAPTIVE_MODES, BPDA, Defended, adaptive, bpda, is_randomized, parse_adaptive
from .certify import Certificate, certify
from .soft_quantization import HardQuantization, SoftQuantization
from .spec import format_spec, parse_defense
from .vector_quantization import PatchRandDisc, RandDisc, SlidingWindowRandDisc

__all__ = ["PatchRandDisc", "RandDisc", "SlidingWindowRandDisc"]
__all__ += ["Certificate", "certify"]
__all__ += [
    "ADAPTIVE_MODES", "BPDA", "Defended", "HardQuantization", "SoftQuantization", "adaptive", "bpda", "parse_adaptive",
    "format_spec", "is_randomized", "parse_defense",
]
