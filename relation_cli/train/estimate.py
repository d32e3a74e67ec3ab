"""``relation train --dry-run``: check config, data and output paths, count parameters, estimate memory.

Nothing is loaded but configuration files: the models are built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RelationConfig
from ..errors import RelationError

GIB = 1024**3
RELEASED_TOKENS = 128
"""Exemplar tokens per image of the authors' released ``ip_adapter-*.bin`` (SPEC 2.1): how a ``.bin`` start
adapter is counted by ``--dry-run``, which does not read the file."""


@dataclass
class Estimate:
    rows: int
    trainable: dict[str, int]
    frozen: int
    weight_bytes: int
    training_bytes: int
    activation_bytes: int | None  # None: not estimated (train.mode=vae)
    baseline_bytes: int = 0
    resume_from: str | None = None  # --resume: the checkpoint the run would continue from, and its step
    released_adapter: bool = False  # the start adapter is a released .bin, counted at the released layout

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.training_bytes + (self.activation_bytes or 0) + self.baseline_bytes

    def lines(self) -> list[str]:
        t = ", ".join(f"{k} {v / 1e6:,.1f}M" for k, v in self.trainable.items())
        return [f"resume: from {self.resume_from}"] * (self.resume_from is not None) + [
            f"data: {self.rows} rows",
            f"trainable parameters: {sum(self.trainable.values()) / 1e6:,.1f}M ({t})"
            + (f"; the .bin adapter counted at the released {RELEASED_TOKENS} tokens (it is read when the run "
               "loads it)" if self.released_adapter else ""),
            f"frozen parameters: {self.frozen / 1e6:,.1f}M",
            f"memory estimate per process: {self.total_bytes / GIB:.1f} GiB = weights {self.weight_bytes / GIB:.1f}"
            f" + trainable state {self.training_bytes / GIB:.1f} + "
            + (f"activations ~{self.activation_bytes / GIB:.1f}" if self.activation_bytes is not None
               else "activations (not estimated for train.mode=vae)")
            + (f" + process baseline {self.baseline_bytes / GIB:.1f}" if self.baseline_bytes else ""),
        ]


def _meta_pipeline_parts(cfg: RelationConfig):
    """Transformer, VAE, text encoders (CLIP and T5; FLUX.2 [klein]: Qwen3 and ``None``) and SigLIP of the
    configured sources, built on the meta device from their configs alone."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, AutoencoderKLFlux2, Flux2Transformer2DModel, FluxTransformer2DModel
    from transformers import (
        AutoConfig,
        CLIPTextModel,
        Qwen3ForCausalLM,
        SiglipVisionConfig,
        T5EncoderModel,
    )

    from ..klein import RelationKleinPipeline
    from ..model import base_pipeline_class, resolve_sources

    src = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False)
    kw = {"local_files_only": cfg.model.local_files_only}
    # the pipeline the run would load: refuses model.query_ids clone/kontext on klein as loading does
    klein = base_pipeline_class(src.base, cfg.model.local_files_only, cfg.model.query_ids) is RelationKleinPipeline
    dit, autoencoder = (Flux2Transformer2DModel, AutoencoderKLFlux2) if klein else (FluxTransformer2DModel, AutoencoderKL)
    try:
        with init_empty_weights():
            transformer = dit.from_config(dit.load_config(src.base, subfolder="transformer", **kw))
            vae = autoencoder.from_config(autoencoder.load_config(src.base, subfolder="vae", **kw))
            text = AutoConfig.from_pretrained(src.base, subfolder="text_encoder", **kw)
            clip = Qwen3ForCausalLM(text) if klein else CLIPTextModel(text)
            t5 = None if klein else T5EncoderModel(AutoConfig.from_pretrained(src.base, subfolder="text_encoder_2", **kw))
        siglip = AutoConfig.from_pretrained(src.image_encoder, **kw)
    except (OSError, ValueError) as e:
        raise RelationError(f"cannot read model configs: {str(e).splitlines()[0][:200]}") from None
    vision = siglip.vision_config if hasattr(siglip, "vision_config") else siglip
    with init_empty_weights():
        from transformers import SiglipVisionModel

        image_encoder = SiglipVisionModel(SiglipVisionConfig(**vision.to_dict()))
    return transformer, vae, clip, t5, image_encoder


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_parameters(transformer: torch.nn.Module, targets: list[str], rank: int) -> int:
    total = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def estimate(cfg: RelationConfig, resume: bool = False, rows: list | None = None) -> Estimate:
    """Check the training config's data and output folder as the run would (a folder holding an earlier run's
    checkpoints is refused without ``resume``; with it, an intact checkpoint must be there, which
    :func:`~relation_cli.train.resume.continue_config` accepts), then estimate
    memory (:func:`estimate_parts`). ``rows``: the data's rows when already read and checked (a list that
    is not empty), else they are read here. Raises RelationError."""
    from . import checkpoint as ckpt
    from .data import load_rows
    from .recipe import check_output_dir
    from .resume import continue_config

    t = cfg.train
    out = check_output_dir(Path(t.output_dir), resume)
    folder = None
    if resume:  # the resume's own checks too: a change it refuses, a checkpoint past train.steps
        folder = ckpt.require_resumable(out / "checkpoints", warn=lambda message: None)
        continue_config(cfg, folder, warn=lambda message: None)
    rows = rows or load_rows(t.data_files, cfg.data.max_image_pixels)
    parts = _meta_pipeline_parts(cfg)
    start = _start_adapter_path(cfg)
    adapter = check_adapter_fits(start, parts[0], parts[4].config.hidden_size)
    if t.mode == "lora" and not cfg.lora.paths:  # a new LoRA on these targets (a given one keeps its own)
        from .job import check_lora_targets

        check_lora_targets(cfg, parts[0])
    est = estimate_parts(cfg, len(rows), *parts, adapter=adapter)
    est.baseline_bytes = process_baseline_bytes(cfg)
    est.resume_from = f"{folder} (step {ckpt.step_of(folder)})" if folder is not None else None
    est.released_adapter = start is not None and start.is_file()
    return est


def check_adapter_fits(path: Path | None, transformer, image_embed_dim: int):
    """The start adapter ``path`` (:func:`_start_adapter_path`; a relation folder) against the (meta)
    ``transformer`` and the image encoder's width ``image_embed_dim`` from its ``config.json`` alone, as loading
    would check it (:meth:`RelationAdapter.check_compatible`): e.g. a FLUX.1 adapter on a FLUX.2 [klein] base. A
    released ``.bin`` is checked when the run loads it.
    Returns that adapter on the meta device (what trains: its own ``num_tokens`` and role embeddings, not
    the config's ``adapter.*`` for a new one); for a released ``.bin`` (not read here: a pickle of gigabytes)
    one of the released layout, :data:`RELEASED_TOKENS` tokens and no role embeddings; None for a new adapter.
    Raises RelationError."""
    from ..adapter import RelationAdapter

    if path is None:
        return None
    if not (path / RelationAdapter.config_name).is_file():  # a released .bin (adapter_problem passed it)
        with torch.device("meta"):
            return RelationAdapter.for_transformer(transformer, image_embed_dim, RELEASED_TOKENS)
    try:
        config = RelationAdapter.load_config(path)
    except (OSError, ValueError) as e:
        raise RelationError(f"adapter '{path}': cannot read its config ({str(e).splitlines()[0][:160]})") from None
    with torch.device("meta"):
        adapter = RelationAdapter.from_config(config)
    adapter.check_compatible(transformer, path, image_embed_dim)
    return adapter


def _start_adapter_path(cfg: RelationConfig) -> Path | None:
    """The adapter training starts from (``adapter.path``, or the demo's with ``model.base=demo``), or None."""
    from ..model import resolve_sources

    path = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False).adapter
    return None if path is None else Path(path)


def process_baseline_bytes(cfg: RelationConfig) -> int:
    """Bytes a training process holds before loading any weight, when it trains on the CPU; else 0.

    On the CPU the weights live in the process's own memory beside the imported libraries (torch,
    diffusers, transformers, accelerate: about 0.5-0.7 GB resident on Linux), so the estimate adds this
    process's resident set (``VmRSS`` of ``/proc/self/status``) measured here, after those imports and
    before any weight is loaded (``relation train --dry-run`` is a fresh process; a long-lived caller
    counts what it already holds). On a GPU the figure is device memory, which the libraries do not use.
    Where ``/proc`` is absent (not Linux) it is 0. Checked against a measured step's peak RSS in
    ``tests/test_full_widths.py``.
    """
    from ..model import resolve_device

    if resolve_device(cfg.model.device).type != "cpu":
        return 0
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kib * 1024


def estimate_parts(cfg: RelationConfig, rows: int, transformer, vae, clip, t5, image_encoder, adapter=None) -> Estimate:
    """The memory arithmetic of :func:`estimate` for given (meta) components; no file is read.
    ``adapter``: the start adapter (:func:`check_adapter_fits`); None: a new one as training builds it
    (``adapter.num_tokens``, ``adapter.role_embeddings``).
    ``model.memory=fp8_storage`` counts the frozen transformer at 1 byte per weight."""
    from ..adapter import RelationAdapter
    from ..model import resolve_device, resolve_mixed_precision

    t = cfg.train
    if adapter is None:
        with torch.device("meta"):
            adapter = RelationAdapter.for_transformer(
                transformer, image_encoder.config.hidden_size, cfg.adapter.num_tokens, cfg.adapter.role_embeddings
            )
    trainable = {"vae": count(vae)} if t.mode == "vae" else {"adapter": count(adapter)}
    if t.mode == "lora":
        trainable["lora"] = lora_parameters(transformer, cfg.lora.targets, cfg.lora.rank)
    elif t.mode == "full":
        trainable["transformer"] = count(transformer)
    if t.train_image_encoder and t.mode != "vae":  # vae mode trains the VAE alone
        trainable["image_encoder"] = count(image_encoder)
    if t.mode == "vae":  # the VAE alone trains; the rest of the base is loaded, frozen
        frozen_modules = [m for m in (clip, t5, image_encoder, transformer) if m is not None]
    else:
        frozen_modules = [m for m in (vae, clip, t5) if m is not None] + ([] if t.train_image_encoder else [image_encoder])
        frozen_modules += [] if t.mode == "full" else [transformer]
    frozen = sum(count(m) for m in frozen_modules)
    fp8 = cfg.model.memory == "fp8_storage" and t.mode in ("lora", "adapter")  # the frozen transformer at 1 byte

    half = resolve_mixed_precision(t.mixed_precision, resolve_device(cfg.model.device)) != "no"
    per = 2 if half else 4
    n_train = sum(trainable.values())
    master = 2 if t.full_bf16 else 4  # trainable weights and their gradients: float32, or bf16 with full_bf16
    # Adam's two moments: torch's in the weights' dtype; bitsandbytes' 8-bit ones 1 byte each (+ a float32 scale per
    # 256 values). An H200 measured 12.3 GiB less with adamw8bit than AdamW for 1.57B trainable parameters (README).
    state = 2 if t.optimizer == "adamw8bit" else 2 * master
    c = transformer.config
    side = cfg.data.resolution // 16
    tokens = cfg.infer.max_sequence_length + 2 * side * side  # text + target + query tokens
    layers, width = c.num_layers + c.num_single_layers, c.num_attention_heads * c.attention_head_dim
    # ~34 bytes per token and channel per layer in half precision without attention scores (Korthikanti
    # et al. 2022); with checkpointing only each layer's input is kept, plus one layer being recomputed.
    per_layer = 34 * tokens * width * (per // 2) * t.batch_size
    keep = 2 * tokens * width * per * t.batch_size
    activations = (layers * keep + per_layer) if t.gradient_checkpointing else layers * per_layer
    if t.mode == "vae":
        activations = None  # the transformer does not run; the VAE's own are not modelled
    return Estimate(
        rows=rows,
        trainable=trainable,
        frozen=frozen,
        weight_bytes=frozen * per - (count(transformer) * (per - 1) if fp8 else 0),
        training_bytes=n_train * (master + master + state),  # weights + grads + optimizer state
        activation_bytes=activations,
    )
