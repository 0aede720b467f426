"""The package's layout as a newcomer relies on it: floors that follow the run, no import cycle,
no lower floor importing a higher one, modules of a readable size, one atomic-write helper.

Every ``import`` in kerasft/ is read with ``ast`` (module level and inside functions alike: a
lazy import is still a dependency), so the check needs no TensorFlow and runs in milliseconds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kerasft"

# Lowest first: a module may import its own floor and the floors below it, never one above.
FLOORS = (
    ("kerasft._version", "kerasft.errors", "kerasft.io", "kerasft.tf_logs"),
    ("kerasft.config",),
    ("kerasft.data",),
    ("kerasft.models",),
    ("kerasft.training",),
    ("kerasft.evaluation",),
    ("kerasft.export",),
    ("kerasft.serving",),
    ("kerasft.validate", "kerasft.api", "kerasft.plan", "kerasft.search", "kerasft.tagger"),
    ("kerasft.cli", "kerasft"),
)
MAX_LINES = 500
LONG_REASON = "Why this module is long:"
ATOMIC_HELPER = "kerasft.io"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kerasft modules `path` imports (``from kerasft.x import y`` counts ``kerasft.x.y``
    when y is a module, else ``kerasft.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "kerasft" or n.startswith("kerasft."))
    return found


def _floor(module: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "kerasft" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{module} is on no floor of FLOORS: add it there"
    return best[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_module_is_on_a_floor():
    for name in _modules():
        _floor(name)


def test_no_lower_floor_imports_a_higher_one():
    wrong = []
    for name, targets in _graph().items():
        for target in targets:
            if target == "kerasft" and name != "kerasft":
                wrong.append(f"{name} imports the package root (import from its module instead)")
            elif _floor(target) > _floor(name):
                wrong.append(f"{name} (floor {_floor(name)}) imports {target} "
                             f"(floor {_floor(target)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_there_is_no_import_cycle():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_long_modules_say_why_at_their_top():
    unexplained = []
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{name}: {lines} lines and no '{LONG_REASON}' in its docstring")
    assert not unexplained, "\n".join(unexplained)


def test_every_package_says_what_it_owns_and_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import:" in doc, f"{init}: a docstring saying what it owns and 'May import:'"


@pytest.mark.parametrize("call", ["os.replace", "os.rename", "tempfile.mkstemp"])
def test_files_are_published_only_through_the_atomic_helper(call):
    attr = call.split(".")[1]
    users = []
    for name, path in _modules().items():
        if name == ATOMIC_HELPER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr == attr
                    and isinstance(node.value, ast.Name) and node.value.id == call.split(".")[0]):
                users.append(f"{name}:{node.lineno}")
    assert not users, f"{call} outside {ATOMIC_HELPER}: {', '.join(users)}"


def test_the_walker_sees_a_lazy_import_and_an_upward_one(tmp_path, monkeypatch):
    """The check itself can fail: a function-level import from a lower floor upward is found."""
    fake = tmp_path / "kerasft"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text('"""May import: nothing."""\n')
    (fake / "data" / "x.py").write_text("def f():\n    from kerasft.api import FineTuner\n")
    (fake / "api.py").write_text("import kerasft.data.x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = _graph()
    assert graph["kerasft.data.x"] == {"kerasft.api"}
    with pytest.raises(AssertionError, match="kerasft.data.x .floor 2. imports kerasft.api"):
        test_no_lower_floor_imports_a_higher_one()
    with pytest.raises(AssertionError, match="kerasft.api -> kerasft.data.x -> kerasft.api"):
        test_there_is_no_import_cycle()
