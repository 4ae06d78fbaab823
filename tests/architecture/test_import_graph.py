"""The package's layers, checked on its source: no import cycle, no upward arrow.

Every room (sub-package or top-level module) sits in one layer and imports only from its own
layer or the layers below. Imports under ``if TYPE_CHECKING:`` are annotations, never run,
and are skipped; lazy imports inside functions count. The deprecated aliases of
:mod:`perturbprobe._deprecated` import by name at run time and so draw no arrow.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "perturbprobe"

#: bottom to top; docs/architecture.md draws the same picture
LAYERS: list[set[str]] = [
    {"errors", "_version", "_numerics", "_io", "_deprecated", "distributed"},
    {"llm", "calibration"},
    {"data"},
    {"features"},
    {"probes"},
    {"bundles"},
    {"training"},
    {"decoding"},
    {"serve", "demo"},
    {"cli", "__main__", "__init__"},
]
LAYER_OF = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _runtime_imports(tree: ast.Module):
    """ImportFrom / Import nodes outside ``if TYPE_CHECKING:`` blocks."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports at run time."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_every_room_has_a_layer():
    rooms = {_room(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms - set(LAYER_OF) == set(), "add the new room to LAYERS (and the architecture doc)"
    assert set(LAYER_OF) - rooms == set(), "a room in LAYERS no longer exists"


def test_no_import_cycle_between_modules():
    # a package's __init__ re-exports its modules, so cycles are checked between modules
    graph = import_graph()
    modules = {m: {t for t in ts if not _is_package(t)} for m, ts in graph.items()}
    assert _cycles({m: ts for m, ts in modules.items() if not _is_package(m)}) == []


def test_no_upward_arrow():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if LAYER_OF[_room(target)] > LAYER_OF[_room(module)]
    )
    assert upward == []


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..probes import Probe\n", {"perturbprobe.probes"}),
        ("if TYPE_CHECKING:\n    from ..bundles import Scorer\n", set()),
        (
            "def f():\n    from ..bundles import scorer\n",
            {"perturbprobe.bundles", "perturbprobe.bundles.scorer"},
        ),
    ],
)
def test_the_checker_sees_lazy_imports_and_skips_annotations(
    tmp_path, monkeypatch, source, expected
):
    """The checker itself: a lazy import counts, a TYPE_CHECKING one does not."""
    package = tmp_path / "perturbprobe"
    for room in ("decoding", "probes", "bundles"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "bundles" / "scorer.py").write_text("")
    (package / "decoding" / "guided.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_graph()["perturbprobe.decoding.guided"] == expected
