"""Only the ``pipeline`` stub loads torch: a component's or an entry's stub starts on numpy and ONNX Runtime, so a
server starts sooner and holds far less memory (measured here: 37-102 MiB a stub, not 235-296 with torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtriton.serving.liveness import StubProcess

pytestmark = pytest.mark.integration

TORCH_LIBRARY = "libtorch_cpu"
NO_TORCH_MODELS = ("stable_diffusion", "stable_diffusion_stream", "text_encoder", "unet", "vae_decoder", "vae_encoder")


def _loads_torch(triton_server, model: str) -> bool:
    stubs = StubProcess.find_all(parent_pid=triton_server.pid, model_directory=triton_server.repository / model)
    assert stubs, f"no stub process of {model}"
    return any(TORCH_LIBRARY in Path(f"/proc/{stub.pid}/maps").read_text() for stub in stubs)


def test_only_the_pipeline_stub_loads_torch(triton_server) -> None:
    assert _loads_torch(triton_server, "pipeline")
    assert [model for model in NO_TORCH_MODELS if _loads_torch(triton_server, model)] == []
