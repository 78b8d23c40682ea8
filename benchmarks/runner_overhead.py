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
    python benchmarks/runner_overhead.py --write /tmp/runner.md   # then paste into RESULTS.md

Falls back to a randomly initialised small CNN and random images when the shipped model or
Fashion-MNIST is missing (the timing is the same; the printed note says so).
"""

from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--steps", type=int, default=10, help="PGD-L2 steps (default 10, the issue's target setting)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", type=Path, help="write the markdown section to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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

        def direct() -> tuple[float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, images.shape[0], args.batch_size):
                x = to_float(images[i:i + args.batch_size])
                attack(model, x, labels[i:i + args.batch_size], **params)
            return time.perf_counter() - t0, time.process_time() - c0

        runner_stats: list[tuple[float, int]] = []

        def runner(k: int) -> tuple[float, float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            summary = run_experiment(load_config(path), store=tmp / f"run{k}.db", quiet=True)
            runner_stats.append((summary.attack_cpu_seconds, summary.images_attacked))
            return time.perf_counter() - t0, time.process_time() - c0, summary.attack_seconds

        # ABBA order (direct, runner, runner, direct, ...) to cancel slow drifts in machine load.
        direct_wall, direct_cpu, runner_wall, runner_cpu, inside = [], [], [], [], []
        for k in range(args.repeats):
            order = ("direct", "runner") if k % 2 == 0 else ("runner", "direct")
            for side in order:
                if side == "direct":
                    w, c = direct()
                    direct_wall.append(w)
                    direct_cpu.append(c)
                else:
                    w, c, a = runner(k)
                    runner_wall.append(w)
                    runner_cpu.append(c)
                    inside.append(a)
                print(f"repeat {k + 1} {side}: {w:.2f} s wall, {c:.2f} s CPU"
                      + (f", {a:.2f} s inside the attack calls" if side == "runner" else ""),
                      flush=True)

    med = statistics.median
    d, r, a = med(direct_wall), med(runner_wall), med(inside)
    inside_cpu = [c for c, _ in runner_stats]
    attacked = runner_stats[0][1]
    own_cpu_pct = 100 * med([(t - c) / c for t, c in zip(runner_cpu, inside_cpu, strict=True)])
    # the direct side attacks every image; per attacked image, the runner's attack CPU time:
    per_image_direct = med(direct_cpu) / args.images
    per_image_runner = med(inside_cpu) / max(attacked, 1)
    own = [w - x for w, x in zip(runner_wall, inside, strict=True)]
    own_pct = 100 * med([o / x for o, x in zip(own, inside, strict=True)])
    wall_pct = 100 * (r / d - 1)
    cpu_pct = 100 * (med(runner_cpu) / med(direct_cpu) - 1)
    lines = [
        "## Runner overhead (`quantadv run` vs direct attack calls)",
        "",
        f"PGD-L2 (eps=1.0, step=0.1, {args.steps} steps) on {note}, batch size "
        f"{args.batch_size}, CPU. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, Python {platform.python_version()}. Medians of {args.repeats} "
        "repeats in ABBA order.",
        "",
        "| side | wall s | CPU s | images/s |",
        "| --- | ---: | ---: | ---: |",
        f"| direct calls of `quantadv.attacks.pgd` | {d:.2f} | {med(direct_cpu):.2f} | "
        f"{args.images / d:.1f} |",
        f"| `run_experiment` (= `quantadv run`), total | {r:.2f} | {med(runner_cpu):.2f} | "
        f"{args.images / r:.1f} |",
        f"| of which inside the attack calls | {a:.2f} | | |",
        f"| of which the runner's own work | {med(own):.2f} | {med(runner_cpu) - med(inside_cpu):.2f} | |",
        "",
        f"* The runner attacked {attacked} of {args.images} images (the others are misclassified by "
        "the model: recorded, not attacked); the direct side attacks all of them.",
        f"* Runner's own work in **CPU time** (process CPU seconds outside the attack calls / inside "
        f"them, same run): **{own_cpu_pct:.1f}%**. CPU time per attacked image: direct "
        f"{1000 * per_image_direct:.1f} ms, inside the runner's attack calls {1000 * per_image_runner:.1f} ms "
        "(includes the final success check that `return_info=True` asks for).",
        f"* Runner's own work (total minus the attack calls, measured inside the same run, so "
        f"insensitive to the machine's load): **{own_pct:.1f}%** of the attack time.",
        f"* Runner vs direct, whole command: {wall_pct:+.1f}% wall, {cpu_pct:+.1f}% CPU time "
        f"(all repeats: direct {', '.join(f'{t:.2f}' for t in direct_wall)} s; runner "
        f"{', '.join(f'{t:.2f}' for t in runner_wall)} s). On a shared machine this difference "
        "is dominated by other processes' load; compare it with the spread between repeats.",
        "",
        "The runner's extra work: the clean prediction (one forward pass per image, shared by all "
        "runs of a model), d / L2 / L-inf, config validation, data and model loading, and one "
        "SQLite transaction per batch. The stored prediction of the unquantized output is the "
        "attack's own (its final success check, inside the attack calls), so there is no "
        "evaluation pass; images the model misclassifies are not attacked.",
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
