"""``sdtriton export SRC --output REPO``: a complete, loadable model repository from any SD pipeline folder.

Everything model-specific (tokenizers, channel counts, VAE scale and scaling factor, default scheduler, the
family itself: SD 1.x/2.x, SDXL, SD 3 / 3.5 or FLUX.1, from the folder's ``model_index.json``) is read from SRC; nothing
assumes our own models. ``--refiner DIR`` adds an SDXL refiner as a second stage of the same repository.

An SD 3 / 3.5 repository holds its networks (two CLIPs, T5 where the pipeline has it, the transformer and the
VAE decoder), its three tokenizers, ``pipeline_config.json`` and the entries, served like the others. A FLUX.1
repository holds CLIP's pooled output, T5, the transformer on packed latents and the VAE decoder. Every family's
repository also holds the VAE encoder (``vae_encoder``), for image-to-image requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME
from diffusers.utils import is_accelerate_available
from diffusers.utils import logging as diffusers_logging
from tqdm.auto import tqdm
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedModel,
    T5EncoderModel,
    T5Tokenizer,
)
from transformers.utils import logging as transformers_logging

from sdtriton.components import ONNX_FILE_NAME, TENSORRT_PLAN_FILE_NAME, TOKENIZER_DIRS, components_of
from sdtriton.export.configs import (
    MODEL_VERSION,
    PIPELINE_MODEL_NAME,
    ComponentBackend,
    RenderOptions,
    write_model_files,
)
from sdtriton.export.errors import ExportOptionError
from sdtriton.export.lora import LoraSource, attach_loras
from sdtriton.export.onnx_export import ExportResult, export_components
from sdtriton.export.preview_fit import fit_preview_projection
from sdtriton.export.tensorrt import (
    NGC_RELEASE,
    TENSORRT_VERSION,
    EngineBuild,
    build_engine,
    check_prepared_onnx,
    engine_builds,
    prepare_onnx_for_tensorrt,
)
from sdtriton.flux import TIMESTEP_DISTILLED_DEFAULT_STEPS
from sdtriton.pipeline_config import (
    DEFAULT_NUM_INFERENCE_STEPS,
    FLUX_PACKING,
    SKIP_LAYER_GUIDANCE_ROWS,
    FluxConfig,
    PipelineConfig,
    RequestLimits,
    Sd3Config,
    SdxlConfig,
    SdxlRefinerConfig,
    flux_pipeline_config,
    pipeline_config_from_components,
    sd3_pipeline_config,
)
from sdtriton.schedulers import (
    flux_scheduler_names,
    load_scheduler_overrides,
    scheduler_class_from_config,
    sd3_scheduler_names,
)
from sdtriton.shapes.builtin import resolve_source

logger = logging.getLogger(__name__)


# The pipeline classes export serves, by the class name a diffusers folder's model_index.json gives.
SOURCE_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionPipeline": StableDiffusionPipeline,
    "StableDiffusionXLPipeline": StableDiffusionXLPipeline,
    # Inpainting checkpoints (a 9-channel UNet) name their inpainting pipeline; the networks are SD's and SDXL's.
    "StableDiffusionInpaintPipeline": StableDiffusionInpaintPipeline,
    "StableDiffusionXLInpaintPipeline": StableDiffusionXLInpaintPipeline,
    "StableDiffusion3Pipeline": StableDiffusion3Pipeline,
    "FluxPipeline": FluxPipeline,
}
REFINER_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "StableDiffusionXLImg2ImgPipeline": StableDiffusionXLImg2ImgPipeline,
}
_SDXL_BASE_TIME_IDS = 6  # original size, crop top-left, target size
_SDXL_AESTHETIC_TIME_IDS = 5  # original size, crop top-left, aesthetic score
# StableDiffusion3Pipeline.check_inputs and FluxPipeline.check_inputs refuse a longer max_sequence_length.
SD3_MAX_SEQUENCE_LENGTH_LIMIT = 512
_REFINER_AFTER_SDXL = "a refiner is served after an SDXL base only"


def _load(
    source: str | Path, classes: dict[str, type[DiffusionPipeline]], what: str, *, weights: bool = True
) -> DiffusionPipeline:
    """Loads a pipeline folder in fp32 by the class its model_index.json names (looked up in ``classes`` only);
    without ``weights``, its skeleton (see :func:`_skeleton`)."""
    location = str(resolve_source(source))
    index = DiffusionPipeline.load_config(location)
    class_name = index.get("_class_name")
    pipeline_class = classes.get(str(class_name))
    if pipeline_class is None:
        raise ValueError(
            f"{source}: {what} must be one of {', '.join(classes)}; its model_index.json says {class_name}"
        )
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if pipeline_class in (StableDiffusionPipeline, StableDiffusionInpaintPipeline)
        else {}
    )
    # Components the folder leaves out ([null, null] in model_index.json, e.g. SD 3 without T5) are passed as None,
    # as diffusers asks of a component its pipeline does not list as optional.
    extra |= {name: None for name, entry in index.items() if _is_absent_component(entry) and name not in extra}
    if not weights:
        return _skeleton(location, pipeline_class, index, extra)
    # low_cpu_mem_usage as diffusers would choose it, said outright: without accelerate it warns that it falls back.
    with _loading_bars_hidden():
        return pipeline_class.from_pretrained(
            location, dtype=torch.float32, low_cpu_mem_usage=is_accelerate_available(), **extra
        )


def _is_absent_component(entry: object) -> bool:
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is None


@contextlib.contextmanager
def _loading_bars_hidden() -> Iterator[None]:
    """Hides diffusers' and transformers' loading bars, which would redraw export's own bar (it says "loading")
    over several lines; huggingface_hub's download bars still show. Both settings are restored after."""
    diffusers_bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    previous_hook = transformers_logging.set_tqdm_hook(
        lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True})
    )
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        if diffusers_bars:
            diffusers_logging.enable_progress_bar()


# The networks a pipeline folder may hold, built from their config.json alone (fixed table: names in
# model_index.json are looked up here, never imported).
_SKELETON_MODELS = {
    "UNet2DConditionModel": UNet2DConditionModel,
    "AutoencoderKL": AutoencoderKL,
    "CLIPTextModel": CLIPTextModel,
    "CLIPTextModelWithProjection": CLIPTextModelWithProjection,
    "SD3Transformer2DModel": SD3Transformer2DModel,
    "FluxTransformer2DModel": FluxTransformer2DModel,
    "T5EncoderModel": T5EncoderModel,
}
# Tokenizers by the class name's stem (a folder may say CLIPTokenizer or CLIPTokenizerFast, T5TokenizerFast...).
_SKELETON_TOKENIZERS = {"CLIPTokenizer": CLIPTokenizer, "T5Tokenizer": T5Tokenizer}
# model_index.json entries that are settings of the pipeline rather than components.
_PIPELINE_SETTINGS = ("force_zeros_for_empty_prompt", "requires_aesthetics_score")


def _skeleton(location: str, pipeline_class: type[DiffusionPipeline], index: dict, extra: dict) -> DiffusionPipeline:
    """The pipeline with its networks built from their configs on the ``meta`` device: configs, tokenizers and
    scheduler are real, no weight is read (seconds even for SDXL). Enough for geometry (``--dry-run``)."""
    components: dict = {}
    for name, entry in index.items():
        if name.startswith("_") or name in _PIPELINE_SETTINGS or name in extra:
            continue
        class_name = entry[1] if isinstance(entry, list | tuple) and len(entry) == 2 else None
        folder = Path(location) / name
        if class_name is None:
            components[name] = None
        elif class_name in _SKELETON_MODELS:
            model_class = _SKELETON_MODELS[class_name]
            with torch.device("meta"):
                if issubclass(model_class, PreTrainedModel):
                    components[name] = model_class(model_class.config_class.from_pretrained(folder))
                else:
                    components[name] = model_class.from_config(model_class.load_config(folder))
        elif class_name.removesuffix("Fast") in _SKELETON_TOKENIZERS:
            components[name] = _SKELETON_TOKENIZERS[class_name.removesuffix("Fast")].from_pretrained(folder)
        elif name == "scheduler":
            scheduler_config = json.loads((folder / SCHEDULER_CONFIG_NAME).read_text())
            components[name] = scheduler_class_from_config(scheduler_config).from_config(scheduler_config)
        else:
            components[name] = None  # image encoders, feature extractors: not served
    # Components the folder does not hold (an image encoder, a feature extractor): absent is None.
    for name, parameter in inspect.signature(pipeline_class.__init__).parameters.items():
        if name != "self" and parameter.default is inspect.Parameter.empty and name not in extra:
            components.setdefault(name, None)
    settings = {key: index[key] for key in _PIPELINE_SETTINGS if key in index}
    if "add_watermarker" in inspect.signature(pipeline_class.__init__).parameters:
        settings["add_watermarker"] = False
    pipeline = pipeline_class(**components, **extra, **settings)
    pipeline.register_to_config(_name_or_path=location)
    return pipeline


def load_source_pipeline(source: str | Path, *, weights: bool = True) -> DiffusionPipeline:
    """Loads an SD, SDXL or SD 3 pipeline in fp32 from a folder, the built-in name ``shapes``, or a hub id; without
    ``weights``, a skeleton whose networks are on the meta device (a local folder only)."""
    return _load(source, SOURCE_PIPELINES, "the source pipeline", weights=weights)


def load_refiner_pipeline(source: str | Path, *, weights: bool = True) -> DiffusionPipeline:
    """Loads an SDXL refiner (``StableDiffusionXLImg2ImgPipeline``) in fp32."""
    return _load(source, REFINER_PIPELINES, "the refiner", weights=weights)


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
    if any(tensor.is_meta for tensor in (*first.values(), *second.values())):
        return True  # skeletons (no weights read) cannot be compared
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


def _call_default(pipeline: DiffusionPipeline, argument: str) -> Any:
    """The default of an argument of the pipeline's ``__call__`` (what diffusers uses when a caller omits it)."""
    return inspect.signature(type(pipeline).__call__).parameters[argument].default


def _max_sequence_length(pipeline: DiffusionPipeline, max_sequence_length: int | None) -> int:
    """T5's rows: the pipeline's ``__call__`` default unless given, within its ``check_inputs`` limit."""
    if max_sequence_length is None:
        max_sequence_length = int(_call_default(pipeline, "max_sequence_length"))
    if not 1 <= max_sequence_length <= SD3_MAX_SEQUENCE_LENGTH_LIMIT:
        raise ExportOptionError(
            "max_sequence_length",
            f"must be in 1..{SD3_MAX_SEQUENCE_LENGTH_LIMIT} ({type(pipeline).__name__}'s limit), got "
            f"{max_sequence_length}",
        )
    return max_sequence_length


def _skip_guidance_layers(pipeline: DiffusionPipeline, layers: Sequence[int]) -> tuple[int, ...]:
    """The transformer blocks of skip-layer guidance, sorted, each one the transformer has."""
    count = int(pipeline.transformer.config.num_layers)
    chosen = tuple(sorted(set(layers)))
    if any(not 0 <= layer < count for layer in chosen):
        raise ExportOptionError(
            "skip_guidance_layers",
            f"must be block indices in 0..{count - 1} (this transformer's {count} blocks), got "
            f"{','.join(map(str, layers))}",
        )
    return chosen


def sd3_config_of(
    pipeline: DiffusionPipeline, *, max_sequence_length: int | None = None, skip_guidance_layers: Sequence[int] = ()
) -> Sd3Config:
    """What an SD 3 pipeline adds to the geometry, checked as ``StableDiffusion3Pipeline`` would fail on it."""
    first, second, t5 = pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3
    if first is None or second is None:
        raise ValueError("an SD 3 pipeline needs both CLIP text encoders (text_encoder and text_encoder_2)")
    if pipeline.tokenizer.model_max_length != pipeline.tokenizer_2.model_max_length:
        raise ValueError("the two CLIP tokenizers of an SD 3 pipeline must have the same model_max_length")
    if (t5 is None) != (pipeline.tokenizer_3 is None):
        raise ValueError("text_encoder_3 (T5) and tokenizer_3 come together or not at all")
    max_sequence_length = _max_sequence_length(pipeline, max_sequence_length)
    transformer = pipeline.transformer.config
    pooled_sizes = (int(first.config.projection_dim), int(second.config.projection_dim))
    if sum(pooled_sizes) != transformer.pooled_projection_dim:
        raise ValueError(
            f"the transformer takes {transformer.pooled_projection_dim} pooled values, but the CLIPs' projections "
            f"give {' + '.join(map(str, pooled_sizes))}"
        )
    return Sd3Config(
        text_hidden_sizes=(int(first.config.hidden_size), int(second.config.hidden_size)),
        pooled_sizes=pooled_sizes,
        t5_hidden_size=None if t5 is None else int(t5.config.d_model),
        t5_max_length=max_sequence_length,
        joint_attention_dim=int(transformer.joint_attention_dim),
        patch_size=int(transformer.patch_size),
        pos_embed_max_size=int(transformer.pos_embed_max_size),
        vae_shift_factor=float(pipeline.vae.config.shift_factor or 0.0),
        default_guidance_scale=float(_call_default(pipeline, "guidance_scale")),
        skip_guidance_layers=_skip_guidance_layers(pipeline, skip_guidance_layers),
        scheduler_names=sd3_scheduler_names(
            dict(pipeline.scheduler.config), load_scheduler_overrides(pipeline.name_or_path)
        ),
    )


def flux_config_of(pipeline: DiffusionPipeline, *, max_sequence_length: int | None = None) -> FluxConfig:
    """What a FLUX.1 pipeline adds to the geometry, checked as ``FluxPipeline`` would fail on it."""
    if pipeline.text_encoder is None or pipeline.text_encoder_2 is None:
        raise ValueError("a FLUX pipeline needs its CLIP (text_encoder) and T5 (text_encoder_2) encoders")
    transformer = pipeline.transformer.config
    clip, t5 = pipeline.text_encoder.config, pipeline.text_encoder_2.config
    if transformer.patch_size != 1:
        raise ValueError(
            f"FluxPipeline packs 2x2 latent patches itself: the transformer's patch_size must be 1, got "
            f"{transformer.patch_size}"
        )
    packed = int(pipeline.vae.config.latent_channels) * FLUX_PACKING**2
    if transformer.in_channels != packed:
        raise ValueError(
            f"the transformer takes {transformer.in_channels} channels, but the VAE's packed latents have {packed}"
        )
    if (transformer.pooled_projection_dim, transformer.joint_attention_dim) != (clip.hidden_size, t5.d_model):
        raise ValueError(
            f"the transformer takes pooled {transformer.pooled_projection_dim} and text "
            f"{transformer.joint_attention_dim} wide, but CLIP gives {clip.hidden_size} and T5 {t5.d_model}"
        )
    guidance_embeds = bool(transformer.guidance_embeds)
    return FluxConfig(
        pooled_size=int(clip.hidden_size),
        t5_hidden_size=int(t5.d_model),
        t5_max_length=_max_sequence_length(pipeline, max_sequence_length),
        guidance_embeds=guidance_embeds,
        vae_shift_factor=float(pipeline.vae.config.shift_factor or 0.0),
        # Without a guidance embedding FluxPipeline ignores guidance_scale: 0 says "none" in the config.
        default_guidance_scale=float(_call_default(pipeline, "guidance_scale")) if guidance_embeds else 0.0,
        scheduler_names=flux_scheduler_names(
            dict(pipeline.scheduler.config), load_scheduler_overrides(pipeline.name_or_path)
        ),
    )


def _flux_default_steps(pipeline: DiffusionPipeline) -> int:
    """FluxPipeline's ``__call__`` default (28, FLUX.1-dev's) for a guidance-distilled transformer; FLUX.1-schnell's
    model card's 4 for a timestep-distilled one (no guidance embedding)."""
    if pipeline.transformer.config.guidance_embeds:
        return int(_call_default(pipeline, "num_inference_steps"))
    return TIMESTEP_DISTILLED_DEFAULT_STEPS


def pipeline_config_of(
    pipeline: DiffusionPipeline,
    *,
    refiner: DiffusionPipeline | None = None,
    max_size_factor: int = 2,
    default_num_inference_steps: int | None = None,
    max_sequence_length: int | None = None,
    skip_guidance_layers: Sequence[int] = (),
    limits: RequestLimits | None = None,
) -> PipelineConfig:
    """The pipeline config of a loaded source pipeline (and refiner).

    Args:
        default_num_inference_steps: the steps a request omitting them gets; None: the family's default (SD 3:
            its pipeline's ``__call__`` default, 28; SD and SDXL: this interface's 30).
        max_sequence_length: SD 3 and FLUX: T5's token rows (None: the pipeline's ``__call__`` default, SD 3 256,
            FLUX 512).
        skip_guidance_layers: SD 3: the transformer blocks skip-layer guidance skips (empty: none; the transformer
            then takes no ``skip_layers`` input).
    """
    if skip_guidance_layers and not isinstance(pipeline, StableDiffusion3Pipeline):
        raise ExportOptionError(
            "skip_guidance_layers",
            f"SD 3's skip-layer guidance, for a StableDiffusion3Pipeline only; this is a {type(pipeline).__name__}",
        )
    if isinstance(pipeline, FluxPipeline):
        if refiner is not None:
            raise ExportOptionError("refiner", _REFINER_AFTER_SDXL)
        return flux_pipeline_config(
            vae_config=pipeline.vae.config,
            default_sample_size=int(pipeline.default_sample_size),
            tokenizer_max_length=pipeline.tokenizer.model_max_length,
            scheduler_config=dict(pipeline.scheduler.config),
            flux=flux_config_of(pipeline, max_sequence_length=max_sequence_length),
            default_num_inference_steps=(
                _flux_default_steps(pipeline) if default_num_inference_steps is None else default_num_inference_steps
            ),
            scheduler_overrides=load_scheduler_overrides(pipeline.name_or_path),
            max_size_factor=max_size_factor,
            limits=limits,
        )
    if isinstance(pipeline, StableDiffusion3Pipeline):
        if refiner is not None:
            raise ExportOptionError("refiner", _REFINER_AFTER_SDXL)
        return sd3_pipeline_config(
            transformer_config=pipeline.transformer.config,
            vae_config=pipeline.vae.config,
            tokenizer_max_length=pipeline.tokenizer.model_max_length,
            scheduler_config=dict(pipeline.scheduler.config),
            sd3=sd3_config_of(
                pipeline, max_sequence_length=max_sequence_length, skip_guidance_layers=skip_guidance_layers
            ),
            default_num_inference_steps=(
                int(_call_default(pipeline, "num_inference_steps"))
                if default_num_inference_steps is None
                else default_num_inference_steps
            ),
            scheduler_overrides=load_scheduler_overrides(pipeline.name_or_path),
            max_size_factor=max_size_factor,
            limits=limits,
        )
    if max_sequence_length is not None:
        raise ExportOptionError(
            "max_sequence_length", f"a setting of SD 3's and FLUX's T5 encoder; a {type(pipeline).__name__} has no T5"
        )
    is_sdxl = isinstance(pipeline, StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline)
    sdxl = sdxl_config_of(pipeline, refiner) if is_sdxl else None
    if refiner is not None and sdxl is None:
        raise ExportOptionError("refiner", _REFINER_AFTER_SDXL)
    return pipeline_config_from_components(
        unet_config=pipeline.unet.config,
        vae_config=pipeline.vae.config,
        text_encoder_config=pipeline.text_encoder.config,
        tokenizer_max_length=pipeline.tokenizer.model_max_length,
        scheduler_config=dict(pipeline.scheduler.config),
        scheduler_overrides=load_scheduler_overrides(pipeline.name_or_path),
        max_size_factor=max_size_factor,
        default_num_inference_steps=(
            DEFAULT_NUM_INFERENCE_STEPS if default_num_inference_steps is None else default_num_inference_steps
        ),
        sdxl=sdxl,
        limits=limits,
    )


@dataclass(frozen=True)
class TensorRtExportOptions:
    """How ``--backend tensorrt`` prepares and builds engines.

    Attributes:
        static_shapes: min = opt = max at the default image size (the batch stays dynamic: the engine batches
            requests step by step); the repository then takes that size only.
        timing_cache: TensorRT's timing cache file, read before and written after each build.
        onnx_dir: keep the prepared (fp16) ONNX files here, ``<model>/model.trt.onnx``; default: a temporary folder.
        build_engines: build the plans now (needs TensorRT and a GPU); without it, the prepared ONNX files and a
            ``build_engines.sh`` of trtexec lines are left in ``onnx_dir`` for the GPU host.
        workspace_bytes: TensorRT's workspace pool limit (default: TensorRT's own, the GPU's memory).
    """

    static_shapes: bool = False
    timing_cache: Path | None = None
    onnx_dir: Path | None = None
    build_engines: bool = True
    workspace_bytes: int | None = None


PREPARED_ONNX_FILE_NAME = "model.trt.onnx"
BUILD_SCRIPT_FILE_NAME = "build_engines.sh"


def _configured(config: PipelineConfig, options: RenderOptions, tensorrt: TensorRtExportOptions) -> PipelineConfig:
    skip_layer_guidance = config.sd3 is not None and bool(config.sd3.skip_guidance_layers)
    if skip_layer_guidance and options.component_max_batch_size < SKIP_LAYER_GUIDANCE_ROWS:
        raise ExportOptionError(
            "skip_guidance_layers",
            f"skip-layer guidance sends {SKIP_LAYER_GUIDANCE_ROWS} transformer rows an image: the networks' batch "
            f"({options.component_max_batch_size}, twice the larger of max_batch_size and max_running_images) must "
            f"hold them",
        )
    if tensorrt.static_shapes:
        if options.component_backend is not ComponentBackend.TENSORRT:
            raise ExportOptionError("static_shapes", "a TensorRT option (--backend tensorrt)")
        # Tiles come in many shapes (those at the edges are cut short), which engines of one size cannot take.
        return dataclasses.replace(config, fixed_size=True, vae_tiling=None)
    return config


def _with_vae_tile_above(config: PipelineConfig, tile_above_px: int | None) -> PipelineConfig:
    if tile_above_px is None or config.vae_tiling is None:
        return config
    if tile_above_px < 0:
        raise ExportOptionError(
            "vae_tile_above_px", f"must be 0 (tiles only per request) or a size in pixels, got {tile_above_px}"
        )
    return dataclasses.replace(config, vae_tiling=dataclasses.replace(config.vae_tiling, tile_above_px=tile_above_px))


def _engine_builds(
    config: PipelineConfig, options: RenderOptions, tensorrt: TensorRtExportOptions, *, output: Path, onnx_root: Path
) -> list[EngineBuild]:
    specs = components_of(config)
    return engine_builds(
        specs,
        config,
        max_batch_size=options.component_max_batch_size,
        onnx_path_for={spec.model_name: onnx_root / spec.model_name / PREPARED_ONNX_FILE_NAME for spec in specs},
        plan_path_for={
            spec.model_name: output
            / f"{options.model_prefix}{spec.model_name}"
            / MODEL_VERSION
            / TENSORRT_PLAN_FILE_NAME
            for spec in specs
        },
        timing_cache=tensorrt.timing_cache,
    )


def tensorrt_dry_run(
    source: str | Path,
    output: Path,
    *,
    options: RenderOptions,
    tensorrt: TensorRtExportOptions | None = None,
    refiner: str | Path | None = None,
    max_size_factor: int = 2,
    max_sequence_length: int | None = None,
    skip_guidance_layers: Sequence[int] = (),
    loras: Sequence[LoraSource] = (),
) -> list[EngineBuild]:
    """The engines ``export --backend tensorrt`` would build, from the source's configs alone (no weights read,
    nothing written): profiles, precisions and trtexec lines. With ``loras``, the weights are read after all: which
    networks take ``lora_scales`` is known only once diffusers has loaded the adapters into them."""
    tensorrt = tensorrt or TensorRtExportOptions()
    pipeline = load_source_pipeline(source, weights=bool(loras))
    refiner_pipeline = None if refiner is None else load_refiner_pipeline(refiner, weights=False)
    config = pipeline_config_of(
        pipeline,
        refiner=refiner_pipeline,
        max_size_factor=max_size_factor,
        max_sequence_length=max_sequence_length,
        skip_guidance_layers=skip_guidance_layers,
    )
    config = _configured(config, options, tensorrt)
    if loras:
        adapters, _ = attach_loras(pipeline, loras, family=config.family)
        config = dataclasses.replace(config, loras=adapters)
    onnx_root = tensorrt.onnx_dir or Path("ONNX_DIR")
    return _engine_builds(config, options, tensorrt, output=output, onnx_root=onnx_root)


def export_repository(
    source: str | Path,
    output: Path,
    *,
    options: RenderOptions | None = None,
    max_size_factor: int = 2,
    default_num_inference_steps: int | None = None,
    max_sequence_length: int | None = None,
    skip_guidance_layers: Sequence[int] = (),
    show_progress: bool = True,
    fit_preview: bool = True,
    refiner: str | Path | None = None,
    tensorrt: TensorRtExportOptions | None = None,
    limits: RequestLimits | None = None,
    vae_tile_above_px: int | None = None,
    loras: Sequence[LoraSource] = (),
) -> PipelineConfig:
    """Writes configs, model code, tokenizer, pipeline config and the networks of every model into ``output``.

    With ``fit_preview``, the pipeline first draws a few small samples of its own to fit the latent-to-RGB
    preview projection stored in the pipeline config (see :mod:`sdtriton.export.preview_fit`); without it,
    the exported model serves no previews. ``refiner`` (an SDXL refiner folder) adds the refiner stage.
    With the TensorRT backend the ONNX files are prepared for TensorRT (fp16), checked against torch fp32, and
    built into ``model.plan`` engines (see ``tensorrt``). ``default_num_inference_steps`` and
    ``max_sequence_length`` (SD 3's T5 rows) and ``skip_guidance_layers`` (SD 3's skip-layer guidance): see
    :func:`pipeline_config_of`. ``vae_tile_above_px``: images wider or taller than this are decoded in tiles
    (0: only requests that ask; None: above the VAE's ``sample_size``, diffusers' tile). ``loras``
    (``--lora NAME=PATH``): adapters loaded by diffusers and exported into the networks they adapt, chosen per request
    row (:mod:`sdtriton.export.lora`).
    """
    options = options or RenderOptions()
    tensorrt = tensorrt or TensorRtExportOptions()
    uses_tensorrt = options.component_backend is ComponentBackend.TENSORRT
    if uses_tensorrt and not tensorrt.build_engines and tensorrt.onnx_dir is None:
        raise ExportOptionError(
            "onnx_dir", "without an engine build, name the folder that keeps the prepared ONNX files"
        )
    fit = None
    # The figures of the preview fit and of each component follow the finished bar, one line each: a line
    # logged while the bar is drawn would leave a piece of the bar behind it.
    with tqdm(total=2 + fit_preview, desc="export", disable=not show_progress) as progress:
        progress.set_postfix_str(f"loading {source}")
        pipeline = load_source_pipeline(source)
        refiner_pipeline = None if refiner is None else load_refiner_pipeline(refiner)
        config = pipeline_config_of(
            pipeline,
            refiner=refiner_pipeline,
            max_size_factor=max_size_factor,
            default_num_inference_steps=default_num_inference_steps,
            max_sequence_length=max_sequence_length,
            skip_guidance_layers=skip_guidance_layers,
            limits=limits,
        )
        config = _with_vae_tile_above(_configured(config, options, tensorrt), vae_tile_above_px)
        progress.total += len(components_of(config)) * (1 + uses_tensorrt)
        progress.update()
        if fit_preview:
            progress.set_postfix_str("preview fit")
            fit = fit_preview_projection(pipeline, config)
            config = dataclasses.replace(config, latent_rgb_projection=fit.projection.astype(float).tolist())
            progress.update()
        lora_scales = {}
        if loras:
            # After the preview fit, which draws with the base model.
            progress.set_postfix_str("LoRA adapters")
            adapters, lora_scales = attach_loras(pipeline, loras, family=config.family)
            config = dataclasses.replace(config, loras=adapters)

        def advance(name: str) -> None:
            progress.set_postfix_str(name)
            progress.update()

        model_dirs = write_model_files(output, config, options)
        with tempfile.TemporaryDirectory(prefix="sdtriton-onnx-") as scratch:
            onnx_root = (tensorrt.onnx_dir or Path(scratch)) if uses_tensorrt else None
            results = export_components(
                pipeline,
                config,
                lambda spec: (
                    onnx_root / spec.model_name / ONNX_FILE_NAME
                    if onnx_root is not None
                    else model_dirs[spec.model_name] / MODEL_VERSION / ONNX_FILE_NAME
                ),
                refiner=refiner_pipeline,
                progress=advance,
                lora_scales=lora_scales,
            )
            if onnx_root is not None:
                _make_engines(results, config, options, tensorrt, output=output, onnx_root=onnx_root, advance=advance)
        progress.set_postfix_str("tokenizer and configs")
        for encoder, folder in TOKENIZER_DIRS.items():
            if encoder in model_dirs:
                getattr(pipeline, folder).save_pretrained(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION / folder)
        config.save(model_dirs[PIPELINE_MODEL_NAME] / MODEL_VERSION)
        progress.update()
    if fit is not None:
        logger.info(
            "preview projection: mean |preview - image| = %.2f / 255 on %d samples at %dx%d",
            fit.mean_abs_error,
            fit.num_samples,
            fit.height,
            fit.width,
        )
    for result in results:
        logger.info("%s: max |onnxruntime - torch| = %.3g", result.spec.model_name, result.max_abs_error)
    logger.info("model repository written to %s", output)
    return config


def _make_engines(
    results: list[ExportResult],
    config: PipelineConfig,
    options: RenderOptions,
    tensorrt: TensorRtExportOptions,
    *,
    output: Path,
    onnx_root: Path,
    advance: Callable[[str], None],
) -> None:
    """Prepares each exported ONNX for TensorRT, checks it against torch fp32, then builds (or scripts) engines."""
    builds = {
        build.model_name: build
        for build in _engine_builds(config, options, tensorrt, output=output, onnx_root=onnx_root)
    }
    for result in results:
        build = builds[result.spec.model_name]
        prepare_onnx_for_tensorrt(result.path, build.onnx_path, fp16=build.fp16)
        check_prepared_onnx(
            build.onnx_path,
            model_name=build.model_name,
            inputs=result.inputs,
            reference_outputs=result.torch_outputs,
        )
        if tensorrt.build_engines:
            build_engine(build, workspace_bytes=tensorrt.workspace_bytes)
        advance(f"{build.model_name} engine")
    if not tensorrt.build_engines:
        script = onnx_root / BUILD_SCRIPT_FILE_NAME
        lines = [
            "#!/usr/bin/env bash",
            "# Builds the engines of this repository on the GPU host (TensorRT "
            f"{TENSORRT_VERSION}, e.g. nvcr.io/nvidia/tensorrt:{NGC_RELEASE}-py3).",
            "set -euo pipefail",
        ]
        lines += [shlex.join(build.trtexec_command()) for build in builds.values()]
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)
        logger.info("engines not built; run %s on the GPU host", script)
