"""The outputs to score: generated once, reused on every later run, split across processes.

Under ``accelerate launch`` each process takes its share of the outputs still missing
(``PartialState.split_between_processes``) and writes them atomically, so an interrupted run resumes
where it stopped and no file is ever half-written.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import RelationConfig
from ..images import open_image, resize_result, save_output
from ..fs import remove_stale_temps
from ..infer import EditInputs, EditSizes, NonFiniteResult, PromptCache, edit, edit_sizes, open_edit_inputs
from .plan import Job


def job_inputs(cfg: RelationConfig, job: Job) -> EditInputs:
    """Open and check the images of one job (its k exemplar pairs and query); messages name the split, row and role."""
    prompt = job.row.text if cfg.eval.use_text else ""
    return open_edit_inputs(cfg, job.exemplar.pairs, job.row.source, prompt, f"{job.split} {job.row.name} ")


def job_record(job: Job, out: Path, digests: dict[Path, str | None]) -> tuple[str, dict]:
    """The name of a job's output in ``generation.json`` (its path in ``out``) and what it is made from: the
    exemplar pairs it reads (the row's own, another row's for the wrong-pair baseline), the query, the text,
    the target (the VAE baseline reconstructs it) and the sha256 of each image, as batch infer records a row
    (:func:`~relation_cli.infer.row_record`: an image replaced under the same name is noticed). ``digests``
    keeps each file's sha256 across jobs."""
    from ..infer import row_record

    record = row_record(replace(job.row, exemplars=job.exemplar.pairs), digests, with_target=True)
    return job.output.relative_to(out).as_posix(), record


def changed_outputs(jobs: list[Job], out: Path, recorded: dict | None, digests: dict[Path, str | None]) -> set[int]:
    """The jobs (``id``) whose output is on disk but was made from other inputs than the job's now (a rows file
    or image changed since): ``recorded`` is ``generation.json``'s ``rows``; None (a folder from before outputs
    were recorded) trusts every output, as before."""
    if recorded is None:
        return set()
    changed = set()
    for job in jobs:
        if job.output.is_file():
            name, record = job_record(job, out, digests)
            if recorded.get(name) != record:
                changed.add(id(job))
    return changed


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


def generate(cfg: RelationConfig, jobs: list[Job], state, on_ready=lambda pipe: None, redo: set[int] = frozenset(),
             on_saved=lambda job: None) -> Generated:  # fmt: skip
    """Make every missing output; ``state`` is an ``accelerate.PartialState`` (one process without launch).

    ``on_ready(pipe)`` runs in a process once its model has loaded (``pipe``; None when every job is a copy of
    the query), before it writes its first output: a refused adapter or LoRA leaves no record that would
    block the corrected rerun. ``redo``: jobs (``id``) whose output is there but made from other inputs
    (:func:`changed_outputs`), made again. ``on_saved(job)`` runs once each output is on disk (its record).
    """
    todo = [j for j in jobs if not j.output.is_file() or id(j) in redo]  # their inputs were checked by setup
    if state.is_main_process:
        remove_stale_temps(j.output for j in todo)  # a killed run's, of the outputs made now
        for job in todo:
            if id(job) in redo:  # made from other inputs: gone before it is made again (a failure leaves none)
                job.output.unlink(missing_ok=True)
    # Every process must list the missing outputs before any is written, or the shares would differ.
    state.wait_for_everyone()
    with state.split_between_processes(todo) as mine:
        _generate(cfg, mine, state, on_ready, on_saved)
    state.wait_for_everyone()
    failed = [j for j in todo if not j.output.is_file()]  # every process sees the outputs of all
    return Generated(written=len(todo) - len(failed), reused=len(jobs) - len(todo), failed=failed)


def _generate(cfg: RelationConfig, jobs: list[Job], state, on_ready, on_saved) -> None:
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
        on_ready(pipe)
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
                    target = open_image(job.row.target, f"{job.split} {job.row.name} target", cfg.data.max_image_pixels)
                    image = reconstruct(pipe, target, sizes)
                else:
                    try:
                        image = edit(pipe, inputs, off if job.method == "adapter_off" else cfg, prompts=prompts)
                    except NonFiniteResult:  # no image; counted as a failure by the caller
                        advance()
                        continue
            save_output(image, job.output)
            on_saved(job)
            advance()
