"""Putting a trained model into the zoo, in float16 when that changes no prediction.

DESIGN.md section 5 keeps the zoo under 100 MB: a float model may be stored with float16
weights only if the reloaded model's predictions on the **full** test split of its data set
are identical to the float32 model's. :func:`ship` does exactly that check and writes the
zoo pair; ``quantadv zoo ship PATH`` is its command-line front end.

* Floating-point parameters are cast to float16; buffers (the normalisation constants, batch
  norm statistics) stay float32. The loader casts the weights back into the float32 model.
* Both prediction passes start from ``torch.manual_seed(torch_seed)``, so a defended model
  with a randomised quantizer (paper 003's t-swRD) sees the same quantized images in both:
  a differing prediction is then due to float16 alone.
* If every prediction is identical, the float16 file is shipped and the manifest records
  ``weights_dtype: "float16"`` and ``float16_check`` (test images, the sha256 of the float32
  prediction vector, the float32 file's sha256 and size, the seed), which a test re-checks
  against the shipped model. Otherwise the float32 file is shipped and the manifest says how
  many predictions moved.
* Packed binary networks (paper 004) are shipped as they are: they are already small.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ModelError
from ._files import atomic_write_bytes, atomic_write_json, sha256_bytes
from .zoo import ZOO_DIR, load_file, read_manifest

__all__ = ["prediction_digest", "predictions", "ship"]


@torch.no_grad()
def predictions(model: torch.nn.Module, images: torch.Tensor, *, seed: int = 0, batch: int = 1000) -> torch.Tensor:
    """Predicted classes of uint8 ``images``, every pass starting from ``torch.manual_seed(seed)``."""
    from ..digital import to_float

    torch.manual_seed(seed)
    return torch.cat([model(to_float(images[i : i + batch])).argmax(1) for i in range(0, len(images), batch)])


def prediction_digest(pred: torch.Tensor) -> str:
    """sha256 of a prediction vector (int64, CPU), the fingerprint stored in ``float16_check``."""
    return hashlib.sha256(pred.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


def ship(
    path: str | Path,
    zoo_dir: str | Path = ZOO_DIR,
    *,
    float16: bool = True,
    torch_seed: int = 0,
    log=print,
) -> dict[str, Any]:
    """Copy ``X.safetensors`` + ``X.json`` (as ``quantadv train`` wrote them) into ``zoo_dir``.

    With ``float16=True`` the weights are stored in float16 when every prediction on the full
    test split stays the same (see the module docstring); the returned manifest says which.
    Nothing is written if the source does not load (its sha256 is checked first).
    """
    src = Path(path).with_suffix(".safetensors")
    meta = read_manifest(src)
    name = str(meta.get("name") or src.stem)
    raw = src.read_bytes()
    reference = load_file(src)  # checks the sha256 against the manifest
    meta = dict(meta)
    blob = raw
    if float16 and not isinstance(meta.get("binary"), dict) and meta.get("weights_dtype") != "float16":
        from ..data import load as load_data

        images, labels = load_data(str(meta["data"]), "test")
        pred32 = predictions(reference, images, seed=torch_seed)
        state = st_load(raw)
        inner = getattr(reference, "classifier", reference)
        buffers = {n for n, _ in inner.named_buffers()}
        half = {k: (v.to(torch.float16) if v.is_floating_point() and k not in buffers else v) for k, v in state.items()}
        candidate = st_save(half, metadata={"format": "quantadv-model", "arch": str(meta["arch"]),
                                            "weights_dtype": "float16"})
        tmp = Path(zoo_dir) / f".{name}.f16check.safetensors"
        Path(zoo_dir).mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(candidate)
            tmp.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha256_bytes(candidate)}))
            pred16 = predictions(load_file(tmp), images, seed=torch_seed)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".json").unlink(missing_ok=True)
        moved = int((pred16 != pred32).sum())
        acc = float((pred32 == labels.to(pred32.device)).float().mean())
        log(f"{name}: {len(images)} {meta['data']} test images, float32 accuracy {acc:.4f}, "
            f"{moved} predictions differ in float16")
        if moved == 0:
            blob = candidate
            meta["weights_dtype"] = "float16"
            meta["float16_check"] = {
                "test_images": len(images),
                "predictions_differing": 0,
                "float32_predictions_sha256": prediction_digest(pred32),
                "float32_sha256": meta["sha256"],
                "float32_size_bytes": meta.get("size_bytes", len(raw)),
                "torch_seed": torch_seed,
            }
        else:
            meta["weights_dtype"] = "float32"
            meta["float16_check"] = {"test_images": len(images), "predictions_differing": moved}
    meta["sha256"] = sha256_bytes(blob)
    meta["size_bytes"] = len(blob)
    out = Path(zoo_dir) / f"{name}.safetensors"
    if out.resolve() == src.resolve() and blob is raw:
        raise ModelError(f"{src} is already in {zoo_dir}; nothing to ship")
    atomic_write_bytes(out, blob)
    atomic_write_json(out.with_suffix(".json"), meta)
    train_log = src.with_name(f"{src.stem}.train.jsonl")
    if train_log.is_file() and train_log.resolve() != out.with_name(train_log.name).resolve():
        atomic_write_bytes(out.with_name(train_log.name), train_log.read_bytes())
    log(f"wrote {out} ({len(blob):,} bytes, {meta.get('weights_dtype', 'as trained')})")
    return meta
