"""Training step speed and peak memory: full-size FLUX.1-dev architecture, random weights, no download.

Measures what dominates a training step: the transformer forward + backward through LoRA r128 and
the RelationAdapter, and the AdamW update, at 512x512 (1024 target + 1024 query tokens, 512 text
tokens, 2 x 128 exemplar tokens), batch 1, with and without gradient checkpointing. The frozen
encoders (VAE, T5, CLIP, SigLIP) are replaced by random inputs of their output shapes.

    python benchmarks/train_speed.py                         # GPU, full FLUX.1-dev sizes, bf16
    python benchmarks/train_speed.py --arch tiny --device cpu   # a seconds-long smoke run of this script

Prints a table and writes JSON (``--out``). Figures are medians over ``--steps`` after ``--warmup``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch
from _args import Parser, non_negative_int, positive_int, run_main

FLUX_DEV = dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))  # fmt: skip
TINY = dict(num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))  # fmt: skip


def build(arch: dict, device: torch.device, dtype: torch.dtype, rank: int, image_dim: int, tokens: int):
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    from relation_cli.adapter import RelationAdapter
    from relation_cli.config import PAPER_LORA_TARGETS
    from relation_cli.train.model import RelationTrainModel

    with init_empty_weights():
        transformer = FluxTransformer2DModel(guidance_embeds=True, **arch)
    transformer = transformer.to_empty(device=device)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.02)
    transformer.to(dtype).requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=PAPER_LORA_TARGETS))
    adapter = RelationAdapter.for_transformer(transformer, image_dim, tokens).to(device)
    adapter.install(transformer)
    for n, p in transformer.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(True)
    return RelationTrainModel(transformer, adapter)


def inputs(model, side: int, device, dtype, image_dim: int, text_len: int):
    c = model.transformer.config
    n = (side // 16) ** 2
    grid = side // 16
    ids = torch.zeros(grid, grid, 3)
    ids[..., 1] += torch.arange(grid)[:, None]
    ids[..., 2] += torch.arange(grid)[None, :]
    ids = ids.reshape(-1, 3).to(device, dtype)
    return dict(
        noisy=torch.randn(1, n, c.in_channels, device=device, dtype=dtype),
        query=torch.randn(1, n, c.in_channels, device=device, dtype=dtype),
        sigma=torch.rand(1, device=device, dtype=dtype),
        guidance=torch.ones(1, device=device),
        prompt_embeds=torch.randn(1, text_len, c.joint_attention_dim, device=device, dtype=dtype),
        pooled=torch.randn(1, c.pooled_projection_dim, device=device, dtype=dtype),
        text_ids=torch.zeros(text_len, 3, device=device, dtype=dtype),
        img_ids=torch.cat([ids, ids]),
        keep=torch.ones(1, device=device),
        exemplar_embeds=torch.randn(2, image_dim, device=device),
    ), n


def measure(model, optimizer, batch, target, steps: int, warmup: int, device) -> dict:
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(**batch)
        loss = torch.mean((pred.float() - target) ** 2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"s_per_step": statistics.median(times), "peak_gib": peak, "steps_timed": len(times)}


def main() -> None:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["flux-dev", "tiny"], default="flux-dev")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--side", type=positive_int, default=512)
    ap.add_argument("--rank", type=positive_int, default=128)
    ap.add_argument("--steps", type=positive_int, default=5)
    ap.add_argument("--warmup", type=non_negative_int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    arch = FLUX_DEV if args.arch == "flux-dev" else TINY
    image_dim, tokens, text_len = (1152, 128, 512) if args.arch == "flux-dev" else (16, 4, 16)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for checkpointing in (False, True):
        row = {"gradient_checkpointing": checkpointing}
        try:
            model = build(arch, device, dtype, args.rank, image_dim, tokens)
            if checkpointing:
                model.transformer.enable_gradient_checkpointing()
            params = [p for p in model.parameters() if p.requires_grad]
            row["trainable_params_M"] = round(sum(p.numel() for p in params) / 1e6, 1)
            optimizer = torch.optim.AdamW(params, lr=1e-4)
            batch, n = inputs(model, args.side, device, dtype, image_dim, text_len)
            target = torch.randn(1, n, model.transformer.config.in_channels, device=device)
            row.update(measure(model, optimizer, batch, target, args.steps, args.warmup, device))
        except torch.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "arch": args.arch, "side": args.side, "lora_rank": args.rank, "batch": 1,
        "torch": torch.__version__, "rows": rows,
    }  # fmt: skip
    import diffusers

    info["diffusers"] = diffusers.__version__
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=1))
    print(f"device: {info['device']}  arch: {args.arch}  {args.side}x{args.side}  batch 1  LoRA r{args.rank} + adapter")
    print(f"{'checkpointing':>14} {'s/step':>8} {'peak GiB':>9} {'trainable M':>12}")
    for r in rows:
        if "error" in r:
            print(f"{str(r['gradient_checkpointing']):>14} {r['error']}")
        else:
            print(f"{str(r['gradient_checkpointing']):>14} {r['s_per_step']:8.3f} {r['peak_gib']:9.1f} {r['trainable_params_M']:12.1f}")


if __name__ == "__main__":
    run_main(main)
