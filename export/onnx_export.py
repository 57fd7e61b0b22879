"""Exports the text encoders, UNet (SD 3, FLUX: transformer), VAE decoder and VAE encoder of a diffusers pipeline to
ONNX, and checks each.

``torch.onnx.export(dynamo=False)`` with the dynamic axes of :mod:`sdtriton.components` exports diffusers'
modules unpatched (measured: the dynamo exporter needs ``Upsample2D`` patched for a dynamic batch), with one
exception: FLUX's attention splits heads with ``Tensor.unflatten``, whose output sizes the TorchScript tracer records
as constants, baking the traced sequence length into the rotary embedding's reshape (measured: ONNX Runtime then
fails at any other length). While FLUX's transformer is traced, ``unflatten`` is the same ``reshape`` it stands for
(:func:`_traceable_unflatten`); the dynamo exporter needs no patch there but took 15-20 s against 0.6 s on the tiny
model. Every file is run once with ONNX Runtime on a batch of two and compared with torch before it is kept.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from diffusers import DiffusionPipeline
from torch.onnx import symbolic_helper

from sdtriton.components import (
    LORA_SCALES_INPUT,
    SKIP_LAYERS_INPUT,
    T5_MODEL_NAME,
    TRANSFORMER_MODEL_NAME,
    VAE_DECODER,
    VAE_ENCODER,
    ComponentSpec,
    components_of,
)
from sdtriton.export.lora import LoraScales, WithLoraScales
from sdtriton.pipeline_config import PipelineConfig, Sd3Config

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# Protobuf cannot hold more than 2 GB: larger models keep their weights in one external data file.
_PROTOBUF_LIMIT_BYTES = 2**31 - 1
EXTERNAL_DATA_SUFFIX = ".data"
# ONNX Runtime matched torch to <= 4e-6 on the tiny model; leave room for real-size models.
DEFAULT_CHECK_ATOL = 1e-3
# The tracer warnings every export of diffusers' and transformers' networks raises, each read and found harmless:
# they branch on values the export fixes or the specs bound (the text length, channel counts, latent sides that
# are multiples of 2**downsamplings by the size step), or on workarounds for batches of 64+ and tensors over
# 2**31 elements that the ONNX graph does not need. Only "boolean": a tensor made a Python integer or float could
# bake a dynamic size into the graph, so those, and tracer warnings from any other module (ours too), still show.
_HARMLESS_TRACER_MESSAGE = "Converting a tensor to a Python boolean"
_HARMLESS_TRACER_MODULES = r"(diffusers|transformers)\."
# CLIP's pooled output picks each row's end-of-text state, hidden[arange(batch), argmax(...)]: advanced indexing, which
# the ONNX exporter warns gives wrong results for negative indices. A row number and an argmax are never negative, so
# the warning is silenced for the encoders whose outputs include it (their `pooled`) and shows for any other network.
_CLIP_POOLING_MESSAGE = "Exporting aten::index operator of advanced indexing"
_ONNX_EXPORTER_MODULES = r"torch\.onnx\."


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """``aten::rms_norm`` (``torch.nn.RMSNorm``: FLUX's q/k norm) in opset-17 operators, which have no RMSNorm (it came
    in opset 23): x / sqrt(mean(x^2 over the normalized axes) + eps) x weight, as torch computes it."""
    axes = list(range(-len(symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")), 0))
    if symbolic_helper._is_none(eps):
        eps_value = torch.finfo(torch.float32).eps  # torch's default for a float32 input
    else:
        eps_value = symbolic_helper._get_const(eps, "f", "eps")
    square = g.op("Mul", x, x)
    variance = g.op("ReduceMean", square, axes_i=axes, keepdims_i=1)
    denominator = g.op("Sqrt", g.op("Add", variance, g.op("Constant", value_t=torch.tensor(eps_value))))
    normed = g.op("Div", x, denominator)
    return normed if symbolic_helper._is_none(weight) else g.op("Mul", normed, weight)


torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, ONNX_OPSET)


class _TextEncoderLastHiddenState(torch.nn.Module):
    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class _TextEncoderPenultimate(torch.nn.Module):
    """SDXL's text encoders as diffusers' ``encode_prompt`` reads them: the penultimate hidden state, and for the
    second encoder (``CLIPTextModelWithProjection``) its projected pooled output too."""

    def __init__(self, text_encoder: torch.nn.Module, *, pooled: bool) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.pooled = pooled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        output = self.text_encoder(input_ids, output_hidden_states=True)
        penultimate = output.hidden_states[-2]
        return (penultimate, output[0]) if self.pooled else penultimate


class _UNetNoisePrediction(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class _SdxlUNetNoisePrediction(torch.nn.Module):
    """An SDXL UNet (base or refiner): text_embeds and time_ids as its ``added_cond_kwargs``."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _Sd3TransformerVelocity(torch.nn.Module):
    """An ``SD3Transformer2DModel`` called as ``StableDiffusion3Pipeline`` calls it (no LoRA scale). With
    ``skip_guidance_layers``, a per-row ``skip_layers`` flag: a row flagged 1 gets what ``skip_layers=`` gives
    (each chosen block's outputs replaced, for that row, by its inputs: the block is passed over), the others the
    plain forward."""

    def __init__(self, transformer: torch.nn.Module, *, skip_guidance_layers: Sequence[int] = ()) -> None:
        super().__init__()
        self.transformer = transformer
        self.skip_guidance_layers = tuple(skip_guidance_layers)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        skip_layers: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with contextlib.ExitStack() as hooks:
            if skip_layers is not None:
                skipped = (skip_layers > 0.5).view(-1, 1, 1)
                for index in self.skip_guidance_layers:
                    handle = self.transformer.transformer_blocks[index].register_forward_hook(
                        functools.partial(_pass_over_rows, skipped), with_kwargs=True
                    )
                    hooks.callback(handle.remove)
            return self.transformer(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                timestep=timestep,
                return_dict=False,
            )[0]


def _pass_over_rows(
    skipped: torch.Tensor,
    _block: torch.nn.Module,
    _args: tuple,
    kwargs: dict[str, Any],
    output: tuple[torch.Tensor | None, torch.Tensor],
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A joint block's (encoder_hidden_states, hidden_states), with the skipped rows' inputs in place of its results
    (the last block gives no text states: diffusers' skipped block leaves them, unused, as they were)."""
    text, image = output
    image = torch.where(skipped, kwargs["hidden_states"], image)
    if text is not None:
        text = torch.where(skipped, kwargs["encoder_hidden_states"], text)
    return text, image


class _TextEncoderPooled(torch.nn.Module):
    """FLUX's CLIP as ``FluxPipeline._get_clip_prompt_embeds`` reads it: ``CLIPTextModel``'s pooled output."""

    pooled = True  # CLIP's pooled output (see _CLIP_POOLING_MESSAGE)

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, output_hidden_states=False).pooler_output


class _FluxTransformerVelocity(torch.nn.Module):
    """A ``FluxTransformer2DModel`` called as ``FluxPipeline`` calls it (no LoRA scale, no IP adapter, no ControlNet).

    The ids arrive with the batch axis of every spec tensor; the transformer takes one [seq, 3] table for the whole
    batch (diffusers' own 3-D path, deprecated, takes row 0 the same way), so every row of a call must share the
    image size: the engine calls the transformer per latent size.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids[0],
            txt_ids=txt_ids[0],
            guidance=guidance,
            return_dict=False,
        )[0]


def _unflatten_as_reshape(self: torch.Tensor, dim: int, sizes: tuple[int, ...]) -> torch.Tensor:
    dim = dim % self.dim()
    return self.reshape(*self.shape[:dim], *sizes, *self.shape[dim + 1 :])


@contextlib.contextmanager
def _traceable_unflatten(module: torch.nn.Module) -> Iterator[None]:
    """For FLUX's transformer only (also inside :class:`WithLoraScales`): ``Tensor.unflatten`` as the ``reshape`` it
    is, whose sizes the tracer follows."""
    if not any(isinstance(part, _FluxTransformerVelocity) for part in (module, *module.children())):
        yield
        return
    original = torch.Tensor.unflatten
    torch.Tensor.unflatten = _unflatten_as_reshape
    try:
        yield
    finally:
        torch.Tensor.unflatten = original


class _VaeDecode(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class _VaeEncode(torch.nn.Module):
    """The VAE's encoder as image-to-image pipelines use it (``retrieve_latents``): the latent distribution's mean and
    standard deviation; the engine draws the sample from them with the request's generator."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distribution = self.vae.encode(image, return_dict=False)[0]
        return distribution.mean, distribution.std


@dataclass(frozen=True)
class ExportResult:
    """One exported file, with the example inputs it was checked on and torch's (fp32) outputs for them."""

    spec: ComponentSpec
    path: Path
    max_abs_error: float
    inputs: dict[str, np.ndarray]
    torch_outputs: dict[str, np.ndarray]


def example_inputs(
    spec: ComponentSpec,
    config: PipelineConfig,
    *,
    batch_size: int = 2,
    seed: int = 0,
    vocab_size: int | None = None,
    size: str = "opt",
) -> dict[str, np.ndarray]:
    """Example inputs of a component at the model's default size (batch 2 keeps the batch axis dynamic).

    Args:
        vocab_size: a text encoder's vocabulary size (its token ids are drawn below it); required for one.
        size: ``opt`` (the default image size) or ``check`` (:meth:`TensorSpec.check_shape`: another size, one
            row, ``batch_size`` ignored) for the dynamic axes.
    """
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for tensor in spec.inputs:
        if size == "check":
            shape = tensor.check_shape(config)
        else:
            shape = (batch_size, *tensor.shape_range(config, max_batch_size=batch_size)[1][1:])
        if tensor.triton_dtype == "INT64":
            if vocab_size is None:
                raise ValueError(f"{spec.model_name}: example token ids need the text encoder's vocab_size")
            inputs[tensor.name] = rng.integers(0, vocab_size, size=shape, dtype=np.int64)
        elif tensor.name == SKIP_LAYERS_INPUT:
            # Rows skipping and rows not (one row, the check's: skipping), so the export check covers both.
            inputs[tensor.name] = (np.arange(shape[0])[::-1] % 2 == 0).astype(np.float32)
        elif tensor.name == LORA_SCALES_INPUT:
            # Weights of every adapter at once, some negative: each adapter's path is checked.
            inputs[tensor.name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        elif tensor.name in ("timestep", "guidance"):
            inputs[tensor.name] = np.full(shape, _example_scalar(tensor.name, config), dtype=np.float32)
        else:
            inputs[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def _example_scalar(name: str, config: PipelineConfig) -> float:
    """A mid-range value of a per-item scalar: the timestep as the family's pipeline passes it (FLUX: t / 1000,
    which the transformer scales by 1000 itself), FLUX.1-dev's default guidance."""
    if name == "guidance":
        return 3.5
    return 0.5 if config.flux is not None else 500.0


def _max_abs_error(
    session: ort.InferenceSession,
    spec: ComponentSpec,
    inputs: dict[str, np.ndarray],
    expected: tuple[torch.Tensor, ...],
) -> float:
    actual = session.run(spec.output_names, inputs)
    return max(float(np.max(np.abs(a - e.numpy()))) for a, e in zip(actual, expected, strict=True))


def _export_module(
    module: torch.nn.Module,
    spec: ComponentSpec,
    config: PipelineConfig,
    output_path: Path,
    *,
    check_atol: float,
    vocab_size: int | None = None,
) -> ExportResult:
    inputs = example_inputs(spec, config, vocab_size=vocab_size)
    torch_inputs = tuple(torch.from_numpy(inputs[name]) for name in spec.input_names)
    dynamic_axes = {tensor.name: tensor.onnx_dynamic_axes() for tensor in (*spec.inputs, *spec.outputs)}
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent) as scratch:
        # torch writes a model over 2 GB as one file per weight: export aside, then save it whole.
        scratch_path = Path(scratch) / output_path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=_HARMLESS_TRACER_MESSAGE,
                category=torch.jit.TracerWarning,
                module=_HARMLESS_TRACER_MODULES,
            )
            if getattr(module, "pooled", False):
                warnings.filterwarnings(
                    "ignore", message=_CLIP_POOLING_MESSAGE, category=UserWarning, module=_ONNX_EXPORTER_MODULES
                )
            with _traceable_unflatten(module):
                torch.onnx.export(
                    module,
                    torch_inputs,
                    str(scratch_path),
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    dynamic_axes=dynamic_axes,
                    opset_version=ONNX_OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
            expected = module(*torch_inputs)
        _save_whole(scratch_path, output_path)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(output_path), providers=["CPUExecutionProvider"])
    max_abs_error = _max_abs_error(session, spec, inputs, expected)
    # A second shape (one row, another non-square size): a trace that baked the example's sizes into the graph fails
    # here, not in serving (FLUX's rotary reshape did: it ran at the traced length only).
    smallest = example_inputs(spec, config, seed=1, vocab_size=vocab_size, size="check")
    with torch.no_grad():
        smallest_expected = module(*(torch.from_numpy(smallest[name]) for name in spec.input_names))
    smallest_expected = smallest_expected if isinstance(smallest_expected, tuple) else (smallest_expected,)
    try:
        max_abs_error = max(max_abs_error, _max_abs_error(session, spec, smallest, smallest_expected))
    except Exception as error:  # ONNX Runtime's own failure: a size baked into the graph
        shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in smallest.items())
        raise RuntimeError(f"{spec.model_name}: the exported graph fails at another size ({shapes}): {error}") from None
    if not max_abs_error <= check_atol:
        raise RuntimeError(
            f"{spec.model_name}: ONNX Runtime differs from torch by {max_abs_error:.3g} (allowed {check_atol:g})"
        )
    # export_repository reports each component's figure once its progress bar is done.
    logger.debug("%s: exported to %s, |onnxruntime - torch| <= %.3g", spec.model_name, output_path, max_abs_error)
    return ExportResult(
        spec=spec,
        path=output_path,
        max_abs_error=max_abs_error,
        inputs=inputs,
        torch_outputs={name: e.numpy() for name, e in zip(spec.output_names, expected, strict=True)},
    )


def _save_whole(exported_path: Path, output_path: Path) -> None:
    """Saves an exported model as one file, or as one file plus one external data file over 2 GB."""
    exported_bytes = sum(p.stat().st_size for p in exported_path.parent.iterdir() if p.is_file())
    external_data_path = output_path.with_name(output_path.name + EXTERNAL_DATA_SUFFIX)
    external_data_path.unlink(missing_ok=True)
    if exported_bytes <= _PROTOBUF_LIMIT_BYTES and len(list(exported_path.parent.iterdir())) == 1:
        shutil.move(str(exported_path), str(output_path))
        return
    model = onnx.load(str(exported_path), load_external_data=True)
    onnx.save_model(
        model,
        str(output_path),
        save_as_external_data=exported_bytes > _PROTOBUF_LIMIT_BYTES,
        all_tensors_to_one_file=True,
        location=external_data_path.name,
        size_threshold=1024,
    )


def _modules(pipeline: DiffusionPipeline, config: PipelineConfig, refiner: DiffusionPipeline | None) -> list:
    """(spec, module, vocab size or None) of every component of the config's family, in call order."""
    specs = {spec.model_name: spec for spec in components_of(config)}
    vae = [
        (specs[VAE_DECODER.model_name], _VaeDecode(pipeline.vae), None),
        (specs[VAE_ENCODER.model_name], _VaeEncode(pipeline.vae), None),
    ]
    if config.sd3 is not None:
        return [*_sd3_modules(pipeline, specs, config.sd3), *vae]
    if config.flux is not None:
        clip, t5 = pipeline.text_encoder, pipeline.text_encoder_2
        return [
            (specs["text_encoder"], _TextEncoderPooled(clip), clip.config.vocab_size),
            (specs["text_encoder_2"], _TextEncoderLastHiddenState(t5), t5.config.vocab_size),
            (specs[TRANSFORMER_MODEL_NAME], _FluxTransformerVelocity(pipeline.transformer), None),
            *vae,
        ]
    if config.sdxl is None:
        encoder = pipeline.text_encoder
        return [
            (specs["text_encoder"], _TextEncoderLastHiddenState(encoder), encoder.config.vocab_size),
            (specs["unet"], _UNetNoisePrediction(pipeline.unet), None),
            *vae,
        ]
    first, second = pipeline.text_encoder, pipeline.text_encoder_2
    modules = [
        (specs["text_encoder"], _TextEncoderPenultimate(first, pooled=False), first.config.vocab_size),
        (specs["text_encoder_2"], _TextEncoderPenultimate(second, pooled=True), second.config.vocab_size),
        (specs["unet"], _SdxlUNetNoisePrediction(pipeline.unet), None),
    ]
    if refiner is not None:
        modules.append((specs["refiner_unet"], _SdxlUNetNoisePrediction(refiner.unet), None))
    return [*modules, *vae]


def _sd3_modules(pipeline: DiffusionPipeline, specs: dict[str, ComponentSpec], sd3: Sd3Config) -> list:
    """SD 3's encoders as ``StableDiffusion3Pipeline.encode_prompt`` reads them (both CLIPs' penultimate hidden
    state and projected pooled output, T5's last hidden state where the pipeline has T5) and its transformer."""
    encoders = [("text_encoder", pipeline.text_encoder), ("text_encoder_2", pipeline.text_encoder_2)]
    modules = [
        (specs[name], _TextEncoderPenultimate(encoder, pooled=True), encoder.config.vocab_size)
        for name, encoder in encoders
    ]
    if T5_MODEL_NAME in specs:
        t5 = pipeline.text_encoder_3
        modules.append((specs[T5_MODEL_NAME], _TextEncoderLastHiddenState(t5), t5.config.vocab_size))
    transformer = _Sd3TransformerVelocity(pipeline.transformer, skip_guidance_layers=sd3.skip_guidance_layers)
    modules.append((specs[TRANSFORMER_MODEL_NAME], transformer, None))
    return modules


def export_components(
    pipeline: DiffusionPipeline,
    config: PipelineConfig,
    path_for: Callable[[ComponentSpec], Path],
    *,
    refiner: DiffusionPipeline | None = None,
    check_atol: float = DEFAULT_CHECK_ATOL,
    progress: Callable[[str], None] = lambda _name: None,
    lora_scales: Mapping[str, LoraScales] | None = None,
) -> list[ExportResult]:
    """Exports every network of the config's family; ``path_for`` says where each component's ONNX file goes.
    ``lora_scales``: the networks made batched by :func:`sdtriton.export.lora.attach_loras`, which take the rows'
    adapter weights as their last input."""
    results = []
    for spec, module, vocab_size in _modules(pipeline, config, refiner):
        progress(spec.model_name)
        if lora_scales and spec.model_name in lora_scales:
            module = WithLoraScales(module, lora_scales[spec.model_name])
        results.append(
            _export_module(module.eval(), spec, config, path_for(spec), check_atol=check_atol, vocab_size=vocab_size)
        )
    return results
