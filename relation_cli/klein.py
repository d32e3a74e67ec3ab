"""``RelationKleinPipeline``: diffusers' Flux2KleinPipeline (FLUX.2 [klein]) with a RelationAdapter.

The query image enters as klein's reference image does: its clean latents follow the target's tokens,
with their own time coordinate (10, ``Flux2KleinPipeline._prepare_image_ids``), and klein's own text
encoder (Qwen3), schedule (``compute_empirical_mu``) and classifier-free guidance (non-distilled models,
``guidance_scale > 1``) run unchanged: this class only chooses the query's size, encodes the exemplars
and hands the RelationAdapter's attention kwargs to klein's denoising loop.
"""

from __future__ import annotations

from typing import Any, Callable

import PIL.Image
import torch
from diffusers import Flux2KleinPipeline

from .adapter import RelationAdapter
from .checks import KLEIN_MIN_SIDE
from .pipeline import Pair, RelationMixin

KLEIN_PIPELINES = ("Flux2KleinPipeline",)
"""model_index.json ``_class_name`` values that load as :class:`RelationKleinPipeline`."""


class RelationKleinPipeline(RelationMixin, Flux2KleinPipeline):
    r"""FLUX.2 [klein] in-context editor with a RelationAdapter (Gong et al., 2025).

    Extra components, as :class:`~relation_cli.pipeline.RelationPipeline`: ``image_encoder``
    (``SiglipVisionModel``), ``feature_extractor`` and ``relation_adapter`` (:class:`RelationAdapter` with
    FLUX.2 processors, installed on the transformer).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->relation_adapter->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "relation_adapter"]
    min_working_side = KLEIN_MIN_SIDE  # Flux2ImageProcessor.check_image_input's minimum for reference images

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        transformer,
        is_distilled: bool = False,
        image_encoder=None,
        feature_extractor=None,
        relation_adapter: RelationAdapter | None = None,
    ):
        super().__init__(scheduler, vae, text_encoder, tokenizer, transformer, is_distilled=is_distilled)
        self.register_modules(image_encoder=image_encoder, feature_extractor=feature_extractor, relation_adapter=None)
        self.query_ids = "reference"  # klein's convention; model.query_ids clone|kontext are FLUX.1's
        if relation_adapter is not None:
            self.set_relation_adapter(relation_adapter)

    # ------------------------------------------------------------------------- base-specific, for train/infer

    def encode_instruction(self, prompt: str, device: torch.device, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """One text instruction -> ``{"prompt_embeds": (1, L, 3 x Qwen3 width)}`` (klein's ``encode_prompt``)."""
        embeds, _ = self.encode_prompt(prompt=[prompt], device=device, max_sequence_length=max_sequence_length)
        return {"prompt_embeds": embeds}

    def text_ids(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Position ids ``(L, 4)`` of ``length`` text tokens, ``(0, 0, 0, l)`` (``Flux2KleinPipeline._prepare_text_ids``)."""
        return self._prepare_text_ids(torch.empty(1, length, 1))[0].to(device, dtype)

    def latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """A VAE latent sample ``(B, c, h, w)`` -> tokens ``(B, hw/4, 4c)``: patchified 2x2, normalised by the
        VAE's batch-norm statistics and packed, as ``Flux2KleinPipeline._encode_vae_image`` treats its latents
        (``(x - running_mean) / sqrt(running_var + batch_norm_eps)``)."""
        x = self._patchify_latents(latents)
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(x.device, x.dtype)
        return self._pack_latents((x - mean) / std)

    def relation_ids(self, rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Position ids ``(2N, 4)`` of ``[target ; query]`` on a ``rows x cols`` token grid: ``(0, row, col, 0)``
        for the target (``_prepare_latent_ids``), ``(10, row, col, 0)`` for the query, klein's first reference
        image (``_prepare_image_ids``). The same ids ``__call__`` gives the transformer."""
        grid = torch.empty(1, 1, rows, cols)
        ids = torch.cat([self._prepare_latent_ids(grid)[0], self._prepare_image_ids([grid])[0]])
        return ids.to(device, dtype)

    def base_pipeline(self) -> Flux2KleinPipeline:
        """diffusers' ``Flux2KleinPipeline`` over this one's base components (to save them as a base folder)."""
        return Flux2KleinPipeline(
            scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            transformer=self.transformer, is_distilled=self.config.is_distilled,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        exemplars: Pair | list[Pair] | None = None,
        prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        max_area: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        relation_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        relation_tokens: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 512,
        precompute_relation_kv: bool = True,
    ):
        r"""Edit ``image`` (the query B) the way ``exemplars`` (A, A') shows, through ``Flux2KleinPipeline.__call__``.

        Args:
            image: one query image (a list of one); it is resized to the working size and passed to klein
                as its reference image. Raises ``ValueError`` for more than one: klein's reference images
                are shared by the whole batch.
            exemplars: one (A, A') pair, or a list of one entry (a pair or a list of k pairs), as in
                ``RelationPipeline``; k pairs give ``(1, 2kT, C)`` exemplar tokens.
            prompt, prompt_embeds: the instruction, or its encoding (:meth:`encode_instruction`); neither: "".
            height, width, max_area: working size, as in ``RelationPipeline``: the query's own size, shrunk to
                about ``max_area`` pixels when larger, floored to :attr:`size_multiple`.
            guidance_scale: klein's classifier-free guidance (on when > 1 and the model is not distilled;
                the exemplars act in both branches).
            relation_scale: adapter strength (the paper's alpha); 0 ignores the exemplars.
            relation_tokens: precomputed exemplar tokens ``(1, 2kT, C)`` instead of ``exemplars``.
            precompute_relation_kv: compute every layer's exemplar keys/values once, not at every step.
            Others: as in ``Flux2KleinPipeline.__call__``.
        """
        images = self.query_images(image)
        if len(images) != 1:
            raise ValueError(f"FLUX.2 [klein] takes one query image per call, got {len(images)}")
        height, width = self.working_size(images[0], height, width, max_area)
        self.check_exemplars(1, exemplars, relation_scale, relation_tokens)
        device = self._execution_device
        attention_kwargs = self.relation_attention_kwargs(
            exemplars, relation_scale, relation_tokens, device, precompute_relation_kv
        )
        query = self.image_processor.resize(images[0].convert("RGB"), height, width)
        return super().__call__(
            image=[query], prompt="" if prompt is None and prompt_embeds is None else prompt, height=height,
            width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator,
            latents=latents, prompt_embeds=prompt_embeds, output_type=output_type, return_dict=return_dict,
            attention_kwargs=attention_kwargs or None, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"],
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
