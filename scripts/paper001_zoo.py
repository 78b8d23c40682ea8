"""Ship a trained float32 model into the zoo in float16 when that changes no prediction.

DESIGN.md section 5: a float model may be stored in float16 only if the reloaded model's
predictions on the full test set are identical. This script loads the float32 weights that
``quantadv train --out-dir DIR`` wrote, rounds every floating-point tensor except the
normalisation constants to float16, reloads the result through the zoo loader and compares the
predictions on the whole test split of the manifest's data set. If they are identical it writes
``src/quantadv/zoo/NAME.safetensors`` (float16) and a manifest with the new sha256 and size, the
training command unchanged, and ``float16`` = the check (data, split, images, the sha256 of the
float32 model's prediction vector, the largest logit difference); otherwise it ships float32.

    python scripts/paper001_zoo.py results/paper001/train/mnist-cnn-at-linf.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from quantadv import data, to_float
from quantadv.models import load_file as load_model

ZOO = Path(__file__).resolve().parents[1] / "src" / "quantadv" / "zoo"
KEEP_FLOAT32 = ("normalize.",)


def predictions(model, x: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return logits.argmax(1), logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", type=Path)
    ap.add_argument("--zoo", type=Path, default=ZOO)
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = args.weights.with_suffix(".safetensors")
    meta = json.loads(src.with_suffix(".json").read_text())
    images, labels = data.load(meta["data"], split="test")
    x = to_float(images)
    ref_model = load_model(src)
    ref_pred, ref_logits = predictions(ref_model, x)
    state = load_file(str(src))
    half = {k: (v if k.startswith(KEEP_FLOAT32) or not v.is_floating_point() else v.half()).contiguous()
            for k, v in state.items()}
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / src.name
        save_file(half, str(cand))
        blob = cand.read_bytes()
        trial = dict(meta, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
        cand.with_suffix(".json").write_text(json.dumps(trial))
        pred, logits = predictions(load_model(cand), x)
    identical = bool(torch.equal(pred, ref_pred))
    max_diff = float((logits - ref_logits).abs().max())
    pred_hash = hashlib.sha256(ref_pred.to(torch.int64).numpy().tobytes()).hexdigest()
    print(f"{meta['name']}: float16 predictions identical on {len(x)} {meta['data']} test images: {identical} "
          f"(max |logit difference| {max_diff:.2e}); clean accuracy {float((ref_pred == labels).float().mean()):.4f}")
    args.zoo.mkdir(parents=True, exist_ok=True)
    out = args.zoo / src.name
    if identical:
        out.write_bytes(blob)
        meta = dict(trial)
        meta["float16"] = {"data": meta["data"], "split": "test", "images": len(x), "identical_predictions": True,
                           "float32_predictions_sha256": pred_hash, "max_abs_logit_diff": max_diff,
                           "float32_sha256": json.loads(src.with_suffix(".json").read_text())["sha256"],
                           "kept_float32": list(KEEP_FLOAT32),
                           "command": f"python scripts/paper001_zoo.py {args.weights}"}
    else:
        shutil.copyfile(src, out)
        meta["float16"] = {"identical_predictions": False, "float32_predictions_sha256": pred_hash}
    (args.zoo / f"{meta['name']}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes, {'float16' if identical else 'float32'}) and its manifest")


if __name__ == "__main__":
    main()
