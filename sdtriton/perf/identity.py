"""An identity UNet: the served repository with a UNet that returns its sample, to time a bare BLS round trip.

With the UNet's compute gone, the per-step cost of Triton minus that of the plain loop over the same
files is what the BLS call mechanism itself costs (request objects, shared-memory copies, the hops between
the pipeline's process, the server and the UNet's process). The identity graph keeps the UNet spec's tensor
names, types and dynamic axes, so the same ``OnnxComponentModel`` serves it and the same loop drives it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from sdtriton.components import ONNX_FILE_NAME, UNET, TensorSpec

_ONNX_TYPES = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16, "INT64": TensorProto.INT64}
# Old enough for every ONNX Runtime this project pins.
_OPSET = 17


def _value_info(tensor: TensorSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, _ONNX_TYPES[tensor.triton_dtype], list(tensor.axes))


def identity_unet_model() -> onnx.ModelProto:
    """``noise_pred = sample``; the other inputs are accepted and ignored."""
    (sample, *_) = UNET.inputs
    (noise_pred,) = UNET.outputs
    graph = helper.make_graph(
        [helper.make_node("Identity", [sample.name], [noise_pred.name])],
        "identity_unet",
        [_value_info(tensor) for tensor in UNET.inputs],
        [_value_info(noise_pred)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model)
    return model


def identity_repository(repository: Path, target: Path) -> Path:
    """A copy of ``repository`` (files linked, not copied) whose UNet is :func:`identity_unet_model`."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        repository.resolve(), target, copy_function=os.symlink, ignore=shutil.ignore_patterns("__pycache__")
    )
    unet_version_dir = target / UNET.model_name / "1"
    for path in unet_version_dir.iterdir():
        if path.name.startswith(ONNX_FILE_NAME):  # model.onnx and its external data
            path.unlink()
    onnx.save(identity_unet_model(), unet_version_dir / ONNX_FILE_NAME)
    return target
