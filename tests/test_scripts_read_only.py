"""scripts/ only draws figures and formats tables from stores (issue 18): an AST check.

No file in scripts/ may import an attack, defense, quantizer, diagnostic or training module (the
functions that compute results): experiments go through ``quantadv run`` configs (custom pieces
as config entries under configs/entries/), the other computations through ``quantadv
train|certify|diagnose`` (e.g. ``diagnose --gradients`` for paper 001's Fig. 2).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: modules whose functions compute results (attack, defend, quantize, diagnose, train)
FORBIDDEN = ("quantadv.attacks", "quantadv.defenses", "quantadv.quantize", "quantadv.diagnostics",
             "quantadv.models.training", "quantadv.models.binary", "quantadv.certify", "torchattacks")
#: names of such modules when imported from their package (``from quantadv import attacks``)
FORBIDDEN_NAMES = {"quantadv": {"attacks", "defenses", "quantize", "diagnostics", "certify"},
                   "quantadv.models": {"training", "binary", "train"}}
def offences(path: Path) -> list[str]:
    """The forbidden imports of one Python file, as 'line N: module'."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if a.name in FORBIDDEN_NAMES.get(node.module, ())]
        else:
            continue
        for name in names:
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                found.append(f"line {node.lineno}: {name}")
    return found


def test_scripts_do_not_compute_results():
    scripts = sorted(ROOT.glob("scripts/*.py"))
    assert scripts
    bad = {p.name: o for p in scripts if (o := offences(p))}
    assert not bad, f"scripts that call attack/defense/training code (use a config or entry): {bad}"


def test_the_check_sees_every_import_form(tmp_path):
    src = tmp_path / "s.py"
    src.write_text("import quantadv.attacks.pgd\nfrom quantadv import attacks, data\n"
                   "from quantadv.defenses import bpda\nfrom quantadv.models import training\n"
                   "def f():\n    import torchattacks\nfrom quantadv.experiments import load_results\n")
    assert [o.split(": ")[1] for o in offences(src)] == [
        "quantadv.attacks.pgd", "quantadv.attacks", "quantadv.defenses", "quantadv.models.training",
        "torchattacks"]
