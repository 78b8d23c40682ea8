"""scripts/ only draws figures and formats tables from stores (issue 18): an AST check.

No file in scripts/ may import an attack, defense, quantizer, diagnostic or training module (the
functions that compute results): experiments go through ``quantadv run`` configs (custom pieces
as config entries under configs/entries/), the other computations through ``quantadv
train|certify|diagnose``. The scripts listed in PENDING still run their own computations and are
to be converted; the list is checked both ways, so converting a script means deleting its name.
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
#: scripts that still compute (follow-ups of issue 18), with what they run
PENDING = {
    "paper001_figures.py": "the quantized-gradient histogram (Fig. 2)",
}


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
    bad = {p.name: offences(p) for p in scripts}
    new = {name: o for name, o in bad.items() if o and name not in PENDING}
    assert not new, f"scripts that call attack/defense/training code (use a config or entry): {new}"
    converted = [name for name in PENDING if not bad.get(name)]
    assert not converted, f"remove from PENDING (no longer computing, or deleted): {converted}"


def test_the_check_sees_every_import_form(tmp_path):
    src = tmp_path / "s.py"
    src.write_text("import quantadv.attacks.pgd\nfrom quantadv import attacks, data\n"
                   "from quantadv.defenses import bpda\nfrom quantadv.models import training\n"
                   "def f():\n    import torchattacks\nfrom quantadv.experiments import load_results\n")
    assert [o.split(": ")[1] for o in offences(src)] == [
        "quantadv.attacks.pgd", "quantadv.attacks", "quantadv.defenses", "quantadv.models.training",
        "torchattacks"]
