"""Helpers shared by the figure scripts: matplotlib set-up, saving a PNG, Markdown tables."""

from __future__ import annotations

from pathlib import Path

from quantadv.experiments.tables import markdown

ROOT = Path(__file__).resolve().parents[1]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def save(fig, path: Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` (PNG without a software tag, so reruns give the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    print(f"wrote {path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path}")


def table(rows: list[list[str]], header: list[str], numeric: bool = True) -> str:
    """Markdown table of string cells; ``numeric`` right-aligns every column but the first."""
    return markdown([dict(enumerate(r)) for r in rows], [(i, h, "s" if numeric and i else "")
                                                          for i, h in enumerate(header)])
