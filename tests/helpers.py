"""Small image and file makers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(path: Path, dtype=np.float32) -> np.ndarray:
    """(H, W, 3) RGB values in [0, 1] of the image at ``path``."""
    return np.asarray(Image.open(path).convert("RGB"), dtype) / 255

def random_image(path: Path, size=(64, 48), seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def analogy_dataset(root: Path, tasks=("invert", "mirror"), pairs: int = 4, size=(48, 32), seed: int = 0) -> Path:
    """A tiny run-ready dataset: train.jsonl + test_seen.jsonl over random images and two simple edits."""
    import json

    rng = np.random.default_rng(seed)
    img = root / "img"
    img.mkdir(parents=True, exist_ok=True)
    edits = {"invert": lambda a: 255 - a, "mirror": lambda a: a[:, ::-1], "gray": lambda a: a.mean(2, keepdims=True).repeat(3, 2).astype(np.uint8)}
    rows = []
    for task in tasks:
        for i in range(pairs):
            src = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(src).save(img / f"{task}{i}s.png")
            Image.fromarray(np.ascontiguousarray(edits[task](src))).save(img / f"{task}{i}t.png")
        for i in range(pairs):
            j = (i + 1) % pairs
            rows.append({"cond1": f"img/{task}{i}s.png", "cond2": f"img/{task}{i}t.png", "source": f"img/{task}{j}s.png",
                         "target": f"img/{task}{j}t.png", "text": "", "task": task})  # fmt: skip
    test = [r for k, r in enumerate(rows) if k % pairs == pairs - 1]
    train = [r for r in rows if r not in test]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "test_seen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return root / "train.jsonl"
