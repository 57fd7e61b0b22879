"""A request's public inputs, checked and tokenized into the images the engine denoises.

Pure code over numpy arrays (one array per input, one value per item, None where the input was omitted);
the Triton adapter reads the tensors and the engine takes the result. Every error names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from sdtriton import interface
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.conditioning import ImageRequest
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.text import tokenize_prompts
from sdtriton.serving.validation import decode_prompt, parse_generation_params


@dataclass(frozen=True)
class ParsedRequest:
    """The images of one request and its stream options.

    Attributes:
        images: the request's images, with their seeds (drawn for the items that sent none).
        preview_every: with progress, a preview every this many steps (0: none).
        seeded: the request sent a seed for every item, so its images are a function of its inputs (the response
            cache may answer it); False when a seed was drawn.
    """

    images: tuple[ImageRequest, ...]
    preview_every: int = 0
    seeded: bool = False


def _preview_every(values: np.ndarray | None, config: PipelineConfig) -> int:
    field = interface.PREVIEW_EVERY.name
    if values is None:
        return 0
    distinct = {int(value) for value in values}
    if len(distinct) > 1:
        raise InvalidInputError(field, "must be the same for every item of one request")
    (every,) = distinct
    if not 0 <= every <= config.max_inference_steps:
        raise InvalidInputError(field, f"must be an integer in 0..{config.max_inference_steps}, got {every}")
    if every and not config.latent_rgb_projection:
        raise InvalidInputError(field, "must be 0: this model was exported without a preview projection")
    return every


def _pixel_items(
    values: np.ndarray | None, count: int, tensor: interface.PublicTensor, what: str
) -> list[np.ndarray | None]:
    """Each item's pixels of ``tensor`` ([H, W, channels] uint8), or None per item when the request sent none."""
    field = tensor.name
    if values is None:
        return [None] * count
    values = np.asarray(values)
    if values.dtype != np.uint8:
        raise InvalidInputError(field, f"must be UINT8 pixels, got {values.dtype}: {tensor.allowed}")
    channels = tensor.dims[-1]
    if values.ndim != 4 or values.shape[-1] != channels or 0 in values.shape:
        raise InvalidInputError(
            field, f"must be [height, width, {channels}] {what} per prompt, got shape {list(values.shape[1:])}"
        )
    if len(values) != count:
        raise InvalidInputError(field, f"must have one image per prompt ({count}), got {len(values)}")
    return [np.ascontiguousarray(image) for image in values]


def parse_request(
    raw: Mapping[str, np.ndarray | None],
    *,
    config: PipelineConfig,
    tokenizers: Mapping[str, PreTrainedTokenizerBase],
) -> ParsedRequest:
    """Checks a request's inputs and tokenizes its prompts, as diffusers pads and truncates them.

    Args:
        raw: input name -> [N] values (None: omitted); names of :data:`interface.STREAM_INPUTS` (the input image:
            [N, H, W, 3], the mask: [N, H, W, 1]).
        config: the exported model's geometry and defaults.
        tokenizers: text encoder model name -> its tokenizer (:func:`sdtriton.serving.text.load_tokenizers`).
    """
    prompt_items = raw.get(interface.PROMPT.name)
    if prompt_items is None:
        raise InvalidInputError(interface.PROMPT.name, f"is required: {interface.PROMPT.allowed}")
    prompts = [decode_prompt(interface.PROMPT.name, item, max_bytes=config.max_prompt_bytes) for item in prompt_items]
    count = len(prompts)
    negative_items = raw.get(interface.NEGATIVE_PROMPT.name)
    negatives = (
        [""] * count
        if negative_items is None
        else [
            decode_prompt(interface.NEGATIVE_PROMPT.name, item, max_bytes=config.max_prompt_bytes)
            for item in negative_items
        ]
    )
    per_item = (*interface.GENERATION_INPUTS, interface.STRENGTH)
    for tensor in (interface.NEGATIVE_PROMPT, *per_item, interface.PREVIEW_EVERY):
        values = raw.get(tensor.name)
        if values is not None and len(values) != count:
            raise InvalidInputError(tensor.name, f"must have one value per prompt ({count}), got {len(values)}")
    input_images = _pixel_items(raw.get(interface.INPUT_IMAGE.name), count, interface.INPUT_IMAGE, "RGB pixels")
    masks = _pixel_items(raw.get(interface.MASK_IMAGE.name), count, interface.MASK_IMAGE, "gray pixels")
    params = []
    for index, (input_image, mask) in enumerate(zip(input_images, masks, strict=True)):
        item = {tensor.name: None if raw.get(tensor.name) is None else raw[tensor.name][index] for tensor in per_item}
        params.append(
            parse_generation_params(
                config=config,
                negative_given=negative_items is not None,
                image_size=None if input_image is None else input_image.shape[:2],
                mask_size=None if mask is None else mask.shape[:2],
                **item,
            )
        )
    if len({(p.height, p.width) for p in params}) > 1:
        raise InvalidInputError(interface.WIDTH.name, "width and height must be the same for every item of one request")
    prompt_ids = {encoder: tokenize_prompts(tokenizer, prompts) for encoder, tokenizer in tokenizers.items()}
    negative_ids = {encoder: tokenize_prompts(tokenizer, negatives) for encoder, tokenizer in tokenizers.items()}
    images = tuple(
        ImageRequest(
            params=item,
            prompt_ids={encoder: ids[index] for encoder, ids in prompt_ids.items()},
            negative_ids={encoder: ids[index] for encoder, ids in negative_ids.items()},
            negative_given=negative_items is not None,
            input_image=input_images[index],
            mask_image=masks[index],
        )
        for index, item in enumerate(params)
    )
    return ParsedRequest(
        images=images,
        preview_every=_preview_every(raw.get(interface.PREVIEW_EVERY.name), config),
        # The seed tensor has one value per item (checked above): present, every item has its own.
        seeded=raw.get(interface.SEED.name) is not None,
    )
