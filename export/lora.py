"""LoRA adapters exported into the networks, so that rows of one call each carry their own adapter and weight.

``sdtriton export SRC --lora NAME=PATH`` loads every adapter with diffusers' own ``load_lora_weights`` (which reads
diffusers' and kohya's key names and converts them), then replaces each layer peft adapted by one that holds the
low-rank matrices of all its adapters stacked (A: [sum of ranks, in], B: [out, sum of ranks], each adapter's
``lora_alpha / r`` folded into its columns of B) and adds, for every row of the batch,

    delta = ((x A^T) * the row's weight of each adapter, repeated over that adapter's rank) B^T

to the base layer's output: the approach of multi-adapter LLM servers (punica, S-LoRA). The weights come in as one
more network input, ``lora_scales`` [batch, adapters] (:data:`sdtriton.components.LORA_SCALES`); a row with zeros is
the base network, a row with its adapter's column at ``s`` is diffusers after ``set_adapters([name], [s])``. So
requests of different adapters and scales, and requests without one, share every UNet and text-encoder call, and the
weights are held once: each adapter adds only its low-rank matrices.

Linear and Conv2d LoRA layers are exported (what diffusers' SD / SDXL / SD 3 / FLUX LoRAs and kohya's LoCon adapt;
an SD 3 or FLUX adapter's transformer and CLIP layers, the networks their pipelines' ``load_lora_weights`` loads
into); DoRA, LoRA biases and other peft layer kinds are refused by name at export, and so is a file some of whose
layers find no place in this pipeline (another family's).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from sdtriton.export.errors import ExportOptionError
from sdtriton.pipeline_config import LoraAdapter

logger = logging.getLogger(__name__)

LORA_OPTION = "lora"
# Pipeline attributes whose layers adapters may adapt, by the model name of the network exported from each.
ADAPTABLE_NETWORKS: Mapping[str, str] = {
    "unet": "unet",
    "transformer": "transformer",
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder_2",
}


@dataclass(frozen=True)
class LoraSource:
    """One ``--lora NAME=PATH``: the adapter's name in requests, and its safetensors file."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> LoraSource:
        """``NAME=PATH``; the name is what requests send, so it is plain: letters, digits, ``_``, ``-``, ``.``."""
        name, separator, path = text.partition("=")
        if not separator or not name or not path:
            raise ExportOptionError(LORA_OPTION, f"must be NAME=PATH, got {text!r}")
        if not all(char.isalnum() or char in "_-." for char in name):
            raise ExportOptionError(LORA_OPTION, f"{name!r}: a name is letters, digits, '_', '-' and '.' only")
        return cls(name=name, path=Path(path))


class LoraScales:
    """Each adapted network's ``lora_scales`` while it is traced; its batched layers read it (None: base network)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


class BatchedLoraLayer(torch.nn.Module):
    """A base Linear or Conv2d plus every adapter's low-rank update, weighted per row by :class:`LoraScales`."""

    def __init__(
        self,
        base: torch.nn.Module,
        *,
        down: torch.Tensor,
        up: torch.Tensor,
        adapter_of_rank: torch.Tensor,
        scales: LoraScales,
        conv: torch.nn.Conv2d | None,
    ) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("down", down)
        self.register_buffer("up", up)
        self.register_buffer("adapter_of_rank", adapter_of_rank)
        self.scales = scales
        self.conv = conv  # the first adapter's down conv: its stride, padding and dilation (weights unused)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        scales = self.scales.value
        if scales is None:
            return result
        weights = scales[:, self.adapter_of_rank]  # [batch, sum of ranks]
        if self.conv is not None:
            conv = self.conv
            hidden = torch.nn.functional.conv2d(
                x, self.down, stride=conv.stride, padding=conv.padding, dilation=conv.dilation
            )
            hidden = hidden * weights[:, :, None, None]
            return result + torch.nn.functional.conv2d(hidden, self.up)
        hidden = torch.nn.functional.linear(x, self.down)
        hidden = hidden * weights.reshape(weights.shape[0], *([1] * (x.dim() - 2)), weights.shape[1])
        return result + torch.nn.functional.linear(hidden, self.up)


def _refuse(name: str, why: str) -> ExportOptionError:
    return ExportOptionError(LORA_OPTION, f"{name}: {why}")


def _batched(layer: torch.nn.Module, names: Sequence[str], where: str, scales: LoraScales) -> BatchedLoraLayer:
    """peft's LoRA layer ``layer`` as one :class:`BatchedLoraLayer` over the adapters ``names`` (in config order)."""
    from peft.tuners.lora import Conv2d as LoraConv2d
    from peft.tuners.lora import Linear as LoraLinear

    present = [name for name in names if name in layer.lora_A]
    if not isinstance(layer, LoraLinear | LoraConv2d):
        raise _refuse(present[0], f"{where} is a {type(layer).__name__} LoRA layer; Linear and Conv2d are exported")
    downs, ups, ranks = [], [], []
    for name in present:
        if layer.use_dora.get(name, False):
            raise _refuse(name, f"{where} is a DoRA layer; plain LoRA only")
        down, up = layer.lora_A[name], layer.lora_B[name]
        if getattr(up, "bias", None) is not None:
            raise _refuse(name, f"{where} has a LoRA bias; plain LoRA only")
        if getattr(layer, "fan_in_fan_out", False):
            raise _refuse(name, f"{where} is a fan-in-fan-out layer")
        downs.append(down.weight.detach())
        # lora_alpha / r (or / sqrt(r) for rsLoRA), as peft scales the update at weight 1.
        ups.append(up.weight.detach() * float(layer.scaling[name]))
        ranks.append(down.weight.shape[0])
    adapter_of_rank = torch.cat(
        [torch.full((rank,), names.index(name), dtype=torch.int64) for name, rank in zip(present, ranks, strict=True)]
    )
    conv = layer.lora_A[present[0]] if isinstance(layer, LoraConv2d) else None
    return BatchedLoraLayer(
        layer.get_base_layer(),
        down=torch.cat(downs, dim=0),
        up=torch.cat(ups, dim=1),
        adapter_of_rank=adapter_of_rank,
        scales=scales,
        conv=conv,
    )


def _adapted(network: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in network.named_modules() if isinstance(module, LoraLayer)]


def _replace(network: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    parent = network.get_submodule(parent_path) if parent_path else network
    setattr(parent, attribute, module)


def attach_loras(
    pipeline: DiffusionPipeline, sources: Sequence[LoraSource], *, family: str
) -> tuple[tuple[LoraAdapter, ...], dict[str, LoraScales]]:
    """Loads every adapter into ``pipeline`` and makes its adapted layers batched (see the module's docstring).

    Returns:
        the adapters as the pipeline config records them (in ``sources`` order, the order of the ``lora_scales``
        columns), and each adapted network's :class:`LoraScales` by model name (what :func:`lora_scales_input` sets).

    Raises:
        ExportOptionError: a name given twice, a file diffusers cannot load into this pipeline (another family's
            adapter: its layers are not this model's), one that adapts nothing here, or a layer kind not exported.
    """
    names = [source.name for source in sources]
    for name in names:
        if names.count(name) > 1:
            raise _refuse(name, "given twice")
    for source in sources:
        if not source.path.is_file():
            raise _refuse(source.name, f"{source.path} is not a file")
        try:
            pipeline.load_lora_weights(str(source.path), adapter_name=source.name)
        except Exception as error:
            raise _refuse(
                source.name,
                f"{source.path} is not a LoRA this {family} pipeline takes ({type(error).__name__}: {error})",
            ) from error
    layers = {ADAPTABLE_NETWORKS[attribute]: _adapted(network) for attribute, network in _networks(pipeline).items()}
    adapters = []
    for source in sources:
        name = source.name
        components = tuple(
            model for model, adapted in layers.items() if any(name in layer.lora_A for _, layer in adapted)
        )
        if not components:
            raise _refuse(name, f"{source.path} adapts no layer of this {family} pipeline (made for another family?)")
        _check_all_placed(pipeline, source, layers, family=family)
        adapters.append(LoraAdapter(name=name, components=components))
    scales: dict[str, LoraScales] = {}
    for attribute, network in _networks(pipeline).items():
        model_name = ADAPTABLE_NETWORKS[attribute]
        if layers[model_name]:
            scales[model_name] = batch_lora_layers(network, names, model_name=model_name)
    for adapter in adapters:
        logger.info("LoRA %s: adapts %s", adapter.name, ", ".join(adapter.components))
    return tuple(adapters), scales


# How a low-rank down matrix's key ends in the state dicts diffusers' lora_state_dict returns (peft's and diffusers'
# older names; kohya's files come converted to one of them).
_DOWN_KEY_ENDINGS = ("lora_A.weight", "lora.down.weight", "lora_down.weight", "lora_linear_layer.down.weight")


def _check_all_placed(
    pipeline: DiffusionPipeline,
    source: LoraSource,
    layers: Mapping[str, Sequence[tuple[str, torch.nn.Module]]],
    *,
    family: str,
) -> None:
    """Refuses a file some of whose layers found no place here: diffusers skips the keys of networks this pipeline
    does not load LoRAs into (an SD 3 file's ``transformer.*`` in an SD pipeline) and peft the layers this network
    lacks (FLUX's single blocks in SD 3), so another family's adapter of matching widths would load in part."""
    state = pipeline.lora_state_dict(str(source.path))
    keys = list((state[0] if isinstance(state, tuple) else state).keys())
    in_file = sum(key.endswith(_DOWN_KEY_ENDINGS) for key in keys)
    placed = sum(source.name in layer.lora_A for adapted in layers.values() for _, layer in adapted)
    if placed < in_file:
        prefixes = sorted({key.split(".", 1)[0] for key in keys})
        raise _refuse(
            source.name,
            f"{source.path} is not a LoRA of this {family} pipeline: {in_file - placed} of its {in_file} layers "
            f"(under {', '.join(prefixes)}) have no place in it (made for another family?)",
        )


def batch_lora_layers(network: torch.nn.Module, names: Sequence[str], *, model_name: str) -> LoraScales:
    """Replaces every peft LoRA layer of ``network`` by a :class:`BatchedLoraLayer` over the adapters ``names`` (their
    order is the order of the ``lora_scales`` columns); returns the :class:`LoraScales` those layers read."""
    scales = LoraScales()
    for path, layer in _adapted(network):
        _replace(network, path, _batched(layer, names, f"{model_name}.{path}", scales))
    return scales


class WithLoraScales(torch.nn.Module):
    """An exported network's wrapper taking ``lora_scales`` as its last input, for the batched layers to read."""

    def __init__(self, module: torch.nn.Module, scales: LoraScales) -> None:
        super().__init__()
        self.module = module
        self.lora = scales
        self.pooled = getattr(module, "pooled", False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        *network_inputs, lora_scales = inputs
        with lora_scales_set(self.lora, lora_scales):
            return self.module(*network_inputs)


@contextlib.contextmanager
def lora_scales_set(scales: LoraScales, value: torch.Tensor) -> Iterator[None]:
    scales.value = value
    try:
        yield
    finally:
        scales.value = None


def _networks(pipeline: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {
        attribute: getattr(pipeline, attribute)
        for attribute in ADAPTABLE_NETWORKS
        if isinstance(getattr(pipeline, attribute, None), torch.nn.Module)
    }
