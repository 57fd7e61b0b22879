"""Triton adapter of the simulated UNet (:mod:`sdtriton.serving.simulated`): sleeps as a GPU would compute.

A simulated repository's ``unet/1/model.py`` re-exports :class:`SimulatedUNetModel`, a thin adapter beside
those of :mod:`sdtriton.serving.triton_models` (whose logging and error helpers it shares); the latency model
and the request checks are pure code.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtriton.components import UNET
from sdtriton.serving.batching import to_spec_rank
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.simulated import SimulatedLatency, checked_sample, latency_from_parameters, zero_noise_pred
from sdtriton.serving.triton_common import error_response, release_triton_objects, report_crashes, triton_logger

(_NOISE_PRED,) = UNET.outputs


def _read_inputs(request: Any) -> dict[str, np.ndarray | None]:
    inputs: dict[str, np.ndarray | None] = {}
    for tensor in UNET.inputs:
        value = pb_utils.get_input_tensor_by_name(request, tensor.name)
        inputs[tensor.name] = None if value is None else to_spec_rank(tensor, value.as_numpy())
    return inputs


class SimulatedUNetModel:
    """``unet`` of a simulated repository: one sleep of ``fixed_ms + per_item_ms * rows`` per batch, then zeros.

    ``rows`` is summed over the requests the dynamic batcher handed over in one ``execute``, as one GPU call
    would run them. A bad or cancelled request is answered alone and adds no rows.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        report_crashes()
        self.model_name: str = args["model_name"]
        model_config = json.loads(args["model_config"])
        try:
            self.latency: SimulatedLatency = latency_from_parameters(model_config.get("parameters", {}))
        except ValueError as error:
            raise ValueError(f"{self.model_name}: {error}") from None
        triton_logger().log_info(
            f"{self.model_name}: simulated UNet, each call sleeps {self.latency} "
            f"(fixed + per batch row), max_batch_size {model_config.get('max_batch_size')}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        samples: dict[int, np.ndarray] = {}
        for index, request in enumerate(requests):
            try:
                if request.is_cancelled():
                    responses[index] = error_response("request cancelled", pb_utils.TritonError.CANCELLED)
                else:
                    samples[index] = checked_sample(_read_inputs(request))
            except InvalidInputError as error:
                responses[index] = error_response(str(error), pb_utils.TritonError.INVALID_ARG)
            except Exception:
                triton_logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
                responses[index] = error_response(
                    f"{self.model_name}: internal error (see the server log)", pb_utils.TritonError.INTERNAL
                )
        if samples:
            # One call for the whole batch, as the GPU would make it; sleeping holds no CPU.
            time.sleep(self.latency.call_s(sum(int(sample.shape[0]) for sample in samples.values())))
        for index, sample in samples.items():
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(_NOISE_PRED.name, zero_noise_pred(sample))]
            )
        return responses

    def finalize(self) -> None:
        release_triton_objects({})
        triton_logger().log_info(f"{self.model_name}: simulated UNet stopped")
