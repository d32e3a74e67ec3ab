"""Frozen encodings for training (VAE posterior, text, SigLIP), optionally cached on disk by content.

A cache entry's key is the sha256 of the input (pixels, text or exemplar image) together with the
identity of the encoder that made it (source, config, dtype), so a second run, or a second epoch,
skips the encoders, and a different model never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..fs import atomic_file


def identity(*parts) -> str:
    """A short hash naming an encoder: where it came from, its config, its dtype."""
    text = json.dumps([p if isinstance(p, (str, int, float)) else str(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes and bytes, in ``state_dict`` order): its
    identity when its weights are not its source's (a LoRA fused into it)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


class DiskCache:
    """``get_or_make(kind, key_bytes, make)``: tensors stored as one safetensors file per entry."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.hits = self.misses = 0

    def _path(self, kind: str, key: bytes) -> Path:
        digest = hashlib.sha256(key).hexdigest()
        return self.folder / kind / digest[:2] / f"{digest}.safetensors"

    def get(self, kind: str, key: bytes) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            return None
        path = self._path(kind, key)
        if path.is_file():
            try:
                value = load_file(path)
                self.hits += 1
                return value
            except Exception:  # a torn or foreign file: recompute and overwrite it
                pass
        return None

    def put(self, kind: str, key: bytes, value: dict[str, torch.Tensor]) -> None:
        self.misses += 1
        if self.folder is None:
            return
        with atomic_file(self._path(kind, key)) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in value.items()}, tmp)

    def get_or_make(self, kind: str, key: bytes, make) -> dict[str, torch.Tensor]:
        value = self.get(kind, key)
        if value is None:
            value = make()
            self.put(kind, key, value)
        return value


class FrozenEncoders:
    """VAE, text encoders and (when frozen) SigLIP of a pipeline, run without gradients."""

    def __init__(self, pipe, cache: DiskCache, ids: dict[str, str], device: torch.device, dtype: torch.dtype):
        self.pipe, self.cache, self.ids, self.device, self.dtype = pipe, cache, ids, device, dtype

    @torch.no_grad()
    def latent_moments(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> VAE posterior parameters ``(B, 2c, h, w)`` (mean and log-variance).

        Cache misses of a batch are encoded together, in one VAE call.
        """
        keys = [self.ids["vae"].encode() + str(tuple(x.shape)).encode() + x.numpy().tobytes() for x in pixels]
        found = [self.cache.get("vae", k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            x = pixels[missing].to(self.device, self.pipe.vae.dtype)
            moments = self.pipe.vae.encode(x).latent_dist.parameters.float()
            for i, m in zip(missing, moments):
                found[i] = {"moments": m}
                self.cache.put("vae", keys[i], found[i])
        return torch.stack([f["moments"].to(self.device) for f in found])

    def sample_latents(self, moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``(B, 2c, h, w)`` posterior parameters -> ``(B, N, 4c)`` tokens: diffusers' posterior sample with
        ``generator`` (CPU), normalised and packed as the base expects (``pipe.latent_tokens``: FLUX.1 shifts
        and scales; FLUX.2 patchifies and applies its VAE's batch-norm statistics)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        z = DiagonalGaussianDistribution(moments).sample(generator)
        return self.pipe.latent_tokens(z).to(self.dtype)

    @torch.no_grad()
    def text(self, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Prompts -> ``prompt_embeds`` ``(B, L, C)``, pooled embeddings ``(B, P)`` (FLUX.1's CLIP; ``None`` on
        FLUX.2 [klein]) and the text position ids ``(L, 3)`` (FLUX.1) or ``(L, 4)`` (FLUX.2)."""
        entries = []
        for prompt in prompts:
            key = self.ids["text"].encode() + str(max_sequence_length).encode() + prompt.encode()

            def make(prompt=prompt):
                text = self.pipe.encode_instruction(prompt, self.device, max_sequence_length)
                entry = {"embeds": text["prompt_embeds"][0].float()}
                if "pooled_prompt_embeds" in text:
                    entry["pooled"] = text["pooled_prompt_embeds"][0].float()
                return entry

            entries.append(self.cache.get_or_make("text", key, make))
        e = torch.stack([x["embeds"] for x in entries]).to(self.device, self.dtype)
        pooled = torch.stack([x["pooled"] for x in entries]).to(self.device, self.dtype) if "pooled" in entries[0] else None
        return e, pooled, self.pipe.text_ids(e.shape[1], self.device, self.dtype)

    @torch.no_grad()
    def exemplar_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen SigLIP pooled embeddings ``(2B, d)`` of exemplar pixel values ``(2B, 3, s, s)``."""
        out = []
        for image in pixels:
            key = self.ids["image_encoder"].encode() + str(tuple(image.shape)).encode() + image.numpy().tobytes()

            def make(image=image):
                x = image[None].to(self.device, self.pipe.image_encoder.dtype)
                return {"pooled": self.pipe.image_encoder(x).pooler_output[0].float()}

            out.append(self.cache.get_or_make("siglip", key, make)["pooled"].to(self.device))
        return torch.stack(out)
