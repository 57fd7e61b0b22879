"""LoRA adapters per request through a real server (``family_server``): the tiny SD model exported with two adapters
(``lora_*`` models), the SDXL one with one (``sdxl_*``), SD 3.5 (``sd35_*``) and FLUX.1-dev (``flux_*``) with two
each (``TRANSFORMER_LORAS``: the transformer's joint attention, one also the CLIP text encoders), each image against
diffusers' ``load_lora_weights`` + ``set_adapters([name], [scale])``, alone and with other adapters, scales and a
plain image in the same denoiser and text-encoder calls."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sdtriton import interface
from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.server import ModelStats
from tests.conftest import LORA_PREFIX, SDXL_PREFIX, transformer_lora_files
from tests.integration.oracle import (
    MAX_PIXEL_DIFFERENCE,
    diffusers_image,
    flow_diffusers_image,
    max_pixel_difference,
    sdxl_diffusers_image,
)

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
SEED = 21
STEPS = 6
ENTRY = LORA_PREFIX + interface.ENTRY_MODEL_NAME
# Two adapters (style touches the text encoder, detail has Conv2d layers) at two scales each, and no adapter.
CASES: tuple[tuple[str | None, float], ...] = (
    ("style", 1.0),
    ("style", 0.5),
    ("detail", 0.7),
    ("detail", -1.0),
    (None, 1.0),
)


@pytest.fixture(scope="module")
def expected(tiny_model_dir, lora_files) -> dict[tuple[str | None, float], np.ndarray]:
    """diffusers' image of every case: adapters loaded by load_lora_weights, chosen by set_adapters."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    for name, path in lora_files.items():
        pipeline.load_lora_weights(str(path), adapter_name=name)
    images = {}
    for lora, scale in CASES:
        _choose_adapter(pipeline, lora, scale)
        images[(lora, scale)] = diffusers_image(pipeline, PROMPT, seed=SEED, num_inference_steps=STEPS)
    return images


def _choose_adapter(pipeline, lora: str | None, scale: float) -> None:
    """diffusers' way: ``set_adapters([lora], [scale])``, or the adapters off."""
    if lora is None:
        pipeline.disable_lora()
    else:
        pipeline.enable_lora()
        pipeline.set_adapters([lora], [scale])


def _in_one_request(
    client: StableDiffusionClient, cases: tuple[tuple[str | None, float], ...], **size: int
) -> list[np.ndarray]:
    """One image per case, all in one request (so in the same network calls), same prompt, seed and ``size``."""
    result = client.generate(
        [PROMPT] * len(cases),
        seed=SEED,
        num_inference_steps=STEPS,
        lora=[lora or "" for lora, _ in cases],
        lora_scale=[scale for _, scale in cases],
        **size,
    )
    return [np.asarray(image) for image in result.images]


def _unet_rows_and_calls(http_url: str, model: str = f"{LORA_PREFIX}unet") -> tuple[int, int]:
    stats = ModelStats.fetch(http_url, model)
    return stats.inferences, stats.executions


def test_each_adapter_and_scale_alone_matches_diffusers(family_server, expected) -> None:
    plain = expected[(None, 1.0)]
    with StableDiffusionClient(family_server.address.grpc_url, model_name=ENTRY) as client:
        # The same prompt each time: a text-encoder row cached for one adapter or scale must not answer another.
        for lora, scale in CASES:
            result = client.generate(PROMPT, seed=SEED, num_inference_steps=STEPS, lora=lora, lora_scale=scale)
            image = np.asarray(result.image)
            assert max_pixel_difference(image, expected[(lora, scale)]) <= MAX_PIXEL_DIFFERENCE, (lora, scale)
            if lora is not None:
                # The adapter changes the image well beyond the tolerance: the match above is not the base model's.
                assert max_pixel_difference(image, plain) > 4 * MAX_PIXEL_DIFFERENCE, (lora, scale)


def test_four_adapted_images_and_a_plain_one_share_every_network_call(family_server, expected) -> None:
    http_url = family_server.address.http_url
    rows_before, calls_before = _unet_rows_and_calls(http_url)
    with StableDiffusionClient(http_url, model_name=ENTRY) as client:
        images = _in_one_request(client, CASES)
    rows_after, calls_after = _unet_rows_and_calls(http_url)
    rows, calls = rows_after - rows_before, calls_after - calls_before
    # Five guided images, two rows each, in every UNet call (the model's PNDM evaluates once more than its steps).
    assert calls >= STEPS
    assert rows == 2 * len(CASES) * calls
    for case, image in zip(CASES, images, strict=True):
        assert max_pixel_difference(image, expected[case]) <= MAX_PIXEL_DIFFERENCE, case


def test_unknown_adapters_and_scales_out_of_range_are_refused_by_name(family_server) -> None:
    url = family_server.address.http_url
    with StableDiffusionClient(url, model_name=ENTRY) as client:
        with pytest.raises(InvalidRequestError, match=r"lora: must be one of style, detail \(the adapters"):
            client.generate(PROMPT, num_inference_steps=1, lora="anime")
        with pytest.raises(InvalidRequestError, match=r"lora_scale: must be a finite number in -4\.\.4, got 5"):
            client.generate(PROMPT, num_inference_steps=1, lora="style", lora_scale=5.0)
    # The plain tiny repository on the same server has no adapters.
    with StableDiffusionClient(url) as client:
        with pytest.raises(InvalidRequestError, match="lora: must be empty: this repository was exported without"):
            client.generate(PROMPT, num_inference_steps=1, lora="style")


def test_an_sdxl_adapter_on_its_unet_and_second_text_encoder_matches_diffusers(
    family_server, sdxl_dirs, sdxl_lora_file
) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(sdxl_dirs[0], dtype=torch.float32)
    base.set_progress_bar_config(disable=True)
    base.load_lora_weights(str(sdxl_lora_file), adapter_name="xl")
    cases = (("xl", 1.0), ("xl", 0.6), (None, 1.0))
    expected = []
    for lora, scale in cases:
        _choose_adapter(base, lora, scale)
        expected.append(sdxl_diffusers_image(base, PROMPT, seed=SEED, num_inference_steps=STEPS))
    entry = SDXL_PREFIX + interface.ENTRY_MODEL_NAME
    with StableDiffusionClient(family_server.address.grpc_url, model_name=entry) as client:
        # The three in one request: the adapted rows and the plain one share every call.
        images = _in_one_request(client, cases)
    for case, image, want in zip(cases, images, expected, strict=True):
        assert max_pixel_difference(image, want) <= MAX_PIXEL_DIFFERENCE, case
    assert max_pixel_difference(expected[0], expected[2]) > 4 * MAX_PIXEL_DIFFERENCE


def test_an_adapter_of_another_family_is_refused_at_export_by_name(tiny_model_dir, sdxl_lora_file, tmp_path) -> None:
    from sdtriton.export import ExportOptionError, LoraSource, export_repository

    sdxl_lora = sdxl_lora_file
    with pytest.raises(ExportOptionError, match=r"^lora: xl: .* (is not a LoRA|adapts no layer of) this sd pipeline"):
        export_repository(
            tiny_model_dir,
            tmp_path / "repository",
            loras=[LoraSource("xl", sdxl_lora)],
            fit_preview=False,
            show_progress=False,
        )


# family -> (the session fixture holding its export, the model-name prefix, denoiser rows per image at the pipelines'
# default guidance: SD 3.5 guides with a negative row, FLUX.1-dev embeds its guidance).
TRANSFORMER_FAMILIES = {"sd35": ("sd3_exports", "sd35_", 2), "flux-dev": ("flux_exports", "flux_", 1)}
# Both families' adapters at the tiny SD 3.5's default size: the tiny FLUX's default (256 px: FluxPipeline's 128 latents
# a side) holds 16 times the tokens and made this FLUX case take 86 s in CI; an adapter's path through the transformer
# is the same at any size, and the FLUX default is served against diffusers in test_flux_serving.py.
TRANSFORMER_SIZE = {"width": 64, "height": 64}
TRANSFORMER_CASES: tuple[tuple[str | None, float], ...] = (
    ("glow", 1.0),
    ("glow", 0.6),
    ("grain", 0.8),
    ("grain", -1.0),
    (None, 1.0),
)


def _transformer_export(request, family: str) -> tuple[object, str]:
    """(the diffusers folder, the model-name prefix) of ``family``'s export with :data:`TRANSFORMER_LORAS`."""
    fixture, prefix, _ = TRANSFORMER_FAMILIES[family]
    folder, _, exported_prefix = request.getfixturevalue(fixture)[family]
    assert exported_prefix == prefix
    return folder, prefix


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_sd3_and_flux_adapters_alone_and_sharing_calls_match_diffusers(family_server, request, family: str) -> None:
    from diffusers import DiffusionPipeline

    folder, prefix = _transformer_export(request, family)
    pipeline = DiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    for name, path in transformer_lora_files(folder).items():
        pipeline.load_lora_weights(str(path), adapter_name=name)
    expected = {}
    for lora, scale in TRANSFORMER_CASES:
        _choose_adapter(pipeline, lora, scale)
        expected[(lora, scale)] = flow_diffusers_image(
            pipeline, PROMPT, seed=SEED, num_inference_steps=STEPS, **TRANSFORMER_SIZE
        )
    plain = expected[(None, 1.0)]
    http_url = family_server.address.http_url
    with StableDiffusionClient(http_url, model_name=prefix + interface.ENTRY_MODEL_NAME) as client:
        for lora, scale in TRANSFORMER_CASES:
            image = np.asarray(
                client.generate(
                    PROMPT, seed=SEED, num_inference_steps=STEPS, lora=lora, lora_scale=scale, **TRANSFORMER_SIZE
                ).image
            )
            assert max_pixel_difference(image, expected[(lora, scale)]) <= MAX_PIXEL_DIFFERENCE, (lora, scale)
            if lora is not None:
                assert max_pixel_difference(image, plain) > 4 * MAX_PIXEL_DIFFERENCE, (lora, scale)
        rows_before, calls_before = _unet_rows_and_calls(http_url, f"{prefix}transformer")
        images = _in_one_request(client, TRANSFORMER_CASES, **TRANSFORMER_SIZE)
        rows_after, calls_after = _unet_rows_and_calls(http_url, f"{prefix}transformer")
        with pytest.raises(InvalidRequestError, match=r"lora: must be one of glow, grain \(the adapters this"):
            client.generate(PROMPT, num_inference_steps=1, lora="anime")
    # Every image's rows in every transformer call: the four adapted and the plain one share each step.
    rows_per_image = TRANSFORMER_FAMILIES[family][2]
    assert calls_after - calls_before == STEPS
    assert rows_after - rows_before == rows_per_image * len(TRANSFORMER_CASES) * STEPS
    for case, image in zip(TRANSFORMER_CASES, images, strict=True):
        assert max_pixel_difference(image, expected[case]) <= MAX_PIXEL_DIFFERENCE, case


@pytest.mark.parametrize(
    ("target", "source"),
    [("sd35", "sd"), ("sd35", "flux-dev"), ("flux-dev", "sd35"), ("sd", "sd35")],
)
def test_a_transformer_familys_adapter_elsewhere_is_refused_at_export_naming_file_and_family(
    request, tiny_model_dir, lora_files, tmp_path, target: str, source: str
) -> None:
    """Another family's file is refused even where its widths match (the tiny models': diffusers and peft would load
    the layers they find a place for and skip the rest)."""
    from sdtriton.export import ExportOptionError, LoraSource, export_repository

    folders = {"sd": tiny_model_dir}
    for family in {target, source} - {"sd"}:
        folders[family] = _transformer_export(request, family)[0]
    path = lora_files["style"] if source == "sd" else transformer_lora_files(folders[source])["glow"]
    family = {"sd": "sd", "sd35": "sd3", "flux-dev": "flux"}[target]
    with pytest.raises(ExportOptionError, match=rf"^lora: other: {re.escape(str(path))} .*this {family} pipeline"):
        export_repository(
            folders[target],
            tmp_path / "repository",
            loras=[LoraSource("other", path)],
            fit_preview=False,
            show_progress=False,
        )
