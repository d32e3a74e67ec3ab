"""The outputs to score: generated once, reused on every later run, split across processes.

Under ``accelerate launch`` each process takes its share of the outputs still missing
(``PartialState.split_between_processes``) and writes them atomically, so an interrupted run resumes
where it stopped and no file is ever half-written.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import RelationConfig
from ..errors import RelationError
from ..fs import write_text_atomic
from ..images import open_image, resize_result, save_output
from ..infer import EditInputs, EditSizes, NonFiniteResult, PromptCache, edit, edit_sizes, open_edit_inputs
from .plan import Job

SETTINGS_FILE = "generation.json"


def generation_settings(cfg: RelationConfig, eval_keys: bool = True) -> dict:
    """The config values that change a generated image: outputs made with others must not be reused.

    ``eval_keys=False`` leaves out the eval-only ones (batch ``relation infer``).
    """
    settings = {
        "model.base": cfg.model.base,
        "model.image_encoder": cfg.model.image_encoder,
        "model.dtype": cfg.model.dtype,
        "adapter.path": cfg.adapter.path,
        "adapter.scale": cfg.adapter.scale,
        "lora.paths": [f.model_dump() for f in cfg.lora.paths],
        "lora.scale": cfg.lora.scale,
        "lora.fuse": cfg.lora.fuse,
        "lora.allow_partial": cfg.lora.allow_partial,
        "infer.steps": cfg.infer.steps,
        "infer.guidance": cfg.infer.guidance,
        "infer.seed": cfg.infer.seed,
        "infer.max_sequence_length": cfg.infer.max_sequence_length,
        "infer.size": [cfg.infer.width, cfg.infer.height, cfg.infer.max_area, cfg.infer.output_size],
    }
    if eval_keys:
        settings.update({"eval.seed": cfg.eval.seed, "eval.use_text": cfg.eval.use_text})
    return settings


def read_settings(output_dir: Path) -> dict | None:
    """The ``generation.json`` of a folder of outputs; None if there is none."""
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RelationError(f"'{path}': not valid JSON; delete it only if every output in '{output_dir}' is current")
    if not isinstance(recorded, dict):
        raise RelationError(f"'{path}': expected a JSON object; delete it only if every output in '{output_dir}' is current")
    return recorded


def check_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True) -> None:
    """Refuse to mix outputs of different settings in one folder (a reused output is trusted as is).

    Raises:
        RelationError: ``generation.json`` records other settings; the message names each changed key, and
            for batch infer (``eval_keys`` False) also ``--overwrite``, which regenerates every row in place.
    """
    before = read_settings(output_dir)
    if before is None:
        return
    now = generation_settings(cfg, eval_keys)
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
    if changed:
        raise RelationError(
            f"outputs in '{output_dir}' were generated with other settings ({'; '.join(changed)}): "
            + ("use another --output-dir, or --overwrite to regenerate every row in it" if not eval_keys
               else "use another --output-dir, or delete that folder to regenerate")
        )


def record_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True, rows: dict | None = None) -> None:
    """Write ``generation.json``: the settings, and for batch infer what each output was made from."""
    record = generation_settings(cfg, eval_keys) | ({"rows": rows} if rows is not None else {})
    write_text_atomic(output_dir / SETTINGS_FILE, json.dumps(record, indent=2) + "\n")


def job_inputs(cfg: RelationConfig, job: Job) -> EditInputs:
    """Open and check the images of one job (its k exemplar pairs and query); messages name the split, row and role."""
    prompt = job.row.text if cfg.eval.use_text else ""
    return open_edit_inputs(cfg, job.exemplar.pairs, job.row.source, prompt, f"{job.split} row {job.row.index + 1} ")


def copy_query(query: Image.Image, sizes: EditSizes) -> np.ndarray:
    """The copy-query baseline: B itself through the sizes a result goes through: to the working size as the
    pipeline resizes its query (``VaeImageProcessor.resize``: Lanczos), then to the output size like a result."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=sizes.multiple)
    query = processor.resize(query, height=sizes.working[1], width=sizes.working[0])
    return resize_result(processor.pil_to_numpy(query)[0], sizes.output)


@torch.inference_mode()
def reconstruct(pipe, target: Image.Image, sizes: EditSizes) -> np.ndarray:
    """The vae_reconstruction baseline: the target at the working size, VAE-encoded (mean) and decoded, at the
    output size."""
    width, height = sizes.working
    x = pipe.image_processor.preprocess(target, height=height, width=width).to(pipe.vae.device, pipe.vae.dtype)
    decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mode(), return_dict=False)[0]
    return resize_result(pipe.image_processor.postprocess(decoded, output_type="np")[0].astype(np.float32), sizes.output)


@dataclass(frozen=True)
class Generated:
    written: int  # by all processes together
    reused: int
    failed: list[Job]  # no output: the result was not finite


def generate(cfg: RelationConfig, jobs: list[Job], state, on_ready=lambda: None) -> Generated:
    """Make every missing output; ``state`` is an ``accelerate.PartialState`` (one process without launch).

    ``on_ready()`` runs in a process once its model has loaded, before it writes its first output: a
    refused adapter or LoRA leaves no record that would block the corrected rerun.
    """
    todo = [j for j in jobs if not j.output.is_file()]  # their inputs were checked by setup
    # Every process must list the missing outputs before any is written, or the shares would differ.
    state.wait_for_everyone()
    with state.split_between_processes(todo) as mine:
        _generate(cfg, mine, state, on_ready)
    state.wait_for_everyone()
    failed = [j for j in todo if not j.output.is_file()]  # every process sees the outputs of all
    return Generated(written=len(todo) - len(failed), reused=len(jobs) - len(todo), failed=failed)


def _generate(cfg: RelationConfig, jobs: list[Job], state, on_ready) -> None:
    from ..model import load_pipeline, size_rules
    from ..progress import progress_bar

    off = cfg.model_copy(deep=True)
    off.adapter.scale = 0.0  # the pipeline skips the exemplar branch entirely at scale 0
    pipe = prompts = None
    if any(job.method != "copy_query" for job in jobs):
        # One device per process under accelerate; the configured one otherwise.
        pipe = load_pipeline(cfg, state.device if state.num_processes > 1 else None)
        prompts = PromptCache(pipe, cfg.infer.max_sequence_length)
    if jobs:
        on_ready()
    rules = size_rules(cfg) if jobs else (0, 0)
    bar = progress_bar("generating", len(jobs)) if state.is_main_process and jobs else nullcontext(lambda n=1: None)
    with bar as advance:
        for job in jobs:
            inputs = job_inputs(cfg, job)
            sizes = edit_sizes(cfg.infer, inputs.query.size, *rules)
            if job.method == "copy_query":
                image = copy_query(inputs.query, sizes)
            else:
                if job.method == "vae_reconstruction":
                    target = open_image(job.row.target, f"{job.split} row {job.row.index + 1} target", cfg.data.max_image_pixels)
                    image = reconstruct(pipe, target, sizes)
                else:
                    try:
                        image = edit(pipe, inputs, off if job.method == "adapter_off" else cfg, prompts=prompts)
                    except NonFiniteResult:  # no image; counted as a failure by the caller
                        advance()
                        continue
            save_output(image, job.output)
            advance()
