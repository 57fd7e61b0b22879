"""``sdtriton export SRC --output REPO``: a complete, loadable model repository from any SD pipeline folder.

Everything model-specific (tokenizer, channel counts, VAE scale and scaling factor, default scheduler)
is read from SRC; nothing assumes our own models.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from tqdm.auto import tqdm

from sdtriton.components import COMPONENTS, ONNX_FILE_NAME, TOKENIZER_DIR_NAME
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
    pipeline_config_from_components,
)
from sdtriton.schedulers import load_scheduler_overrides
from sdtriton.shapes.builtin import resolve_source

logger = logging.getLogger(__name__)


def load_source_pipeline(source: str | Path) -> StableDiffusionPipeline:
    """Loads a diffusers SD pipeline in fp32 from a folder, the built-in name ``shapes``, or a hub id."""
    return StableDiffusionPipeline.from_pretrained(
        str(resolve_source(source)), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )


def pipeline_config_of(
    pipeline: StableDiffusionPipeline,
    *,
    max_size_factor: int = 2,
    default_num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
) -> PipelineConfig:
    return pipeline_config_from_components(
        unet_config=pipeline.unet.config,
        vae_config=pipeline.vae.config,
        text_encoder_config=pipeline.text_encoder.config,
        tokenizer_max_length=pipeline.tokenizer.model_max_length,
        scheduler_config=dict(pipeline.scheduler.config),
        scheduler_overrides=load_scheduler_overrides(pipeline.name_or_path),
        max_size_factor=max_size_factor,
        default_num_inference_steps=default_num_inference_steps,
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
) -> PipelineConfig:
    """Writes configs, model code, tokenizer, pipeline config and ONNX files of every model into ``output``.

    With ``fit_preview``, the pipeline first draws a few small samples of its own to fit the latent-to-RGB
    preview projection stored in the pipeline config (see :mod:`sdtriton.export.preview_fit`); without it,
    the exported model serves no previews.
    """
    options = options or RenderOptions()
    if options.component_backend is ComponentBackend.TENSORRT:
        raise NotImplementedError("TensorRT engines are built on the GPU host; export ONNX first")
    steps = ["load", *(["preview fit"] if fit_preview else []), *COMPONENTS, "tokenizer and configs"]
    with tqdm(total=len(steps), desc="export", disable=not show_progress) as progress:
        progress.set_postfix_str(f"loading {source}")
        pipeline = load_source_pipeline(source)
        config = pipeline_config_of(
            pipeline, max_size_factor=max_size_factor, default_num_inference_steps=default_num_inference_steps
        )
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
            progress=advance,
        )
        progress.update(len(results))
        progress.set_postfix_str("tokenizer and configs")
        pipeline.tokenizer.save_pretrained(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION / TOKENIZER_DIR_NAME)
        config.save(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION)
        progress.update()
    for result in results:
        logger.info("%s: max |onnxruntime - torch| = %.3g", result.spec.model_name, result.max_abs_error)
    logger.info("model repository written to %s", output)
    return config
