"""Figures of docs/paper-000-digital-images.md (paper 000, Bonnet, Furon, Bas), and its tables
that are not a store's best effort.

Reads the stores of ``quantadv run configs/paper000-*.yaml`` and writes small PNGs to
``docs/img/paper000/``. The best efforts behind Figs. 5, 6/7, 9 and 10 (success, median / mean
minimal ``d``, gradients per image, ``P_suc``) are ``quantadv report STORE --markdown --at D ...``
(``quantadv.experiments.tables``); this script prints the rest: Fig. 2's theory check, the
acceptance ratios, Table 2's pixel statistics.

    python scripts/paper000_figures.py fig2                 # theory + Monte Carlo, no network
    python scripts/paper000_figures.py acceptance           # results/paper000-acceptance.db
    python scripts/paper000_figures.py fig5                 # results/paper000-fig05.db
    python scripts/paper000_figures.py fig6 fig9 fig10      # results/paper000-budget-*.db
                                                            # (fig9 also paper000-search-*.db)
    python scripts/paper000_figures.py table2               # Table 2 from the stores' info column
    python scripts/paper000_figures.py all

Conventions (docs/experiments.md): success rates and operating characteristics are over the
correctly classified images; ``P_suc(d_bar)`` is paper 000 Eq. 32 (failures count against
the attack); ``d`` is Eq. 31 in pixel units; the best effort of an attack entry is, per
image, the lowest ``d`` that succeeds over the entry's parameter grid (Sec. 5.1.2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from _figures import ROOT, pyplot, save, table

from quantadv.eval import operating_characteristic
from quantadv.experiments.tables import best_effort_rows

RESULTS = ROOT / "results"
OUT = ROOT / "docs" / "img" / "paper000"
MODELS = {"natural": "fmnist-cnn", "robust": "fmnist-cnn-at-l2"}
PP_NAMES = {"none": "unquantized", "round_nearest": "rounding R",
            "toward_original": "Q0", "gradient_sign": "Q-inf", "lagrangian": "Q-lambda*"}


def _rows(store: str, required: bool = True):
    """The store's result rows, or None (or exit) when it is missing."""
    from quantadv.experiments import load_results

    path = RESULTS / f"{store}.db"
    if not path.exists():
        if required:
            sys.exit(f"{path} is missing: run 'quantadv run configs/{store}.yaml' first")
        return None
    return load_results(path, as_frame=False)


def _best(store: str, required: bool = True) -> dict | None:
    """(attack, postprocess) -> the best effort over the entry's grid (quantadv.experiments.tables:
    per correctly classified image the lowest d that succeeds, Sec. 5.1.2)."""
    rows = _rows(store, required)
    return None if rows is None else {(r["attack"], r["postprocess"]): r for r in best_effort_rows(rows)}


def oc(b: dict, budgets) -> np.ndarray:
    """Eq. 32 at ``budgets``: fraction of the M images with a success at d < d_bar."""
    return operating_characteristic(b["d_min"], np.isfinite(b["d_min"]), budgets)[1].numpy()


# --------------------------------------------------------------------------------- Fig. 2
def fig2(args) -> None:
    """E(D^2)/n after rounding vs rho^2/n before: Eq. 16, Monte Carlo, Eq. 15, Eq. 17."""
    from quantadv import theory

    n, samples = 784, args.mc_samples
    power = np.linspace(0.0025, 1.0, 40)                    # rho^2 / n
    rho = np.sqrt(power * n)
    exact = theory.expected_rounding_distortion(rho, n) / n
    highres = theory.high_resolution_distortion(rho, n) / n
    fgsm = theory.fgsm_rounding_distortion(rho, n) / n
    mc, se = (v / n for v in theory.monte_carlo_rounding_distortion(rho, n, samples, seed=0))
    z = np.abs(mc - exact) / np.maximum(se, 1e-12)
    # crossover: rounding shrinks the perturbation while E(D^2) < rho^2
    fine = np.linspace(0.001, 0.5, 5000)
    below = theory.expected_rounding_distortion(np.sqrt(fine * n), n) / n < fine
    cross = fine[np.argmax(~below)] if below[0] else math.nan
    print(f"n = {n}, {samples} Monte Carlo samples per point, {len(power)} points")
    print(f"max |MC - Eq.16| = {np.max(np.abs(mc - exact)):.4f} (max {z.max():.2f} standard errors)")
    print(f"rounding shrinks the power (E(D^2) < rho^2) for rho^2/n < {cross:.3f}")
    for p in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0):
        k = int(np.argmin(np.abs(power - p)))
        print(f"  rho^2/n = {power[k]:.3f}: Eq.16 {exact[k]:.4f}, MC {mc[k]:.4f} +- {se[k]:.4f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.plot(power, power, color="gray", lw=0.8, ls=":", label="no rounding (y = x)")
    ax.plot(power, highres, color="C2", lw=1, ls="--", label="high resolution (15)")
    ax.plot(power, fgsm, color="C1", lw=1, label="FGSM (17)")
    ax.plot(power, exact, color="C0", lw=1.5, label="true distortion (16)")
    ax.errorbar(power, mc, yerr=2 * se, fmt="o", ms=2.5, color="k", lw=0.8,
                label=f"Monte Carlo ({samples} draws)")
    ax.set_xlabel("power before rounding  rho^2 / n")
    ax.set_ylabel("power after rounding  E(D^2) / n")
    ax.set_title(f"Fig. 2, n = {n}")
    ax.legend(fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.2)
    save(fig, OUT / "fig02_rounding_theory.png")


# ------------------------------------------------------------------------------ acceptance
def acceptance(args) -> None:
    """What ``quantadv report results/paper000-acceptance.db --markdown`` (successes, median / mean
    d, calls per image) does not print: the share of DDN's successes each output keeps, the
    per-image distortion ratios, and the issue-4 verdict."""
    b = _best("paper000-acceptance")
    d0, dl = b["ddn", "none"]["d_min"], b["ddn", "lagrangian"]["d_min"]
    s0, both = np.isfinite(d0), np.isfinite(d0) & np.isfinite(dl)
    for name, pp in (("rounding R", "round_nearest"), ("Q-lambda*", "lagrangian")):
        kept = (np.isfinite(b["ddn", pp]["d_min"]) & s0).sum() / s0.sum()
        print(f"{name}: keeps {100 * kept:.1f}% of the {s0.sum()} unquantized successes; median d "
              f"{b['ddn', pp]['median_d'] / b['ddn', 'none']['median_d']:.4f}x the unquantized one")
    ratio = dl[both] / d0[both]
    print(f"on the {both.sum()} images both succeed: median d ratio {np.median(dl[both]) / np.median(d0[both]):.4f}, "
          f"mean per-image ratio {ratio.mean():.4f}, max per-image ratio {ratio.max():.3f}")
    accept = both.sum() / s0.sum() >= 0.99 and np.median(dl[np.isfinite(dl)]) <= 1.02 * np.median(d0[s0])
    print(f"acceptance (>= 99% kept, median d <= 1.02x): {'PASS' if accept else 'FAIL'}")


# ---------------------------------------------------------------------------------- Fig. 5
def fig5(args) -> None:
    """The curves only: ``quantadv report results/paper000-fig05.db --markdown --at 0.4 0.6 0.8 1``
    prints their numbers."""
    b = _best("paper000-fig05")
    grid = np.linspace(0, 1.2, 601)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    styles = {"none": ("k", "--"), "round_nearest": ("C3", ":"), "toward_original": ("C1", "-."),
              "gradient_sign": ("C2", "-"), "lagrangian": ("C0", "-")}
    for pp, (c, ls) in styles.items():
        ax.plot(grid, oc(b["fgsm", pp], grid), color=c, ls=ls, lw=1.3, label=PP_NAMES[pp])
    ax.set_xlabel("distortion  d_bar  (Eq. 31, pixel units)")
    ax.set_ylabel("P_suc(d_bar)  (Eq. 32)")
    ax.set_title(f"Fig. 5: FGSM, eps in [0.1, 1] px, fmnist-cnn ({b['fgsm', 'none']['images']} images)")
    ax.legend(fontsize=7)
    save(fig, OUT / "fig05_fgsm_subquantization.png")


# ------------------------------------------------------------------------------ Fig. 6 / 7
ATTACKS = (("fgsm", "FGSM", "C1"), ("ifgsm", "I-FGSM", "C2"), ("pgd2", "PGD2", "C0"),
           ("cw", "CW", "C3"))


def _budget(kind: str, store: str = "budget") -> dict | None:
    """Best efforts of paper000-{store}-{kind}; for the budget stores FGSM comes from the
    non-integer eps grid of paper000-fgsm-{kind} when that store exists."""
    b = _best(f"paper000-{store}-{kind}", required=False)
    if b is not None and store == "budget":
        b.update({k: v for k, v in (_best(f"paper000-fgsm-{kind}", required=False) or {}).items()
                  if k[0] == "fgsm"})
    return b


def _curves(kind: str, title: str, b: dict, ax, grid, entries, label=None) -> None:
    """Draw one curve per (attack, postprocess, name, colour, style)."""
    for att, pp, name, c, ls in entries:
        e = b[att, pp]
        ax.plot(grid, oc(e, grid), color=c, ls=ls, lw=1.3, label=label(name, pp) if label else name)
    ax.set_title(f"{title}: {MODELS[kind]} ({e['images']} images)")
    ax.set_xlabel("distortion  d_bar  (pixel units)")
    ax.set_ylabel("P_suc(d_bar)")


def fig6(args) -> None:
    """The curves only: ``quantadv report results/paper000-budget-{natural,robust}.db --markdown``
    and ``... paper000-fgsm-*.db`` (FGSM) print their numbers."""
    plt = pyplot()
    for kind, fname, title in (("natural", "fig06_natural.png", "Fig. 6"),
                               ("robust", "fig07_robust.png", "Fig. 7")):
        b = _budget(kind)
        if b is None:
            print(f"(no store for the {kind} model)")
            continue
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        entries = [(att, pp, name, c, ls) for att, name, c in ATTACKS
                   for pp, ls in (("none", "--"), ("round_nearest", ":"), ("lagrangian", "-"))]
        _curves(kind, title, b, ax, np.linspace(0, 40 if kind == "natural" else 60, 801), entries,
                label=lambda name, pp: f"{name}, {PP_NAMES[pp]}")
        ax.set_title(f"{title}: {MODELS[kind]} ({b['pgd2', 'none']['images']} images); dashed none, dotted R, "
                     "plain Q-lambda*", fontsize=7)
        ax.legend(fontsize=5.5, ncol=2)
        save(fig, OUT / fname)


SEARCHED = (("ifgsm-search", "I-FGSM, eps bisected (Sec. 5.4)", "C2"),
            ("pgd2-search", "PGD2, eps bisected (Sec. 5.4)", "C0"))


def fig9(args) -> None:
    """The curves only (Q-lambda* outputs; DDN rounded natively): ``quantadv report
    results/paper000-{budget,fgsm,search}-{natural,robust}.db --markdown`` prints their numbers,
    ``grads/img`` the gradients each entry used per image."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    entries = ATTACKS + (("ddn-round", "DDN (rounded each iteration)", "C4"),)
    for ax, kind in zip(axes, ("natural", "robust"), strict=True):
        b = _budget(kind)
        if b is None:
            ax.set_title(f"{kind}: not run")
            continue
        searched = _budget(kind, "search")  # the budget-search variants, when their store exists
        b.update(searched or {})
        curves = [(att, "none" if att.startswith("ddn") else "lagrangian", name, c, "-") for att, name, c in entries]
        curves += [(att, "lagrangian", name, c, "--") for att, name, c in SEARCHED if searched]
        _curves(kind, "Fig. 9", b, ax, np.linspace(0, 40 if kind == "natural" else 60, 801), curves)
        ax.legend(fontsize=6)
    save(fig, OUT / "fig09_limited_complexity.png")


def fig10(args) -> None:
    """The curves only: ``quantadv report results/paper000-budget-{natural,robust}.db --markdown
    --at 2 5`` prints their numbers (the ``ddn*`` rows)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    variants = (("ddn-round", "none", "DDN + R every iteration", "C3", "-"),
                ("ddn", "lagrangian", "DDN then Q-lambda*", "C0", "-"),
                ("ddn-qdelta", "none", "DDN with integrated Q-delta*", "C2", "-"),
                ("ddn", "none", "DDN unquantized (reference)", "gray", "--"),
                ("ddn", "round_nearest", "DDN then R (reference)", "gray", ":"))
    for ax, kind in zip(axes, ("natural", "robust"), strict=True):
        b = _budget(kind)
        if b is None:
            ax.set_title(f"{kind}: not run")
            continue
        _curves(kind, "Fig. 10", b, ax, np.linspace(0, 25 if kind == "natural" else 50, 801), variants)
        ax.legend(fontsize=6)
    save(fig, OUT / "fig10_ddn_variants.png")


# -------------------------------------------------------------------------------- Table 2
def table2(args) -> None:
    """Pixel statistics of Q-lambda* on the best-effort FGSM and PGD2 outputs, from the
    stores' ``info`` column (the runner keeps ``both_pixels``, ``lambda_pixels``, ``j_size``)."""
    lines = []
    for kind in ("natural", "robust"):
        for att, name, store in (("fgsm", "FGSM", "fgsm"), ("pgd2", "PGD2", "budget")):
            rows = _rows(f"paper000-{store}-{kind}", required=False) or []
            pick: dict[int, dict] = {}  # per image the Q-lambda* success of lowest d
            for r in rows:
                if (r["attack"] == att and r["postprocess"] == "lagrangian" and r["success"]
                        and r["clean_pred"] == r["label"] and (r["idx"] not in pick or r["d"] < pick[r["idx"]]["d"])):
                    pick[r["idx"]] = r
            if not pick:
                continue
            if any(r["info"] is None for r in pick.values()):
                sys.exit(f"{MODELS[kind]} {name}: the store has no Q-lambda* info column; re-run its config")
            q = [json.loads(r["info"])["postprocess"] for r in pick.values()]
            both, lam, j = (100 * np.mean([r[k] / 784 for r in q]) for k in ("both_pixels", "lambda_pixels", "j_size"))
            lines.append([MODELS[kind], name, str(len(pick)), f"{both:.1f}%", f"{lam:.1f}%", f"{both + lam:.1f}%",
                          f"{j:.1f}%"])
    print(table(lines, ["model", "attack", "images", "both (not J)", "J switched by lambda*", "total", "|J|"]))


COMMANDS = {"fig2": fig2, "acceptance": acceptance, "fig5": fig5, "fig6": fig6, "fig9": fig9,
            "fig10": fig10, "table2": table2}


def main(argv=None) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="+", choices=[*COMMANDS, "all"])
    ap.add_argument("--mc-samples", type=int, default=2000)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for w in COMMANDS if "all" in args.what else args.what:
        print(f"\n## {w}")
        COMMANDS[w](args)


if __name__ == "__main__":
    main()
