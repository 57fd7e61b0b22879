"""ONNX Runtime sessions over exported components, named by their :mod:`sdtriton.components` specs.

Used by the Python-backend component models inside Triton and, without Triton, by the plain-loop
baseline and the tests (:class:`sdtriton.serving.networks.OnnxRuntimeComponents`). numpy only, no torch: a
component model's process never loads it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sdtriton.components import ComponentSpec

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# Run option: after the run, give back the CPU arena's regions that hold no live tensor (the arena must be on).
ARENA_SHRINKAGE_RUN_OPTION = "memory.enable_memory_arena_shrinkage"
CPU_ARENA = "cpu:0"
# Session option: take CPU memory from the arena registered with the process's ONNX Runtime environment.
USE_ENV_ALLOCATORS_SESSION_OPTION = "session.use_env_allocators"
# The arena extends by exactly what a request needs (ONNX Runtime's default doubles), so that a run's outputs,
# alive when the run shrinks the arena, hold a region of their own size rather than one shared with the run's
# freed working memory (measured: the VAE decoder's RSS between runs swung 71..134 MiB with doubling, 70..73 without).
_ARENA_EXTEND_SAME_AS_REQUESTED = 1

_env_arena_lock = threading.Lock()
_env_arena_registered = False


def _register_env_cpu_arena() -> None:
    """Registers, once per process, the CPU arena that sessions releasing their memory share."""
    global _env_arena_registered
    with _env_arena_lock:
        if _env_arena_registered:
            return
        memory_info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(
            memory_info, ort.OrtArenaCfg({"arena_extend_strategy": _ARENA_EXTEND_SAME_AS_REQUESTED})
        )
        _env_arena_registered = True


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (``None`` where the C library has none, e.g. musl or macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


class ComponentSession:
    """One component's ONNX file in an ONNX Runtime session.

    By default the memory a run takes is given back after it, so that the session's memory between runs does not
    grow with the variety of shapes it is given. ONNX Runtime's CPU arena takes a new region whenever a run's
    memory pattern (one block per input shape) fits no free chunk, doubles as it extends, and never gives memory
    back: over a mix of batch sizes and latent sizes it keeps growing. So each run asks the arena to free its
    unused regions (:data:`ARENA_SHRINKAGE_RUN_OPTION`), the arena (one per process, shared) extends by exactly
    what is asked, and glibc is asked to return what was freed (``malloc_trim``; it otherwise keeps it, its mmap
    threshold having risen to the regions' sizes).

    Measured on the 2-core CPU (``docs/memory.md``): the ``shapes`` UNet in-process over a seeded mix of 1..16
    rows and latent sides 16..32, 8 warm-up calls then 500: RSS 295 -> 297 MiB (+0.5%), against 964 -> 2603 MiB
    (+170%) with ONNX Runtime's defaults; a 1000-request soak through Triton: +0.2% for the ``unet`` stub, +1.9%
    for all processes. The cost is the page faults of memory taken afresh on each run: +22% UNet time on mixed
    calls in-process (+10% at 8 rows of 16x16), +21% UNet compute time through the server.
    """

    def __init__(
        self,
        spec: ComponentSpec,
        onnx_path: Path,
        *,
        providers: Sequence[str | tuple[str, dict[str, object]]] = (CPU_PROVIDER,),
        intra_op_num_threads: int = 0,
        release_memory_after_run: bool = True,
    ) -> None:
        """Loads ``onnx_path``.

        Args:
            providers: ONNX Runtime execution providers, in order of preference; the unavailable are skipped.
            intra_op_num_threads: threads per operator (0: ONNX Runtime's choice, one per core).
            release_memory_after_run: give the CPU memory a run took back to the system after it, so that memory
                stays flat over any mix of shapes (False: ONNX Runtime's defaults, which keep it for reuse and
                grow with each new shape).
        """
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if release_memory_after_run:
            _register_env_cpu_arena()
            options.add_session_config_entry(USE_ENV_ALLOCATORS_SESSION_OPTION, "1")
        available = set(ort.get_available_providers())
        usable = [p for p in providers if (p if isinstance(p, str) else p[0]) in available]
        if not usable:
            raise RuntimeError(f"none of the providers {list(providers)} is available (have {sorted(available)})")
        self.spec = spec
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=usable)
        self._run_options = ort.RunOptions()
        self._malloc_trim: Callable[[int], int] | None = None
        if release_memory_after_run:
            self._run_options.add_run_config_entry(ARENA_SHRINKAGE_RUN_OPTION, CPU_ARENA)
            self._malloc_trim = _malloc_trim()
        logger.info(
            "%s: loaded %s with %s (memory released after each run: %s)",
            spec.model_name,
            onnx_path,
            usable,
            release_memory_after_run,
        )

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {
            tensor.name: np.ascontiguousarray(inputs[tensor.name], dtype=tensor.numpy_dtype)
            for tensor in self.spec.inputs
        }
        outputs = self.session.run(self.spec.output_names, feeds, self._run_options)
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        return dict(zip(self.spec.output_names, outputs, strict=True))
