"""A cheap preview of an image while it is denoised: a linear map of the latents to RGB, no VAE call.

The map is fitted once per model at export (``sdtriton.export.preview_fit``) by least squares of the
decoded images, area-downsampled to latent resolution, on the latent channels plus a bias; it is stored
in :class:`~sdtriton.pipeline_config.PipelineConfig` as ``latent_rgb_projection`` and applied here to
the latents as the denoising loop holds them (before division by the VAE scaling factor).
"""

from __future__ import annotations

import numpy as np

from sdtriton.pipeline_config import PREVIEW_RGB_CHANNELS as RGB_CHANNELS

UINT8_MAX = 255


def _check_ndim(name: str, array: np.ndarray, ndim: int, layout: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(array.shape)}")


def _check_finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")


def area_downsample_rgb(images: np.ndarray, *, height: int, width: int) -> np.ndarray:
    """Decoder images to RGB in 0..1 at latent resolution, each pixel the mean of its f x f block.

    Args:
        images: [N, 3, H, W] in -1..1, as the VAE decoder outputs them; H and W must be the same
            integer multiple f of ``height`` and ``width``.
        height: Latent height h.
        width: Latent width w.

    Returns:
        [N, h, w, 3] float32 in 0..1. Pixels are clipped to 0..1 before averaging, as the final image is.

    Raises:
        ValueError: If the images are not [N, 3, H, W] with H = f*h and W = f*w for one integer f >= 1.
    """
    images = np.asarray(images)
    _check_ndim("images", images, 4, "[N, 3, H, W]")
    n, channels, image_height, image_width = images.shape
    if channels != RGB_CHANNELS:
        raise ValueError(f"images must have {RGB_CHANNELS} channels (RGB), got {channels} in shape {images.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"latent size must be positive, got {height}x{width}")
    if image_height % height or image_width % width or image_height // height != image_width // width:
        raise ValueError(
            f"image size {image_height}x{image_width} is not one integer multiple of the latent size {height}x{width}"
        )
    factor = image_height // height
    rgb = np.clip((images.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
    blocks = rgb.reshape(n, RGB_CHANNELS, height, factor, width, factor).mean(axis=(3, 5))
    return blocks.transpose(0, 2, 3, 1).astype(np.float32)


def fit_latent_rgb_projection(latents: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Least-squares linear map (with bias) from latent channels to preview RGB in 0..1.

    Args:
        latents: [N, C, h, w] final latents as the denoising loop holds them (not divided by the VAE
            scaling factor).
        images: [N, 3, H, W] the same latents decoded, in -1..1, with H = f*h and W = f*w.

    Returns:
        [C + 1, 3] float32: rows 0..C-1 weigh the latent channels, the last row is the bias.

    Raises:
        ValueError: If a shape does not match, the values are not finite, or there are fewer latent pixels
            than unknowns per colour (C + 1).
    """
    latents = np.asarray(latents)
    images = np.asarray(images)
    _check_ndim("latents", latents, 4, "[N, C, h, w]")
    _check_ndim("images", images, 4, "[N, 3, H, W]")
    n, channels, height, width = latents.shape
    if images.shape[0] != n:
        raise ValueError(f"latents and images must hold the same number of samples, got {n} and {images.shape[0]}")
    if channels < 1:
        raise ValueError(f"latents must have at least one channel, got shape {latents.shape}")
    if n * height * width < channels + 1:
        raise ValueError(
            f"{n * height * width} latent pixels cannot determine {channels + 1} unknowns per colour; give more samples"
        )
    _check_finite("latents", latents)
    _check_finite("images", images)
    target = area_downsample_rgb(images, height=height, width=width).reshape(-1, RGB_CHANNELS).astype(np.float64)
    design = latents.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, channels)
    design = np.concatenate([design, np.ones((design.shape[0], 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return solution.astype(np.float32)


def _check_projection(projection: np.ndarray, channels: int) -> np.ndarray:
    projection = np.asarray(projection, dtype=np.float32)
    if projection.shape != (channels + 1, RGB_CHANNELS):
        raise ValueError(
            f"projection must be [C + 1, 3] = [{channels + 1}, {RGB_CHANNELS}] for {channels} latent channels, "
            f"got shape {projection.shape}"
        )
    return projection


def latents_to_preview(latents: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The preview of one item's latents.

    Args:
        latents: [C, h, w] as the denoising loop holds them.
        projection: [C + 1, 3] from :func:`fit_latent_rgb_projection`.

    Returns:
        [h, w, 3] uint8 RGB.

    Raises:
        ValueError: If the latents are not 3-D or the projection does not fit their channel count.
    """
    latents = np.asarray(latents)
    _check_ndim("latents", latents, 3, "[C, h, w]")
    projection = _check_projection(projection, latents.shape[0])
    rgb = np.tensordot(latents.astype(np.float32), projection[:-1], axes=([0], [0])) + projection[-1]
    return np.rint(np.clip(rgb, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)


def preview_mean_abs_error(latents: np.ndarray, images: np.ndarray, projection: np.ndarray) -> float:
    """Mean absolute error, in 0..255 units, of the previews against the area-downsampled decoded images.

    Args:
        latents: [N, C, h, w] as the denoising loop holds them.
        images: [N, 3, H, W] the same latents decoded, in -1..1.
        projection: [C + 1, 3] from :func:`fit_latent_rgb_projection`.

    Returns:
        The mean of |preview - image| over every item, pixel and colour.

    Raises:
        ValueError: If the shapes do not match.
    """
    latents = np.asarray(latents)
    images = np.asarray(images)
    _check_ndim("latents", latents, 4, "[N, C, h, w]")
    _check_ndim("images", images, 4, "[N, 3, H, W]")
    n, _, height, width = latents.shape
    if images.shape[0] != n:
        raise ValueError(f"latents and images must hold the same number of samples, got {n} and {images.shape[0]}")
    target = area_downsample_rgb(images, height=height, width=width) * UINT8_MAX
    previews = np.stack([latents_to_preview(item, projection) for item in latents]).astype(np.float32)
    return float(np.abs(previews - target).mean())
