"""``relation train``: setup -> train -> export, with every device and process concern in accelerate.

The recipe is the same for every job: a job (:mod:`.job` for the RelationAdapter, :mod:`.vae` for VAE
pre-training) supplies the trained module, the loss of one micro-batch, validation and export. One
optimizer step is :func:`relation_cli.train.step.optimizer_step`; checkpoints are
:mod:`relation_cli.train.checkpoint`; what a resume may change is :mod:`relation_cli.train.resume`.
"""

from __future__ import annotations

import math
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import ProgressColumn, TextColumn
from rich.text import Text

from ..checks import full_bf16_refused
from ..config import DEMO, RelationConfig, is_saved_config, save_config
from ..errors import RelationError, Stopped
from ..fs import atomic_dir, check_not_busy, check_writable, hold_folder
from ..progress import console, make_progress
from . import checkpoint as ckpt
from .data import AnalogyDataset, BatchPlan, collate, load_rows
from .encode import DiskCache, FrozenEncoders, identity, weights_digest
from .job import LORA_NAME, Job, job_for
from .resume import continue_config
from .step import loss_on, optimizer_step

__all__ = ["LORA_NAME", "Run", "loss_on", "setup", "train", "validation_rows"]


def train(cfg: RelationConfig, resume: bool = False) -> Path:
    """Train until ``train.steps``; returns the folder holding the exported weights (contract A)."""
    run = setup(cfg, resume)
    try:
        loop(run)
        return export(run)
    finally:
        run.close()


@dataclass
class Run:
    """Everything the loop needs, made by :func:`setup`."""

    cfg: RelationConfig
    job: Job
    accelerator: object
    pipe: object  # RelationPipeline over the training components (frozen parts + installed adapter)
    sources: object  # ModelSources: where the base, image encoder, adapter and LoRA came from
    model: object  # the job's trained module, prepared by accelerate
    optimizer: object
    scheduler: object
    encoders: FrozenEncoders
    dataset: AnalogyDataset
    plan: BatchPlan
    generator: torch.Generator
    out: Path
    step: int = 0
    ema: object | None = None
    validation_rows: list = field(default_factory=list)
    lock: object | None = None  # the output folder's filelock.FileLock, held by the main process (fs.hold_folder)

    def close(self) -> None:
        """End the accelerator's trackers and free the output folder for the next command (what :func:`train`
        does at its end; call it after using :func:`setup` directly)."""
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# ------------------------------------------------------------------------------------------ setup


def setup(cfg: RelationConfig, resume: bool) -> Run:
    """Cheap checks first (output folder, the checkpoint and its config, every image), then the models.

    Nothing is written before all of them pass: a refused ``--resume`` leaves the folder as it was.
    """
    from diffusers.training_utils import cast_training_params

    from ..model import truthful_config

    out = check_output_dir(Path(cfg.train.output_dir), resume, busy=False)  # busy: below, by the main process
    folder = ckpt.require_resumable(out / "checkpoints", warn=_warn) if resume else None
    if folder is not None:
        cfg = continue_config(cfg, folder, warn=_warn)
    t, job = cfg.train, job_for(cfg.train.mode)
    rows = load_rows(t.data_files, cfg.data.max_image_pixels)  # every image decoded: before anything is loaded or written
    if t.batch_size > len(rows):
        _warn(f"train.batch_size {t.batch_size} is more than the {len(rows)} training rows: a batch holds at most "
              f"{len(rows)} (fewer where their sizes differ)")  # fmt: skip
    accelerator = build_accelerator(cfg)
    check_distribution(accelerator)
    if accelerator.is_main_process:  # the main process alone: another rank's probe would collide with its lock
        check_not_busy(out, "train.output_dir")
    dtype = weight_dtype(accelerator)
    if t.full_bf16 and dtype != torch.bfloat16:
        raise RelationError(full_bf16_refused(t.mixed_precision, accelerator.mixed_precision, accelerator.device.type))
    pipe, sources = job.build(cfg, dtype)
    if t.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    model = job.model(pipe, cfg)
    cast_training_params(model, dtype if t.full_bf16 else torch.float32)  # trainable weights; frozen ones in `dtype`
    pipe.to(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    model, optimizer, scheduler = accelerator.prepare(model, *build_optimization(cfg, params, accelerator.num_processes))
    ema = build_ema(cfg, params)
    extractor = pipe.feature_extractor if job.exemplars else None
    dataset = AnalogyDataset(rows, cfg.data.resolution, pipe.vae_scale_factor * 2, cfg.data.max_image_pixels, extractor,
                             t.cache_images_in_memory, t.max_exemplar_pairs, t.seed)  # fmt: skip
    counts = dataset.pair_counts() if extractor is not None else None
    plan = BatchPlan(dataset.sizes(), t.batch_size, t.seed, accelerator.process_index, accelerator.num_processes, counts)
    encoders = build_encoders(cfg, pipe, sources, accelerator.device, dtype, out)
    generator = torch.Generator().manual_seed(t.seed * 1000 + accelerator.process_index)
    cfg = truthful_config(cfg, pipe)
    run = Run(cfg, job, accelerator, pipe, sources, model, optimizer, scheduler, encoders, dataset, plan, generator, out,
              ema=ema, validation_rows=validation_rows(cfg))  # fmt: skip
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        run.lock = hold_folder(out, "train.output_dir")
        try:  # again, now that no other run can write here: one started meanwhile may have left checkpoints
            check_output_dir(out, resume, busy=False)
        except RelationError:
            run.close()
            raise
        if folder is None:
            clear_unfinished_run(out)
        save_config(cfg, out / "config.yaml")
        accelerator.init_trackers("relation", config=_flat_config(cfg))
    if folder is not None:
        ckpt.load_checkpoint(run, folder)
    return run


def build_accelerator(cfg: RelationConfig):
    """The one place the Accelerator is made: device and precision by the one rule of
    :mod:`relation_cli.model`, accumulation, tensorboard logging."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..model import build_process_state, resolve_device, resolve_mixed_precision

    t, out = cfg.train, Path(cfg.train.output_dir)
    return build_process_state(
        Accelerator,
        cfg.model.device,
        gradient_accumulation_steps=t.gradient_accumulation,
        mixed_precision=resolve_mixed_precision(t.mixed_precision, resolve_device(cfg.model.device)),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def check_distribution(accelerator) -> None:
    """Exports and checkpoints read replicated parameters: DDP and DeepSpeed ZeRO-1/2 keep them so."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise RelationError("FSDP shards parameters, which relation's export does not gather: use DDP or DeepSpeed ZeRO-2 (configs/accelerate/)")
    if kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise RelationError("DeepSpeed ZeRO-3 shards parameters: use ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml)")


def weight_dtype(accelerator) -> torch.dtype:
    """The dtype frozen weights are stored in: accelerate's mixed precision, else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


def build_optimization(cfg: RelationConfig, params: list, num_processes: int) -> tuple:
    """AdamW (or 8-bit AdamW) and diffusers' learning-rate schedule; accelerate steps the schedule once per process."""
    from diffusers.optimization import get_scheduler

    t = cfg.train
    optimizer = make_optimizer(cfg, params)
    n = num_processes
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps * n, num_training_steps=t.steps * n
    )
    return optimizer, scheduler


def make_optimizer(cfg: RelationConfig, params):
    t = cfg.train
    kwargs = dict(lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay, eps=t.adam_epsilon)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RelationError("train.optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def build_ema(cfg: RelationConfig, params: list):
    """diffusers' EMAModel over the trained parameters, or ``None`` (``train.ema_decay: 0``)."""
    if cfg.train.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=cfg.train.ema_decay)


def build_encoders(cfg: RelationConfig, pipe, sources, device, dtype, out: Path) -> FrozenEncoders:
    """The frozen encoders, with the encoding cache keyed by each encoder's identity."""
    t = cfg.train
    cache = DiskCache(Path(t.cache_dir or out / "cache") if t.cache_encodings else None)
    # CLIP may hold a fused LoRA's text part (full and adapter modes; lora mode takes a transformer LoRA alone)
    fused = getattr(pipe, "text_encoder_2", None) is not None and sources.loras and t.mode != "lora"
    ids = {
        "vae": identity(sources.base, dict(pipe.vae.config), str(pipe.vae.dtype)),
        "text": identity(sources.base, text_encoder(pipe).config.to_dict(), str(dtype),
                         *([weights_digest(pipe.text_encoder)] if fused else [])),  # fmt: skip
        "image_encoder": identity(sources.image_encoder, pipe.image_encoder.config.to_dict(), str(dtype)),
    }
    return FrozenEncoders(pipe, cache, ids, device, dtype)


def text_encoder(pipe):
    """The text encoder whose output trains the transformer: T5 (``text_encoder_2``) on FLUX.1, Qwen3 on klein."""
    return getattr(pipe, "text_encoder_2", None) or pipe.text_encoder


def truthful(cfg: RelationConfig, pipe) -> RelationConfig:
    """``cfg`` with ``adapter.num_tokens`` of the adapter that trains (a loaded one brings its own)."""
    adapter = pipe.relation_adapter
    if adapter is None or adapter.config.num_tokens == cfg.adapter.num_tokens:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.adapter.num_tokens = adapter.config.num_tokens
    return cfg


RUN_ENTRIES = ("config.yaml", "logs", "checkpoints", "adapter", "lora", "base", "image_encoder", "validation", "cache")
"""What relation train writes in ``train.output_dir``: a new run may start in a folder holding only these."""


def check_output_dir(out: Path, resume: bool, busy: bool = True) -> Path:
    """``train.output_dir`` can be written, and a new run never lands on an earlier run's checkpoints, nor
    on files relation train did not write: a folder's other entries (hidden ones aside), or a
    ``config.yaml`` that is not a whole saved configuration (a user's own, which the run would replace).
    ``busy``: also refuse a folder another command is writing now (:func:`~relation_cli.fs.check_not_busy`;
    :func:`setup` passes False and checks it on the main process alone, where the lock is taken).

    Raises:
        RelationError: one line naming the folder, what is in the way and what to do.
    """
    if out.exists() and not out.is_dir():
        raise RelationError(f"train.output_dir '{out}': exists and is not a folder")
    check_writable(out, "train.output_dir")
    if busy:
        check_not_busy(out, "train.output_dir")
    if resume:
        return out
    if ckpt.checkpoints(out / "checkpoints"):
        raise RelationError(
            f"train.output_dir '{out}': holds checkpoints of an earlier run; pass --resume to continue it, "
            "or choose another train.output_dir"
        )
    saved = (out / "config.yaml").is_file() and is_saved_config(out / "config.yaml")
    if saved and (step := _finished_step(out)) is not None:
        raise RelationError(f"train.output_dir '{out}': holds the exported weights of a finished run (step "
                            f"{step}; its checkpoints are gone), which a new run would replace: use "
                            "them with --run, or choose another train.output_dir")  # fmt: skip
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in RUN_ENTRIES)
        if (out / "config.yaml").is_file() and not saved:
            raise RelationError(f"train.output_dir '{out}': its config.yaml is not a whole configuration this relation saved, and the "
                                "run would replace it: keep your configuration elsewhere, or choose a new or empty "
                                "train.output_dir")  # fmt: skip
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise RelationError(f"train.output_dir '{out}': holds files relation train did not write "
                                f"({', '.join(foreign[:3])}{more}): choose a new or empty train.output_dir")  # fmt: skip
    return out


def _finished_step(out: Path) -> int | None:
    """The step of the ``run:`` section in ``out/config.yaml`` (a run that exported its weights), or None."""
    from ..config import read_yaml

    run = read_yaml(out / "config.yaml").get("run")
    if not isinstance(run, dict):
        return None
    step = run.get("step")
    return step if isinstance(step, int) else 0


def unfinished_run_files(out: Path) -> list[Path]:
    """What an earlier run in ``out`` that left no checkpoint wrote and a new run would mix with its own:
    its tensorboard folder ``logs/relation`` (tensorboard reads every events file under ``logs``) and its
    ``validation/step-*.png``; the encoding ``cache`` stays (its entries are keyed). Only where ``config.yaml``
    is a configuration relation saved, the mark of such a run: a user's own ``logs`` or ``validation`` files
    are never listed."""
    saved = out / "config.yaml"
    if not (saved.is_file() and is_saved_config(saved)):
        return []
    logs = [out / "logs" / "relation"] if (out / "logs" / "relation").is_dir() else []
    return logs + sorted((out / "validation").glob("step-[0-9]*.png"))


def unfinished_run_line(out: Path, files: list[Path], done: bool) -> str:
    """The line that says what :func:`clear_unfinished_run` removes (``done``) or will remove (a dry run)."""
    images = sum(1 for f in files if f.suffix == ".png")
    what = " and ".join(filter(None, ["the tensorboard logs" if len(files) > images else "",
                                      f"{images} validation image{'s' if images != 1 else ''}" if images else ""]))
    verb = "removed" if done else "the run will first remove"
    return (f"train.output_dir '{out}': {verb} {what} of an earlier run in this folder that left no checkpoint, "
            "so that they do not mix with this run's")  # fmt: skip


def clear_unfinished_run(out: Path) -> None:
    """Delete :func:`unfinished_run_files` (a new run starts in ``out``: :func:`check_output_dir` refused the
    folder had it a checkpoint), with one line saying so."""
    files = unfinished_run_files(out)
    for entry in files:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
    if files:
        _warn(unfinished_run_line(out, files, done=True))


def validation_rows(cfg: RelationConfig) -> list:
    """The first ``validation_samples`` held-out rows, spread over their tasks (one of each task first): from
    ``train.validation_data``, else the ``test_seen.jsonl`` beside the first data file when there is one.

    Raises:
        RelationError: a named file missing, or either file unreadable or without rows (saying how to train
            without validation).
    """
    from ..rows import parse_rows, spread_by_task

    t = cfg.train
    if t.validation_samples == 0:
        return []
    path = Path(t.validation_data) if t.validation_data else Path(t.data_files[0]).with_name("test_seen.jsonl")
    if not path.is_file():
        if t.validation_data:
            raise RelationError(f"train.validation_data '{path}': not found")
        return []
    try:
        rows = parse_rows(path, need_target=True)
    except RelationError as e:  # say what the file is for and how to train without it
        key = "train.validation_data" if t.validation_data else "validation rows (the test_seen.jsonl beside the data)"
        raise RelationError(f"{key}: {e}; fix the file, or set train.validation_samples=0 to train without "
                            "validation") from None  # fmt: skip
    return spread_by_task(rows, lambda r: r.task)[: max(t.validation_samples, 2)]


def _flat_config(cfg: RelationConfig) -> dict:
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        for k, v in (values or {}).items():
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message.removeprefix('warning: ')}")


# ------------------------------------------------------------------------------------------ train


class SpeedColumn(ProgressColumn):
    """Optimizer steps per second as rich estimates it (``Task.speed``), with two decimals: slow steps
    (0.03 it/s on a CPU) would read 0.0 in ``TaskProgressColumn.render_speed``'s one."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f} it/s", style="progress.percentage")


def loop(run: Run) -> None:
    """Optimizer steps until ``train.steps``: log, checkpoint and validate on their schedules; stop on a
    non-finite loss. The last step is always checkpointed and validated; a run resumed at its last step
    only says so. A Ctrl-C (one process) ends the step under way, checkpoints it and raises KeyboardInterrupt."""
    t, acc = run.cfg.train, run.accelerator
    batches = iter(torch.utils.data.DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate, num_workers=t.num_workers))
    run.model.train()
    progress = make_progress(TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"), SpeedColumn())
    progress.disable = progress.disable or not acc.is_main_process
    progress.speed_estimate_period = 600.0  # seconds of steps the speed is averaged over (slow steps too)
    if run.step >= t.steps:  # a resumed run that had finished: its weights are exported again, nothing trains
        if acc.is_main_process:
            console.print(f"step {run.step}: the run already reached train.steps ({t.steps}); nothing to train, its weights "
                          f"are written again (a larger train.steps trains on)")  # fmt: skip
        return
    last_saved = run.step
    with progress, StopRequest(acc.num_processes == 1) as stop:
        task = progress.add_task("training", total=t.steps, completed=run.step, loss=float("nan"), lr=0.0)
        while run.step < t.steps:
            value = optimizer_step(run, batches)
            if not math.isfinite(value):
                raise ckpt.non_finite(run, f"loss became {value} at step {run.step + 1}")
            run.step += 1
            if run.ema is not None:
                run.ema.step([p for p in ckpt.unwrapped(run).parameters() if p.requires_grad])
            lr = run.scheduler.get_last_lr()[0]
            progress.update(task, advance=1, loss=value, lr=lr)
            log_step(run, value, lr, progress.tasks[0].speed)
            if stop.asked:  # Ctrl-C: this finished step is kept, then the run stops
                if last_saved != run.step:
                    ckpt.save_checkpoint(run)
                progress.stop()
                console.print(f"interrupted after step {run.step}: it is checkpointed; the same command with --resume continues it")
                raise Stopped
            if run.step % t.checkpoint_every == 0 and run.step < t.steps:
                ckpt.save_checkpoint(run)
                last_saved = run.step
            if t.validate_every and run.step % t.validate_every == 0 and run.step < t.steps:
                validate(run)
    if last_saved != run.step:
        ckpt.save_checkpoint(run)
    validate(run)


class StopRequest:
    """``with StopRequest(enabled) as stop``: a first Ctrl-C (SIGINT), SIGTERM or SIGHUP only sets ``stop.asked``, so
    that the loop can finish and checkpoint the step under way; a second one interrupts at once. Off (``enabled``
    False: several processes, which would have to agree on the step) or outside the main thread, Ctrl-C
    interrupts at once as usual."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.asked = False
        self.previous = None

    def __enter__(self) -> StopRequest:
        if self.enabled:  # under the CLI, SIGTERM and SIGHUP raise KeyboardInterrupt like SIGINT (cli.STOP_SIGNALS)
            self.previous = {s: signal.signal(s, self._ask) for s in self.signals()}
        return self

    def _restore(self) -> None:
        for s, handler in self.previous.items():  # None: a handler not set from Python
            default = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
            signal.signal(s, default if handler is None else handler)

    @staticmethod
    def signals() -> list[signal.Signals]:
        """SIGINT (Ctrl-C), SIGTERM (kill, timeout, job schedulers) and SIGHUP (a closed terminal) where they exist."""
        return [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]

    def _ask(self, signum, frame) -> None:
        self.asked = True
        self._restore()  # a second signal: at once
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.print(f"{name}: stopping after this step, which is checkpointed ({name} again to stop at once)")

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self._restore()
        return False


def log_step(run: Run, loss: float, lr: float, speed: float | None) -> None:
    """Every ``log_every`` steps: tensorboard, and a plain line where no live bar shows (nohup, CI, clusters)."""
    t, acc = run.cfg.train, run.accelerator
    if run.step % t.log_every and run.step != t.steps:
        return
    acc.log({"train/loss": loss, "train/lr": lr}, step=run.step)
    if acc.is_main_process and not console.is_terminal:
        rate = speed or 0.0
        eta = f" eta {(t.steps - run.step) / rate / 60:.1f} min" if rate else ""
        console.print(f"step {run.step}/{t.steps} loss {loss:.4f} lr {lr:.2e} {rate:.2f} it/s{eta}")


def validate(run: Run) -> None:
    """The job's validation on the main process (with the EMA weights, if any); the other processes wait."""
    acc = run.accelerator
    if acc.is_main_process and run.validation_rows:
        model = ckpt.unwrapped(run)
        model.eval()
        with ema_weights(run):
            metrics = run.job.validate(run)
        model.train()
        acc.log(metrics, step=run.step)
        console.print(f"step {run.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    acc.wait_for_everyone()


class ema_weights:
    """Swap the EMA weights in for the duration of a block (no-op without EMA)."""

    def __init__(self, run: Run):
        self.run = run
        self.params = [p for p in ckpt.unwrapped(run).parameters() if p.requires_grad]

    def __enter__(self):
        if self.run.ema is not None:
            self.run.ema.store(self.params)
            self.run.ema.copy_to(self.params)

    def __exit__(self, *exc):
        if self.run.ema is not None:
            self.run.ema.restore(self.params)
        return False


# ------------------------------------------------------------------------------------------ export


def export(run: Run) -> Path:
    """The job's weights (with the EMA weights, if any), ``image_encoder/`` when it trained, and the run's
    ``config.yaml`` with its ``run:`` section (contract A), in formats ``relation infer`` and diffusers read."""
    acc, cfg, out = run.accelerator, run.cfg, run.out
    acc.wait_for_everyone()
    if acc.is_main_process:
        with ema_weights(run):
            made = run.job.export(run)
            if cfg.train.train_image_encoder:
                with atomic_dir(out / "image_encoder", replace=True) as tmp:
                    run.pipe.image_encoder.save_pretrained(tmp)
                    run.pipe.feature_extractor.save_pretrained(tmp)
                made["image_encoder"] = "image_encoder"
        save_config(run_config(run, made), out / "config.yaml")
    acc.wait_for_everyone()
    return out


def run_config(run: Run, made: dict[str, str]) -> RelationConfig:
    """The run's config: the training config and a ``run:`` section naming the model it produced.

    Parts the run did not write are its sources: ``model.base`` as written when it is not a folder
    (``demo``, a hub id), else the folder's absolute path; likewise the image encoder; in adapter mode
    every LoRA that was fused into the base while the adapter trained, at its weight x ``lora.scale``.
    """
    from ..config import LoraFile, RunSection

    cfg, sources = run.cfg.model_copy(deep=True), run.sources
    base = made.get("base") or (DEMO if cfg.model.base == DEMO else _where(sources.base))
    fused = sources.loras if cfg.train.mode == "adapter" else ()
    cfg.run = RunSection(base=base, image_encoder=made.get("image_encoder") or _where(sources.image_encoder),
                         adapter=made.get("adapter"), lora=made.get("lora"), step=run.step,
                         base_loras=[LoraFile(path=_where(f.path), weight=f.weight * cfg.lora.scale) for f in fused])  # fmt: skip
    return cfg


def _where(source: str) -> str:
    """A local source as an absolute path; a hub id as written."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source
