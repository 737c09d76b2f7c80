"""The library's shape: no import cycles, commands on top, files a reader can hold in mind.

The import graph is built from the source text (every ``import`` statement, function-local ones
included), not from what happens to be imported at run time, so a back-edge hidden inside a
function is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scl_slt"

# The modules users run (``python -m scl_slt.<name>``): thin, and imported by no library module.
COMMANDS = {
    "scl_slt.train",
    "scl_slt.evaluate",
    "scl_slt.score",
    "scl_slt.pipeline",
    "scl_slt.report.__main__",
    "scl_slt.metrics",
    "scl_slt.trim_vocab",
    "scl_slt.pretrain_text",
    "scl_slt.diagnose",
}
MAX_LINES = 450
MAX_STAGE_LINES = 300


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its text."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import mod`` imports the module ``pkg.mod``; otherwise a name of ``pkg``
            targets = [f"{source}.{alias.name}" for alias in node.names]
            targets = [t if t in modules else source for t in targets]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` also runs ``a`` and ``a.b``; only the deepest module counts here
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    return edges


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_cycle_finder_finds_a_hidden_back_edge(tmp_path):
    """The checker itself: a function-local import that closes a circle is reported."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\nfrom .sub.b import f\n")
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.a", "pkg.sub.b"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.sub.b", "pkg.c"}
    (pkg / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_cycle_in_the_library():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_commands_are_imported_by_no_library_module():
    graph = import_graph()
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if name not in COMMANDS
        for target in targets & COMMANDS
    )
    assert not offenders, offenders


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_exists(name):
    assert name in module_files(), f"command module {name} is missing"


def test_no_file_over_the_size_limit():
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in module_files().items()
    }
    limit = {name: MAX_STAGE_LINES if ".stages." in name else MAX_LINES for name in sizes}
    too_long = {name: n for name, n in sizes.items() if n > limit[name]}
    assert not too_long, too_long


def test_every_config_ships_with_the_package():
    """A plain (non-editable) install carries exactly what pyproject's package-data names: every
    YAML under scl_slt/configs must match one of its patterns, or `pip install .` would run
    without it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["scl_slt"]
    configs = sorted((PACKAGE / "configs").rglob("*.yaml"))
    assert len(configs) > 10
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    assert [str(p.relative_to(PACKAGE)) for p in configs if p not in shipped] == []
    assert (PACKAGE.parent / "configs").resolve() == (PACKAGE / "configs").resolve()
