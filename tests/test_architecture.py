"""The package's import graph: what may import the training loop, and no import cycles.

Every ``import`` / ``from ... import`` statement counts, module level or inside a function (a lazy
import still ties two modules together). Parsed with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the entry points that run a training or a pretraining, and the one name each may import
ENTRY_POINTS = {"lps/cli.py", "lps/launch/job.py"}
LOOP_MODULES = {"lps.trainer": {"train"}, "lps.pretrain": {"pretrain"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, set[str]]]:
    """``(imported module, names)`` of every import statement in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, set()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, {a.name for a in node.names}))
    return out


def _sources(*folders: str) -> list[Path]:
    files = []
    for folder in folders:
        files += sorted((REPO / folder).rglob("*.py"))
    files += sorted((REPO / "workflow").rglob("*.smk")) if "workflow" in folders else []
    return files


def _smk_imports(path: Path) -> list[tuple[str, set[str]]]:
    """Import statements of a Snakemake file (its Python lines; rule bodies are not Python)."""
    out = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith(("import ", "from ")):
            try:
                out.extend(_imports_of_text(s))
            except SyntaxError:
                continue
    return out


def _imports_of_text(text: str) -> list[tuple[str, set[str]]]:
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out.extend((a.name, set()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", {a.name for a in node.names}))
    return out


def _graph() -> dict[str, set[str]]:
    """lps module -> the lps modules it imports (``from lps import losses`` counts as ``lps.losses``)."""
    mods = {_module_name(p): p for p in (REPO / "lps").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for mod, names in _imports(path):
            if not mod.startswith("lps"):
                continue
            subs = {f"{mod}.{n}" for n in names if f"{mod}.{n}" in mods}
            edges |= subs or ({mod} if mod in mods else set())
        if path.name == "__init__.py" and any(m == "pkgutil" for m, _ in _imports(path)):
            # a registry package imports every module in it (lps.methods)
            edges |= {m for m in mods if m.rsplit(".", 1)[0] == name}
        graph[name] = edges - {name}
    return graph


def test_only_the_entry_points_import_the_training_loop():
    """Folder names, models, embeddings and batching live outside the loop: everything else (the
    workflow planner, the launcher's bookkeeping, figures, benchmarks) names a run without importing
    ``lps.trainer`` or ``lps.pretrain``; the entry points import only the function that runs."""
    offenders = []
    for path in _sources("lps", "benchmarks", "workflow"):
        rel = str(path.relative_to(REPO))
        found = _smk_imports(path) if path.suffix == ".smk" else _imports(path)
        for mod, names in found:
            target = mod if mod in LOOP_MODULES else next(
                (f"lps.{n}" for n in names if mod == "lps" and f"lps.{n}" in LOOP_MODULES), None)
            if target is None or rel in (f"{t.replace('.', '/')}.py" for t in LOOP_MODULES):
                continue
            if rel not in ENTRY_POINTS or not names or not names <= LOOP_MODULES[target]:
                offenders.append(f"{rel}: imports {sorted(names) or ''} from {target}")
    assert not offenders, offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_config_and_methods():
    graph = _graph()
    assert "lps.config" in graph and "lps.methods.lps" in graph
    bad = [c for c in _cycles(graph) if "lps.config" in c and any(m.startswith("lps.methods") for m in c)]
    assert not bad, bad
    # the methods take their validation helper from their own base, not from the config
    assert not [m for m in graph if m.startswith("lps.methods") and "lps.config" in graph[m]]


def test_the_package_has_no_import_cycle():
    """The method registry's package imports every method module; a method module imports
    ``lps.methods.base``, not the package, so that is no cycle."""
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("source,expected", [
    ("from lps.trainer import train", [("lps.trainer", {"train"})]),
    ("from lps import trainer", [("lps", {"trainer"})]),
    ("import lps.pretrain", [("lps.pretrain", set())]),
])
def test_import_parser(source, expected):
    assert _imports_of_text(source) == expected


def test_results_and_config_do_not_import_the_methods_they_describe():
    """The result schema and the config are read by tools that have no use for torch models: the
    result row is given the method's ``Params`` by the trainer; the config asks the registry only
    to resolve ``method.*`` (a one-way edge)."""
    graph = _graph()
    assert not {m for m in graph["lps.results"] if m.startswith("lps.methods")}
    reach, todo = set(), ["lps.methods.lps"]
    while todo:
        for m in graph[todo.pop()]:
            if m not in reach:
                reach.add(m)
                todo.append(m)
    assert "lps.config" not in reach and "lps.trainer" not in reach
