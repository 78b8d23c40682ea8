"""Paper 003 (RandDisc / pRD / swRD): the numbers and figures of docs/paper-003-vector-quantization.md.

    python scripts/paper003_figures.py examples   # Fig. 7 analog + denoising distances (Sec. 4.3)
                                                  # (results/paper003-examples.db)
    python scripts/paper003_figures.py certify    # Fig. 6 analog from results/paper003/certify-*/

Every part reads stores and prints Markdown; figures go to docs/img/. The Table 1 analogs (robust
accuracy per model and eps: naive / BPDA / BPDA+EOT / headline) are ``quantadv report
results/paper003-<name>.db --markdown`` (``quantadv.experiments.tables.robust_grid``), the clean
accuracies its column "clean" for ``results/paper003-clean-{mnist,fmnist}.db``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from _figures import ROOT, pyplot, save

IMG = ROOT / "docs" / "img"
NAMES = {"randdisc": "RandDisc (k=2)", "prd": "pRD (s=2, k=2)", "swrd": "swRD (s=2, k=2, beta=1)"}


def _frame(name: str):
    from quantadv.experiments import load_results

    path = ROOT / "results" / f"{name}.db"
    if not path.exists():
        sys.exit(f"{path} is missing: run quantadv run configs/{name}.yaml first")
    return load_results(path, as_frame=True)


def part_examples() -> None:
    """Fig. 7 analog from configs/paper003-examples.yaml: x, x', Q(x), Q(x') and the transfer accuracy."""
    plt = pyplot()
    from quantadv.experiments.store import open_store

    df = _frame("paper003-examples")
    with open_store(ROOT / "results" / "paper003-examples.db") as st:
        originals, adv = st.originals(), st.adversarials()
    run = {(r.model, r.attack): r.run_id for r in df.drop_duplicates("run_id").itertuples()}

    def images(model: str, attack: str, pp: str = "none") -> torch.Tensor:
        rows = sorted((a for a in adv if a["run_id"] == run[model, attack] and a["postprocess"] == pp),
                      key=lambda a: a["idx"])
        return torch.stack([torch.from_numpy(np.frombuffer(a["data"], np.float32).reshape(a["shape"]).copy())
                            for a in rows])

    x = torch.stack([torch.from_numpy(np.frombuffer(d, np.uint8).reshape(s).astype(np.float32) / 255)
                     for _, (s, d) in sorted(originals.items())])
    x_adv = images("natural", "pgd40")
    pgd = df[df.attack == "pgd40"]
    nat_acc = 1 - pgd[pgd.model == "natural"].success.mean()
    mad = lambda a, b: float((a - b).abs().flatten(1).mean(1).mean())  # noqa: E731
    print(f"PGD-40 (step eps/20, random start) on the undefended mnist-cnn at eps 0.32, first {len(x)} mnist-5k "
          f"test images: its accuracy on x' {100 * nat_acc:.0f}%; mean |x' - x| per pixel {mad(x_adv, x):.4f}.\n")
    print("| quantizer | mean abs Q(x') - Q(x) | mean abs Q(x') - x | mnist-cnn accuracy on Q(x') (transfer) |")
    print("|---|---|---|---|")
    grid = {"x": x[:4], "x'": x_adv[:4]}
    for key, name in NAMES.items():
        qx, qa = images(key, "clean", "none@preprocess"), images(key, "pgd40", "none@preprocess")
        acc = 1 - pgd[pgd.model == key].success.mean()
        print(f"| {name} | {mad(qa, qx):.4f} | {mad(qa, x):.4f} | {100 * acc:.0f}% |")
        grid[f"Q(x) {name.split()[0]}"], grid[f"Q(x') {name.split()[0]}"] = qx[:4], qa[:4]
    fig, axes = plt.subplots(len(grid), 4, figsize=(4 * 1.3, len(grid) * 1.35))
    for r, (label, imgs) in enumerate(grid.items()):
        for c in range(4):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle("mnist-5k, PGD-40 eps 0.32 on mnist-cnn", fontsize=8)
    fig.tight_layout()
    save(fig, IMG / "paper003-fig7-mnist.png", dpi=110)


def part_certify() -> None:
    plt = pyplot()
    base = ROOT / "results" / "paper003"
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for path in sorted(base.glob("certify-paper-*/certificate.json")):
        cert = json.loads(path.read_text())
        kl = torch.tensor(cert["kl"])
        eps = cert["eps"][1:]
        axes[0].plot(eps, [float(kl[:, j + 1].median()) for j in range(len(eps))], marker="o",
                     label=path.parent.name.split("-")[-1])
    axes[0].set_yscale("log")
    axes[0].set_xlabel("eps")
    axes[0].set_ylabel("median KL of the codebooks (GMM, Eq. 9)")
    axes[0].set_title("KL(Q_C|x || Q_C|x') at a PGD point x'")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax, kind in zip(axes[1:], ("paper", "bound"), strict=True):
        for path in sorted(base.glob(f"certify-{kind}-*/certificate.json")):
            cert = json.loads(path.read_text())
            name = path.parent.name.split("-")[-1]
            acc = [100 * a for a in cert["certified_accuracy"]]
            kl = torch.tensor(cert["kl"])
            (line,) = ax.plot(cert["eps"], acc, marker="o", label=f"{name}")
            ax.axhline(100 * cert["clean_accuracy"], color=line.get_color(), linestyle=":", linewidth=1)
            med = ", ".join(f"{e:g}: {float(kl[:, j].median()):.3g}" for j, e in enumerate(cert["eps"]))
            print(f"{kind} {name}: {cert['images']} images, clean (vote of {cert['samples']}) "
                  f"{100 * cert['clean_accuracy']:.0f}%, certified {[round(a) for a in acc]} at eps {cert['eps']}; "
                  f"median KL per eps {{{med}}}; {cert['seconds']} s")
        ax.set_title("KL estimated at a PGD point (paper, Sec. 4.2)" if kind == "paper" else
                     "KL bounded over the whole L-inf ball")
        ax.set_xlabel("eps")
        ax.set_ylabel("certified accuracy (%)")
        if kind == "bound":
            ax.set_xscale("symlog", linthresh=1e-5)
            ax.set_xlim(0, None)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, IMG / "paper003-fig6-certified.png", dpi=110)


if __name__ == "__main__":
    torch.set_num_threads(1)
    parts = {"examples": part_examples, "certify": part_certify}
    for arg in sys.argv[1:] or list(parts):
        parts[arg]()
