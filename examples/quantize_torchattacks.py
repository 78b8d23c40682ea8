"""Make another library's adversarial examples digital: torchattacks CW -> Q-lambda* -> PNG.

quantadv's quantizers take any float tensor, whatever produced it. Here torchattacks' CW-L2
attacks the shipped ``fmnist-cnn`` on the correctly classified images among the first 200
Fashion-MNIST test images; the float output is then rounded (R, paper 000 Eq. 12, what
saving it as an 8-bit image does) or quantized with Q-lambda* (paper 000 Sec. 4), and the
Q-lambda* images that succeed are written as PNGs for ``quantadv verify``.

    make bench-deps                                  # installs torchattacks into .venv
    .venv/bin/python examples/quantize_torchattacks.py [OUT_DIR]
    .venv/bin/quantadv verify OUT_DIR --model fmnist-cnn
"""

from __future__ import annotations

import sys

import torchattacks

from quantadv import data, io, models, quantize
from quantadv import eval as qeval


def main(out_dir: str = "ta-cw-png") -> None:
    x_u8, y = data.load("fashion-mnist", split="test")
    x, y = x_u8[:200].float() / 255, y[:200]
    model = models.load("fmnist-cnn")
    keep = qeval.predict(model, x) == y  # attack the correctly classified images only
    x, y = x[keep], y[keep]

    x_adv = torchattacks.CW(model, c=1, steps=100, lr=0.1)(x, y)  # any float tensor
    x_r = quantize.round_nearest(x_adv)  # R
    x_q, info = quantize.lagrangian(model, x, x_adv, y, return_info=True)  # Q-lambda*
    for name, xo in (("float", x_adv), ("rounded R", x_r), ("Q-lambda*", x_q)):
        ok = qeval.is_adversarial(model, xo, y)
        print(f"{name:10s} adversarial {int(ok.sum())}/{len(y)}, median d {qeval.distortion(xo, x)[ok].median():.3f}")
    io.save_png(x_q[info["success"]], out_dir, labels=y[info["success"]])
    print(f"wrote {int(info['success'].sum())} PNGs to {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
