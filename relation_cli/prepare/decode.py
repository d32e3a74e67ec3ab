"""Decoding every pair once, in worker processes: check it, split it, write its halves as PNG.

A worker gets paths and returns a few bytes (a problem or a pixel digest), never pixels, so memory
stays flat however many pairs there are. Each image is decoded exactly once: the check and the
write are the same pass (the caller writes into a temporary folder that is thrown away if any
check fails).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from PIL import Image
from rich.progress import ProgressColumn
from rich.text import Text

from ..errors import RelationError
from ..images import MIN_SIDE, open_image
from ..progress import make_progress


@dataclass(frozen=True)
class DecodeJob:
    index: int
    images: tuple[str, ...]  # one side-by-side image, or (source, target)
    outputs: tuple[str, str] | None  # where the before/after PNGs go; None: check only
    max_pixels: int
    compress_level: int


@dataclass(frozen=True)
class Decoded:
    index: int
    problem: str | None
    digest: str  # of the pixels of both halves: equal digests are the same pair


def decode_pair(job: DecodeJob) -> Decoded:
    """Open (EXIF-upright, RGB), check, split and write one pair. Runs in a worker process."""
    try:
        if len(job.images) == 1:
            image = open_image(job.images[0], "image", job.max_pixels, min_side=1)
            before, after = _split(image, job.images[0])
        else:
            before = open_image(job.images[0], "source", job.max_pixels)
            after = open_image(job.images[1], "target", job.max_pixels)
            if before.size != after.size:
                raise RelationError(
                    f"source '{job.images[0]}' is {before.width}x{before.height} but target '{job.images[1]}' is "
                    f"{after.width}x{after.height}; the two images of a pair must have one size"
                )
    except RelationError as e:
        return Decoded(job.index, str(e), "")
    digest = hashlib.blake2b(digest_size=16)
    for half in (before, after):
        digest.update(f"{half.size}".encode())
        digest.update(half.tobytes())
    if job.outputs is not None:
        for half, path in zip((before, after), job.outputs):
            _save_png(half, path, job.compress_level)
    return Decoded(job.index, None, digest.hexdigest())


def _save_png(image: Image.Image, path: str, compress_level: int) -> None:
    # Encoded in memory, then one write: PIL writing chunk by chunk to the file costs a third more
    # per image where file creation is slow, and small images are mostly file creation.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def _split(image: Image.Image, path: str) -> tuple[Image.Image, Image.Image]:
    """Before | after, split at width // 2 (after EXIF orientation, which ``open_image`` applied)."""
    w, h = image.size
    if w % 2:
        raise RelationError(f"image '{path}': {w}x{h}, a side-by-side pair needs an even width")
    if w // 2 < MIN_SIDE or h < MIN_SIDE:
        raise RelationError(
            f"image '{path}': {w}x{h}, its halves ({w // 2}x{h}) are smaller than {MIN_SIDE}x{MIN_SIDE}"
        )
    return image.crop((0, 0, w // 2, h)), image.crop((w // 2, 0, w, h))


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``412.3 pairs/s``."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} {self.unit}/s", style="progress.data.speed")


def decode_all(jobs: list[DecodeJob], workers: int, description: str = "decoding pairs") -> list[Decoded]:
    """Every job's result, in job order; ``workers`` processes (1: in this process)."""
    if workers <= 1 or len(jobs) < 2:
        return _collect(map(decode_pair, jobs), len(jobs), description)
    # The platform's start method (fork on Linux). The pool is filled before the progress bar starts
    # its refresh thread, so no thread of ours is running when the workers are forked.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context())
    try:
        results = pool.map(decode_pair, jobs, chunksize=_chunk(len(jobs), workers))
        return _collect(results, len(jobs), description)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: drop the queue, do not work through it


def _collect(results: Iterator[Decoded], total: int, description: str) -> list[Decoded]:
    out = []
    with make_progress(RateColumn("pairs")) as progress:
        bar = progress.add_task(description, total=total)
        for result in results:
            out.append(result)
            progress.advance(bar)
    return out


def _chunk(n: int, workers: int) -> int:
    return max(1, min(64, n // (workers * 8)))

