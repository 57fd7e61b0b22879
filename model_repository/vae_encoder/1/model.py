"""Triton Python-backend entry point of `vae_encoder`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_models import OnnxComponentModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
