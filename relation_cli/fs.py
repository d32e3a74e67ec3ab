"""Atomic writes: nothing half-written is ever left where a later run would trust it.

Files and folders are written under a temporary name in the destination's own folder (same file
system) and renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RelationError


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write(tmp)``; ``tmp`` keeps ``p``'s suffix so writers infer formats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_new_dir(path: str | Path) -> Path:
    """A destination folder must not exist yet, or be empty."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RelationError(f"output '{path}': already exists and is not an empty folder")
    return path


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """``with atomic_dir(d) as tmp: fill(tmp)``; ``tmp`` is renamed to ``d`` only when the block succeeds.

    ``replace=True`` swaps out an existing ``d``; otherwise ``d`` must be absent or empty.
    """
    path = Path(path)
    if not replace:
        check_new_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old) if replace else path.rmdir()
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
