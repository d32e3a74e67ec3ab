"""``relation infer``: one edit, or one edit per row of a run-ready jsonl file.

Everything cheap is checked (images decode, sizes, output paths) before the model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import RelationConfig, save_config
from .errors import RelationError
from .fs import check_writable
from .images import check_output_path, open_image, output_size, save_output
from .rows import parse_rows

DEFAULT_OUTPUT_DIR = Path("outputs")


@dataclass(frozen=True)
class EditInputs:
    exemplar_a: Image.Image
    exemplar_b: Image.Image
    query: Image.Image
    prompt: str


def open_edit_inputs(cfg: RelationConfig, exemplars: tuple[Path, Path], query: Path, prompt: str, where: str = "") -> EditInputs:
    limit = cfg.data.max_image_pixels
    a = open_image(exemplars[0], f"{where}exemplar A", limit)
    b = open_image(exemplars[1], f"{where}exemplar A'", limit)
    q = open_image(query, f"{where}query", limit)
    return EditInputs(a, b, q, prompt)


class PromptCache:
    """Text encodings by prompt: a batch of rows sharing an instruction encodes it once."""

    def __init__(self, pipe, max_sequence_length: int, size: int = 256):
        self.pipe, self.max_sequence_length, self.size, self.store = pipe, max_sequence_length, size, {}

    def __call__(self, prompt: str):
        if prompt not in self.store:
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=[prompt], prompt_2=None, device=self.pipe._execution_device,
                max_sequence_length=self.max_sequence_length,
            )  # fmt: skip
            self.store[prompt] = (embeds, pooled)
        return self.store[prompt]


def edit(pipe, inputs: EditInputs, cfg: RelationConfig, on_step=None, prompts: PromptCache | None = None) -> np.ndarray:
    """Run the pipeline once; returns float32 ``HxWx3`` in [0, 1] at the query's size floored to 16."""
    import torch

    width, height = output_size(*inputs.query.size, multiple=pipe.vae_scale_factor * 2)
    callback = None
    if on_step is not None:
        def callback(_pipe, _i, _t, _kwargs):
            on_step()
            return {}
    text = {"prompt": inputs.prompt}
    with torch.inference_mode():
        if prompts is not None:
            embeds, pooled = prompts(inputs.prompt)
            text = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        result = pipe(
            image=inputs.query,
            exemplars=(inputs.exemplar_a, inputs.exemplar_b),
            **text,
            height=height,
            width=width,
            num_inference_steps=cfg.infer.steps,
            guidance_scale=cfg.infer.guidance,
            relation_scale=cfg.adapter.scale,
            generator=torch.Generator("cpu").manual_seed(cfg.infer.seed),
            max_sequence_length=cfg.infer.max_sequence_length,
            output_type="np",
            callback_on_step_end=callback,
        )
    return result.images[0].astype(np.float32)


def default_output(query: Path) -> Path:
    """``outputs/<query>-edited.png``, numbered so an earlier result is never replaced."""
    candidate = DEFAULT_OUTPUT_DIR / f"{query.stem}-edited.png"
    n = 1
    while candidate.exists():
        candidate = DEFAULT_OUTPUT_DIR / f"{query.stem}-edited-{n}.png"
        n += 1
    return candidate


def config_path_for(output: Path) -> Path:
    """Where the resolved config of one output goes: ``edited.png`` -> ``edited.png.yaml``."""
    return output.with_name(output.name + ".yaml")


def infer_single(cfg: RelationConfig, exemplars: tuple[Path, Path], query: Path, output: Path | None) -> Path:
    output = check_output_path(output or default_output(query), cfg.infer.overwrite)
    inputs = open_edit_inputs(cfg, exemplars, query, cfg.infer.prompt)
    from .model import load_pipeline  # torch and diffusers load only after the cheap checks
    from .progress import progress_bar

    pipe = load_pipeline(cfg)
    with progress_bar("denoising", cfg.infer.steps) as advance:
        image = edit(pipe, inputs, cfg, on_step=advance)
    save_output(image, output)
    save_config(cfg, config_path_for(output))
    return output


@dataclass
class BatchSummary:
    written: int
    skipped: int
    output_dir: Path


def infer_batch(cfg: RelationConfig, input_file: Path, output_dir: Path, suffix: str = ".png") -> BatchSummary:
    """One output per row, named by row number; rows whose output exists are skipped (resumable)."""
    from .model import load_pipeline
    from .progress import progress_bar

    if suffix not in (".png", ".jpg", ".webp", ".npy"):
        raise RelationError(f"batch output format '{suffix}': use .png, .jpg, .webp or .npy")
    rows = parse_rows(input_file)
    if output_dir.exists() and not output_dir.is_dir():
        raise RelationError(f"output dir '{output_dir}': exists and is not a folder")
    check_writable(output_dir, "output dir")
    todo = [r for r in rows if not (output_dir / f"{r.index:06d}{suffix}").exists()]

    def row_inputs(r):
        return open_edit_inputs(cfg, (r.cond1, r.cond2), r.source, r.text, f"row {r.index + 1} ")

    for r in todo:  # decode everything once before loading the model; images are not kept in memory
        row_inputs(r)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output_dir / "config.yaml")
    if todo:
        pipe = load_pipeline(cfg)
        prompts = PromptCache(pipe, cfg.infer.max_sequence_length)
        with progress_bar("rows", len(todo)) as advance:
            for r in todo:
                save_output(edit(pipe, row_inputs(r), cfg, prompts=prompts), output_dir / f"{r.index:06d}{suffix}")
                advance()
    return BatchSummary(written=len(todo), skipped=len(rows) - len(todo), output_dir=output_dir)
