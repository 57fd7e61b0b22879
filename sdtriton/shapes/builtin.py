"""The built-in model name ``shapes``: committed fp16 weights made into a diffusers pipeline folder.

The tokenizer files (3.6 MB) are not committed: they are rebuilt from open_clip's CLIP vocabulary, so the
folder is assembled on first use in a cache directory keyed by the weights' content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sdtriton.tokenizer_files import build_clip_tokenizer

logger = logging.getLogger(__name__)

BUILTIN_NAME = "shapes"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_CACHE_ENV = "SDTRITON_CACHE_DIR"


def _cache_root() -> Path:
    configured = os.environ.get(_CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "sdtriton"


def _weights_digest(weights_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in weights_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(weights_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def materialize(weights_dir: Path = WEIGHTS_DIR, *, cache_root: Path | None = None) -> Path:
    """A diffusers pipeline folder of the committed weights plus the CLIP tokenizer; built once, then reused."""
    if not (weights_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"no trained 'shapes' weights in {weights_dir}")
    root = cache_root or _cache_root()
    target = root / f"shapes-{_weights_digest(weights_dir)}"
    if (target / "tokenizer").is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root))
    shutil.copytree(weights_dir, scratch / "pipeline")
    build_clip_tokenizer().save_pretrained(scratch / "pipeline" / "tokenizer")
    try:
        (scratch / "pipeline").rename(target)
    except OSError:  # another process won the race
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    logger.info("assembled the 'shapes' pipeline in %s", target)
    return target


def resolve_source(source: str | Path) -> str | Path:
    """Maps the built-in name to its folder; anything else is returned as given."""
    return materialize() if str(source) == BUILTIN_NAME else source
