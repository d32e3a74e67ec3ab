"""The networks behind CLIP-I, DINO similarity and FID, loaded from hub ids or local folders.

A local folder that does not exist is a typo and fails before generation. A hub id that cannot be
loaded (offline machine, no cache) skips its metric with the reason recorded in metrics.json, unless
``eval.strict`` asks for an error.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import EvalSection
from ..errors import RelationError, first_line
from ..model import _looks_local  # the one rule that tells a hub id ("owner/name") from a folder
from ..model import load_problem

ENCODER_FIELDS = {"clip_i": "clip_model", "dino": "dino_model"}


class MetricUnavailable(Exception):
    """A metric that cannot run here; the message is the reason written into the results."""


def check_sources(section: EvalSection) -> None:
    """Cheap checks before anything is generated: configured local folders and files exist."""
    for field in ENCODER_FIELDS.values():
        name = getattr(section, field)
        if name and _looks_local(name) and not (Path(name).expanduser() / "config.json").is_file():
            raise RelationError(f"eval.{field} '{name}': no such model folder (config.json missing)")
    if section.fid and section.fid_weights and not Path(section.fid_weights).expanduser().is_file():
        raise RelationError(f"eval.fid_weights '{section.fid_weights}': file not found")


class Embedder:
    """L2-normalised image embeddings: CLIP's projected ``image_embeds`` or a DINO model's CLS token."""

    def __init__(self, metric: str, source: str, device: torch.device, local_files_only: bool = False):
        from transformers import AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        self.metric, self.source, self.device = metric, source, device
        cls = CLIPVisionModelWithProjection if metric == "clip_i" else AutoModel
        try:
            # The PIL backend gives the same preprocessing whether torchvision is installed or not.
            self.processor = AutoImageProcessor.from_pretrained(
                source, backend="pil", local_files_only=local_files_only
            )
            self.model = cls.from_pretrained(source, dtype=torch.float32, local_files_only=local_files_only)
        except pickle.UnpicklingError as e:  # not a metric to skip: a file that tried to run code
            raise RelationError(f"'{source}': {load_problem(e)}") from None
        except (OSError, ValueError) as e:
            offline = not _looks_local(source) and isinstance(e, OSError)
            why = "the hub is unreachable and it is not in the local cache" if offline else first_line(e)
            raise MetricUnavailable(f"cannot load '{source}': {why}") from None
        self.model.eval().to(device)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """``(len(images), d)`` float32 on CPU, each row of unit norm."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        out = self.model(pixel_values=pixels)
        # DINO similarity is the cosine of CLS tokens (after the final layer norm, as DINO reports it).
        vectors = out.image_embeds if self.metric == "clip_i" else out.last_hidden_state[:, 0]
        return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu()

    def describe(self) -> str:
        kind = "CLIP image_embeds (CLIPVisionModelWithProjection)" if self.metric == "clip_i" else "CLS token"
        return f"cosine similarity of {kind} of '{self.source}', transformers PIL image processor"


def load_embedders(
    section: EvalSection, device: torch.device, local_files_only: bool = False
) -> tuple[dict[str, Embedder], dict[str, str]]:
    """The embedders that load, and for the others the reason they were skipped."""
    loaded, skipped = {}, {}
    for metric, field in ENCODER_FIELDS.items():
        source = getattr(section, field)
        if not source:
            skipped[metric] = f"off (eval.{field} is empty)"
            continue
        try:
            loaded[metric] = Embedder(metric, source, device, local_files_only)
        except MetricUnavailable as e:
            if section.strict:
                raise RelationError(f"eval.{field}: {e} (eval.strict is on)") from None
            skipped[metric] = f"{e}; to enable it, set eval.{field} to a local folder (or run once online)"
    return loaded, skipped


def build_fid(section: EvalSection, feature: torch.nn.Module | None = None):
    """torchmetrics' ``FrechetInceptionDistance`` that keeps its real-image statistics across ``reset()``.

    ``feature`` replaces Inception v3 (tests use a tiny network); without it torch-fidelity's Inception
    v3 (the FID reference network) is needed, with weights from ``eval.fid_weights`` or its cache.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is None and importlib.util.find_spec("torch_fidelity") is None:
        raise MetricUnavailable("torch-fidelity is not installed (pip install 'relation[fid]')")
    try:
        return FrechetInceptionDistance(
            feature=feature if feature is not None else 2048,
            reset_real_features=False,
            normalize=False,  # uint8 images in [0, 255], as the reference implementation takes them
            feature_extractor_weights_path=section.fid_weights,
        )
    except (OSError, RuntimeError, ValueError) as e:  # weights missing from the cache and no network
        raise MetricUnavailable(f"cannot build the Inception network ({first_line(e)})") from None


def to_uint8_batch(image: Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` uint8, what ``FrechetInceptionDistance.update`` takes with ``normalize=False``."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
