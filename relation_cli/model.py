"""Builders from config to objects: device, dtype, and the whole FLUX + SigLIP + adapter + LoRA pipeline.

Model classes never see a config; these functions read it and pass flat arguments.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from .checks import SIGLIP_DEFAULT, source_problem
from .checks import looks_local as _looks_local  # noqa: F401 (the one rule that tells a hub id from a folder)
from .config import DEMO, DEMO_DIR, AdapterSection, LoraSection, ModelSection, RelationConfig
from .errors import RelationError, first_line

log = logging.getLogger(__name__)


def demo_dir() -> Path:
    """The small model shipped inside the package (``model.base: demo``)."""
    return DEMO_DIR


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RelationError(f"model.device '{name}': not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RelationError(f"model.device '{name}': CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RelationError(f"model.device '{name}': MPS is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass(frozen=True)
class ModelSources:
    """Where each part comes from, after defaults are applied: hub ids or local paths."""

    base: str
    image_encoder: str
    adapter: str | None
    lora: str | None


def resolve_sources(
    model: ModelSection, adapter: AdapterSection, lora: LoraSection, require_adapter: bool = True
) -> ModelSources:
    """Apply the demo defaults and check local paths exist, before anything heavy is loaded.

    Training passes ``require_adapter=False``: without ``adapter.path`` it starts a new adapter.
    """
    if model.base == DEMO:
        demo = demo_dir()
        if not (demo / "base" / "model_index.json").is_file():
            raise RelationError(f"the embedded demo model is missing from {demo}; run `make demo-model`")
        lora_default = demo / "lora"
        sources = ModelSources(
            base=str(demo / "base"),
            image_encoder=model.image_encoder or str(demo / "image_encoder"),
            adapter=adapter.path or str(demo / "adapter"),
            lora=lora.path or (str(lora_default) if lora_default.is_dir() else None),
        )
    else:
        sources = ModelSources(model.base, model.image_encoder or SIGLIP_DEFAULT, adapter.path, lora.path)
    _check_source("model.base", sources.base, "model_index.json")
    _check_source("model.image_encoder", sources.image_encoder, "config.json")
    if sources.adapter is None and adapter.scale != 0 and require_adapter:
        raise RelationError("adapter.path is empty: pass --adapter (the released ip_adapter-*.bin or a relation adapter)")
    if sources.adapter is not None and not Path(sources.adapter).exists():
        raise RelationError(f"adapter '{sources.adapter}': not found")
    if sources.lora is not None and not Path(sources.lora).exists():
        raise RelationError(f"lora '{sources.lora}': not found")
    return sources


def _check_source(key: str, name: str, marker: str) -> None:
    problem = source_problem(key, name, marker)
    if problem:
        raise RelationError(problem)


def load_pipeline(cfg: RelationConfig, device: torch.device | None = None):
    """The ready-to-run :class:`RelationPipeline` described by ``cfg`` (LoRA fused, adapter installed)."""
    sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora)
    device = device or resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    pipe = load_base(sources, dtype, cfg.model.local_files_only)
    if sources.lora is not None:
        apply_lora(pipe, sources.lora, fuse=cfg.lora.fuse)
    from . import runtime

    runtime.prepare_weights(pipe, cfg.model, dtype, device, plain_linears=cfg.lora.fuse or sources.lora is None)
    if sources.adapter is not None:
        from .weights import load_adapter

        adapter = load_adapter(sources.adapter, pipe.transformer.config.attention_head_dim)
        pipe.set_relation_adapter(adapter.to(dtype=dtype))
    pipe = runtime.place(pipe, cfg.model, device)
    runtime.speed_up(pipe, cfg.model)
    return pipe


def load_base(sources: ModelSources, dtype: torch.dtype, local_files_only: bool = False):
    """FLUX components + SigLIP through ``from_pretrained``: hub ids and folders take the same path."""
    from transformers import AutoImageProcessor, SiglipVisionModel

    from .pipeline import RelationPipeline

    try:
        image_encoder = SiglipVisionModel.from_pretrained(
            sources.image_encoder, dtype=dtype, local_files_only=local_files_only
        )
        # The PIL backend reproduces the authors' preprocessing exactly, torchvision installed or not.
        feature_extractor = AutoImageProcessor.from_pretrained(
            sources.image_encoder, backend="pil", local_files_only=local_files_only
        )
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        raise RelationError(f"model.image_encoder '{sources.image_encoder}': {load_problem(e)}") from None
    try:
        pipe = RelationPipeline.from_pretrained(
            sources.base,
            torch_dtype=dtype,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        raise RelationError(f"model.base '{sources.base}': {load_problem(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_problem(err: Exception) -> str:
    """What went wrong in ``from_pretrained``: a refused pickle (libraries load them with weights_only=True)."""
    if isinstance(err, pickle.UnpicklingError):
        from .weights import refusal

        return f"a weights file was {refusal(err)}"
    return f"cannot load ({first_line(err)})"


def apply_lora(pipe, path: str, fuse: bool = True) -> None:
    """Load a diffusers-format LoRA into the transformer; fuse it (scale 1) and drop the peft layers."""
    from .weights import read_lora

    state = read_lora(path)
    try:
        pipe.load_lora_weights(state, adapter_name="relation")
    except (ValueError, RuntimeError, KeyError) as e:
        raise RelationError(f"lora '{path}': does not fit this transformer ({first_line(e)})") from None
    if fuse:
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()

