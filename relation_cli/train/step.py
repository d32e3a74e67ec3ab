"""One training step: the loss of a micro-batch and the optimizer step around it.

The RelationAdapter loss (SPEC 2.4): target and query images go through the frozen VAE (posterior
sample), the exemplar pair through SigLIP and the adapter's projection (zeroed for a sample with
probability ``exemplar_dropout``); ``x_s = (1 - s) x0 + s * noise``; the transformer sees
``[x_s ; clean query]`` with cloned ids and predicts ``noise - x0`` on the target tokens (MSE).
Every random draw comes from ``run.generator``, so a resumed run repeats the interrupted one exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import RelationConfig

if TYPE_CHECKING:
    from .recipe import Run


# cuDNN's fused attention failed in the backward pass of every full-size FLUX.1-dev training step on an
# H200 (torch 2.11+cu130: an illegal memory access; under CUDA_LAUNCH_BLOCKING=1 "mha_graph.execute(...)
# .is_good()"; benchmarks/results/gpu_check_h200.json), while inference through it ran. Training therefore
# lets torch.nn.functional.scaled_dot_product_attention choose among the other fused kernels.
TRAIN_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def optimizer_step(run: Run, batches: Iterator[dict]) -> float:
    """``train.gradient_accumulation`` micro-batches, one optimizer and schedule step; returns the mean loss
    over micro-batches and processes (a plain float, possibly non-finite: the caller decides)."""
    t, acc = run.cfg.train, run.accelerator
    losses = []
    for _ in range(t.gradient_accumulation):
        batch = next(batches)
        with acc.accumulate(run.model), sdpa_kernel(TRAIN_ATTENTION):
            loss = loss_on(run, batch)
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm > 0:
                acc.clip_grad_norm_(run.model.parameters(), t.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        run.plan.load_state(batch["plan"])  # the data position of what was actually trained on
    return acc.reduce(torch.stack(losses).mean(), reduction="mean").item()


def loss_on(run: Run, batch: dict) -> torch.Tensor:
    """The loss of one micro-batch, as the run's job defines it (:func:`flow_loss`, or the VAE's)."""
    return run.job.loss(run, batch)


def flow_loss(run: Run, batch: dict) -> torch.Tensor:
    """Rectified-flow MSE on the target tokens of one micro-batch (scalar, fp32)."""
    cfg, enc, gen = run.cfg, run.encoders, run.generator
    device, dtype = run.accelerator.device, enc.dtype
    b = len(batch["index"])
    x0 = enc.sample_latents(enc.latent_moments(batch["target"]), gen)  # (B, N, 4c)
    query = enc.sample_latents(enc.latent_moments(batch["source"]), gen)
    texts = batch["text"] if cfg.train.use_text else [""] * b
    prompt_embeds, pooled, text_ids = enc.text(texts, cfg.infer.max_sequence_length)  # (B, L, C), (B, P) | None, (L, 3|4)
    noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
    sigma = sample_sigmas(cfg, b, gen).to(device)  # (B,) noise level s in [0, 1]
    keep = (torch.rand(b, generator=gen) >= cfg.train.exemplar_dropout).to(device)  # (B,) exemplar dropout
    s = sigma.view(-1, 1, 1).to(dtype)
    noisy = (1 - s) * x0 + s * noise
    h, w = batch["target"].shape[-2:]
    grid = (h // run.pipe.vae_scale_factor // 2, w // run.pipe.vae_scale_factor // 2)
    ids = run.pipe.relation_ids(*grid, device, dtype)  # (2N, 3) or (2N, 4) on FLUX.2: target's, then the query's
    guidance = None
    if run.pipe.transformer.config.guidance_embeds:
        guidance = torch.full((b,), cfg.train.guidance, device=device, dtype=torch.float32)
    exemplars = {}
    if cfg.train.train_image_encoder:
        exemplars["exemplar_pixels"] = batch["exemplars"].to(device)
    else:
        exemplars["exemplar_embeds"] = enc.exemplar_embeds(batch["exemplars"])
    pred = run.model(
        noisy, query, sigma.to(dtype), guidance, prompt_embeds, pooled, text_ids, ids, keep,
        **exemplars,
    )  # fmt: skip
    return torch.mean((pred.float() - (noise - x0).float()) ** 2)


def sample_sigmas(cfg: RelationConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``(batch,)`` noise levels: uniform or logit-normal (diffusers' sampler), then the time shift
    ``shift*s / (1 + (shift-1)*s)`` (SD3's shift, Esser et al. 2024)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = cfg.train
    scheme = "logit_normal" if t.timestep_sampling == "logit_normal" else "none"
    u = compute_density_for_timestep_sampling(scheme, batch, t.logit_mean, t.logit_std, generator=generator)
    return t.timestep_shift * u / (1 + (t.timestep_shift - 1) * u)
