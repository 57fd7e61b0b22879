"""Triton Python-backend entry point of `pipeline`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_models import PipelineModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
