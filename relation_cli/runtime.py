"""Speed and memory options for inference, all taken from diffusers, torch and torchao.

Applied by :func:`relation_cli.model.load_pipeline` in an order that keeps the adapter intact:
LoRA fused -> q/k/v fused, weights quantized or stored in fp8 -> adapter installed (so it is never
quantized or cast) -> placement (device or offloading) -> attention backend, compile, step cache.
"""

from __future__ import annotations

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
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if model.quantize != "none":
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        quantize_(transformer, Int8WeightOnlyConfig() if model.quantize == "int8" else Float8WeightOnlyConfig())


def place(pipe, model: ModelSection, device: torch.device):
    """Move the pipeline to ``device``, or set up offloading to it."""
    if model.memory in ("model_offload", "sequential_offload", "group_offload"):
        if device.type == "cpu":  # model.device=auto on a machine without a GPU (check_config saw only the name)
            raise RelationError(f"model.memory={model.memory} offloads to a GPU; this run is on the CPU")
        if model.memory == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        elif model.memory == "sequential_offload":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.enable_group_offload(
                onload_device=device, offload_type="leaf_level", use_stream=device.type == "cuda"
            )
        return pipe
    return pipe.to(device)


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
