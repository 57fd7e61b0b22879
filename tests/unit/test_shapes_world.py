"""The shapes world and its judge: deterministic data, held-out pairs kept out, a judge that is right."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from sdtriton.shapes.judge import judge
from sdtriton.shapes.world import (
    CAPTION_TEMPLATES,
    HELD_OUT_PAIRS,
    PALETTE,
    evaluation_prompts,
    random_scene,
    render,
    training_batches,
)


def test_training_batches_are_deterministic_and_resumable() -> None:
    first = training_batches(batch_size=4, seed=3)
    next(first)
    second_batch, second_scenes = next(first)
    resumed_batch, resumed_scenes = next(training_batches(batch_size=4, seed=3, start_step=1))
    assert np.array_equal(second_batch, resumed_batch)
    assert second_scenes == resumed_scenes


def test_training_never_shows_a_held_out_pair() -> None:
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng) for _ in range(3000)]
    assert not {(scene.colour, scene.shape) for scene in scenes} & HELD_OUT_PAIRS
    assert all(scene.colour != scene.background for scene in scenes)
    spans = np.array([scene.span for scene in scenes]) / 64
    assert spans.min() >= 0.3 and spans.max() <= 0.7


def test_pictures_use_the_palette_on_a_plain_background() -> None:
    scene = random_scene(np.random.default_rng(5))
    image = render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == PALETTE[scene.background] or tuple(image[-1, -1]) == PALETTE[scene.background]
    assert (image == np.array(PALETTE[scene.colour], dtype=np.uint8)).all(axis=2).sum() > 50


def test_judge_names_every_attribute_of_clean_and_blurred_pictures() -> None:
    rng = np.random.default_rng(11)
    clean = blurred = 0
    count = 400
    for _ in range(count):
        scene = random_scene(rng, training=False)
        image = render(scene)
        truth = (scene.colour, scene.shape, scene.background)
        verdict = judge(image)
        clean += (verdict.colour, verdict.shape, verdict.background) == truth
        soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)))
        verdict = judge(soft)
        blurred += (verdict.colour, verdict.shape, verdict.background) == truth
    assert clean / count >= 0.99
    assert blurred / count >= 0.97


def test_judge_finds_nothing_on_a_blank_picture() -> None:
    blank = np.full((64, 64, 3), PALETTE["blue"], dtype=np.uint8)
    verdict = judge(blank)
    assert verdict.background == "blue" and verdict.shape is None and verdict.colour is None


def test_evaluation_prompts_are_fixed_and_include_held_out_pairs() -> None:
    cases = evaluation_prompts(200, seed=0)
    assert cases == evaluation_prompts(200, seed=0)
    held_out = [case for case in cases if case.held_out]
    assert 30 <= len(held_out) <= 70
    assert {(case.colour, case.shape) for case in held_out} == HELD_OUT_PAIRS
    assert all(case.colour != case.background for case in cases)
    assert {case.prompt.split(" ")[0] for case in cases} >= {"a"}
    assert len(CAPTION_TEMPLATES) >= 2
