"""Validation during training: image grids on fixed held-out rows, and a probe of the adapter's effect.

The probe answers "does the exemplar matter?": the mean absolute pixel difference between outputs
with the adapter at scale 1 and 0, and between the true exemplar pair and another row's pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..grids import framed, grid_image
from ..infer import EditInputs, edit, open_edit_inputs
from ..progress import console

NO_EFFECT = 2e-3  # mean |difference| in [0, 1] pixels below which the adapter is "doing nothing"


COLUMNS = ["A", "A'", "B", "output", "target"]
VAE_COLUMNS = ["input", "reconstruction"]


def grid(rows: list[list[np.ndarray]], columns: list[str], cell: int = 128) -> Image.Image:
    """Rows of float HxWx3 images in [0, 1] -> one PIL grid under a header of ``columns``, every image on a
    neutral frame in a ``cell`` x ``cell`` box (:func:`~relation_cli.grids.grid_image`)."""
    as_image = lambda a: Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return grid_image(columns, [[framed(as_image(a), cell) for a in row] for row in rows], cell)


def as_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    if size is not None and image.size != size:
        image = image.resize(size, Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def run_validation(pipe, cfg, rows, out_dir: Path, step: int) -> dict[str, float]:
    """Render A | A' | B | output | target for each row; return the probe metrics."""
    cfg = cfg.model_copy(deep=True)
    cfg.infer.steps = cfg.train.validation_steps
    # the prompt the model was trained with: the row's text, or none at all
    inputs = [open_edit_inputs(cfg, (r.cond1, r.cond2), r.source, r.text if cfg.train.use_text else "") for r in rows]
    grid_rows, mse = [], []
    for r, x in zip(rows, inputs):
        out = edit(pipe, x, cfg)
        size = (out.shape[1], out.shape[0])
        target = as_array(Image.open(r.target).convert("RGB"), size)
        mse.append(float(np.mean((out - target) ** 2)))
        grid_rows.append([as_array(x.exemplar_a), as_array(x.exemplar_b), as_array(x.query, size), out, target])
    out_dir.mkdir(parents=True, exist_ok=True)
    grid(grid_rows, COLUMNS).save(out_dir / f"step-{step:08d}.png")

    first, other = inputs[0], inputs[1 % len(inputs)]
    base = edit(pipe, first, cfg)
    off = cfg.model_copy(deep=True)
    off.adapter.scale = 0.0
    wrong = EditInputs(other.exemplar_a, other.exemplar_b, first.query, first.prompt)
    probe = {
        "val/mse": float(np.mean(mse)),
        "probe/scale1_vs_scale0": float(np.abs(base - edit(pipe, first, off)).mean()),
        "probe/true_vs_wrong_pair": float(np.abs(base - edit(pipe, wrong, cfg)).mean()) if len(inputs) > 1 else float("nan"),
    }
    if probe["probe/scale1_vs_scale0"] < NO_EFFECT:
        console.print(
            f"[bold red]WARNING: at step {step} the adapter has no visible effect "
            f"(mean |scale 1 - scale 0| = {probe['probe/scale1_vs_scale0']:.2e} < {NO_EFFECT}). "
            "The model is ignoring the exemplar pair.[/bold red]"
        )
    return probe


def run_vae_validation(pipe, rows, out_dir: Path, step: int) -> dict[str, float]:
    """Reconstruct the held-out targets through the VAE (posterior mean); grid of input | reconstruction."""
    import torch

    from .data import fit_size, to_pixels

    multiple = pipe.vae_scale_factor * 2
    grid_rows, errors = [], []
    for r in rows:
        image = Image.open(r.target).convert("RGB")
        x = to_pixels(image, fit_size(*image.size, resolution=max(image.size), multiple=multiple))[None]
        with torch.no_grad():
            z = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean
            recon = pipe.vae.decode(z).sample.float().cpu()
        a, b = ((t[0].permute(1, 2, 0).numpy() + 1) / 2 for t in (x, recon.clamp(-1, 1)))
        errors.append(float(np.mean((a - b) ** 2)))
        grid_rows.append([a, b])
    out_dir.mkdir(parents=True, exist_ok=True)
    grid(grid_rows, VAE_COLUMNS).save(out_dir / f"step-{step:08d}.png")
    return {"val/recon_mse": float(np.mean(errors))}
