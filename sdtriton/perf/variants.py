"""Engine variants of an exported repository: the same files, other engine limits in the pipeline's config.

The engine profile compares deployments of one export that differ in one knob (``max_running_images`` 8 or
1, a small ``max_pending_requests``). A variant is a copy of the repository (files of 1 MiB or more, the ONNX
weights, linked) whose ``pipeline/config.pbtxt`` parameters are changed: what ``sdtriton export`` renders
for those options, since the components' batch limits do not depend on a smaller value
(:attr:`sdtriton.export.configs.RenderOptions.component_max_batch_size`), which is checked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sdtriton import interface
from sdtriton.serving.engine import EngineLimits

_LINK_MIN_BYTES = 1 << 20
_PIPELINE_DIR = interface.PIPELINE_MODEL_NAME


def _copy_or_link(source: str, destination: str) -> None:
    path = Path(source)
    if path.stat().st_size >= _LINK_MIN_BYTES:
        Path(destination).symlink_to(path.resolve())
    else:
        shutil.copy2(source, destination)


def _pipeline_config_path(repository: Path) -> Path:
    from sdtriton.export.configs import CONFIG_FILE_NAME

    return repository / _PIPELINE_DIR / CONFIG_FILE_NAME


def engine_limits_of(repository: Path) -> EngineLimits:
    """The engine limits the repository's ``pipeline`` model runs with (its config's parameters)."""
    from sdtriton.export.configs import ENGINE_PARAMETERS, parse_config_text

    config = parse_config_text(_pipeline_config_path(repository).read_text())
    values = {}
    for name in ENGINE_PARAMETERS:
        if name in config.parameters:
            values[name] = int(config.parameters[name].string_value)
    return EngineLimits(**values)


def engine_variant(
    source: Path,
    destination: Path,
    *,
    max_running_images: int | None = None,
    max_pending_requests: int | None = None,
    caches_off: bool = False,
) -> Path:
    """A copy of ``source`` whose engine holds ``max_running_images`` / ``max_pending_requests`` (None: as is),
    with the engine's response and text-embedding caches off if ``caches_off``.

    Raises:
        FileExistsError: ``destination`` exists and is not empty.
        ValueError: a value below 1, or more running images than the components' batch limit holds.
    """
    from sdtriton.export.configs import CONFIG_FILE_NAME, config_text, parse_config_text

    limits = engine_limits_of(source)
    changes = {
        name: value
        for name, value in (("max_running_images", max_running_images), ("max_pending_requests", max_pending_requests))
        if value is not None
    }
    for name, value in changes.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if caches_off:
        changes |= {"response_cache_bytes": 0, "text_cache_entries": 0}
    if changes.get("max_running_images", 0) > limits.max_running_images:
        raise ValueError(
            f"max_running_images {changes['max_running_images']} exceeds the export's "
            f"{limits.max_running_images}: the components' batch limits were rendered for that; export again"
        )
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty")
    shutil.copytree(
        source.resolve(),
        destination,
        copy_function=_copy_or_link,
        ignore=shutil.ignore_patterns("__pycache__"),
        dirs_exist_ok=True,
    )
    path = _pipeline_config_path(destination)
    config = parse_config_text(path.read_text())
    for name, value in changes.items():
        config.parameters[name].string_value = str(value)
    path.write_text(config_text(config))
    if max_pending_requests is not None:
        # The entries refuse past the same limit themselves, before the hop to the engine (as an export sets them).
        for entry_name in (interface.ENTRY_MODEL_NAME, interface.STREAM_ENTRY_MODEL_NAME):
            entry_path = destination / entry_name / CONFIG_FILE_NAME
            entry = parse_config_text(entry_path.read_text())
            entry.parameters["max_pending_requests"].string_value = str(max_pending_requests)
            entry_path.write_text(config_text(entry))
    return destination
