"""Inference speed and memory: measured, printed, saved as JSON.

Targets (``--target``):
  cpu-demo   the embedded demo model; also times whole `relation infer` and `relation --help` processes
  cpu-mid    a mid-size random FLUX-architecture config on CPU (256x256)
  gpu-full   full-size FLUX.1-dev + adapter architectures with random weights (no download), bf16,
             512x512 and 1024x1024, every memory mode; needs a CUDA GPU

Every row compares relation's optimized path (its defaults on that device: exemplar keys/values
computed once per generation, q/k/v fused on GPUs) with a reference-equivalent path in the same
process: eager, exemplar keys/values recomputed at every step and layer, separate q/k/v
projections, default SDPA. GPU rows also give the ratio to the FLOP limit (2 x transformer parameters x tokens per step).
Figures are medians of ``--repeats`` runs after one warm-up run.

    python benchmarks/infer_speed.py --target cpu-demo
    python benchmarks/infer_speed.py --target gpu-full --out benchmarks/results/infer_gpu.json
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from _args import Parser, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
H100_BF16_TFLOPS = 800.0  # dense bf16 matrix throughput used for the FLOP limit (SPEC 5)


def versions() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def generate_once(pipe, images, steps: int, device: torch.device, **call) -> tuple[float, list[float]]:
    """Seconds for one image and for each of its denoising steps (timed by the step callback)."""
    a, b, q = images
    marks = []

    def on_step(_p, _i, _t, _kw):
        sync(device)
        marks.append(time.perf_counter())
        return {}

    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(image=q, exemplars=(a, b), num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             output_type="np", callback_on_step_end=on_step, **call)  # fmt: skip
    sync(device)
    return time.perf_counter() - start, [t1 - t0 for t0, t1 in zip(marks, marks[1:])]


def reference_equivalent(pipe, device: torch.device):
    """Undo relation's exact optimizations on a loaded pipeline: separate q/k/v projections."""
    if getattr(pipe.transformer.transformer_blocks[0].attn, "fused_projections", False):
        pipe.transformer.unfuse_qkv_projections()


def optimized(pipe, device: torch.device):
    """relation's defaults on ``device``: q/k/v fused on GPUs (model.fuse_qkv=auto), exemplar k/v precomputed."""
    fused = getattr(pipe.transformer.transformer_blocks[0].attn, "fused_projections", False)
    if device.type != "cpu" and not fused:
        pipe.transformer.fuse_qkv_projections()


def compare(pipe, images, steps, device, repeats, size) -> list[dict]:
    """Reference-equivalent and optimized paths, one warm-up each, then ``repeats`` rounds in which
    the two alternate (ABBA order), so drift in a shared machine's speed hits both alike."""
    paths = {
        "reference-equivalent": (reference_equivalent, {"precompute_relation_kv": False}),
        "optimized": (optimized, {"precompute_relation_kv": True}),
    }
    images_s = {name: [] for name in paths}
    steps_s = {name: [] for name in paths}
    for round_ in range(repeats + 1):
        order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
        for name in order:
            setup, call = paths[name]
            setup(pipe, device)
            image_s, step_s = generate_once(pipe, images, steps, device, height=size, width=size, **call)
            if round_ > 0:  # round 0 is the warm-up
                images_s[name].append(image_s)
                steps_s[name] += step_s
    rows = [
        {"path": name, "s_per_image": statistics.median(images_s[name]), "s_per_step": statistics.median(steps_s[name])}
        for name in paths
    ]
    rows[1]["ratio_to_reference"] = rows[1]["s_per_image"] / rows[0]["s_per_image"]
    return rows


def process_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "relation_cli", *args], check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_demo(repeats: int) -> dict:
    from relation_cli.config import load_config
    from relation_cli.model import load_pipeline
    from relation_cli.progress import quiet_libraries

    quiet_libraries()
    cfg = load_config()
    pipe = load_pipeline(cfg)
    images = [Image.open(EXAMPLES / n).convert("RGB") for n in ("exemplar_before.png", "exemplar_after.png", "query.png")]
    side = min(images[2].size) // 16 * 16
    rows = compare(pipe, images, cfg.infer.steps, torch.device("cpu"), repeats, side)
    out = Path("/tmp") / "relation-bench-demo.png"
    infer_args = ["infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
                  "--query", str(EXAMPLES / "query.png"), "-o", str(out), "--overwrite"]  # fmt: skip
    return {
        "target": "cpu-demo", "steps": cfg.infer.steps, "size": side, "rows": rows,
        "process_relation_help_s": process_seconds(["--help"], repeats),
        "process_relation_infer_s": process_seconds(infer_args, repeats),
    }  # fmt: skip


def cpu_mid(repeats: int) -> dict:
    from relation_cli.tiny import ArchSpec, build_pipeline

    spec = ArchSpec(num_layers=4, num_single_layers=8, num_attention_heads=8, attention_head_dim=64,
                    axes_dims_rope=(16, 24, 24), joint_attention_dim=256, text_hidden=128,
                    siglip_hidden=128, num_tokens=32)  # fmt: skip
    pipe = build_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    rng = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(256, 256, 3, generator=rng) * 255).byte().numpy()) for _ in range(3)]
    rows = compare(pipe, images, 8, torch.device("cpu"), repeats, 256)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    return {"target": "cpu-mid", "steps": 8, "size": 256, "transformer_params_M": params / 1e6, "rows": rows}


def flux_dev_pipeline(device: torch.device, dtype: torch.dtype):
    """FLUX.1-dev, T5-XXL, CLIP-L, SigLIP so400m and the adapter at their real sizes, random weights."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, SiglipImageProcessor, SiglipVisionConfig,
                              SiglipVisionModel, T5Config, T5EncoderModel)  # fmt: skip

    from relation_cli.adapter import RelationAdapter
    from relation_cli.pipeline import RelationPipeline
    from relation_cli.tiny import build_clip_tokenizer, build_t5_tokenizer

    torch.set_default_dtype(dtype)
    with torch.device(device):
        transformer = FluxTransformer2DModel(guidance_embeds=True)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                            layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.1159, scaling_factor=0.3611)  # fmt: skip
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, projection_dim=768))  # fmt: skip
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                                     feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False))  # fmt: skip
        siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                      num_attention_heads=16, image_size=384, patch_size=14))  # fmt: skip
        adapter = RelationAdapter.for_transformer(transformer, 1152, 128)
    torch.set_default_dtype(torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)  # fmt: skip
    extractor = SiglipImageProcessor(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pipe = RelationPipeline(scheduler, vae.eval(), clip.eval(), build_clip_tokenizer(), t5.eval(), build_t5_tokenizer(),
                            transformer.eval(), siglip.eval(), extractor, adapter.eval())  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gpu_full(repeats: int, steps: int) -> dict:
    device, dtype = torch.device("cuda"), torch.bfloat16
    pipe = flux_dev_pipeline(device, dtype)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    rng = torch.Generator().manual_seed(0)
    rows = []
    for size in (512, 1024):
        images = [Image.fromarray((torch.rand(size, size, 3, generator=rng) * 255).byte().numpy()) for _ in range(3)]
        n = (size // 16) ** 2
        flops = 2 * params * (512 + 2 * n)  # per step: text + target + query tokens
        torch.cuda.reset_peak_memory_stats()
        for row in compare(pipe, images, steps, device, repeats, size):
            row.update(size=size, mode="none", peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                       flop_limit_s_per_step=flops / (H100_BF16_TFLOPS * 1e12))  # fmt: skip
            row["ratio_to_flop_limit"] = row["s_per_step"] / row["flop_limit_s_per_step"]
            rows.append(row)
    return {"target": "gpu-full", "steps": steps, "transformer_params_B": params / 1e9, "rows": rows,
            "note": "memory modes: run with --memory MODE in a fresh process (offloading changes placement)"}  # fmt: skip


def main() -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["cpu-demo", "cpu-mid", "gpu-full"], default="cpu-demo")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--steps", type=positive_int, default=24)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.target == "cpu-demo":
        result = cpu_demo(args.repeats)
    elif args.target == "cpu-mid":
        result = cpu_mid(args.repeats)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu-full needs a CUDA GPU; none is available here")
        result = gpu_full(args.repeats, args.steps)
    device = torch.device("cuda" if args.target == "gpu-full" else "cpu")
    result.update(device=device_name(device), versions=versions(), repeats=args.repeats)
    out = Path(args.out or f"benchmarks/results/infer_{args.target}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{result['target']} on {result['device']}: {result['steps']} steps")
    for row in result["rows"]:
        extra = "".join(f"  {k} {v:.3g}" for k, v in row.items() if k not in ("path", "s_per_image", "s_per_step") and isinstance(v, float))
        print(f"  {row['path']:>22}: {row['s_per_image']:.3f} s/image  {row['s_per_step']:.4f} s/step{extra}")
    for key in ("process_relation_help_s", "process_relation_infer_s"):
        if key in result:
            print(f"  {key}: {result[key]:.2f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
