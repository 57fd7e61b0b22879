"""The soak's plan: request kinds, the outcomes each may end in, and the seeded mix of requests."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sdtriton import interface
from sdtriton.pipeline_config import PipelineConfig


class Kind(str, enum.Enum):
    """What a planned request does."""

    OK = "ok"  # generate, seeded
    STREAM = "stream"  # progress stream read to the end
    CANCEL = "cancel"  # submitted then cancelled, or a stream broken off after its first progress event
    DEADLINE = "deadline"  # a time budget well under the request's time
    BAD = "bad"  # one invalid input


KINDS: tuple[Kind, ...] = tuple(Kind)

IMAGE = "image"
# A stream the client closed after its first progress event (the server is told to cancel; nothing comes back).
STREAM_CLOSED = "stream_closed"
# Outcomes are an image, STREAM_CLOSED, or the client exception's class name.
ALLOWED_OUTCOMES: Mapping[Kind, frozenset[str]] = {
    Kind.OK: frozenset({IMAGE}),
    Kind.STREAM: frozenset({IMAGE}),
    Kind.CANCEL: frozenset({IMAGE, "RequestCancelledError", STREAM_CLOSED}),
    Kind.DEADLINE: frozenset({IMAGE, "RequestTimeoutError"}),
    Kind.BAD: frozenset({"InvalidRequestError"}),
}
# What a request the client may not retry (submit, a stream past its first event) may end in when the server dies.
OUTAGE_OUTCOMES = frozenset({"ServerUnavailableError", "RetriesExhaustedError", "InferenceError"})

PROMPTS = (
    "a red circle on a white background",
    "a blue square on a yellow background",
    "a green triangle on a black background",
    "a yellow star on a purple background",
)
# One invalid input each; the unit tests check each is refused by sdtriton.serving.validation.
BAD_INPUTS = ("width_not_multiple", "zero_steps", "unknown_scheduler", "negative_guidance", "negative_seed")
UNKNOWN_SCHEDULER = "no_such_scheduler"
CANCEL_SUBMIT = "submit"
CANCEL_STREAM = "stream"
DEFAULT_MIN_SIDE_PX = 64
DEFAULT_MAX_SIDE_PX = 128


@dataclass(frozen=True)
class SoakMix:
    """What the plan draws from.

    Attributes:
        sides_px: image sides (width and height drawn separately).
        min_steps, max_steps: denoising steps, drawn in this range.
        schedulers: scheduler names.
        cancel_after_s: a submitted request is cancelled after a delay drawn in 0..this.
        deadline_budget_s: a deadline request's time budget is drawn in (this / 10)..this.
    """

    sides_px: tuple[int, ...]
    min_steps: int = 10
    max_steps: int = 20
    schedulers: tuple[str, ...] = interface.SCHEDULER_NAMES
    cancel_after_s: float = 0.5
    deadline_budget_s: float = 0.2

    def __post_init__(self) -> None:
        if not self.sides_px or min(self.sides_px) < 1:
            raise ValueError(f"sides_px must hold positive sides, got {self.sides_px}")
        if not interface.MIN_INFERENCE_STEPS <= self.min_steps <= self.max_steps:
            raise ValueError(f"need {interface.MIN_INFERENCE_STEPS} <= min_steps <= max_steps")
        if not self.schedulers:
            raise ValueError("schedulers must not be empty")


def sides_for(config: PipelineConfig, *, min_side_px: int, max_side_px: int) -> tuple[int, ...]:
    """The model's allowed sides in ``min_side_px..max_side_px``: multiples of its size step (its default alone
    when its engines take one size)."""
    if config.fixed_size:
        return (config.default_width,) if config.default_width == config.default_height else ()
    step = config.size_multiple
    top = min(max_side_px, config.max_width, config.max_height, math.isqrt(config.pixel_limit))
    sides = tuple(side for side in range(step, top + 1, step) if side >= min_side_px)
    if not sides:
        raise ValueError(
            f"no allowed side in {min_side_px}..{max_side_px} px (multiples of {step} up to {config.max_width})"
        )
    return sides


@dataclass(frozen=True)
class SoakRequest:
    """One planned request."""

    index: int
    kind: Kind
    prompt: str
    seed: int
    width: int
    height: int
    num_inference_steps: int
    scheduler: str
    guidance_scale: float = interface.DEFAULT_GUIDANCE_SCALE
    cancel_mode: str | None = None  # CANCEL_SUBMIT or CANCEL_STREAM
    cancel_after_s: float | None = None
    timeout_s: float | None = None  # the deadline kind's time budget
    bad_input: str | None = None  # one of BAD_INPUTS

    def parameters(self) -> dict[str, Any]:
        """The public inputs sent (the prompt apart)."""
        return {
            interface.NUM_INFERENCE_STEPS.name: self.num_inference_steps,
            interface.GUIDANCE_SCALE.name: self.guidance_scale,
            interface.SEED.name: self.seed,
            interface.WIDTH.name: self.width,
            interface.HEIGHT.name: self.height,
            interface.SCHEDULER.name: self.scheduler,
        }


def _counts(total: int, fractions: Mapping[Kind, float]) -> dict[Kind, int]:
    counts = {kind: round(fraction * total) for kind, fraction in fractions.items()}
    if sum(counts.values()) > total:
        raise ValueError(f"the fractions add up to more than all {total} requests")
    counts[Kind.OK] = total - sum(counts.values())
    return counts


def _make_bad(request: SoakRequest, bad_input: str) -> SoakRequest:
    changes: dict[str, Any] = {"bad_input": bad_input}
    if bad_input == "width_not_multiple":
        changes["width"] = request.width + 1  # sides are multiples of the model's step (8 or more)
    elif bad_input == "zero_steps":
        changes["num_inference_steps"] = 0
    elif bad_input == "unknown_scheduler":
        changes["scheduler"] = UNKNOWN_SCHEDULER
    elif bad_input == "negative_guidance":
        changes["guidance_scale"] = -1.0
    elif bad_input == "negative_seed":
        changes["seed"] = -1
    else:
        raise ValueError(f"unknown bad input {bad_input!r}")
    return SoakRequest(**{**asdict(request), **changes})


def plan_soak(
    *,
    requests: int,
    mix: SoakMix,
    cancel_fraction: float = 0.1,
    deadline_fraction: float = 0.1,
    bad_fraction: float = 0.1,
    stream_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[SoakRequest, ...]:
    """The seeded plan: the same arguments give the same requests, in the same order.

    Each fraction is a share of ``requests`` (rounded); the rest are plain ``ok`` requests.

    Raises:
        ValueError: a fraction outside 0..1, or fractions adding up to more than 1.
    """
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    fractions = {
        Kind.STREAM: stream_fraction,
        Kind.CANCEL: cancel_fraction,
        Kind.DEADLINE: deadline_fraction,
        Kind.BAD: bad_fraction,
    }
    for kind, fraction in fractions.items():
        if not 0 <= fraction <= 1:
            raise ValueError(f"the {kind.value} fraction must be in 0..1, got {fraction}")
    counts = _counts(requests, fractions)
    rng = random.Random(seed)
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    rng.shuffle(kinds)
    plan: list[SoakRequest] = []
    for index, kind in enumerate(kinds):
        request = SoakRequest(
            index=index,
            kind=kind,
            prompt=rng.choice(PROMPTS),
            seed=rng.randrange(interface.MAX_SEED + 1),
            width=rng.choice(mix.sides_px),
            height=rng.choice(mix.sides_px),
            num_inference_steps=rng.randint(mix.min_steps, mix.max_steps),
            scheduler=rng.choice(mix.schedulers),
        )
        if kind is Kind.CANCEL:
            mode = rng.choice((CANCEL_SUBMIT, CANCEL_STREAM))
            after_s = round(rng.uniform(0, mix.cancel_after_s), 3) if mode == CANCEL_SUBMIT else None
            request = SoakRequest(**{**asdict(request), "cancel_mode": mode, "cancel_after_s": after_s})
        elif kind is Kind.DEADLINE:
            budget_s = round(rng.uniform(mix.deadline_budget_s / 10, mix.deadline_budget_s), 3)
            # The largest image at the most steps: the budget runs out well before the work is done.
            request = SoakRequest(
                **{
                    **asdict(request),
                    "timeout_s": budget_s,
                    "width": max(mix.sides_px),
                    "height": max(mix.sides_px),
                    "num_inference_steps": mix.max_steps,
                }
            )
        elif kind is Kind.BAD:
            request = _make_bad(request, rng.choice(BAD_INPUTS))
        plan.append(request)
    return tuple(plan)
