"""One configuration model for all four commands.

Precedence: field defaults, then the YAML file (``--config``), then ``--set section.key=value`` overrides,
then the command's own flags; validation runs once on the result and reports every problem together.
This module imports pydantic and yaml only, so ``relation --help`` stays fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RelationError, first_line
from .fs import write_text_atomic

DEMO = "demo"
"""``model.base`` value that selects the small model shipped inside the package."""
DEMO_DIR = Path(__file__).parent / "demo"
DEMO_DEFAULTS = DEMO_DIR / "relation.yaml"
"""Settings the demo model was trained for (e.g. fewer steps); they replace the field defaults, and
anything the user sets replaces them."""

PAPER_LORA_TARGETS = [
    # double-stream blocks
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip
"""The paper's LoRA targets (SPEC 2.4). ``attn.to_q/k/v`` also match the single-stream blocks."""


SEED_MAX = 2**63 - 1
"""The largest seed: torch's generators take a 64-bit signed integer."""
TRAIN_SEED_MAX = SEED_MAX // 1000 - 1024
"""The largest ``train.seed``: each process's generator is seeded with ``seed * 1000 + rank``."""


class Section(BaseModel):
    """A config section: unknown keys, infinite or NaN numbers, and true/false for a number are errors; a bare
    ``no`` (YAML's false) for a choice that holds "no" is that choice."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1 (steps: true -> 1 step)
            annotation = cls.model_fields[info.field_name].annotation
            kinds = {annotation, *get_args(annotation)}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("expected a number, not true/false")
            if value is False and "no" in kinds:  # YAML 1.1 reads a bare `no` as false (train.mixed_precision: no)
                return "no"
        return value


class ModelSection(Section):
    base: str = Field(
        DEMO,
        description="FLUX base model: 'demo' (the small model shipped with relation), a hub id such as "
        "black-forest-labs/FLUX.1-dev (or a FLUX.1 Kontext or FLUX.2 [klein] one: the pipeline follows the "
        "model_index.json), or a local folder in the diffusers layout.",
    )
    image_encoder: str | None = Field(
        None,
        description="SigLIP vision model (hub id or folder). Empty: the demo's own encoder for base=demo, "
        "else google/siglip-so400m-patch14-384.",
    )
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and compute dtype. auto: bfloat16 on CUDA, float32 elsewhere."
    )
    local_files_only: bool = Field(
        False, description="Never contact the model hub; hub ids must already be in the local cache."
    )
    memory: Literal["none", "model_offload", "sequential_offload", "group_offload", "fp8_storage"] = Field(
        "none",
        description="Memory mode for small GPUs: model_offload (one component on the GPU at a time), "
        "sequential_offload (leaf by leaf, least memory, slow), group_offload (block by block with CUDA "
        "streams), fp8_storage (transformer weights stored in float8, computed in bf16; relation train: the "
        "frozen transformer, lora and adapter modes). The adapter stays in full precision in every mode.",
    )
    offload_type: Literal["leaf_level", "block_level"] = Field(
        "leaf_level",
        description="What model.memory=group_offload moves at a time (diffusers' offload_type): leaf_level "
        "(each layer, overlapped with CUDA streams) or block_level (one transformer block).",
    )
    quantize: Literal["none", "int8", "fp8"] = Field(
        "none",
        description="Weight quantization of the transformer with torchao (int8 or fp8 weight-only), after the "
        "LoRA is fused; needs torchao. The adapter is never quantized.",
    )
    fuse_qkv: bool | Literal["auto"] = Field(
        "auto",
        description="Fuse each attention's q/k/v projections into one matmul (exact). auto: on GPUs only "
        "(on 2 CPU cores it measured slightly slower: benchmarks/infer_speed.py).",
    )
    attention_backend: str | None = Field(
        None, description="diffusers attention backend (e.g. flash, _native_cudnn, sage); empty: torch SDPA."
    )
    compile: bool = Field(False, description="torch.compile the repeated transformer blocks (regional compile).")
    cache: Literal["none", "first_block", "taylorseer"] = Field(
        "none",
        description="Approximate step caching from diffusers (FirstBlockCache, TaylorSeer): faster, not exact.",
    )
    cache_threshold: float = Field(0.05, gt=0, description="first_block cache: residual change that forces a full step.")
    query_ids: Literal["auto", "clone", "kontext"] = Field(
        "auto",
        description="First position axis of the query image's tokens: clone (0, a copy of the target's ids, as "
        "in the paper) or kontext (1, FLUX.1 Kontext's convention for its context image). auto: kontext when "
        "model.base's model_index.json names FluxKontextPipeline, clone otherwise. A FLUX.2 [klein] base takes "
        "only auto (the query enters as klein's reference image).",
    )


class AdapterSection(Section):
    path: str | None = Field(
        None,
        description="RelationAdapter weights: the authors' ip_adapter-*.bin, or a folder in relation's "
        "safetensors format. Empty: the demo's adapter for base=demo; required otherwise.",
    )
    scale: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="Adapter strength (the paper's alpha); 0 turns it off.")
    num_tokens: int = Field(128, ge=1, description="Exemplar tokens per image, for a newly created adapter.")
    role_embeddings: bool = Field(
        False,
        description="New adapters: tell A's tokens from A''s with learned before/after vectors (the released "
        "adapter has none and sees the pair as an unordered set).",
    )


class LoraFile(Section):
    """One LoRA of ``lora.paths``: a ``{path, weight}`` mapping, or the text ``PATH[:WEIGHT]`` as ``--lora`` takes
    it (also in YAML and ``--set lora.paths=[a.safetensors:0.5]``); a tail that is not a number stays in the path
    (``C:\\loras\\x.safetensors``)."""

    path: str = Field(description="A LoRA: .safetensors file (diffusers, peft, kohya, BFL or xlabs layout) or the folder holding pytorch_lora_weights.safetensors.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Strength of this LoRA; its scale on load is weight x lora.scale x alpha/rank.")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if not isinstance(value, (str, dict, LoraFile)):
            raise ValueError(f"a LoRA is PATH[:WEIGHT] text or a {{path, weight}} mapping, not {type(value).__name__}")
        if not isinstance(value, str):
            return value
        path, sep, weight = value.rpartition(":")
        try:
            return {"path": path, "weight": float(weight)} if sep and path else {"path": value}
        except ValueError:
            return {"path": value}


class LoraSection(Section):
    paths: list[LoraFile] = Field(
        default_factory=list,
        description="LoRAs fused into the transformer, each with its weight (--lora PATH[:WEIGHT], repeatable). "
        "Empty: the demo's LoRA if it has one; none otherwise. Training continues the one LoRA given here.",
    )
    scale: float = Field(1.0, allow_inf_nan=False, description="Multiplies the weight of every LoRA in lora.paths.")
    allow_partial: bool = Field(
        False, description="Load a LoRA whose keys fit only part of the transformer (the rest is left out, and said)."
    )
    fuse: bool = Field(True, description="Fuse the LoRA into the transformer weights for inference.")
    rank: int = Field(128, ge=1, description="LoRA rank when training.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha when training. Empty: equal to rank.")
    targets: list[str] = Field(
        default_factory=lambda: list(PAPER_LORA_TARGETS), min_length=1,
        description="Module names (suffixes) that get a LoRA when training.",
    )

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        """A single ``PATH[:WEIGHT]`` (``--set lora.paths=a.safetensors:0.5``) is a list of one."""
        return [value] if isinstance(value, (str, dict)) else value


class DataSection(Section):
    max_image_pixels: int = Field(
        64_000_000, ge=256, description="Largest accepted image (width x height); larger ones are refused."
    )
    resolution: int = Field(512, ge=16, description="Long side of training images (sides become multiples of 16).")
    # relation prepare
    per_task_cap: int = Field(2000, ge=1, description="prepare: most analogy samples per task, all splits together.")
    test_per_task: int = Field(30, ge=0, description="prepare: test_seen samples per seen task (each a distinct query pair).")
    max_test_fraction: float = Field(
        0.5, gt=0, le=1, description="prepare: most of a seen task's pairs that become test queries (0.5: a task "
        "never keeps fewer training pairs than test queries); a small task gets fewer than test_per_task, noted."
    )
    unseen_tasks: int = Field(0, ge=0, description="prepare: whole tasks held out for test_unseen (named ones first).")
    unseen_task_names: list[str] = Field(default_factory=list, description="prepare: tasks to hold out by name.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="prepare: seed of pair order, test and unseen choice, synthetic scenes.")
    workers: int = Field(0, ge=0, description="prepare: image-decoding processes; 0 = min(4, CPU count).")
    skip_invalid: bool = Field(
        False, description="prepare: leave invalid entries out (listed in skipped.jsonl) instead of failing."
    )
    png_compress_level: int = Field(1, ge=0, le=9, description="prepare: zlib level of the half-image PNGs.")
    synthetic_pairs: int | None = Field(
        None, ge=2, description="prepare: generate the synthetic relation set with N pairs per task instead of INPUT."
    )
    synthetic_size: int = Field(64, ge=16, description="prepare: side of synthetic images (each pair is 2*side x side).")
    synthetic_families: list[str] = Field(
        default_factory=list, description="prepare: with synthetic_pairs, generate relation families with "
        "continuous parameters (shift, rotate, recolour, hue, brightness, contrast, scale, blur, frame, "
        "tinted_frame, overlay, channels, mirror, compose): each task is one (family, parameters) with synthetic_pairs pairs. Empty: the 14 fixed "
        "relations."
    )
    synthetic_instances: int = Field(
        200, ge=1, description="prepare: training tasks (family instances) per seen family (synthetic_families)."
    )
    synthetic_test_instances: int = Field(
        10, ge=1, description="prepare: test tasks per family and split (synthetic_families): a seen family gets "
        "this many new instances in test_seen and this many with parameters in synthetic_unseen_range in "
        "test_unseen; a held-out family this many in test_unseen."
    )
    synthetic_unseen_families: list[str] = Field(
        default_factory=list, description="prepare: families held out whole, test_unseen only (synthetic_families)."
    )
    synthetic_unseen_range: list[float] = Field(
        default_factory=lambda: [0.4, 0.5], description="prepare: band [lo, hi) of every family's parameter "
        "position u in [0, 1) held out of training (synthetic_families; the mapping of u per family is in "
        "relation_cli/prepare/families.py): test_unseen only."
    )
    exemplar_pairs: int = Field(
        1, ge=1, description="prepare: exemplar pairs (k) per test sample, all of its task and none its query; "
        "above 1, test rows carry an exemplars list instead of cond1/cond2."
    )


class InferSection(Section):
    prompt: str = Field("", description="Text instruction that goes with the exemplar pair (may be empty).")
    steps: int = Field(24, ge=1, le=1000, description="Denoising steps.")
    guidance: float = Field(
        3.5, ge=0.0, description="FLUX.1: the guidance embedding's value (no true CFG). FLUX.2 [klein]: its "
        "guidance_scale, true CFG when > 1 on a non-distilled model."
    )
    seed: int = Field(1000, ge=0, le=SEED_MAX, description="Seed of the one CPU generator that draws all randomness.")
    max_sequence_length: int = Field(
        512, ge=1, le=512, description="Prompt length in tokens (T5 on FLUX.1, Qwen3 on FLUX.2 [klein])."
    )
    overwrite: bool = Field(False, description="Replace output files that already exist.")
    width: int | None = Field(
        None, ge=8, description="Working width in pixels (--width). Empty: from the query and max_area. "
        "Alone, the height follows the query's aspect ratio. Floored to 2x the VAE factor (16 for FLUX); "
        "FLUX.2 [klein] needs at least 64 a side."
    )
    height: int | None = Field(None, ge=8, description="Working height in pixels (--height); see width.")
    max_area: int | None = Field(
        1024 * 1024, ge=64,
        description="A query over this many pixels is shrunk to about this area, aspect ratio kept (FLUX works "
        "at about 1 megapixel, as FluxKontextPipeline). Smaller queries keep their size. Empty: no cap.",
    )  # fmt: skip
    output_size: Literal["working", "query"] = Field(
        "working", description="Size of the result: working (the size the model worked at) or query (resized "
        "back to the query's own size)."
    )


class TrainSection(Section):
    data: str | list[str] = Field(
        "data/prepared/train.jsonl", description="Run-ready train.jsonl written by relation prepare, or a list of "
        "them (--data repeated): their rows are trained on together, e.g. two prepared sets mixed; a file listed "
        "twice is trained on twice as often (a way to weight it)."
    )
    validation_data: str | None = Field(
        None, description="jsonl of held-out rows for validation grids. Empty: test_seen.jsonl beside (the first) "
        "train.data if present."
    )
    output_dir: str = Field("runs/train", description="Where checkpoints, weights, logs and validation grids go.")
    mode: Literal["lora", "full", "adapter", "vae"] = Field(
        "lora",
        description="lora: adapter + LoRA on a frozen transformer (the paper); full: adapter + the whole "
        "transformer; adapter: the adapter alone; vae: pre-train the VAE of a small model (reconstruction).",
    )
    kl_weight: float = Field(1e-6, ge=0, description="vae mode: weight of the KL term beside the reconstruction MSE.")
    use_text: bool = Field(True, description="Feed each row's instruction; false trains with empty text.")
    train_image_encoder: bool = Field(False, description="Also train the SigLIP encoder (small demo models).")
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(1, ge=1, description="Samples per device per micro-batch (one size bucket per batch).")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="Learning-rate schedule (diffusers.optimization.get_scheduler)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit needs bitsandbytes.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA, no elsewhere. Frozen weights are stored in this dtype."
    )
    full_bf16: bool = Field(
        False,
        description="Trainable weights, gradients and Adam moments in bf16 too, not float32 (kohya sd-scripts' "
        "--full_bf16): 8 bytes less per trainable parameter with AdamW, 6 with adamw8bit. Needs bf16 mixed "
        "precision and no EMA; an update under bf16's resolution (about 1/256 of the weight) is lost.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute transformer activations in backward.")
    exemplar_dropout: float = Field(0.05, ge=0, le=1, description="Probability of zeroing a sample's exemplar embeddings.")
    guidance: float = Field(
        1.0, ge=0, description="Guidance-embedding value fed during training (bases with one; not FLUX.2 [klein])."
    )
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="Distribution of the noise level s in [0, 1]."
    )
    logit_mean: float = Field(0.0, description="logit_normal: mean.")
    logit_std: float = Field(1.0, gt=0, description="logit_normal: standard deviation.")
    timestep_shift: float = Field(1.0, gt=0, description="s -> shift*s / (1 + (shift-1)*s); 1 = none.")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the trained weights (0 = off); the EMA is what gets exported.")
    seed: int = Field(0, ge=0, le=TRAIN_SEED_MAX, description="Seed of data order, noise, timesteps and dropout.")
    checkpoint_every: int = Field(500, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the last K complete checkpoints.")
    validate_every: int = Field(0, ge=0, description="Validation grids + adapter probe every N steps (0 = only at the end).")
    validation_samples: int = Field(4, ge=0, description="Held-out rows rendered at each validation, one per task first (0 = none).")
    validation_steps: int = Field(8, ge=1, description="Denoising steps of validation samples.")
    log_every: int = Field(10, ge=1, description="Log loss/lr to tensorboard every N steps.")
    cache_encodings: bool = Field(
        False, description="Cache frozen encodings (VAE latents, text, SigLIP) on disk, keyed by content."
    )
    cache_dir: str | None = Field(None, description="Encoding cache folder. Empty: <output_dir>/cache.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for image decoding.")
    cache_images_in_memory: bool = Field(
        False, description="Keep decoded training images in memory (small datasets trained for many epochs)."
    )
    max_exemplar_pairs: int = Field(
        1, ge=1, description="Each batch trains with k exemplar pairs, k drawn in [1, N]: the row's own pairs, "
        "then other pairs of its task in train.data (never the query's own pair)."
    )
    resumes: list[dict] = Field(
        default_factory=list,
        description="Written by relation train --resume: one entry per resume: the step and each changed setting as [before, after].",
    )

    @property
    def data_files(self) -> list[str]:
        """``data`` as a list: one run-ready jsonl, or several trained on together (rows concatenated in order)."""
        return [self.data] if isinstance(self.data, str) else list(self.data)


EVAL_BASELINES = ("copy_query", "adapter_off", "wrong_exemplar", "vae_reconstruction")
"""Baselines of ``relation eval``: output = B; adapter scale 0; the exemplar pair of another task; the
target itself through the VAE (the best a model can do through that VAE)."""


class EvalSection(Section):
    inputs: list[str] = Field(
        default_factory=list,
        description="Run-ready jsonl files with targets (prepare's test_seen.jsonl, test_unseen.jsonl); each is "
        "one split, named after the file without its test_ prefix.",
    )
    output_dir: str = Field("runs/eval", description="Where generated images, metrics and the report go.")
    use_text: bool = Field(True, description="Give each row's instruction as the prompt; false leaves it empty.")
    limit: int | None = Field(
        None, ge=1, description="Generate and score only N rows of each file, spread over its tasks (the first row "
        "of every task, then the second, ...); the rows chosen are listed in metrics.json."
    )
    baselines: list[Literal["copy_query", "adapter_off", "wrong_exemplar", "vae_reconstruction"]] = Field(
        default_factory=lambda: list(EVAL_BASELINES[:3]),
        description="Baselines scored beside the model: copy_query (output = B), adapter_off (adapter.scale=0), "
        "wrong_exemplar (the exemplar pair of a row of another task), vae_reconstruction (the target encoded "
        "and decoded by the VAE: the floor a model's error meets through that VAE).",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the wrong-exemplar choice.")
    clip_model: str = Field(
        "openai/clip-vit-large-patch14",
        description="CLIP for CLIP-I (hub id or folder); empty turns CLIP-I off. A hub id that cannot be "
        "loaded skips the metric with the reason recorded, unless eval.strict.",
    )
    dino_model: str = Field(
        "facebook/dinov2-base",
        description="DINO/DINOv2 for DINO similarity (CLS token); hub id or folder; empty turns it off.",
    )
    fid: bool = Field(True, description="FID per split and method when torch-fidelity and its Inception weights are there.")
    fid_weights: str | None = Field(
        None, description="Local Inception weights for FID (torch-fidelity's pt_inception-2015-12-05 .pth). "
        "Empty: torch-fidelity's own cache."
    )
    strict: bool = Field(False, description="Fail instead of skipping a metric (CLIP-I, DINO, FID) that cannot run.")
    batch_size: int = Field(16, ge=1, description="Images per batch for the CLIP and DINO encoders.")
    grid_rows: int = Field(8, ge=0, description="Rows of each split shown in the report and grid PNGs.")
    judge_model: str = Field("", description="Judge model name (e.g. gpt-4o); empty turns the judge off.")
    judge_base_url: str = Field(
        "https://api.openai.com/v1", description="OpenAI-compatible endpoint; POST {base}/chat/completions."
    )
    judge_api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the judge's API key.")
    judge_timeout: float = Field(60.0, gt=0, description="Seconds before one judge request counts as an error.")
    judge_retries: int = Field(2, ge=0, description="Retries of a judge request after a network or server error.")
    judge_workers: int = Field(4, ge=1, description="Judge requests in flight at once.")
    judge_methods: list[Literal["relation", "copy_query", "adapter_off", "wrong_exemplar", "vae_reconstruction"]] = Field(
        default_factory=lambda: ["relation"],
        description="Methods whose outputs the judge scores: relation and any of the baselines.",
    )


class RunSection(Section):
    """What a training run produced; ``relation train`` writes it into the run's ``config.yaml`` and
    ``--run`` reads it. Paths inside the run are relative to the run folder."""

    base: str = Field(description="FLUX base of the trained model: 'base' inside the run, or the model.base it was trained on.")
    image_encoder: str | None = Field(None, description="SigLIP of the trained model: 'image_encoder' inside the run, or the model.image_encoder it was trained with.")
    adapter: str | None = Field(None, description="The trained adapter folder inside the run ('adapter').")
    lora: str | None = Field(None, description="The trained LoRA folder inside the run ('lora'), if any.")
    base_loras: list[LoraFile] = Field(default_factory=list, description="LoRAs fused into the base while the adapter trained (adapter mode), each at the weight it had there (its weight x lora.scale).")
    step: int = Field(0, ge=0, description="Optimizer steps the exported weights were trained for.")


class RelationConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    infer: InferSection = Field(default_factory=InferSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    run: RunSection | None = Field(None, description="Written by relation train: the model a run produced (read by --run).")


# --------------------------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'infer.steps=4'`` -> ``(['infer', 'steps'], 4)``. Values are YAML scalars/flow lists, except for a
    text setting (``str``, ``str | None``), which takes the text as typed unless it is quoted; an empty value
    is None for a setting that may be empty (``infer.max_area=``), else ""."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RelationError(f"override {text!r}: expected section.key=value")
    parts = key.split(".")
    if any(not p.isidentifier() for p in parts) or len(parts) < 2:
        raise RelationError(f"override {text!r}: {key!r} is not a section.key name")
    if len(parts) > 2 and _field_kinds(parts[:2]) and not any(
        k is dict or get_origin(k) is dict or (isinstance(k, type) and issubclass(k, BaseModel)) for k in _field_kinds(parts[:2])
    ):
        raise RelationError(f"override {text!r}: {'.'.join(parts[:2])} is a setting, not a section")
    kinds = _field_kinds(parts)
    text = raw.strip()
    if not text:
        return parts, None if type(None) in kinds else ""  # `infer.max_area=`: empty is no value
    bracketed = text[0] + text[-1] in ("[]", "{}")  # a YAML list or mapping: refused for text, not stringified
    if kinds and kinds <= {str, type(None)} and text[0] not in "'\"" and not bracketed:
        if type(None) in kinds and text in ("null", "Null", "NULL", "~"):
            return parts, None  # YAML's null: back to the setting's empty default
        return parts, text  # a text setting takes the text as typed: `infer.prompt=yes` is "yes", not true
    try:
        value = _load_unique(raw)  # numbers in decimal only, as in config files (_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as e:
        if "given twice" not in str(e.problem):
            value = raw
        else:  # `lora.paths=[{path: a, path: b}]`
            raise RelationError(f"override {key + '=' + raw.strip()!r}: {e.problem}") from None
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: e.g. the date 2001-02-30
        value = raw  # not YAML: keep the text as a string, let validation judge it
    return parts, value


def _field_kinds(parts: list[str]) -> set:
    """The types a ``section.key`` field takes (``{str, NoneType}`` for ``str | None``); empty when unknown."""
    section = RelationConfig.model_fields.get(parts[0])
    model = next((a for a in (section.annotation, *get_args(section.annotation)) if isinstance(a, type)
                  and issubclass(a, BaseModel)), None) if section and len(parts) == 2 else None  # fmt: skip
    field = model.model_fields.get(parts[1]) if model else None
    if field is None:
        return set()
    union = get_origin(field.annotation) in (Union, UnionType)
    return set(get_args(field.annotation)) if union else {field.annotation}


def _set_path(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RelationError(f"{origin}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError, origin: str, limit: int = 10) -> str:
    """pydantic's errors as one line: each key and what is wrong with it, at most ``limit`` of them spelt out; a
    file with more unknown top-level keys than there are sections is asked whether it is a relation configuration."""
    errors = err.errors()
    top = [e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    if len(top) > len(RelationConfig.model_fields):  # more unknown sections than there are sections
        keys = ", ".join(str(e["loc"][0]) for e in top[:3])
        return (f"invalid configuration ({origin}): {len(top)} top-level keys that are not sections of relation's "
                f"configuration (e.g. {keys}; the sections: {', '.join(RelationConfig.model_fields)}): is it a relation "
                "config file?")  # fmt: skip
    lines = []
    for e in errors:
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        key = key if key.isprintable() else repr(key)  # the message stays one line
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif e["type"] == "string_type" and isinstance(e.get("input"), (bool, int, float, type(None), list, dict)):
            lines.append(f"{key}: expected text, got {e.get('input')!r} (YAML read it so: quote it)")
        elif e["type"] == "model_type":
            lines.append(f"{key}: expected a section of key: value settings, got {e.get('input')!r}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    more = f"; ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"invalid configuration ({origin}): " + "; ".join(lines[:limit]) + more


CONFIG_MAX_BYTES = 1 << 20
"""The most a config file may hold (1 MiB): a pipe or a device is read no further."""


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A config file's top-level mapping ({} when empty). A pipe (``--config <(...)``) is read too, up to
    :data:`CONFIG_MAX_BYTES`. Raises RelationError: missing, a folder, too large, not UTF-8, not YAML, a key
    given twice, or not a mapping; ``what`` names the file in the message (``spec 'a.yaml': not found``)."""
    path = Path(path)
    if path.is_dir():
        raise RelationError(f"{what} '{path}': is a folder; give a .yaml file")
    if not path.exists():
        raise RelationError(f"{what} '{path}': not found")
    try:
        with path.open("rb") as f:
            raw = f.read(CONFIG_MAX_BYTES + 1)
    except OSError as e:
        raise RelationError(f"{what} '{path}': cannot be read ({e.strerror or first_line(e)})") from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise RelationError(f"{what} '{path}': over {CONFIG_MAX_BYTES:,} bytes; not a config file")
    try:
        data = _load_unique(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RelationError(f"{what} '{path}': not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = f" ({e.problem})" if getattr(e, "problem", None) else ""
        if "another document" in problem:  # a `---` starts a second document: one file holds one configuration
            raise RelationError(f"{what} '{path}'{where}: a second YAML document starts here (after '---'); a config "
                                "file holds one") from None  # fmt: skip
        raise RelationError(f"{what} '{path}'{where}: not valid YAML{problem}") from None
    except (ValueError, RecursionError) as e:  # a date like 2001-02-30, or nesting too deep to read
        raise RelationError(f"{what} '{path}': not valid YAML ({first_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RelationError(f"{what} '{path}': expected a mapping of sections at the top level")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping (safe_load keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: the constructor below refuses it with its own message
                continue
            if twice:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# Numbers are read only as written in decimal (YAML 1.2's core schema): YAML 1.1, PyYAML's, reads 010 as 8, 0x10 as 16
# and 1:30 as 90. Those stay text here, so a setting gets what was written (pydantic reads "010" as 10) or is refused.
_NUMBERS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBERS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_DECIMAL = (
    (_NUMBERS[0], re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")),
    (_NUMBERS[1], re.compile(r"^(?:[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                             r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789.")),
)
for _tag, _regexp, _first in _DECIMAL:
    _UniqueKeyLoader.add_implicit_resolver(_tag, _regexp, _first)


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper, quoting a text that either YAML 1.1 or relation's loader would read as a number
    (``1e3``, ``010``), so a saved config reads back as it was and other YAML readers read it the same."""


_Dumper.yaml_implicit_resolvers = {first: list(rs) for first, rs in yaml.SafeDumper.yaml_implicit_resolvers.items()}
for _tag, _regexp, _first in _DECIMAL:
    _Dumper.add_implicit_resolver(_tag, _regexp, _first)


def dump_yaml(data) -> str:
    """``data`` as YAML that :func:`_load_unique` reads back the same (:class:`_Dumper`), keys in order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _load_unique(text: str):
    """``yaml.safe_load(text)`` with :class:`_UniqueKeyLoader` (as yaml.load does it with that loader)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    under: dict | None = None,
) -> RelationConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides <- command flags (``{'infer.steps': 4}``).

    With ``model.base: demo`` the demo model's own defaults (``relation_cli/demo/relation.yaml``) sit
    between the field defaults and the YAML file. ``under``: settings between those and the YAML file
    (``--run``: the run's model and infer settings).
    """
    tree = _merged(under or {}, read_yaml(path) if path else {})
    origin = f"'{path}'" if path else "defaults"
    for text in overrides or []:
        parts, value = parse_override(text)
        if parts[0] == "run":  # a record of what a training produced, not a setting: --run reads it
            raise RelationError(f"override {text!r}: the run section is written by relation train and read by "
                                "--run DIR; it cannot be set")  # fmt: skip
        _set_path(tree, parts, value, f"override {text!r}")
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(tree, key.split("."), value, f"option for {key}")
    if overrides or flags:
        origin += " with overrides"
    model = tree.get("model")
    if (model.get("base", DEMO) if isinstance(model, dict) else DEMO) == DEMO and DEMO_DEFAULTS.is_file():
        tree = _merged(read_yaml(DEMO_DEFAULTS), tree)
    try:
        return RelationConfig.model_validate(tree)
    except ValidationError as e:
        raise RelationError(_format_errors(e, origin)) from None


def _merged(low: dict, high: dict) -> dict:
    """``high`` over ``low``, section by section."""
    out = dict(low)
    for key, value in high.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dump_config(cfg: RelationConfig) -> str:
    return dump_yaml(cfg.model_dump(mode="json"))


def save_config(cfg: RelationConfig, path: str | Path, header: Sequence[str] = ()) -> Path:
    """Write the resolved config atomically (temporary file, then rename): :func:`config_text`."""
    path = Path(path)
    write_text_atomic(path, config_text(cfg, header))
    return path


def config_text(cfg: RelationConfig, header: Sequence[str] = ()) -> str:
    """The resolved config as YAML, its model sources made absolute (:func:`with_absolute_sources`); ``header``
    lines go first as YAML comments (the text still loads as a config)."""
    comments = "".join("# " + line.encode("unicode_escape").decode("ascii") + "\n" for line in header)  # one line each
    return comments + dump_config(with_absolute_sources(cfg))


def is_saved_config(path: str | Path) -> bool:
    """Whether the YAML file at ``path`` is a whole resolved configuration as :func:`save_config` writes it
    (every section with every key), not a user's own: one that gives only some keys, or is not readable."""
    try:
        data = read_yaml(path)
    except RelationError:
        return False
    if set(data) != set(RelationConfig.model_fields):
        return False
    for name, f in RelationConfig.model_fields.items():
        section = data[name]
        if section is not None and not (isinstance(section, dict) and set(section) == set(_section_class(f).model_fields)):
            return False
    return True


def absolute_source(value: str | None) -> str | None:
    """A model source as a saved config records it: an existing local path made absolute; a hub id, ``demo``,
    an empty value or a path that does not exist as written."""
    if not value or value == DEMO:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


SOURCE_KEYS = ("model.base", "model.image_encoder", "adapter.path")
"""The single-path model sources; with each of ``lora.paths``, what is saved as an absolute path."""


def absolute_flat_sources(flat: dict) -> dict:
    """A copy of a flat ``{"section.key": value}`` config (``generation.json``, ``--resume``'s comparison)
    with its model sources as :func:`absolute_source` gives them: an older record may hold a relative
    spelling, read from the same working directory."""
    out = dict(flat)
    for key in SOURCE_KEYS:
        if isinstance(out.get(key), str):
            out[key] = absolute_source(out[key])
    if isinstance(out.get("lora.paths"), list):
        out["lora.paths"] = [{**f, "path": absolute_source(f["path"])} if isinstance(f, dict) and isinstance(f.get("path"), str)
                             else f for f in out["lora.paths"]]  # fmt: skip
    return out


def with_absolute_sources(cfg: RelationConfig) -> RelationConfig:
    """A copy of ``cfg`` whose local model sources (``model.base``, ``model.image_encoder``, ``adapter.path``,
    each of ``lora.paths``) are absolute paths: paths in a config are read from the working directory, so a
    saved ``adapter.path: runs/a/adapter`` would name another adapter, or none, when read from elsewhere.
    Hub ids, ``demo``, empty values and paths that do not exist stay as written (:func:`absolute_source`)."""
    out = cfg.model_copy(deep=True)
    for key in SOURCE_KEYS:
        section, name = key.split(".")
        setattr(getattr(out, section), name, absolute_source(getattr(getattr(out, section), name)))
    for lora in out.lora.paths:
        lora.path = absolute_source(lora.path)
    return out


def describe_fields(section: str | None = None) -> str:
    """Every key of ``section`` (all sections if None) with its type, choices, default and help text.

    What ``relation config [SECTION]`` prints. Raises :class:`RelationError` for an unknown section.
    """
    sections = RelationConfig.model_fields
    if section is not None and section not in sections:
        raise RelationError(f"no config section '{section}': use one of {', '.join(sections)}")
    demo = read_yaml(DEMO_DEFAULTS) if DEMO_DEFAULTS.is_file() else {}
    rows = []
    for name in [section] if section else list(sections):
        for key, f in _section_class(sections[name]).model_fields.items():
            default = "(required)" if f.is_required() else json.dumps(f.get_default(call_default_factory=True))
            if key in demo.get(name, {}):
                default += f" (demo model: {json.dumps(demo[name][key])})"
            rows.append(f"{name}.{key}: {type_name(f.annotation)} = {default}\n    {f.description or ''}")
    return "\n".join(rows)


def _section_class(field) -> type[BaseModel]:
    """The section model of a RelationConfig field (``RunSection | None`` -> ``RunSection``)."""
    candidates = [field.annotation, *get_args(field.annotation)]
    return next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))


def type_name(annotation: Any) -> str:
    """``int``, ``str | None``, ``list[str]``; a Literal shows its choices: ``none | int8 | fp8``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))
