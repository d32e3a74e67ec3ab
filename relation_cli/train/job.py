"""What a training job supplies to the shared recipe, and the RelationAdapter job (modes lora, full, adapter).

A job builds the pipeline with its trainable parts, wraps them in one module, defines the loss of one
micro-batch, validates, and exports; :mod:`relation_cli.train.recipe` does the rest (accelerate,
optimizer, data, loop, checkpoints). The other job is VAE pre-training (:mod:`relation_cli.train.vae`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ..config import RelationConfig
from ..errors import RelationError
from ..fs import atomic_dir
from .model import RelationTrainModel
from .step import flow_loss

if TYPE_CHECKING:
    from .recipe import Run

LORA_NAME = "relation"


class Job(Protocol):
    exemplars: bool
    """Whether the dataset prepares the exemplar pair for the image encoder."""

    def build(self, cfg: RelationConfig, dtype: torch.dtype):
        """``(pipe, sources)``: the pipeline in ``dtype`` with ``requires_grad`` set on what trains."""

    def model(self, pipe, cfg: RelationConfig) -> torch.nn.Module:
        """One module holding every trained part, with a ``trainable_state()`` (what checkpoints keep)."""

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        """The scalar loss of one micro-batch; all randomness from ``run.generator``."""

    def validate(self, run: Run) -> dict[str, float]:
        """Metrics (and grids under ``run.out / 'validation'``) at ``run.step``."""

    def export(self, run: Run) -> dict[str, str]:
        """Write the trained weights under ``run.out``; returns the ``run:`` entries made (contract A)."""


def job_for(mode: str) -> Job:
    """``train.mode`` -> its job."""
    if mode == "vae":
        from .vae import VaeJob

        return VaeJob()
    return RelationJob()


class RelationJob:
    """The RelationAdapter (and a LoRA, or the whole transformer, or neither) learns the edit (SPEC 2.4)."""

    exemplars = True

    def build(self, cfg: RelationConfig, dtype: torch.dtype):
        return build_components(cfg, dtype)

    def model(self, pipe, cfg: RelationConfig) -> RelationTrainModel:
        trainable_encoder = pipe.image_encoder if cfg.train.train_image_encoder else None
        return RelationTrainModel(pipe.transformer, pipe.relation_adapter, trainable_encoder)

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        return flow_loss(run, batch)

    def validate(self, run: Run) -> dict[str, float]:
        from .validate import run_validation

        return run_validation(run.pipe, run.cfg, run.validation_rows, run.out / "validation", run.step)

    def export(self, run: Run) -> dict[str, str]:
        """``adapter/``; lora: ``lora/pytorch_lora_weights.safetensors``; full: ``base/`` (a whole FLUX folder)."""
        model, out, mode = run.accelerator.unwrap_model(run.model), run.out, run.cfg.train.mode
        with atomic_dir(out / "adapter", replace=True) as tmp:
            model.adapter.save_pretrained(tmp)
        made = {"adapter": "adapter"}
        if mode == "lora":
            save_lora(model.transformer, out / "lora")
            made["lora"] = "lora"
        elif mode == "full":
            save_base(run, out / "base")
            made["base"] = "base"
        return made


def build_components(cfg: RelationConfig, dtype: torch.dtype):
    """Pipeline from the configured sources; a new adapter unless ``adapter.path`` gives a starting point;
    then :func:`make_trainable`. Returns ``(pipe, sources)``."""
    from ..adapter import RelationAdapter
    from ..model import load_base, resolve_sources
    from ..progress import working
    from ..weights import load_adapter

    sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False)
    with working(f"loading {sources.base!r}"):
        pipe = load_base(sources, dtype, cfg.model.local_files_only, cfg.model.query_ids)
    t = cfg.train
    transformer = pipe.transformer
    if sources.adapter is not None:
        adapter = load_adapter(sources.adapter, transformer.config.attention_head_dim)
        adapter.check_compatible(transformer, sources.adapter, pipe.image_encoder.config.hidden_size)
    else:
        torch.manual_seed(t.seed)
        adapter = RelationAdapter.for_transformer(
            transformer, pipe.image_encoder.config.hidden_size, cfg.adapter.num_tokens, cfg.adapter.role_embeddings
        )
    make_trainable(pipe, adapter, cfg, dtype, sources.loras)
    return pipe, sources


def make_trainable(pipe, adapter, cfg: RelationConfig, dtype: torch.dtype, loras=()) -> None:
    """Set what trains in ``train.mode`` and install ``adapter`` (not yet installed) on ``pipe``: every network
    frozen; lora mode: a new peft LoRA (``lora.rank``, ``lora.alpha``, ``lora.targets``; gaussian init, seed
    ``train.seed + 1``), or the given ``loras`` (``LoraFile`` items) continued; full mode: the whole transformer
    (the ``loras`` fused in first); adapter mode: the ``loras`` fused into the frozen base. Then the whole
    adapter and, with ``train.train_image_encoder``, SigLIP. The benchmarks' training step calls it too.

    ``model.memory=fp8_storage`` (lora and adapter modes) stores the frozen transformer's weights in float8
    (:func:`relation_cli.runtime.store_in_fp8`), after the LoRA is added and before the adapter is installed,
    so that neither is cast: about 1 byte instead of 2 per frozen transformer parameter.
    """
    from ..lora import apply_loras, continue_lora

    t = cfg.train
    transformer = pipe.transformer
    for module in frozen_parts(pipe):
        module.requires_grad_(False)
    if t.mode == "lora":
        if loras:  # continue training that LoRA (its own rank and alpha), not a new one on top
            continue_lora(pipe, loras, LORA_NAME, cfg.lora.allow_partial)
        else:
            from peft import LoraConfig

            check_lora_targets(cfg, transformer)
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
        if loras:  # full / adapter mode start from the base with the LoRAs merged in
            apply_loras(pipe, loras, cfg.lora.scale, fuse=True, allow_partial=cfg.lora.allow_partial)
        if t.mode == "full":
            transformer.requires_grad_(True)
    if cfg.model.memory == "fp8_storage":  # the frozen transformer in float8; LoRA layers and the adapter are not
        from ..runtime import store_in_fp8

        store_in_fp8(transformer, dtype)
    pipe.set_relation_adapter(adapter)
    adapter.requires_grad_(True)
    if t.train_image_encoder:
        pipe.image_encoder.requires_grad_(True)


def frozen_parts(pipe) -> list:
    """The pipeline's networks that start frozen: VAE, text encoder(s) (FLUX.2 [klein] has one), SigLIP,
    transformer."""
    parts = (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.image_encoder, pipe.transformer)
    return [m for m in parts if m is not None]


def save_lora(transformer, path: Path) -> None:
    """diffusers' LoRA file, with peft's LoraConfig of the trained LoRA as its adapter metadata
    (``transformer_lora_adapter_metadata``): rank and ``lora_alpha`` travel with the weights, so every
    loader applies them at the trained scale alpha/rank."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(transformer, adapter_name=LORA_NAME)
    metadata = transformer.peft_config[LORA_NAME].to_dict()
    with atomic_dir(path, replace=True) as tmp:
        FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)


def save_base(run: Run, path: Path) -> None:
    """A complete base folder with the trained transformer (adapter processors detached for the save), in the
    base's own layout (``pipe.base_pipeline()``: FLUX.1 Kontext's when it trained with Kontext's query ids,
    so ``model.query_ids: auto`` finds them; ``Flux2KleinPipeline``'s for klein)."""
    p = run.pipe
    detached = p.relation_adapter.detached(p.transformer) if p.relation_adapter is not None else nullcontext()
    with atomic_dir(path, replace=True) as tmp, detached:
        p.base_pipeline().save_pretrained(tmp)


def check_lora_targets(cfg: RelationConfig, transformer) -> None:
    """``lora.targets`` names linear layers of ``transformer`` (a real or meta one), matched as peft's
    ``target_modules`` list matches: the whole module name or its ending after a dot (``attn.to_q`` matches
    ``transformer_blocks.0.attn.to_q``). As in peft, entries a base lacks are passed over when others match
    (the paper's ``ff.*`` targets on FLUX.2 [klein]); none matching is an error before anything loads, where
    peft would fail after loading.

    Raises:
        RelationError: no entry matches; names the entries and a few layer names that would match.
    """
    linear = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
    missing = [t for t in cfg.lora.targets if not any(n == t or n.endswith("." + t) for n in linear)]
    if len(missing) == len(cfg.lora.targets):  # as peft: targets some bases lack (klein's ff) are passed over
        first = [n for n in linear if n.startswith("transformer_blocks.0.")] or linear
        shown = sorted({n.split(".", 2)[-1] for n in first})[:4]
        raise RelationError(f"lora.targets: {', '.join(map(repr, missing))} name{'s' if len(missing) == 1 else ''} "
                            f"no linear layer of the transformer (names end like {', '.join(shown)})")  # fmt: skip
