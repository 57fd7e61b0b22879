"""``sdtriton.export``: turns a diffusers Stable Diffusion pipeline into a Triton model repository."""

from sdtriton.export.configs import ComponentBackend, RenderOptions
from sdtriton.export.errors import ExportOptionError
from sdtriton.export.lora import LoraSource
from sdtriton.export.repository import TensorRtExportOptions, export_repository, tensorrt_dry_run

__all__ = [
    "ComponentBackend",
    "ExportOptionError",
    "LoraSource",
    "RenderOptions",
    "TensorRtExportOptions",
    "export_repository",
    "tensorrt_dry_run",
]
