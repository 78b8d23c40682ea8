"""Input-quantization defenses (papers 002 and 003) and their evaluation.

- :mod:`.vector_quantization`: randomized vector quantization of the input, paper 003:
  :class:`RandDisc` (per pixel), :class:`PatchRandDisc` (pRD), :class:`SlidingWindowRandDisc`
  (swRD).
"""

from .vector_quantization import PatchRandDisc, RandDisc, SlidingWindowRandDisc

__all__ = ["PatchRandDisc", "RandDisc", "SlidingWindowRandDisc"]
