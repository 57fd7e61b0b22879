"""ONNX Runtime sessions over exported components, named by their :mod:`sdtriton.components` specs.

Used by the Python-backend component models inside Triton and, without Triton, by the plain-loop
baseline and the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from sdtriton.components import ONNX_FILE_NAME, ComponentSpec, components_of
from sdtriton.interface import PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.networks import SpecNetworks

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class ComponentSession:
    """One component's ONNX file in an ONNX Runtime session."""

    def __init__(
        self,
        spec: ComponentSpec,
        onnx_path: Path,
        *,
        providers: Sequence[str | tuple[str, dict[str, object]]] = (CPU_PROVIDER,),
        intra_op_num_threads: int = 0,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        usable = [p for p in providers if (p if isinstance(p, str) else p[0]) in available]
        if not usable:
            raise RuntimeError(f"none of the providers {list(providers)} is available (have {sorted(available)})")
        self.spec = spec
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=usable)
        logger.info("%s: loaded %s with %s", spec.model_name, onnx_path, usable)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {
            tensor.name: np.ascontiguousarray(inputs[tensor.name], dtype=tensor.numpy_dtype)
            for tensor in self.spec.inputs
        }
        outputs = self.session.run(self.spec.output_names, feeds)
        return dict(zip(self.spec.output_names, outputs, strict=True))


class OnnxRuntimeComponents(SpecNetworks):
    """The networks in ONNX Runtime, no Triton: a :class:`DiffusionComponents` for baselines and tests."""

    def __init__(
        self,
        config: PipelineConfig,
        onnx_paths: Mapping[str, Path],
        *,
        device: torch.device | str = "cpu",
        **session_options: object,
    ) -> None:
        super().__init__(config, device=device)
        self.sessions = {
            name: ComponentSession(spec, onnx_paths[name], **session_options) for name, spec in self.specs.items()
        }

    @classmethod
    def from_model_repository(
        cls, repository: Path, config: PipelineConfig | None = None, **session_options: object
    ) -> OnnxRuntimeComponents:
        """Sessions over ``repository/<component>/1/model.onnx``; the config defaults to the repository's own."""
        if config is None:
            config = PipelineConfig.load(repository / PIPELINE_MODEL_NAME / "1")
        paths = {spec.model_name: repository / spec.model_name / "1" / ONNX_FILE_NAME for spec in components_of(config)}
        return cls(config, paths, **session_options)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.sessions[spec.model_name].run({name: value.cpu().numpy() for name, value in inputs.items()})
        return {name: torch.from_numpy(value).to(self.device) for name, value in outputs.items()}
