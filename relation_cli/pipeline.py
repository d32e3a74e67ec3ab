"""``RelationPipeline``: diffusers' FluxPipeline taught to edit a query image like an exemplar pair.

Stages, in diffusers' order: check inputs -> encode prompt -> encode exemplars -> prepare latents
(query latents sampled, then noise drawn, from one generator) -> timesteps (``mu`` from the doubled
sequence) -> denoising loop over ``[noisy target ; clean query]`` with cloned position ids -> decode.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.flux.pipeline_flux import (
    FluxPipeline,
    calculate_shift,
    retrieve_timesteps,
)
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .adapter import RelationAdapter
from .flux_private import latent_ids, pack_latents, unpack_latents
from .images import pad_exemplar

Pair = tuple[PIL.Image.Image, PIL.Image.Image]
QUERY_IDS = {"clone": 0.0, "kontext": 1.0}
"""First position axis of the query tokens: 0, a clone of the target's ids (the paper, SPEC 2.2.2), or 1,
FLUX.1 Kontext's convention for its context image (SPEC 6)."""


def relation_latent_ids(
    height: int, width: int, device: torch.device, dtype: torch.dtype, query_ids: str = "clone"
) -> torch.Tensor:
    """Position ids ``(2N, 3)`` of ``[target ; query]`` on a ``height x width`` token grid (N = h*w):
    ``(0, row, col)`` for the target, the same with first axis ``QUERY_IDS[query_ids]`` for the query.
    Used by the pipeline and by training alike."""
    ids = latent_ids(height, width, device, dtype)
    query = ids.clone()
    query[:, 0] = QUERY_IDS[query_ids]
    return torch.cat([ids, query], dim=0)


def exemplar_pairs(entry) -> list[Pair]:
    """One query's exemplars as a list of pairs: a pair ``(A, A')`` -> ``[(A, A')]``; a list of pairs as
    is. Anything else (a pair of the wrong length, a non-image) gives ``[]``."""
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and all(isinstance(i, PIL.Image.Image) for i in entry):
        return [tuple(entry)]
    if isinstance(entry, (tuple, list)) and entry and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(i, PIL.Image.Image) for i in p) for p in entry
    ):
        return [tuple(p) for p in entry]
    return []


class RelationPipeline(FluxPipeline):
    r"""FLUX in-context editor with a RelationAdapter (Gong et al., 2025).

    Extra components: ``image_encoder`` (``SiglipVisionModel``), ``feature_extractor`` (its image
    processor) and ``relation_adapter`` (:class:`RelationAdapter`, installed on the transformer).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->relation_adapter->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "relation_adapter"]

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer,
        image_encoder=None,
        feature_extractor=None,
        relation_adapter: RelationAdapter | None = None,
    ):
        super().__init__(
            scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
            image_encoder=image_encoder, feature_extractor=feature_extractor,
        )  # fmt: skip
        self.register_modules(relation_adapter=None)
        self.query_ids = "clone"  # "kontext" for a FLUX.1 Kontext base: see relation_latent_ids
        if relation_adapter is not None:
            self.set_relation_adapter(relation_adapter)

    def set_relation_adapter(self, adapter: RelationAdapter) -> None:
        """Register ``adapter`` and install its processors on every attention layer of the transformer."""
        adapter.install(self.transformer)
        self.register_modules(relation_adapter=adapter)

    # ------------------------------------------------------------------------------------------ stages

    def check_relation_inputs(self, image, exemplars, prompt, num_inference_steps, relation_scale, relation_tokens):
        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(i, PIL.Image.Image) for i in images):
            raise ValueError("`image` (the query) must be a PIL image or a list of PIL images")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}")
        if isinstance(prompt, list) and len(prompt) != len(images):
            raise ValueError(f"{len(prompt)} prompts for {len(images)} query images")
        if relation_scale == 0:
            return
        if self.relation_adapter is None:
            raise ValueError("no relation_adapter: call set_relation_adapter() or pass relation_scale=0")
        if relation_tokens is None:
            pairs = exemplars if isinstance(exemplars, list) else [exemplars]
            if len(pairs) != len(images) or not all(exemplar_pairs(p) for p in pairs):
                raise ValueError(f"need (A, A') exemplar pairs (one, or a list) per query image: {len(images)} queries")
            if self.image_encoder is None or self.feature_extractor is None:
                raise ValueError("encoding exemplars needs `image_encoder` and `feature_extractor`")

    def encode_exemplars(self, pairs: Sequence[Pair | Sequence[Pair]], device: torch.device) -> torch.Tensor:
        """One entry per query image, each one pair (A, A') or a list of k pairs -> exemplar tokens
        ``(B, 2kT, C)``: each image padded to a regular aspect ratio, through the SigLIP processor,
        ``pooler_output``, then the adapter's projection. Every entry must have the same k."""
        per_query = [exemplar_pairs(entry) for entry in pairs]
        k = len(per_query[0])
        if any(len(p) != k for p in per_query):
            raise ValueError(f"every query image needs the same number of exemplar pairs, got {[len(p) for p in per_query]}")
        flat = [pad_exemplar(img) for entry in per_query for pair in entry for img in pair]  # A_0, A'_0, A_1, ...
        pixels = self.feature_extractor(images=flat, return_tensors="pt").pixel_values
        pooled = self.image_encoder(pixels.to(device, self.image_encoder.dtype)).pooler_output  # (2Bk, d)
        pooled = pooled.unflatten(0, (len(per_query), k, 2))  # (B, k, 2, d)
        return self.relation_adapter.encode(pooled[:, :, 0], pooled[:, :, 1])

    def prepare_relation_latents(
        self, query: torch.Tensor, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query pixels ``(B, 3, H, W)`` in [-1, 1] -> (noise tokens, clean query tokens, ids ``(2N, 3)``
        from :func:`relation_latent_ids` with the pipeline's ``query_ids``).

        Randomness order matters for reproducing the reference: the query latents are *sampled* from
        the VAE posterior first, then the initial noise is drawn, both from ``generator``.
        """
        query = query.to(device=device, dtype=self.vae.dtype)
        clean = self.vae.encode(query).latent_dist.sample(generator)  # (B, c, H/8, W/8)
        clean = (clean - self.vae.config.shift_factor) * self.vae.config.scaling_factor
        b, c, h, w = clean.shape
        noise = randn_tensor((b, c, h, w), generator=generator, device=device, dtype=dtype)
        ids = relation_latent_ids(h // 2, w // 2, device, dtype, self.query_ids)
        return pack_latents(noise), pack_latents(clean.to(dtype)), ids

    # ------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        exemplars: Pair | list[Pair] | None = None,
        prompt: str | list[str] = "",
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 24,
        guidance_scale: float = 3.5,
        relation_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_sequence_length: int = 512,
        relation_tokens: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        precompute_relation_kv: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
    ):
        r"""Edit ``image`` (the query B) the way ``exemplars`` (A, A') shows.

        Args:
            image: query image(s); the output has the query's size floored to a multiple of 16.
            exemplars: one (A, A') pair, or one entry per query image: a pair or a list of k pairs (the
                same k for every query image); k pairs give ``(B, 2kT, C)`` exemplar tokens.
            prompt: text instruction(s); may be empty.
            relation_scale: adapter strength (the paper's alpha); 0 ignores the exemplars.
            relation_tokens: precomputed exemplar tokens ``(B, 2kT, C)`` instead of ``exemplars``.
            prompt_embeds, pooled_prompt_embeds: precomputed text encodings (``encode_prompt``) instead of
                ``prompt``, e.g. to encode a prompt shared by many images once.
            precompute_relation_kv: compute every layer's exemplar keys/values once instead of at
                every step (same result, less work).
            generator: the one generator for all randomness (reference: ``torch.Generator("cpu")``).
        """
        self.check_relation_inputs(image, exemplars, prompt, num_inference_steps, relation_scale, relation_tokens)
        images = image if isinstance(image, list) else [image]
        batch = len(images)
        device = self._execution_device
        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = {}
        self._interrupt = False

        query = self.image_processor.preprocess(images, height=height, width=width).to(torch.float32)
        height, width = query.shape[-2:]

        prompts = None if prompt_embeds is not None else (prompt if isinstance(prompt, list) else [prompt] * batch)
        prompt_embeds, pooled_prompt_embeds, text_ids = self.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, max_sequence_length=max_sequence_length,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
        )  # fmt: skip
        dtype = self.transformer.dtype

        attention_kwargs: dict[str, Any] = {}
        if relation_scale != 0:
            if relation_tokens is None:
                pairs = exemplars if isinstance(exemplars, list) else [exemplars]
                relation_tokens = self.encode_exemplars(pairs, device)
            relation_tokens = relation_tokens.to(device)
            attention_kwargs["relation_scale"] = relation_scale
            if precompute_relation_kv:
                attention_kwargs["relation_kv"] = self.relation_adapter.key_values(relation_tokens)
            else:
                attention_kwargs["relation_tokens"] = relation_tokens
        self._joint_attention_kwargs = attention_kwargs

        latents, query_tokens, img_ids = self.prepare_relation_latents(query, dtype, device, generator)
        n = latents.shape[1]

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(
            2 * n,  # the whole image sequence: target + query tokens
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        self._num_timesteps = len(timesteps)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([batch], guidance_scale, device=device, dtype=torch.float32)

        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                self._current_timestep = t
                timestep = t.expand(batch).to(latents.dtype)
                with self.transformer.cache_context("cond"):
                    noise_pred = self.transformer(
                        hidden_states=torch.cat([latents, query_tokens], dim=1),  # (B, 2N, 4c)
                        timestep=timestep / 1000,
                        guidance=guidance,
                        pooled_projections=pooled_prompt_embeds,
                        encoder_hidden_states=prompt_embeds,
                        txt_ids=text_ids,
                        img_ids=img_ids,
                        joint_attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                # Only the target half is stepped; the query half stays the clean latents.
                latents = self.scheduler.step(noise_pred[:, :n], t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = out.get("latents", latents) if out else latents
                progress_bar.update()
        self._current_timestep = None

        if output_type == "latent":
            result = latents
        else:
            latents = unpack_latents(latents, height, width, self.vae_scale_factor)
            latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
            decoded = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
            result = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return FluxPipelineOutput(images=result)

