"""The shipped zoo stays publishable: under 100 MB in all (DESIGN.md section 5)."""

from __future__ import annotations

import json

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
