"""``sdtriton plan``: how much GPU a diffusion deployment needs (SD 1.5, SDXL, SD 3.5, FLUX.1), counted from configs.

Nothing here loads a weight or touches a GPU. Each network (CLIP and T5 text encoders, the UNet or transformer, the
VAE decoder, and the VAE encoder that image-to-image requests run) is built from its config on PyTorch's ``meta``
device, where tensors have shapes and dtypes but no data, and one forward pass of each is run under two observers:

* :class:`torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of every matrix product, convolution and
  attention (normalisations and pointwise ops are not counted: they are bandwidth, not FLOPs).
* :class:`LiveBytesMode`, a dispatch mode, adds the bytes of every tensor an op creates to a live counter and
  takes them off when the tensor's storage is freed, keeping the peak: the activation memory of the pass.

Attention runs as a fused kernel, as ``F.scaled_dot_product_attention`` does on every GPU in
:data:`GPUS` (flash or memory-efficient attention, never materialising the attention matrix): on ``meta``,
PyTorch would otherwise take its math path, whose score matrices a GPU never holds.

A :class:`Measurement` (one model, one workload) is then held against each :class:`GpuSpec`: memory needed is
every weight resident + the largest single activation peak + :data:`CUDA_OVERHEAD_BYTES`; the latency floor is
the FLOPs of one image over the GPU's dense fp16 tensor peak, which no real run reaches.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from sdtriton.flux import (
    FLUX_CALLS,
    FLUX_DEFAULT_SAMPLE_SIZE,
    FLUX_LATENT_PACKING,
    FLUX_TEXT_ENCODER,
    FLUX_TEXT_ENCODER_2,
    FLUX_VAE,
    FluxCall,
)
from sdtriton.interface import (
    DEFAULT_SKIP_LAYER_GUIDANCE_START,
    DEFAULT_SKIP_LAYER_GUIDANCE_STOP,
    in_skip_layer_guidance_window,
)
from sdtriton.pipeline_config import SKIP_LAYER_GUIDANCE_ROWS, VaeTiling
from sdtriton.sd3 import SD3_TEXT_ENCODER, SD3_TEXT_ENCODER_2, SD3_TEXT_ENCODER_3, SD3_TRANSFORMERS, SD3_VAE
from sdtriton.sd15 import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE

logger = logging.getLogger(__name__)

GIB = 2**30
MIB = 2**20
TERA = 10**12

# What a GPU process holds beyond its tensors: the CUDA context (about 300-600 MiB, by GPU and driver, with
# lazy module loading), cuBLAS/cuDNN workspaces, and the caching allocator's rounding and fragmentation.
# An assumption, not a measurement; each Python-backend model of a Triton repository runs in its own stub
# process with its own context, so a repository of several GPU models pays it more than once.
CUDA_OVERHEAD_BYTES = 1 * GIB

# The shares of the dense fp16 peak that published fp16 diffusers runs (SDPA, batch 1, no compile) reach, from
# PUBLISHED_FIGURES against this planner's FLOPs (docs/gpu_sizing.md, "What the published runs reach"): 17% for
# SD 1.5 on a T4 and an A100, 37% for SDXL's larger kernels on an A100; rounded outwards. A test keeps every
# published figure inside. The "expected" latency is the floor at these utilisations.
PUBLISHED_UTILISATION_RANGE = (0.15, 0.40)

DEFAULT_STEPS = 50  # diffusers' default num_inference_steps, and the setting of the published benchmarks below
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class PlanError(ValueError):
    """A model or option the planner cannot size; the message names the component or option."""


# --- GPUs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model's datasheet figures.

    Attributes:
        name: short name, as ``--gpu`` takes it.
        datasheet_memory_gb: the memory the datasheet names (decimal GB or binary GiB, as marketed).
        memory_mib: what ``nvidia-smi`` reports as total (ECC on where the part has it): the sizing limit.
        fp16_dense_tflops: dense (no 2:4 sparsity) fp16 tensor-core peak, in TFLOP/s.
        description: the variant meant (form factor, memory type).
        bf16: bf16 runs on the tensor cores at the fp16 rate (every GPU since Ampere; not Turing's T4).
    """

    name: str
    datasheet_memory_gb: int
    memory_mib: int
    fp16_dense_tflops: float
    description: str
    bf16: bool = True

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


# Datasheets halved where they print only the sparse figure (marked with * there). The nvidia-smi totals are
# what those GPUs report in public nvidia-smi outputs (15360, 23034, 23028, 40960, 46068, 81920, 81559,
# 143771 MiB).
GPUS: tuple[GpuSpec, ...] = (
    # NVIDIA T4 datasheet: 16 GB GDDR6, "Mixed Precision (FP16/FP32) 65 TFLOPS" (Turing has no sparsity).
    GpuSpec("T4", 16, 15360, 65.0, "Tesla T4, 16 GB GDDR6, 70 W", bf16=False),
    # NVIDIA L4 datasheet: 24 GB GDDR6, "FP16 Tensor Core 242 TFLOPS*" (*with sparsity): 121 dense.
    GpuSpec("L4", 24, 23034, 121.0, "L4, 24 GB GDDR6, 72 W"),
    # AWS's A10G (EC2 G5) has no NVIDIA datasheet; 70 TFLOPS fp16 tensor, against the A10's 125, as tabled in
    # Baseten's "NVIDIA A10 vs A10G for ML model inference" (the A10G trades tensor rate for CUDA-core rate).
    GpuSpec("A10G", 24, 23028, 70.0, "A10G (AWS G5), 24 GB GDDR6"),
    # NVIDIA A100 datasheet: 40 GB HBM2 (SXM4), "FP16 Tensor Core 312 TFLOPS | 624 TFLOPS*".
    GpuSpec("A100-40GB", 40, 40960, 312.0, "A100 40GB SXM4, HBM2"),
    # NVIDIA L40S datasheet: 48 GB GDDR6 ECC, "FP16 Tensor Core 362.05 | 733 TFLOPS" (dense | sparse).
    GpuSpec("L40S", 48, 46068, 362.0, "L40S, 48 GB GDDR6"),
    # NVIDIA A100 datasheet: 80 GB HBM2e, "FP16 Tensor Core 312 TFLOPS | 624 TFLOPS*".
    GpuSpec("A100", 80, 81920, 312.0, "A100 80GB SXM4, HBM2e"),
    # NVIDIA H100 datasheet (SXM): 80 GB HBM3, "FP16 Tensor Core 1,979 teraFLOPS*" (*with sparsity): 989.5 dense.
    GpuSpec("H100", 80, 81559, 989.5, "H100 SXM5 80GB, HBM3"),
    # NVIDIA H200 datasheet (SXM): 141 GB HBM3e, "FP16 Tensor Core 1,979 TFLOPS*" (*with sparsity): 989.5 dense.
    GpuSpec("H200", 141, 143771, 989.5, "H200 SXM 141GB, HBM3e"),
)
GPU_NAMES = tuple(gpu.name for gpu in GPUS)


def gpu_spec(name: str) -> GpuSpec:
    """The :data:`GPUS` entry named ``name`` (any case).

    Raises:
        PlanError: no such GPU in the table.
    """
    for gpu in GPUS:
        if gpu.name.lower() == name.lower():
            return gpu
    raise PlanError(f"gpu: {name!r} is not in the table; use one of {', '.join(GPU_NAMES)}")


# --- Built-in architectures ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a pipeline.

    Attributes:
        role: its folder (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``).
        class_name: one of :data:`TEXT_ENCODER_CLASSES`.
        config: its ``config.json`` (``CLIPTextConfig`` or ``T5Config`` keyword arguments).
        tokens: the sequence length the pipeline encodes (CLIP: its positions; T5: ``max_sequence_length``).
    """

    role: str
    class_name: str
    config: dict[str, Any]
    tokens: int


def clip_encoder(role: str, class_name: str, config: dict[str, Any]) -> TextEncoderSpec:
    """A CLIP text tower, called at its full length of positions (77 in every published CLIP)."""
    return TextEncoderSpec(role, class_name, config, int(config.get("max_position_embeddings", 77)))


@dataclass(frozen=True)
class Architecture:
    """The component configs of one pipeline, as diffusers' ``model_index.json`` and config files give them.

    Attributes:
        name: ``sd15``, ``sdxl``, ``sd35-medium``, ... (:data:`ARCHITECTURES`) or the folder it was read from.
        denoiser: the UNet's or transformer's config.
        vae: ``AutoencoderKL`` config.
        text_encoders: in the order of their roles.
        denoiser_class: a key of :data:`DENOISERS`.
        penultimate_states: the pipeline takes the CLIP encoders' penultimate hidden states (SDXL, SD 3), so
            the pass keeps every layer's states.
        upcasts_vae: the pipeline decodes in fp32 when the VAE config says ``force_upcast`` (SD and SDXL
            pipelines; ``StableDiffusion3Pipeline`` and ``FluxPipeline`` decode in the pipeline's dtype).
        guidance: the pipeline's default call runs classifier-free guidance (two rows an image).
        steps: the pipeline's default number of denoising steps.
        dtype: the precision the model is published and run in.
        sample_size: latents a side at the native size, where the denoiser's config does not say.
    """

    name: str
    denoiser: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: tuple[TextEncoderSpec, ...]
    denoiser_class: str = "UNet2DConditionModel"
    penultimate_states: bool = False
    upcasts_vae: bool = True
    guidance: bool = True
    steps: int = DEFAULT_STEPS
    dtype: str = "fp16"
    sample_size: int | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def pixel_multiple(self) -> int:
        """Sizes are multiples of this: the VAE's scale factor times the latent patch the denoiser takes."""
        return self.vae_scale_factor * DENOISERS[self.denoiser_class].latent_patch(self.denoiser)

    @property
    def native_size_px(self) -> int:
        sample_size = self.sample_size or int(self.denoiser.get("sample_size", 64))
        return sample_size * self.vae_scale_factor


# What a pipeline class does that its components' configs do not say, by the class name's prefix.
PIPELINE_TRAITS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("StableDiffusionXL", {"penultimate_states": True}),
    # The model cards' torch_dtype, and the published weights' own.
    ("StableDiffusion3", {"penultimate_states": True, "upcasts_vae": False, "dtype": "bf16"}),
    # FLUX.1 dev is guidance-distilled (the scale is the transformer's `guidance` input) and schnell takes none:
    # one row an image. FluxPipeline's true_cfg_scale with a negative prompt (request input true_cfg_scale) doubles
    # them (--guidance).
    # FluxPipeline.default_sample_size: the transformer's config has none.
    ("Flux", {"upcasts_vae": False, "guidance": False, "dtype": "bf16", "sample_size": FLUX_DEFAULT_SAMPLE_SIZE}),
)


def pipeline_traits(pipeline_class: str) -> dict[str, Any]:
    """:data:`PIPELINE_TRAITS` of a diffusers pipeline class (none: a ``StableDiffusionPipeline``'s)."""
    return next((traits for prefix, traits in PIPELINE_TRAITS if pipeline_class.startswith(prefix)), {})


SD15 = Architecture(
    name="sd15",
    denoiser=SD15_UNET,
    vae=SD15_VAE,
    text_encoders=(clip_encoder("text_encoder", "CLIPTextModel", SD15_TEXT_ENCODER),),
)

SDXL = Architecture(
    name="sdxl",
    # stabilityai/stable-diffusion-xl-base-1.0/unet/config.json.
    denoiser={
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),  # the legacy name: heads per level (of 64 channels each)
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled text
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    },
    # stabilityai/stable-diffusion-xl-base-1.0/vae/config.json.
    vae={**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoders=(
        clip_encoder("text_encoder", "CLIPTextModel", SD15_TEXT_ENCODER),
        # OpenCLIP ViT-bigG/14's text tower: stabilityai/stable-diffusion-xl-base-1.0/text_encoder_2/config.json,
        # also SD 3's text_encoder_2.
        clip_encoder("text_encoder_2", "CLIPTextModelWithProjection", SD3_TEXT_ENCODER_2),
    ),
    **pipeline_traits("StableDiffusionXLPipeline"),
)

# StableDiffusion3Pipeline.__call__'s defaults: 28 steps, guidance_scale 7.0 (CFG), T5 at max_sequence_length 256.
SD3_DEFAULT_STEPS = 28
SD3_MAX_SEQUENCE_LENGTH = 256


def _sd35(name: str, transformer: dict[str, Any]) -> Architecture:
    return Architecture(
        name=name,
        denoiser=transformer,
        vae=SD3_VAE,
        text_encoders=(
            clip_encoder("text_encoder", "CLIPTextModelWithProjection", SD3_TEXT_ENCODER),
            clip_encoder("text_encoder_2", "CLIPTextModelWithProjection", SD3_TEXT_ENCODER_2),
            TextEncoderSpec("text_encoder_3", "T5EncoderModel", SD3_TEXT_ENCODER_3, SD3_MAX_SEQUENCE_LENGTH),
        ),
        denoiser_class="SD3Transformer2DModel",
        steps=SD3_DEFAULT_STEPS,
        **pipeline_traits("StableDiffusion3Pipeline"),
    )


def _flux(name: str, call: FluxCall) -> Architecture:
    return Architecture(
        name=name,
        denoiser=call.transformer,
        vae=FLUX_VAE,
        text_encoders=(
            clip_encoder("text_encoder", "CLIPTextModel", FLUX_TEXT_ENCODER),
            TextEncoderSpec("text_encoder_2", "T5EncoderModel", FLUX_TEXT_ENCODER_2, call.max_sequence_length),
        ),
        denoiser_class="FluxTransformer2DModel",
        steps=call.steps,
        **pipeline_traits("FluxPipeline"),
    )


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        SD15,
        SDXL,
        *(_sd35(name, transformer) for name, transformer in SD3_TRANSFORMERS.items()),
        *(_flux(name, call) for name, call in FLUX_CALLS.items()),
    )
}
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise PlanError(f"{path}: missing; a diffusers pipeline folder has one config.json per component") from error


def _call_defaults(pipeline_class: str) -> dict[str, Any]:
    """The defaults of a diffusers pipeline's ``__call__`` (none for a class diffusers does not have)."""
    import diffusers

    pipeline = getattr(diffusers, pipeline_class, None)
    if pipeline is None:
        return {}
    parameters = inspect.signature(pipeline.__call__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def read_architecture(folder: Path) -> Architecture:
    """Reads a diffusers pipeline folder's ``model_index.json`` and component configs; never a weight.

    What the configs do not say comes from the pipeline class: its :data:`PIPELINE_TRAITS` and its ``__call__``
    defaults (``num_inference_steps``; ``max_sequence_length``, T5's tokens).

    Raises:
        PlanError: a component the planner cannot build (named with its class).
    """
    index = _read_json(folder / "model_index.json")
    denoisers = [(role, index.get(role)) for role in ("unet", "transformer") if index.get(role)]
    if len(denoisers) != 1 or denoisers[0][1][1] not in DENOISERS:
        raise PlanError(
            f"{folder}: model_index.json must name one unet or transformer of {', '.join(DENOISERS)}, "
            f"it says {dict(denoisers)}"
        )
    (denoiser_role, (_, denoiser_class)), *_ = denoisers
    if (entry := index.get("vae")) is None or entry[1] != "AutoencoderKL":
        raise PlanError(f"{folder}: vae must be a AutoencoderKL, model_index.json says {entry}")
    pipeline_class = str(index.get("_class_name", ""))
    call = _call_defaults(pipeline_class)
    text_encoders = []
    for role in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        entry = index.get(role)
        if not entry or entry[1] is None:
            continue
        if entry[1] not in TEXT_ENCODER_CLASSES:
            raise PlanError(f"{folder}: {role} is a {entry[1]}; the planner sizes {', '.join(TEXT_ENCODER_CLASSES)}")
        config = _read_json(folder / role / "config.json")
        if entry[1] == "T5EncoderModel":
            text_encoders.append(TextEncoderSpec(role, entry[1], config, int(call.get("max_sequence_length", 512))))
        else:
            text_encoders.append(clip_encoder(role, entry[1], config))
    if not text_encoders:
        raise PlanError(f"{folder}: model_index.json names no text encoder")
    return Architecture(
        name=str(folder),
        denoiser=_read_json(folder / denoiser_role / "config.json"),
        vae=_read_json(folder / "vae" / "config.json"),
        text_encoders=tuple(text_encoders),
        denoiser_class=denoiser_class,
        steps=int(call.get("num_inference_steps", DEFAULT_STEPS)),
        **pipeline_traits(pipeline_class),
    )


def architecture(model: str | Path) -> Architecture:
    """A built-in architecture by name (:data:`ARCHITECTURES`) or a diffusers pipeline folder's."""
    if str(model) in ARCHITECTURES:
        return ARCHITECTURES[str(model)]
    folder = Path(model)
    if not folder.is_dir():
        raise PlanError(
            f"model: {model!r} is neither one of {', '.join(ARCHITECTURES)} nor a diffusers pipeline folder"
        )
    return read_architecture(folder)


# --- Counting on the meta device -----------------------------------------------------------------------------


class LiveBytesMode(TorchDispatchMode):
    """Counts the bytes of live tensors that ops create, and keeps the peak.

    Every op's output tensors are added by their untyped storage (so that views and in-place results, which
    share a storage, count once) and taken off by a ``weakref.finalize`` on that storage, which fires when the
    last tensor using it is freed, exactly when a GPU's caching allocator would get the block back. Meta
    tensors have storages with a size and no data, and PyTorch keeps one Python object per storage, so this
    works on ``meta`` as on real devices. Storages that existed before (weights, buffers) are never counted.

    Args:
        existing: tensors whose storages are not activations (a module's parameters and buffers).
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        # Strong references: a storage's id must not be reused while it is in the table.
        self._existing = {id(storage): storage for storage in (t.untyped_storage() for t in existing)}
        self._live: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def track(self, tensor: torch.Tensor) -> None:
        """Counts ``tensor``'s storage as live until it is freed (inputs made before the mode)."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._existing or key in self._live:
            return
        nbytes = storage.nbytes()
        self._live[key] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        return out


class FusedAttentionMode(TorchFunctionMode):
    """Runs ``F.scaled_dot_product_attention`` as the fused memory-efficient kernel a GPU runs.

    On ``meta`` (and on CPUs without a fused kernel) SDPA falls back to its math path, which materialises the
    attention scores (batch x heads x queries x keys, twice with the softmax); flash and memory-efficient
    attention never hold them. ``aten._scaled_dot_product_efficient_attention`` has a meta kernel and a FLOP
    formula (the same two matrix products the math path counts), so FLOPs are unchanged and memory is the GPU's.
    Boolean masks (causal masks of the text encoders) are dropped: they change neither shapes nor counted FLOPs.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _fused_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    if query.dim() != 4 or enable_gqa:
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )
    bias = attn_mask if attn_mask is not None and attn_mask.is_floating_point() else None
    output, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, False, dropout_p, is_causal, scale=scale
    )
    return output


@dataclass(frozen=True)
class CallCost:
    """One forward pass, counted.

    Attributes:
        flops: FLOPs of matrix products, convolutions and attention.
        activation_peak_bytes: the most bytes of inputs and op outputs alive at once.
    """

    flops: int
    activation_peak_bytes: int


def count_call(
    module: torch.nn.Module,
    call: Callable[[], Any],
    *,
    inputs: Sequence[torch.Tensor] = (),
    fused_attention: bool = True,
) -> CallCost:
    """Runs ``call`` (a forward pass of ``module``) under the FLOP counter and :class:`LiveBytesMode`.

    Meant for ``meta`` modules and inputs, but works on any device.

    Args:
        module: the network; its parameters and buffers are not counted as activations.
        call: runs the forward pass; its result is dropped.
        inputs: the pass's input tensors, counted as live activations.
        fused_attention: run SDPA as the fused GPU kernel (:class:`FusedAttentionMode`); False: PyTorch's own
            choice for the device (the math path on ``meta``).
    """
    live = LiveBytesMode([*module.parameters(), *module.buffers()])
    flop_counter = FlopCounterMode(display=False)
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if fused_attention:
            stack.enter_context(FusedAttentionMode())
        stack.enter_context(flop_counter)
        stack.enter_context(live)
        for tensor in inputs:
            live.track(tensor)
        call()
    return CallCost(flops=flop_counter.get_total_flops(), activation_peak_bytes=live.peak_bytes)


# Counted passes by what decides them (the network's class and config, its dtype, the call's input shapes): the
# same text encoder, UNet or VAE call recurs across workloads (another step count, skip-layer guidance's wide row,
# another dtype of the denoiser only), and a pass on ``meta`` costs seconds of dispatch.
_CALL_COSTS: dict[tuple[Any, ...], CallCost] = {}


def _memo_cost(key: tuple[Any, ...], count: Callable[[], CallCost]) -> CallCost:
    """``count()``, once per ``key`` (a tuple of everything the counted pass depends on) in this process."""
    if key not in _CALL_COSTS:
        _CALL_COSTS[key] = count()
    return _CALL_COSTS[key]


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _shapes_key(tensors: Any) -> tuple[Any, ...]:
    """The structure, shapes and dtypes of a call's tensor arguments (all that a pass on ``meta`` reads of them)."""
    leaves, spec = tree_flatten(tensors)
    return str(spec), tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silences a library's INFO/WARNING chatter about building random-weight models."""
    library_logger = logging.getLogger(logger_name)
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library_logger.setLevel(level)


def _as_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # torch.nn.Module.to, not ModelMixin.to: the latter only adds a warning about _keep_in_fp32_modules, which
    # neither SD UNet nor VAE has.
    return torch.nn.Module.to(module, dtype=dtype).eval()


def build_diffusers(class_name: str, config: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers model (``UNet2DConditionModel``, ``SD3Transformer2DModel``, ...) on ``meta`` from its config."""
    import diffusers

    with torch.device("meta"), _quiet("diffusers"):
        return _as_dtype(getattr(diffusers, class_name).from_config(config), dtype)


def build_unet(config: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A ``UNet2DConditionModel`` on ``meta`` from its config."""
    return build_diffusers("UNet2DConditionModel", config, dtype)


def build_vae(config: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """An ``AutoencoderKL`` on ``meta`` from its config."""
    return build_diffusers("AutoencoderKL", config, dtype)


def build_text_encoder(class_name: str, config: dict[str, Any], dtype: torch.dtype) -> torch.nn.Module:
    """A text encoder of :data:`TEXT_ENCODER_CLASSES` on ``meta`` from its config."""
    import transformers

    config_class = transformers.T5Config if class_name == "T5EncoderModel" else transformers.CLIPTextConfig
    text_config = config_class(**{k: v for k, v in config.items() if not k.startswith("_")})
    with torch.device("meta"), _quiet("transformers"):
        return _as_dtype(getattr(transformers, class_name)(text_config), dtype)


def weight_tensors(module: torch.nn.Module, *parts: torch.nn.Module | None) -> list[torch.Tensor]:
    """What a checkpoint of ``module`` (or of its ``parts``) holds: parameters and persistent buffers, tied ones once.

    SD 3's position table (``pos_embed``, 384 x 384 x 1536 in SD 3.5 Medium: 9% of it) is such a buffer.
    """
    tensors: dict[int, torch.Tensor] = {}
    for part in parts or (module,):
        if part is not None:
            tensors.update((id(t), t) for t in part.state_dict(keep_vars=True).values())
    return list(tensors.values())


# --- Measurement ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one request asks of the pipeline.

    Attributes:
        width_px / height_px: image size (multiples of :attr:`Architecture.pixel_multiple`).
        steps: denoising steps (UNet or transformer calls).
        batch: images per request.
        guidance: classifier-free guidance: the denoiser and text encoders run at twice the batch (FLUX.1:
            ``true_cfg_scale`` with a negative prompt).
        dtype: ``fp16``, ``bf16`` or ``fp32``, weights and activations (T5 and an upcast VAE excepted).
        fused_attention: attention as the GPU's fused kernel (see :class:`FusedAttentionMode`).
        skip_layer_guidance: SD 3.5's skip-layer guidance (with ``guidance``): the transformer calls in its window
            (the pipeline's default share of the steps) carry a third row an image.
        vae_tile_above_px: the VAE decodes images wider or taller than this in tiles, as the server does (export
            ``--vae-tile-above``); None: above the VAE's ``sample_size`` (export's default); 0: never.
    """

    width_px: int
    height_px: int
    steps: int = DEFAULT_STEPS
    batch: int = 1
    guidance: bool = True
    dtype: str = "fp16"
    fused_attention: bool = True
    skip_layer_guidance: bool = False
    vae_tile_above_px: int | None = None

    @property
    def rows(self) -> int:
        """Rows the denoiser and text encoders see: the batch, doubled by guidance."""
        return self.batch * (2 if self.guidance else 1)

    @property
    def skip_layer_guidance_rows(self) -> int:
        """Rows of a denoiser call in skip-layer guidance's window: negative, prompt and the prompt skipping layers."""
        return self.batch * SKIP_LAYER_GUIDANCE_ROWS

    @property
    def skip_layer_guidance_calls(self) -> int:
        """Denoiser calls in skip-layer guidance's window, as the serving engine and diffusers choose them."""
        if not self.skip_layer_guidance:
            return 0
        window = {"start": DEFAULT_SKIP_LAYER_GUIDANCE_START, "stop": DEFAULT_SKIP_LAYER_GUIDANCE_STOP}
        return sum(in_skip_layer_guidance_window(step, self.steps, **window) for step in range(self.steps))


@dataclass(frozen=True)
class VaeTilingCount:
    """The VAE decoder's (or encoder's) tiling at a workload (as the server runs it: one call a tile, a tile's rows
    per image).

    Attributes:
        tile_above_px: tiles above this many pixels a side (0: never).
        tile_px: a tile's side in pixels (the VAE's ``sample_size``).
        tiles: tiles an image at the workload's size (1: decoded in one call).
        untiled_activation_peak_bytes: the activation peak of decoding the image in one call.
    """

    tile_above_px: int
    tile_px: int
    tiles: int
    untiled_activation_peak_bytes: int


@dataclass(frozen=True)
class NetworkCost:
    """One network of the pipeline, counted at the workload's shapes.

    Attributes:
        role: ``text_encoder``, ``text_encoder_2``, ``text_encoder_3``, ``unet``, ``transformer``, ``vae_decoder``
            or ``vae_encoder``.
        parameters: what its checkpoint holds: parameters and persistent buffers (the VAE decoder's: decoder and
            ``post_quant_conv``; the encoder's: encoder and ``quant_conv``).
        weight_bytes: those at the dtype they run in.
        dtype: the dtype it runs in (``fp32`` for a VAE with ``force_upcast`` in an SD or SDXL pipeline, ``bf16``
            for T5 in an fp16 pipeline).
        calls_per_request: forward passes a request makes (``steps`` for the denoiser; 0 for the VAE encoder, which
            only image-to-image requests run).
        rows: batch rows of each call.
        flops_per_call: FLOPs of one call at ``rows``.
        activation_peak_bytes: activation peak of one call (of the widest, with skip-layer guidance).
        wide_calls: of ``calls_per_request``, those at ``wide_rows`` instead (skip-layer guidance's window).
        wide_rows: batch rows of each of those calls.
        flops_per_wide_call: FLOPs of one of them. The served transformer runs the skipped blocks for the third row
            too and keeps their inputs (one call for every row), so the row costs a full one.
        vae_tiling: the VAE decoder's or encoder's tiles (then the decoder's ``calls_per_request`` counts them,
            ``flops_per_call`` is their mean and ``activation_peak_bytes`` the largest tile's); None for other
            networks.
    """

    role: str
    parameters: int
    weight_bytes: int
    dtype: str
    calls_per_request: int
    rows: int
    flops_per_call: int
    activation_peak_bytes: int
    wide_calls: int = 0
    wide_rows: int = 0
    flops_per_wide_call: int = 0
    vae_tiling: VaeTilingCount | None = None

    @property
    def flops_per_request(self) -> int:
        return (
            self.flops_per_call * (self.calls_per_request - self.wide_calls)
            + self.flops_per_wide_call * self.wide_calls
        )


DENOISER_ROLES = ("unet", "transformer")


@dataclass(frozen=True)
class Measurement:
    """A model's networks counted for one workload; independent of the GPU."""

    model: str
    workload: Workload
    networks: tuple[NetworkCost, ...]

    def network(self, role: str) -> NetworkCost:
        return next(network for network in self.networks if network.role == role)

    @property
    def denoiser(self) -> NetworkCost:
        """The UNet or transformer: the network called at every step."""
        return next(network for network in self.networks if network.role in DENOISER_ROLES)

    @property
    def weight_bytes(self) -> int:
        return sum(network.weight_bytes for network in self.networks)

    @property
    def activation_peak_bytes(self) -> int:
        """The networks run one at a time: the largest single peak."""
        return max(network.activation_peak_bytes for network in self.networks)

    @property
    def peak_network(self) -> NetworkCost:
        return max(self.networks, key=lambda network: network.activation_peak_bytes)

    @property
    def flops_per_step(self) -> int:
        """One denoiser call (both guidance rows of every image of the request)."""
        return self.denoiser.flops_per_call

    @property
    def flops_per_wide_step(self) -> int:
        """One denoiser call in skip-layer guidance's window (three rows an image); 0 without it."""
        return self.denoiser.flops_per_wide_call

    @property
    def flops_per_request(self) -> int:
        return sum(network.flops_per_request for network in self.networks)

    @property
    def flops_per_image(self) -> float:
        return self.flops_per_request / self.workload.batch


# T5 v1.1 (the T5-XXL encoder of SD 3 and FLUX.1) never runs in fp16: it was trained in bf16, and its feed-forward
# outputs grow past fp16's largest number (65504) and overflow to inf, which is why transformers keeps T5's `wo`
# layers in fp32 when it loads the model in fp16. bf16 has fp32's range in fp16's two bytes: an fp16 pipeline's T5
# runs in bf16 here.
FP16_UNSAFE_TEXT_ENCODERS = {"T5EncoderModel": "bf16"}


def _network_cost(
    role: str, weights: Sequence[torch.Tensor], dtype: str, *, calls: int, rows: int, cost: CallCost
) -> NetworkCost:
    return NetworkCost(
        role=role,
        parameters=sum(t.numel() for t in weights),
        weight_bytes=sum(t.numel() * t.element_size() for t in weights),
        dtype=dtype,
        calls_per_request=calls,
        rows=rows,
        flops_per_call=cost.flops,
        activation_peak_bytes=cost.activation_peak_bytes,
    )


def _text_encoder_cost(arch: Architecture, encoder: TextEncoderSpec, workload: Workload) -> NetworkCost:
    dtype_name = workload.dtype
    if dtype_name == "fp16":
        dtype_name = FP16_UNSAFE_TEXT_ENCODERS.get(encoder.class_name, dtype_name)
    model = build_text_encoder(encoder.class_name, encoder.config, DTYPES[dtype_name])
    input_ids = torch.zeros(workload.rows, encoder.tokens, dtype=torch.long, device="meta")
    hidden_states = arch.penultimate_states and encoder.class_name != "T5EncoderModel"
    key = ("text", encoder.class_name, _config_key(encoder.config), dtype_name, _shapes_key(input_ids), hidden_states)
    cost = _memo_cost(
        (*key, workload.fused_attention),
        lambda: count_call(
            model,
            lambda: model(input_ids, output_hidden_states=hidden_states),
            inputs=[input_ids],
            fused_attention=workload.fused_attention,
        ),
    )
    return _network_cost(encoder.role, weight_tensors(model), dtype_name, calls=1, rows=workload.rows, cost=cost)


_Inputs = tuple[dict[str, Any], list[torch.Tensor]]


def _latent_shape(arch: Architecture, workload: Workload) -> tuple[int, int]:
    scale = arch.vae_scale_factor
    return workload.height_px // scale, workload.width_px // scale


def _unet_inputs(arch: Architecture, workload: Workload, rows: int, dtype: torch.dtype) -> _Inputs:
    unet = arch.denoiser
    meta = {"device": "meta", "dtype": dtype}
    sample = torch.empty(rows, unet.get("in_channels", 4), *_latent_shape(arch, workload), **meta)
    text = torch.empty(rows, arch.text_encoders[0].tokens, unet["cross_attention_dim"], **meta)
    timestep = torch.full((rows,), 999, dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {"sample": sample, "timestep": timestep, "encoder_hidden_states": text}
    inputs = [sample, text, timestep]
    embed_type = unet.get("addition_embed_type")
    if embed_type == "text_time":
        pooled_config = arch.text_encoders[-1].config  # SDXL's pooled text comes from its last (projecting) encoder
        pooled = int(pooled_config.get("projection_dim", pooled_config["hidden_size"]))
        time_ids = (int(unet["projection_class_embeddings_input_dim"]) - pooled) // int(unet["addition_time_embed_dim"])
        added = {"text_embeds": torch.empty(rows, pooled, **meta), "time_ids": torch.empty(rows, time_ids, **meta)}
        kwargs["added_cond_kwargs"] = added
        inputs += list(added.values())
    elif embed_type is not None:
        raise PlanError(f"unet: addition_embed_type {embed_type!r} is not sized; only None and 'text_time' are")
    return kwargs, inputs


def t5_encoder(arch: Architecture) -> TextEncoderSpec | None:
    """The pipeline's T5 encoder, if it has one."""
    return next((encoder for encoder in arch.text_encoders if encoder.class_name == "T5EncoderModel"), None)


def _t5_tokens(arch: Architecture) -> int:
    # Without T5 (text_encoder_3 None), StableDiffusion3Pipeline feeds zeros of the same length in its place.
    return SD3_MAX_SEQUENCE_LENGTH if (t5 := t5_encoder(arch)) is None else t5.tokens


def _sd3_inputs(arch: Architecture, workload: Workload, rows: int, dtype: torch.dtype) -> _Inputs:
    config = arch.denoiser
    meta = {"device": "meta", "dtype": dtype}
    latent_shape = _latent_shape(arch, workload)
    table = config.get("pos_embed_max_size")
    patch = _sd3_patch(config)
    if table is not None and max(latent_shape) > table * patch:
        raise PlanError(
            f"size: {workload.width_px}x{workload.height_px} exceeds the transformer's position table "
            f"(pos_embed_max_size {table}): at most {table * patch * arch.vae_scale_factor} px a side"
        )
    # StableDiffusion3Pipeline joins the CLIPs' states (77 tokens) and T5's along the sequence.
    tokens = arch.text_encoders[0].tokens + _t5_tokens(arch)
    kwargs = {
        "hidden_states": torch.empty(rows, config.get("in_channels", 16), *latent_shape, **meta),
        "encoder_hidden_states": torch.empty(rows, tokens, config["joint_attention_dim"], **meta),
        "pooled_projections": torch.empty(rows, config["pooled_projection_dim"], **meta),
        "timestep": torch.empty(rows, **meta),
    }
    return kwargs, list(kwargs.values())


def _flux_inputs(arch: Architecture, workload: Workload, rows: int, dtype: torch.dtype) -> _Inputs:
    config = arch.denoiser
    meta = {"device": "meta", "dtype": dtype}
    height, width = (side // FLUX_LATENT_PACKING for side in _latent_shape(arch, workload))
    image_tokens, text_tokens = height * width, _t5_tokens(arch)
    axes = len(config.get("axes_dims_rope", (16, 56, 56)))
    kwargs = {
        "hidden_states": torch.empty(rows, image_tokens, config.get("in_channels", 64), **meta),
        "encoder_hidden_states": torch.empty(rows, text_tokens, config.get("joint_attention_dim", 4096), **meta),
        "pooled_projections": torch.empty(rows, config.get("pooled_projection_dim", 768), **meta),
        "timestep": torch.empty(rows, **meta),
        "img_ids": torch.empty(image_tokens, axes, **meta),
        "txt_ids": torch.empty(text_tokens, axes, **meta),
    }
    if config.get("guidance_embeds"):
        kwargs["guidance"] = torch.empty(rows, **meta)
    return kwargs, list(kwargs.values())


def _sd3_patch(config: dict[str, Any]) -> int:
    return int(config.get("patch_size", 2))


def _flux_patch(config: dict[str, Any]) -> int:
    return FLUX_LATENT_PACKING * int(config.get("patch_size", 1))


@dataclass(frozen=True)
class DenoiserKind:
    """How the planner calls one class of denoiser.

    Attributes:
        role: its folder in a diffusers pipeline (``unet``, ``transformer``).
        inputs: its forward's keyword arguments on ``meta`` for a workload at a number of rows, and the tensors
            among them.
        latent_patch: latents a side that make one token (1 for a UNet), from its config.
        skips_layers: takes skip-layer guidance's third row (SD 3.5's transformer).
    """

    role: str
    inputs: Callable[[Architecture, Workload, int, torch.dtype], _Inputs]
    latent_patch: Callable[[dict[str, Any]], int]
    skips_layers: bool = False


DENOISERS: dict[str, DenoiserKind] = {
    "UNet2DConditionModel": DenoiserKind("unet", _unet_inputs, lambda config: 1),
    "SD3Transformer2DModel": DenoiserKind("transformer", _sd3_inputs, _sd3_patch, skips_layers=True),
    "FluxTransformer2DModel": DenoiserKind("transformer", _flux_inputs, _flux_patch),
}


def _denoiser_cost(arch: Architecture, workload: Workload, dtype: torch.dtype) -> NetworkCost:
    kind = DENOISERS[arch.denoiser_class]
    model = build_diffusers(arch.denoiser_class, arch.denoiser, dtype)

    def call_cost(rows: int) -> CallCost:
        kwargs, inputs = kind.inputs(arch, workload, rows, dtype)
        key = ("denoiser", arch.denoiser_class, _config_key(arch.denoiser), str(dtype), _shapes_key(kwargs))
        return _memo_cost(
            (*key, workload.fused_attention),
            lambda: count_call(model, lambda: model(**kwargs), inputs=inputs, fused_attention=workload.fused_attention),
        )

    cost = call_cost(workload.rows)
    network = _network_cost(
        kind.role, weight_tensors(model), workload.dtype, calls=workload.steps, rows=workload.rows, cost=cost
    )
    if not workload.skip_layer_guidance_calls:
        return network
    wide = call_cost(workload.skip_layer_guidance_rows)
    return dataclasses.replace(
        network,
        activation_peak_bytes=max(cost.activation_peak_bytes, wide.activation_peak_bytes),
        wide_calls=workload.skip_layer_guidance_calls,
        wide_rows=workload.skip_layer_guidance_rows,
        flops_per_wide_call=wide.flops,
    )


def _vae_cost(arch: Architecture, workload: Workload, *, encode: bool) -> NetworkCost:
    """The VAE decoder (``encode``: the encoder, image-to-image's), one call an image, or one a tile where the server
    tiles: an image whose decode is tiled has its input image encoded in the tiles diffusers' ``_tiled_encode`` cuts,
    so the peak is one tile's. The encoder runs for image-to-image requests only: its weights and peak are counted
    (a served repository holds it), its calls not (the workload is text-to-image)."""
    # diffusers' SD and SDXL pipelines decode (and their img2img pipelines encode) in fp32 when the VAE config says
    # force_upcast (SDXL's VAE overflows fp16); StableDiffusion3Pipeline and FluxPipeline use the pipeline's dtype
    # whatever the config says.
    from sdtriton.serving.tiling import cut_tiles

    dtype_name = "fp32" if arch.upcasts_vae and arch.vae.get("force_upcast") else workload.dtype
    vae_dtype = DTYPES[dtype_name]
    vae = build_vae(arch.vae, vae_dtype)
    latent_shape = _latent_shape(arch, workload)
    if encode:
        role, call, parts = "vae_encoder", vae.encode, (vae.encoder, vae.quant_conv)
        channels, shape = arch.vae.get("in_channels", 3), (workload.height_px, workload.width_px)
    else:
        role, call, parts = "vae_decoder", vae.decode, (vae.decoder, vae.post_quant_conv)
        channels, shape = arch.vae.get("latent_channels", 4), latent_shape
    pixels_or_latents = torch.empty(workload.batch, channels, *shape, device="meta", dtype=vae_dtype)

    def call_cost(x: torch.Tensor) -> CallCost:
        key = ("vae", role, _config_key(arch.vae), dtype_name, _shapes_key(x), workload.fused_attention)
        return _memo_cost(
            key, lambda: count_call(vae, lambda: call(x), inputs=[x], fused_attention=workload.fused_attention)
        )

    untiled = call_cost(pixels_or_latents)
    weights = weight_tensors(vae, *parts)
    tiling = VaeTiling.of_vae(vae.config)
    if workload.vae_tile_above_px is not None:
        tiling = dataclasses.replace(tiling, tile_above_px=workload.vae_tile_above_px)
    # Image and latents exceed one tile together (sample_size = latent_size x the VAE's scale factor).
    tiled = tiling.always_above(width=workload.width_px, height=workload.height_px) and tiling.splits(
        latent_height=latent_shape[0], latent_width=latent_shape[1]
    )
    tiles = [tile for row in cut_tiles(pixels_or_latents, tiling if tiled else None, encode=encode) for tile in row]
    count = VaeTilingCount(
        tile_above_px=tiling.tile_above_px,
        tile_px=tiling.sample_size,
        tiles=len(tiles),
        untiled_activation_peak_bytes=untiled.activation_peak_bytes,
    )
    costs: dict[tuple[int, ...], CallCost] = {tuple(pixels_or_latents.shape): untiled}
    for tile in tiles:
        if tuple(tile.shape) not in costs:
            # A copy, as the engine sends it: a slice's storage is the whole tensor's.
            costs[tuple(tile.shape)] = call_cost(tile.contiguous())
    flops = sum(costs[tuple(tile.shape)].flops for tile in tiles)
    peak = max(costs[tuple(tile.shape)].activation_peak_bytes for tile in tiles)
    network = _network_cost(
        role,
        weights,
        dtype_name,
        calls=0 if encode else len(tiles),
        rows=workload.batch,
        cost=CallCost(flops=flops // len(tiles), activation_peak_bytes=peak),
    )
    return dataclasses.replace(network, vae_tiling=count)


def measure(arch: Architecture, workload: Workload) -> Measurement:
    """Counts weights, FLOPs and activation peaks of every network of ``arch`` for ``workload``.

    Raises:
        PlanError: a size that is not a multiple of :attr:`Architecture.pixel_multiple`, an unknown dtype, or a
            component the planner cannot build.
    """
    multiple = arch.pixel_multiple
    why = "the VAE's scale factor" + ("" if multiple == arch.vae_scale_factor else " x the latent patch of a token")
    for name, value in (("width", workload.width_px), ("height", workload.height_px)):
        if value <= 0 or value % multiple:
            raise PlanError(f"{name}: {value} must be a positive multiple of {multiple} ({why})")
    for name, value in (("steps", workload.steps), ("batch", workload.batch)):
        if value < 1:
            raise PlanError(f"{name}: {value} must be at least 1")
    if workload.dtype not in DTYPES:
        raise PlanError(f"dtype: {workload.dtype!r} must be one of {', '.join(DTYPES)}")
    if workload.skip_layer_guidance and not (DENOISERS[arch.denoiser_class].skips_layers and workload.guidance):
        raise PlanError(
            f"skip_layer_guidance: SD 3.5's, with classifier-free guidance only; {arch.name} has a "
            f"{arch.denoiser_class}" + ("" if workload.guidance else " and guidance is off")
        )
    networks = [_text_encoder_cost(arch, encoder, workload) for encoder in arch.text_encoders]
    networks.append(_denoiser_cost(arch, workload, DTYPES[workload.dtype]))
    networks.append(_vae_cost(arch, workload, encode=False))
    networks.append(_vae_cost(arch, workload, encode=True))
    return Measurement(model=arch.name, workload=workload, networks=tuple(networks))


def measure_model(
    model: str,
    *,
    width_px: int | None = None,
    height_px: int | None = None,
    steps: int | None = None,
    batch: int = 1,
    guidance: bool | None = None,
    dtype: str | None = None,
    fused_attention: bool = True,
    skip_layer_guidance: bool = False,
    vae_tile_above_px: int | None = None,
) -> Measurement:
    """:func:`measure` for a model by name or folder, at its native size and defaults unless given (cached).

    Args:
        model: a name of :data:`ARCHITECTURES` or a diffusers pipeline folder.
        width_px / height_px: default: the denoiser's ``sample_size`` (FLUX: its pipeline's) times the VAE's
            scale factor.
        steps / guidance / dtype: default: the pipeline's (:class:`Architecture`).
        skip_layer_guidance: SD 3.5's third row in its window (:class:`Workload`).
        vae_tile_above_px: tiled VAE decoding above this side (:class:`Workload`; None: the VAE's ``sample_size``).
    """
    arch = architecture(model)
    workload = Workload(
        width_px=width_px or arch.native_size_px,
        height_px=height_px or arch.native_size_px,
        steps=arch.steps if steps is None else steps,
        batch=batch,
        guidance=arch.guidance if guidance is None else guidance,
        dtype=dtype or arch.dtype,
        fused_attention=fused_attention,
        skip_layer_guidance=skip_layer_guidance,
        vae_tile_above_px=vae_tile_above_px,
    )
    return _measure_cached(str(model), workload)


@functools.lru_cache(maxsize=16)
def _measure_cached(model: str, workload: Workload) -> Measurement:
    # By the resolved workload: a default given and a default left out are one entry.
    return measure(architecture(model), workload)


# --- Published figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedFigure:
    """A published latency of a real run, for the planner's floor to be read against.

    Attributes:
        model: the built-in architecture it ran.
        gpu: the :data:`GPUS` name.
        width_px / height_px: image size.
        steps: steps of an end-to-end figure; None for a per-step (UNet iteration) figure.
        seconds: end to end for one image, or one step.
        setup: what ran (software, settings).
        source: where it is published.
    """

    model: str
    gpu: str
    width_px: int
    height_px: int
    steps: int | None
    seconds: float
    setup: str
    source: str

    def applies_to(self, measurement: Measurement, gpu: GpuSpec) -> bool:
        """Same model, GPU and size, one image a request, guidance, fp16 (and the same steps if end to end)."""
        work = measurement.workload
        return (
            self.model == measurement.model
            and self.gpu == gpu.name
            and (self.width_px, self.height_px) == (work.width_px, work.height_px)
            and work.batch == 1
            and work.guidance
            and work.dtype == "fp16"
            and (self.steps is None or self.steps == work.steps)
        )

    def seconds_per_image(self, steps: int) -> float:
        """End to end, or for a per-step figure ``steps`` steps of denoising (text and decode not included)."""
        return self.seconds if self.steps is not None else self.seconds * steps

    def describe(self, steps: int) -> str:
        if self.steps is not None:
            return f"{self.seconds:.2f} s an image end to end ({self.setup}; {self.source})"
        return (
            f"{1 / self.seconds:.1f} it/s: {self.seconds_per_image(steps):.2f} s for {steps} steps of denoising "
            f"({self.setup}; {self.source})"
        )


_FAL = "fal-ai/stable-diffusion-benchmarks README (commit 0490f69)"
_DIFFUSERS_TORCH2 = "diffusers docs, optimization/torch2.0, benchmark tables"
PUBLISHED_FIGURES: tuple[PublishedFigure, ...] = (
    # 50 steps, fp16, default guidance, on an A100 80G SXM; "Diffusers (torch 2.1, SDPA)" rows.
    PublishedFigure("sd15", "A100", 512, 512, 50, 1.591, "diffusers, torch 2.1, SDPA, fp16, 50 steps", _FAL),
    PublishedFigure("sdxl", "A100", 1024, 1024, 50, 5.933, "diffusers, torch 2.1, SDPA, fp16, 50 steps", _FAL),
    # "T4 (batch size: 1)", SD - txt2img, torch 2.0 without compile: 6.9 iterations (UNet steps with CFG) a second.
    PublishedFigure("sd15", "T4", 512, 512, None, 1 / 6.9, "diffusers, torch 2.0, SDPA, fp16", _DIFFUSERS_TORCH2),
)


# Not what out-of-the-box serving gets; shown beside the others in docs/gpu_sizing.md for the utilisation it reaches.
TENSORRT_FIGURES: tuple[PublishedFigure, ...] = (
    PublishedFigure("sd15", "A100", 512, 512, 50, 0.819, "TensorRT 9.0, CUDA graphs, static shapes, 50 steps", _FAL),
    PublishedFigure("sdxl", "A100", 1024, 1024, 50, 4.102, "TensorRT 9.0, CUDA graphs, static shapes, 50 steps", _FAL),
)


def published_figure(measurement: Measurement, gpu: GpuSpec) -> PublishedFigure | None:
    """The published figure for this model, GPU and workload, if there is one."""
    return next((figure for figure in PUBLISHED_FIGURES if figure.applies_to(measurement, gpu)), None)


# --- Plan ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanReport:
    """A measurement held against one GPU.

    Attributes:
        measurement: the model's counts.
        gpu: the GPU.
        overhead_bytes: the fixed allowance for context, workspaces and allocator slack.
        published: a published figure for this GPU and workload, if any.
    """

    measurement: Measurement
    gpu: GpuSpec
    overhead_bytes: int = CUDA_OVERHEAD_BYTES
    published: PublishedFigure | None = None

    @property
    def total_bytes(self) -> int:
        """Every weight resident, the largest activation peak, and the overhead."""
        return self.measurement.weight_bytes + self.measurement.activation_peak_bytes + self.overhead_bytes

    @property
    def margin_bytes(self) -> int:
        return self.gpu.memory_bytes - self.total_bytes

    @property
    def fits(self) -> bool:
        return self.margin_bytes >= 0

    @property
    def floor_s_per_image(self) -> float:
        """FLOPs of one image over the dense fp16 peak: 100% utilisation, which no run reaches."""
        return self.measurement.flops_per_image / (self.gpu.fp16_dense_tflops * TERA)

    @property
    def expected_s_per_image(self) -> tuple[float, float]:
        """The floor at the best and the worst of :data:`PUBLISHED_UTILISATION_RANGE` (seen at batch 1)."""
        low, high = PUBLISHED_UTILISATION_RANGE
        return self.floor_s_per_image / high, self.floor_s_per_image / low


def plan(measurement: Measurement, gpu: GpuSpec, *, overhead_bytes: int = CUDA_OVERHEAD_BYTES) -> PlanReport:
    """Holds ``measurement`` against ``gpu``."""
    return PlanReport(
        measurement=measurement,
        gpu=gpu,
        overhead_bytes=overhead_bytes,
        published=published_figure(measurement, gpu),
    )


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _tflop(flops: float) -> str:
    return f"{flops / TERA:.3f} TFLOP"


def describe_workload(measurement: Measurement) -> str:
    work = measurement.workload
    return (
        f"{measurement.model} at {work.width_px}x{work.height_px}, {work.steps} steps, batch {work.batch}, "
        f"guidance {'on' if work.guidance else 'off'}, "
        + ("skip-layer guidance, " if work.skip_layer_guidance else "")
        + f"{work.dtype}, {'fused' if work.fused_attention else 'math-path'} attention"
    )


def render_measurement(measurement: Measurement) -> list[str]:
    """The GPU-independent lines of a plan."""
    networks = measurement.networks
    peak = measurement.peak_network
    denoiser = measurement.denoiser
    per_network = ", ".join(
        f"{n.role} {n.parameters / 1e6:.1f} M {n.dtype} {n.weight_bytes / GIB:.2f}" for n in networks
    )
    activations = ", ".join(f"{n.role} {n.activation_peak_bytes / GIB:.2f}" for n in networks)
    flops = ", ".join(f"{n.role} {n.flops_per_request / TERA:.2f}" for n in networks)
    lines = [
        describe_workload(measurement),
        f"  weights      {_gib(measurement.weight_bytes)}  ({per_network})",
        f"  activations  {_gib(measurement.activation_peak_bytes)} peak, in the {peak.role}  ({activations})",
        f"  FLOPs        {_tflop(measurement.flops_per_step)} a step ({denoiser.role} at batch {denoiser.rows}), "
        f"{_tflop(measurement.flops_per_image)} an image  (a request: {flops})",
    ]
    if denoiser.wide_calls:
        lines.append(
            f"               {_tflop(measurement.flops_per_wide_step)} a step in skip-layer guidance's window "
            f"({denoiser.role} at batch {denoiser.wide_rows}, {denoiser.wide_calls} of {denoiser.calls_per_request} "
            "steps)"
        )
    lines.extend(_render_vae_tiling(measurement.network("vae_decoder")))
    encoder = measurement.network("vae_encoder")
    tiles = encoder.vae_tiling.tiles if encoder.vae_tiling is not None else 1
    lines.append(
        f"  VAE encoder  image-to-image only: {_tflop(encoder.flops_per_call * tiles)} an image"
        + (f" in {tiles} tiles" if tiles > 1 else "")
        + f", peak {_gib(encoder.activation_peak_bytes)} (weights and peak counted above, FLOPs not)"
    )
    return lines


def _render_vae_tiling(vae: NetworkCost) -> list[str]:
    tiling = vae.vae_tiling
    if tiling is None:
        return []
    if not tiling.tile_above_px:
        return ["  VAE tiling   off at any size (export --vae-tile-above 0: only requests that send vae_tiling)"]
    when = f"on above {tiling.tile_above_px} px a side (export --vae-tile-above)"
    if tiling.tiles == 1:
        return [f"  VAE tiling   {when}; this size decodes in one call"]
    return [
        f"  VAE tiling   {when}: {tiling.tiles} tiles of {tiling.tile_px} px, peak {_gib(vae.activation_peak_bytes)} "
        f"(one tile; {_gib(tiling.untiled_activation_peak_bytes)} in one call)"
    ]


def render_plan(report: PlanReport) -> str:
    """A plan for one GPU, as ``sdtriton plan --gpu NAME`` prints it."""
    gpu = report.gpu
    verdict = "fits" if report.fits else "does NOT fit"
    spare = "to spare" if report.fits else "short"
    steps = report.measurement.workload.steps
    lines = [
        *render_measurement(report.measurement),
        f"  overhead     {_gib(report.overhead_bytes)}  (CUDA context, workspaces, allocator slack: assumed)",
        f"  total        {_gib(report.total_bytes)} of {_gib(gpu.memory_bytes)} on {gpu.name}: {verdict}, "
        f"{_gib(abs(report.margin_bytes))} {spare}",
        f"  floor        {report.floor_s_per_image:.3f} s an image at {gpu.fp16_dense_tflops:g} TFLOP/s dense fp16 "
        "(100% utilisation: a bound, not a forecast)",
        *(
            [f"               {report.floor_s_per_image * batch:.3f} s for the request of {batch} images"]
            if (batch := report.measurement.workload.batch) > 1
            else []
        ),
        f"  expected     {_seconds_range(report)} s an image at {_utilisation_range()} utilisation "
        "(what published fp16 diffusers runs reach)",
    ]
    if report.published is not None:
        lines.append(f"  published    {report.published.describe(steps)}")
    dtype = report.measurement.workload.dtype
    if dtype == "fp32":
        lines.append("  note         the floor uses the fp16 tensor peak; fp32 (TF32 or CUDA cores) runs slower")
    elif dtype == "bf16" and not gpu.bf16:
        lines.append(f"  note         the {gpu.name} has no bf16 tensor cores: bf16 runs far below the floor")
    return "\n".join(lines) + "\n"


def _seconds_range(report: PlanReport) -> str:
    fast_s, slow_s = report.expected_s_per_image
    return f"{fast_s:.2f}-{slow_s:.2f}"


def _utilisation_range() -> str:
    low, high = PUBLISHED_UTILISATION_RANGE
    return f"{high:.0%}-{low:.0%}"


def _table_cells(report: PlanReport) -> list[str]:
    steps = report.measurement.workload.steps
    published = report.published
    return [
        report.gpu.name,
        f"{report.gpu.memory_bytes / GIB:.1f}",
        f"{report.gpu.fp16_dense_tflops:g}",
        f"yes, {report.margin_bytes / GIB:.1f} spare" if report.fits else f"NO, {-report.margin_bytes / GIB:.1f} short",
        f"{report.floor_s_per_image:.3f}",
        _seconds_range(report),
        "—" if published is None else f"{published.seconds_per_image(steps):.2f}",
    ]


_TABLE_HEADER = (
    f"| GPU | memory GiB | fp16 TFLOP/s | fits | floor s/image | expected s/image ({_utilisation_range()}) "
    "| published s/image |",
    "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
)


def render_table(
    measurement: Measurement, gpus: Sequence[GpuSpec] = GPUS, *, overhead_bytes: int = CUDA_OVERHEAD_BYTES
) -> str:
    """One row per GPU: ``sdtriton plan --gpu all``."""
    reports = [plan(measurement, gpu, overhead_bytes=overhead_bytes) for gpu in gpus]
    lines = [
        *render_measurement(measurement),
        f"  total        {_gib(reports[0].total_bytes)}, with {_gib(overhead_bytes)} for CUDA context, workspaces "
        "and allocator slack (assumed)",
        "",
        *_TABLE_HEADER,
        *("| " + " | ".join(_table_cells(report)) + " |" for report in reports),
    ]
    steps = measurement.workload.steps
    lines += [f"published on {r.gpu.name}: {r.published.describe(steps)}" for r in reports if r.published]
    return "\n".join(lines) + "\n"


# --- docs/gpu_sizing.md --------------------------------------------------------------------------------------

DOCS_WORKLOADS: tuple[tuple[str, int], ...] = (("sd15", 512), ("sdxl", 1024))
# The diffusion transformers, each at its native size and its pipeline's defaults, and at every precision below.
DOCS_TRANSFORMERS = ("sd35-medium", "sd35-large", "flux-dev", "flux-schnell")
DOCS_PRECISIONS = ("bf16", "fp32")
# The seed document's GPU table (seed-stable-diffusion-deployment.md, "Quick Reference"), quoted as it stands.
SEED_TABLE = """\
```
Model    | Min VRAM | Recommended GPU | Cost/Hour* | Speed
---------|----------|-----------------|------------|-------
SD 1.5   | 4GB      | L40S            | $1.60      | Fast
SDXL     | 8GB      | L40S            | $1.60      | Medium
SDXL Opt | 12GB     | A100 (40GB)     | $3.00      | Fast
SD 3.0   | 12GB     | A100 (40GB)     | $3.00      | Medium

*Approximate Modal.com pricing
```"""


def _model_section(measurement: Measurement) -> list[str]:
    networks = measurement.networks
    lines = [
        f"### {describe_workload(measurement)}",
        "",
        "| network | parameters | dtype | weights GiB | activation peak GiB | GFLOP a call | calls a request |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in networks:
        lines.append(
            f"| {n.role} | {n.parameters / 1e6:.1f} M | {n.dtype} | {n.weight_bytes / GIB:.2f} | "
            f"{n.activation_peak_bytes / GIB:.2f} | {n.flops_per_call / 1e9:,.0f} | "
            f"{n.calls_per_request - n.wide_calls} |"
        )
        if n.wide_calls:
            lines.append(
                f"| {n.role} at {n.wide_rows} rows (skip-layer guidance) | | | | | "
                f"{n.flops_per_wide_call / 1e9:,.0f} | {n.wide_calls} |"
            )
    total = plan(measurement, GPUS[0]).total_bytes
    wide_step = (
        f", one in skip-layer guidance's window {_tflop(measurement.flops_per_wide_step)}"
        if measurement.flops_per_wide_step
        else ""
    )
    lines += [
        "",
        f"Needs {_gib(total)}: weights {_gib(measurement.weight_bytes)} + activation peak "
        f"{_gib(measurement.activation_peak_bytes)} (the {measurement.peak_network.role}) + overhead "
        f"{_gib(CUDA_OVERHEAD_BYTES)}. One step is {_tflop(measurement.flops_per_step)}{wide_step}, one image "
        f"{_tflop(measurement.flops_per_image)}.",
        "",
        *_TABLE_HEADER,
        *("| " + " | ".join(_table_cells(plan(measurement, gpu))) + " |" for gpu in GPUS),
        "",
    ]
    return lines


def utilisation(figure: PublishedFigure, measurement: Measurement) -> float:
    """The share of the GPU's dense fp16 peak that a published run reached, by this planner's FLOPs."""
    steps = measurement.workload.steps
    flops = measurement.flops_per_image if figure.steps is not None else measurement.flops_per_step * steps
    return flops / figure.seconds_per_image(steps) / (gpu_spec(figure.gpu).fp16_dense_tflops * TERA)


def _utilisation_lines(measurements: Sequence[Measurement]) -> list[str]:
    lines = [
        "| model | GPU | run | seconds | utilisation |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for figure in (*PUBLISHED_FIGURES, *TENSORRT_FIGURES):
        measurement = next(m for m in measurements if figure.applies_to(m, gpu_spec(figure.gpu)))
        steps = measurement.workload.steps
        what = "end to end" if figure.steps is not None else f"{steps} steps of denoising"
        lines.append(
            f"| {figure.model} | {figure.gpu} | {figure.setup}, {what} ({figure.source}) | "
            f"{figure.seconds_per_image(steps):.2f} | {utilisation(figure, measurement):.0%} |"
        )
    return lines


def _sd3_position_table(model: str) -> int:
    """Values of an SD 3 transformer's position table (``pos_embed_max_size`` squared x its width)."""
    config = architecture(model).denoiser
    width = config["num_attention_heads"] * config["attention_head_dim"]
    return config["pos_embed_max_size"] ** 2 * width


def _weights_by_precision_lines() -> list[str]:
    """Weights and fit of each diffusion transformer at each of :data:`DOCS_PRECISIONS`, on every GPU."""
    lines = [
        "| model | precision | transformer GiB | T5-XXL GiB | CLIP + VAE GiB | needs GiB | "
        + " | ".join(gpu.name for gpu in GPUS)
        + " |",
        "| --- | --- | ---: | ---: | ---: | ---: |" + " --- |" * len(GPUS),
    ]
    for model in DOCS_TRANSFORMERS:
        for precision in DOCS_PRECISIONS:
            measurement = measure_model(model, dtype=precision)
            transformer = measurement.denoiser.weight_bytes
            t5 = measurement.network(t5_encoder(architecture(model)).role).weight_bytes
            reports = [plan(measurement, gpu) for gpu in GPUS]
            lines.append(
                f"| {model} | {precision} | {transformer / GIB:.2f} | {t5 / GIB:.2f} | "
                f"{(measurement.weight_bytes - transformer - t5) / GIB:.2f} | {reports[0].total_bytes / GIB:.2f} | "
                + " | ".join("yes" if report.fits else "NO" for report in reports)
                + " |"
            )
    return lines


def sizing_markdown() -> str:
    """``docs/gpu_sizing.md``: the planner's tables for SD 1.5, SDXL, SD 3.5 and FLUX.1 on every GPU, beside the seed's.

    The prose quotes the planner's numbers as they come out; its comparisons were written against them, so a
    change of the counts that flips one (a test regenerates the file) calls for a read of the prose too.
    """
    measurements = [measure_model(model, width_px=size, height_px=size) for model, size in DOCS_WORKLOADS]
    sd15, sdxl = measurements
    sd15_total = plan(sd15, GPUS[0]).total_bytes
    sdxl_total = plan(sdxl, GPUS[0]).total_bytes
    sd15_vae, sdxl_vae = sd15.network("vae_decoder"), sdxl.network("vae_decoder")
    sd15_unet, sdxl_unet = sd15.network("unet"), sdxl.network("unet")
    t4 = plan(sdxl, gpu_spec("T4"))
    medium, large, dev, schnell = (measure_model(model) for model in DOCS_TRANSFORMERS)
    medium_slg = measure_model(medium.model, skip_layer_guidance=True)
    slg_transformer = medium_slg.denoiser
    t5 = medium.network(t5_encoder(architecture(medium.model)).role)
    medium_total, large_total, dev_total = (plan(m, GPUS[0]).total_bytes for m in (medium, large, dev))
    dev_fp32 = measure_model(dev.model, dtype="fp32")
    large_fp32 = measure_model(large.model, dtype="fp32")
    fits = {
        m.model + ("-fp32" if m.workload.dtype == "fp32" else ""): [gpu.name for gpu in GPUS if plan(m, gpu).fits]
        for m in (medium, large, dev, dev_fp32, large_fp32)
    }
    utilisations = [
        utilisation(figure, next(m for m in measurements if m.model == figure.model)) for figure in PUBLISHED_FIGURES
    ]
    lines = [
        "# GPU sizing",
        "",
        "<!-- Generated by `sdtriton plan --markdown > docs/gpu_sizing.md`; tests/unit/test_plan.py checks that it "
        "is current. Do not edit by hand. -->",
        "",
        "What one GPU needs to serve SD 1.5, SDXL, SD 3.5 and FLUX.1, counted by `sdtriton plan` "
        "(`sdtriton/plan.py`) from the models' own configs. No weight is loaded: each network is built on "
        "PyTorch's `meta` device and run once at the request's shapes, with `torch.utils.flop_counter` counting "
        "FLOPs (matrix products, convolutions, attention) and a dispatch mode tracking the bytes of live tensors "
        "(the activation peak). Attention is "
        "counted as the fused kernel GPUs run, which holds no attention matrix.",
        "",
        "* **Memory needed** = all weights resident + the largest activation peak of any one network (they run "
        f"one at a time) + {_gib(CUDA_OVERHEAD_BYTES)} assumed for the CUDA context, cuBLAS/cuDNN workspaces and "
        "allocator slack, against the total `nvidia-smi` reports for the GPU.",
        "* **Floor** = FLOPs of one image / the datasheet's dense fp16 tensor peak: 100% utilisation, which no real "
        "run reaches.",
        f"* **Expected** = the floor at {_utilisation_range()} utilisation, the range published fp16 diffusers runs "
        "reach (last table).",
        "* **Published** = a published end-to-end latency for the same model, GPU and settings, where one exists "
        "(the T4's is 50 steps of denoising alone).",
        f"* SD 1.5 and SDXL: one image a request, classifier-free guidance (UNet and text encoders at batch 2), "
        f"{sd15.workload.steps} steps (diffusers' default, and the setting of the published runs), fp16. SDXL's VAE "
        "decodes in fp32, as diffusers does when the VAE config says `force_upcast`.",
        f"* SD 3.5 and FLUX.1: one image at {medium.workload.width_px}x{medium.workload.height_px} (4096 image "
        "tokens: 128x128 latents in 2x2 patches), each pipeline's defaults, in bf16 (the model cards' dtype). "
        f"SD 3.5: guidance (2 rows), {medium.workload.steps} steps, text of 77 CLIP + "
        f"{t5_encoder(architecture(medium.model)).tokens} T5 tokens. FLUX.1 dev is guidance-distilled (its "
        f"guidance scale is an input of the transformer: one row), {dev.workload.steps} steps, "
        f"{t5_encoder(architecture(dev.model)).tokens} T5 tokens; schnell takes no guidance, "
        f"{schnell.workload.steps} steps, {t5_encoder(architecture(schnell.model)).tokens} T5 tokens. Their "
        "pipelines decode in the pipeline's dtype whatever the VAE config says.",
        "* T5-XXL never runs in fp16: T5 v1.1 was trained in bf16 and its feed-forward outputs overflow fp16's "
        "largest number (65504) to inf (which is why transformers keeps its `wo` layers in fp32 when it loads T5 "
        "in fp16). bf16 has fp32's range in the same two bytes: `--dtype fp16` runs T5 in bf16.",
        "",
        "Run `sdtriton plan --model sd15|sdxl|sd35-medium|sd35-large|flux-dev|flux-schnell|FOLDER --gpu NAME|all` "
        "for other sizes, steps, batches, precisions or GPUs.",
        "",
        "## The planner's table",
        "",
        *_model_section(sd15),
        *_model_section(sdxl),
        "## Diffusion transformers: SD 3.5 and FLUX.1",
        "",
        "Built from the published configs (`sdtriton/sd3.py`, `sdtriton/flux.py`) on `meta` with "
        "diffusers' `SD3Transformer2DModel` and `FluxTransformer2DModel` and transformers' `T5EncoderModel`. "
        "Parameters are what the checkpoints hold: SD 3.5's position table is a buffer of the transformer "
        f"({_sd3_position_table(medium.model) / 1e6:.0f} M values in Medium, "
        f"{_sd3_position_table(large.model) / 1e6:.0f} M in Large).",
        "",
        *(line for m in (medium, large, dev, schnell) for line in _model_section(m)),
        "**SD 3.5 Medium with skip-layer guidance.** Its model card recommends skip-layer guidance (blocks 7, 8 "
        "and 9: `export --skip-guidance-layers 7,8,9`, request input `skip_layer_guidance_scale`). In the steps of "
        "its window (the pipeline's "
        f"{DEFAULT_SKIP_LAYER_GUIDANCE_START:g}..{DEFAULT_SKIP_LAYER_GUIDANCE_STOP:g} of them: "
        f"{slg_transformer.wide_calls} of {slg_transformer.calls_per_request}) the transformer takes a third row an "
        "image, the prompt passing over those blocks. The served transformer runs the blocks for that row too and "
        "keeps their inputs (one call for all rows, one copy of the weights), so the row costs a full one. "
        "`sdtriton plan --model sd35-medium --skip-layer-guidance`:",
        "",
        *_model_section(medium_slg),
        "### Weights and fit by precision",
        "",
        "Every network at the precision named (bf16 is fp16's size), each model at its defaults as above; "
        '"needs" adds the activation peak and the overhead.',
        "",
        *_weights_by_precision_lines(),
        "",
        "## The seed document's table",
        "",
        "The seed document (`seed-stable-diffusion-deployment.md`, the document sdtriton grew from), Quick "
        'Reference, "GPU Selection for Modal.com", as it stands:',
        "",
        SEED_TABLE,
        "",
        'Its text adds "SD 1.5 (fp16): ~4GB VRAM for single inference" and "SDXL (fp16): ~8-12GB VRAM for single '
        'inference"; its SDXL example asks for `gpu="A100",  # 40GB VRAM needed for SDXL with optimizations`, '
        'and its T4 example ("Only 16GB VRAM") runs SDXL with CPU offloading, VAE tiling and attention slicing.',
        "",
        "## Where they differ, and why",
        "",
        f"* **SD 1.5 memory: {_gib(sd15_total)} here, about the seed's 4 GB.** Weights are "
        f"{_gib(sd15.weight_bytes)} in fp16. The largest activation peak is not the UNet's "
        f"({_gib(sd15_unet.activation_peak_bytes)} at batch 2) but the VAE decoder's "
        f"({_gib(sd15_vae.activation_peak_bytes)}): it works at full resolution. The seed does not say whether its "
        f"figure counts the CUDA context; here that is the stated {_gib(CUDA_OVERHEAD_BYTES)}. Every GPU of the "
        "table holds SD 1.5 several times over, so the seed's L40S for SD 1.5 is a choice of price and speed, not "
        "of memory.",
        f"* **SDXL memory: {_gib(sdxl_total)} here, inside the seed's 8-12 GB.** Weights are "
        f"{_gib(sdxl.weight_bytes)} (a {sdxl_unet.parameters / 1e9:.2f} B-parameter UNet and two text encoders, one "
        f"of them OpenCLIP bigG). The largest activation peak is again the VAE decoder's, "
        f"{_gib(sdxl_vae.activation_peak_bytes)}, because it decodes 1024x1024 in fp32 (the UNet's is "
        f"{_gib(sdxl_unet.activation_peak_bytes)}); an fp16-safe VAE or VAE tiling halves or bounds it, which is "
        f"about how the seed's lower 8 GB is reached. It fits the T4 with {_gib(t4.margin_bytes)} to spare: the CPU "
        "offloading of the seed's T4 example costs it the 2-4x slowdown the seed itself quotes and buys nothing "
        "on a 16 GB card. Nor does SDXL need the seed's 40 GB A100: that is a choice for speed.",
        "* **Speed.** The seed grades speed in words (Fast, Medium). The floor grades it by FLOPs, the one thing a "
        f"config fixes: SDXL's step at 1024x1024 is {sdxl.flops_per_step / sd15.flops_per_step:.1f}x SD 1.5's at "
        f"512x512 ({_tflop(sdxl.flops_per_step)} against {_tflop(sd15.flops_per_step)}). Published diffusers "
        f"runs take {1 / max(utilisations):.1f}-{1 / min(utilisations):.1f} times the floor, because the floor "
        "leaves out memory bandwidth (group norms, SiLU, residual adds; "
        "the VAE decoder at high resolution is mostly these), attention kernels below peak at SD's head sizes, "
        "launch gaps between small kernels at batch 1 (what `torch.compile`, CUDA graphs and TensorRT win back) "
        "and clocks below boost (the T4 is held to 70 W). SD 1.5 at batch 1 wastes more of a big GPU than SDXL "
        "does: its kernels are smaller.",
        f"* **SD 3 (the seed's 12 GB and A100 40GB).** The seed's SD 3.0 is SD 3 Medium (2 B); SD 3.5 Medium's "
        f"transformer is {medium.denoiser.parameters / 1e9:.2f} B. It needs {_gib(medium_total)}, and the largest "
        f"part is not the transformer ({_gib(medium.denoiser.weight_bytes)}) but T5-XXL's "
        f"{t5.parameters / 1e9:.2f} B parameters ({_gib(t5.weight_bytes)} in bf16, {_gib(2 * t5.weight_bytes)} in "
        f"fp32). Without T5 (`text_encoder_3=None`, which diffusers allows at some cost to prompt following) it needs "
        f"{_gib(medium_total - t5.weight_bytes)}: the seed's 12 GB lies between the two. With T5 it fits "
        f"{', '.join(fits[medium.model])}. SD 3.5 Large needs {_gib(large_total)}, more than any 24 GB card; it fits "
        f"{', '.join(fits[large.model])}, the seed's 40 GB A100 the smallest of them. In fp32 it needs "
        f"{_gib(plan(large_fp32, GPUS[0]).total_bytes)} and fits only {', '.join(fits[large_fp32.model + '-fp32'])}.",
        f"* **FLUX.1 needs {_gib(dev_total)}.** Its {dev.denoiser.parameters / 1e9:.1f} B-parameter transformer alone "
        f"is {_gib(dev.denoiser.weight_bytes)} in bf16, so no 24 GB card holds it even with T5 elsewhere (quantised "
        f"transformers or offloading do, which this planner does not size). It fits {', '.join(fits[dev.model])}; "
        f"in fp32 ({_gib(plan(dev_fp32, GPUS[0]).total_bytes)}) only {', '.join(fits[dev.model + '-fp32'])}. "
        f"schnell holds the same weights, less the guidance embedder; an image costs "
        f"{dev.flops_per_image / schnell.flops_per_image:.1f}x less ({schnell.workload.steps} steps, half the "
        "text).",
        f"* **Transformer speed.** A step of SD 3.5 Large is {_tflop(large.flops_per_step)} for its two guidance rows "
        f"({large.flops_per_step / sdxl.flops_per_step:.1f}x SDXL's), FLUX.1 dev's {_tflop(dev.flops_per_step)} for "
        f"its one row: a FLUX row costs {2 * dev.flops_per_step / large.flops_per_step:.1f}x an SD 3.5 Large row, "
        "and guidance distillation is what keeps a FLUX image from costing twice that (FLUX's true CFG, "
        "`true_cfg_scale` with a negative prompt, pays it: `--guidance` counts two rows). SD 3.5 Medium's skip-layer "
        f"guidance adds {medium_slg.flops_per_image / medium.flops_per_image - 1:.0%} to an image; its transformer's "
        f"activation peak grows from {_gib(medium.denoiser.activation_peak_bytes)} to "
        f"{_gib(slg_transformer.activation_peak_bytes)}, "
        + (
            f"below the {medium.peak_network.role}'s, so it needs no more memory. "
            if plan(medium_slg, GPUS[0]).total_bytes == medium_total
            else f"and it needs {_gib(plan(medium_slg, GPUS[0]).total_bytes)} against {_gib(medium_total)} without. "
        )
        + "The expected range comes from published UNet runs; the transformers' large matrix products likely run "
        "nearer its fast end, but "
        "no published diffusers latency for them is among the sources here.",
        "* **Not counted**: the VAE encoder's FLOPs (it runs for image-to-image requests only; its weights and "
        "activation peak are counted), a safety checker, a refiner, LoRA weights, TensorRT "
        "engines' own workspaces, and more than one instance of a model per GPU (each holds its own weights); "
        "for the transformers, T5 offloaded or freed after encoding and quantised (fp8, NF4) weights.",
        "",
        "## What the published runs reach",
        "",
        "Published latencies against this planner's FLOPs; the expected column's range comes from here.",
        "",
        *_utilisation_lines(measurements),
        "",
        "## Sources",
        "",
        "* GPUs: NVIDIA datasheets (T4, L4, L40S, A100 80GB, H100 SXM, H200 SXM; dense = the sparse figure halved "
        "where only that is printed). The A10G (AWS G5) has no NVIDIA datasheet: Baseten's \"NVIDIA A10 vs A10G "
        "for ML model inference\" gives its 70 TFLOP/s against the A10's 125. Memory totals as `nvidia-smi` "
        "reports them.",
        "* Published runs: https://github.com/fal-ai/stable-diffusion-benchmarks (A100 80G SXM, 50 steps, fp16) and "
        "the benchmark tables of https://huggingface.co/docs/diffusers/optimization/torch2.0 (T4, batch 1, torch "
        "2.0 without compile).",
        "* Architectures: the `config.json` files of runwayml/stable-diffusion-v1-5 and "
        "stabilityai/stable-diffusion-xl-base-1.0, written out in `sdtriton/sd15.py` and `sdtriton/plan.py`; of "
        "stabilityai/stable-diffusion-3.5-medium and -large (`sdtriton/sd3.py`) and black-forest-labs/FLUX.1-dev "
        "and -schnell (`sdtriton/flux.py`).",
        "",
    ]
    return "\n".join(lines)
