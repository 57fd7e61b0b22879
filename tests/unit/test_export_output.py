"""What export shows: its progress bar and one line per component with its parity figure, not tracer warnings.

The tracer warnings diffusers' and transformers' networks raise on every export are silenced around
``torch.onnx.export`` alone; a warning export does not know, tracer warnings of other modules included, still shows.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pytest
import torch

from sdtriton.components import components_of
from sdtriton.export import export_repository, onnx_export

_UNKNOWN_WARNING = "a warning export does not know"
_COMPONENT_LINE = re.compile(r"(\w+): max \|onnxruntime - torch\| = \S+$")


def test_export_shows_its_bar_and_one_line_per_component_and_only_unknown_warnings(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    decode = onnx_export._VaeDecode.forward

    def forward_with_unknown_warnings(self: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        warnings.warn(_UNKNOWN_WARNING, UserWarning, stacklevel=1)
        _ = bool(latents.mean() > 0)  # while traced: a tracer warning raised here, outside diffusers and transformers
        return decode(self, latents)

    monkeypatch.setattr(onnx_export._VaeDecode, "forward", forward_with_unknown_warnings)
    caplog.set_level(logging.INFO, logger="sdtriton.export")
    with warnings.catch_warnings(record=True) as caught:
        torch.jit.TracerWarning.ignore_lib_warnings()  # as in any process that imports torch (pytest drops it)
        config = export_repository(tiny_model_dir, tmp_path, fit_preview=False)

    tracer_warnings = {(w.filename, w.lineno) for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    assert {filename for filename, _ in tracer_warnings} == {__file__}, tracer_warnings
    assert _UNKNOWN_WARNING in [str(w.message) for w in caught]
    lines = [
        match[1]
        for record in caplog.records
        if record.levelno >= logging.INFO and (match := _COMPONENT_LINE.fullmatch(record.getMessage()))
    ]
    assert lines == [spec.model_name for spec in components_of(config)]
    assert "export: 100%" in capsys.readouterr().err


def test_a_graph_that_runs_at_the_traced_size_only_fails_the_export(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export checks every network at a second size (one row, the smallest size allowed), not only the traced one:
    a size the tracer baked into the graph (FLUX's rotary reshape did) is refused at export, not met in serving."""
    decode = onnx_export._VaeDecode.forward

    def forward_with_a_baked_width(self: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        # int() makes the traced width a constant: the graph holds a tensor of the example's width.
        return decode(self, latents + torch.zeros(int(latents.shape[3])))

    monkeypatch.setattr(onnx_export._VaeDecode, "forward", forward_with_a_baked_width)
    with pytest.raises(RuntimeError, match=r"vae_decoder: the exported graph fails at another size \(latents \[1, "):
        export_repository(tiny_model_dir, tmp_path / "repository", show_progress=False, fit_preview=False)


@pytest.mark.parametrize("declared", [True, False], ids=["pooling-encoder", "undeclared"])
def test_the_clip_pooling_warning_is_silenced_for_the_pooling_encoders_only(tmp_path: Path, declared: bool) -> None:
    """CLIP's pooled output (SDXL's and SD 3's second encoders, FLUX's CLIP) indexes by row and argmax, never a
    negative index: the exporter's advanced-indexing warning is known there and silenced; the same graph from a
    network that does not declare it keeps the warning."""
    from sdtriton.export.repository import load_source_pipeline, pipeline_config_of
    from sdtriton.tiny import make_tiny

    pipeline = load_source_pipeline(make_tiny(tmp_path / "flux", family="flux-schnell"))
    config = pipeline_config_of(pipeline)
    (spec,) = (spec for spec in components_of(config) if spec.model_name == "text_encoder")
    module = onnx_export._TextEncoderPooled(pipeline.text_encoder).eval()
    module.pooled = declared
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_export._export_module(
            module,
            spec,
            config,
            tmp_path / "model.onnx",
            check_atol=onnx_export.DEFAULT_CHECK_ATOL,
            vocab_size=pipeline.text_encoder.config.vocab_size,
        )
    indexing = [w for w in caught if onnx_export._CLIP_POOLING_MESSAGE in str(w.message)]
    assert bool(indexing) != declared
