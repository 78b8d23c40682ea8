"""Tables, figures and significance tests of docs/paper-001-quantized-gradients.md (paper 001).

Reads the stores of ``quantadv run configs/paper001-<name>.yaml`` (``results/paper001-<name>.db``),
keeps a compact per-image extract next to the figures (``docs/img/paper001/outcomes-<name>.csv.gz``,
committed, so the page can be rebuilt without the stores), writes PNGs to ``docs/img/paper001/`` and
the markdown tables to ``docs/img/paper001/tables-<name>.md``.

    python scripts/paper001_figures.py mnist fmnist         # tables + figures per experiment
    python scripts/paper001_figures.py hist                 # Fig. 2 histograms (quantadv diagnose --gradients)

Conventions: accuracy is over all images of the subset (misclassified ones are not attacked and
count as errors), ``1 - success``; "worst" and "avg" are the minimum and mean over the independent
runs (``repeat``) of one attack; "k steps" is the ``k``-th iterate of the 100-step run (a k-step
attack with a fixed step size). Paired tests compare attacks on the same images: McNemar's exact
test on the first run's outcomes and a bootstrap interval (over images, 5,000 resamples) of the
difference in average accuracy over runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from _figures import pyplot, save

from quantadv.experiments.summary import bootstrap_diff, mcnemar_exact

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
OUT = ROOT / "docs" / "img" / "paper001"
HEADLINE_EPS = {"mnist": 0.3, "fmnist": 0.1}
MODEL = {"mnist": "mnist-cnn-at-linf", "fmnist": "fmnist-cnn-at-linf"}


def _save(fig, name: str) -> None:
    save(fig, OUT / name)


def method_name(attack: str, b, step: float = 0.01, loss: str | None = None) -> str:
    if attack.endswith("apgd.py:apgd"):  # the APGD config entry (configs/entries/apgd.py)
        return f"APGD-{(loss or 'ce').upper()}"
    if step is not None and not math.isclose(step, 0.01):
        return f"{method_name(attack, b)} (step {step:g})"
    if attack == "pgd":
        return "PGD"
    if attack == "pqgd":
        return "PGD" if b == 1 else f"PQGD_{b}"
    if attack == "daa_blob":
        return "BLOB" if b is None else f"BLOB_QG_{b}"
    return attack


# ----------------------------------------------------------------------------- extraction
def extract(name: str):
    """Per-image outcomes of one experiment's store as a pandas DataFrame (and its committed extract)."""
    import pandas as pd

    from quantadv.experiments import load_results

    csv = OUT / f"outcomes-{name}.csv.gz"
    db = RESULTS / f"paper001-{name}.db"
    if not db.exists():
        if csv.exists():
            print(f"{db.relative_to(ROOT)} not found: using the committed extract {csv.relative_to(ROOT)}")
            return pd.read_csv(csv)
        sys.exit(f"neither {db} nor {csv}: run quantadv run configs/paper001-{name}.yaml first")
    rows = []
    for r in load_results(db, as_frame=False):
        if r["postprocess"] != "none":
            continue
        p = {"attack": r["attack_name"], **json.loads(r["params"])}
        info = json.loads(r["info"]) if r["info"] else {}
        skipped, success = info.get("skipped") == "misclassified", bool(r["success"])
        # runs of one attack from several entries are all independent runs: name them by entry and run id
        row = dict(method=method_name(p["attack"], p.get("b"), p.get("step"), p.get("loss")), attack=p["attack"],
                   b=p.get("b"), eps=p["eps"], steps=p["steps"], restarts=p.get("restarts", 1),
                   repeat=f"{r['attack']}#{r['run_id']}", idx=r["idx"], skipped=skipped, success=success)
        first = info.get("attack", {}).get("first_adv")  # the engine's first adversarial iterate (-1: none)
        if first is None:  # APGD (its best iterate of all its iterations)
            row["any"] = row[f"at{p['steps']}"] = success
        else:  # broken after k steps: an iterate <= k was adversarial
            row["any"] = success or first >= 0
            for k in range(10, p["steps"] + 1, 10):
                row[f"at{k}"] = success if skipped else 0 <= first <= k
        rows.append(row)
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False, compression={"method": "gzip", "mtime": 0})
    print(f"wrote {csv.relative_to(ROOT)} ({len(df)} rows)")
    return df


def per_image(df, method: str, eps: float, col: str, steps: int = 100):
    """(runs x images) boolean matrix of 'robust' (not broken) for one method, images sorted by idx."""
    sub = df[(df.method == method) & np.isclose(df.eps, eps) & (df.steps == steps) & (df.restarts == 1)]
    if sub.empty or col not in sub or sub[col].isna().all():
        return None
    mat = sub.pivot_table(index="repeat", columns="idx", values=col, aggfunc="first")
    mat = mat.reindex(columns=sorted(df.idx.unique()))
    mat = mat[mat.notna().all(axis=1)]  # complete runs only (a run still in progress is left out)
    if mat.empty:
        return None
    return ~mat.to_numpy(dtype=bool)


def table_rows(df, eps: float, methods: list[str], cols: list[tuple[str, str]]):
    out = []
    for m in methods:
        cells = [m]
        nrep = 0
        for col, _ in cols:
            robust = per_image(df, m, eps, col)
            if robust is None:
                cells += ["-", "-"]
                continue
            acc = robust.mean(axis=1) * 100
            nrep = max(nrep, len(acc))
            cells += [f"{acc.min():.1f}", f"{acc.mean():.1f}"]
        if nrep:
            out.append(cells + [str(nrep)])
    return out


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def report(name: str) -> None:
    df = extract(name)
    eps0 = HEADLINE_EPS[name]
    n_images = df.idx.nunique()
    n_attacked = int((~df[df.method == "PGD"].skipped).groupby(df.idx).first().sum()) if "PGD" in set(df.method) else 0
    order = ["PGD", "PGD (step 0.0375)", "PQGD_10", "PQGD_100", "PQGD_200", "PQGD_500", "PQGD_1000", "PQGD_5000",
             "BLOB", "BLOB_QG_100", "BLOB_QG_200", "APGD-CE", "APGD-DLR"]
    methods = [m for m in order if m in set(df.method)]
    parts = [f"# paper 001 tables: {MODEL[name]}, {n_images} images ({n_attacked} correctly classified, "
             f"attacked), L-inf eps {eps0}, step 0.01\n"]
    cols = [("at20", "20"), ("at50", "50"), ("at100", "100"), ("any", "any")]
    header = ["attack"] + [f"{lab} steps {w}" if lab != "any" else f"any iterate {w}"
                           for _, lab in cols for w in ("worst", "avg")] + ["runs"]
    parts.append("## Accuracy (%) after 20 / 50 / 100 steps; worst and average over independent runs\n")
    parts.append(md_table(header, table_rows(df, eps0, methods, cols)))
    parts.append("\n'any iterate': broken at some iterate of the 100-step run (APGD's criterion: it returns "
                 "its best iterate); APGD rows are 100-step runs, so only their 100-step and 'any' cells exist.\n")

    # restarts analog: an image is broken if any of the R runs breaks it
    rows = []
    for m in methods:
        robust = per_image(df, m, eps0, "at100")
        if robust is None or len(robust) < 2:
            continue
        rows.append([m, str(len(robust)), f"{robust.all(axis=0).mean() * 100:.1f}",
                     f"{robust.mean() * 100:.1f}"])
    eng = df[(df.restarts > 1) & np.isclose(df.eps, eps0)]
    for (m, r), sub in eng.groupby(["method", "restarts"]):
        if sub.idx.nunique() < n_images:
            continue  # still running
        rows.append([f"{m} (engine restarts)", str(r), f"{(1 - sub.success.mean()) * 100:.1f}", "-"])
    parts.append("## Restarts (Table 3/5 analog): accuracy (%) when an image counts as broken if any of R "
                 "runs breaks it (100 steps)\n")
    parts.append(md_table(["attack", "R", "accuracy over R restarts", "avg single run"], rows))
    broken = {m: sub.sort_values("idx").success.to_numpy(dtype=bool)
              for (m, _), sub in eng.groupby(["method", "restarts"]) if sub.idx.nunique() == n_images}
    lines = []
    for a, b in (("PQGD_200", "PGD"), ("BLOB_QG_200", "BLOB"), ("BLOB", "PGD"), ("BLOB_QG_200", "PGD")):
        if a in broken and b in broken:
            n01, n10, p = mcnemar_exact(broken[a], broken[b])
            lines.append(f"- engine restarts, {a} vs {b}: broken only by {a} {n01}, only by {b} {n10}, "
                         f"McNemar exact p = {p:.3g}")
    apgd = per_image(df, "APGD-CE", eps0, "at100")
    if apgd is not None and broken:
        best = max(broken, key=lambda m: broken[m].sum())
        n01, n10, p = mcnemar_exact(~apgd.all(axis=0), broken[best])
        lines.append(f"- APGD-CE, any of its {len(apgd)} runs, vs {best} with 10 engine restarts: broken only by "
                     f"APGD {n01}, only by {best} {n10}, McNemar exact p = {p:.3g}")
    if lines:
        parts.append("\n" + "\n".join(lines))

    # significance
    parts.append("\n## Paired differences (same images): accuracy of A minus accuracy of B, points\n")
    pairs = [(f"PQGD_{b}", "PGD") for b in (100, 200, 500, 1000)] + [
        ("BLOB", "PGD"), ("BLOB_QG_200", "BLOB"), ("BLOB_QG_100", "BLOB"),
        ("PQGD_10", "PGD"), ("PQGD_5000", "PGD"), ("PQGD_100", "PGD (step 0.0375)"),
        ("PQGD_200", "PGD (step 0.0375)"), ("APGD-CE", "PGD"), ("APGD-DLR", "PGD"), ("APGD-CE", "PQGD_200"),
        ("APGD-CE", "BLOB_QG_200"),
        ("APGD-DLR", "BLOB_QG_200")]
    rows = []
    for a, b in pairs:
        for col in ("at20", "at100", "any"):
            ra, rb = per_image(df, a, eps0, col), per_image(df, b, eps0, col)
            if ra is None or rb is None or ra.shape[1] != rb.shape[1]:
                continue
            diff = (ra.mean() - rb.mean()) * 100
            lo, hi = bootstrap_diff(ra.mean(axis=0), rb.mean(axis=0))
            n01, n10, p = mcnemar_exact(~ra[0], ~rb[0])
            spread = (rb.mean(axis=1).max() - rb.mean(axis=1).min()) * 100 if len(rb) > 1 else float("nan")
            ci_excludes_0 = not (lo <= 0 <= hi)
            who = "A" if diff < 0 else "B"
            if ci_excludes_0 and p < 0.05:
                verdict = f"{who} stronger"
            elif ci_excludes_0 or p < 0.05:
                verdict = f"{who} stronger? (one test only)"
            else:
                verdict = "noise"
            rows.append([f"{a} vs {b}", col.replace("at", "") if col != "any" else "any", f"{diff:+.2f}",
                         f"[{lo * 100:+.2f}, {hi * 100:+.2f}]", f"{n01}/{n10}", f"{p:.3g}",
                         "-" if math.isnan(spread) else f"{spread:.1f}", verdict])
    parts.append(md_table(["A vs B", "steps", "diff (avg acc)", "95% bootstrap", "McNemar A-only/B-only (run 1)",
                           "p (exact)", "B run-to-run spread", "reading"], rows))
    parts.append("\nA negative difference means A leaves fewer images robust (A is the stronger attack). "
                 "Reading: 'stronger' when the bootstrap interval excludes 0 and McNemar's p < 0.05; "
                 "'(one test only)' when just one of them says so; 'noise' otherwise.\n")

    # eps sweep (Fig. 3) and b sweep (Sec. 4.5)
    sweep_methods = ["PGD", "PQGD_200", "PQGD_1000"]
    eps_values = sorted(set(df[df.method.isin(sweep_methods)].eps))
    rows = []
    for m in sweep_methods:
        cells = [m]
        for e in eps_values:
            robust = per_image(df, m, e, "at100")
            cells.append("-" if robust is None else f"{robust.mean() * 100:.1f}")
        rows.append(cells)
    parts.append("\n## Accuracy (%) vs eps, 100 steps (Fig. 3 analog; mean over the runs available)\n")
    parts.append(md_table(["attack"] + [f"eps {e:g}" for e in eps_values], rows))
    bs = [m for m in ["PGD", "PQGD_10", "PQGD_100", "PQGD_200", "PQGD_500", "PQGD_1000", "PQGD_5000"]
          if m in set(df.method)]
    rows = []
    for col in ("at10", "at20", "at50", "at100"):
        cells = [col.replace("at", "") + " steps"]
        for m in bs:
            robust = per_image(df, m, eps0, col)
            cells.append("-" if robust is None else f"{robust[:1].mean() * 100:.1f}")
        rows.append(cells)
    parts.append(f"\n## b sweep (Sec. 4.5), eps {eps0}, accuracy (%) of the first run (b = 1 is PGD)\n")
    parts.append(md_table(["steps"] + ["b=1 (PGD)" if m == "PGD" else "b=" + m.split("_")[1] for m in bs], rows))
    text = "\n".join(parts) + "\n"
    (OUT / f"tables-{name}.md").write_text(text)
    print(text)
    print(f"wrote {(OUT / f'tables-{name}.md').relative_to(ROOT)}")
    figures(name, df, eps0, methods, eps_values, bs)


def figures(name, df, eps0, methods, eps_values, bs) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    ax = axes[0]
    steps = list(range(10, 101, 10))
    for m in methods:
        if m.startswith("APGD"):
            robust = per_image(df, m, eps0, "at100")
            if robust is not None:
                ax.scatter([100], [robust.mean() * 100], marker="x", label=m, zorder=3)
            continue
        ys = []
        for k in steps:
            robust = per_image(df, m, eps0, f"at{k}")
            ys.append(np.nan if robust is None else robust.mean() * 100)
        if m in ("PGD", "PGD (step 0.0375)", "PQGD_100", "PQGD_200", "PQGD_1000", "BLOB", "BLOB_QG_200", "PQGD_5000"):
            ax.plot(steps, ys, marker=".", label=m)
    ax.set_xlabel("steps")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Fig. 4 analog: {MODEL[name]}, eps {eps0}")
    ax.legend(fontsize=6)
    ax = axes[1]
    for m in ["PGD", "PQGD_200", "PQGD_1000"]:
        ys = []
        for e in eps_values:
            robust = per_image(df, m, e, "at100")
            ys.append(np.nan if robust is None else robust.mean() * 100)
        ax.plot(eps_values, ys, marker="o", label=m)
    ax.set_xlabel("eps (L-inf, [0,1] units)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Fig. 3 analog: 100 steps")
    ax.legend(fontsize=6)
    ax = axes[2]
    bvals = [1 if m == "PGD" else int(m.split("_")[1]) for m in bs]
    for col in ("at20", "at100"):
        ys = []
        for m in bs:
            robust = per_image(df, m, eps0, col)
            ys.append(np.nan if robust is None else robust[:1].mean() * 100)
        ax.plot(bvals, ys, marker="o", label=col.replace("at", "") + " steps")
    ax.set_xscale("log")
    ax.set_xlabel("b (1 = PGD)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"b sweep (Sec. 4.5), eps {eps0}, run 1")
    ax.legend(fontsize=6)
    _save(fig, f"curves-{name}.png")


# ----------------------------------------------------------------------------- Fig. 2
def hist(path: Path = RESULTS / "paper001" / "gradients-mnist.npz") -> None:
    """Fig. 2 analog from ``quantadv diagnose --gradients``: sign, raw and quantized gradients."""
    if not path.exists():
        sys.exit(f"{path} is missing: run quantadv diagnose --model mnist-cnn-at-linf --data mnist-5k --images 100 "
                 f"--eps 0.3 --step 0.01 --gradients {path.relative_to(ROOT)}")
    z = np.load(path)
    g, cap = z["gradient"], float(z["eps"] / z["step"])
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(10, 5))
    panels = [("(a) sign gradient", np.sign(g))] + [
        (f"({'bcde'[i]}) b = {b}", z[f"quantized_{b}"]) for i, b in enumerate(z["b"][:4])]
    for ax, (title, q) in zip(axes.flat, panels, strict=False):
        v = np.clip(q.flatten(), -cap, cap)  # the projection caps a move at eps / step steps
        if title.startswith("(a)"):
            ax.hist(v, bins=5, range=(-2.5, 2.5))
        else:
            ax.hist(v, bins=61, range=(-cap - 0.5, cap + 0.5), log=True)
        ax.set_title(title)
    ax = axes.flat[5]
    ax.hist(g.flatten(), bins=101, log=True)
    ax.set_title("(f) raw gradient (d loss / d x)")
    fig.suptitle(f"Fig. 2 analog: mnist-cnn-at-linf, {len(g)} test images at a random start (eps {float(z['eps']):g}); "
                 f"values capped at +-{cap:.0f} = eps / step", fontsize=8)
    _save(fig, "fig2-histograms.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="+", choices=["mnist", "fmnist", "hist"])
    args = ap.parse_args()
    for w in args.what:
        if w == "hist":
            hist()
        else:
            report(w)


if __name__ == "__main__":
    main()
