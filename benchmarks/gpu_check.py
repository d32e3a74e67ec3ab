"""The prepared GPU check (``make gpu-check``): full-size architectures, random weights, bf16, no downloads.

For each base in ``BASES`` (FLUX.1-dev, FLUX.1 Kontext [dev], FLUX.2 [klein] 4B): inference at 512x512
and 1024x1024, 24 steps (klein: 4, as the distilled model runs), s/image and peak GPU memory for relation's default path,
the reference-equivalent eager path (unfused q/k/v, exemplar keys/values recomputed every step),
``torch.compile`` and each memory mode; one training step (LoRA r128 on the paper's targets + the
adapter, 512x512, batch 1): peak memory and s/step with and without gradient checkpointing, with
8-bit Adam, with 8-bit Adam and the frozen transformer in float8 (``model.memory=fp8_storage``), and with the
trainable weights and gradients in bf16 on top (``train.full_bf16``). The FLOP limit of a generation is its matmul FLOPs over the bf16 rate measured first.
Writes one JSON (``--out``) and prints the README's GPU table. ``--tiny`` runs the same code on the
CPU at tiny size (a test in ``make test`` calls it; AdamW stands in for 8-bit Adam there). The entries
the goals are read from (``GOAL_ENTRIES``) run first, then every base's default path, then the
other entries base by base; entries that would start after ``--budget-s`` are skipped, and say so. Each entry runs in its own process (``--in-process`` turns that off): a CUDA fault in one entry
poisons its process's CUDA context, and must not end the others; a training entry that dies with a CUDA
error is run once more with ``CUDA_LAUNCH_BLOCKING=1`` and the failing call's stack is kept in the JSON.
Run: ``make gpu-check`` (see the Makefile for the wheels it installs first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from relation_cli.progress import quiet_libraries

if __name__ == "__main__":  # a run, not a test's import: transformers' advisory lines off before it is imported
    quiet_libraries()

from relation_cli.config import LoraSection, ModelSection, RelationConfig  # noqa: E402
from relation_cli.tiny import ArchSpec, build_components  # noqa: E402
from _args import Parser, positive_float, positive_int, run_main  # noqa: E402

GIB = 1024**3


@dataclass(frozen=True)
class Base:
    """One base model of the check: its architecture and what it needs to run."""

    name: str
    spec: ArchSpec
    sizes: tuple[int, ...] = (512, 1024)
    steps: int = 24
    query_ids: str = "clone"  # the query tokens' first position axis: "kontext" for FLUX.1 Kontext
    call: dict = field(default_factory=dict)  # pipeline arguments of this base's usual setting


FLUX1_DEV = ArchSpec(
    num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128,
    joint_attention_dim=4096, axes_dims_rope=(16, 56, 56), text_hidden=768, text_layers=12,
    t5_layers=24, t5_heads=64, t5_head_dim=64, t5_ff=10240,
    vae_channels=(128, 256, 512, 512), vae_latent_channels=16, vae_norm_groups=32, vae_layers_per_block=2,
    siglip_hidden=1152, siglip_layers=27, siglip_heads=16, siglip_image_size=384, siglip_patch_size=14,
    siglip_intermediate=4304, num_tokens=128,
)  # fmt: skip
# FLUX.2 [klein] 4B; no official config.json was reachable here, so each number has a second-hand source:
# - transformer: 5 double + 20 single blocks (ServeurpersoCom/flux2.c README); 24 heads x 128 = 3072, MLP 9216
#   (ratio 3), text width 7680, 128 latent channels, RoPE 4 x 32, theta 2000 (a public Zig port's klein-4B
#   Config, found by the code search); no guidance embedding (Flux2KleinPipeline passes guidance=None);
# - C = 7680 = 3 x 2560: klein stacks Qwen3 layers 9, 18, 27 (Flux2KleinPipeline._get_qwen3_prompt_embeds);
# - Qwen3-4B: 36 layers, width 2560 (flux2.c README), MLP 9728, 32 heads, 8 key/value heads, head 128,
#   vocabulary 151936 (Qwen3-4B's config.json as copied on the hub, e.g. jaman21/Qwen3-4B-Instruct);
# - VAE: AutoencoderKLFlux2's defaults (128/256/512/512, 32 latent channels = 128 / 4); SigLIP as FLUX.1-dev's.
# Built on the meta device this gives 3.88 B transformer and 4.02 B text-encoder parameters (tests/test_gpu_check.py).
# Measured as the distilled klein 4B runs: 4 steps, guidance 1.0, no CFG pass (flux-2-swift-mlx's klein-4B docs).
FLUX2_KLEIN_4B = ArchSpec(
    base="flux2-klein", num_layers=5, num_single_layers=20, num_attention_heads=24, attention_head_dim=128,
    joint_attention_dim=7680, axes_dims_rope=(32, 32, 32, 32), text_hidden=2560, qwen_layers=36, qwen_heads=32,
    qwen_kv_heads=8, qwen_head_dim=128, qwen_intermediate=9728, qwen_vocab=151936,
    vae_channels=(128, 256, 512, 512), vae_latent_channels=32, vae_norm_groups=32, vae_layers_per_block=2,
    siglip_hidden=1152, siglip_layers=27, siglip_heads=16, siglip_image_size=384, siglip_patch_size=14,
    siglip_intermediate=4304, num_tokens=128,
)  # fmt: skip
# FLUX.1 Kontext [dev] is FLUX.1-dev's architecture (the same FluxTransformer2DModel config, its context
# image's first id axis set to 1): what differs at run time is only the query's ids.
BASES = {
    "flux1-dev": Base("FLUX.1-dev", FLUX1_DEV),
    "flux1-kontext": Base("FLUX.1 Kontext [dev]", FLUX1_DEV, query_ids="kontext"),
    "flux2-klein-4b": Base("FLUX.2 [klein] 4B", FLUX2_KLEIN_4B, steps=4, call={"guidance_scale": 1.0}),
}
TINY = Base("tiny", ArchSpec(), sizes=(64,), steps=1)
TINY_BASES = {"tiny": TINY, "tiny-klein": Base("tiny klein", ArchSpec(base="flux2-klein"), sizes=(64,), steps=1,
                                               call={"guidance_scale": 1.0})}  # fmt: skip

# label -> (ModelSection overrides, pipeline call overrides)
INFER = {
    "default": ({}, {}),
    "reference-equivalent eager": ({"fuse_qkv": False}, {"precompute_relation_kv": False}),
    "torch.compile": ({"compile": True}, {}),
    "fp8_storage": ({"memory": "fp8_storage"}, {}),
    "model_offload": ({"memory": "model_offload"}, {}),
    "group_offload block": ({"memory": "group_offload", "offload_type": "block_level"}, {}),
    "group_offload leaf": ({"memory": "group_offload", "offload_type": "leaf_level"}, {}),
    "sequential_offload": ({"memory": "sequential_offload"}, {}),  # slowest: last
}
# label -> (gradient checkpointing, optimizer, frozen transformer stored in float8 as model.memory=fp8_storage,
# trainable weights and gradients in bf16 as train.full_bf16 instead of float32)
TRAIN = {
    "checkpointing": (True, "adamw", False, False),
    "no checkpointing": (False, "adamw", False, False),
    "checkpointing + 8-bit Adam": (True, "adamw8bit", False, False),
    "checkpointing + 8-bit Adam + fp8 storage": (True, "adamw8bit", True, False),
    "checkpointing + 8-bit Adam + fp8 storage + full bf16": (True, "adamw8bit", True, True),
}
# The entries the issue's goals are read from, measured first (on the first base) so that no budget skips them:
# the speed ratios, the inference mode most likely under 24 GB, the training step most likely under 40 GB.
GOAL_ENTRIES = [("default", 512), ("reference-equivalent eager", 512), ("group_offload block", 512),
                ("checkpointing + 8-bit Adam + fp8 storage + full bf16", 512),
                ("checkpointing + 8-bit Adam + fp8 storage", 512)]  # fmt: skip


@dataclass
class Run:
    device: torch.device
    dtype: torch.dtype
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    results: list[dict] = field(default_factory=list)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (the ceiling for the FLOP limit): 8192^3 on a GPU, 512^3 on the CPU."""
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    rate = 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the entries' children need the memory
    return rate


def generation_flops(spec: ArchSpec, size: int, steps: int, text_tokens: int = 512) -> float:
    """Matmul FLOPs of the transformer over ``steps`` (2 per multiply-add): per token, 12 w^2 multiply-adds
    a layer (double-stream: q/k/v/out 4 w^2 + MLP 8 w^2 in the token's own stream; single-stream: q/k/v
    3 w^2 + MLP in 4 w^2 + out 5 w^2), over the joint sequence (text + target + query tokens); attention
    scores and values (4 S^2 w); the adapter's side attention from the queries to the 2T exemplar tokens.
    The per-sample modulation (adaLN) and the encoders are left out: the limit is a floor."""
    width = spec.num_attention_heads * spec.attention_head_dim
    image = 2 * (size // 16) ** 2
    seq = text_tokens + image
    layers = spec.num_layers + spec.num_single_layers
    # FLUX.2: MLP ratio 3 with SwiGLU, 13 w^2 a layer; its RelationAdapter processors also project the side
    # query and the side output (2 w^2 per side-attending token: relation_cli.adapter's Flux2 processors).
    per_layer, side_proj = (13, 2) if spec.base == "flux2-klein" else (12, 0)
    linear = 2 * seq * layers * per_layer * width * width
    side_tokens = spec.num_layers * image + spec.num_single_layers * seq
    side = side_tokens * (4 * 2 * spec.num_tokens * width + 2 * side_proj * width * width)
    return steps * (linear + layers * 4 * seq * seq * width + side)


def build_pipeline(base: Base, device: torch.device, dtype: torch.dtype):
    """Random-weight components made directly on the device in ``dtype`` (no CPU copy, no download)."""
    from relation_cli.klein import RelationKleinPipeline
    from relation_cli.pipeline import RelationPipeline

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            cls = RelationKleinPipeline if base.spec.base == "flux2-klein" else RelationPipeline
            pipe = cls(**build_components(base.spec, seed=0))
    finally:
        torch.set_default_dtype(default)
    if isinstance(pipe, RelationPipeline):
        pipe.query_ids = base.query_ids
    pipe.set_progress_bar_config(disable=True)
    return pipe


def configure(pipe, overrides: dict, device: torch.device, dtype: torch.dtype):
    """relation's own runtime code (``relation_cli.runtime``) applied as ``relation infer`` applies it."""
    from relation_cli import runtime

    model = ModelSection(base="demo", **overrides)
    with pipe.relation_adapter.detached(pipe.transformer):  # as load_pipeline: the adapter is never cast
        runtime.prepare_weights(pipe, model, dtype, device)
    if model.memory in runtime.OFFLOAD_MODES:
        pipe.to("cpu")
        runtime.enable_offload(pipe, model.memory, device, model.offload_type)
    else:
        pipe.to(device)
    runtime.speed_up(pipe, model)
    return pipe


def generate(pipe, size: int, steps: int, **call) -> None:
    q = Image.new("RGB", (size, size), (90, 140, 200))
    pipe(image=q, exemplars=(q, q), num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
         output_type="np", **call)  # fmt: skip


def time_inference(run: Run, base: Base, label: str, size: int) -> dict:
    model, call = INFER[label]
    pipe = configure(build_pipeline(base, run.device, run.dtype), model, run.device, run.dtype)
    call = {**base.call, **call}
    generate(pipe, size, 2 if model.get("compile") else 1, **call)  # warm-up (compilation)
    reset_peak(run.device)
    sync(run.device)
    t = time.perf_counter()
    generate(pipe, size, base.steps, **call)
    sync(run.device)
    return {"s_per_image": time.perf_counter() - t, "peak_gib": peak_gib(run.device)}


def time_training(run: Run, base: Base, label: str, size: int = 512) -> dict:
    """One LoRA r128 + adapter training step on relation's RelationTrainModel, bf16 weights."""
    from relation_cli.adapter import RelationAdapter
    from relation_cli.train.job import make_trainable
    from relation_cli.train.model import RelationTrainModel

    checkpointing, optimizer, fp8, full_bf16 = TRAIN[label]
    pipe = build_pipeline(base, run.device, run.dtype)
    transformer, adapter = pipe.transformer, pipe.relation_adapter
    batch = _batch(pipe, base.spec, size, run.device, run.dtype)
    # relation train's own set-up (train.mode lora): every network frozen, a LoRA r128 on the paper's targets,
    # the frozen transformer in float8 with fp8 storage, then the whole adapter trainable
    cfg = RelationConfig(model=ModelSection(base="demo", memory="fp8_storage" if fp8 else "none"),
                         lora=LoraSection(rank=128))  # fmt: skip
    RelationAdapter.uninstall(transformer)  # make_trainable installs it after the fp8 cast, as relation train
    make_trainable(pipe, adapter, cfg, run.dtype)
    del pipe  # text encoders, VAE, SigLIP freed: their outputs come precomputed (train.cache_encodings)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    model = RelationTrainModel(transformer, adapter)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # as relation train: trainable weights in float32 (or bf16, full_bf16), frozen ones in bf16
        p.data = p.data.to(run.dtype if full_bf16 else torch.float32)
    opt = _optimizer(optimizer if run.device.type == "cuda" else "adamw", params)  # bitsandbytes needs CUDA
    step = _train_step(model, opt, batch, run.device)
    step()  # warm-up
    reset_peak(run.device)
    sync(run.device)
    t = time.perf_counter()
    step()
    sync(run.device)
    return {"s_per_step": time.perf_counter() - t, "peak_gib": peak_gib(run.device),
            "trainable_m": sum(p.numel() for p in params) / 1e6, "trainable_dtype": str(params[0].dtype)}  # fmt: skip


def _optimizer(name: str, params):
    if name == "adamw8bit":
        import bitsandbytes as bnb  # carried as a wheel by make gpu-wheels

        return bnb.optim.AdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def _batch(pipe, spec: ArchSpec, size: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One ``size`` x ``size`` sample as ``RelationTrainModel.forward`` takes it, random, with the position ids
    of ``pipe`` (``relation_ids``: the base's query ids, or klein's reference-image ids)."""
    side = size // 16
    n, c = (size // 16) ** 2, 4 * spec.vae_latent_channels
    g = {"device": device, "dtype": dtype}
    batch = {
        "noisy": torch.randn(1, n, c, **g), "query": torch.randn(1, n, c, **g), "sigma": torch.rand(1, **g),
        "guidance": torch.full((1,), 1.0, **g), "prompt_embeds": torch.randn(1, 512, spec.joint_attention_dim, **g),
        "pooled": torch.randn(1, spec.text_hidden, **g), "text_ids": torch.zeros(512, 3, **g),
        "img_ids": pipe.relation_ids(side, side, device, dtype),
        "keep": torch.ones(1, device=device), "exemplar_embeds": torch.randn(2, spec.siglip_hidden, **g),
    }  # fmt: skip
    if spec.base == "flux2-klein":  # klein's text ids; no pooled text embedding, no guidance embedding
        batch.update(text_ids=pipe.text_ids(512, device, dtype), pooled=None, guidance=None)
    return batch


def _train_step(model, opt, batch: dict, device: torch.device) -> Callable[[], None]:
    from torch.nn.attention import sdpa_kernel

    from relation_cli.train.step import TRAIN_ATTENTION

    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:  # as relation_cli.train.step.optimizer_step: cuDNN attention left out
        with sdpa_kernel(TRAIN_ATTENTION):
            with autocast:
                pred = model(**batch)
            loss = torch.nn.functional.mse_loss(pred.float(), batch["noisy"].float())
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def entries(base: Base, tiny: bool) -> list[tuple[str, str, int, Callable]]:
    """(kind, label, size, measure) in the order they run: cheap and important first."""
    cpu_only = tiny  # offloading, compile and 8-bit Adam need a CUDA device
    infer = [l for l in INFER if not (cpu_only and (l == "torch.compile" or "offload" in l))]
    first, rest = base.sizes[0], base.sizes[1:]
    out = [("inference", l, first, time_inference) for l in infer[:2]]
    out += [("training", l, 512 if not tiny else 64, time_training) for l in TRAIN]  # tiny: AdamW for 8-bit Adam
    out += [("inference", l, first, time_inference) for l in infer[2:]]
    out += [("inference", l, s, time_inference) for s in rest for l in infer]
    return out


def measure_entry(run: Run, base: Base, index: int, tiny: bool) -> dict:
    """Entry ``index`` of :func:`entries` in this process: the row's figures, or ``error`` with the
    exception's first line."""
    kind, label, size, measure = entries(base, tiny)[index]
    row: dict = {}
    try:
        row.update(measure(run, base, label, size))
    except Exception as e:  # one failing mode must not hide the others' figures
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row


CHILD_TIMEOUT_S = 150  # one entry; sequential offload at full size can take longer, and is then reported so


def measure_isolated(args: argparse.Namespace, base_key: str, index: int, timeout: float, env: dict | None = None) -> dict:
    """Entry ``index`` in a child process (``--entry``): its last stdout line is the row's JSON. A child
    that dies (a CUDA fault, the kernel's OOM killer) or runs over ``timeout`` seconds becomes ``error``;
    ``trace`` keeps the last 25 lines of its stderr."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--entry", str(index), "--bases", base_key]
    cmd += ["--tiny"] if args.tiny else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()
        last = tail[-1] if tail else f"exit status {done.returncode}"
        return {"error": f"child died: {last[:200]}", "trace": tail[-25:]}


def plan(bases: dict[str, Base], args: argparse.Namespace) -> list[tuple[str, Base, int]]:
    """(base key, base, entry index) in the order they run: the first base's ``GOAL_ENTRIES``, then every
    base's default path at each size (so that one budget measures all bases), then each base's other entries
    in :func:`entries`' order."""
    first = next(iter(bases))
    order = [(k, b, i, e[1], e[2]) for k, b in bases.items() for i, e in enumerate(entries(b, args.tiny))]
    order = [o for o in order if (not args.labels or o[3] in args.labels) and (not args.sizes or o[4] in args.sizes)]

    def rank(o) -> tuple[int, int]:
        if o[0] == first and (o[3], o[4]) in GOAL_ENTRIES:
            return 0, GOAL_ENTRIES.index((o[3], o[4]))
        return (1 if o[3] == "default" else 2), 0

    return [(k, b, i) for k, b, i, _, _ in sorted(order, key=rank)]


def check(bases: dict[str, Base], run: Run, args: argparse.Namespace) -> None:
    """Measure the :func:`plan` into ``run.results``, one JSON line printed per row."""
    tflops = matmul_tflops(run.device, run.dtype)
    for key, base, index in plan(bases, args):
        kind, label, size, _ = entries(base, args.tiny)[index]
        row = {"base": base.name, "kind": kind, "label": label, "size": size}
        if run.left() <= 0:
            row["skipped"] = "time budget"
        elif args.in_process:
            row.update(measure_entry(run, base, index, args.tiny))
        else:
            t = time.perf_counter()
            row.update(measure_isolated(args, key, index, min(CHILD_TIMEOUT_S, run.left() + 60)))
            row["wall_s"] = time.perf_counter() - t  # the child's whole life: start, build, warm-up, timing
            if kind == "training" and "CUDA error" in row.get("error", ""):
                again = measure_isolated(args, key, index, CHILD_TIMEOUT_S, {"CUDA_LAUNCH_BLOCKING": "1"})
                row["blocking_rerun"] = again
        if "s_per_image" in row:
            row["flop_limit_s"] = generation_flops(base.spec, size, base.steps) / (tflops * 1e12)
        run.results.append(row)
        print(json.dumps(row), flush=True)
    run.results.append({"base": "device", "kind": "ceiling", "matmul_tflops": tflops})


def table(results: list[dict]) -> str:
    """The README's GPU table, with the goals' ratios."""
    lines = ["| base | what | size | s/image or s/step | peak GiB | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r["kind"] == "ceiling":
            continue
        t = r.get("s_per_image", r.get("s_per_step"))
        peak = r.get("peak_gib")
        note = r.get("skipped") or r.get("error") or (f"FLOP limit {r['flop_limit_s']:.2f} s" if "flop_limit_s" in r else "")
        lines.append(f"| {r['base']} | {r['kind']}: {r['label']} | {r['size']} | {'' if t is None else f'{t:.2f}'} | "
                     f"{'' if peak is None else f'{peak:.1f}'} | {note} |")  # fmt: skip
    return "\n".join(lines + goals(results))


def goals(results: list[dict]) -> list[str]:
    def find(label, size):
        return next((r for r in results if r.get("label") == label and r.get("size") == size and "s_per_image" in r), None)

    out = [""]
    for r in [r for r in results if r.get("label") == "default" and "s_per_image" in r]:
        eager = find("reference-equivalent eager", r["size"])
        if eager:
            out.append(f"- {r['base']} {r['size']}: default / reference-equivalent = {r['s_per_image'] / eager['s_per_image']:.2f} (goal <= 0.5)")
        out.append(f"- {r['base']} {r['size']}: default / FLOP limit = {r['s_per_image'] / r['flop_limit_s']:.2f} (goal <= 1.3)")
    under = [r for r in results if r["kind"] == "inference" and r.get("peak_gib") is not None and r["peak_gib"] < 24]
    out.append(f"- inference under 24 GB peak: {', '.join(sorted({r['label'] for r in under})) or 'none'}")
    train = [r for r in results if r["kind"] == "training" and r.get("peak_gib") is not None and r["peak_gib"] < 40]
    out.append(f"- training step under 40 GB peak: {', '.join(r['label'] for r in train) or 'none'}")
    return out


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny architecture on the CPU (checks the script)")
    parser.add_argument("--bases", nargs="*", default=None, help=f"bases to check: {', '.join(BASES)} (all); "
                        f"with --tiny: {', '.join(TINY_BASES)}")  # fmt: skip
    parser.add_argument("--labels", nargs="*", default=None, help="measure only these entries (e.g. default)")
    parser.add_argument("--sizes", nargs="*", type=positive_int, default=None, help="measure only at these sizes (e.g. 1024)")
    parser.add_argument("--budget-s", type=positive_float, default=330, help="start no entry after this many seconds")
    parser.add_argument("--in-process", action="store_true", help="run every entry in this process")
    parser.add_argument("--entry", type=int, default=None, help=argparse.SUPPRESS)  # a child: one entry
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; run with --tiny to check the script on the CPU")
    device = torch.device("cpu" if args.tiny else "cuda")
    run = Run(device, torch.float32 if args.tiny else torch.bfloat16, args.budget_s)
    bases = TINY_BASES if args.tiny else BASES
    keys = args.bases or list(bases)
    if unknown := [k for k in keys if k not in bases]:
        parser.error(f"unknown base {', '.join(unknown)}; choose from {', '.join(bases)}")
    if args.entry is not None:
        print(json.dumps(measure_entry(run, bases[keys[0]], args.entry, args.tiny)), flush=True)
        return
    check({k: bases[k] for k in keys}, run, args)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "seconds": time.perf_counter() - run.start}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text(json.dumps({"meta": meta, "results": run.results}, indent=2) + "\n")
    tmp.replace(args.out)
    print(table(run.results))


if __name__ == "__main__":
    run_main(main)
