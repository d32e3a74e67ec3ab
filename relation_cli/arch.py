"""The sizes of a small FLUX-architecture model (``relation init-model --spec``), checked without torch: a spec's
mistakes are answered before the ML libraries are imported (:mod:`relation_cli.tiny` builds the model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LAYERS = 256
"""The most layers of one kind a spec may ask for (FLUX.1-dev: 19 double and 38 single blocks; T5-XXL 24,
SigLIP so400m 27, Qwen3-4B 36 layers): each layer is built as Python objects even on torch's ``meta``
device, so 100,000 of them took minutes and gigabytes before the memory check could answer."""


class ArchSpec(BaseModel):
    """Sizes of a small FLUX + SigLIP + adapter stack. Defaults: the parity fixture's tiny model."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(2, ge=1, le=MAX_LAYERS, description="Double-stream blocks.")
    num_single_layers: int = Field(4, ge=0, le=MAX_LAYERS, description="Single-stream blocks.")
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(16, ge=4, description="Must equal the sum of axes_dims_rope.")
    joint_attention_dim: int = Field(32, ge=4, description="Text/exemplar token width C.")
    axes_dims_rope: tuple[int, ...] = Field(
        (4, 6, 6), description="RoPE axes: 3 for FLUX.1, 4 for FLUX.2 (default (4, 4, 4, 4) with base flux2-klein)."
    )
    text_hidden: int = Field(32, ge=8, description="Width of the CLIP and T5 text encoders (flux2-klein: of Qwen3).")
    text_layers: int = Field(2, ge=1, le=MAX_LAYERS)
    t5_layers: int | None = Field(None, ge=1, le=MAX_LAYERS, description="T5 layers; empty: text_layers.")
    t5_heads: int = Field(4, ge=1, description="T5 attention heads (FLUX.1-dev's T5-XXL: 64).")
    t5_head_dim: int = Field(8, ge=1, description="T5 d_kv (T5-XXL: 64).")
    t5_ff: int | None = Field(None, ge=1, description="T5 feed-forward width; empty: 2 x joint_attention_dim.")
    vae_channels: tuple[int, ...] = Field(
        (8, 16, 16, 16), max_length=8, description="VAE block widths (4 blocks = 8x; at most 8)."
    )
    vae_latent_channels: int = Field(16, ge=1, description="in_channels of the transformer is 4x this.")
    vae_norm_groups: int = Field(4, ge=1)
    vae_layers_per_block: int = Field(1, ge=1, le=MAX_LAYERS, description="ResNet layers per VAE block (FLUX.1-dev: 2).")
    siglip_hidden: int = Field(16, ge=4)
    siglip_layers: int = Field(2, ge=1, le=MAX_LAYERS)
    siglip_heads: int = Field(2, ge=1)
    siglip_image_size: int = Field(32, ge=8)
    siglip_patch_size: int = Field(8, ge=2)
    siglip_intermediate: int | None = Field(None, ge=1, description="SigLIP MLP width; empty: 2 x siglip_hidden.")
    num_tokens: int = Field(128, ge=1, description="Exemplar tokens per image.")
    kontext: bool = Field(
        False, description="Save base/ in FLUX.1 Kontext's layout (model_index.json names FluxKontextPipeline)."
    )
    base: Literal["flux1", "flux2-klein"] = Field(
        "flux1",
        description="flux1: FLUX.1 (CLIP + T5, FluxPipeline layout). flux2-klein: FLUX.2 [klein] (Flux2Transformer2DModel, "
        "AutoencoderKLFlux2, a Qwen3 text encoder of width text_hidden; joint_attention_dim defaults to 3 x text_hidden, "
        "Flux2KleinPipeline layout).",
    )
    qwen_layers: int = Field(
        27, ge=27, le=MAX_LAYERS, description="FLUX.2 [klein] only: Qwen3 layers (klein reads the hidden states of layers 9, 18, 27)."
    )
    qwen_heads: int = Field(2, ge=1, description="FLUX.2 [klein] only: Qwen3 attention heads (Qwen3-4B: 32).")
    qwen_kv_heads: int = Field(1, ge=1, description="FLUX.2 [klein] only: Qwen3 key/value heads (Qwen3-4B: 8).")
    qwen_head_dim: int | None = Field(None, ge=1, description="Qwen3 head width; empty: text_hidden / qwen_heads.")
    qwen_intermediate: int | None = Field(None, ge=1, description="Qwen3 MLP width; empty: 2 x text_hidden.")
    qwen_vocab: int | None = Field(
        None, ge=259, description="Qwen3 vocabulary (Qwen3-4B: 151936); empty: the offline tokenizer's 259."
    )

    @model_validator(mode="before")
    @classmethod
    def _klein_defaults(cls, data):
        """With ``base: flux2-klein``, unset ``axes_dims_rope`` and ``joint_attention_dim`` take klein's shape."""
        if isinstance(data, dict) and data.get("base") == "flux2-klein":
            text_hidden = data.get("text_hidden", cls.model_fields["text_hidden"].default)
            return {"axes_dims_rope": (4, 4, 4, 4), "joint_attention_dim": 3 * text_hidden, **data}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        """``true`` is not 1: a YAML boolean for a size is refused, as the config loader refuses it."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError(f"a number, not {str(value).lower()}")
        return value

    @model_validator(mode="after")
    def _check_shapes(self):
        axes = 4 if self.base == "flux2-klein" else 3
        if len(self.axes_dims_rope) != axes:
            raise ValueError(f"axes_dims_rope needs {axes} axes for base {self.base}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must equal the sum of axes_dims_rope "
                             f"{tuple(self.axes_dims_rope)} ({sum(self.axes_dims_rope)})")  # fmt: skip
        if not self.vae_channels or any(c % self.vae_norm_groups for c in self.vae_channels):
            raise ValueError(f"vae_channels {tuple(self.vae_channels)} must be one or more widths, each a multiple of "
                             f"vae_norm_groups ({self.vae_norm_groups})")  # fmt: skip
        if self.siglip_hidden % self.siglip_heads:
            raise ValueError(f"siglip_hidden {self.siglip_hidden} must be a multiple of siglip_heads {self.siglip_heads}")
        if self.base == "flux2-klein" and self.joint_attention_dim != 3 * self.text_hidden:
            raise ValueError("joint_attention_dim must be 3 x text_hidden for flux2-klein (3 stacked Qwen3 layers)")
        if self.base == "flux2-klein" and self.kontext:
            raise ValueError("kontext is a FLUX.1 layout; base flux2-klein has its own")
        return self
