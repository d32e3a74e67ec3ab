"""``RelationPipeline``: diffusers' FluxPipeline taught to edit a query image like an exemplar pair.

Stages, in diffusers' order: working size -> check inputs -> encode prompt -> encode exemplars ->
prepare latents (query latents sampled, then noise drawn, from one generator) -> timesteps (``mu`` from
the doubled sequence) -> denoising loop over ``[noisy target ; clean query]`` with cloned position ids
(``interrupt`` honoured) -> decode.
"""

from __future__ import annotations

from pathlib import Path
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
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from .adapter import RelationAdapter
from .flux_private import latent_ids, pack_latents, unpack_latents
from .images import pad_exemplar
from .images import working_size as size_rule

Pair = tuple[PIL.Image.Image, PIL.Image.Image]
logger = logging.get_logger(__name__)
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


class RelationMixin:
    """What every RelationAdapter pipeline adds to its diffusers base pipeline, whatever the transformer:
    the adapter's installation, the working size, the exemplar checks, the exemplar encoding (SigLIP ->
    adapter projection) and the attention kwargs the RelationAdapter processors read. Subclasses:
    :class:`RelationPipeline` (FLUX.1, Kontext) and :class:`~relation_cli.klein.RelationKleinPipeline`."""

    min_working_side = 0
    """Smallest working width/height in pixels the base accepts (beyond :attr:`size_multiple`)."""

    def set_relation_adapter(self, adapter: RelationAdapter, path: str | Path | None = None) -> None:
        """Register ``adapter`` and install its processors on every attention layer of the transformer;
        RelationError (naming the adapter's ``path`` when given) when it does not fit the transformer or the
        pipeline's image encoder (its ``hidden_size``, the width the adapter's projection reads)."""
        encoder = getattr(self, "image_encoder", None)
        adapter.install(self.transformer, path, encoder.config.hidden_size if encoder is not None else None)
        self.register_modules(relation_adapter=adapter)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: ``2 * vae_scale_factor`` (16 for FLUX, 8 for the demo
        model), since FLUX packs 2x2 latent patches; also the factor of ``self.image_processor``."""
        return self.vae_scale_factor * 2

    def working_size(self, image: PIL.Image.Image, height: int | None, width: int | None,
                     max_area: int | None) -> tuple[int, int]:  # fmt: skip
        """``(height, width)`` the model works at for the query ``image``: :func:`~relation_cli.images.working_size`
        with :attr:`size_multiple`; a warning when an explicit ``height``/``width`` had to be floored."""
        multiple = self.size_multiple
        w, h = size_rule(*image.size, multiple, max_area, width, height, self.min_working_side)
        if (height is not None and height != h) or (width is not None and width != w):
            logger.warning(f"`height` and `width` must be multiples of {multiple}: using {h} and {w}")
        return h, w

    @staticmethod
    def query_images(image) -> list[PIL.Image.Image]:
        """``image`` as a non-empty list of PIL images; ``ValueError`` otherwise."""
        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(i, PIL.Image.Image) for i in images):
            raise ValueError("`image` (the query) must be a PIL image or a list of PIL images")
        return images

    def check_exemplars(self, batch: int, exemplars, relation_scale: float, relation_tokens) -> None:
        """The exemplar branch: an adapter, and one (A, A') pair per query (or precomputed tokens)."""
        if relation_scale == 0:
            return
        if self.relation_adapter is None:
            raise ValueError("no relation_adapter: call set_relation_adapter() or pass relation_scale=0")
        if relation_tokens is None:
            pairs = exemplars if isinstance(exemplars, list) else [exemplars]
            if len(pairs) != batch or not all(exemplar_pairs(p) for p in pairs):
                raise ValueError(f"need (A, A') exemplar pairs (one, or a list) per query image: {batch} queries")
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

    def relation_attention_kwargs(self, exemplars, relation_scale: float, relation_tokens, device,
                                  precompute_relation_kv: bool) -> dict[str, Any]:  # fmt: skip
        """What the attention processors read: the exemplar tokens ``(B, 2T, C)`` (or every layer's keys and
        values from them, computed once) and the scale; empty when ``relation_scale`` is 0."""
        if relation_scale == 0:
            return {}
        if relation_tokens is None:
            relation_tokens = self.encode_exemplars(exemplars if isinstance(exemplars, list) else [exemplars], device)
        relation_tokens = relation_tokens.to(device)
        if precompute_relation_kv:
            return {"relation_scale": relation_scale, "relation_kv": self.relation_adapter.key_values(relation_tokens)}
        return {"relation_scale": relation_scale, "relation_tokens": relation_tokens}


class RelationPipeline(RelationMixin, FluxPipeline):
    r"""FLUX in-context editor with a RelationAdapter (Gong et al., 2025).

    Extra components: ``image_encoder`` (``SiglipVisionModel``), ``feature_extractor`` (its image
    processor) and ``relation_adapter`` (:class:`RelationAdapter`, installed on the transformer).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->relation_adapter->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor", "relation_adapter"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

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

    # ------------------------------------------------------------------------------------------ stages

    def check_inputs(
        self,
        image: list[PIL.Image.Image],
        exemplars,
        prompt,
        height: int,
        width: int,
        num_inference_steps: int,
        relation_scale: float = 1.0,
        relation_tokens: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        """Every input, checked before any work; raises ``ValueError`` saying what is wrong.

        FluxPipeline's own checks (``prompt`` together with ``prompt_embeds``, ``prompt_embeds`` without
        ``pooled_prompt_embeds``, callback tensor names, ``max_sequence_length`` over 512), then the
        batch sizes of every per-image input, the step count and the exemplar branch. ``image`` is the
        list :meth:`query_images` checked and returned.
        """
        super().check_inputs(
            prompt, None, height, width, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        batch = len(image)
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}")
        if isinstance(prompt, list) and len(prompt) != batch:
            raise ValueError(f"{len(prompt)} prompts for {batch} query images")
        for name, tensor in (("prompt_embeds", prompt_embeds), ("latents", latents), ("relation_tokens", relation_tokens)):
            if tensor is not None and tensor.shape[0] != batch:
                raise ValueError(f"`{name}` has batch size {tensor.shape[0]} for {batch} query images")
        n = (height // self.size_multiple) * (width // self.size_multiple)
        if latents is not None and latents.shape[1] != n:
            raise ValueError(f"`latents` has {latents.shape[1]} tokens; a {width}x{height} image has {n}")
        self.check_exemplars(batch, exemplars, relation_scale, relation_tokens)

    def encode_query(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Query pixels ``(B, 3, H, W)`` in [-1, 1] -> clean latents ``(B, c, H/f, W/f)``, *sampled* from the
        VAE posterior as the reference does (not its mode), shifted and scaled."""
        latents = self.vae.encode(image.to(self.vae.dtype)).latent_dist.sample(generator)
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def prepare_image_ids(self, height: int, width: int, device: torch.device, dtype: torch.dtype):
        """Position ids ``(N, 3)`` of the target tokens and of the query tokens of a ``height x width`` image.

        RelationAdapter clones them: the query's ids equal the target's, first axis 0 (SPEC 2.2.2); with
        ``query_ids = "kontext"`` the query's first axis is 1, FLUX.1 Kontext's convention (SPEC 6).
        """
        f = self.size_multiple
        return relation_latent_ids(height // f, width // f, device, dtype, self.query_ids).chunk(2)

    def prepare_latents(
        self,
        image: torch.Tensor,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query pixels ``(B, 3, H, W)`` -> ``(latents, image_latents, latent_ids, image_ids)``, as in diffusers'
        FluxKontextPipeline: packed noise ``(B, N, 4c)``, packed clean query latents ``(B, N, 4c)``, and the
        ``(N, 3)`` ids of each.

        Randomness order matters for reproducing the reference (SPEC 2.2.7): the query latents are sampled
        first, then the noise is drawn in the unpacked shape ``(B, c, 2*(H//16), 2*(W//16))``, both from
        ``generator``.
        """
        image_latents = self.encode_query(image.to(device), generator)
        if latents is None:
            f = self.size_multiple
            shape = (batch_size, num_channels_latents, 2 * (height // f), 2 * (width // f))
            latents = pack_latents(randn_tensor(shape, generator=generator, device=device, dtype=dtype))
        latent_ids, image_ids = self.prepare_image_ids(height, width, device, dtype)
        return latents.to(device, dtype), pack_latents(image_latents.to(dtype)), latent_ids, image_ids

    def prepare_timesteps(self, num_inference_steps: int, image_seq_len: int, device: torch.device) -> torch.Tensor:
        """FluxPipeline's schedule: sigmas ``linspace(1, 1/steps)``, dynamic shift ``mu`` from ``image_seq_len``
        (the whole image sequence, target + query tokens: SPEC 2.2.4)."""
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(
            image_seq_len,
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, _ = retrieve_timesteps(self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        self._num_timesteps = len(timesteps)
        return timesteps

    def decode_latents(self, latents: torch.Tensor, height: int, width: int, output_type: str):
        """Packed target latents ``(B, N, 4c)`` -> images (``output_type`` as in diffusers; "latent" returns them)."""
        if output_type == "latent":
            return latents
        latents = unpack_latents(latents, height, width, self.vae_scale_factor)
        latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        decoded = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        return self.image_processor.postprocess(decoded, output_type=output_type)

    # ------------------------------------------------------------------------- base-specific, for train/infer

    def encode_instruction(self, prompt: str, device: torch.device, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """One text instruction -> the encodings ``__call__`` takes instead of ``prompt``: ``prompt_embeds``
        ``(1, L, C)`` (T5) and ``pooled_prompt_embeds`` ``(1, P)`` (CLIP)."""
        embeds, pooled, _ = self.encode_prompt(
            prompt=[prompt], prompt_2=None, device=device, max_sequence_length=max_sequence_length
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    @staticmethod
    def text_ids(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Position ids ``(L, 3)`` of ``length`` text tokens: zeros, as ``FluxPipeline.encode_prompt`` makes them."""
        return torch.zeros(length, 3, device=device, dtype=dtype)

    def latent_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """A VAE latent sample ``(B, c, h, w)`` -> transformer tokens ``(B, hw/4, 4c)``: shifted, scaled, packed 2x2."""
        cfg = self.vae.config
        return pack_latents((latents - cfg.shift_factor) * cfg.scaling_factor)

    def relation_ids(self, rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Position ids ``(2N, 3)`` of ``[target ; query]`` on a ``rows x cols`` token grid (:func:`relation_latent_ids`
        with this pipeline's ``query_ids``)."""
        return relation_latent_ids(rows, cols, device, dtype, self.query_ids)

    def base_pipeline(self) -> FluxPipeline:
        """diffusers' own pipeline over this one's base components (to save them as a base folder): FLUX.1
        Kontext's when the query has Kontext's ids, so that ``model.query_ids: auto`` finds them again."""
        from diffusers import FluxKontextPipeline

        layout = FluxKontextPipeline if self.query_ids == "kontext" else FluxPipeline
        return layout(
            scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2, transformer=self.transformer,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        exemplars: Pair | list[Pair] | None = None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        max_area: int | None = None,
        num_inference_steps: int = 24,
        guidance_scale: float = 3.5,
        relation_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        relation_tokens: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = 512,
        precompute_relation_kv: bool = True,
    ):
        r"""Edit ``image`` (the query B) the way ``exemplars`` (A, A') shows.

        Args:
            image: query image(s); all are brought to one working size (that of the first).
            exemplars: one (A, A') pair, or one entry per query image: a pair or a list of k pairs (the
                same k for every query image); k pairs give ``(B, 2kT, C)`` exemplar tokens.
            prompt: text instruction(s); None or "" for none.
            height, width: working size in pixels; by default the query's own size, shrunk to about
                ``max_area`` pixels when larger (aspect ratio kept); floored to ``2 * vae_scale_factor``.
            max_area: pixel cap of the default working size (None: no cap; relation infer passes
                ``infer.max_area``).
            relation_scale: adapter strength (the paper's alpha); 0 ignores the exemplars.
            latents: initial noise, packed ``(B, N, 4c)``, instead of drawing it from ``generator``.
            prompt_embeds, pooled_prompt_embeds: precomputed text encodings (``encode_prompt``) instead of
                ``prompt``, e.g. to encode a prompt shared by many images once.
            relation_tokens: precomputed exemplar tokens ``(B, 2kT, C)`` instead of ``exemplars``.
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in diffusers (tensors: ``latents``,
                ``prompt_embeds``); setting ``pipe._interrupt = True`` there skips the remaining steps.
            precompute_relation_kv: compute every layer's exemplar keys/values once instead of at
                every step (same result, less work).
            generator: the one generator for all randomness (reference: ``torch.Generator("cpu")``).
        """
        images = self.query_images(image)
        height, width = self.working_size(images[0], height, width, max_area)
        prompt = "" if prompt is None and prompt_embeds is None else prompt
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self.check_inputs(
            images, exemplars, prompt, height, width, num_inference_steps, relation_scale, relation_tokens,
            prompt_embeds, pooled_prompt_embeds, latents, callback_on_step_end_tensor_inputs, max_sequence_length,
        )  # fmt: skip
        batch, device = len(images), self._execution_device
        self._guidance_scale, self._current_timestep, self._interrupt = guidance_scale, None, False

        # 1. text, exemplars and query, then latents in the reference's randomness order
        prompt = prompt if prompt_embeds is None else None
        prompt_embeds, pooled_prompt_embeds, text_ids = self.encode_prompt(
            prompt=[prompt] * batch if isinstance(prompt, str) else prompt, prompt_2=None, device=device,
            max_sequence_length=max_sequence_length, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
        )  # fmt: skip
        self._joint_attention_kwargs = self.relation_attention_kwargs(
            exemplars, relation_scale, relation_tokens, device, precompute_relation_kv
        )
        query = self.image_processor.preprocess(images, height=height, width=width).to(torch.float32)
        latents, image_latents, latent_ids, image_ids = self.prepare_latents(
            query, batch, self.transformer.config.in_channels // 4, height, width, self.transformer.dtype, device,
            generator, latents,
        )  # fmt: skip
        img_ids = torch.cat([latent_ids, image_ids], dim=0)  # (2N, 3)
        n = latents.shape[1]

        # 2. timesteps: mu from the whole image sequence, 2N tokens
        timesteps = self.prepare_timesteps(num_inference_steps, 2 * n, device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([batch], guidance_scale, device=device, dtype=torch.float32)

        # 3. denoising loop over [noisy target ; clean query]
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                with self.transformer.cache_context("cond"):
                    noise_pred = self.transformer(
                        hidden_states=torch.cat([latents, image_latents], dim=1),  # (B, 2N, 4c)
                        timestep=t.expand(batch).to(latents.dtype) / 1000,
                        guidance=guidance,
                        pooled_projections=pooled_prompt_embeds,
                        encoder_hidden_states=prompt_embeds,
                        txt_ids=text_ids,
                        img_ids=img_ids,
                        joint_attention_kwargs=self._joint_attention_kwargs,
                        return_dict=False,
                    )[0]
                # Only the target half is stepped; the query half stays the clean latents.
                latents = self.scheduler.step(noise_pred[:, :n], t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "prompt_embeds": prompt_embeds}
                    callback_outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()
        self._current_timestep = None

        # 4. decode
        result = self.decode_latents(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return FluxPipelineOutput(images=result)
