"""Tiled VAE decoding, exactly as diffusers' ``AutoencoderKL.tiled_decode`` computes it (``vae.enable_tiling()``).

The latents are cut into overlapping tiles of :attr:`~sdtriton.pipeline_config.VaeTiling.latent_size` a side, a
tile starting every :attr:`~sdtriton.pipeline_config.VaeTiling.latent_stride` latents (those at the right and
bottom edges are cut short by the image, as diffusers' slices are); each tile is decoded alone, so the VAE decoder
only ever holds one tile's activations; the decoded tiles are blended where they overlap with diffusers' own
``blend_v``/``blend_h`` and cropped into the image. Cutting (:func:`cut_tiles`) and joining (:func:`join_tiles`)
are apart so that the engine can decode the tiles of many images in shared calls between the two.

A tiled encode (the VAE encoder, img2img) is the same cut/blend with the encoder's sizes swapped (diffusers'
``_tiled_encode``: pixel tiles of ``sample_size`` cut every ``sample_size * 0.75``, latent tiles blended over
``latent_size / 4``); it belongs beside these two once that encoder is served.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdtriton.pipeline_config import PipelineConfig, VaeTiling
from sdtriton.serving.validation import GenerationParams

# Rows of tiles, each row's tiles left to right: [B, C, h, w] latents when cut, [B, 3, H, W] once decoded.
TileGrid = list[list[torch.Tensor]]


def tiling_of(params: GenerationParams, config: PipelineConfig, latents: torch.Tensor) -> VaeTiling | None:
    """The tiling an image's ``[B, C, h, w]`` latents are decoded with; None: in one call (tiling off, or the
    latents fit one tile, where diffusers decodes them whole even with tiling on)."""
    tiling = config.vae_tiling
    if tiling is None or not params.vae_tiled:
        return None
    latent_height, latent_width = latents.shape[-2:]
    return tiling if tiling.splits(latent_height=latent_height, latent_width=latent_width) else None


def cut_tiles(latents: torch.Tensor, tiling: VaeTiling | None) -> TileGrid:
    """The latents as ``tiled_decode`` slices them, row by row; without a tiling, one tile: the latents."""
    if tiling is None:
        return [[latents]]
    size, stride = tiling.latent_size, tiling.latent_stride
    return [
        [latents[:, :, i : i + size, j : j + size] for j in range(0, latents.shape[3], stride)]
        for i in range(0, latents.shape[2], stride)
    ]


def join_tiles(decoded: TileGrid, tiling: VaeTiling | None) -> torch.Tensor:
    """The image of its decoded tiles (changed in place, as diffusers changes its own): each tile blended with the
    one above and the one to its left, cropped to ``row_limit``, then the rows concatenated."""
    if tiling is None:
        (image,), *_ = decoded
        return image
    # Called, not copied, so the blend is diffusers' own; they read no attribute of the autoencoder. Imported here:
    # the models package costs a second at import and is needed only when a tile is joined.
    from diffusers import AutoencoderKL

    blend, limit = tiling.blend_extent, tiling.row_limit
    result_rows = []
    for i, row in enumerate(decoded):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = AutoencoderKL.blend_v(None, decoded[i - 1][j], tile, blend)
            if j > 0:
                tile = AutoencoderKL.blend_h(None, row[j - 1], tile, blend)
            result_row.append(tile[:, :, :limit, :limit])
        result_rows.append(torch.cat(result_row, dim=3))
    return torch.cat(result_rows, dim=2)


def decode_in_tiles(
    latents: torch.Tensor, tiling: VaeTiling | None, decode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``[B, C, h, w]`` latents -> ``[B, 3, H, W]``, one ``decode`` call a tile (the plain loop; the engine shares
    calls between images)."""
    return join_tiles([[decode(tile) for tile in row] for row in cut_tiles(latents, tiling)], tiling)
