"""Training data: run-ready rows read once by relation's row checks, images kept in aspect ratio, batched by size.

The batch order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
interrupted one would have seen next. Each process of a distributed run takes every n-th batch.

With ``train.max_exemplar_pairs`` N > 1, each batch trains with k exemplar pairs, k drawn in [1, N]
per batch (every sample of a batch needs the same k): a row's own pairs first, then other pairs of its
task in the training rows, never its query pair. k and the pairs are pure functions of (seed, epoch,
batch position, row) too, so resume stays exact.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..checks import EMPTY_DATA, missing_data
from ..errors import RelationError
from ..images import check_images, open_image, pad_exemplar
from ..rows import IMAGE_FIELDS, Pair, Row, parse_rows


def load_rows(paths: str | Path | Sequence[str | Path], max_pixels: int) -> list[Row]:
    """Rows of one or more run-ready jsonl files (the format prepare writes), read once by relation's own
    row checks and concatenated in order (``train.data`` as a list mixes prepared sets).

    Every field is checked as a string or empty (no column types guessed from the first rows), every
    image is decoded once here, before any model is loaded or file written. Raises RelationError on a
    missing file, an empty list, a bad row or image (naming the file; every bad image of a file in one message).
    A file listed several times (``configs/demo-train.yaml`` weights a set so) is read once and its rows repeated.
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise RelationError(EMPTY_DATA)
    out: list[Row] = []
    read: dict[Path, list[Row]] = {}  # a file listed again (to weight it) is read and checked once
    for path in files:
        if not path.is_file():
            raise RelationError(missing_data(path))
        key = path.resolve()
        if key not in read:
            rows = parse_rows(path, need_target=True)
            check_images((image for r in rows for image in _row_images(r)), max_pixels, head=f"'{path}'")
            read[key] = rows
        out += read[key]
    return out


def _row_images(r: Row) -> list[tuple[Path, str]]:
    """A row's images and how messages name them: ``row 3 cond1``, ..., ``row 3 exemplars pair 2 A'``."""
    images = [(Path(getattr(r, k)), f"{r.name} {k}") for k in IMAGE_FIELDS]
    for n, (a, b) in enumerate(r.pairs[1:], 2):
        images += [(a, f"{r.name} exemplars pair {n} A"), (b, f"{r.name} exemplars pair {n} A'")]
    return images


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
    exemplars: torch.Tensor  # (2k, 3, s, s): A_1, A'_1, ..., A_k, A'_k, padded and through the image processor
    text: str


def task_pairs(rows: list[Row]) -> dict[str, list[Pair]]:
    """The distinct (A, A') pairs of each task among ``rows``: their exemplar pairs and query pairs."""
    out: dict[str, dict[Pair, None]] = {}
    for r in rows:
        pool = out.setdefault(r.task, {})
        for pair in (*r.pairs, (r.source, r.target)):
            pool.setdefault(pair, None)
    return {task: list(pool) for task, pool in out.items()}


class AnalogyDataset(Dataset):
    """Rows -> tensors. ``memo=True`` keeps every decoded image in memory (small datasets, many epochs).

    ``max_pairs`` > 1: a sample may be given up to that many exemplar pairs of its task (see
    :meth:`exemplar_pairs`); ``seed`` picks which.
    """

    def __init__(self, rows: list[Row], resolution: int, multiple: int, max_pixels: int, feature_extractor, memo=False,
                 max_pairs: int = 1, seed: int = 0):  # fmt: skip
        """``feature_extractor=None``: no exemplars (VAE pre-training needs only the images)."""
        self.rows, self.resolution, self.multiple, self.max_pixels = rows, resolution, multiple, max_pixels
        self.feature_extractor = feature_extractor
        self.max_pairs, self.seed = max_pairs, seed
        self.pool = task_pairs(rows) if max_pairs > 1 else {}
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
                    raise RelationError(f"{r.name} target '{r.target}': {e}") from None
                out.append(fit_size(w, h, self.resolution, self.multiple))
            self._sizes = out
        return self._sizes

    def candidates(self, i: int) -> list[Pair]:
        """Exemplar pairs row ``i`` may be given: its own, then the rest of its task's pool; never its query."""
        r = self.rows[i]
        query = (r.source, r.target)
        own = [p for p in r.pairs if p != query]
        return own + [p for p in self.pool.get(r.task, []) if p not in own and p != query]

    def pair_counts(self) -> list[int]:
        """How many exemplar pairs each row can be given (at most ``max_pairs``)."""
        if self.max_pairs == 1:
            return [1] * len(self.rows)
        return [max(1, min(self.max_pairs, len(self.candidates(i)))) for i in range(len(self.rows))]

    def exemplar_pairs(self, i: int, k: int, epoch: int, position: int) -> list[Pair]:
        """k pairs for row ``i`` in the batch at (epoch, position): the row's first pair, then the others of
        its candidates in a seeded order (the same pairs however often the run is resumed)."""
        if k == 1:
            return [self.rows[i].pairs[0]]
        first, *rest = self.candidates(i)
        random.Random(f"{self.seed}:pairs:{epoch}:{position}:{i}").shuffle(rest)
        return [first, *rest][:k]

    def __getitem__(self, key: tuple[int, ...]) -> Item:
        """``key`` = (row, epoch, position[, k]) as :class:`BatchPlan` yields it; k exemplar pairs (default 1)."""
        i, epoch, position, *more = key
        r, size = self.rows[i], self.sizes()[i]
        where = f"{r.name} "
        source = self.image(r.source, where + "source", size)
        target = self.image(r.target, where + "target", size)
        pairs = torch.empty(0)
        if self.feature_extractor is not None:
            chosen = self.exemplar_pairs(i, more[0] if more else 1, epoch, position)
            pairs = torch.stack([self.exemplar(p, where + role) for pair in chosen for p, role in zip(pair, ("A", "A'"))])
        return Item(i, (epoch, position), source, target, pairs, r.text)


def collate(items: list[Item]) -> dict:
    return {
        "index": [it.index for it in items],
        "plan": {"epoch": items[0].plan[0], "position": items[0].plan[1]},
        "source": torch.stack([it.source for it in items]),
        "target": torch.stack([it.target for it in items]),
        "exemplars": torch.cat([it.exemplars for it in items]),  # (2kB, 3, s, s): A, A' of sample 0's k pairs, ...
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

    def __init__(self, sizes, batch_size: int, seed: int, rank: int = 0, world: int = 1, pair_counts=None):
        """``pair_counts``: the most exemplar pairs each row can have (:meth:`AnalogyDataset.pair_counts`);
        None: one pair always."""
        self.sizes, self.batch_size, self.seed, self.rank, self.world = sizes, batch_size, seed, rank, world
        self.pair_counts = pair_counts
        self.epoch, self.position = 0, 0  # batches of this epoch already trained on (this process)

    def pairs_of(self, batch: list[int], epoch: int, position: int) -> int:
        """k for one batch: uniform in [1, the fewest pairs any of its rows can have], seeded by its place."""
        most = min(self.pair_counts[i] for i in batch) if self.pair_counts else 1
        return 1 if most == 1 else random.Random(f"{self.seed}:k:{epoch}:{position}").randint(1, most)

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
                k = self.pairs_of(batch, epoch, position)
                yield [(i, epoch, position, k) for i in batch]
            epoch, position = epoch + 1, 0
