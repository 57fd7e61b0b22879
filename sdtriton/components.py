"""One spec per exported component: tensor names, types and axes.

The ONNX export (input/output names, dynamic axes), the rendered Triton configs (dims), the TensorRT
optimization profiles (min/opt/max shapes), the Python-backend runner and the tests all read these specs;
no tensor name of a component is written anywhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from sdtriton.pipeline_config import FLUX_PACKING, PipelineConfig

BATCH = "batch"
# Axes that vary per request: exported as dynamic, -1 in Triton configs.
# The VAE's own spatial axes (decoder and encoder), by the denoiser's axis each stands for: its profile is one tile's
# where the export decodes and encodes large images in tiles (PipelineConfig.vae_tiling), whatever the largest image.
VAE_AXES = {
    "vae_latent_height": "latent_height",
    "vae_latent_width": "latent_width",
    "vae_image_height": "image_height",
    "vae_image_width": "image_width",
}
DYNAMIC_AXES = frozenset(
    {BATCH, "latent_height", "latent_width", "image_height", "image_width", "image_sequence", *VAE_AXES}
)
RGB_CHANNELS = 3


@dataclass(frozen=True)
class TensorSpec:
    """A component tensor; ``axes`` names each axis, the first is always the batch axis."""

    name: str
    triton_dtype: str
    axes: tuple[str, ...]

    @property
    def numpy_dtype(self) -> str:
        return {"FP32": "float32", "FP16": "float16", "INT64": "int64", "INT32": "int32"}[self.triton_dtype]

    def item_dims(self, config: PipelineConfig) -> tuple[int, ...]:
        """Triton dims of one item (batch axis dropped): -1 for dynamic axes."""
        return tuple(-1 if axis in DYNAMIC_AXES else fixed_axis_size(axis, config) for axis in self.axes[1:])

    def onnx_dynamic_axes(self) -> dict[int, str]:
        return {index: axis for index, axis in enumerate(self.axes) if axis in DYNAMIC_AXES}

    def check_shape(self, config: PipelineConfig) -> tuple[int, ...]:
        """A second shape an export is checked at, other than the traced one on every dynamic axis."""
        return tuple(
            _dynamic_axis_size(axis, "check", config, max_batch_size=1)
            if axis in DYNAMIC_AXES
            else fixed_axis_size(axis, config)
            for axis in self.axes
        )

    def shape_range(
        self, config: PipelineConfig, *, max_batch_size: int
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes for a TensorRT optimization profile."""
        shapes = []
        for which in ("min", "opt", "max"):
            shape = []
            for axis in self.axes:
                if axis in DYNAMIC_AXES:
                    shape.append(_dynamic_axis_size(axis, which, config, max_batch_size=max_batch_size))
                else:
                    shape.append(fixed_axis_size(axis, config))
            shapes.append(tuple(shape))
        return shapes[0], shapes[1], shapes[2]


@dataclass(frozen=True)
class ComponentSpec:
    """A network exported to ONNX and served as its own Triton model.

    Attributes:
        fp16_safe: whether its activations fit fp16 (TensorRT engines run it in fp16); False keeps it fp32.
    """

    model_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fp16_safe: bool = True

    @property
    def input_names(self) -> list[str]:
        return [tensor.name for tensor in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [tensor.name for tensor in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for tensor in (*self.inputs, *self.outputs):
            if tensor.name == name:
                return tensor
        raise KeyError(f"{self.model_name} has no tensor {name!r}")


def fixed_axis_size(axis: str, config: PipelineConfig) -> int:
    sizes = {
        "sequence": config.text_max_length,
        "hidden": config.text_hidden_size,
        "latent_channels": config.latent_channels,
        # The UNet's sample: the latents, or an inpainting UNet's latents + mask + masked-image latents.
        "unet_in_channels": config.unet_in_channels or config.latent_channels,
        "rgb": RGB_CHANNELS,
    }
    if config.sd3 is not None:
        sizes |= config.sd3.axis_sizes(clip_length=config.text_max_length)
    if config.flux is not None:
        sizes |= config.flux.axis_sizes(latent_channels=config.latent_channels)
    if config.loras:
        sizes[LORA_ADAPTERS_AXIS] = len(config.loras)
    sdxl = config.sdxl
    if sdxl is not None:
        sizes |= {
            "hidden_1": sdxl.text_hidden_sizes[0],
            "hidden_2": sdxl.text_hidden_sizes[1],
            "pooled": sdxl.pooled_size,
            "time_ids": sdxl.time_ids,
        }
        if sdxl.refiner is not None:
            sizes |= {"refiner_hidden": sdxl.refiner.text_hidden_size, "refiner_time_ids": sdxl.refiner.time_ids}
    if axis not in sizes:
        raise ValueError(f"axis {axis!r} has no size in a {config.family} pipeline config")
    return sizes[axis]


def _dynamic_axis_size(axis: str, which: str, config: PipelineConfig, *, max_batch_size: int) -> int:
    f = config.vae_scale_factor
    # FLUX's packed latents: one token per 2x2 latent patch.
    patch = f * FLUX_PACKING
    if axis in VAE_AXES and (config.fixed_size or which == "check"):
        axis = VAE_AXES[axis]
    if config.fixed_size and axis != BATCH:
        sides = {"image_height": config.default_height, "image_width": config.default_width}
        sides |= {"latent_height": config.default_height // f, "latent_width": config.default_width // f}
        sides |= {"image_sequence": (config.default_height // patch) * (config.default_width // patch)}
        return sides[axis]
    if which == "check":
        return _check_axis_size(axis, config, patch=patch)
    table = {
        BATCH: (1, 2, max_batch_size),
        "image_height": (config.min_size, config.default_height, config.max_height),
        "image_width": (config.min_size, config.default_width, config.max_width),
        "latent_height": (config.min_size // f, config.default_height // f, config.max_height // f),
        "latent_width": (config.min_size // f, config.default_width // f, config.max_width // f),
        "image_sequence": (
            (config.min_size // patch) ** 2,
            (config.default_height // patch) * (config.default_width // patch),
            (config.max_height // patch) * (config.max_width // patch),
        ),
    }
    for vae_axis, axis_of in VAE_AXES.items():
        table[vae_axis] = _vae_axis_range(config, table[axis_of], image=axis_of.startswith("image"))
    return table[axis][("min", "opt", "max").index(which)]


def _vae_axis_range(config: PipelineConfig, sizes: tuple[int, int, int], *, image: bool) -> tuple[int, int, int]:
    """The VAE's range of a side: the denoiser's, but with tiling down to a one-latent edge tile, and, where
    every image above the export's size is tiled, up to the larger of that size and a tile only."""
    tiling = config.vae_tiling
    if tiling is None:
        return sizes
    f = config.vae_scale_factor
    scale = f if image else 1
    _, opt, high = sizes
    if tiling.tile_above_px:
        high = min(high, max(tiling.tile_above_px // f, tiling.latent_size) * scale)
    return (scale, min(opt, high), high)


def _check_axis_size(axis: str, config: PipelineConfig, *, patch: int) -> int:
    """A second size to check an export at, unlike the traced one on every dynamic axis: one row, about half the
    default height and a size step wider than that width (non-square), never below the smallest allowed size."""
    f, step = config.vae_scale_factor, config.size_multiple
    height = max(config.min_size, config.default_height // 2 // step * step)
    width = min(config.max_width, max(config.min_size, config.default_width // 2 // step * step) + step)
    sizes = {
        BATCH: 1,
        "image_height": height,
        "image_width": width,
        "latent_height": height // f,
        "latent_width": width // f,
        "image_sequence": (height // patch) * (width // patch),
    }
    return sizes[axis]


TEXT_ENCODER = ComponentSpec(
    model_name="text_encoder",
    inputs=(TensorSpec("input_ids", "INT64", (BATCH, "sequence")),),
    outputs=(TensorSpec("last_hidden_state", "FP32", (BATCH, "sequence", "hidden")),),
)
UNET = ComponentSpec(
    model_name="unet",
    inputs=(
        TensorSpec("sample", "FP32", (BATCH, "unet_in_channels", "latent_height", "latent_width")),
        TensorSpec("timestep", "FP32", (BATCH,)),
        TensorSpec("encoder_hidden_states", "FP32", (BATCH, "sequence", "hidden")),
    ),
    outputs=(TensorSpec("noise_pred", "FP32", (BATCH, "latent_channels", "latent_height", "latent_width")),),
)
VAE_DECODER = ComponentSpec(
    model_name="vae_decoder",
    inputs=(TensorSpec("latents", "FP32", (BATCH, "latent_channels", "vae_latent_height", "vae_latent_width")),),
    outputs=(TensorSpec("image", "FP32", (BATCH, "rgb", "vae_image_height", "vae_image_width")),),
)
# Image-to-image: the VAE's encoder, as the latent distribution's mean and standard deviation (its
# DiagonalGaussianDistribution), so that the engine draws the sample with the request's own generator exactly as
# diffusers' retrieve_latents does (mean + std x randn_tensor(generator)), and normalizes it as the pipeline does.
VAE_ENCODER = ComponentSpec(
    model_name="vae_encoder",
    inputs=(TensorSpec("image", "FP32", VAE_DECODER.outputs[0].axes),),
    outputs=(
        TensorSpec("latent_mean", "FP32", VAE_DECODER.inputs[0].axes),
        TensorSpec("latent_std", "FP32", VAE_DECODER.inputs[0].axes),
    ),
)
# The VAE of every family, after its denoiser.
_VAE = (VAE_DECODER, VAE_ENCODER)


# SDXL: two text encoders whose penultimate hidden states (as diffusers takes them) are concatenated, the second
# one's projected pooled output, and a UNet conditioned on them plus the size/crop ``time_ids``.
_INPUT_IDS = TensorSpec("input_ids", "INT64", (BATCH, "sequence"))
_SAMPLE = UNET.inputs[0]
_TIMESTEP = UNET.inputs[1]
SDXL_TEXT_ENCODER = ComponentSpec(
    model_name="text_encoder",
    inputs=(_INPUT_IDS,),
    outputs=(TensorSpec("penultimate_hidden_state", "FP32", (BATCH, "sequence", "hidden_1")),),
)
SDXL_TEXT_ENCODER_2 = ComponentSpec(
    model_name="text_encoder_2",
    inputs=(_INPUT_IDS,),
    outputs=(
        TensorSpec("penultimate_hidden_state", "FP32", (BATCH, "sequence", "hidden_2")),
        TensorSpec("text_embeds", "FP32", (BATCH, "pooled")),
    ),
)


def _sdxl_unet(model_name: str, *, hidden: str, time_ids: str) -> ComponentSpec:
    return ComponentSpec(
        model_name=model_name,
        inputs=(
            _SAMPLE,
            _TIMESTEP,
            TensorSpec("encoder_hidden_states", "FP32", (BATCH, "sequence", hidden)),
            TensorSpec("text_embeds", "FP32", (BATCH, "pooled")),
            TensorSpec("time_ids", "FP32", (BATCH, time_ids)),
        ),
        outputs=UNET.outputs,
    )


SDXL_UNET = _sdxl_unet("unet", hidden="hidden", time_ids="time_ids")
# The refiner's UNet: conditioned on the second encoder alone, with its own time_ids (aesthetic score).
SDXL_REFINER_UNET = _sdxl_unet("refiner_unet", hidden="refiner_hidden", time_ids="refiner_time_ids")


# SD 3 / 3.5 (StableDiffusion3Pipeline.encode_prompt): two CLIPs with projection, each giving its penultimate hidden
# state and its projected pooled output, and T5's last hidden state; the transformer takes the joined states, the
# joined pooled outputs and the timestep as diffusers passes it (the scheduler's sigma x 1000, FP32), and predicts
# the flow-matching velocity. The VAE decoder is the family-wide one (16 latent channels here): as for SD and
# SDXL, the engine de-normalizes the latents before it (latents / scaling_factor + shift_factor).
def _sd3_clip(model_name: str, *, hidden: str, pooled: str) -> ComponentSpec:
    return ComponentSpec(
        model_name=model_name,
        inputs=(_INPUT_IDS,),
        outputs=(
            TensorSpec("penultimate_hidden_state", "FP32", (BATCH, "sequence", hidden)),
            TensorSpec("text_embeds", "FP32", (BATCH, pooled)),
        ),
    )


SD3_TEXT_ENCODER = _sd3_clip("text_encoder", hidden="hidden_1", pooled="pooled_1")
SD3_TEXT_ENCODER_2 = _sd3_clip("text_encoder_2", hidden="hidden_2", pooled="pooled_2")
# T5 v1.1's feed-forward activations overflow fp16 (hence diffusers' bf16/fp32 advice): fp32 in TensorRT too.
SD3_TEXT_ENCODER_3 = ComponentSpec(
    model_name="text_encoder_3",
    inputs=(TensorSpec("input_ids", "INT64", (BATCH, "t5_sequence")),),
    outputs=(TensorSpec("last_hidden_state", "FP32", (BATCH, "t5_sequence", "t5_hidden")),),
    fp16_safe=False,
)
SD3_TRANSFORMER = ComponentSpec(
    model_name="transformer",
    inputs=(
        TensorSpec("hidden_states", "FP32", (BATCH, "latent_channels", "latent_height", "latent_width")),
        TensorSpec("encoder_hidden_states", "FP32", (BATCH, "joint_sequence", "joint_hidden")),
        TensorSpec("pooled_projections", "FP32", (BATCH, "pooled")),
        TensorSpec("timestep", "FP32", (BATCH,)),
    ),
    outputs=UNET.outputs,
)
# SD 3.5's skip-layer guidance: the same transformer with one more input, a per-row flag (1: this row skips the
# blocks chosen at export, Sd3Config.skip_guidance_layers; 0: a full forward). Each chosen block's outputs are selected
# per row (torch.where) between its inputs and its results, so a flagged row gets exactly what diffusers'
# skip_layers gives and every other row the plain forward, all in one call and with one copy of the weights.
SKIP_LAYERS_INPUT = "skip_layers"
SD3_SKIP_LAYERS_TRANSFORMER = ComponentSpec(
    model_name=SD3_TRANSFORMER.model_name,
    inputs=(*SD3_TRANSFORMER.inputs, TensorSpec(SKIP_LAYERS_INPUT, "FP32", (BATCH,))),
    outputs=SD3_TRANSFORMER.outputs,
)
# The component table of an SD 3 repository exported with skip-guidance layers.
SD3_SKIP_LAYERS = "sd3-skip-layers"

# FLUX.1 (FluxPipeline.encode_prompt): CLIPTextModel's pooled output and T5's last hidden state (T5 is
# ``text_encoder_2`` here); the transformer takes the 2x2-packed latents, the T5 states, the pooled output, the timestep
# as diffusers passes it (t / 1000, FP32), the tokens' rotary positions and, guidance-distilled (FLUX.1-dev), the
# guidance scale. Its ids carry the batch axis like every spec tensor, but FluxTransformer2DModel takes one [seq, 3]
# table for the whole batch (the exported wrapper reads row 0): the engine batches only images of one latent size.
FLUX_TEXT_ENCODER = ComponentSpec(
    model_name="text_encoder",
    inputs=(_INPUT_IDS,),
    outputs=(TensorSpec("pooler_output", "FP32", (BATCH, "pooled")),),
)
FLUX_TEXT_ENCODER_2 = ComponentSpec(
    model_name="text_encoder_2",
    inputs=SD3_TEXT_ENCODER_3.inputs,
    outputs=SD3_TEXT_ENCODER_3.outputs,
    fp16_safe=False,
)
_PACKED = TensorSpec("hidden_states", "FP32", (BATCH, "image_sequence", "packed_channels"))
_FLUX_TRANSFORMER_INPUTS = (
    _PACKED,
    TensorSpec("encoder_hidden_states", "FP32", (BATCH, "t5_sequence", "t5_hidden")),
    TensorSpec("pooled_projections", "FP32", (BATCH, "pooled")),
    TensorSpec("timestep", "FP32", (BATCH,)),
    TensorSpec("img_ids", "FP32", (BATCH, "image_sequence", "id_axes")),
    TensorSpec("txt_ids", "FP32", (BATCH, "t5_sequence", "id_axes")),
)
FLUX_TRANSFORMER = ComponentSpec(
    model_name="transformer",
    inputs=(*_FLUX_TRANSFORMER_INPUTS, TensorSpec("guidance", "FP32", (BATCH,))),
    outputs=(TensorSpec("noise_pred", "FP32", _PACKED.axes),),
)
# FLUX.1-schnell's transformer: no guidance embedding, no guidance input.
FLUX_UNGUIDED_TRANSFORMER = ComponentSpec(
    model_name="transformer", inputs=_FLUX_TRANSFORMER_INPUTS, outputs=FLUX_TRANSFORMER.outputs
)
# The component table of a FLUX repository whose transformer has no guidance embedding.
FLUX_UNGUIDED = "flux-unguided"

# Every component of each family, by model name; a repository holds those of its config (components_of).
FAMILY_COMPONENTS: Mapping[str, Mapping[str, ComponentSpec]] = {
    "sd": {spec.model_name: spec for spec in (TEXT_ENCODER, UNET, *_VAE)},
    "sdxl": {
        spec.model_name: spec for spec in (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, SDXL_UNET, SDXL_REFINER_UNET, *_VAE)
    },
    "sd3": {
        spec.model_name: spec
        for spec in (SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2, SD3_TEXT_ENCODER_3, SD3_TRANSFORMER, *_VAE)
    },
    SD3_SKIP_LAYERS: {
        spec.model_name: spec
        for spec in (SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2, SD3_TEXT_ENCODER_3, SD3_SKIP_LAYERS_TRANSFORMER, *_VAE)
    },
    "flux": {spec.model_name: spec for spec in (FLUX_TEXT_ENCODER, FLUX_TEXT_ENCODER_2, FLUX_TRANSFORMER, *_VAE)},
    FLUX_UNGUIDED: {
        spec.model_name: spec for spec in (FLUX_TEXT_ENCODER, FLUX_TEXT_ENCODER_2, FLUX_UNGUIDED_TRANSFORMER, *_VAE)
    },
}
# SD 1.x/2.x, the default family.
COMPONENTS: Mapping[str, ComponentSpec] = FAMILY_COMPONENTS["sd"]
# Names every family shares.
UNET_MODEL_NAME = UNET.model_name
REFINER_UNET_MODEL_NAME = SDXL_REFINER_UNET.model_name
T5_MODEL_NAME = SD3_TEXT_ENCODER_3.model_name
TRANSFORMER_MODEL_NAME = SD3_TRANSFORMER.model_name
VAE_DECODER_MODEL_NAME = VAE_DECODER.model_name
VAE_ENCODER_MODEL_NAME = VAE_ENCODER.model_name
# LoRA adapters exported into a network (PipelineConfig.loras): the network takes one more input, each row's weight of
# every adapter (0 where unused), and adds each adapted layer's delta ((x A^T) * the row's weights over each adapter's
# rank) B^T, so rows of different adapters and scales share one call (sdtriton.export.lora).
LORA_SCALES_INPUT = "lora_scales"
LORA_ADAPTERS_AXIS = "lora_adapters"
LORA_SCALES = TensorSpec(LORA_SCALES_INPUT, "FP32", (BATCH, LORA_ADAPTERS_AXIS))
# The config parameter of a component model that takes lora_scales (absent: it does not).
COMPONENT_LORA_PARAMETER = "lora_adapters"


def with_lora_scales(spec: ComponentSpec) -> ComponentSpec:
    """The spec of a network exported with LoRA adapters: its inputs and ``lora_scales`` last."""
    return dataclasses.replace(spec, inputs=(*spec.inputs, LORA_SCALES))


# The config parameter of a component model that names its family (absent: "sd").
COMPONENT_FAMILY_PARAMETER = "family"
# The config parameter of the pipeline model naming the device of the engine's tensors (absent: "cpu"); export --gpu
# sets "cuda:0", so latents, text states and noise predictions stay on the GPU between steps.
ENGINE_DEVICE_PARAMETER = "engine_device"
# The config parameter of every model of a repository exported with a model-name prefix (absent: none).
MODEL_PREFIX_PARAMETER = "model_prefix"
# Each text encoder's tokenizer folder, in the source pipeline and beside the pipeline model.
TOKENIZER_DIRS: Mapping[str, str] = {
    "text_encoder": "tokenizer",
    "text_encoder_2": "tokenizer_2",
    "text_encoder_3": "tokenizer_3",
}


def component_table(config: PipelineConfig) -> str:
    """The key in :data:`FAMILY_COMPONENTS` of a repository of this config (its family, FLUX without guidance, or SD 3
    with skip-guidance layers); the component models' ``family`` parameter, by which each finds its spec."""
    if config.flux is not None and not config.flux.guidance_embeds:
        return FLUX_UNGUIDED
    if config.sd3 is not None and config.sd3.skip_guidance_layers:
        return SD3_SKIP_LAYERS
    return config.family


def components_of(config: PipelineConfig) -> tuple[ComponentSpec, ...]:
    """The components a repository of this config holds, text encoders first, in call order (an SDXL refiner's
    UNet only with a refiner, SD 3's T5 only where the pipeline has one)."""
    absent = set()
    if not config.has_refiner:
        absent.add(REFINER_UNET_MODEL_NAME)
    if config.sd3 is not None and not config.sd3.has_t5:
        absent.add(T5_MODEL_NAME)
    adapted = config.lora_components()
    return tuple(
        with_lora_scales(spec) if name in adapted else spec
        for name, spec in FAMILY_COMPONENTS[component_table(config)].items()
        if name not in absent
    )


def is_t5_encoder(spec: ComponentSpec) -> bool:
    """Whether a text encoder is T5 (SD 3's ``text_encoder_3``, FLUX's ``text_encoder_2``): its token rows are the
    pipeline's ``max_sequence_length``, not its CLIP tokenizer's length."""
    return spec.inputs[0].axes[1:] == ("t5_sequence",)


def text_encoders_of(config: PipelineConfig) -> tuple[ComponentSpec, ...]:
    return tuple(spec for spec in components_of(config) if spec.model_name in TOKENIZER_DIRS)


def component_spec(family: str, model_name: str, *, lora: bool = False) -> ComponentSpec:
    """The spec of ``model_name`` in a ``family`` repository (names are looked up in a fixed table only); with
    ``lora``, as exported with LoRA adapters."""
    try:
        spec = FAMILY_COMPONENTS[family][model_name]
    except KeyError:
        raise KeyError(f"no component {model_name!r} in a {family!r} repository") from None
    return with_lora_scales(spec) if lora else spec


ONNX_FILE_NAME = "model.onnx"
TENSORRT_PLAN_FILE_NAME = "model.plan"
TOKENIZER_DIR_NAME = "tokenizer"
