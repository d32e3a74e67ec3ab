"""The one module that touches private helpers of diffusers' Flux code.

If a diffusers release renames one of these, this is the only file to change.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_flux import _get_qkv_projections
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

__all__ = ["qkv_projections", "pack_latents", "unpack_latents", "latent_ids"]


def qkv_projections(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None):
    """``(q, k, v, encoder_q, encoder_k, encoder_v)`` of a FluxAttention, fused projections included."""
    return _get_qkv_projections(attn, hidden_states, encoder_hidden_states)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` latents -> ``(B, H/2 * W/2, 4C)`` tokens (2x2 patches)."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for an image of ``height x width`` pixels."""
    return FluxPipeline._unpack_latents(tokens, height, width, vae_scale_factor)


def latent_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(rows * cols, 3)`` position ids ``(0, row, col)`` of a packed latent grid."""
    return FluxPipeline._prepare_latent_image_ids(1, rows, cols, device, dtype)
