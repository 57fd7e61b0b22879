"""Scores a picture of the shapes world without any learned model.

The background is the palette colour nearest the median border pixel; the foreground is every pixel far
from it; its colour is the palette colour nearest its core's median; its shape is the template (each
shape's own mask, cropped to its bounding box) that best matches the foreground's mask cropped the same
way, which is robust to blur and to the shape's size and position.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from sdtriton.shapes.world import COLOURS, PALETTE, SHAPES, render_mask

_TEMPLATE_SIZE = 32
_PALETTE_RGB = np.array([PALETTE[name] for name in COLOURS], dtype=np.float32)


@dataclass(frozen=True)
class Judgement:
    colour: str | None
    shape: str | None
    background: str


def _nearest_colour(rgb: np.ndarray, *, exclude: str | None = None) -> str:
    distances = np.linalg.norm(_PALETTE_RGB - rgb[None, :], axis=1)
    for index in np.argsort(distances):
        if COLOURS[index] != exclude:
            return COLOURS[index]
    raise AssertionError("palette has more than one colour")


def _crop_to_box(mask: np.ndarray) -> np.ndarray | None:
    rows = np.flatnonzero(mask.max(axis=1) > 0.5)
    cols = np.flatnonzero(mask.max(axis=0) > 0.5)
    if rows.size == 0 or cols.size == 0:
        return None
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    image = Image.fromarray((crop * 255).astype(np.uint8))
    return np.asarray(image.resize((_TEMPLATE_SIZE, _TEMPLATE_SIZE), Image.BILINEAR), dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def _templates() -> dict[str, np.ndarray]:
    size = 256
    templates = {}
    for shape in SHAPES:
        mask = render_mask(shape, size=size, centre_x=size / 2, centre_y=size / 2, span=size * 0.8)
        crop = _crop_to_box(mask)
        assert crop is not None
        templates[shape] = crop
    return templates


def judge(image: np.ndarray) -> Judgement:
    """Names the colour, shape and background of an [H, W, 3] uint8 picture (None where none is found)."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = _nearest_colour(np.median(border, axis=0))
    distance = np.linalg.norm(pixels - _PALETTE_RGB[COLOURS.index(background)], axis=2)
    peak = float(np.percentile(distance, 99.5))
    if peak < 40.0:  # nothing stands out from the background
        return Judgement(colour=None, shape=None, background=background)
    mask = np.clip((distance - 0.25 * peak) / (0.5 * peak), 0.0, 1.0)
    core = distance > 0.6 * peak
    colour = _nearest_colour(np.median(pixels[core], axis=0), exclude=background)
    crop = _crop_to_box(mask)
    if crop is None:
        return Judgement(colour=colour, shape=None, background=background)
    errors = {shape: float(np.mean(np.abs(crop - template))) for shape, template in _templates().items()}
    return Judgement(colour=colour, shape=min(errors, key=errors.__getitem__), background=background)
