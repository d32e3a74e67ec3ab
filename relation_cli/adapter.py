"""The RelationAdapter: exemplar projection + one attention processor per transformer layer (SPEC 2.1).

Shapes: B batch, T tokens per exemplar image, C = ``joint_attention_dim``, d = image-encoder width,
H heads of D = ``attention_head_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_flux import (
    FluxAttnProcessor,
    FluxTransformer2DModel,
)
from diffusers.models.transformers.transformer_flux2 import (
    Flux2AttnProcessor,
    Flux2ParallelSelfAttnProcessor,
    Flux2Transformer2DModel,
)

from .errors import RelationError
from .flux_private import qkv_projections

KV = tuple[torch.Tensor, torch.Tensor]
Transformer = FluxTransformer2DModel | Flux2Transformer2DModel


class RelationProjection(nn.Module):
    """One image embedding ``(N, d)`` -> ``(N, T, C)`` exemplar tokens: Linear-GELU-Linear, then LayerNorm."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Sequential(
            nn.Linear(image_embed_dim, image_embed_dim * 2),
            nn.GELU(),
            nn.Linear(image_embed_dim * 2, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.proj(image_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        return self.norm(x)


class RelationAttnProcessor(nn.Module):
    """FLUX attention plus a side attention from the layer's image query to the exemplar tokens.

    The main attention is diffusers' ``FluxAttnProcessor`` computation, unchanged. The side attention
    ``ip = SDPA(norm_q(to_q(x)), rmsnorm(to_k_ip(e)), to_v_ip(e))`` uses the query *before* RoPE; its
    output, times ``relation_scale``, is added to the image stream before ``to_out`` in double-stream
    layers, and to every token of the joint sequence in single-stream layers.

    Exemplar information arrives through ``joint_attention_kwargs``: either ``relation_kv`` (per-layer
    keys/values precomputed once per generation, see :meth:`RelationAdapter.key_values`) or
    ``relation_tokens`` ``(B, 2kT, C)`` (k exemplar pairs), from which this layer computes its own keys/values.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, cross_attention_dim: int, hidden_size: int, head_dim: int, index: int):
        super().__init__()
        self.index = index
        self.head_dim = head_dim
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.norm_k_ip = RMSNorm(head_dim, eps=1e-5, elementwise_affine=False)

    def key_value(self, tokens: torch.Tensor) -> KV:
        """``(B, 2kT, C)`` exemplar tokens -> key and value ``(B, 2kT, H, D)``."""
        tokens = tokens.to(self.to_k_ip.weight.dtype)
        key = self.to_k_ip(tokens).unflatten(-1, (-1, self.head_dim))
        value = self.to_v_ip(tokens).unflatten(-1, (-1, self.head_dim))
        return self.norm_k_ip(key), value

    def side_attention(
        self, ip_query: torch.Tensor, relation_tokens: torch.Tensor | None, relation_kv, relation_scale: float
    ) -> torch.Tensor | None:
        """``relation_scale * SDPA(ip_query, k_ip, v_ip)``: the layer's query ``(B, S, H, D)`` (after its QK norm,
        before RoPE) attending to the exemplar keys/values ``(B, 2kT, H, D)`` -> ``(B, S, H*D)``; ``None``
        when the scale is 0 or no exemplars were given (SPEC 2.1)."""
        if relation_scale == 0 or (relation_kv is None and relation_tokens is None):
            return None
        ip_key, ip_value = relation_kv[self.index] if relation_kv is not None else self.key_value(relation_tokens)
        ip = dispatch_attention_fn(
            ip_query, ip_key.to(ip_query.dtype), ip_value.to(ip_query.dtype), backend=self._attention_backend
        )
        return relation_scale * ip.flatten(2, 3).to(ip_query.dtype)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        relation_tokens: torch.Tensor | None = None,
        relation_kv: list[KV] | None = None,
        relation_scale: float = 1.0,
    ):
        query, key, value, enc_query, enc_key, enc_value = qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # (B, S, H, D)
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        ip_query = query  # image stream (double) or whole joint sequence (single), before RoPE

        if encoder_hidden_states is not None:
            enc_query = attn.norm_added_q(enc_query.unflatten(-1, (-1, attn.head_dim)))
            enc_key = attn.norm_added_k(enc_key.unflatten(-1, (-1, attn.head_dim)))
            enc_value = enc_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([enc_query, query], dim=1)
            key = torch.cat([enc_key, key], dim=1)
            value = torch.cat([enc_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )  # fmt: skip
        out = out.flatten(2, 3).to(query.dtype)

        ip = self.side_attention(ip_query, relation_tokens, relation_kv, relation_scale)

        if encoder_hidden_states is None:  # single-stream layer: output covers text + image tokens
            return out if ip is None else out + ip

        enc_out, out = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        if ip is not None:
            out = out + ip
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(enc_out.contiguous())


class Flux2RelationAttnProcessor(RelationAttnProcessor, Flux2AttnProcessor):
    """FLUX.2 double-stream attention (diffusers' ``Flux2AttnProcessor``, run as is) plus the side attention of
    :class:`RelationAttnProcessor` from the image stream's query to the exemplar tokens.

    The side attention's query is the layer's own ``norm_q(to_q(x))`` (before RoPE) over the image tokens;
    its output ``ip`` ``(B, N, H*D)`` enters as in FLUX.1, added to the image stream before ``to_out``.
    FLUX.2's projections have no bias (``bias=False`` in ``Flux2TransformerBlock``), so adding
    ``to_out(ip)`` after diffusers' output projection is that same sum. The query projection is computed a
    second time here (diffusers' processor keeps its own): one ``H*D x H*D`` matmul per image token.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        relation_tokens: torch.Tensor | None = None,
        relation_kv: list[KV] | None = None,
        relation_scale: float = 1.0,
    ):
        out = Flux2AttnProcessor.__call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if relation_scale == 0 or (relation_kv is None and relation_tokens is None):
            return out
        ip_query = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, attn.head_dim)))  # (B, N, H, D)
        ip = attn.to_out[0](self.side_attention(ip_query, relation_tokens, relation_kv, relation_scale))
        if encoder_hidden_states is None:
            return out + ip
        return out[0] + ip, out[1]


class Flux2RelationParallelAttnProcessor(RelationAttnProcessor, Flux2ParallelSelfAttnProcessor):
    """FLUX.2 parallel single-stream attention (diffusers' ``Flux2ParallelSelfAttnProcessor``, run as is) plus
    the side attention of :class:`RelationAttnProcessor` from every token of the joint sequence.

    The query is the attention's slice of the fused ``to_qkv_mlp_proj`` (its first ``H*D`` rows), through
    ``norm_q``, before RoPE; ``ip`` ``(B, S, H*D)`` is added to the attention output before the fused output
    projection, as FLUX.1 adds it before its single block's ``proj_out``: that is ``to_out``'s attention
    columns applied to ``ip`` (no bias in FLUX.2). Weights are read directly here, so a LoRA on
    ``to_qkv_mlp_proj`` or ``attn.to_out`` of these blocks reaches the side attention only once fused.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        relation_tokens: torch.Tensor | None = None,
        relation_kv: list[KV] | None = None,
        relation_scale: float = 1.0,
    ) -> torch.Tensor:
        out = Flux2ParallelSelfAttnProcessor.__call__(self, attn, hidden_states, attention_mask, image_rotary_emb)
        if relation_scale == 0 or (relation_kv is None and relation_tokens is None):
            return out
        dtype, inner = hidden_states.dtype, attn.inner_dim
        query = F.linear(hidden_states, attn.to_qkv_mlp_proj.weight[:inner].to(dtype))
        ip_query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # (B, S, H, D)
        ip = self.side_attention(ip_query, relation_tokens, relation_kv, relation_scale)
        return out + F.linear(ip, attn.to_out.weight[:, :inner].to(dtype))


def _processor_class(flux2_double_layers: int | None, index: int) -> type[RelationAttnProcessor]:
    """The processor class of layer ``index`` (see ``RelationAdapter``'s ``flux2_double_layers``)."""
    if flux2_double_layers is None:
        return RelationAttnProcessor
    return Flux2RelationAttnProcessor if index < flux2_double_layers else Flux2RelationParallelAttnProcessor


def stock_processors(transformer) -> dict[str, object] | object:
    """diffusers' own processors for ``transformer`` (``set_attn_processor``'s argument)."""
    if not isinstance(transformer, Flux2Transformer2DModel):
        return FluxAttnProcessor()
    return {
        name: Flux2ParallelSelfAttnProcessor() if name.startswith("single_transformer_blocks") else Flux2AttnProcessor()
        for name in transformer.attn_processors
    }


class LayerKeyValues(Sequence):
    """Every layer's ip key/value, each computed by its own layer on first use, then kept for the
    following denoising steps.

    The same values as :meth:`RelationAdapter.key_values` computes at once, but computed inside the
    transformer's ``forward``: offloading (diffusers' model, sequential and group offload) puts a layer's
    weights on the device only there.
    """

    def __init__(self, processors: Sequence[RelationAttnProcessor], tokens: torch.Tensor):
        self._processors, self._tokens = processors, tokens
        self._kv: list[KV | None] = [None] * len(processors)

    def __len__(self) -> int:
        return len(self._kv)

    def __getitem__(self, index: int) -> KV:
        if self._kv[index] is None:
            self._kv[index] = self._processors[index].key_value(self._tokens)
        return self._kv[index]


class RelationAdapter(ModelMixin, ConfigMixin):
    """Projection + per-layer processors, saved as ``config.json`` + safetensors by ``save_pretrained``.

    Args:
        image_embed_dim: width d of the image encoder's pooled output (1152 for SigLIP so400m).
        cross_attention_dim: C, the transformer's ``joint_attention_dim`` (4096 for FLUX.1-dev).
        num_tokens: T, tokens per exemplar image (128 in the released weights).
        num_layers: attention layers of the transformer (19 double + 38 single = 57 for FLUX.1-dev).
        hidden_size: H * D of the transformer (3072 for FLUX.1-dev).
        attention_head_dim: D (128 for FLUX.1-dev).
        role_embeddings: add a learned "before" vector to A's tokens and an "after" vector to A''s, so
            the adapter knows the direction of the edit. Off in the released model (which sees the pair
            as an unordered set, SPEC 2.1.6); an extension for newly trained adapters.
        flux2_double_layers: ``None`` for a FLUX.1 transformer (``FluxTransformer2DModel``); for a FLUX.2 one
            (``Flux2Transformer2DModel``, e.g. FLUX.2 [klein]) its double-stream layer count: the first that
            many processors are :class:`Flux2RelationAttnProcessor`, the rest
            :class:`Flux2RelationParallelAttnProcessor` (5 + 20 for klein 4B).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        image_embed_dim: int = 1152,
        cross_attention_dim: int = 4096,
        num_tokens: int = 128,
        num_layers: int = 57,
        hidden_size: int = 3072,
        attention_head_dim: int = 128,
        role_embeddings: bool = False,
        flux2_double_layers: int | None = None,
    ):
        super().__init__()
        self.image_proj = RelationProjection(image_embed_dim, cross_attention_dim, num_tokens)
        self.role = nn.Parameter(torch.zeros(2, 1, cross_attention_dim)) if role_embeddings else None
        self.processors = nn.ModuleList(
            _processor_class(flux2_double_layers, i)(cross_attention_dim, hidden_size, attention_head_dim, i)
            for i in range(num_layers)
        )

    @classmethod
    def for_transformer(
        cls, transformer: Transformer, image_embed_dim: int, num_tokens: int, role_embeddings: bool = False
    ):
        c = transformer.config
        return cls(
            image_embed_dim=image_embed_dim,
            cross_attention_dim=c.joint_attention_dim,
            num_tokens=num_tokens,
            num_layers=c.num_layers + c.num_single_layers,
            hidden_size=c.num_attention_heads * c.attention_head_dim,
            attention_head_dim=c.attention_head_dim,
            role_embeddings=role_embeddings,
            flux2_double_layers=c.num_layers if isinstance(transformer, Flux2Transformer2DModel) else None,
        )

    # Set by relation_cli.runtime when the transformer is offloaded: see key_values.
    kv_in_layers = False

    def forward(self, embeds_a: torch.Tensor, embeds_b: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings of A and A' -> exemplar tokens: ``(B, d)`` each (one pair) -> ``(B, 2T, C)``;
        ``(B, k, d)`` each (k pairs) -> ``(B, 2kT, C)``, pair by pair: A_1's T tokens, A'_1's, A_2's, ...

        With role embeddings, every A gets the "before" vector and every A' the "after" one (SPEC 6).
        """
        dtype = self.image_proj.norm.weight.dtype
        a, b = embeds_a.to(dtype), embeds_b.to(dtype)
        if a.dim() == 2:
            a, b = a[:, None], b[:, None]
        if a.shape != b.shape:
            raise ValueError(f"A embeddings {tuple(a.shape)} and A' embeddings {tuple(b.shape)} differ in shape")
        batch, k = a.shape[:2]
        a, b = self.image_proj(a.flatten(0, 1)), self.image_proj(b.flatten(0, 1))  # (B*k, T, C)
        if self.role is not None:
            a, b = a + self.role[0], b + self.role[1]
        return torch.stack([a, b], dim=1).reshape(batch, 2 * k * a.shape[1], a.shape[2])

    def encode(self, embeds_a: torch.Tensor, embeds_b: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`, called through the module so that offloading hooks (which wrap ``forward``)
        put the projection on the device first."""
        return self(embeds_a, embeds_b)

    def key_values(self, tokens: torch.Tensor) -> Sequence[KV]:
        """Every layer's ip key/value for ``tokens`` ``(B, 2kT, C)``; computed once, reused at every step.

        The processors are submodules of the transformer's attention layers, so offloading moves their
        weights with the transformer's. With ``kv_in_layers`` set (the transformer is offloaded) each
        layer computes its own pair on first use, inside the transformer's forward
        (:class:`LayerKeyValues`); otherwise all are computed now.
        """
        if self.kv_in_layers:
            return LayerKeyValues(self.processors, tokens)
        return [p.key_value(tokens) for p in self.processors]

    @contextmanager
    def projection_only(self) -> Iterator[None]:
        """Hide the processors from this module for a while, e.g. while offloading hooks are attached to
        every component: the processors are the transformer's submodules too, and must be hooked once."""
        processors = self._modules.pop("processors")
        try:
            yield
        finally:
            self._modules["processors"] = processors

    def check_compatible(
        self, transformer: Transformer, path: str | Path | None = None, image_embed_dim: int | None = None
    ) -> None:
        """Refuse an adapter whose shapes do not fit ``transformer``: layer count, joint (text) width, hidden
        width, head width, and the FLUX.1 / FLUX.2 [klein] family (``flux2_double_layers``), named first;
        with ``image_embed_dim`` (the image encoder's ``hidden_size``, the width of its pooled output) also
        the width the adapter's projection reads.

        Raises RelationError listing every mismatch in one line, naming the adapter's file or folder ``path``
        when given.
        """
        c, a = transformer.config, self.config
        wrong_encoder = (
            [f"image_embed_dim {a.image_embed_dim} (the image encoder gives {image_embed_dim})"]
            if image_embed_dim is not None and a.image_embed_dim != image_embed_dim
            else []
        )
        expected = {
            "num_layers": c.num_layers + c.num_single_layers,
            "cross_attention_dim": c.joint_attention_dim,
            "hidden_size": c.num_attention_heads * c.attention_head_dim,
            "attention_head_dim": c.attention_head_dim,
            "flux2_double_layers": c.num_layers if isinstance(transformer, Flux2Transformer2DModel) else None,
        }
        wrong = [f"{k} {getattr(a, k)} (transformer needs {v})" for k, v in expected.items() if getattr(a, k) != v]
        if (a.flux2_double_layers is None) != (expected["flux2_double_layers"] is None):  # the family, said first
            family = {True: "FLUX.1", False: "FLUX.2 [klein]"}
            wrong.insert(0, f"it was made for a {family[a.flux2_double_layers is None]} transformer and the base "
                            f"is {family[expected['flux2_double_layers'] is None]}")  # fmt: skip
        if wrong or wrong_encoder:
            name = "adapter" if path is None else f"adapter '{path}'"
            what = "this transformer" if not wrong_encoder else "this image encoder" if not wrong else "this model"
            raise RelationError(f"{name} does not fit {what}: " + ", ".join(wrong + wrong_encoder))

    def install(
        self, transformer: Transformer, path: str | Path | None = None, image_embed_dim: int | None = None
    ) -> None:
        """Put one processor on every attention layer, in ``transformer.attn_processors`` order, after
        :meth:`check_compatible` (naming the adapter's ``path`` when given; ``image_embed_dim``: the image
        encoder's width, checked too)."""
        self.check_compatible(transformer, path, image_embed_dim)
        names = list(transformer.attn_processors.keys())
        transformer.set_attn_processor(dict(zip(names, self.processors)))

    @staticmethod
    def uninstall(transformer: Transformer) -> None:
        transformer.set_attn_processor(stock_processors(transformer))

    @contextmanager
    def detached(self, transformer: Transformer) -> Iterator[None]:
        """Temporarily restore stock processors (e.g. to save the transformer without adapter weights)."""
        self.uninstall(transformer)
        try:
            yield
        finally:
            self.install(transformer)
