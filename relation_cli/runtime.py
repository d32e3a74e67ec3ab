"""Speed and memory options for inference, all taken from diffusers, torch and torchao.

Applied by :func:`relation_cli.model.load_pipeline` in an order that keeps the adapter intact:
LoRA fused -> q/k/v fused, weights quantized or stored in fp8 -> adapter installed (so it is never
quantized or cast) -> placement (device or offloading) -> attention backend, compile, step cache.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .config import ModelSection
from .errors import RelationError


def prepare_weights(
    pipe, model: ModelSection, dtype: torch.dtype, device: torch.device, plain_linears: bool = True
) -> None:
    """Transformer weight transforms that must happen before the adapter is installed.

    ``plain_linears=False`` (an unfused LoRA is active): q/k/v fusion is skipped. Settings that cannot go
    together (fp8 or quantization with an unfused LoRA, a missing torchao) were refused by
    :func:`relation_cli.checks.check_config` before anything loaded.
    """
    transformer = pipe.transformer
    fuse = device.type != "cpu" if model.fuse_qkv == "auto" else model.fuse_qkv
    if fuse and plain_linears:
        transformer.fuse_qkv_projections()
    if model.memory == "fp8_storage":
        store_in_fp8(transformer, dtype)
    if model.quantize != "none":
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        quantize_(transformer, Int8WeightOnlyConfig() if model.quantize == "int8" else Float8WeightOnlyConfig())


def store_in_fp8(transformer, dtype: torch.dtype) -> None:
    """``model.memory=fp8_storage``: every weight of ``transformer`` stored in float8 (e4m3) and cast to ``dtype``
    around each layer's forward (diffusers' ``enable_layerwise_casting``; norms, embeddings and peft's LoRA
    layers are skipped by its default patterns). Used by inference and, for the frozen transformer, by
    ``relation train``. Call it before the adapter is installed (or with it detached): its processors are
    submodules of the attention layers and must stay in full precision."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)


OFFLOAD_MODES = ("model_offload", "sequential_offload", "group_offload")


def place(pipe, model: ModelSection, device: torch.device):
    """Move the pipeline to ``device``, or set up offloading to it (:func:`enable_offload`)."""
    if model.memory in OFFLOAD_MODES:
        if device.type == "cpu":  # model.device=auto on a machine without a GPU (check_config saw only the name)
            raise RelationError(f"model.memory={model.memory} offloads to a GPU; this run is on the CPU")
        enable_offload(pipe, model.memory, device, model.offload_type)
        return pipe
    return pipe.to(device)


def enable_offload(pipe, memory: str, device: torch.device, offload_type: str = "leaf_level") -> None:
    """diffusers' offloading of every component, made to hold with the adapter installed.

    The adapter's processors are submodules of the transformer's attention layers: they are hooked once,
    as part of the transformer (the adapter's own hooks cover its projection only), and compute their
    exemplar keys/values inside the transformer's forward, where the hooks have put them on the device
    (``RelationAdapter.kv_in_layers``). The projection runs through the adapter's ``forward``, which every
    hook wraps. ``offload_type`` (group_offload): ``leaf_level`` or ``block_level`` (one block at a time).
    """
    adapter = pipe.relation_adapter
    if adapter is not None:
        adapter.kv_in_layers = True
    with adapter.projection_only() if adapter is not None else nullcontext():
        if memory == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        elif memory == "sequential_offload":
            pipe.enable_sequential_cpu_offload(device=device)
            hook_attention_whole(pipe.image_encoder)
        else:
            # SigLIP's pooling head (nn.MultiheadAttention) reads out_proj's weights without calling it,
            # which leaf-level groups miss: the image encoder (0.4B) stays on the device.
            pipe.enable_group_offload(
                onload_device=device, offload_type=offload_type, use_stream=device.type == "cuda",
                num_blocks_per_group=1 if offload_type == "block_level" else None,
                exclude_modules=["image_encoder"] if offload_type == "leaf_level" else None,
            )  # fmt: skip


def hook_attention_whole(module: torch.nn.Module | None) -> None:
    """Sequential offload hooks every module that holds weights, and moves them only in its ``forward``;
    ``nn.MultiheadAttention`` (SigLIP's pooling head) reads its ``out_proj`` weights without calling it.
    Such a module gets one accelerate hook that places its submodules too."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_submodules

    for attention in [m for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)] if module else []:
        old = attention._hf_hook
        remove_hook_from_submodules(attention)
        hook = AlignDevicesHook(
            old.execution_device, offload=True, weights_map=old.weights_map, place_submodules=True,
            offload_buffers=old.offload_buffers,
        )  # fmt: skip
        add_hook_to_module(attention, hook)


def speed_up(pipe, model: ModelSection) -> None:
    """Options that act on the forward pass: attention backend, regional compile, step caching."""
    transformer = pipe.transformer
    if model.attention_backend:
        try:
            transformer.set_attention_backend(model.attention_backend)
        except (ValueError, RuntimeError, ImportError) as e:
            raise RelationError(f"model.attention_backend={model.attention_backend}: {str(e).splitlines()[0][:160]}") from None
    if model.compile:
        transformer.compile_repeated_blocks(fullgraph=False, dynamic=True)
    if model.cache == "first_block":
        from diffusers.hooks import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=model.cache_threshold))
    elif model.cache == "taylorseer":
        from diffusers.hooks import TaylorSeerCacheConfig

        transformer.enable_cache(TaylorSeerCacheConfig())
