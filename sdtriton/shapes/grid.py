"""``sdtriton shapes-grid``: the README's picture grid, generated through a running server."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from sdtriton.client import StableDiffusionClient

# Eight prompts; the last two are held-out pairs the model never saw in training.
GRID_PROMPTS: tuple[str, ...] = (
    "a yellow star on a purple background",
    "a red circle on a white background",
    "a blue square on a yellow background",
    "a black triangle on an orange background",
    "a white cross on a red background",
    "an orange circle on a blue background",
    "a purple star on a green background",
    "a green cross on a black background",
)
_CELL = 128
_CAPTION_HEIGHT = 30


def make_grid(
    url: str, output: Path, *, prompts: tuple[str, ...] = GRID_PROMPTS, seed: int = 0, num_inference_steps: int = 20
) -> Path:
    """Generates one picture per prompt (dpmpp_2m, guidance 7.5) and writes a captioned 4x2 grid PNG."""
    with StableDiffusionClient(url) as client:
        result = client.generate(
            list(prompts),
            seed=[seed + i for i in range(len(prompts))],
            num_inference_steps=num_inference_steps,
            scheduler="dpmpp_2m",
            guidance_scale=7.5,
        )
    columns = 4
    rows = (len(prompts) + columns - 1) // columns
    grid = Image.new("RGB", (columns * _CELL, rows * (_CELL + _CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (prompt, image) in enumerate(zip(prompts, result.images, strict=True)):
        x, y = (index % columns) * _CELL, (index // columns) * (_CELL + _CAPTION_HEIGHT)
        grid.paste(image.resize((_CELL, _CELL), Image.NEAREST), (x, y))
        words = prompt.split(" on ")
        draw.text((x + 3, y + _CELL + 2), words[0], fill="black")
        if len(words) > 1:
            draw.text((x + 3, y + _CELL + 15), "on " + words[1].replace(" background", ""), fill="black")
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output)
    return output
