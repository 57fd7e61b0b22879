"""Triton Python-backend entry point of `pipeline`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_pipeline import PipelineModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
