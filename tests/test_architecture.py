"""The package's import contract: one-way imports, and Ray and torch only where they belong.

Read from the source (every ``import`` statement, at module level or inside a
function; ``if TYPE_CHECKING:`` blocks excepted, as they never run) and checked
for real in fresh interpreters: the spec, the data, the results and their review
import neither torch nor Ray, and ``validate`` works where importing Ray (or
torch) fails.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtl_search"
ROOT = PACKAGE.parent

#: The modules that may import Ray: the search and what runs inside or beside it on Ray.
RAY_MODULES = {"mtl_search.ray_session", "mtl_search.search", "mtl_search.scheduler", "mtl_search.recorder",
               "mtl_search.ray_train", "mtl_search.ray_tasks", "mtl_search.jobs",
               "mtl_search.tune_state"}
#: Modules that, with everything they import, must load neither torch nor Ray: what `validate`, the spec,
#: the data and reviewing results need.
LIGHT_MODULES = ["mtl_search.config", "mtl_search.spec_file", "mtl_search.domain", "mtl_search.schemes",
                 "mtl_search.data", "mtl_search.source", "mtl_search.encoding", "mtl_search.datasets",
                 "mtl_search.metrics", "mtl_search.grouping", "mtl_search.selection", "mtl_search.networks_csv",
                 "mtl_search.baselines", "mtl_search.trial", "mtl_search.storage", "mtl_search.results",
                 "mtl_search.leaderboard", "mtl_search.review", "mtl_search.tables", "mtl_search.plots",
                 "mtl_search.report", "mtl_search.progress", "mtl_search.cli", "mtl_search.fingerprint"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports when it runs (names as written; ``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


IMPORTS = {name: imported(path) for name, path in MODULES.items()}


def package_edges(name: str) -> set[str]:
    """The package modules ``name`` imports (``from mtl_search import storage`` is an edge to storage)."""
    return {target for target in IMPORTS[name] if target in MODULES and target not in ("mtl_search", name)}


def find_cycle() -> list[str] | None:
    """A cycle of the package's import graph as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(package_edges(node)):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(MODULES):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch):
    # The check above can fail: give config an import of leaderboard, which imports config.
    monkeypatch.setitem(IMPORTS, "mtl_search.config", IMPORTS["mtl_search.config"] | {"mtl_search.leaderboard"})
    cycle = find_cycle()
    assert cycle is not None and cycle[0] == cycle[-1] and "mtl_search.config" in cycle


def test_ray_is_imported_only_by_the_ray_side_modules():
    importing = {name for name, names in IMPORTS.items() if any(n == "ray" or n.startswith("ray.") for n in names)}
    assert importing == RAY_MODULES, f"unexpected: {sorted(importing - RAY_MODULES)}; " \
                                     f"no longer importing Ray: {sorted(RAY_MODULES - importing)}"


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_reach_no_torch_and_no_ray_in_the_graph(module: str):
    seen, stack = set(), [module]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        heavy = sorted(n for n in IMPORTS[name] if n.split(".")[0] in ("torch", "ray"))
        assert not heavy, f"{module} reaches {name}, which imports {heavy}"
        if name != "mtl_search.cli":  # the CLI imports each command's modules inside that command only
            stack.extend(package_edges(name))


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_light_modules_load_neither_torch_nor_ray_when_imported():
    done = run_python(f"""
        import importlib, sys
        for name in {LIGHT_MODULES!r}:
            importlib.import_module(name)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray"))
        print(heavy[:5])
        sys.exit(1 if heavy else 0)
    """)
    assert done.returncode == 0, done.stdout + done.stderr


BLOCK = """
    import importlib.abc, runpy, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "torch"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    sys.argv = ["mtl_search", *sys.argv[1:]]
    runpy.run_module("mtl_search", run_name="__main__")
"""


def test_validate_works_where_ray_and_torch_cannot_be_imported():
    done = run_python(BLOCK, "validate", "search_spaces/tabular.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spec and data are valid" in done.stdout and "candidate groups (exhaustive): 31" in done.stdout


def test_the_block_is_real():
    # The same interpreter set-up does refuse a command that needs Ray: the test above proves something.
    done = run_python(BLOCK, "run", "search_spaces/tabular.yaml", "--output", "/nonexistent-dir/x")
    assert done.returncode != 0 and "blocked in this test" in done.stdout + done.stderr
