"""What the batched LoRA design costs: memory per adapter and the UNet call time with no adapter, one adapter in flight
and four, in ONNX Runtime on this machine. A script beside its results (``.venv/bin/python perf/lora_cost.py``), not a
profile of ``sdtriton perf``: it measures export's LoRA layers alone, no server.

The UNet is SD 1.5's layout (:data:`sdtriton.sd15.SD15_UNET`, random weights) at a width factor (``--width-factor
0.5``: half the channels, a quarter of the weights, so that three exports fit a small CPU host); every adapter is
rank ``--rank`` on the attention projections (to_q, to_k, to_v, to_out.0: diffusers' own SD LoRA training targets),
exported by :func:`sdtriton.export.lora.batch_lora_layers` as ``sdtriton export --lora`` exports it. Three networks
are timed on the same rows (``--images`` guided images, two rows each, at ``--size`` pixels): the base network, one
exported with one adapter (every row on it), and one exported with four (rows spread over the four adapters, and
every row on none). Memory per adapter is the bytes of its low-rank matrices (fp32 and fp16) and the ONNX file's
growth. The figures are written as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from sdtriton.components import LORA_SCALES_INPUT, UNET, with_lora_scales
from sdtriton.perf.load import in_turns_ms
from sdtriton.sd15 import SD15_UNET

logger = logging.getLogger(__name__)

_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
_ADAPTERS = (0, 1, 4)


def _unet(width_factor: float, seed: int):
    import torch
    from diffusers import UNet2DConditionModel

    widths = tuple(max(32, int(width * width_factor)) // 32 * 32 for width in SD15_UNET["block_out_channels"])
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": widths}).eval()


def _export(
    adapters: int, *, width_factor: float, rank: int, feeds: dict[str, np.ndarray], folder: Path
) -> tuple[Path, int]:
    """The UNet with ``adapters`` adapters as ONNX, traced on ``feeds``, with its spec's tensors and dynamic axes (as
    ``sdtriton export --lora`` exports it); returns its path and the adapters' parameter count."""
    import torch
    from peft import LoraConfig

    from sdtriton.export.lora import WithLoraScales, batch_lora_layers
    from sdtriton.export.onnx_export import ONNX_OPSET, _UNetNoisePrediction

    unet = _unet(width_factor, seed=0)
    names = [f"adapter{index}" for index in range(adapters)]
    for index, name in enumerate(names):
        torch.manual_seed(100 + index)
        unet.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=list(_TARGETS), init_lora_weights=False),
            adapter_name=name,
        )
    lora_parameters = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    module, spec = _UNetNoisePrediction(unet), UNET
    inputs = [torch.from_numpy(feeds[name]) for name in UNET.input_names]
    if adapters:
        module = WithLoraScales(module, batch_lora_layers(unet, names, model_name=UNET.model_name))
        spec = with_lora_scales(UNET)
        inputs.append(torch.rand(len(inputs[0]), adapters))
    path = folder / f"unet_{adapters}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(inputs),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes={tensor.name: tensor.onnx_dynamic_axes() for tensor in (*spec.inputs, *spec.outputs)},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return path, lora_parameters


def _row_cases(adapters: int, rows: int) -> dict[str, np.ndarray | None]:
    """The lora_scales rows each network is timed with (None: the base network takes none)."""
    if adapters == 0:
        return {"base network": None}
    if adapters == 1:
        return {"1 adapter (every row)": np.ones((rows, 1), dtype=np.float32)}
    spread = np.zeros((rows, adapters), dtype=np.float32)
    for row in range(rows):
        spread[row, (row // 2) % adapters] = 0.5 + 0.25 * (row // (2 * adapters))  # an image's two rows alike
    return {
        f"{adapters} adapters (rows spread)": spread,
        "no adapter (zeros)": np.zeros((rows, adapters), dtype=np.float32),
    }


def measure(*, width_factor: float, rank: int, size: int, images: int, runs: int) -> dict:
    import onnxruntime as ort

    rows, latent = 2 * images, size // 8
    rng = np.random.default_rng(0)
    sample, timestep, text = UNET.input_names
    feeds = {
        sample: rng.standard_normal((rows, 4, latent, latent)).astype(np.float32),
        timestep: np.full((rows,), 500.0, dtype=np.float32),
        text: rng.standard_normal((rows, 77, SD15_UNET["cross_attention_dim"])).astype(np.float32),
    }
    with tempfile.TemporaryDirectory(prefix="sdtriton-lora-cost-") as scratch:
        exported = {
            n: _export(n, width_factor=width_factor, rank=rank, feeds=feeds, folder=Path(scratch)) for n in _ADAPTERS
        }
        sizes = {
            n: path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*.data"))
            for n, (path, _) in exported.items()
        }
        # Every case's session first, then the runs round robin: a host whose load swings (shared CPUs) swings under
        # every case alike. One thread each: the figures are per core, steadier under others' load.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        cases: list[tuple[str, str, object, dict[str, np.ndarray]]] = []
        for adapters, (path, _) in exported.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for rows_on, scales in _row_cases(adapters, rows).items():
                run_feeds = feeds if scales is None else {**feeds, LORA_SCALES_INPUT: scales}
                session.run(None, run_feeds)  # the first run plans memory
                cases.append((f"{adapters} exported", rows_on, session, run_feeds))
        runs_ms = in_turns_ms([partial(session.run, None, run_feeds) for _, _, session, run_feeds in cases], runs=runs)
        timings = [
            {"network": network, "rows_on": rows_on, "median_ms": statistics.median(times), "runs_ms": times}
            for (network, rows_on, _, _), times in zip(cases, runs_ms, strict=True)
        ]
        for timing in timings:
            logger.info("%s, %s: median %.1f ms", timing["network"], timing["rows_on"], timing["median_ms"])
    per_adapter = exported[1][1]
    return {
        "unet": f"SD 1.5 layout x {width_factor:g} width, random weights",
        "rank": rank,
        "targets": list(_TARGETS),
        "rows": rows,
        "size_px": size,
        "adapter_parameters": per_adapter,
        "adapter_mib_fp32": per_adapter * 4 / 2**20,
        "adapter_mib_fp16": per_adapter * 2 / 2**20,
        "onnx_mib": {str(n): size_bytes / 2**20 for n, size_bytes in sizes.items()},
        "timings": timings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width-factor", type=float, default=0.5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--images", type=int, default=4, help="guided images in the call (two rows each)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--output", type=Path, default=Path("perf/results/lora/cost.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = measure(width_factor=args.width_factor, rank=args.rank, size=args.size, images=args.images, runs=args.runs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("written %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
