"""Ship a float32 model written by ``quantadv train`` into the zoo with float16 weights, if lossless.

    python scripts/paper002_float16.py results/paper002/zoo/mnist-cnn-nsq.safetensors

The weights and biases (not the normalisation buffers) are cast to float16. The model is
rebuilt from the float16 file (the loader casts them back to the model's float32 parameters)
and its predictions on the **full** test split of the manifest's data set are compared with the
float32 model's. Only if every prediction is identical is the pair written to
``src/quantadv/zoo/`` (sha256 and size updated, ``weights_dtype: float16`` and the sha256 of the
float32 model's prediction vector recorded, so a test can re-check the reloaded zoo model);
otherwise the float32 file is shipped unchanged and the script says how many predictions moved.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save

import quantadv
from quantadv import data, models
from quantadv.models._files import atomic_write_bytes, atomic_write_json, sha256_bytes

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "src" / "quantadv" / "zoo"


@torch.no_grad()
def predictions(model, images) -> torch.Tensor:
    return torch.cat([model(quantadv.to_float(images[i:i + 1000])).argmax(1) for i in range(0, len(images), 1000)])


def prediction_digest(pred: torch.Tensor) -> str:
    return hashlib.sha256(pred.to(torch.int64).numpy().tobytes()).hexdigest()


def main(path: str) -> None:
    torch.set_num_threads(1)
    src = Path(path).with_suffix(".safetensors")
    meta = json.loads(src.with_suffix(".json").read_text())
    ref = models.load_file(src)
    images, labels = data.load(meta["data"], "test")
    pred32 = predictions(ref, images)
    state = st_load_file(str(src))
    buffers = {name for name, _ in (ref.classifier if hasattr(ref, "classifier") else ref).named_buffers()}
    half = {k: (v.to(torch.float16) if v.is_floating_point() and k not in buffers else v) for k, v in state.items()}
    blob = st_save(half, metadata={"format": "quantadv-model", "arch": meta["arch"], "weights_dtype": "float16"})
    tmp = ZOO / f".{src.stem}.f16check.safetensors"
    tmp.write_bytes(blob)
    tmp.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha256_bytes(blob)}))
    try:
        pred16 = predictions(models.load_file(tmp), images)
    finally:
        tmp.unlink()
        tmp.with_suffix(".json").unlink()
    moved = int((pred16 != pred32).sum())
    acc32 = float((pred32 == labels).float().mean())
    print(f"{src.stem}: {len(images)} test images, float32 accuracy {acc32:.4f}, "
          f"{moved} predictions differ in float16")
    if moved == 0:
        out = blob
        meta.update({"weights_dtype": "float16", "float16_check": {
            "test_images": len(images), "predictions_differing": 0,
            "float32_predictions_sha256": prediction_digest(pred32),
            "float32_sha256": meta["sha256"], "float32_size_bytes": meta["size_bytes"]}})
    else:
        out = src.read_bytes()
        meta["weights_dtype"] = "float32"
    meta["sha256"] = sha256_bytes(out)
    meta["size_bytes"] = len(out)
    atomic_write_bytes(ZOO / f"{src.stem}.safetensors", out)
    atomic_write_json(ZOO / f"{src.stem}.json", meta)
    print(f"wrote {ZOO / src.stem}.safetensors ({len(out)} bytes, {meta['weights_dtype']})")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(arg)
