"""The shipped zoo stays publishable: under 100 MB in all (DESIGN.md section 5)."""

from __future__ import annotations

import json

import pytest

from quantadv.models import ZOO_DIR
from quantadv.models import list as zoo_list


def test_zoo_under_100_mb_and_every_manifest_states_its_size():
    total = 0
    for name in zoo_list():
        weights = ZOO_DIR / f"{name}.safetensors"
        manifest = json.loads((ZOO_DIR / f"{name}.json").read_text())
        size = weights.stat().st_size
        assert manifest.get("size_bytes", size) == size, name
        total += size
    assert total < 100 * 1024 * 1024, f"zoo is {total / 2**20:.1f} MB; pack binary weights / use float16"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo_list()
                                  if json.loads((ZOO_DIR / f"{n}.json").read_text()).get("weights_dtype") == "float16"])
def test_float16_zoo_models_predict_what_their_float32_originals_did(name):
    """DESIGN.md section 5: float16 weights only where no prediction on the full test split moved.

    ``quantadv zoo ship`` hashed the float32 model's predictions (seeded, so randomised defenses
    draw the same quantizations) into the manifest; the shipped model must reproduce them.
    """
    from quantadv import data, models
    from quantadv.models.ship import prediction_digest, predictions

    meta = models.manifest(name)
    check = meta["float16_check"]
    images, _ = data.load(meta["data"], "test")
    assert len(images) == check["test_images"]
    pred = predictions(models.load(name), images, seed=check.get("torch_seed", 0))
    assert prediction_digest(pred) == check["float32_predictions_sha256"]
