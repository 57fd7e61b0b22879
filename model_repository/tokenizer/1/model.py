"""Triton Python-backend entry point of `tokenizer`; the logic lives in sdtriton.serving."""

from sdtriton.serving.triton_models import TokenizerModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
