"""The import graph of cft/ has no circle: every import, at module level or inside a function, runs
down towards leaves (cft.errors, cft.config.types), never back up to a module that imports it."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys

from helpers import REPO

PACKAGE = REPO / "cft"


def module_files() -> dict[str, object]:
    """{dotted module name: its path} of every module in cft/ (a package is its __init__.py)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """{module: the cft modules it imports}; `from a.b import c` counts as a.b.c when c is a module."""
    mods = module_files()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def test_import_graph_finds_an_edge_it_should():
    """The check sees both kinds of import (else a circle could hide from it)."""
    graph = import_graph()
    assert "cft.config.types" in graph["cft.analysis.config"]  # module level
    assert "cft.analysis.config" in graph["cft.config.schema"]  # inside check_analyze


def test_no_import_circle_in_cft():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle in cft/: {' -> '.join(exc.args[1])}") from None
    assert order.index("cft.config.types") < order.index("cft.config.schema")


def test_schemas_import_fresh_in_either_order():
    """A schema kept beside its code imports first in a fresh interpreter, before cft.config.schema."""
    code = "import cft.analysis.config, cft.evaluation.config, cft.config.schema as s; s.check_analyze({})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _names_outside_annotations(node: ast.AST) -> set[str]:
    """The names a function body reads at run time (annotations are strings under `from __future__ import
    annotations`, so a name used only there needs no import)."""
    skip = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip.update(id(a) for arg in [*n.args.args, *n.args.kwonlyargs, *n.args.posonlyargs] if (a := arg.annotation))
            if n.returns is not None:
                skip.add(id(n.returns))
        elif isinstance(n, ast.AnnAssign):
            skip.add(id(n.annotation))
    skipped = {id(x) for s in list(skip) for x in ast.walk(next(n for n in ast.walk(node) if id(n) == s))}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in skipped}


def test_modules_that_import_a_name_only_for_typing_import_it_where_they_use_it():
    """A module that imports torch (or another heavy name) only under TYPE_CHECKING, so that config checks
    stay light, must import it inside each function that uses it at run time: else the first call raises
    NameError, which ruff does not see (a merge once left `precision` in cft/models/checkpoints.py so)."""
    bad = []
    for name, path in module_files().items():
        tree = ast.parse(path.read_text())
        typing_only = {
            alias.asname or alias.name.split(".")[0]
            for node in tree.body
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for imp in node.body
            if isinstance(imp, (ast.Import, ast.ImportFrom))
            for alias in imp.names
        }
        top_level = {
            alias.asname or alias.name.split(".")[0]
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        typing_only -= top_level
        if not typing_only:
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imported = {
                alias.asname or alias.name.split(".")[0]
                for node in ast.walk(fn)
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names
            }
            for missing in sorted((_names_outside_annotations(fn) & typing_only) - imported):
                bad.append(f"{name}.{fn.name} uses {missing} without importing it")
    assert not bad, bad
