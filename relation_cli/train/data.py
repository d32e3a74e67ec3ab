"""Training data: run-ready rows read once by relation's row checks, images kept in aspect ratio, batched by size.

The batch order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
interrupted one would have seen next. Each process of a distributed run takes every k-th batch.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import RelationError
from ..images import check_images, open_image, pad_exemplar
from ..rows import IMAGE_FIELDS, Row, parse_rows


def load_rows(path: str | Path, max_pixels: int) -> list[Row]:
    """Rows of a run-ready jsonl (the format prepare writes), read once by relation's own row checks.

    Every field is checked as a string or empty (no column types guessed from the first rows), every
    image is decoded once here, before any model is loaded or file written.
    """
    path = Path(path)
    if not path.is_file():
        raise RelationError(f"train.data '{path}': not found (run relation prepare first)")
    rows = parse_rows(path, need_target=True)
    check_images(((getattr(r, k), f"row {r.index + 1} {k}") for r in rows for k in IMAGE_FIELDS), max_pixels)
    return rows


def fit_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """Keep the aspect ratio, long side <= ``resolution``, both sides floored to ``multiple``."""
    scale = min(1.0, resolution / max(width, height))
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


def to_pixels(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """PIL -> ``(3, H, W)`` in [-1, 1] through diffusers' VaeImageProcessor (Lanczos resize to ``size``)."""
    width, height = size
    return _pixel_processor().preprocess(image, height=height, width=width)[0]


@functools.cache
def _pixel_processor():
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=1)  # sizes come from fit_size, already multiples of the latent grid


@dataclass(frozen=True)
class Item:
    """One decoded sample: query and target pixels, and A and A' as image-encoder inputs."""

    index: int
    plan: tuple[int, int]  # (epoch, position) of the batch plan once this item's batch is consumed
    source: torch.Tensor  # (3, H, W) in [-1, 1]
    target: torch.Tensor
    exemplars: torch.Tensor  # (2, 3, s, s): A then A', padded and through the image processor
    text: str


class AnalogyDataset(Dataset):
    """Rows -> tensors. ``memo=True`` keeps every decoded image in memory (small datasets, many epochs)."""

    def __init__(self, rows: list[Row], resolution: int, multiple: int, max_pixels: int, feature_extractor, memo=False):
        """``feature_extractor=None``: no exemplars (VAE pre-training needs only the images)."""
        self.rows, self.resolution, self.multiple, self.max_pixels = rows, resolution, multiple, max_pixels
        self.feature_extractor = feature_extractor
        self._sizes: list[tuple[int, int]] | None = None
        self._memo: dict | None = {} if memo else None

    def _remember(self, key, make):
        if self._memo is None:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def image(self, path: Path, role: str, size: tuple[int, int]) -> torch.Tensor:
        return self._remember((path, size), lambda: to_pixels(open_image(path, role, self.max_pixels), size))

    def exemplar(self, path: Path, role: str) -> torch.Tensor:
        """Padded as at inference (:func:`pad_exemplar`), then the image processor: ``(3, s, s)``."""

        def make():
            padded = pad_exemplar(open_image(path, role, self.max_pixels))
            return self.feature_extractor(images=[padded], return_tensors="pt").pixel_values[0]

        return self._remember((path, "exemplar"), make)

    def __len__(self) -> int:
        return len(self.rows)

    def sizes(self) -> list[tuple[int, int]]:
        """Training size of every row (from image headers only; nothing is decoded)."""
        if self._sizes is None:
            out = []
            for r in self.rows:
                try:
                    with Image.open(r.target) as im:
                        w, h = im.size
                        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                            w, h = h, w
                except (OSError, SyntaxError) as e:
                    raise RelationError(f"row {r.index + 1} target '{r.target}': {e}") from None
                out.append(fit_size(w, h, self.resolution, self.multiple))
            self._sizes = out
        return self._sizes

    def __getitem__(self, key: tuple[int, int, int]) -> Item:
        i, epoch, position = key
        r, size = self.rows[i], self.sizes()[i]
        where = f"row {r.index + 1} "
        source = self.image(r.source, where + "source", size)
        target = self.image(r.target, where + "target", size)
        pair = torch.empty(0)
        if self.feature_extractor is not None:
            pair = torch.stack([self.exemplar(r.cond1, where + "cond1"), self.exemplar(r.cond2, where + "cond2")])
        return Item(i, (epoch, position), source, target, pair, r.text)


def collate(items: list[Item]) -> dict:
    return {
        "index": [it.index for it in items],
        "plan": {"epoch": items[0].plan[0], "position": items[0].plan[1]},
        "source": torch.stack([it.source for it in items]),
        "target": torch.stack([it.target for it in items]),
        "exemplars": torch.cat([it.exemplars for it in items]),  # (2B, 3, s, s): A_0, A'_0, A_1, ...
        "text": [it.text for it in items],
    }


def epoch_batches(sizes: list[tuple[int, int]], batch_size: int, seed: int, epoch: int, world: int) -> list[list[int]]:
    """All batches of one epoch, each from one size bucket, in a seeded order.

    The count is a multiple of ``world`` so every process gets the same number of batches.
    """
    rng = random.Random(f"{seed}:{epoch}")
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        buckets.setdefault(size, []).append(i)
    batches = []
    for key in sorted(buckets):
        idx = buckets[key]
        rng.shuffle(idx)
        batches += [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    usable = len(batches) - len(batches) % world
    if usable == 0:
        raise RelationError(f"{len(sizes)} rows make {len(batches)} batches, fewer than the {world} processes")
    return batches[:usable]


class BatchPlan:
    """The endless, resumable sequence of batches one process trains on.

    It yields keys ``(row, epoch, position)`` so that the plan state travels with each batch: the
    state saved in a checkpoint is that of the last batch *trained on*, however far a DataLoader's
    workers have read ahead.
    """

    def __init__(self, sizes, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.sizes, self.batch_size, self.seed, self.rank, self.world = sizes, batch_size, seed, rank, world
        self.epoch, self.position = 0, 0  # batches of this epoch already trained on (this process)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self):
        epoch, position = self.epoch, self.position  # a private cursor: the state is set by the consumer
        while True:
            mine = epoch_batches(self.sizes, self.batch_size, self.seed, epoch, self.world)[self.rank :: self.world]
            while position < len(mine):
                batch = mine[position]
                position += 1
                yield [(i, epoch, position) for i in batch]
            epoch, position = epoch + 1, 0
