"""The contract every command keeps on bad input (docs/formats.md, "Conventions"), as one check
the hostile-input modules (``test_hostile_*.py``) share:

exit code 2, exactly one ``error:`` line on stderr naming what is wrong (the file, and the row
where there is one), no traceback, and the workspace (inputs and outputs alike) byte for byte
as it was: nothing modified, nothing new.

A workspace is a temporary folder holding every input a case needs: a synth set, a split
manifest, a tiny trained run and a probability folder, copied from one session-wide build.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CliResult, run_cli


@dataclass(frozen=True)
class Case:
    """One hostile input: ``prepare(workspace)`` damages or adds inputs and returns the
    command line (``nerveseg`` omitted); the error line must contain every fragment (a
    fragment ``{ws}`` stands for the workspace path)."""

    name: str
    prepare: Callable[[Path], Sequence[str | Path]]
    fragments: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: folders as "dir", files by their SHA-256, links by target."""
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[key] = f"link:{path.readlink()}"
        elif path.is_dir():
            state[key] = "dir"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_refused(workspace: Path, args: Sequence[str | Path], *fragments: str) -> CliResult:
    """Run ``nerveseg ARGS`` and check the bad-input contract (module docstring)."""
    before = snapshot(workspace)
    result = run_cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        fragment = fragment.replace("{ws}", str(workspace))
        assert fragment in lines[0], (fragment, lines[0])
    after = snapshot(workspace)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not changed, f"inputs or outputs modified: {changed[:5]}"
    added = sorted(after.keys() - before.keys())
    assert not added, f"left behind: {added[:5]}"
    removed = sorted(before.keys() - after.keys())
    assert not removed, f"removed: {removed[:5]}"
    return result


def run_case(case: Case, workspace: Path) -> CliResult:
    return assert_refused(workspace, case.prepare(workspace), *case.fragments)


def make_workspace(base: Path, target: Path) -> Path:
    """A fresh copy of the session's base workspace (symlinks kept as links)."""
    shutil.copytree(base, target, symlinks=True)
    return target


# --------------------------------------------------------------------------------------------
# building cases: a command line with ``{ws}`` for the workspace, and setup steps that damage or
# add inputs first


Setup = Callable[[Path], None]


def case(name: str, *parts: str, setup: Setup | Sequence[Setup] = (),
         expect: Sequence[str] = ()) -> Case:
    """A case: run the setups, then ``nerveseg PARTS`` with ``{ws}`` the workspace."""
    setups = [setup] if callable(setup) else list(setup)

    def prepare(ws: Path) -> list[str]:
        for step in setups:
            step(ws)
        return [part.replace("{ws}", str(ws)) for part in parts]

    return Case(name, prepare, tuple(expect))


def write(rel: str, content: str | bytes = "keep me") -> Setup:
    """Write a file (its folders made as needed)."""
    def step(ws: Path) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return step


def remove(rel: str) -> Setup:
    def step(ws: Path) -> None:
        path = ws / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return step


def copy_tree(rel: str, to: str) -> Setup:
    """Copy a folder (its symbolic links kept as links)."""
    def step(ws: Path) -> None:
        shutil.copytree(ws / rel, ws / to, symlinks=True)
    return step


def cases(*items: Case) -> pytest.MarkDecorator:
    """``@cases(...)``: parametrise a test over hostile cases, named by ``Case.name``."""
    return pytest.mark.parametrize("case", items, ids=[c.name for c in items])
