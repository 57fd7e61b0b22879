"""Smoke test of ``train-shapes`` (a few steps of both stages, resumed) and of the model's noise schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from sdtriton.schedulers import SCHEDULERS, load_scheduler_overrides
from sdtriton.shapes import architecture
from sdtriton.shapes.builtin import WEIGHTS_DIR
from sdtriton.shapes.train import CHECKPOINT_DIR_NAME, CURVE_FILE_NAME, TrainingPlan, train_shapes
from sdtriton.tokenizer_files import build_clip_tokenizer


def test_schedule_reaches_almost_zero_snr_and_every_scheduler_samples_it() -> None:
    betas = torch.tensor(architecture.SCHEDULER_CONFIG["trained_betas"], dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    assert alphas_cumprod[-1].item() == pytest.approx(architecture.TERMINAL_ALPHA_BAR, rel=1e-6)
    assert bool(torch.all(alphas_cumprod[1:] < alphas_cumprod[:-1]))
    for name, scheduler_class in SCHEDULERS.items():
        scheduler = scheduler_class.from_config(architecture.SCHEDULER_CONFIG)
        scheduler.set_timesteps(20)
        assert scheduler.config.prediction_type == "v_prediction", name
        # Sampling starts at the last training step, where the model learned to draw from the text alone.
        assert int(scheduler.timesteps[0]) == 999, name
        assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(architecture.TERMINAL_ALPHA_BAR, rel=1e-3), name
        assert torch.isfinite(torch.as_tensor(scheduler.init_noise_sigma)), name


def test_a_few_training_steps_make_a_loadable_pipeline_and_resume(tmp_path: Path) -> None:
    plan = TrainingPlan(
        vae_steps=2,
        vae_batch_size=4,
        unet_steps=2,
        unet_batch_size=4,
        warmup_steps=1,
        eval_every_steps=2,
        eval_prompts=2,
        vae_gate_accuracy=0.0,
        vae_eval_images=8,
        vae_scale_images=8,
        # The test process's own thread count (one a core, or OMP_NUM_THREADS): the plan's 2 would stay set for every
        # later test of this process, and spin against the other xdist worker.
        threads=torch.get_num_threads(),
    )
    model_dir = train_shapes(tmp_path, plan)
    checkpoint = torch.load(tmp_path / CHECKPOINT_DIR_NAME / "unet.pt", weights_only=False)
    assert checkpoint["step"] == 2
    assert len((tmp_path / CURVE_FILE_NAME).read_text().splitlines()) == 2  # header + step 2

    # Resuming trains on from the checkpoint instead of starting again.
    train_shapes(tmp_path, dataclasses.replace(plan, unet_steps=3, eval_every_steps=100))
    assert torch.load(tmp_path / CHECKPOINT_DIR_NAME / "unet.pt", weights_only=False)["step"] == 3

    with safe_open(model_dir / "unet" / "diffusion_pytorch_model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}
    pipeline = StableDiffusionPipeline.from_pretrained(model_dir, tokenizer=build_clip_tokenizer())
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    assert pipeline.scheduler.config.trained_betas == pytest.approx(architecture.SCHEDULER_CONFIG["trained_betas"])
    assert load_scheduler_overrides(model_dir) == architecture.SCHEDULER_OVERRIDES


def test_committed_weights_carry_the_scheduler_overrides_training_writes() -> None:
    assert load_scheduler_overrides(WEIGHTS_DIR) == architecture.SCHEDULER_OVERRIDES
