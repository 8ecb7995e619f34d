"""The package layout (issue 29): imports go one way, each command's library lives in the
package of its help panel, the code map in docs/index.md names every module, and the tests'
folders are the package's."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import typer.main

import nerveseg_cli
from nerveseg_cli.cli import app

SOURCE = Path(nerveseg_cli.__file__).resolve().parent
REPO = SOURCE.parent
PACKAGE = "nerveseg_cli"

# The room of each help panel; shared modules (errors, classes ...) and io/ serve every stage.
PANEL_PACKAGES = {
    "Data": {"data"},
    "Training": {"train"},
    "Inference": {"inference"},
    "Submission and scoring": {"evaluation", "submission"},
    "Pipeline": {"workflow"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in SOURCE.rglob("*.py")}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules a file imports anywhere in it (in functions and TYPE_CHECKING
    blocks too): ``from a.b import c`` counts as ``a.b.c`` when that is a module, else ``a.b``."""
    found: set[str] = set()
    module = module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package
                anchor = module.split(".")
                if path.name != "__init__.py":
                    anchor = anchor[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    found = cycles(graph)
    detail = [" <-> ".join(component) + ": " + "; ".join(
        f"{a} imports {b}" for a in component for b in sorted(graph[a] & set(component)))
        for component in found]
    assert not found, "import circles:\n" + "\n".join(detail)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """Not vacuous: a planted circle through a third module is found, and only it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions() -> None:
    """The import graph reads function-level imports (the old circles hid there)."""
    graph = import_graph()
    # models/__init__ imports the smp architectures' module at the top, predict imports the
    # CRF inside a function
    assert f"{PACKAGE}.models.smp_models" in graph[f"{PACKAGE}.models"]
    assert f"{PACKAGE}.inference.crf" in graph[f"{PACKAGE}.inference.predict"]


def _commands() -> dict[str, tuple[str, str]]:
    """Each command: (its help panel, the name of its CLI module)."""
    found = {}
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        panel = getattr(command, "rich_help_panel", None)
        callback = command.callback
        assert panel and callback is not None, name
        found[name] = (panel, callback.__module__)
    return found


def test_each_command_finds_its_library_in_its_panels_package() -> None:
    """A newcomer goes from a command's help panel to its package: every command's CLI module
    calls into the panel's package."""
    modules = package_modules()
    commands = _commands()
    assert set(PANEL_PACKAGES) == {panel for panel, _ in commands.values()}
    for name, (panel, cli_module) in commands.items():
        imports = imported_modules(modules[cli_module], set(modules))
        stages = {module.split(".")[1] for module in imports if module.count(".") >= 2}
        assert stages & PANEL_PACKAGES[panel], (
            f"nerveseg {name} ({panel}): {cli_module} imports from {sorted(stages)}, none of "
            f"{sorted(PANEL_PACKAGES[panel])}")


def test_the_code_map_names_every_module() -> None:
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    code_map = index[index.index("## Code map"):]
    missing = []
    for path in package_modules().values():
        relative = path.relative_to(SOURCE).as_posix()
        if relative in ("__init__.py", "__main__.py") or relative.startswith("cli/"):
            continue  # the package itself; cli/ is one row (cli/<command>.py)
        stem = path.stem
        folder = path.parent.relative_to(SOURCE).as_posix()
        named = f"`{relative}`" in code_map or (
            folder == "models" and f"`{stem}`" in code_map) or (
            stem == "__init__" and f"`{folder}/`" in code_map)
        if not named:
            missing.append(relative)
    assert not missing, f"docs/index.md's code map does not name: {', '.join(missing)}"


def test_the_tests_folders_are_the_packages() -> None:
    """tests/<folder>/ exists only for a package of the same name."""
    tests = REPO / "tests"
    packages = {path.parent.name for path in SOURCE.glob("*/__init__.py")}
    folders = {path.parent.name for path in tests.glob("*/__init__.py")}
    assert folders and folders <= packages, sorted(folders - packages)
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in tests.glob("*/test_*.py"):
        by_folder[path.parent.name].append(path.name)
    assert set(by_folder) == folders, "a test folder without tests, or tests without __init__"
