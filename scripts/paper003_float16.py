"""Ship a t-swRD / t-pRD model (a Defended with a randomized quantizer) into the zoo in float16, if lossless.

    python scripts/paper003_float16.py results/paper003/zoo/mnist-cnn-swrd.safetensors

Same procedure as ``scripts/paper002_float16.py`` (whose ``main`` this reuses), except that both
prediction passes over the full test split start from the same torch seed, so the randomized
quantizer (which draws from torch's global generator when no ``generator=`` is given) feeds the
float32 and the float16 classifier exactly the same quantized images: any differing prediction
is then due to float16 alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper002_float16 as f16  # noqa: E402

_unseeded = f16.predictions


def seeded_predictions(model, images):
    torch.manual_seed(0)
    return _unseeded(model, images)


f16.predictions = seeded_predictions

if __name__ == "__main__":
    for arg in sys.argv[1:]:
        f16.main(arg)
