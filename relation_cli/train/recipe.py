"""``relation train``: setup -> train -> cleanup, with every device and process concern in accelerate.

One optimizer step (SPEC 2.4): target and query images go through the frozen VAE (posterior
sample), the exemplar pair through SigLIP and the adapter's projection (zeroed for a sample with
probability ``exemplar_dropout``); ``x_s = (1 - s) x0 + s * noise``; the transformer sees
``[x_s ; clean query]`` with cloned ids and predicts ``noise - x0`` on the target tokens (MSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RelationConfig, save_config
from ..errors import RelationError
from ..fs import check_writable
from ..pipeline import relation_latent_ids
from ..progress import console
from . import checkpoint as ckpt
from .data import AnalogyDataset, BatchPlan, load_rows
from .encode import DiskCache, FrozenEncoders, identity
from .model import RelationTrainModel, VaeTrainModel

LORA_NAME = "relation"


def build_accelerator(cfg: RelationConfig):
    """The one place the Accelerator is made: precision, accumulation, tensorboard logging."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..model import resolve_device

    t = cfg.train
    precision = t.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    out = Path(t.output_dir)
    return Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation,
        mixed_precision=precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # cpu=True also makes processes started by torchrun / `accelerate launch --multi_gpu` on a machine
        # without GPUs form a gloo process group (accelerate's MULTI_CPU) instead of N lone processes.
        cpu=resolve_device(cfg.model.device).type == "cpu",
    )


def check_distribution(accelerator) -> None:
    """Exports and checkpoints read replicated parameters: DDP and DeepSpeed ZeRO-1/2 keep them so."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise RelationError("FSDP shards parameters, which relation's export does not gather: use DDP or DeepSpeed ZeRO-2 (configs/accelerate/)")
    if kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise RelationError("DeepSpeed ZeRO-3 shards parameters: use ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml)")


def uses_native_state(accelerator) -> bool:
    """DeepSpeed owns its optimizer: its state is saved through accelerate's save_state."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def weight_dtype(accelerator) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)


@dataclass
class Run:
    """Everything the loop needs, made by :func:`setup`."""

    cfg: RelationConfig
    accelerator: object
    pipe: object  # RelationPipeline over the training components (frozen parts + installed adapter)
    model: object  # RelationTrainModel, prepared by accelerate
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


# ------------------------------------------------------------------------------------------ setup


def build_components(cfg: RelationConfig, dtype: torch.dtype):
    """Pipeline from the configured sources; a new adapter unless ``adapter.path`` gives a starting point."""
    from ..adapter import RelationAdapter
    from ..lora import apply_loras, continue_lora
    from ..model import load_base, resolve_sources
    from ..weights import load_adapter

    sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False)
    pipe = load_base(sources, dtype, cfg.model.local_files_only, cfg.model.query_ids)
    t = cfg.train
    transformer = pipe.transformer
    if sources.adapter is not None:
        adapter = load_adapter(sources.adapter, transformer.config.attention_head_dim)
    elif t.mode == "vae":
        adapter = None
    else:
        torch.manual_seed(t.seed)
        adapter = RelationAdapter.for_transformer(
            transformer, pipe.image_encoder.config.hidden_size, cfg.adapter.num_tokens, cfg.adapter.role_embeddings
        )
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.image_encoder, transformer):
        module.requires_grad_(False)
    if t.mode == "vae":
        pipe.vae.requires_grad_(True)
        return pipe, sources
    if t.mode == "lora":
        if sources.loras:  # continue training that LoRA (its own rank and alpha), not a new one on top
            continue_lora(pipe, sources.loras, LORA_NAME, cfg.lora.allow_partial)
        else:
            from peft import LoraConfig

            torch.manual_seed(t.seed + 1)
            config = LoraConfig(
                r=cfg.lora.rank,
                lora_alpha=cfg.lora.alpha or cfg.lora.rank,
                init_lora_weights="gaussian",
                target_modules=list(cfg.lora.targets),
            )
            transformer.add_adapter(config, adapter_name=LORA_NAME)
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    else:
        if sources.loras:  # full / adapter mode start from the base with the LoRAs merged in
            apply_loras(pipe, sources.loras, cfg.lora.scale, fuse=True, allow_partial=cfg.lora.allow_partial)
        if t.mode == "full":
            transformer.requires_grad_(True)
    pipe.set_relation_adapter(adapter)
    adapter.requires_grad_(True)
    if t.train_image_encoder:
        pipe.image_encoder.requires_grad_(True)
    return pipe, sources


def setup(cfg: RelationConfig, resume: bool) -> Run:
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    t = cfg.train
    out = check_output_dir(Path(t.output_dir), resume)
    rows = load_rows(t.data, cfg.data.max_image_pixels)  # every image decoded: before anything is loaded or written
    accelerator = build_accelerator(cfg)
    check_distribution(accelerator)
    dtype = weight_dtype(accelerator)
    pipe, sources = build_components(cfg, dtype)
    transformer = pipe.transformer
    if t.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    trainable_encoder = pipe.image_encoder if t.train_image_encoder else None
    if t.mode == "vae":
        model = VaeTrainModel(pipe.vae)
    else:
        model = RelationTrainModel(transformer, pipe.relation_adapter, trainable_encoder)
    cast_training_params(model, torch.float32)  # trainable weights in fp32, frozen ones in `dtype`
    pipe.to(accelerator.device)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    n = accelerator.num_processes  # accelerate steps the schedule once per process
    scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps * n, num_training_steps=t.steps * n
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    ema = None
    if t.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=t.ema_decay)

    multiple = pipe.vae_scale_factor * 2
    extractor = None if t.mode == "vae" else pipe.feature_extractor
    dataset = AnalogyDataset(
        rows, cfg.data.resolution, multiple, cfg.data.max_image_pixels, extractor, t.cache_images_in_memory,
        t.max_exemplar_pairs, t.seed,
    )  # fmt: skip
    counts = dataset.pair_counts() if extractor is not None else None
    plan = BatchPlan(dataset.sizes(), t.batch_size, t.seed, accelerator.process_index, accelerator.num_processes, counts)
    cache = DiskCache(Path(t.cache_dir or out / "cache") if t.cache_encodings else None)
    ids = {
        "vae": identity(sources.base, dict(pipe.vae.config), str(pipe.vae.dtype)),
        "text": identity(sources.base, dict(pipe.text_encoder_2.config.to_dict()), str(dtype)),
        "image_encoder": identity(sources.image_encoder, pipe.image_encoder.config.to_dict(), str(dtype)),
    }
    encoders = FrozenEncoders(pipe, cache, ids, accelerator.device, dtype)
    generator = torch.Generator().manual_seed(t.seed * 1000 + accelerator.process_index)
    run = Run(cfg, accelerator, pipe, model, optimizer, scheduler, encoders, dataset, plan, generator, out, ema=ema)
    run.validation_rows = validation_rows(cfg)

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        accelerator.init_trackers("relation", config=_flat_config(cfg))
    if resume:
        load_checkpoint(run, ckpt.require_resumable(out / "checkpoints", warn=_warn))
    return run


def check_output_dir(out: Path, resume: bool) -> Path:
    """``train.output_dir`` can be written, and a new run never lands on an earlier run's checkpoints."""
    if out.exists() and not out.is_dir():
        raise RelationError(f"train.output_dir '{out}': exists and is not a folder")
    check_writable(out, "train.output_dir")
    if not resume and ckpt.checkpoints(out / "checkpoints"):
        raise RelationError(
            f"train.output_dir '{out}': holds checkpoints of an earlier run; pass --resume to continue it, "
            "or choose another train.output_dir"
        )
    return out


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


def validation_rows(cfg: RelationConfig) -> list:
    """The first ``validation_samples`` held-out rows, spread over their tasks (one of each task first)."""
    from ..rows import parse_rows, spread_by_task

    t = cfg.train
    if t.validation_samples == 0:
        return []
    path = Path(t.validation_data) if t.validation_data else Path(t.data).with_name("test_seen.jsonl")
    if not path.is_file():
        if t.validation_data:
            raise RelationError(f"train.validation_data '{path}': not found")
        return []
    return spread_by_task(parse_rows(path, need_target=True), lambda r: r.task)[: max(t.validation_samples, 2)]


def _flat_config(cfg: RelationConfig) -> dict:
    flat = {}
    for section, values in cfg.model_dump(mode="json").items():
        for k, v in (values or {}).items():  # run: is None until export
            flat[f"{section}.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


# ------------------------------------------------------------------------------------------ step


def sample_sigmas(cfg: RelationConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    from diffusers.training_utils import compute_density_for_timestep_sampling

    t = cfg.train
    scheme = "logit_normal" if t.timestep_sampling == "logit_normal" else "none"
    u = compute_density_for_timestep_sampling(scheme, batch, t.logit_mean, t.logit_std, generator=generator)
    return t.timestep_shift * u / (1 + (t.timestep_shift - 1) * u)


def vae_loss_on(run: Run, batch: dict) -> torch.Tensor:
    """Reconstruction MSE (pixels in [-1, 1]) + ``kl_weight`` x KL, on the targets and queries of a batch."""
    pixels = torch.cat([batch["target"], batch["source"]]).to(run.accelerator.device)
    vae = run.pipe.vae
    f = run.pipe.vae_scale_factor
    shape = (pixels.shape[0], vae.config.latent_channels, pixels.shape[-2] // f, pixels.shape[-1] // f)
    eps = torch.randn(shape, generator=run.generator).to(pixels.device)
    recon, kl = run.model(pixels, eps)
    return torch.mean((recon.float() - pixels.float()) ** 2) + run.cfg.train.kl_weight * kl


def loss_on(run: Run, batch: dict) -> torch.Tensor:
    """The rectified-flow loss of one micro-batch (all randomness from ``run.generator``)."""
    if run.cfg.train.mode == "vae":
        return vae_loss_on(run, batch)
    cfg, enc, gen = run.cfg, run.encoders, run.generator
    device, dtype = run.accelerator.device, enc.dtype
    b = len(batch["index"])
    x0 = enc.sample_latents(enc.latent_moments(batch["target"]), gen)  # (B, N, 4c)
    query = enc.sample_latents(enc.latent_moments(batch["source"]), gen)
    texts = batch["text"] if cfg.train.use_text else [""] * b
    prompt_embeds, pooled, text_ids = enc.text(texts, cfg.infer.max_sequence_length)
    noise = torch.randn(x0.shape, generator=gen).to(device, dtype)
    sigma = sample_sigmas(cfg, b, gen).to(device)
    keep = (torch.rand(b, generator=gen) >= cfg.train.exemplar_dropout).to(device)
    s = sigma.view(-1, 1, 1).to(dtype)
    noisy = (1 - s) * x0 + s * noise
    h, w = batch["target"].shape[-2:]
    grid = (h // run.pipe.vae_scale_factor // 2, w // run.pipe.vae_scale_factor // 2)
    ids = relation_latent_ids(*grid, device, dtype, run.pipe.query_ids)  # (2N, 3): target's, then the query's
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


# ------------------------------------------------------------------------------------------ checkpoints


def unwrapped(run: Run) -> RelationTrainModel:
    return run.accelerator.unwrap_model(run.model)


def save_checkpoint(run: Run) -> Path | None:
    """Atomic, checksummed, pickle-free; each process writes its own random and data-plan state."""
    acc, root = run.accelerator, run.out / "checkpoints"
    tmp = root / f".tmp-{ckpt.PREFIX}{run.step:08d}"
    if acc.is_main_process:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    rank = acc.process_index
    ckpt.save_tree({"rng": ckpt.rng_state(run.generator), "plan": run.plan.state()}, tmp, f"process_{rank}")
    if uses_native_state(acc):
        acc.save_state(str(tmp / "accelerate"))  # collective; DeepSpeed's own format
    if acc.is_main_process:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in unwrapped(run).trainable_state().items()}, tmp / "trainable.safetensors")
        if not uses_native_state(acc):
            ckpt.save_tree(run.optimizer.state_dict(), tmp, "optimizer")
            ckpt.save_tree(run.scheduler.state_dict(), tmp, "scheduler")
        if run.ema is not None:
            ckpt.save_tree(run.ema.state_dict(), tmp, "ema")
        ckpt.save_tree({"step": run.step, "num_processes": acc.num_processes}, tmp, "trainer")
    acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        ckpt.seal(tmp)
        final = ckpt.publish(tmp, root, run.step, run.cfg.train.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def load_checkpoint(run: Run, folder: Path) -> None:
    from safetensors.torch import load_file

    acc = run.accelerator
    trainer = ckpt.load_tree(folder, "trainer")
    if trainer["num_processes"] != acc.num_processes:
        raise RelationError(
            f"checkpoint '{folder}' was written by {trainer['num_processes']} processes; resume with the same number"
        )
    missing = unwrapped(run).load_state_dict(load_file(folder / "trainable.safetensors"), strict=False)
    if missing.unexpected_keys:
        raise RelationError(f"checkpoint '{folder}' does not fit this model: {missing.unexpected_keys[:3]}")
    if uses_native_state(acc):
        acc.load_state(str(folder / "accelerate"))
    else:
        run.optimizer.load_state_dict(ckpt.load_tree(folder, "optimizer"))
        run.scheduler.load_state_dict(ckpt.load_tree(folder, "scheduler"))
    if run.ema is not None:
        run.ema.load_state_dict(ckpt.load_tree(folder, "ema"))
    mine = ckpt.load_tree(folder, f"process_{acc.process_index}")
    ckpt.set_rng_state(mine["rng"], run.generator)
    run.plan.load_state(mine["plan"])
    run.step = int(trainer["step"])
    if acc.is_main_process:
        console.print(f"resumed from {folder} at step {run.step}")
