"""``sdtriton.export``: turns a diffusers Stable Diffusion pipeline into a Triton model repository."""

from sdtriton.export.configs import ComponentBackend, RenderOptions
from sdtriton.export.repository import export_repository

__all__ = ["ComponentBackend", "RenderOptions", "export_repository"]
