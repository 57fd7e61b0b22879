"""Triton Python-backend entry point of `stable_diffusion`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_models import EntryModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
