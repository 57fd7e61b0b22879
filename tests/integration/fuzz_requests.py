"""Malformed requests for the entry models, as Hypothesis strategies: each case carries what its answer must name.

Pure code: the strategies build numpy tensors (and, for lies about shapes or string encodings, what tritonclient
is made to send instead); :func:`http_inputs` and :func:`grpc_inputs` turn a case into tritonclient's
``InferInput`` objects, and :func:`named_field` reads which field an error message names. Every case has exactly
one defect on top of a request that is valid otherwise, so the field its answer must name is known.

Two layers answer a malformed request, both with ``INVALID_ARG``: Triton itself, before the model, for what
contradicts the entry's config (a data type, an input name, a shape, a batch size, a byte count); its messages
name the input in quotes (``inference input 'seed' data-type is 'FP32' ...``). The engine's validation for values
out of range; its messages start with the field (``seed: must be an integer in ...``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import strategies as st

from sdtriton import interface
from sdtriton.pipeline_config import PipelineConfig

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN = -(2**63)
# What a prompt that is too long may weigh: far past the limit, and still one request Triton takes (its gRPC and
# HTTP frontends accept messages of this size).
MAX_HUGE_BYTES = 4_000_000

# Labels of answers that name no input: Triton's batch-size check, and a request without any input.
BATCH_SIZE = "batch-size"
NO_INPUTS = "no inputs"
UNKNOWN_INPUT = "<unknown input>"
_MARKERS = {NO_INPUTS: "request has 0 inputs"}

# Triton data types and the numpy type tritonclient sends each as (BF16 needs ml_dtypes; left out).
NUMPY_TYPES: Mapping[str, type] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
# HTTP's JSON body carries these; FP16 goes binary only.
_JSON_TYPES = frozenset(NUMPY_TYPES) - {"FP16"}
# Byte sequences that are not UTF-8: a stray continuation byte, a lead byte without its continuation, an overlong
# encoding, a UTF-16 surrogate, a 5-byte form, bytes UTF-8 never uses.
NOT_UTF8 = (b"\x80", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe\xff")


@dataclass(frozen=True, repr=False)
class Tensor:
    """One input as sent.

    Attributes:
        name: the input's name.
        datatype: Triton's data type declared for it.
        array: its values, ``[batch, 1]`` when well formed.
        shape: the shape declared, where it differs from the array's (a request lying about its element count).
        raw: bytes sent in place of the array's serialization (a malformed BYTES encoding).
        json: over HTTP, in the JSON body rather than as binary data after it.
    """

    name: str
    datatype: str
    array: np.ndarray
    shape: tuple[int, ...] | None = None
    raw: bytes | None = None
    json: bool = False

    def __repr__(self) -> str:
        # Short: a failing example is printed, and a prompt may weigh megabytes.
        values = np.array2string(self.array.reshape(-1)[:4], threshold=4, max_line_width=200)
        if len(values) > 120:
            values = values[:120] + "..."
        lies = "" if self.shape is None else f", declared shape {list(self.shape)}"
        lies += "" if self.raw is None else f", raw {self.raw[:24]!r} ({len(self.raw)} bytes)"
        shape = list(self.array.shape)
        return f"Tensor({self.name!r}, {self.datatype}, shape {shape}, {values}{lies}, json={self.json})"


@dataclass(frozen=True)
class Case:
    """One malformed request to ``entry``: its defect (a label for the tally), its inputs, and the names of which
    its answer must name one (an input, or :data:`BATCH_SIZE` / :data:`NO_INPUTS`)."""

    entry: str
    defect: str
    tensors: tuple[Tensor, ...]
    fields: tuple[str, ...]


@dataclass(frozen=True)
class EntryLimits:
    """What an entry takes: its inputs and their types, its batch limit, and the model's geometry and ranges."""

    entry: str
    inputs: Mapping[str, str]
    max_batch_size: int
    config: PipelineConfig

    @property
    def sides(self) -> tuple[list[int], list[int]]:
        """Allowed widths and heights (one only when the engines were built for one size)."""
        config = self.config
        if config.fixed_size:
            return [config.default_width], [config.default_height]
        step = config.size_multiple
        return list(range(step, config.max_width + 1, step)), list(range(step, config.max_height + 1, step))


def named_field(message: str, fields: Sequence[str]) -> str | None:
    """Which of ``fields`` an error message names, if any: the engine's messages start with ``field:``, Triton's
    quote it (``input 'field'``); :data:`BATCH_SIZE` and :data:`NO_INPUTS` are Triton's own wording."""
    for field in fields:
        if field == BATCH_SIZE:
            found = "batch-size must be <=" in message
        elif field in _MARKERS:
            found = _MARKERS[field] in message
        else:
            found = message.startswith(f"{field}:") or f"'{field}'" in message
        if found:
            return field
    return None


# --- tritonclient inputs -------------------------------------------------------------------------------------------


def _infer_input(module: object, tensor: Tensor, *, http: bool) -> object:
    infer_input = module.InferInput(tensor.name, list(tensor.array.shape), tensor.datatype)
    if http:
        infer_input.set_data_from_numpy(tensor.array, binary_data=not tensor.json)
    else:
        infer_input.set_data_from_numpy(tensor.array)
    if tensor.raw is not None:
        # tritonclient serializes what it is given; these bytes replace that serialization as sent.
        if http:
            infer_input._raw_data = tensor.raw
            infer_input._parameters["binary_data_size"] = len(tensor.raw)
        else:
            infer_input._raw_content = tensor.raw
    if tensor.shape is not None:
        infer_input.set_shape(list(tensor.shape))
    return infer_input


def http_inputs(case: Case) -> list[httpclient.InferInput]:
    return [_infer_input(httpclient, tensor, http=True) for tensor in case.tensors]


def grpc_inputs(case: Case) -> list[grpcclient.InferInput]:
    return [_infer_input(grpcclient, tensor, http=False) for tensor in case.tensors]


def good_tensors(values: Mapping[str, Sequence[object]], inputs: Mapping[str, str]) -> tuple[Tensor, ...]:
    """Well-formed tensors, ``[N, 1]`` each, from one value per item of each named input."""
    return tuple(_column(name, inputs[name], items) for name, items in values.items())


def _column(name: str, datatype: str, items: Sequence[object]) -> Tensor:
    if datatype == "BYTES":
        array = np.array([[item.encode() if isinstance(item, str) else item] for item in items], dtype=np.object_)
    else:
        array = np.array([[item] for item in items], dtype=NUMPY_TYPES[datatype]).reshape(len(items), 1)
    return Tensor(name, datatype, array)


# --- strategies ----------------------------------------------------------------------------------------------------

# The smallest normal float32: "below 0" draws from -inf..-this (never -0.0, which is 0).
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _float32(**kwargs: object) -> st.SearchStrategy[float]:
    return st.floats(width=32, **kwargs)


def _text(max_size: int) -> st.SearchStrategy[str]:
    # UTF-8 text: any code point but surrogates (which UTF-8 cannot carry).
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


def _vae_tiling(config: PipelineConfig, *, width: int, height: int) -> st.SearchStrategy[bool]:
    """The values allowed at this size: none but false without tiling, none but true where it is always on."""
    tiling = config.vae_tiling
    if tiling is None:
        return st.just(False)
    return st.just(True) if tiling.always_above(width=width, height=height) else st.booleans()


@st.composite
def _valid_request(draw: st.DrawFn, limits: EntryLimits, batch: int) -> dict[str, list[object]]:
    """One value per item for a subset of the inputs, every value allowed; prompt always there.

    The steps stay few: a defect that the server failed to catch would run the request.
    """
    config = limits.config
    widths, heights = limits.sides
    width, height = draw(st.sampled_from(widths)), draw(st.sampled_from(heights))
    per_item: dict[str, st.SearchStrategy[object]] = {
        interface.PROMPT.name: _text(40),
        interface.NEGATIVE_PROMPT.name: _text(40),
        interface.NUM_INFERENCE_STEPS.name: st.integers(interface.MIN_INFERENCE_STEPS, 3),
        interface.GUIDANCE_SCALE.name: _float32(
            min_value=interface.MIN_GUIDANCE_SCALE, max_value=interface.MAX_GUIDANCE_SCALE
        ),
        interface.SEED.name: st.integers(interface.MIN_SEED, interface.MAX_SEED),
        interface.WIDTH.name: st.just(width),
        interface.HEIGHT.name: st.just(height),
        interface.SCHEDULER.name: st.sampled_from(interface.SCHEDULER_NAMES),
        interface.REFINER_FRACTION.name: st.just(0.0),
        interface.TRUE_CFG_SCALE.name: st.just(interface.DEFAULT_TRUE_CFG_SCALE),
        interface.SKIP_LAYER_GUIDANCE_SCALE.name: st.just(0.0),
        interface.SKIP_LAYER_GUIDANCE_START.name: _float32(min_value=0.0, max_value=1.0),
        interface.SKIP_LAYER_GUIDANCE_STOP.name: _float32(min_value=0.0, max_value=1.0),
        interface.VAE_TILING.name: _vae_tiling(config, width=width, height=height),
    }
    if interface.PREVIEW_EVERY.name in limits.inputs:
        every = draw(st.integers(0, config.max_inference_steps if config.latent_rgb_projection else 0))
        per_item[interface.PREVIEW_EVERY.name] = st.just(every)
    present = [name for name in per_item if name == interface.PROMPT.name or draw(st.booleans())]
    return {name: [draw(per_item[name]) for _ in range(batch)] for name in present}


@st.composite
def _long_utf8(draw: st.DrawFn, max_bytes: int) -> bytes:
    """UTF-8 text over ``max_bytes`` bytes: just over, or far over."""
    size = draw(st.one_of(st.integers(max_bytes + 1, max_bytes + 8), st.integers(max_bytes + 1, MAX_HUGE_BYTES)))
    unit = draw(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=3)).encode()
    data = unit * (size // len(unit) + 1)
    # Cut at a character boundary at or past `size`, so it stays valid UTF-8.
    cut = size
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:
        cut += 1
    return data[:cut]


@st.composite
def _not_utf8(draw: st.DrawFn) -> bytes:
    head, tail = draw(_text(20)).encode(), draw(_text(20)).encode()
    return head + draw(st.sampled_from(NOT_UTF8)) + tail


def _bad_steps(config: PipelineConfig) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(INT32_MIN, interface.MIN_INFERENCE_STEPS - 1),
        st.integers(config.max_inference_steps + 1, INT32_MAX),
    )


def _bad_guidance() -> st.SearchStrategy[float]:
    above = float(np.nextafter(np.float32(interface.MAX_GUIDANCE_SCALE), np.float32(np.inf)))
    return st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf]),
        # Below 0 (but not -0.0, which is 0) and above 30, as float32 holds them.
        _float32(max_value=-_FLOAT32_TINY, allow_nan=False),
        _float32(min_value=above, allow_nan=False),
    )


def _bad_side(maximum: int, multiple: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(INT32_MIN, 0),
        # Not a multiple: one more than one (the multiple is at least 2).
        st.integers(1, maximum).map(lambda value: value if value % multiple else value + 1),
        st.integers(maximum + 1, INT32_MAX),
    )


def _bad_refiner_fraction(config: PipelineConfig) -> st.SearchStrategy[float]:
    if config.has_refiner:
        return st.one_of(st.just(math.nan), _float32(max_value=-_FLOAT32_TINY), _float32(min_value=1.0))
    # No refiner: any value but 0 (NaN included; -0.0 is 0).
    return _float32().filter(lambda value: value != 0.0)


def _bad_share() -> st.SearchStrategy[float]:
    """Outside 0..1 (NaN included), as float32 holds them."""
    return st.one_of(st.just(math.nan), _float32(max_value=-_FLOAT32_TINY), _float32(min_value=1.0, exclude_min=True))


@st.composite
def _bad_scheduler(draw: st.DrawFn, max_bytes: int) -> bytes:
    kind = draw(st.sampled_from(["text", "near", "not_utf8", "huge"]))
    if kind == "near":
        name = draw(st.sampled_from(interface.SCHEDULER_NAMES))
        variants = [str.upper, str.title, " {}".format, "{} ".format, "{}\x00".format, "{}s".format]
        variant = draw(st.sampled_from(variants))
        return variant(name).encode()
    if kind == "not_utf8":
        return draw(_not_utf8())
    if kind == "huge":
        return draw(_long_utf8(max_bytes))
    return draw(_text(30).filter(lambda text: text not in interface.SCHEDULER_NAMES)).encode()


def _value_defects(limits: EntryLimits) -> dict[str, tuple[str, st.SearchStrategy[object]]]:
    """Defect label -> (the field, a bad value for one item)."""
    config = limits.config
    defects: dict[str, tuple[str, st.SearchStrategy[object]]] = {
        "prompt not UTF-8": (interface.PROMPT.name, _not_utf8()),
        "prompt too long": (interface.PROMPT.name, _long_utf8(config.max_prompt_bytes)),
        "negative_prompt not UTF-8": (interface.NEGATIVE_PROMPT.name, _not_utf8()),
        "negative_prompt too long": (interface.NEGATIVE_PROMPT.name, _long_utf8(config.max_prompt_bytes)),
        "steps out of range": (interface.NUM_INFERENCE_STEPS.name, _bad_steps(config)),
        "guidance out of range": (interface.GUIDANCE_SCALE.name, _bad_guidance()),
        "negative seed": (interface.SEED.name, st.integers(INT64_MIN, interface.MIN_SEED - 1)),
        "bad width": (interface.WIDTH.name, _bad_side(config.max_width, config.size_multiple)),
        "bad height": (interface.HEIGHT.name, _bad_side(config.max_height, config.size_multiple)),
        "unknown scheduler": (interface.SCHEDULER.name, _bad_scheduler(config.max_prompt_bytes)),
        "refiner_fraction refused": (interface.REFINER_FRACTION.name, _bad_refiner_fraction(config)),
        # SD's guidance is classifier-free already: any true_cfg_scale but 1 (NaN included).
        "true_cfg_scale refused": (
            interface.TRUE_CFG_SCALE.name,
            _float32().filter(lambda value: value != interface.DEFAULT_TRUE_CFG_SCALE),
        ),
        # No skip-guidance layers in SD: any scale but 0 (NaN included; -0.0 is 0).
        "skip_layer_guidance_scale refused": (
            interface.SKIP_LAYER_GUIDANCE_SCALE.name,
            _float32().filter(lambda value: value != 0.0),
        ),
        "skip_layer_guidance_start out of range": (interface.SKIP_LAYER_GUIDANCE_START.name, _bad_share()),
        "skip_layer_guidance_stop out of range": (interface.SKIP_LAYER_GUIDANCE_STOP.name, _bad_share()),
        # No input_image in these requests: any strength is refused (image-to-image's own refusals:
        # test_img2img.py).
        "strength without an image": (interface.STRENGTH.name, _float32()),
    }
    if interface.PREVIEW_EVERY.name in limits.inputs:
        every = st.one_of(st.integers(INT32_MIN, -1), st.integers(config.max_inference_steps + 1, INT32_MAX))
        defects["preview_every out of range"] = (interface.PREVIEW_EVERY.name, every)
    return defects


def _with(tensors: Sequence[Tensor], name: str, change: Callable[[Tensor], Tensor]) -> tuple[Tensor, ...]:
    return tuple(change(tensor) if tensor.name == name else tensor for tensor in tensors)


@st.composite
def malformed_cases(draw: st.DrawFn, limits: EntryLimits) -> Case:
    """A request to ``limits.entry`` with exactly one defect, and the names its answer may name."""
    inputs = limits.inputs
    batch = draw(st.integers(1, limits.max_batch_size))
    values = draw(_valid_request(limits, batch))
    value_defects = _value_defects(limits)
    structural = [
        "wrong data type",
        "unknown input",
        "wrong shape",
        "element count",
        "bad BYTES encoding",
        "batch too large",
        "empty batch",
        "batch sizes differ",
        "duplicate input",
        "no inputs",
        "missing prompt",
        "sizes differ",
    ]
    if interface.PREVIEW_EVERY.name in inputs:
        structural.append("preview_every differs")
    if interface.MASK_IMAGE.name in inputs:
        structural.append("mask without an image")
    defect = draw(st.sampled_from(structural + sorted(value_defects)))
    # A single item cannot differ from itself: a value out of range instead.
    if defect == "sizes differ" and (batch < 2 or limits.config.fixed_size):
        defect = "bad width"
    if defect == "preview_every differs" and batch < 2:
        defect = "preview_every out of range"
    case = Case(limits.entry, defect, good_tensors(values, inputs), ())

    if defect in value_defects:
        field, bad_value = value_defects[defect]
        column = values.get(field) or [draw(st.sampled_from(_allowed_default(limits, field)))] * batch
        column = list(column)
        column[draw(st.integers(0, batch - 1))] = draw(bad_value)
        case = replace(case, tensors=good_tensors({**values, field: column}, inputs), fields=(field,))
    elif defect == "sizes differ":
        widths, heights = limits.sides
        side, choices = draw(st.sampled_from([(interface.WIDTH.name, widths), (interface.HEIGHT.name, heights)]))
        per_item = st.lists(st.sampled_from(choices), min_size=batch, max_size=batch)
        sizes = draw(per_item.filter(lambda items: len(set(items)) > 1))
        # The engine names width for either side ("width: width and height must be the same ...").
        case = replace(case, tensors=good_tensors({**values, side: sizes}, inputs), fields=(interface.WIDTH.name,))
    elif defect == "preview_every differs":
        field = interface.PREVIEW_EVERY.name
        allowed = st.integers(0, limits.config.max_inference_steps)
        every = draw(st.lists(allowed, min_size=batch, max_size=batch).filter(lambda s: len(set(s)) > 1))
        case = replace(case, tensors=good_tensors({**values, field: every}, inputs), fields=(field,))
    elif defect == "missing prompt":
        rest = {name: items for name, items in values.items() if name != interface.PROMPT.name}
        rest.setdefault(interface.NUM_INFERENCE_STEPS.name, [interface.MIN_INFERENCE_STEPS] * batch)
        case = replace(case, tensors=good_tensors(rest, inputs), fields=(interface.PROMPT.name,))
    elif defect == "no inputs":
        case = replace(case, tensors=(), fields=(NO_INPUTS,))
    elif defect == "mask without an image":
        # Inpainting's own refusals (size, kind of model): test_inpaint.py.
        side = draw(st.sampled_from(limits.sides[0]))
        pixels = np.full((batch, side, side, 1), draw(st.integers(0, 255)), dtype=np.uint8)
        mask = Tensor(interface.MASK_IMAGE.name, "UINT8", pixels)
        case = replace(case, tensors=(*case.tensors, mask), fields=(interface.MASK_IMAGE.name,))
    else:
        case = draw(_structural_defect(case, limits, defect, batch, values))
    return draw(_transport(case))


def _allowed_default(limits: EntryLimits, field: str) -> list[object]:
    """Values the field may take (for filling the items around the bad one when the request left it out)."""
    config = limits.config
    widths, heights = limits.sides
    return {
        interface.PROMPT.name: ["a"],
        interface.NEGATIVE_PROMPT.name: [""],
        interface.NUM_INFERENCE_STEPS.name: [1, 2],
        interface.GUIDANCE_SCALE.name: [interface.DEFAULT_GUIDANCE_SCALE],
        interface.SEED.name: [0, interface.MAX_SEED],
        interface.WIDTH.name: widths,
        interface.HEIGHT.name: heights,
        interface.SCHEDULER.name: list(interface.SCHEDULER_NAMES),
        interface.REFINER_FRACTION.name: [0.0],
        interface.TRUE_CFG_SCALE.name: [interface.DEFAULT_TRUE_CFG_SCALE],
        interface.SKIP_LAYER_GUIDANCE_SCALE.name: [0.0],
        interface.SKIP_LAYER_GUIDANCE_START.name: [interface.DEFAULT_SKIP_LAYER_GUIDANCE_START],
        interface.SKIP_LAYER_GUIDANCE_STOP.name: [interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP],
        interface.STRENGTH.name: [interface.DEFAULT_STRENGTH],
        interface.PREVIEW_EVERY.name: [0, 1] if config.latent_rgb_projection else [0],
    }[field]


@st.composite
def _structural_defect(
    draw: st.DrawFn, case: Case, limits: EntryLimits, defect: str, batch: int, values: Mapping[str, list[object]]
) -> Case:
    """Defects Triton refuses against the entry's config, before the model sees the request."""
    inputs = limits.inputs
    tensors = case.tensors
    names = [tensor.name for tensor in tensors]
    name = draw(st.sampled_from(names))
    declared = inputs[name]
    if defect == "wrong data type":
        datatype = draw(st.sampled_from(sorted(set(NUMPY_TYPES) - {declared})))
        array = _any_array(draw, datatype, (batch, 1))
        return replace(case, tensors=_with(tensors, name, lambda t: Tensor(name, datatype, array)), fields=(name,))
    if defect == "unknown input":
        internal = [tensor.name for tensor in (*interface.INTERNAL_INPUTS, *interface.INTERNAL_OUTPUTS)]
        internal += [interface.PREVIEW_EVERY.name, "image", "used_seed", "PROMPT", " prompt", "prompt "]
        # No NUL: Triton cuts a name at its first NUL ("width\x00x" is taken as width).
        free = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=64)
        extra = draw(st.one_of(st.sampled_from(internal), free).filter(lambda n: n not in inputs))
        datatype = draw(st.sampled_from(sorted(NUMPY_TYPES)))
        added = Tensor(extra, datatype, _any_array(draw, datatype, (batch, 1)))
        at = draw(st.integers(0, len(tensors)))
        return replace(case, tensors=(*tensors[:at], added, *tensors[at:]), fields=(extra,))
    if defect == "wrong shape":
        item_shape = draw(st.sampled_from([(), (0,), (2,), (1, 1), (1, 2), (3,), (2, 2)]))
        array = _any_array(draw, declared, (batch, *item_shape))
        return replace(case, tensors=_with(tensors, name, lambda t: Tensor(name, declared, array)), fields=(name,))
    if defect == "element count":
        # The declared shape says [batch, 1]; the data holds another number of elements.
        count = draw(st.integers(0, 3 * batch).filter(lambda n: n != batch))
        array = _any_array(draw, declared, (count, 1))
        lie = Tensor(name, declared, array, shape=(batch, 1))
        return replace(case, tensors=_with(tensors, name, lambda t: lie), fields=(name,))
    if defect == "bad BYTES encoding":
        name = draw(st.sampled_from([n for n in names if inputs[n] == "BYTES"]))
        raw = draw(_bad_bytes_encoding(values[name]))
        return replace(case, tensors=_with(tensors, name, lambda t: replace(t, raw=raw)), fields=(name,))
    if defect == "batch too large":
        most = limits.max_batch_size
        big = draw(st.one_of(st.integers(most + 1, most + 2), st.integers(most + 1, 1024)))
        grown = {key: (items * big)[:big] for key, items in values.items()}
        return replace(case, tensors=good_tensors(grown, inputs), fields=(BATCH_SIZE,))
    if defect == "empty batch":
        empty = tuple(Tensor(t.name, t.datatype, t.array[:0]) for t in tensors)
        return replace(case, tensors=empty, fields=tuple(names))
    if defect == "batch sizes differ":
        other = draw(st.integers(1, limits.max_batch_size).filter(lambda n: n != batch))
        items = (values[name] * other)[:other]
        odd = good_tensors({name: items}, inputs)[0]
        if len(tensors) == 1:
            # The prompt alone cannot differ from itself: add the steps, of the request's batch size.
            extra = interface.NUM_INFERENCE_STEPS.name
            tensors = (*tensors, *good_tensors({extra: _allowed_default(limits, extra)[:1] * batch}, inputs))
            names = [tensor.name for tensor in tensors]
        # Triton names whichever input it finds out of step with the first one it read.
        return replace(case, tensors=_with(tensors, name, lambda t: odd), fields=tuple(names))
    if defect == "duplicate input":
        copy = next(tensor for tensor in tensors if tensor.name == name)
        at = draw(st.integers(0, len(tensors)))
        return replace(case, tensors=(*tensors[:at], copy, *tensors[at:]), fields=(name,))
    raise AssertionError(f"unknown defect {defect!r}")


def _any_array(draw: st.DrawFn, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values of ``datatype`` in ``shape``: arbitrary, since a wrong type or shape is refused whatever they are."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
        array = np.empty(count, dtype=np.object_)  # filled item by item: numpy would split bytes into characters
        array[:] = items
        return array.reshape(shape)
    if datatype == "BOOL":
        return np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=np.bool_).reshape(shape)
    numpy_type = np.dtype(NUMPY_TYPES[datatype])
    raw = draw(st.binary(min_size=count * numpy_type.itemsize, max_size=count * numpy_type.itemsize))
    return np.frombuffer(raw, dtype=numpy_type).reshape(shape).copy()


@st.composite
def _bad_bytes_encoding(draw: st.DrawFn, items: Sequence[object]) -> bytes:
    """A BYTES serialization Triton cannot read as ``len(items)`` strings: each string is a 4-byte little-endian
    length and its bytes."""
    encoded = [item.encode() if isinstance(item, str) else bytes(item) for item in items]
    good = b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    kind = draw(st.sampled_from(["cut prefix", "length past the end", "one string more", "one string less"]))
    if kind == "cut prefix":
        return good + b"\x01" * draw(st.integers(1, 3))
    if kind == "length past the end":
        body = draw(st.binary(max_size=16))
        claimed = len(body) + draw(st.integers(1, 2**32 - 1 - len(body)))
        return good[: -len(encoded[-1]) - 4] + struct.pack("<I", claimed) + body
    if kind == "one string more":
        return good + struct.pack("<I", 1) + b"x"
    return good[: -len(encoded[-1]) - 4]


@st.composite
def _transport(draw: st.DrawFn, case: Case) -> Case:
    """Over HTTP, some inputs go in the JSON body: those JSON can carry (UTF-8 strings, no lies about sizes; a
    JSON ``data`` whose length contradicts its ``shape`` is answered 500 by Triton, see the xfail test)."""

    def json_ok(tensor: Tensor) -> bool:
        if tensor.raw is not None or tensor.shape is not None or tensor.datatype not in _JSON_TYPES:
            return False
        if tensor.datatype == "BYTES":
            try:
                for item in tensor.array.reshape(-1):
                    bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                return False
        return True

    tensors = tuple(replace(t, json=json_ok(t) and draw(st.booleans())) for t in case.tensors)
    return replace(case, tensors=tensors)
