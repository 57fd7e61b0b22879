"""Triton Python-backend entry point of `vae_decoder`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_models import OnnxComponentModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
