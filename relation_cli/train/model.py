"""What is trained, as one module: the transformer (with its LoRA, or whole), the adapter, optionally SigLIP.

Wrapping them in one ``nn.Module`` whose forward returns the prediction lets accelerate wrap a
single object for DDP/FSDP, and lets checkpoints save exactly the parameters that train.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..adapter import RelationAdapter


class RelationTrainModel(nn.Module):
    def __init__(self, transformer: nn.Module, adapter: RelationAdapter, image_encoder: nn.Module | None = None):
        super().__init__()
        self.transformer = transformer
        self.adapter = adapter
        self.image_encoder = image_encoder  # set only when it trains; frozen embeddings come precomputed

    def exemplar_tokens(self, embeds: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``(2kB, d)`` pooled embeddings (sample 0's A_1, A'_1, ..., A_k, A'_k, then sample 1's, ...) ->
        tokens ``(B, 2kT, C)``; dropped samples get zeros for all their pairs."""
        pairs = embeds.unflatten(0, (keep.shape[0], -1, 2))  # (B, k, 2, d)
        keep = keep.to(pairs.dtype)[:, None, None]
        return self.adapter.encode(pairs[:, :, 0] * keep, pairs[:, :, 1] * keep)

    def forward(
        self,
        noisy: torch.Tensor,  # (B, N, 4c) target tokens at noise level sigma
        query: torch.Tensor,  # (B, N, 4c) clean query tokens
        sigma: torch.Tensor,  # (B,)
        guidance: torch.Tensor | None,  # (B,)
        prompt_embeds: torch.Tensor,  # (B, L, C)
        pooled: torch.Tensor | None,  # (B, P) on FLUX.1; None on FLUX.2 (no pooled projection)
        text_ids: torch.Tensor,  # (L, 3); (L, 4) on FLUX.2
        img_ids: torch.Tensor,  # (2N, 3|4), the target's ids then the query's (the pipeline's relation_ids)
        keep: torch.Tensor,  # (B,) 1 = use the exemplars, 0 = dropped
        exemplar_embeds: torch.Tensor | None = None,  # (2kB, d) from a frozen encoder, k pairs per sample
        exemplar_pixels: torch.Tensor | None = None,  # (2kB, 3, s, s) when the encoder trains
    ) -> torch.Tensor:
        if exemplar_embeds is None:
            exemplar_embeds = self.image_encoder(exemplar_pixels.to(self.image_encoder.dtype)).pooler_output
        tokens = self.exemplar_tokens(exemplar_embeds, keep)
        pooled_kwargs = {} if pooled is None else {"pooled_projections": pooled}
        pred = self.transformer(
            hidden_states=torch.cat([noisy, query], dim=1),
            timestep=sigma,
            guidance=guidance,
            **pooled_kwargs,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=img_ids,
            joint_attention_kwargs={"relation_kv": self.adapter.key_values(tokens)},
            return_dict=False,
        )[0]
        return pred[:, : noisy.shape[1]]  # the loss is on the target tokens only

    def trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

