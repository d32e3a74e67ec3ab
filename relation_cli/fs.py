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

# mkstemp/mkdtemp create private (0600/0700) entries; what we move into place gets the permissions
# an ordinary open() or mkdir() would have given it, so other users and tools can read the outputs.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write(tmp)``; ``tmp`` keeps ``p``'s suffix so writers infer formats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(path: str | Path, what: str = "output") -> Path:
    """``path`` can be created or replaced: its nearest existing folder is a folder we may write in.

    Checked before any work, so a run never fails at its very end for want of a place to write.
    """
    path = Path(path)
    ancestor = path.parent if str(path.parent) else Path(".")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RelationError(f"{what} '{path}': '{ancestor}' is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK) or not _can_create_in(ancestor):
        raise RelationError(f"{what} '{path}': folder '{ancestor}' is not writable")
    return path


def _can_create_in(folder: Path) -> bool:
    """Create and remove a file there: permission bits lie for root, /proc, read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".relation-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_new_dir(path: str | Path) -> Path:
    """A destination folder must not exist yet, or be empty, and must be creatable."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RelationError(f"output '{path}': already exists and is not an empty folder")
    return check_writable(path)


def real_dir(path: str | Path) -> str:
    """The symlink-free path of a folder, with a trailing separator (a prefix of everything inside it)."""
    return os.path.join(os.path.realpath(path), "")


def resolve_inside(name: str, base: Path, root: Path, real_root: str) -> tuple[Path, str]:
    """``base / name`` and its real path, if ``name`` stays inside the dataset ``root``.

    A dataset file may only name files under its root (``real_root = real_dir(root)``): absolute
    paths, ``..`` and symlinks leading out are refused (RelationError with the reason), so an
    untrusted file cannot make a command read, and copy into its outputs, anything else.
    """
    if "\0" in name:
        raise RelationError(f"{name!r} contains a NUL character")
    relative = Path(name)
    if relative.is_absolute():
        raise RelationError(f"{name!r} is an absolute path; paths must be relative to the file that names them")
    if ".." in relative.parts:
        raise RelationError(f"{name!r} contains '..'; paths must stay inside the dataset root '{root}'")
    full = base / relative
    real = os.path.realpath(full)
    if not real.startswith(real_root):
        raise RelationError(f"{name!r} leads outside the dataset root '{root}' through a symlink")
    return full, real


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
        os.chmod(tmp, DIR_MODE)
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
