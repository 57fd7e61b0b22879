"""sdtriton: Stable Diffusion served on NVIDIA Triton Inference Server.

The import package holds the pieces shared by the exporter, the model repository, the client and the
tests: the public interface (:mod:`sdtriton.interface`), the component specs (:mod:`sdtriton.components`),
the scheduler table (:mod:`sdtriton.schedulers`) and the denoising pipeline (:mod:`sdtriton.serving`).
"""

__version__ = "0.1.0"
