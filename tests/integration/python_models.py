"""A model repository holding one Python model written by a test, for Triton behaviour shown with a model of its own."""

from __future__ import annotations

from pathlib import Path


def one_python_model(repository: Path, name: str, source: str, *, tensor: str) -> Path:
    """Writes the model ``name`` into ``repository`` (``config.pbtxt`` and ``1/model.py`` of ``source``): a Python
    model taking and giving one INT32 tensor ``tensor`` of shape [1], on one CPU instance. Returns ``repository``."""
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\n'
        'backend: "python"\n'
        "max_batch_size: 0\n"
        f'input [ {{ name: "{tensor}" data_type: TYPE_INT32 dims: [ 1 ] }} ]\n'
        f'output [ {{ name: "{tensor}" data_type: TYPE_INT32 dims: [ 1 ] }} ]\n'
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )
    (folder / "1" / "model.py").write_text(source)
    return repository
