"""The training loop and the export of the trained weights."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.progress import TextColumn

from ..config import RelationConfig, save_config
from ..errors import RelationError
from ..fs import atomic_dir
from ..progress import console, make_progress
from . import checkpoint as ckpt
from .data import collate
from .recipe import LORA_NAME, Run, loss_on, save_checkpoint, setup, unwrapped


def train(cfg: RelationConfig, resume: bool = False) -> Path:
    """Train until ``train.steps``; returns the folder holding the exported weights."""
    run = setup(cfg, resume)
    try:
        loop(run)
        return export(run)
    finally:
        run.accelerator.end_training()


def loop(run: Run) -> None:
    t, acc = run.cfg.train, run.accelerator
    loader = torch.utils.data.DataLoader(
        run.dataset, batch_sampler=run.plan, collate_fn=collate, num_workers=t.num_workers
    )
    batches = iter(loader)
    run.model.train()
    progress = make_progress(TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} {task.fields[speed]}"))
    progress.disable = progress.disable or not acc.is_main_process
    last_saved = run.step
    with progress:
        task = progress.add_task("training", total=t.steps, completed=run.step, loss=float("nan"), lr=0.0, speed="")
        started, start_step = time.perf_counter(), run.step
        while run.step < t.steps:
            losses = []
            for _ in range(t.gradient_accumulation):
                batch = next(batches)
                with acc.accumulate(run.model):
                    loss = loss_on(run, batch)
                    acc.backward(loss)
                    if acc.sync_gradients and t.max_grad_norm > 0:
                        acc.clip_grad_norm_(run.model.parameters(), t.max_grad_norm)
                    run.optimizer.step()
                    run.scheduler.step()
                    run.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                run.plan.load_state(batch["plan"])  # the data position of what was actually trained on
            value = acc.reduce(torch.stack(losses).mean(), reduction="mean").item()
            if not math.isfinite(value):
                good = ckpt.latest_valid(run.out / "checkpoints", warn=lambda m: None)
                where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
                raise RelationError(f"loss became {value} at step {run.step + 1}; training stopped, {where}")
            run.step += 1
            if run.ema is not None:
                run.ema.step([p for p in unwrapped(run).parameters() if p.requires_grad])
            lr = run.scheduler.get_last_lr()[0]
            rate = (run.step - start_step) / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, loss=value, lr=lr, speed=f"{rate:.2f} it/s")
            if run.step % t.log_every == 0 or run.step == t.steps:
                acc.log({"train/loss": value, "train/lr": lr}, step=run.step)
                if acc.is_main_process and not console.is_terminal:  # logs of nohup / CI / cluster jobs
                    eta = (t.steps - run.step) / max(rate, 1e-9)
                    console.print(f"step {run.step}/{t.steps} loss {value:.4f} lr {lr:.2e} {rate:.2f} it/s eta {eta / 60:.1f} min")
            if run.step % t.checkpoint_every == 0 and run.step < t.steps:
                save_checkpoint(run)
                last_saved = run.step
            if t.validate_every and run.step % t.validate_every == 0 and run.step < t.steps:
                validate(run)
    if last_saved != run.step:
        save_checkpoint(run)
    validate(run)


def validate(run: Run) -> None:
    """Grids + probe on the main process; the other processes wait."""
    acc = run.accelerator
    if acc.is_main_process and run.validation_rows:
        from .validate import run_validation, run_vae_validation

        model = unwrapped(run)
        model.eval()
        with _ema_weights(run):
            if run.cfg.train.mode == "vae":
                metrics = run_vae_validation(run.pipe, run.validation_rows, run.out / "validation", run.step)
            else:
                metrics = run_validation(run.pipe, run.cfg, run.validation_rows, run.out / "validation", run.step)
        model.train()
        acc.log(metrics, step=run.step)
        console.print(f"step {run.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    acc.wait_for_everyone()


class _ema_weights:
    """Swap the EMA weights in for the duration of a block (no-op without EMA)."""

    def __init__(self, run: Run):
        self.run = run
        self.params = [p for p in unwrapped(run).parameters() if p.requires_grad]

    def __enter__(self):
        if self.run.ema is not None:
            self.run.ema.store(self.params)
            self.run.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.run.ema is not None:
            self.run.ema.restore(self.params)
        return False


def export(run: Run) -> Path:
    """Write the trained weights in formats ``relation infer`` and diffusers read directly.

    lora: ``adapter/`` + ``lora/pytorch_lora_weights.safetensors``; full: ``adapter/`` + ``base/`` (a
    whole FLUX folder); adapter: ``adapter/``; ``image_encoder/`` when it was trained.
    """
    acc, cfg, out = run.accelerator, run.cfg, run.out
    acc.wait_for_everyone()
    if acc.is_main_process:
        model = unwrapped(run)
        with _ema_weights(run):
            if cfg.train.mode != "vae":
                with atomic_dir(out / "adapter", replace=True) as tmp:
                    model.adapter.save_pretrained(tmp)
            if cfg.train.mode == "lora":
                from diffusers import FluxPipeline
                from peft.utils import get_peft_model_state_dict

                with atomic_dir(out / "lora", replace=True) as tmp:
                    layers = get_peft_model_state_dict(model.transformer, adapter_name=LORA_NAME)
                    FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=layers)
            elif cfg.train.mode in ("full", "vae"):
                if cfg.train.mode == "vae":
                    set_latent_statistics(run)
                save_base(run, out / "base")
            if cfg.train.train_image_encoder:
                with atomic_dir(out / "image_encoder", replace=True) as tmp:
                    run.pipe.image_encoder.save_pretrained(tmp)
                    run.pipe.feature_extractor.save_pretrained(tmp)
        save_config(cfg, out / "config.yaml")
    acc.wait_for_everyone()
    return out


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


def save_base(run: Run, path: Path) -> None:
    """A complete FLUX folder with the trained transformer (adapter processors detached for the save); in
    FLUX.1 Kontext's layout when it trained with Kontext's query ids, so ``model.query_ids: auto`` finds them."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    p = run.pipe
    layout = FluxKontextPipeline if p.query_ids == "kontext" else FluxPipeline
    detached = p.relation_adapter.detached(p.transformer) if p.relation_adapter is not None else nullcontext()
    with atomic_dir(path, replace=True) as tmp, detached:
        layout(
            scheduler=p.scheduler, vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer,
            text_encoder_2=p.text_encoder_2, tokenizer_2=p.tokenizer_2, transformer=p.transformer,
        ).save_pretrained(tmp)  # fmt: skip
