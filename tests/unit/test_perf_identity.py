"""The identity UNet of the BLS probe: the UNet spec's interface, the sample back, the rest of the repository linked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from sdtriton.components import ONNX_FILE_NAME, UNET
from sdtriton.export.variants import identity_repository


def test_identity_repository_swaps_only_the_unet(tmp_path: Path) -> None:
    source = tmp_path / "repository"
    for model in ("unet", "vae_decoder"):
        (source / model / "1").mkdir(parents=True)
        (source / model / "config.pbtxt").write_text(f'name: "{model}"\n')
        # The vae's weights at 1 MiB: files that large are linked, not copied.
        (source / model / "1" / ONNX_FILE_NAME).write_bytes(b"weights" if model == "unet" else bytes(1 << 20))
    (source / "unet" / "1" / f"{ONNX_FILE_NAME}.data").write_bytes(b"external weights")

    target = identity_repository(source, tmp_path / "identity")

    assert (target / "vae_decoder" / "1" / ONNX_FILE_NAME).is_symlink()
    assert (target / "unet" / "config.pbtxt").read_text() == 'name: "unet"\n'
    assert not (target / "unet" / "1" / f"{ONNX_FILE_NAME}.data").exists()
    session = ort.InferenceSession(str(target / "unet" / "1" / ONNX_FILE_NAME), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == UNET.input_names
    sample = np.random.default_rng(0).standard_normal((2, 4, 8, 12)).astype(np.float32)
    feeds = {
        "sample": sample,
        "timestep": np.ones(2, np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
    }
    (noise_pred,) = session.run(UNET.output_names, feeds)
    np.testing.assert_array_equal(noise_pred, sample)
    assert (source / "unet" / "1" / ONNX_FILE_NAME).read_bytes() == b"weights"
