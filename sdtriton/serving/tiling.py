"""Tiled VAE decoding and encoding, exactly as diffusers' ``AutoencoderKL.tiled_decode`` and ``_tiled_encode``
compute them (``vae.enable_tiling()``).

Decoding: the latents are cut into overlapping tiles of :attr:`~sdtriton.pipeline_config.VaeTiling.latent_size` a
side, a tile starting every ``latent_size * (1 - overlap_factor)`` latents (those at the right and bottom edges are
cut short by the image, as diffusers' slices are); each tile is decoded alone, so the VAE decoder only ever holds one
tile's activations; the decoded tiles are blended where they overlap (``sample_size * overlap_factor`` pixels) with
diffusers' own ``blend_v``/``blend_h`` and cropped into the image. Encoding (image-to-image's input image) is the same
with the sizes swapped: pixel tiles of ``sample_size``, their latent moments (mean and log-variance, as diffusers
blends them) blended and cropped in latents (:class:`_Cut` holds both directions). Cutting
(:func:`cut_tiles`) and joining (:func:`join_tiles`, :func:`join_moments`) are apart so that the engine can run the
tiles of many images in shared calls between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sdtriton.pipeline_config import PipelineConfig, VaeTiling
from sdtriton.serving.validation import GenerationParams

# Rows of tiles, each row's tiles left to right: the network's inputs when cut, its outputs once it has run.
TileGrid = list[list[torch.Tensor]]
# The VAE encoder's answer for one image or tile: (mean, std), [1, C, h, w] each.
Moments = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _Cut:
    """One direction's tiles: a tile's input side, the stride between tiles, and its output's blend and crop."""

    size: int
    stride: int
    blend_extent: int
    row_limit: int

    @classmethod
    def of(cls, tiling: VaeTiling, *, encode: bool) -> _Cut:
        """``tiled_decode``'s (latent tiles into pixels) or ``_tiled_encode``'s (pixel tiles into latents): both step
        by the input tile's side less its overlap, and blend and crop by the output tile's."""
        size, output_size = (
            (tiling.sample_size, tiling.latent_size) if encode else (tiling.latent_size, tiling.sample_size)
        )
        blend_extent = int(output_size * tiling.overlap_factor)
        return cls(size, int(size * (1 - tiling.overlap_factor)), blend_extent, output_size - blend_extent)


def tiling_of(
    params: GenerationParams, config: PipelineConfig, tensor: torch.Tensor, *, encode: bool = False
) -> VaeTiling | None:
    """The tiling an image's ``[B, C, h, w]`` latents are decoded with (``encode``: its ``[B, 3, H, W]`` input image
    encoded with); None: in one call (tiling off, or the tensor fits one tile, where diffusers' ``_decode`` and
    ``_encode`` run it whole even with tiling on)."""
    tiling = config.vae_tiling
    if tiling is None or not params.vae_tiled:
        return None
    size = _Cut.of(tiling, encode=encode).size
    return tiling if tensor.shape[-2] > size or tensor.shape[-1] > size else None


def cut_tiles(tensor: torch.Tensor, tiling: VaeTiling | None, *, encode: bool = False) -> TileGrid:
    """The latents as ``tiled_decode`` slices them (``encode``: the image as ``_tiled_encode`` does), row by row;
    without a tiling, one tile: the tensor."""
    if tiling is None:
        return [[tensor]]
    cut = _Cut.of(tiling, encode=encode)
    return [
        [tensor[:, :, i : i + cut.size, j : j + cut.size] for j in range(0, tensor.shape[3], cut.stride)]
        for i in range(0, tensor.shape[2], cut.stride)
    ]


def join_tiles(outputs: TileGrid, tiling: VaeTiling | None, *, encode: bool = False) -> torch.Tensor:
    """The whole of the tiles' outputs (changed in place, as diffusers changes its own): each tile blended with the
    one above and the one to its left, cropped to the row limit, then the rows concatenated."""
    if tiling is None:
        (whole,), *_ = outputs
        return whole
    # Called, not copied, so the blend is diffusers' own; they read no attribute of the autoencoder. Imported here:
    # the models package costs a second at import and is needed only when a tile is joined.
    from diffusers import AutoencoderKL

    cut = _Cut.of(tiling, encode=encode)
    result_rows = []
    for i, row in enumerate(outputs):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = AutoencoderKL.blend_v(None, outputs[i - 1][j], tile, cut.blend_extent)
            if j > 0:
                tile = AutoencoderKL.blend_h(None, row[j - 1], tile, cut.blend_extent)
            result_row.append(tile[:, :, : cut.row_limit, : cut.row_limit])
        result_rows.append(torch.cat(result_row, dim=3))
    return torch.cat(result_rows, dim=2)


def join_moments(encoded: list[list[Moments]], tiling: VaeTiling | None) -> Moments:
    """The image's latent distribution of its encoded tiles' (mean, std). diffusers blends the encoder's moments,
    mean and log-variance, and clamps the log-variance to [-30, 20] after; ours answers ``std = exp(0.5 *
    clamp(logvar))``, so each tile's log-variance is ``2 log std`` (to a float's rounding), clamped before the blend.
    The two agree wherever the encoder's log-variance lies inside the clamp's range (a blend of values inside it stays
    inside); a tile's outside it would blend its clamped value."""
    if tiling is None:
        (whole,), *_ = encoded
        return whole
    moments = [[torch.cat([mean, 2 * torch.log(std)], dim=1) for mean, std in row] for row in encoded]
    mean, logvar = torch.chunk(join_tiles(moments, tiling, encode=True), 2, dim=1)
    return mean, torch.exp(0.5 * logvar)


def decode_in_tiles(
    latents: torch.Tensor, tiling: VaeTiling | None, decode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``[B, C, h, w]`` latents -> ``[B, 3, H, W]``, one ``decode`` call a tile (the plain loop; the engine shares
    calls between images)."""
    return join_tiles([[decode(tile) for tile in row] for row in cut_tiles(latents, tiling)], tiling)


def encode_in_tiles(
    image: torch.Tensor, tiling: VaeTiling | None, encode: Callable[[torch.Tensor], Moments]
) -> Moments:
    """``[1, 3, H, W]`` image -> its latent distribution, one ``encode`` call a tile (the plain loop)."""
    return join_moments([[encode(tile) for tile in row] for row in cut_tiles(image, tiling, encode=True)], tiling)
