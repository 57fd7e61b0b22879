"""What the family tests share: tiny pipeline folders made by ``sdtriton make-tiny``, their file digests, and the
pipeline config export reads from one."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdtriton import cli
from sdtriton.export.repository import load_source_pipeline, pipeline_config_of
from sdtriton.pipeline_config import PipelineConfig


def make_tiny_folders(root: Path, runs: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """``sdtriton make-tiny root/NAME ARGUMENTS...`` for each (NAME, ARGUMENTS) of ``runs``; NAME -> its folder."""
    for name, arguments in runs.items():
        assert cli.main(["make-tiny", str(root / name), *arguments]) == 0
    return {name: root / name for name in runs}


def file_digests(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``directory``."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def config_of(folder: Path, **options: Any) -> PipelineConfig:
    """The pipeline config export derives from a diffusers folder (configs only, no weights loaded)."""
    return pipeline_config_of(load_source_pipeline(folder, weights=False), **options)
