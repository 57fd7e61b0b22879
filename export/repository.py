"""``sdtriton export SRC --output REPO``: a complete, loadable model repository from any SD pipeline folder.

Everything model-specific (tokenizers, channel counts, VAE scale and scaling factor, default scheduler, the
family itself: SD 1.x/2.x or SDXL, from the folder's ``model_index.json``) is read from SRC; nothing assumes our
own models. ``--refiner DIR`` adds an SDXL refiner as a second stage of the same repository.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from tqdm.auto import tqdm

from sdtriton.components import ONNX_FILE_NAME, TOKENIZER_DIRS, components_of
from sdtriton.export.configs import (
    MODEL_VERSION,
    PIPELINE_MODEL_NAME,
    ComponentBackend,
    RenderOptions,
    write_model_files,
)
from sdtriton.export.onnx_export import export_components
from sdtriton.export.preview_fit import fit_preview_projection
from sdtriton.pipeline_config import (
    DEFAULT_NUM_INFERENCE_STEPS,
    PipelineConfig,
    SdxlConfig,
    SdxlRefinerConfig,
    pipeline_config_from_components,
)
from sdtriton.schedulers import load_scheduler_overrides
from sdtriton.shapes.builtin import resolve_source

logger = logging.getLogger(__name__)


# The pipeline classes export serves, by the class name a diffusers folder's model_index.json gives.
SOURCE_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
}
REFINER_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionXLImg2ImgPipeline": StableDiffusionXLImg2ImgPipeline,
}
_SDXL_BASE_TIME_IDS = 6  # original size, crop top-left, target size
_SDXL_AESTHETIC_TIME_IDS = 5  # original size, crop top-left, aesthetic score


def _load(source: str | Path, classes: dict[str, type[DiffusionPipeline]], what: str) -> DiffusionPipeline:
    """Loads a pipeline folder in fp32 by the class its model_index.json names (looked up in ``classes`` only)."""
    location = str(resolve_source(source))
    class_name = DiffusionPipeline.load_config(location).get("_class_name")
    pipeline_class = classes.get(str(class_name))
    if pipeline_class is None:
        raise ValueError(
            f"{source}: {what} must be one of {', '.join(classes)}; its model_index.json says {class_name}"
        )
    extra = (
        {"safety_checker": None, "requires_safety_checker": False} if pipeline_class is StableDiffusionPipeline else {}
    )
    return pipeline_class.from_pretrained(location, torch_dtype=torch.float32, **extra)


def load_source_pipeline(source: str | Path) -> DiffusionPipeline:
    """Loads an SD or SDXL pipeline in fp32 from a folder, the built-in name ``shapes``, or a hub id."""
    return _load(source, SOURCE_PIPELINES, "the source pipeline")


def load_refiner_pipeline(source: str | Path) -> DiffusionPipeline:
    """Loads an SDXL refiner (``StableDiffusionXLImg2ImgPipeline``) in fp32."""
    return _load(source, REFINER_PIPELINES, "the refiner")


def _check_time_ids(unet: torch.nn.Module, time_ids: int, pooled_size: int, name: str) -> None:
    config = unet.config
    expected = config.addition_time_embed_dim * time_ids + pooled_size
    if config.projection_class_embeddings_input_dim != expected:
        raise ValueError(
            f"{name}: its added embedding takes {config.projection_class_embeddings_input_dim} values, but "
            f"{time_ids} time ids x {config.addition_time_embed_dim} + {pooled_size} pooled make {expected}"
        )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def sdxl_config_of(pipeline: DiffusionPipeline, refiner: DiffusionPipeline | None = None) -> SdxlConfig:
    """What an SDXL base (and refiner) adds to the geometry, checked as diffusers' ``_get_add_time_ids`` checks it."""
    first, second = pipeline.text_encoder, pipeline.text_encoder_2
    if first is None or second is None:
        raise ValueError("an SDXL base needs both text encoders (text_encoder and text_encoder_2)")
    if pipeline.tokenizer.model_max_length != pipeline.tokenizer_2.model_max_length:
        raise ValueError("the two tokenizers of an SDXL pipeline must have the same model_max_length")
    pooled_size = int(second.config.projection_dim)
    _check_time_ids(pipeline.unet, _SDXL_BASE_TIME_IDS, pooled_size, "the SDXL UNet")
    refiner_config = None
    if refiner is not None:
        requires_aesthetics = bool(refiner.config.requires_aesthetics_score)
        time_ids = _SDXL_AESTHETIC_TIME_IDS if requires_aesthetics else _SDXL_BASE_TIME_IDS
        _check_time_ids(refiner.unet, time_ids, pooled_size, "the refiner's UNet")
        if refiner.unet.config.in_channels != pipeline.unet.config.in_channels:
            raise ValueError("the refiner's UNet must take the base's latent channels")
        if refiner.unet.config.cross_attention_dim != second.config.hidden_size:
            raise ValueError("the refiner's UNet must attend to the base's second text encoder (its hidden size)")
        for part in ("text_encoder_2", "vae"):
            if not _same_weights(getattr(refiner, part), getattr(pipeline, part)):
                logger.warning(
                    "the refiner's %s differs from the base's; the served refiner stage uses the base's, as "
                    "diffusers' base+refiner recipe does",
                    part,
                )
        refiner_config = SdxlRefinerConfig(
            text_hidden_size=int(refiner.unet.config.cross_attention_dim),
            time_ids=time_ids,
            requires_aesthetics_score=requires_aesthetics,
            force_zeros_for_empty_prompt=bool(refiner.config.force_zeros_for_empty_prompt),
            scheduler_config=dict(refiner.scheduler.config),
        )
    return SdxlConfig(
        text_hidden_sizes=(int(first.config.hidden_size), int(second.config.hidden_size)),
        pooled_size=pooled_size,
        time_ids=_SDXL_BASE_TIME_IDS,
        force_zeros_for_empty_prompt=bool(pipeline.config.force_zeros_for_empty_prompt),
        refiner=refiner_config,
    )


def pipeline_config_of(
    pipeline: DiffusionPipeline,
    *,
    refiner: DiffusionPipeline | None = None,
    max_size_factor: int = 2,
    default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
) -> PipelineConfig:
    sdxl = sdxl_config_of(pipeline, refiner) if isinstance(pipeline, StableDiffusionXLPipeline) else None
    if refiner is not None and sdxl is None:
        raise ValueError("a refiner is served after an SDXL base only")
    return pipeline_config_from_components(
        unet_config=pipeline.unet.config,
        vae_config=pipeline.vae.config,
        text_encoder_config=pipeline.text_encoder.config,
        tokenizer_max_length=pipeline.tokenizer.model_max_length,
        scheduler_config=dict(pipeline.scheduler.config),
        scheduler_overrides=load_scheduler_overrides(pipeline.name_or_path),
        max_size_factor=max_size_factor,
        default_num_inference_steps=default_num_inference_steps,
        sdxl=sdxl,
    )


def export_repository(
    source: str | Path,
    output: Path,
    *,
    options: RenderOptions | None = None,
    max_size_factor: int = 2,
    default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    show_progress: bool = True,
    fit_preview: bool = True,
    refiner: str | Path | None = None,
) -> PipelineConfig:
    """Writes configs, model code, tokenizer, pipeline config and ONNX files of every model into ``output``.

    With ``fit_preview``, the pipeline first draws a few small samples of its own to fit the latent-to-RGB
    preview projection stored in the pipeline config (see :mod:`sdtriton.export.preview_fit`); without it,
    the exported model serves no previews. ``refiner`` (an SDXL refiner folder) adds the refiner stage.
    """
    options = options or RenderOptions()
    if options.component_backend is ComponentBackend.TENSORRT:
        raise NotImplementedError("TensorRT engines are built on the GPU host; export ONNX first")
    with tqdm(total=2 + fit_preview, desc="export", disable=not show_progress) as progress:
        progress.set_postfix_str(f"loading {source}")
        pipeline = load_source_pipeline(source)
        refiner_pipeline = None if refiner is None else load_refiner_pipeline(refiner)
        config = pipeline_config_of(
            pipeline,
            refiner=refiner_pipeline,
            max_size_factor=max_size_factor,
            default_num_inference_steps=default_num_inference_steps,
        )
        progress.total += len(components_of(config))
        progress.update()
        if fit_preview:
            progress.set_postfix_str("preview fit")
            fit = fit_preview_projection(pipeline, config)
            config = dataclasses.replace(config, latent_rgb_projection=fit.projection.astype(float).tolist())
            progress.update()

        def advance(name: str) -> None:
            progress.set_postfix_str(name)

        model_dirs = write_model_files(output, config, options)
        results = export_components(
            pipeline,
            config,
            lambda spec: model_dirs[spec.model_name] / MODEL_VERSION / ONNX_FILE_NAME,
            refiner=refiner_pipeline,
            progress=advance,
        )
        progress.update(len(results))
        progress.set_postfix_str("tokenizer and configs")
        for encoder, folder in TOKENIZER_DIRS.items():
            if encoder in model_dirs:
                getattr(pipeline, folder).save_pretrained(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION / folder)
        config.save(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION)
        progress.update()
    for result in results:
        logger.info("%s: max |onnxruntime - torch| = %.3g", result.spec.model_name, result.max_abs_error)
    logger.info("model repository written to %s", output)
    return config
