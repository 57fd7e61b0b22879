"""The synthetic world the ``shapes`` model draws: one axis-aligned shape on a plain background.

Fixed so that independent judges can score it: 64x64 RGB; circle, square, triangle (pointing up), star
(5 points, inner radius 0.45 of the outer), cross (plus sign, arm width a third of its span); span 30-70%
of the side, anywhere fully inside; eight palette colours; the background differs from the shape. Four
colour/shape pairs never appear in training, so the model must compose them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("orange", "triangle"), ("green", "cross"), ("white", "circle")}
)
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} background",
    "a {colour} {shape} against a {background} background",
    "{background} background with a {colour} {shape}",
)
MIN_SPAN_FRACTION = 0.3
MAX_SPAN_FRACTION = 0.7
STAR_INNER_RATIO = 0.45
CROSS_ARM_FRACTION = 1 / 3
_SUPERSAMPLING = 4


@dataclass(frozen=True)
class Scene:
    """One picture of the world."""

    colour: str
    shape: str
    background: str
    span: float  # pixels, the side of the shape's square box
    centre_x: float
    centre_y: float

    def caption(self, template_index: int = 0) -> str:
        return CAPTION_TEMPLATES[template_index].format(
            colour=self.colour, shape=self.shape, background=self.background
        )


def shape_polygons(shape: str, *, centre_x: float, centre_y: float, span: float) -> list[list[tuple[float, float]]]:
    """The shape as polygons (a circle as a fine polygon), in pixel coordinates."""
    half = span / 2
    if shape == "circle":
        points = 96
        return [
            [
                (
                    centre_x + half * math.cos(2 * math.pi * k / points),
                    centre_y + half * math.sin(2 * math.pi * k / points),
                )
                for k in range(points)
            ]
        ]
    if shape == "square":
        return [
            [
                (centre_x - half, centre_y - half),
                (centre_x + half, centre_y - half),
                (centre_x + half, centre_y + half),
                (centre_x - half, centre_y + half),
            ]
        ]
    if shape == "triangle":
        return [[(centre_x, centre_y - half), (centre_x + half, centre_y + half), (centre_x - half, centre_y + half)]]
    if shape == "star":
        star = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * STAR_INNER_RATIO
            angle = -math.pi / 2 + math.pi * k / 5
            star.append((centre_x + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
        return [star]
    if shape == "cross":
        arm = span * CROSS_ARM_FRACTION / 2
        return [
            [
                (centre_x - half, centre_y - arm),
                (centre_x + half, centre_y - arm),
                (centre_x + half, centre_y + arm),
                (centre_x - half, centre_y + arm),
            ],
            [
                (centre_x - arm, centre_y - half),
                (centre_x + arm, centre_y - half),
                (centre_x + arm, centre_y + half),
                (centre_x - arm, centre_y + half),
            ],
        ]
    raise ValueError(f"unknown shape {shape!r}")


def render_mask(shape: str, *, size: int, centre_x: float, centre_y: float, span: float) -> np.ndarray:
    """[size, size] float mask in 0..1 of the shape, antialiased by supersampling."""
    scale = _SUPERSAMPLING
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in shape_polygons(shape, centre_x=centre_x * scale, centre_y=centre_y * scale, span=span * scale):
        draw.polygon(polygon, fill=255)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def render(scene: Scene, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """[size, size, 3] uint8 picture of a scene."""
    mask = render_mask(scene.shape, size=size, centre_x=scene.centre_x, centre_y=scene.centre_y, span=scene.span)
    foreground = np.array(PALETTE[scene.colour], dtype=np.float32)
    background = np.array(PALETTE[scene.background], dtype=np.float32)
    pixels = background + mask[..., None] * (foreground - background)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def random_scene(rng: np.random.Generator, *, training: bool = True, size: int = IMAGE_SIZE) -> Scene:
    """A uniformly random scene; training scenes never show a held-out pair."""
    while True:
        colour = COLOURS[rng.integers(len(COLOURS))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        if not (training and (colour, shape) in HELD_OUT_PAIRS):
            break
    background = colour
    while background == colour:
        background = COLOURS[rng.integers(len(COLOURS))]
    span = float(rng.uniform(MIN_SPAN_FRACTION, MAX_SPAN_FRACTION)) * size
    centre_x = float(rng.uniform(span / 2, size - span / 2))
    centre_y = float(rng.uniform(span / 2, size - span / 2))
    return Scene(colour, shape, background, span, centre_x, centre_y)


@dataclass(frozen=True)
class PromptCase:
    """A prompt to score and what a correct picture of it shows."""

    prompt: str
    colour: str
    shape: str
    background: str

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT_PAIRS


def evaluation_prompts(count: int, *, seed: int = 0, held_out_fraction: float = 0.25) -> list[PromptCase]:
    """``count`` fixed prompts over the whole world; about ``held_out_fraction`` of them held-out pairs."""
    rng = np.random.default_rng(seed)
    held_out = sorted(HELD_OUT_PAIRS)
    cases = []
    for index in range(count):
        if rng.random() < held_out_fraction:
            colour, shape = held_out[rng.integers(len(held_out))]
        else:
            scene = random_scene(rng, training=True)
            colour, shape = scene.colour, scene.shape
        background = colour
        while background == colour:
            background = COLOURS[rng.integers(len(COLOURS))]
        template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
        cases.append(
            PromptCase(template.format(colour=colour, shape=shape, background=background), colour, shape, background)
        )
    return cases


def training_batches(*, batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, list[Scene]]]:
    """Endless deterministic batches: step ``k``'s batch depends only on (seed, k), so training resumes exactly."""
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        scenes = [random_scene(rng) for _ in range(batch_size)]
        yield np.stack([render(scene) for scene in scenes]), scenes
        step += 1
