"""Runner overhead: one attack over 1,000 images through ``quantadv run`` vs direct calls.

The direct side calls the attack function batch by batch on the same images, exactly as a
user script would (uint8 -> float conversion included). The runner side runs a config with
the same attack, batch size and images through :func:`quantadv.experiments.run_experiment`
(what ``quantadv run`` does after parsing its arguments): config validation, data and model
loading, clean predictions, the attack with ``return_info=True``, evaluation of every output
(prediction, success, d / L2 / L-inf), and the SQLite writes into a fresh store. The two sides
alternate ``--repeats`` times; the overhead is ``runner / direct - 1`` from the medians.

Usage::

    python benchmarks/runner_overhead.py                 # fmnist-cnn, 1,000 test images
    python benchmarks/runner_overhead.py --write benchmarks/RESULTS-runner.md

Falls back to a randomly initialised small CNN and random images when the shipped model or
Fashion-MNIST is missing (the timing is the same; the printed note says so).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml


def _setup(tmp: Path, n: int) -> tuple[dict, str]:
    """Model and data sections of the config, plus a note on what was used."""
    from quantadv import data, models

    model_cfg: dict
    note = []
    if "fmnist-cnn" in models.list():
        model_cfg = {"name": "fmnist-cnn"}
        note.append("model fmnist-cnn")
    else:
        (tmp / "bench_model.py").write_text(
            "from quantadv.models import build\n"
            "def build_cnn():\n"
            "    import torch\n"
            "    torch.manual_seed(0)\n"
            "    return build('small-cnn')\n"
        )
        model_cfg = {"entry": "bench_model.py:build_cnn", "label": "small-cnn-random"}
        note.append("random small-cnn (fmnist-cnn not shipped yet)")
    try:
        data.load("fashion-mnist", split="test")
        data_cfg = {"name": "fashion-mnist", "split": "test", "subset": {"first": n}}
        note.append(f"first {n} Fashion-MNIST test images")
    except ValueError:
        (tmp / "bench_data.py").write_text(
            "import torch\n"
            "def images(n):\n"
            "    g = torch.Generator().manual_seed(0)\n"
            "    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)\n"
            "    return x, torch.randint(0, 10, (n,), generator=g)\n"
        )
        data_cfg = {"entry": "bench_data.py:images", "kwargs": {"n": n}}
        note.append(f"{n} random 28x28 images (Fashion-MNIST not installed)")
    return {"models": [model_cfg], "data": data_cfg}, ", ".join(note)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=40, help="PGD-L2 steps (default 40)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", type=Path, help="write the markdown section to this file")
    args = ap.parse_args()

    from quantadv import to_float
    from quantadv.attacks import REGISTRY
    from quantadv.experiments import load_config, run_experiment
    from quantadv.experiments.runner import load_data, load_model

    params = {"norm": "l2", "eps": 1.0, "step": 0.1, "steps": args.steps}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sections, note = _setup(tmp, args.images)
        config = {
            "experiment": "overhead",
            "batch_size": args.batch_size,
            "save_images": 0,
            **sections,
            "attacks": [{"name": "pgd", "params": params}],
            "postprocess": ["none"],
        }
        path = tmp / "overhead.yaml"
        path.write_text(yaml.safe_dump(config))
        cfg = load_config(path)
        model = load_model(cfg.models[0], torch.device("cpu"))
        images, labels, indices = load_data(cfg.data)
        sel = torch.tensor(indices)
        images, labels = images[sel], labels[sel]
        attack = REGISTRY["pgd"]

        def direct() -> float:
            t0 = time.perf_counter()
            for i in range(0, images.shape[0], args.batch_size):
                x = to_float(images[i:i + args.batch_size])
                attack(model, x, labels[i:i + args.batch_size], **params)
            return time.perf_counter() - t0

        def runner(k: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            summary = run_experiment(load_config(path), store=tmp / f"run{k}.db", quiet=True)
            return time.perf_counter() - t0, summary.attack_seconds

        direct_times, runner_times, attack_times = [], [], []
        for k in range(args.repeats):
            direct_times.append(direct())
            total, inside = runner(k)
            runner_times.append(total)
            attack_times.append(inside)
            print(f"repeat {k + 1}: direct {direct_times[-1]:.2f} s, runner {total:.2f} s "
                  f"(attack calls inside the runner {inside:.2f} s)", flush=True)

    d, r = statistics.median(direct_times), statistics.median(runner_times)
    overhead = r / d - 1
    lines = [
        "## Runner overhead (`quantadv run` vs direct attack calls)",
        "",
        f"PGD-L2 (eps=1.0, step=0.1, {args.steps} steps) on {note}, batch size "
        f"{args.batch_size}, CPU. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python "
        f"{platform.python_version()}. Median of {args.repeats} alternating repeats.",
        "",
        "| side | seconds | images/s |",
        "| --- | ---: | ---: |",
        f"| direct calls of `quantadv.attacks.pgd` | {d:.2f} | {args.images / d:.1f} |",
        f"| `run_experiment` (= `quantadv run`), total | {r:.2f} | {args.images / r:.1f} |",
        f"| of which inside the attack call | {statistics.median(attack_times):.2f} | |",
        "",
        f"Overhead: **{100 * overhead:+.1f}%** of the direct attack time "
        f"(all repeats: direct {', '.join(f'{t:.2f}' for t in direct_times)} s; runner "
        f"{', '.join(f'{t:.2f}' for t in runner_times)} s).",
        "",
        "Where it goes: three forward passes per image that the bare call does not make (the "
        "clean prediction, the attack's final success check requested by `return_info=True`, "
        "and the evaluation of the stored image), config validation, data and model loading, "
        "and one SQLite transaction per batch. Relative to a PGD step (one forward and one "
        "backward pass) that is about 3 / (2 x steps) of the attack time, so short attacks "
        "(a few steps, FGSM) pay proportionally more.",
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write:
        args.write.write_text(text)
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
