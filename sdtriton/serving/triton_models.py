"""The only module that touches ``triton_python_backend_utils``: thin Triton adapters over pure code.

Each ``model_repository/<model>/1/model.py`` re-exports one class from here. Every adapter answers each
request with exactly one response; a bad request fails alone with ``INVALID_ARG`` and a message naming the
field, an unexpected failure is logged with its traceback and answered ``INTERNAL`` without it.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtriton import interface
from sdtriton.components import (
    COMPONENTS,
    ONNX_FILE_NAME,
    TEXT_ENCODER,
    TOKENIZER_DIR_NAME,
    UNET,
    VAE_DECODER,
    ComponentSpec,
)
from sdtriton.interface import PublicTensor
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.batching import can_concatenate, concatenate_requests, split_outputs, to_spec_rank
from sdtriton.serving.errors import InvalidInputError, RequestCancelledError
from sdtriton.serving.validation import GenerationParams, decode_prompt, parse_generation_params

_INTRA_OP_THREADS_PARAMETER = "intra_op_num_threads"


def _logger() -> Any:
    # pb_utils.Logger is bound by the stub after import (it is absent while configs auto-complete).
    return pb_utils.Logger


class ComponentCallError(RuntimeError):
    """A BLS call to a component model returned an error."""


def _version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _error_response(message: str, code: int) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _respond(request: Any, handle: Callable[[Any], list[Any]], model_name: str) -> Any:
    """Runs one request's handler and turns its failure into that request's own error response."""
    try:
        return pb_utils.InferenceResponse(output_tensors=handle(request))
    except InvalidInputError as error:
        return _error_response(str(error), pb_utils.TritonError.INVALID_ARG)
    except RequestCancelledError:
        return _error_response("request cancelled", pb_utils.TritonError.CANCELLED)
    except Exception:
        _logger().log_error(f"{model_name}: request failed\n{traceback.format_exc()}")
        return _error_response(f"{model_name}: internal error (see the server log)", pb_utils.TritonError.INTERNAL)


def _optional_items(request: Any, tensor: PublicTensor) -> np.ndarray | None:
    value = pb_utils.get_input_tensor_by_name(request, tensor.name)
    return None if value is None else value.as_numpy().reshape(-1)


def _required_items(request: Any, name: str, allowed: str = "") -> np.ndarray:
    value = pb_utils.get_input_tensor_by_name(request, name)
    if value is None:
        raise InvalidInputError(name, f"is required{': ' + allowed if allowed else ''}")
    return value.as_numpy()


def _int_parameter(model_config: dict[str, Any], key: str, default: int) -> int:
    raw = model_config.get("parameters", {}).get(key, {}).get("string_value")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"config parameter {key!r} must be an integer, got {raw!r}") from None


class TokenizerModel:
    """``tokenizer``: prompt and negative prompt -> padded CLIP token ids."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_name = args["model_name"]
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(_version_dir(args) / TOKENIZER_DIR_NAME)

    def _tokenize(self, request: Any) -> list[Any]:
        prompts = [
            decode_prompt(interface.PROMPT.name, item)
            for item in _required_items(request, interface.PROMPT.name, interface.PROMPT.allowed).reshape(-1)
        ]
        negative_items = _optional_items(request, interface.NEGATIVE_PROMPT)
        negatives = (
            [""] * len(prompts)
            if negative_items is None
            else [decode_prompt(interface.NEGATIVE_PROMPT.name, item) for item in negative_items]
        )
        from sdtriton.serving.text import tokenize_prompts

        return [
            pb_utils.Tensor(interface.INPUT_IDS.name, tokenize_prompts(self.tokenizer, prompts)),
            pb_utils.Tensor(interface.NEGATIVE_INPUT_IDS.name, tokenize_prompts(self.tokenizer, negatives)),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return [_respond(request, self._tokenize, self.model_name) for request in requests]


class OnnxComponentModel:
    """``text_encoder``, ``unet``, ``vae_decoder`` on the pip server: one ONNX Runtime session each.

    Requests the dynamic batcher queued together run as one batch.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, ComponentSession

        model_config = json.loads(args["model_config"])
        self.spec: ComponentSpec = COMPONENTS[args["model_name"]]
        if args["model_instance_kind"] == "GPU":
            device_id = int(args["model_instance_device_id"])
            providers: list[Any] = [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        self.session = ComponentSession(
            self.spec,
            _version_dir(args) / ONNX_FILE_NAME,
            providers=providers,
            intra_op_num_threads=_int_parameter(model_config, _INTRA_OP_THREADS_PARAMETER, 0),
        )

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        return {tensor.name: to_spec_rank(tensor, _required_items(request, tensor.name)) for tensor in self.spec.inputs}

    def _outputs(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        return [pb_utils.Tensor(name, outputs[name]) for name in self.spec.output_names]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            inputs = [self._read(request) for request in requests]
        except Exception:
            return [
                _respond(request, lambda r: self._outputs(self.session.run(self._read(r))), self.spec.model_name)
                for request in requests
            ]
        if len(requests) > 1 and can_concatenate(inputs, self.spec.input_names):
            try:
                joined, sizes = concatenate_requests(inputs, self.spec.input_names)
                parts = split_outputs(self.session.run(joined), sizes)
                return [pb_utils.InferenceResponse(output_tensors=self._outputs(part)) for part in parts]
            except Exception:
                _logger().log_warn(f"{self.spec.model_name}: batched run failed, running requests one by one")
        return [
            _respond(request, lambda _r, i=item: self._outputs(self.session.run(i)), self.spec.model_name)
            for request, item in zip(requests, inputs, strict=True)
        ]


class BlsComponents:
    """The pipeline's networks reached through BLS calls to their own Triton models.

    ``trace`` is the calling request's trace: with ``--trace-config`` on, each BLS call is traced as a
    child of the request that made it.
    """

    def __init__(self, trace: Any = None) -> None:
        self._trace_arguments = {} if trace is None else {"trace": trace}

    def _infer(self, spec: ComponentSpec, *arrays: np.ndarray) -> np.ndarray:
        inputs = []
        for tensor, array in zip(spec.inputs, arrays, strict=True):
            value = np.ascontiguousarray(array, dtype=tensor.numpy_dtype)
            if len(tensor.axes) == 1:
                value = value.reshape(-1, 1)  # a per-item scalar travels as [batch, 1]
            inputs.append(pb_utils.Tensor(tensor.name, value))
        response = pb_utils.InferenceRequest(
            model_name=spec.model_name,
            inputs=inputs,
            requested_output_names=spec.output_names,
            **self._trace_arguments,
        ).exec()
        if response.has_error():
            raise ComponentCallError(f"{spec.model_name}: {response.error().message()}")
        (output_name,) = spec.output_names
        return np.array(pb_utils.get_output_tensor_by_name(response, output_name).as_numpy())

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        return self._infer(TEXT_ENCODER, input_ids)

    def predict_noise(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray) -> np.ndarray:
        return self._infer(UNET, sample, timestep, encoder_hidden_states)

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        return self._infer(VAE_DECODER, latents)


class PipelineModel:
    """``pipeline``: validation, the per-request scheduler and generator, and the denoising loop."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_name = args["model_name"]
        # Imported here so that the component models' processes never load torch and diffusers.
        from sdtriton.serving.denoise import generate_image

        self._generate_image = generate_image
        self.config = PipelineConfig.load(_version_dir(args))

    def _params(self, request: Any, batch_size: int) -> list[GenerationParams]:
        raw = {tensor.name: _optional_items(request, tensor) for tensor in interface.GENERATION_INPUTS}
        params = []
        for index in range(batch_size):
            item = {name: None if values is None else values[index] for name, values in raw.items()}
            params.append(parse_generation_params(config=self.config, **item))
        sizes = {(p.height, p.width) for p in params}
        if len(sizes) > 1:
            raise InvalidInputError(
                interface.WIDTH.name, "width and height must be the same for every item of one request"
            )
        return params

    def _generate(self, request: Any) -> list[Any]:
        input_ids = _required_items(request, interface.INPUT_IDS.name)
        negative_input_ids = _required_items(request, interface.NEGATIVE_INPUT_IDS.name)
        params = self._params(request, batch_size=input_ids.shape[0])
        components = BlsComponents(trace=request.trace())
        images = [
            self._generate_image(
                input_ids=input_ids[index],
                negative_input_ids=negative_input_ids[index],
                params=item,
                config=self.config,
                components=components,
                is_cancelled=request.is_cancelled,
            )
            for index, item in enumerate(params)
        ]
        seeds = np.array([[item.seed] for item in params], dtype=np.int64)
        return [
            pb_utils.Tensor(interface.IMAGE.name, np.stack(images)),
            pb_utils.Tensor(interface.USED_SEED.name, seeds),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return [_respond(request, self._generate, self.model_name) for request in requests]
