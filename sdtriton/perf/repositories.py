"""The model and repository a run needs: the profile's model, made if it is not given; its export with the engine's
caches off; and the identity-UNet repository (its UNet returns its sample: Triton's per-step cost minus the plain
loop's over the same files is then what the BLS call mechanism itself costs). The other variants a run compares are
:mod:`sdtriton.export.variants`'.

``sdtriton.export`` is imported where it runs: it loads torch and diffusers.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sdtriton import interface
from sdtriton.components import ONNX_FILE_NAME, TOKENIZER_DIR_NAME, TRANSFORMER_MODEL_NAME, UNET
from sdtriton.perf.profiles import Loras

logger = logging.getLogger(__name__)

# Old enough for every ONNX Runtime this project pins.
_OPSET = 17
# Load tests measure the engine's work: the same seeded request sent again and again would otherwise be answered
# from the response cache, and repeated prompts would skip the text encoder the baselines run.
PERF_RENDER_OPTIONS_CACHES_OFF = {"response_cache_mb": 0, "text_cache_entries": 0}


def identity_repository(repository: Path, target: Path) -> Path:
    """A copy of ``repository`` whose UNet is ``noise_pred = sample``, with the UNet spec's tensors (other inputs
    ignored): the same model class serves it and the same loop drives it."""
    import onnx
    from onnx import TensorProto, helper

    from sdtriton.export.variants import linked_copy

    shutil.rmtree(target, ignore_errors=True)
    linked_copy(repository, target)
    unet_version_dir = target / UNET.model_name / "1"
    for path in unet_version_dir.glob(f"{ONNX_FILE_NAME}*"):  # model.onnx and its external data
        path.unlink()
    types = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16, "INT64": TensorProto.INT64}
    value_info = {
        tensor.name: helper.make_tensor_value_info(tensor.name, types[tensor.triton_dtype], list(tensor.axes))
        for tensor in (*UNET.inputs, *UNET.outputs)
    }
    (sample, *_), (noise_pred,) = UNET.input_names, UNET.output_names
    inputs = [value_info[name] for name in UNET.input_names]
    nodes = [helper.make_node("Identity", [sample], [noise_pred])]
    graph = helper.make_graph(nodes, "identity_unet", inputs, [value_info[noise_pred]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, unet_version_dir / ONNX_FILE_NAME)
    return target


def ensure_model(model_dir: Path | None, model: str, work_dir: Path) -> Path:
    """A diffusers folder of ``model``: ``model_dir`` if it holds one, else made by make-tiny (``model`` a profile of
    the SD family or another family, such as ``sd35``), else the built-in one."""
    from sdtriton.tiny import FAMILIES, PROFILES, make_tiny

    if model_dir is not None and (model_dir / "model_index.json").is_file():
        return model_dir
    families = set(FAMILIES) - {"sd"}
    if model not in PROFILES and model not in families:
        if model_dir is not None:
            raise FileNotFoundError(f"{model_dir} holds no diffusers pipeline (model_index.json)")
        from sdtriton.shapes.builtin import resolve_source

        return Path(resolve_source(model))
    target = model_dir or work_dir / "model"
    started = time.monotonic()
    make_tiny(target, **({"family": model} if model in families else {"profile": model}))
    logger.info("made the %s model in %.0f s", model, time.monotonic() - started)
    return target


def ensure_repository(repository: Path, model_dir: Path, *, show_progress: bool, work_dir: Path, loras: Loras) -> Path:
    """The export to load-test: ``repository`` if it holds one with the engine's caches off; a variant of it in
    ``work_dir`` with them off if they are on; else ``model_dir`` exported into ``repository`` with them off, and with
    ``loras`` (random adapters made in ``work_dir`` by ``make_tiny_lora`` with these options, by name)."""
    exported = (
        (repository / interface.ENTRY_MODEL_NAME / "config.pbtxt").is_file()
        and (repository / interface.PIPELINE_MODEL_NAME / "1" / TOKENIZER_DIR_NAME).is_dir()
        and any((repository / name / "1").is_dir() for name in (UNET.model_name, TRANSFORMER_MODEL_NAME))
    )
    from sdtriton.export.variants import engine_limits_of, engine_variant

    if exported:
        limits = engine_limits_of(repository)
        if limits.response_cache_bytes == 0 and limits.text_cache_entries == 0:
            return repository
        variant = work_dir / "caches_off_repository"
        shutil.rmtree(variant, ignore_errors=True)
        logger.info("load-testing %s with the engine's caches off (a variant in %s)", repository, variant)
        return engine_variant(repository, variant, caches_off=True)
    from sdtriton.export import LoraSource, RenderOptions, export_repository
    from sdtriton.tiny import make_tiny_lora

    started = time.monotonic()
    options = RenderOptions(**PERF_RENDER_OPTIONS_CACHES_OFF)
    made = [LoraSource(n, make_tiny_lora(model_dir, work_dir / "loras" / n, **o)) for n, o in loras.items()]
    export_repository(model_dir, repository, options=options, show_progress=show_progress, loras=made)
    logger.info("exported %s to %s in %.0f s", model_dir, repository, time.monotonic() - started)
    return repository
