"""Every ``nerveseg COMMAND --option`` the documentation shows exists: in the code blocks of
docs/*.md and README.md, and anywhere in examples/*.sh (comments included). Command lines
are joined across backslash continuations and cut at shell separators; each subcommand must be
a command of the app, and each ``--option`` after it one of that command's options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from nerveseg_cli.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
SCRIPTS = [REPO / "examples" / "kaggle.sh", REPO / "examples" / "multiclass.sh"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
# `nerveseg` as a program name: not nerveseg_cli, nerveseg-demo, nerveseg.json ...
INVOCATION = re.compile(r"(?<![\w./-])nerveseg((?:\s+--?[a-z][\w-]*)*)\s+([a-z][a-z-]*)\b"
                        r"(?![\w./])")
# where one command ends: a pipe, a list operator, a background &, a subshell, a comment
SEPARATOR = re.compile(r"\|\||&&|;|\s#\s|(?<![<>&])&(?!&)|\$\(|\)|\|\s*(?!-)(?=\S)")
OPTION = re.compile(r"(?<![\w$-])(--[a-z][a-z0-9-]*)")


@dataclass(frozen=True)
class Invocation:
    where: str
    command: str
    options: tuple[str, ...]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, with the number of the first line."""
    lines, start, buffer = [], 0, ""
    for number, line in enumerate(text.splitlines(), start=1):
        if not buffer:
            start = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        lines.append((start, buffer + line))
        buffer = ""
    if buffer:
        lines.append((start, buffer))
    return lines


def invocations(path: Path) -> list[Invocation]:
    """Every ``nerveseg ...`` command line of a doc's code blocks, or of a whole script."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        blocks = [(text[: m.start(1)].count("\n"), m.group(1)) for m in FENCE.finditer(text)]
    else:
        blocks = [(0, text)]
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for offset, block in blocks:
        for number, line in _logical_lines(block):
            line = re.sub(r"^\s*#+\s?", " ", line)  # a whole-line comment may show a command
            for match in INVOCATION.finditer(line):
                rest = line[match.end():]
                cut = SEPARATOR.search(rest)
                tail = match.group(1) + " " + (rest[: cut.start()] if cut else rest)
                found.append(Invocation(f"{name}:{offset + number}",
                                        match.group(2), tuple(OPTION.findall(tail))))
    return found


def _commands() -> dict[str, Any]:
    """The app's click commands by name (typer ships its own click, so no isinstance)."""
    return dict(typer.main.get_command(app).commands)


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            names.update(n for n in (*param.opts, *param.secondary_opts) if n.startswith("--"))
    return names


GLOBAL_OPTIONS = {"--version", "--debug", "--help"}


def test_the_parser_reads_continuations_comments_and_separators(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text('nerveseg --debug score "$a" b --by subject \\\n    --out c | tee log\n'
                      "# rerun: nerveseg train --resume RUN\n"
                      'x=$(nerveseg recipes --json) && nerveseg demo --overwrite & wait\n'
                      "cp nerveseg-demo/data x; python -m nerveseg_cli --version\n")
    found = [(i.command, i.options) for i in invocations(script)]
    assert found == [("score", ("--debug", "--by", "--out")), ("train", ("--resume",)),
                     ("recipes", ("--json",)), ("demo", ("--overwrite",))]


@pytest.mark.parametrize("path", DOCS + SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_and_options_exist(path: Path) -> None:
    commands = _commands()
    problems = []
    for item in invocations(path):
        if item.command not in commands:
            problems.append(f"{item.where}: no command {item.command!r}")
            continue
        known = _options(commands[item.command]) | GLOBAL_OPTIONS
        problems += [f"{item.where}: nerveseg {item.command} has no option {option}"
                     for option in item.options if option not in known]
    assert not problems, "\n".join(problems)


def test_every_command_has_a_page_and_a_row_in_the_index() -> None:
    index = (REPO / "docs" / "index.md").read_text(encoding="utf-8")
    for name in _commands():
        assert (REPO / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
        assert f"`{name}`" in index, f"docs/index.md does not list {name}"


def test_the_docs_and_the_script_show_commands() -> None:
    """The checks above are not vacuous: the pages and the script do name commands."""
    named = {i.command for path in DOCS + SCRIPTS for i in invocations(path)}
    assert set(_commands()) <= named
    script = {i.command for i in invocations(SCRIPTS[0])}
    assert {"dedupe", "split", "train", "predict", "ensemble", "crf", "score",
            "rle-encode"} <= script


def test_every_option_is_on_its_commands_page() -> None:
    """Each command's page names every one of its options (docs/recipes.md for `recipes`)."""
    missing = []
    for name, command in _commands().items():
        page = (REPO / "docs" / f"{name}.md").read_text(encoding="utf-8")
        missing += [f"docs/{name}.md lacks {option}" for option in sorted(_options(command))
                    if option != "--help" and option not in page]
    assert not missing, "\n".join(missing)
