"""Resumable checkpoints without pickles: safetensors for tensors, JSON for everything else.

A checkpoint is written into a temporary folder, every file's sha256 goes into ``checksums.json``,
the ``COMPLETE`` marker is written last, and only then is the folder renamed to
``checkpoint-<step>``. On resume the newest folder whose marker and checksums are intact is used;
incomplete or corrupted ones are skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import RelationError

MARKER = "COMPLETE"
CHECKSUMS = "checksums.json"
PREFIX = "checkpoint-"


# ------------------------------------------------------------------------------ tensors <-> json trees


def flatten(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Replace every tensor in a nested dict/list by ``{"__tensor__": key}``, collecting it in ``tensors``."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(tree, dict):
        return {"__keys__": [[_key(k), flatten(v, tensors, f"{path}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(tree)], "tuple": isinstance(tree, tuple)}
    if isinstance(tree, (np.integer, np.floating)):
        return tree.item()
    if isinstance(tree, np.ndarray):
        wide = tree.dtype.kind == "u" and tree.dtype != np.uint8  # safetensors/torch: store as int64
        tensors[path] = torch.from_numpy(tree.astype(np.int64) if wide else tree.copy())
        return {"__ndarray__": path, "dtype": str(tree.dtype)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} in a checkpoint")


def _key(k):
    if isinstance(k, (int, str)):
        return [type(k).__name__, k]
    raise TypeError(f"unsupported key type {type(k).__name__}")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
        if "__keys__" in tree:
            return {(int(k[1]) if k[0] == "int" else k[1]): unflatten(v, tensors) for k, v in tree["__keys__"]}
        if "__list__" in tree:
            items = [unflatten(v, tensors) for v in tree["__list__"]]
            return tuple(items) if tree.get("tuple") else items
    return tree


def save_tree(tree: Any, folder: Path, name: str) -> None:
    """``name.json`` + ``name.safetensors`` (if it holds tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    doc = flatten(tree, tensors)
    (folder / f"{name}.json").write_text(json.dumps(doc))
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")


def load_tree(folder: Path, name: str) -> Any:
    doc = json.loads((folder / f"{name}.json").read_text())
    st = folder / f"{name}.safetensors"
    return unflatten(doc, load_file(st) if st.exists() else {})


# ------------------------------------------------------------------------------ random states


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ folders


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: Path) -> None:
    """Write checksums of every file, then the completion marker (last)."""
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    (folder / MARKER).write_text("ok\n")


def verify(folder: Path) -> str | None:
    """``None`` if the checkpoint is complete and intact, else the reason it is not."""
    if not (folder / MARKER).is_file():
        return "no completion marker (interrupted while saving)"
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, json.JSONDecodeError):
        return "checksums.json unreadable"
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def step_of(folder: Path) -> int:
    return int(folder.name[len(PREFIX) :])


def checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def latest_valid(root: Path, warn=print) -> Path | None:
    for folder in checkpoints(root):
        problem = verify(folder)
        if problem is None:
            return folder
        warn(f"skipping {folder.name}: {problem}")
    return None


def publish(tmp: Path, root: Path, step: int, keep: int) -> Path:
    """Rename a sealed temporary folder to ``checkpoint-<step>`` and prune to the newest ``keep``."""
    final = root / f"{PREFIX}{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def require_resumable(root: Path, warn=print) -> Path:
    found = latest_valid(root, warn)
    if found is None:
        raise RelationError(f"--resume: no complete checkpoint under '{root}'")
    return found
