"""``sdtriton export --backend tensorrt --dry-run`` as the tests read it: each model's trtexec line and its shapes."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from sdtriton import cli


def dry_run(capsys: pytest.CaptureFixture[str], source: Path, *extra: str) -> dict[str, list[str]]:
    """Runs ``sdtriton export --backend tensorrt --dry-run`` and returns each model's trtexec line, split."""
    assert cli.main(["export", str(source), "--output", "/srv/repo", "--backend", "tensorrt", "--dry-run", *extra]) == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.strip().startswith("trtexec")]
    return {Path(next(a for a in line if a.startswith("--saveEngine="))).parts[-3]: line for line in lines}


def profile_shapes(command: list[str], which: str) -> dict[str, str]:
    """Input name -> shape text of a trtexec line's ``--{which}Shapes``."""
    value = next(arg for arg in command if arg.startswith(f"--{which}Shapes="))
    return dict(entry.split(":") for entry in value.split("=", 1)[1].split(","))
