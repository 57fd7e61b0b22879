"""The README's command table lists exactly the commands of ``sdtriton --help``, each with its one-line help.

A command added to the parser without a README row, a row left behind by a removed command, or a help text
changed on one side only fails here. The parser is built in process (no subprocess, no server).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sdtriton.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Command line"
# A row of the command table: | `sdtriton NAME` | help |
ROW = re.compile(r"^\| `sdtriton (?P<name>[a-z0-9-]+)` \| (?P<help>.+?) \|$")


def parser_commands() -> dict[str, str]:
    """Each subcommand of the CLI's parser and its ``help``, in the parser's order."""
    parser = build_parser()
    (subcommands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return {choice.dest: choice.help or "" for choice in subcommands._choices_actions}


def readme_rows(text: str) -> list[tuple[str, str]]:
    """(command, help) of every command-table row in the README's command-line section."""
    _, found, rest = text.partition(f"\n{SECTION}\n")
    assert found, f"README.md has no {SECTION!r} section"
    section = rest.split("\n## ", 1)[0]
    return [(match["name"], match["help"]) for match in map(ROW.match, section.splitlines()) if match]


def test_readme_command_table_matches_the_parser() -> None:
    rows = readme_rows(README.read_text())
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"README command table lists a command twice: {names}"
    commands = parser_commands()
    missing = sorted(set(commands) - set(names))
    extra = sorted(set(names) - set(commands))
    assert not missing, f"README.md's command table has no row for {missing}: add a row | `sdtriton NAME` | its help |"
    assert not extra, f"README.md's command table lists {extra}, which `sdtriton --help` does not"
    for name, help_text in rows:
        assert help_text == commands[name], f"README row of {name!r} says {help_text!r}; --help: {commands[name]!r}"
