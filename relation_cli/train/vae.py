"""``train.mode: vae``: pre-train the VAE of a small model by reconstruction, through the shared recipe.

Only the VAE trains; the images are the targets and queries of the training rows (no exemplars).
Loss: MSE of the reconstruction (pixels in [-1, 1]) + ``kl_weight`` x KL of the posterior. The export
is the whole FLUX folder with the trained VAE, its latent statistics set from the training images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..config import RelationConfig
from ..progress import console
from .job import frozen_parts, save_base

if TYPE_CHECKING:
    from .recipe import Run


class VaeJob:
    """The VAE pre-training job: model, loss, validation and export for :mod:`relation_cli.train.recipe`."""

    exemplars = False  # the dataset decodes only the query and target images

    def build(self, cfg: RelationConfig, dtype: torch.dtype):
        """The pipeline with everything frozen but the VAE; returns ``(pipe, sources)``."""
        from ..model import load_base, resolve_sources

        sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False)
        pipe = load_base(sources, dtype, cfg.model.local_files_only, cfg.model.query_ids)
        for module in frozen_parts(pipe):
            module.requires_grad_(False)
        pipe.vae.requires_grad_(True)
        return pipe, sources

    def model(self, pipe, cfg: RelationConfig) -> VaeTrainModel:
        return VaeTrainModel(pipe.vae)

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        """Reconstruction MSE + ``kl_weight`` x KL, on the targets and queries of a batch (scalar, fp32)."""
        pixels = torch.cat([batch["target"], batch["source"]]).to(run.accelerator.device)  # (2B, 3, H, W)
        vae, f = run.pipe.vae, run.pipe.vae_scale_factor
        shape = (pixels.shape[0], vae.config.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f)
        eps = torch.randn(shape, generator=run.generator).to(pixels.device)  # the posterior sample's noise
        recon, kl = run.model(pixels, eps)
        return torch.mean((recon.float() - pixels.float()) ** 2) + run.cfg.train.kl_weight * kl

    def validate(self, run: Run) -> dict[str, float]:
        from .validate import run_vae_validation

        return run_vae_validation(run.pipe, run.validation_rows, run.out / "validation", run.step)

    def export(self, run: Run) -> dict:
        """``base/``: the FLUX folder with the trained VAE; returns the ``run:`` entries it made."""
        set_latent_statistics(run)
        save_base(run, run.out / "base")
        return {"base": "base"}


class VaeTrainModel(nn.Module):
    """What trains in ``train.mode: vae``: the VAE, reconstructing images."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` in [-1, 1] and posterior noise -> (reconstruction, mean KL per sample)."""
        posterior = self.vae.encode(pixels).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        return recon, posterior.kl().mean() / eps[0].numel()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items()}


@torch.no_grad()
def set_latent_statistics(run: Run, images: int = 512) -> None:
    """Set the VAE's ``shift_factor`` / ``scaling_factor`` so that its latents of the training images have
    mean 0 and standard deviation 1, as FLUX's own VAE config does for its data: the flow then
    starts from noise of the same scale as the latents it has to reach."""
    vae, dataset = run.pipe.vae, run.dataset
    step = max(1, len(dataset) // images)
    means = []
    for i in range(0, len(dataset), step)[:images]:
        item = dataset[(i, 0, 0)]
        x = torch.stack([item.source, item.target]).to(vae.device, vae.dtype)
        means.append(vae.encode(x).latent_dist.mean.float().flatten())
    z = torch.cat(means)
    shift, scale = z.mean().item(), 1.0 / max(z.std().item(), 1e-6)
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(scale, 4))
    console.print(f"VAE latent statistics: shift_factor {shift:.4f}, scaling_factor {scale:.4f}")

