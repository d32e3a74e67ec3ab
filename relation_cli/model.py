"""Builders from config to objects: device, dtype, and the whole FLUX + SigLIP + adapter + LoRA pipeline.

Model classes never see a config; these functions read it and pass flat arguments.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from .checks import ModelSources, resolve_sources  # noqa: F401 (torch-free: --dry-run resolves sources too)
from .checks import looks_local as _looks_local  # noqa: F401 (the one rule that tells a hub id from a folder)
from .config import DEMO, DEMO_DIR, RelationConfig
from .errors import RelationError, first_line
from .progress import working

log = logging.getLogger(__name__)


def demo_dir() -> Path:
    """The small model shipped inside the package (``model.base: demo``)."""
    return DEMO_DIR


def resolve_device(name: str = "auto") -> torch.device:
    """``model.device`` -> the device: the one rule of infer, train and eval (auto: cuda, then mps, then cpu).

    Raises :class:`RelationError` for a name torch does not know or a device this machine lacks.
    """
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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RelationError(f"model.device '{name}': this machine has {count} CUDA device{'s' if count > 1 else ''} "
                            f"(cuda:0 to cuda:{count - 1})")  # fmt: skip
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RelationError(f"model.device '{name}': MPS is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``model.dtype`` on ``device`` (from :func:`resolve_device`): auto is bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_mixed_precision(name: str, device: torch.device) -> str:
    """``train.mixed_precision`` for accelerate on ``device``, by the rule of :func:`resolve_dtype`: auto is
    bf16 on CUDA and no elsewhere (so ``--device cpu`` on a GPU machine trains in float32)."""
    if name != "auto":
        return name
    return "bf16" if resolve_dtype("auto", device) == torch.bfloat16 else "no"


def build_process_state(factory, device_name: str, **kwargs):
    """accelerate's ``Accelerator`` or ``PartialState`` (``factory``) on the device of :func:`resolve_device`.

    One process: exactly that device, ``cuda:N`` included (accelerate reads ``ACCELERATE_TORCH_DEVICE``
    while the state is made; the variable is restored after). Several processes (``accelerate launch``,
    torchrun): each takes its local GPU, so a device with an index is refused. A CPU device passes
    ``cpu=True``, which also makes processes launched on a machine without GPUs form a gloo group.
    Raises :class:`RelationError` for an unknown or unavailable device.
    """
    device = resolve_device(device_name)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and device.index is not None:
        raise RelationError(
            f"model.device '{device_name}': under a multi-process launch each process uses its own GPU; use auto or cuda"
        )
    pinned = str(device) if device.type != "cpu" and not launched else None
    saved = os.environ.get("ACCELERATE_TORCH_DEVICE")
    if pinned:
        os.environ["ACCELERATE_TORCH_DEVICE"] = pinned
    try:
        return factory(cpu=device.type == "cpu", **kwargs)
    finally:
        if pinned and saved is None:
            os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
        elif pinned:
            os.environ["ACCELERATE_TORCH_DEVICE"] = saved


def truthful_config(cfg: RelationConfig, pipe) -> RelationConfig:
    """``cfg`` as a saved config should tell it: ``adapter.num_tokens`` and ``adapter.role_embeddings`` are the
    settings of a *new* adapter, and a loaded adapter (``pipe.relation_adapter``) brings its own."""
    adapter = getattr(pipe, "relation_adapter", None)
    if adapter is None:
        return cfg
    real = {"num_tokens": adapter.config.num_tokens, "role_embeddings": bool(adapter.config.role_embeddings)}
    if all(getattr(cfg.adapter, k) == v for k, v in real.items()):
        return cfg
    cfg = cfg.model_copy(deep=True)
    for key, value in real.items():
        setattr(cfg.adapter, key, value)
    return cfg


def load_pipeline(cfg: RelationConfig, device: torch.device | None = None):
    """The ready-to-run pipeline described by ``cfg`` (LoRA fused, adapter installed): a
    :class:`~relation_cli.pipeline.RelationPipeline`, or a :class:`~relation_cli.klein.RelationKleinPipeline`
    for a FLUX.2 [klein] base (:func:`base_pipeline_class`)."""
    sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora)
    device = device or resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    with working(f"loading {'the embedded demo model' if cfg.model.base == DEMO else repr(sources.base)}"):
        return _load_pipeline(cfg, sources, device, dtype)


def _load_pipeline(cfg: RelationConfig, sources: ModelSources, device: torch.device, dtype: torch.dtype):
    """:func:`load_pipeline`'s work, once the sources, device and dtype are known."""
    pipe = load_base(sources, dtype, cfg.model.local_files_only, cfg.model.query_ids)
    if sources.loras:
        from .lora import apply_loras

        apply_loras(pipe, sources.loras, cfg.lora.scale, cfg.lora.fuse, cfg.lora.allow_partial)
    from . import runtime

    runtime.prepare_weights(pipe, cfg.model, dtype, device, plain_linears=cfg.lora.fuse or not sources.loras)
    if sources.adapter is not None:
        from .weights import load_adapter

        adapter = load_adapter(sources.adapter, pipe.transformer.config.attention_head_dim)
        pipe.set_relation_adapter(adapter.to(dtype=dtype), sources.adapter)
    pipe = runtime.place(pipe, cfg.model, device)
    runtime.speed_up(pipe, cfg.model)
    return pipe


def size_rules(cfg: RelationConfig) -> tuple[int, int]:
    """``(multiple, min_side)`` of ``cfg``'s base, read from its configs without loading weights: the size
    step ``2 * vae_scale_factor`` (16 for FLUX, 8 for the demo; FluxPipeline: ``vae_scale_factor = 2 **
    (len(block_out_channels) - 1)``), and the smallest working side of its pipeline class (64 for FLUX.2
    [klein], 0 otherwise): what ``pipe.size_multiple`` and ``pipe.min_working_side`` are once loaded.
    Raises ``RelationError`` when a config cannot be read."""
    from diffusers import AutoencoderKL

    base = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False).base
    try:
        vae = AutoencoderKL.load_config(base, subfolder="vae", local_files_only=cfg.model.local_files_only)
    except (OSError, ValueError) as e:
        raise RelationError(f"model.base '{base}': cannot read the VAE's config ({first_line(e)})") from None
    pipeline_class = base_pipeline_class(base, cfg.model.local_files_only, cfg.model.query_ids)
    return 2 ** len(vae["block_out_channels"]), pipeline_class.min_working_side


def load_base(sources: ModelSources, dtype: torch.dtype, local_files_only: bool = False, query_ids: str = "auto"):
    """FLUX components + SigLIP through ``from_pretrained``: hub ids and folders take the same path; the
    pipeline class follows the base's model_index.json (:func:`base_pipeline_class`).

    ``query_ids`` (``model.query_ids``) sets a FLUX.1 pipeline's query position ids; ``auto`` reads the base.
    Raises ``RelationError`` for an unreadable base or encoder, or a query_ids a klein base cannot take.
    """
    from transformers import AutoImageProcessor, SiglipVisionModel

    pipeline_class = base_pipeline_class(sources.base, local_files_only, query_ids)

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
        pipe = pipeline_class.from_pretrained(
            sources.base,
            torch_dtype=dtype,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        raise RelationError(f"model.base '{sources.base}': {load_problem(e)}") from None
    pipe.set_progress_bar_config(disable=True)
    from .pipeline import RelationPipeline

    if isinstance(pipe, RelationPipeline):  # FLUX.1: its query ids (klein's are its own)
        pipe.query_ids = query_ids if query_ids != "auto" else auto_query_ids(sources.base, local_files_only)
    return pipe


KONTEXT_PIPELINES = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")


def base_class_name(base: str, local_files_only: bool = False) -> str | None:
    """The ``_class_name`` of the base's model_index.json (e.g. ``FluxPipeline``, ``Flux2KleinPipeline``)."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(base, local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise RelationError(f"model.base '{base}': cannot read model_index.json ({first_line(e)})") from None
    return index.get("_class_name")


def base_pipeline_class(base: str, local_files_only: bool = False, query_ids: str = "auto"):
    """The pipeline a base loads as, by its model_index.json: :class:`~relation_cli.klein.RelationKleinPipeline`
    for FLUX.2 [klein], :class:`~relation_cli.pipeline.RelationPipeline` for FLUX.1 (dev, Kontext). Raises
    ``RelationError`` for ``model.query_ids`` clone or kontext on klein (klein gives the query its own ids)."""
    from .klein import KLEIN_PIPELINES, RelationKleinPipeline
    from .pipeline import RelationPipeline

    if base_class_name(base, local_files_only) not in KLEIN_PIPELINES:
        return RelationPipeline
    if query_ids != "auto":
        raise RelationError(
            f"model.query_ids '{query_ids}' is for FLUX.1 bases; a FLUX.2 [klein] base gives the query klein's "
            "reference-image ids (use auto)"
        )
    return RelationKleinPipeline


def auto_query_ids(base: str, local_files_only: bool = False) -> str:
    """``model.query_ids: auto``: ``kontext`` when the base's model_index.json names a FLUX.1 Kontext
    pipeline, ``clone`` (the paper's ids) for any other FLUX.1 base."""
    return "kontext" if base_class_name(base, local_files_only) in KONTEXT_PIPELINES else "clone"


def load_problem(err: Exception) -> str:
    """What went wrong in ``from_pretrained``: a refused pickle (libraries load them with weights_only=True)."""
    if isinstance(err, pickle.UnpicklingError):
        from .weights import refusal

        return f"a weights file was {refusal(err)}"
    return f"cannot load ({first_line(err)})"
