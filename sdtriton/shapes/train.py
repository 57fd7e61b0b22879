"""``sdtriton train-shapes OUT``: trains the whole SD architecture on the shapes world, resumably.

Stage 1 trains the autoencoder on the posterior mean with an L1 + edge loss, and gates on the judge
naming >= 95% of its reconstructions right. Stage 2 trains the UNet and the CLIP text encoder together
(v-prediction over a zero-terminal-SNR schedule, min-SNR weighting, 10% empty captions for
classifier-free guidance, EMA, optional bf16 autocast), with the real CLIP tokenizer. Every batch depends
only on (seed, step), checkpoints are taken every few minutes, and a run resumes from the last one. Prompt
adherence of the EMA weights is measured in-process every ``eval_every_steps`` and appended to ``curve.csv``.
"""

from __future__ import annotations

import copy
import csv
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from sdtriton.schedulers import save_scheduler_overrides
from sdtriton.shapes import architecture
from sdtriton.shapes.evaluate import score
from sdtriton.shapes.judge import judge
from sdtriton.shapes.world import CAPTION_TEMPLATES, COLOURS, SHAPES, evaluation_prompts, training_batches
from sdtriton.tokenizer_files import build_clip_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_DIR_NAME = "checkpoints"
CURVE_FILE_NAME = "curve.csv"
VAE_GATE_ACCURACY = 0.95
_MIN_SNR_GAMMA = 5.0
_EMPTY_CAPTION_FRACTION = 0.1


@dataclass(frozen=True)
class TrainingPlan:
    """How long and how hard each stage trains."""

    seed: int = 0
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_learning_rate: float = 1e-3
    unet_steps: int = 6000
    unet_batch_size: int = 64
    unet_learning_rate: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    eval_every_steps: int = 500
    eval_prompts: int = 64
    checkpoint_every_s: float = 300.0
    threads: int = 2
    # Measured here: bf16 autocast made both stages about 2x slower on this CPU, so it is off by default.
    bf16_autocast: bool = False
    vae_gate_accuracy: float = VAE_GATE_ACCURACY
    # Reconstructions judged for the gate (half as many at each vae_check_every_steps).
    vae_eval_images: int = 256
    # Images whose latents' spread sets the VAE's scaling factor (1 / std of their latent means).
    vae_scale_images: int = 256
    # The VAE stops early once its reconstructions are judged this right (checked every vae_check_every_steps).
    vae_target_accuracy: float = 0.98
    vae_check_every_steps: int = 100
    vae_edge_weight: float = 1.0
    # Offset noise: a per-channel constant added to the training noise. With SD 1.5's schedule, 16x16
    # latents leak each channel's mean even at t=999, and without it the UNet read the colours off x_t
    # (measured here: colour at chance after 1300 steps). The zero-terminal-SNR schedule
    # (architecture.SCHEDULER_CONFIG) removes that leak at its root, so it is off by default.
    offset_noise: float = 0.0
    # A UNet checkpoint (``checkpoints/unet.pt`` of an earlier run) whose EMA weights start the UNet and text
    # encoder when this run has no checkpoint of its own: fine-tuning instead of starting from scratch.
    init_from: str | None = None
    # The share of each batch whose timesteps come from the noisy half of the schedule (t >= 500), where the
    # layout is still open and the shape must come from the caption; the rest are uniform over all steps.
    noisy_half_fraction: float = 0.0


def _atomic_save(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    torch.save(state, scratch)
    scratch.replace(path)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def world_token_ids(tokenizer: Any) -> list[int]:
    """Every token id a caption of the world can hold (the text encoder's table keeps only these)."""
    words = {*COLOURS, *SHAPES}
    for template in CAPTION_TEMPLATES:
        words.update(template.replace("{colour}", "").replace("{shape}", "").replace("{background}", "").split())
    ids = set(tokenizer(" ".join(sorted(words)) + " , ")["input_ids"])
    for word in words:
        ids.update(tokenizer(word)["input_ids"])
    return sorted(ids)


def _vae_accuracy(vae: torch.nn.Module, *, seed: int, count: int) -> float:
    images, scenes = next(training_batches(batch_size=count, seed=seed + 10_000))
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(_to_tensor(images)).latent_dist.mean).sample
    pixels = ((reconstruction.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    correct = 0
    for image, scene in zip(pixels, scenes, strict=True):
        verdict = judge(image)
        correct += (verdict.colour, verdict.shape, verdict.background) == (scene.colour, scene.shape, scene.background)
    return correct / count


def train_vae(out: Path, plan: TrainingPlan) -> torch.nn.Module:
    """Stage 1: the autoencoder, resumable; returns it with its scaling factor set."""
    checkpoint_path = out / CHECKPOINT_DIR_NAME / "vae.pt"
    torch.manual_seed(plan.seed)
    vae = architecture.new_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=plan.vae_learning_rate, weight_decay=0.0)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.vae_steps)
    step = 0
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        # A VAE that reached its target is finished; otherwise a larger --vae-steps trains it on.
        step = plan.vae_steps if state.get("reached_target") else state["step"]
        logger.info("resuming the VAE at step %d", step)
    last_save = time.monotonic()
    batches = training_batches(batch_size=plan.vae_batch_size, seed=plan.seed, start_step=step)
    with tqdm(total=plan.vae_steps, initial=step, desc="vae") as progress:
        while step < plan.vae_steps:
            images, _ = next(batches)
            x = _to_tensor(images)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16_autocast):
                posterior = vae.encode(x).latent_dist
                reconstruction = vae.decode(posterior.mean).sample.float()
            l1 = (reconstruction - x).abs().mean()
            edge = sum((a - b).abs().mean() for a, b in zip(_edges(reconstruction), _edges(x), strict=True))
            kl = posterior.kl().mean() / x[0].numel()
            loss = l1 + plan.vae_edge_weight * edge + 1e-4 * kl
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update()
            progress.set_postfix(l1=f"{l1.item():.4f}", edge=f"{edge.item():.4f}")
            reached_target = False
            if step % plan.vae_check_every_steps == 0:
                accuracy = _vae_accuracy(vae, seed=plan.seed, count=max(1, plan.vae_eval_images // 2))
                logger.info("VAE step %d: reconstructions judged %.1f%% right", step, 100 * accuracy)
                reached_target = accuracy >= plan.vae_target_accuracy
            done = reached_target or step == plan.vae_steps
            if time.monotonic() - last_save > plan.checkpoint_every_s or done:
                state = {
                    "vae": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "step": step,
                    "reached_target": reached_target,
                }
                _atomic_save(state, checkpoint_path)
                last_save = time.monotonic()
            if done:
                break
    vae.eval()
    images, _ = next(training_batches(batch_size=plan.vae_scale_images, seed=plan.seed + 20_000))
    with torch.no_grad():
        latents = vae.encode(_to_tensor(images)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    accuracy = _vae_accuracy(vae, seed=plan.seed, count=plan.vae_eval_images)
    logger.info(
        "VAE: reconstructions judged %.1f%% right, scaling factor %.4f", 100 * accuracy, vae.config.scaling_factor
    )
    if accuracy < plan.vae_gate_accuracy:
        raise RuntimeError(
            f"VAE reconstructions judged {accuracy:.1%} right, below the {plan.vae_gate_accuracy:.0%} gate"
        )
    return vae


def build_pipeline(vae, text_encoder, unet, tokenizer) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=architecture.new_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def adherence(pipeline: StableDiffusionPipeline, *, count: int, seed: int = 1, steps: int = 20) -> dict[str, float]:
    """Judged accuracy per attribute over fixed prompts, in-process (no Triton)."""
    cases = evaluation_prompts(count, seed=seed)
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipeline(
            [case.prompt for case in cases],
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images
    pixels = [np.round(image * 255).astype(np.uint8) for image in images]
    return score(list(zip(pixels, cases, strict=True))).as_row()


def _loss_weights(noise_schedule: DDPMScheduler) -> torch.Tensor:
    """Per-timestep loss weights: min-SNR-gamma, so that nearly clean timesteps do not dominate.

    In x0 terms an epsilon loss weighs each timestep by its SNR, which starves the noisiest steps, where the
    layout is decided from the text alone. For v-prediction the weight is min(SNR, gamma) + 1 in x0 terms
    (at most gamma + 1 for clean timesteps, 1 at zero SNR), divided by SNR + 1 to apply it to the v loss.
    """
    alphas_cumprod = noise_schedule.alphas_cumprod.double()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if noise_schedule.config.prediction_type == "v_prediction":
        return ((torch.clamp(snr, max=_MIN_SNR_GAMMA) + 1) / (snr + 1)).float()
    return (torch.clamp(snr, max=_MIN_SNR_GAMMA) / snr).float()


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
            ema_param.lerp_(param, 1.0 - decay)


def train_shapes(out: Path, plan: TrainingPlan | None = None) -> Path:
    """Trains both stages into ``out``; the finished pipeline (fp16, no tokenizer files) goes to ``out/model``."""
    plan = plan or TrainingPlan()
    torch.set_num_threads(plan.threads)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    vae = train_vae(out, plan)
    vae.requires_grad_(False)
    tokenizer = build_clip_tokenizer()

    checkpoint_path = out / CHECKPOINT_DIR_NAME / "unet.pt"
    torch.manual_seed(plan.seed + 1)
    unet = architecture.new_unet()
    text_encoder = architecture.new_text_encoder()
    # Only the world's ~30 tokens are ever used: the rest of the table stays exactly zero (and compresses).
    table = text_encoder.get_input_embeddings().weight
    used = torch.tensor(world_token_ids(tokenizer))
    with torch.no_grad():
        kept = table[used].clone()
        table.zero_()
        table[used] = kept
    trainable = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=plan.unet_learning_rate, weight_decay=1e-2)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.unet_steps)
    ema_unet, ema_text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    noise_schedule = DDPMScheduler.from_config(architecture.SCHEDULER_CONFIG)
    loss_weight = _loss_weights(noise_schedule)
    step, elapsed_before = 0, 0.0
    if plan.init_from and not checkpoint_path.is_file():
        state = torch.load(plan.init_from, weights_only=False)
        for module in (unet, ema_unet):
            module.load_state_dict(state["ema_unet"])
        for module in (text_encoder, ema_text_encoder):
            module.load_state_dict(state["ema_text_encoder"])
        logger.info("starting from the EMA weights of %s (step %d)", plan.init_from, state["step"])
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        for module, key in (
            (unet, "unet"),
            (text_encoder, "text_encoder"),
            (ema_unet, "ema_unet"),
            (ema_text_encoder, "ema_text_encoder"),
            (optimizer, "optimizer"),
            (lr_schedule, "lr_schedule"),
        ):
            module.load_state_dict(state[key])
        step, elapsed_before = state["step"], state["elapsed_s"]
        logger.info("resuming the UNet and text encoder at step %d", step)
    stage_started = time.monotonic()
    last_save = stage_started
    rng = np.random.default_rng([plan.seed, 7, step])
    empty_ids = torch.from_numpy(tokenizer([""], padding="max_length", max_length=77, return_tensors="np")["input_ids"])
    batches = training_batches(batch_size=plan.unet_batch_size, seed=plan.seed + 1, start_step=step)
    curve_path = out / CURVE_FILE_NAME
    with tqdm(total=plan.unet_steps, initial=step, desc="unet+text") as progress:
        while step < plan.unet_steps:
            images, scenes = next(batches)
            captions = [scene.caption(int(rng.integers(len(CAPTION_TEMPLATES)))) for scene in scenes]
            ids = torch.from_numpy(
                tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="np")[
                    "input_ids"
                ]
            )
            drop = torch.from_numpy(rng.random(len(scenes)) < _EMPTY_CAPTION_FRACTION)
            ids[drop] = empty_ids
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16_autocast):
                latents = vae.encode(_to_tensor(images)).latent_dist.mean.float() * vae.config.scaling_factor
            generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
            noise = torch.randn(latents.shape, generator=generator)
            noise += plan.offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
            steps_total = noise_schedule.config.num_train_timesteps
            timesteps = torch.randint(0, steps_total, (len(scenes),), generator=generator)
            noisy_half = torch.rand(len(scenes), generator=generator) < plan.noisy_half_fraction
            timesteps[noisy_half] = torch.randint(steps_total // 2, steps_total, (len(scenes),), generator=generator)[
                noisy_half
            ]
            noisy = noise_schedule.add_noise(latents, noise, timesteps)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16_autocast):
                states = text_encoder(ids)[0]
                prediction = unet(noisy, timesteps, encoder_hidden_states=states).sample.float()
            if noise_schedule.config.prediction_type == "v_prediction":
                target = noise_schedule.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            per_item = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
            loss = (per_item * loss_weight[timesteps]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
            decay = min(plan.ema_decay, (1 + step) / (10 + step))
            _ema_update(ema_unet, unet, decay)
            _ema_update(ema_text_encoder, text_encoder, decay)
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
            elapsed_s = elapsed_before + time.monotonic() - stage_started
            if step % plan.eval_every_steps == 0 or step == plan.unet_steps:
                pipeline = build_pipeline(vae, ema_text_encoder, ema_unet, tokenizer)
                result = adherence(pipeline, count=plan.eval_prompts)
                new_file = not curve_path.is_file()
                with curve_path.open("a", newline="") as handle:
                    writer = csv.writer(handle)
                    if new_file:
                        writer.writerow(["step", "elapsed_s", "loss", *result])
                    writer.writerow([step, f"{elapsed_s:.0f}", f"{loss.item():.5f}", *result.values()])
                logger.info("step %d (%.0f s): %s", step, elapsed_s, result)
            if time.monotonic() - last_save > plan.checkpoint_every_s or step == plan.unet_steps:
                state = {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "ema_text_encoder": ema_text_encoder.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": lr_schedule.state_dict(),
                    "step": step,
                    "elapsed_s": elapsed_s,
                    "plan": asdict(plan),
                }
                _atomic_save(state, checkpoint_path)
                last_save = time.monotonic()
    model_dir = out / "model"
    save_weights(build_pipeline(vae, ema_text_encoder, ema_unet, tokenizer), model_dir)
    logger.info("trained in %.0f s; weights in %s", time.monotonic() - started, model_dir)
    return model_dir


def save_weights(pipeline: StableDiffusionPipeline, model_dir: Path) -> None:
    """Saves the pipeline in fp16 without tokenizer files (they are rebuilt from open_clip's vocabulary)."""
    pipeline = copy.deepcopy(pipeline)
    pipeline.to(torch.float16)
    pipeline.save_pretrained(model_dir, safe_serialization=True)
    save_scheduler_overrides(model_dir, architecture.SCHEDULER_OVERRIDES)
    for stale in (model_dir / "tokenizer").glob("*"):
        stale.unlink()
    (model_dir / "tokenizer").rmdir()
