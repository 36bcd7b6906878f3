"""The engine's modules import one way: no circle through the Python API and the generation core.

The graph is built from the source files (every import statement, those inside functions and under
TYPE_CHECKING too), so an import hidden in a function body still counts as an edge.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import medgen

PACKAGE_DIR = Path(medgen.__file__).parent
WATCHED = ("medgen.api", "medgen.generate.batched", "medgen.generate.inpaint", "medgen.generate.models")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """medgen module -> the medgen modules it imports anywhere in its source."""
    files = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from medgen.generate import inpaint" imports the module medgen.generate.inpaint
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # "import medgen.generate.models.x" -> the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_imports_inside_functions():
    """A check of the checker: api imports the model loader only inside Inpainter.model."""
    graph = import_graph()
    assert "medgen.generate.models" in graph["medgen.api"]
    assert "medgen.generate.inpaint" in graph["medgen.generate.batched"]


@pytest.mark.parametrize("first, second", [("medgen.api", "medgen.generate.batched"),
                                           ("medgen.generate.inpaint", "medgen.generate.models")])
def test_no_direct_import_circle(first, second):
    graph = import_graph()
    assert not (second in graph[first] and first in graph[second]), f"{first} and {second} import each other"


def test_no_circle_among_the_api_and_the_generation_core():
    """No path leads from one of these modules back to itself through another of them, directly or
    through any other medgen module."""
    graph = import_graph()
    circles = [(a, b) for a, b in itertools.permutations(WATCHED, 2)
               if b in reachable(graph, a) and a in reachable(graph, b)]
    assert circles == []
