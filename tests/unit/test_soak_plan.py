"""The soak's seeded plan: its fractions, its reproducibility, bad inputs the server's own validation refuses, and
sizes the model allows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sdtriton import interface
from sdtriton.ops.soak.plan import BAD_INPUTS, Kind, SoakMix, plan_soak, sides_for
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.validation import parse_generation_params

# The embedded shapes model's geometry: 64 px by default, sides in steps of 16 up to 128.
CONFIG = PipelineConfig(
    latent_channels=4,
    vae_scale_factor=8,
    size_multiple=16,
    default_height=64,
    default_width=64,
    max_height=128,
    max_width=128,
    vae_scaling_factor=0.18215,
    text_max_length=77,
    text_hidden_size=32,
)
MIX = SoakMix(sides_px=sides_for(CONFIG, min_side_px=64, max_side_px=128), min_steps=10, max_steps=20)


def _plan(**overrides):
    return plan_soak(**{"requests": 500, "mix": MIX, "seed": 3, **overrides})


def _validate(request):
    return parse_generation_params(config=CONFIG, **request.parameters())


def test_sides_are_the_models_multiples_in_range():
    assert sides_for(CONFIG, min_side_px=64, max_side_px=128) == (64, 80, 96, 112, 128)
    assert sides_for(CONFIG, min_side_px=1, max_side_px=1000) == tuple(range(16, 129, 16))
    with pytest.raises(ValueError, match="no allowed side"):
        sides_for(CONFIG, min_side_px=200, max_side_px=300)


def test_fractions_are_respected_and_the_rest_are_plain():
    counts = Counter(request.kind for request in _plan())
    assert counts == {Kind.CANCEL: 50, Kind.DEADLINE: 50, Kind.BAD: 50, Kind.STREAM: 100, Kind.OK: 250}
    counts = Counter(request.kind for request in _plan(requests=40, stream_fraction=0.0, bad_fraction=0.25))
    assert counts[Kind.BAD] == 10 and counts[Kind.STREAM] == 0 and sum(counts.values()) == 40
    assert [request.index for request in _plan()] == list(range(500))


def test_the_plan_is_reproducible_and_the_seed_changes_it():
    assert _plan() == _plan()
    assert _plan() != _plan(seed=4)
    # The kinds are mixed through the run, not in blocks.
    first_hundred = Counter(request.kind for request in _plan()[:100])
    assert all(first_hundred[kind] > 0 for kind in Kind)


def test_fractions_beyond_the_whole_are_refused():
    with pytest.raises(ValueError, match="more than all"):
        _plan(cancel_fraction=0.5, deadline_fraction=0.5, bad_fraction=0.2)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        _plan(bad_fraction=-0.1)


def test_bad_inputs_are_really_invalid_and_the_others_valid():
    plan = _plan()
    bad = [request for request in plan if request.kind is Kind.BAD]
    assert {request.bad_input for request in bad} == set(BAD_INPUTS)
    for request in bad:
        with pytest.raises(InvalidInputError):
            _validate(request)
    for request in plan:
        if request.kind is not Kind.BAD:
            params = _validate(request)
            assert params.width in MIX.sides_px and params.height in MIX.sides_px
            assert 10 <= params.num_inference_steps <= 20
            assert params.scheduler in interface.SCHEDULER_NAMES


def test_cancels_and_deadlines_carry_their_settings():
    plan = _plan()
    cancels = [request for request in plan if request.kind is Kind.CANCEL]
    assert {request.cancel_mode for request in cancels} == {"submit", "stream"}
    assert all(
        0 <= request.cancel_after_s <= MIX.cancel_after_s for request in cancels if request.cancel_mode == "submit"
    )
    deadlines = [request for request in plan if request.kind is Kind.DEADLINE]
    # A short budget for the most work the mix holds: it runs out.
    assert all(0 < request.timeout_s <= MIX.deadline_budget_s for request in deadlines)
    assert all(request.num_inference_steps == MIX.max_steps and request.width == 128 for request in deadlines)
    assert all(request.timeout_s is None for request in plan if request.kind is not Kind.DEADLINE)


def test_the_shapes_export_geometry_matches(tmp_path: Path):
    # The sizes come from a repository's own pipeline config, read as the soak command reads it.
    CONFIG.save(tmp_path)
    assert sides_for(PipelineConfig.load(tmp_path), min_side_px=64, max_side_px=128) == MIX.sides_px
