"""The package's shape: public names, lazy imports, and an import graph without cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gswfast as gsw

PACKAGE = Path(gsw.__file__).parent


def _fresh(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_importing_ops_loads_no_model_layer():
    code = "import sys, gswfast.ops; print(' '.join(sorted(m for m in sys.modules if m.startswith('gswfast'))))"
    loaded = set(_fresh(code).split())
    assert loaded == {
        "gswfast",
        "gswfast._C",
        "gswfast._build_info",
        "gswfast._extension",
        "gswfast.ops",
    }


def test_importing_the_package_loads_neither_torch_nor_the_extension():
    code = "import sys, gswfast; print(' '.join(sorted(m for m in sys.modules if m.startswith(('gswfast', 'torch')))))"
    assert _fresh(code).split() == ["gswfast"]


def test_the_extension_loads_on_first_use():
    code = (
        "import sys, gswfast as gsw\n"
        "assert isinstance(gsw.build_info(), dict) and isinstance(gsw.cuda_available(), bool)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('gswfast'))))"
    )
    assert set(_fresh(code).split()) == {
        "gswfast",
        "gswfast._C",
        "gswfast._build_info",
        "gswfast._extension",
    }


def test_every_public_name_resolves_and_is_listed():
    code = (
        "import gswfast as gsw, gswfast.explain, gswfast.lime, types\n"
        "assert callable(gsw.explain) and callable(gsw.lime), (gsw.explain, gsw.lime)\n"
        "for name in gsw.__all__: getattr(gsw, name)\n"
        "assert isinstance(gsw.metrics, types.ModuleType) and isinstance(gsw.attribution, types.ModuleType)\n"
        "print(' '.join(dir(gsw)))"
    )
    listed = set(_fresh(code).split())
    assert set(gsw.__all__) <= listed
    assert {
        "explain",
        "lime",
        "occlusion",
        "kernel_shap",
        "rise",
        "slic",
        "metrics",
        "segment_pool",
        "paint",
        "Explainer",
        "Explanation",
        "Segmentation",
        "attribute",
        "METHODS",
        "build_info",
        "__version__",
    } <= listed
    assert not {"importlib", "sys", "types", "Any", "annotations"} & listed
    assert gsw.slic.__module__ == "gswfast.segmentation"
    assert gsw.explain.__module__ == "gswfast.explain"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """gswfast module -> the gswfast modules it imports, anywhere in the file (function-level
    imports included: they hide a cycle, they do not remove it), except under ``if
    TYPE_CHECKING:``, which only type checkers run."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    # Built, not in the source tree (an editable install keeps them in its build folder).
    compiled = {f"gswfast.{p.name.split('.')[0]}" for p in PACKAGE.glob("*.so")} | {
        "gswfast._C",
        "gswfast._build_info",
    }
    graph: dict[str, set[str]] = {name: set() for name in compiled}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for statement in node.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    module = f"{base}.{alias.name}"
                    targets.add(module if module in files or module in compiled else base)
        graph[name] = {t for t in targets if (t in files or t in compiled) and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    graph = _import_graph()
    assert {"gswfast.ops", "gswfast.explain", "gswfast.video.stream", "gswfast.checks"} <= set(
        graph
    )
    assert "gswfast.explain" in graph["gswfast.lime"]  # the parser sees imports
    assert {"gswfast.perturb", "gswfast.lime"} <= graph["gswfast.regions"]
    assert {"gswfast.cli", "gswfast.dataset", "gswfast.models"} <= set(graph)
    assert _cycle(graph) is None


def test_ops_imports_nothing_above_it():
    graph = _import_graph()
    assert graph["gswfast.ops"] <= {"gswfast._extension", "gswfast._C"}
    assert graph["gswfast._extension"] <= {"gswfast._C", "gswfast._build_info"}
    assert graph["gswfast"] == set()  # every public name is imported on first use
    assert graph["gswfast.options"] == set()  # the command's fast option checks: no torch


def test_type_checkers_see_every_public_name():
    # gswfast/__init__.py names its public API twice: _LAZY (loaded on first use) and the
    # TYPE_CHECKING imports (what users' type checkers see). They must list the same names.

    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    )
    typed = {alias.asname or alias.name for n in block.body for alias in n.names}
    assert typed == set(gsw._LAZY)
