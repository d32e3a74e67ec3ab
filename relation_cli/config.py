"""One configuration model for all four commands.

Precedence: field defaults, then the YAML file (``--config``), then ``--set section.key=value`` overrides,
then the command's own flags; validation runs once on the result and reports every problem together.
This module imports pydantic and yaml only, so ``relation --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RelationError
from .fs import write_text_atomic

DEMO = "demo"
"""``model.base`` value that selects the small model shipped inside the package."""

PAPER_LORA_TARGETS = [
    # double-stream blocks
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip
"""The paper's LoRA targets (SPEC 2.4). ``attn.to_q/k/v`` also match the single-stream blocks."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    base: str = Field(
        DEMO,
        description="FLUX base model: 'demo' (the small model shipped with relation), a hub id such as "
        "black-forest-labs/FLUX.1-dev, or a local folder in the diffusers layout.",
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


class AdapterSection(Section):
    path: str | None = Field(
        None,
        description="RelationAdapter weights: the authors' ip_adapter-*.bin, or a folder in relation's "
        "safetensors format. Empty: the demo's adapter for base=demo; required otherwise.",
    )
    scale: float = Field(1.0, ge=0.0, description="Adapter strength (the paper's alpha); 0 turns it off.")
    num_tokens: int = Field(128, ge=1, description="Exemplar tokens per image, for a newly created adapter.")


class LoraSection(Section):
    path: str | None = Field(
        None,
        description="Diffusers-format LoRA (pytorch_lora_weights.safetensors, or the folder holding it). "
        "Empty: the demo's LoRA if it has one; none otherwise.",
    )
    fuse: bool = Field(True, description="Fuse the LoRA into the transformer weights for inference.")
    rank: int = Field(128, ge=1, description="LoRA rank when training.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha when training. Empty: equal to rank.")
    targets: list[str] = Field(
        default_factory=lambda: list(PAPER_LORA_TARGETS),
        description="Module names (suffixes) that get a LoRA when training.",
    )


class DataSection(Section):
    max_image_pixels: int = Field(
        64_000_000, ge=256, description="Largest accepted image (width x height); larger ones are refused."
    )
    resolution: int = Field(512, ge=16, description="Long side of training images (sides become multiples of 16).")


class InferSection(Section):
    prompt: str = Field("", description="Text instruction that goes with the exemplar pair (may be empty).")
    steps: int = Field(24, ge=1, le=1000, description="Denoising steps.")
    guidance: float = Field(3.5, ge=0.0, description="FLUX guidance embedding value (no true CFG).")
    seed: int = Field(1000, ge=0, description="Seed of the one CPU generator that draws all randomness.")
    max_sequence_length: int = Field(512, ge=1, le=512, description="T5 prompt length in tokens.")
    overwrite: bool = Field(False, description="Replace output files that already exist.")


class TrainSection(Section):
    output_dir: str = Field("runs/train", description="Where checkpoints, weights and logs are written.")
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(1, ge=1, description="Samples per device per step.")


class EvalSection(Section):
    output_dir: str = Field("runs/eval", description="Where generated images, metrics and the report go.")
    limit: int | None = Field(None, ge=1, description="Score only the first N rows of each file.")


class RelationConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    adapter: AdapterSection = Field(default_factory=AdapterSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    infer: InferSection = Field(default_factory=InferSection)
    eval: EvalSection = Field(default_factory=EvalSection)


# --------------------------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'infer.steps=4'`` -> ``(['infer', 'steps'], 4)``. Values are YAML scalars/flow lists."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RelationError(f"override '{text}': expected section.key=value")
    parts = key.split(".")
    if any(not p.isidentifier() for p in parts) or len(parts) < 2:
        raise RelationError(f"override '{text}': '{key}' is not a section.key name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text as a string, let validation judge it
    return parts, value


def _set_path(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RelationError(f"{origin}: '{'.'.join(parts[: depth + 1])}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RelationError(f"config file '{path}': not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RelationError(f"config file '{path}': not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RelationError(f"config file '{path}'{where}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RelationError(f"config file '{path}': expected a mapping of sections at the top level")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> RelationConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides <- command flags (``{'infer.steps': 4}``)."""
    tree = read_yaml(path) if path else {}
    origin = f"'{path}'" if path else "defaults"
    for text in overrides or []:
        parts, value = parse_override(text)
        _set_path(tree, parts, value, f"override '{text}'")
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(tree, key.split("."), value, f"option for {key}")
    if overrides or flags:
        origin += " with overrides"
    try:
        return RelationConfig.model_validate(tree)
    except ValidationError as e:
        raise RelationError(_format_errors(e, origin)) from None


def dump_config(cfg: RelationConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: RelationConfig, path: str | Path) -> Path:
    """Write the resolved config atomically (temporary file, then rename)."""
    path = Path(path)
    write_text_atomic(path, dump_config(cfg))
    return path


def describe_fields() -> str:
    """All keys with their descriptions, for ``--help`` epilogs and the README."""
    rows = []
    for name, field in RelationConfig.model_fields.items():
        section = field.default_factory()  # type: ignore[misc]
        for key, f in type(section).model_fields.items():
            rows.append(f"{name}.{key}: {f.description}")
    return "\n".join(rows)
