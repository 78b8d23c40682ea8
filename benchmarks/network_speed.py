"""Benchmark: CPU speed of the network itself in the DDN attack loop (issue 13, part 4).

Variants of the shipped ``fmnist-cnn`` (the zoo SmallCNN), each a drop-in ``nn.Module`` that
the library's attacks take as is:

- ``eager``: the model as ``quantadv.models.load`` returns it (the baseline);
- ``channels_last``: weights and every input in channels-last memory format
  (``model.to(memory_format=torch.channels_last)`` behind a wrapper that converts the input),
  and each of the two alone (what a model loader, or an attack engine, could do by itself);
- ``compile``: ``torch.compile(model, backend="inductor", dynamic=False)`` (CPU, C++ code
  generated and built with the system compiler; compile time reported separately);
- ``inference_mode``: forward-only passes under ``torch.inference_mode()`` instead of
  ``torch.no_grad()`` (the attack loop's gradient passes cannot use it).

Measured, per variant, interleaved (variant A, B, C, then again) so that the shared machine's
load hits all alike, and timed in CPU seconds of this process (wall seconds too):

1. forward pass at the batch size (no_grad; inference_mode for that variant);
2. input gradient (forward + backward) at the batch size;
3. DDN end-to-end (``quantadv.attacks.ddn``, ``--steps`` steps, one batch of ``--n`` images);
4. predictions on the whole Fashion-MNIST test set (10,000 images): identical to eager's?
   (and the largest logit difference).

Adoption rule (issue 13): a variant is adopted only if DDN end-to-end is >= 1.15x faster than
eager and its predictions on the full test set are identical. Prints a Markdown table.

    python benchmarks/network_speed.py [--n 250] [--steps 20] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from torch import nn

from quantadv import attacks, data, models


class ChannelsLast(nn.Module):
    """The model with channels-last weights (``weights``) and/or inputs (``inputs``)."""

    def __init__(self, model: nn.Module, weights: bool = True, inputs: bool = True) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)
        if weights:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last) if self.inputs else x)


def _timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call of ``fn``, over ``repeat`` calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat, (time.perf_counter() - w0) / repeat


def predictions(model: nn.Module, x_u8: torch.Tensor, grad_mode, batch: int = 500) -> torch.Tensor:
    out = []
    with grad_mode():
        for i in range(0, x_u8.shape[0], batch):
            out.append(model(x_u8[i : i + batch].float() / 255).float())
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=250, help="images in the DDN batch (one batch)")
    ap.add_argument("--steps", type=int, default=20, help="DDN steps")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    x_u8, y = data.load("fashion-mnist", split="test")
    x, labels = x_u8[: args.n].float() / 255, y[: args.n]
    eager = models.load("fmnist-cnn")
    variants: dict[str, nn.Module] = {
        "eager": eager,
        "channels_last": ChannelsLast(eager),
        "channels_last weights only": ChannelsLast(eager, inputs=False),
        "channels_last inputs only": ChannelsLast(eager, weights=False),
    }
    compile_note = "not run (--no-compile)"
    if args.compile:
        try:
            compiled = torch.compile(copy.deepcopy(eager), backend="inductor", dynamic=False)
            c0, w0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                compiled(x)
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(compiled(xg).sum(), xg)
            attacks.ddn(compiled, x, labels, steps=1)  # every shape the loop will see
            compile_note = (f"compiled (forward, backward, DDN shapes) in {time.perf_counter() - w0:.0f} s wall, "
                            f"{time.process_time() - c0:.0f} s CPU of this process")
            variants["compile"] = compiled
        except Exception as exc:  # noqa: BLE001 - record why it failed on this machine
            compile_note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    print(f"torch.compile: {compile_note}")

    forward: dict[str, list] = {k: [] for k in [*variants, "inference_mode"]}
    gradient: dict[str, list] = {k: [] for k in variants}
    ddn: dict[str, list] = {k: [] for k in variants}
    for r in range(args.repeat):
        for name, model in variants.items():
            with torch.no_grad():
                forward[name].append(_timed(lambda model=model: model(x), 5))
            if name == "eager":
                with torch.inference_mode():
                    forward["inference_mode"].append(_timed(lambda: eager(x), 5))

            def grad_pass(model=model):
                xg = x.clone().requires_grad_(True)
                torch.autograd.grad(model(xg).logsumexp(1).sum(), xg)

            gradient[name].append(_timed(grad_pass, 3))
            ddn[name].append(_timed(lambda model=model: attacks.ddn(model, x, labels, steps=args.steps)))
            print(f"repeat {r + 1}: {name}: forward {forward[name][-1][0]:.4f} s, gradient "
                  f"{gradient[name][-1][0]:.4f} s, DDN {ddn[name][-1][0]:.2f} s (CPU)")

    reference = predictions(eager, x_u8, torch.no_grad)
    checks = {}
    for name, model in [*variants.items(), ("inference_mode", eager)]:
        mode = torch.inference_mode if name == "inference_mode" else torch.no_grad
        logits = reference if name == "eager" else predictions(model, x_u8, mode)
        checks[name] = (int((logits.argmax(1) == reference.argmax(1)).sum()), float((logits - reference).abs().max()))

    def med(values, i=0):
        return statistics.median(v[i] for v in values)

    base_fwd, base_grad, base_ddn = med(forward["eager"]), med(gradient["eager"]), med(ddn["eager"])
    print(f"\nMachine: {os.cpu_count()} CPU cores ({platform.machine()}), load average {load:.1f} at the start; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s). fmnist-cnn, batch {args.n}, "
          f"DDN {args.steps} steps, median of {args.repeat} interleaved repeats, CPU seconds of this process "
          f"(wall in brackets). torch.compile: {compile_note}.\n")
    print("| variant | forward, batch (s) | gradient, batch (s) | DDN end-to-end (s) | DDN speed-up | "
          f"same predictions (of {x_u8.shape[0]}) | max logit diff | adopted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in [*variants, "inference_mode"]:
        fwd = f"{med(forward[name]):.4f} ({med(forward[name], 1):.4f})"
        same, diff = checks[name]
        if name in ddn:
            grad = f"{med(gradient[name]):.4f} ({med(gradient[name], 1):.4f})"
            run = f"{med(ddn[name]):.2f} ({med(ddn[name], 1):.2f})"
            speed = base_ddn / med(ddn[name])
            adopt = name != "eager" and speed >= 1.15 and same == x_u8.shape[0]
            cells = [grad, run, f"{speed:.2f}x"]
        else:
            speed_fwd = base_fwd / med(forward[name])
            cells = ["n/a (no gradients)", "n/a", f"forward {speed_fwd:.2f}x"]
            adopt = False
        verdict = "baseline" if name == "eager" else ("yes" if adopt else "no")
        print(f"| {name} | {fwd} | {' | '.join(cells)} | {same} | {diff:.2e} | {verdict} |")
    print(f"\n(eager: forward {base_fwd:.4f} s, gradient {base_grad:.4f} s per batch of {args.n}.)")


if __name__ == "__main__":
    main()
