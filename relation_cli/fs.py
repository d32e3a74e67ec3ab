"""Atomic writes: nothing half-written is ever left where a later run would trust it.

Files and folders are written under a temporary name in the destination's own folder (same file
system) and renamed into place only when complete.
"""

from __future__ import annotations

import errno
import glob
import itertools
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import RelationError

log = logging.getLogger(__name__)

# Temporary entries are created with open(..., 0o666) / mkdir(..., 0o777), so the kernel applies the
# user's umask as an ordinary open() or mkdir() would. Some writers replace the file they are given with a
# private one (safetensors' save_file leaves 0600); what is moved into place gets the mode the umask gives
# (read off the temporary entry, so the process umask is never changed or even read).


def _new_temp(parent: Path, name: str, suffix: str = "", folder: bool = False) -> Path:
    """A new, uniquely named entry ``parent/.name.<random><suffix>``, created with the umask applied."""
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise RelationError(f"cannot create a temporary entry in '{parent}'")


def remove_stale_temps(paths: Iterable[Path]) -> int:
    """Delete the temporary files that :func:`atomic_file` left for ``paths`` when a run was killed while
    writing them (``.name.<8 hex><suffix>`` beside each path); call it only before those paths are written
    again. Returns how many were deleted."""
    removed = 0
    for path in paths:
        stale = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}{re.escape(path.suffix)}")
        for entry in path.parent.glob(f".{glob.escape(path.name)}.*") if path.parent.is_dir() else ():
            if stale.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def _apply_mode(tmp: Path, file_mode: int, dir_mode: int | None = None) -> None:
    """``file_mode`` on ``tmp`` (a file) or on every file under it, ``dir_mode`` on the folders."""
    if not tmp.is_dir():
        os.chmod(tmp, file_mode)
        return
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(root, f), file_mode)


def give_folder_mode(folder: Path) -> None:
    """Give every file under ``folder`` the folder's own mode less execute bits and every subfolder the
    folder's mode: for a folder made with ``mkdir`` (umask applied) and filled by writers that leave private
    files (safetensors' ``save_file``: 0600), so what it holds gets the mode the umask gives (0644 / 0755
    under 022), as :func:`atomic_file` and :func:`atomic_dir` do for theirs."""
    mode = stat.S_IMODE(folder.stat().st_mode)
    _apply_mode(folder, mode & 0o666, mode)


@contextmanager
def atomic_file(path: str | Path, exclusive: bool = False) -> Iterator[Path]:
    """``with atomic_file(p) as tmp: write(tmp)``; ``tmp`` keeps ``p``'s suffix so writers infer formats.

    ``exclusive``: ``p`` must not exist when ``tmp`` is moved into place (a hard link, which fails on an
    existing name; where the file system has none, an O_EXCL create then a rename). Raises FileExistsError
    when another process wrote ``p`` meanwhile; ``tmp`` is removed and ``p`` left as that process wrote it.
    """
    path = Path(path)
    made = make_parents(path)
    try:
        tmp = _new_temp(path.parent, path.name, path.suffix)
    except BaseException as e:
        remove_empty(made)
        raise named_full_disk(e, path) from None
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask
    try:
        try:
            yield tmp
        except OSError as e:
            raise named_full_disk(e, path) from None
        _apply_mode(tmp, mode)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            os.replace(tmp, path)
        tmp.unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_empty(made)
        raise


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; returns those this call created, outermost first, so that a
    failed write can take them away again (:func:`remove_empty`) and leave the disk as it found it."""
    missing = [folder for folder in [path.parent, *path.parent.parents] if not folder.exists()][::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as :func:`make_parents` returns them) while they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer's file), or gone: leave it and the folders above
            return


# numpy's words for a write the disk cut short (np.save: ndarray.tofile, or its element-wise path for large arrays)
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|problem writing element \d+ to file")


def full_disk(e: BaseException) -> bool:
    """A full disk or an exhausted quota (ENOSPC, EDQUOT), also as libraries word it in their own exceptions
    (safetensors, torch's writer) and as numpy's ``np.save`` does (``N requested and M written``, ``problem writing
    element N to file``: no errno)."""
    if isinstance(e, OSError) and (e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and _SHORT_WRITE.fullmatch(str(e)))):
        return True
    return any(text in str(e) for text in ("No space left on device", "Disk quota exceeded"))


def named_full_disk(e: BaseException, path: Path) -> BaseException:
    """``e`` as an ENOSPC/EDQUOT ``OSError`` naming ``path`` (the file being written, not its temporary name)
    when it is a full disk (:func:`full_disk`); otherwise ``e`` unchanged."""
    if full_disk(e):
        code = e.errno if isinstance(e, OSError) and e.errno == errno.EDQUOT else errno.ENOSPC
        return OSError(code, os.strerror(code), str(path))
    return e


@contextmanager
def staged_text(text: str, beside: Path) -> Iterator[Callable[[Path], None]]:
    """``text`` written to a temporary file in ``beside``'s folder before the block runs; the block calls the
    yielded ``place(path)`` to move it to ``path`` (an atomic rename in that folder) once its own output is in
    place. A full disk then stops the work before that output is written, never after it (an output without
    its settings), and a failed block leaves neither. Removed when the block fails or never places it."""
    made, placed = make_parents(beside), False  # as atomic_file makes the output's folder
    try:
        try:
            tmp = _new_temp(beside.parent, beside.name, beside.suffix)
        except OSError as e:
            raise named_full_disk(e, beside) from None
        mode = stat.S_IMODE(tmp.stat().st_mode)
        try:
            try:
                tmp.write_text(text, encoding="utf-8")
            except OSError as e:
                raise named_full_disk(e, beside) from None

            def place(path: Path) -> None:
                nonlocal placed
                _apply_mode(tmp, mode)
                os.replace(tmp, path)
                placed = True

            yield place
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        if not placed:  # the block failed: the folders made for it go too
            remove_empty(made)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def not_found(path: str | Path) -> str:
    """``file not found``, with the name the folder does hold when exactly one entry equals ``path``'s name up to
    letter case or Unicode normalisation (an ``é`` typed as one code point, stored as two by macOS):
    ``file not found; the folder has 'Query.png'``. Scans the folder: for messages, not for checks."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    key = unicodedata.normalize("NFC", path.name).casefold()
    try:
        same = [e.name for e in os.scandir(folder) if unicodedata.normalize("NFC", e.name).casefold() == key]
    except OSError:
        same = []
    return f"file not found; the folder has '{folder / same[0]}'" if len(same) == 1 and same[0] != path.name else "file not found"


def check_writable(path: str | Path, what: str = "output") -> Path:
    """``path`` can be created or replaced: its nearest existing folder is a folder we may write in.

    Checked before any work, so a run never fails at its very end for want of a place to write.
    """
    path = Path(path)
    ancestor = nearest_existing(path.parent if str(path.parent) else Path("."))
    if not ancestor.is_dir():
        raise RelationError(f"{what} '{path}': '{ancestor}' is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK) or not _can_create_in(ancestor):
        raise RelationError(f"{what} '{path}': folder '{ancestor}' is not writable")
    return path


def found_below(path: Path, pattern: str, root: Callable[[Path], Path], keep: Callable[[Path], bool] = bool) -> list[Path]:
    """The folders ``root(match)`` of the matches of ``pattern`` one level below ``path`` that ``keep`` takes, else
    two levels below; sorted, a folder reached twice (through a link) once, by its first name. For the hints that
    say where a model or a dataset is."""
    for depth in (1, 2):
        roots: dict[Path, Path] = {}
        for match in sorted(path.glob("*/" * depth + pattern)):
            if keep(match):
                roots.setdefault(root(match).resolve(), root(match))
        if roots:
            return sorted(roots.values())
    return []


def folders_hint(found: list[Path], has: str, have: str, take: str) -> str:
    """``found`` as ``; '<folder>' <has>: pass <take>``, or ``; N folders in it <have> ('a', 'b', 'c' and M more):
    pass one``; ``""`` for none."""
    if len(found) == 1:
        return f"; '{found[0]}' {has}: pass {take}"
    if not found:
        return ""
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return f"; {len(found)} folders in it {have} ({', '.join(repr(str(f)) for f in found[:3])}{more}): pass one"


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists (the file system root at worst)."""
    while not path.exists() and path != path.parent:
        path = path.parent
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
    if path.exists() and not path.is_dir():
        raise RelationError(f"output '{path}': exists and is not a folder")
    if path.exists() and (names := sorted(e.name for e in itertools.islice(path.iterdir(), 4))):
        shown = ", ".join(f"'{n}'" for n in names[:3]) + (", ..." if len(names) > 3 else "")  # hidden files show too
        raise RelationError(f"output '{path}': already exists and is not an empty folder (it holds {shown}); give a "
                            "new folder, or remove this one first")  # fmt: skip
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

    ``replace=True`` swaps out an existing ``d``; otherwise ``d`` must be absent or empty, before and at the
    end: a ``d`` another process filled meanwhile is kept, and RelationError says so. ``tmp`` is
    ``.name.<8 hex>`` beside ``d``, with a lock file ``tmp.lock`` held while it is filled; a ``tmp`` of ``d``
    whose lock file is there and free was left by a killed run (SIGKILL, the OOM killer) and is deleted first,
    with a warning. Parent folders of ``d`` it had to make are removed again when the block fails (while empty).
    """
    path = Path(path)
    if not replace:
        check_new_dir(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # removed again on failure
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        remove_stopped_temp_dirs(path)
        tmp, lock = _locked_temp_dir(path.parent, path.name)
    except BaseException:
        _remove_empty(made)
        raise
    dir_mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o777 less the umask
    try:
        try:
            yield tmp
        except Exception as e:
            if full_disk(e):  # named by the output, not by a file in the hidden temporary folder
                raise named_full_disk(e, path) from None
            raise
        _apply_mode(tmp, dir_mode & 0o666, dir_mode)
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                path.rmdir() if path.exists() else None  # empty, as checked; a concurrent writer's is not
                tmp.rename(path)
            except OSError:
                raise RelationError(f"output '{path}': another command wrote it while this one was working; this "
                                    "one's result is discarded and theirs kept") from None  # fmt: skip
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    else:
        made = []  # the output is in place: its parents stay
    finally:
        _drop_lock(lock)
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first), each only while empty: the parents a failed :func:`atomic_dir` made."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer's file, a lock file still held), or gone
            return


def _locked_temp_dir(parent: Path, name: str):
    """A new folder ``parent/.name.<8 hex>`` and the held ``filelock.FileLock`` of ``<it>.lock``, taken before the
    folder exists, so a folder of this kind without a held lock is always a killed run's."""
    from filelock import FileLock, Timeout

    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}"
        lock = FileLock(f"{tmp}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue
        try:
            os.mkdir(tmp, 0o777)
            return tmp, lock
        except FileExistsError:
            _drop_lock(lock)
    raise RelationError(f"cannot create a temporary folder in '{parent}'")


def _drop_lock(lock) -> None:
    """Release ``lock`` and delete its file (another process may take it in between: it then finds no folder)."""
    lock.release()
    Path(lock.lock_file).unlink(missing_ok=True)


def remove_stopped_temp_dirs(path: Path) -> list[Path]:
    """Delete the temporary folders that :func:`atomic_dir` left beside ``path`` when its run was killed
    (``.name.<8 hex>`` beside a free lock file ``.name.<8 hex>.lock``), and their lock files; a running writer's
    are kept, and so is any such folder without its lock file (a user's own, another command's run folder).
    Says so on stderr. Returns the folders deleted."""
    from filelock import FileLock, Timeout

    stale = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}")
    removed = []
    for entry in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
        if not (stale.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()):
            continue
        if not Path(f"{entry}.lock").is_file():  # not atomic_dir's (it takes the lock file first): a user's folder
            continue
        lock = FileLock(f"{entry}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:  # its writer is running
            continue
        try:
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.warning("note: removed '%s' (%s), left by a run that was killed while writing '%s'", entry,
                        size_text(size), path)  # fmt: skip
        finally:
            _drop_lock(lock)
    return removed


def size_text(size: int) -> str:
    """``size`` bytes in B, KB, MB or GB (powers of 1000), as file browsers show them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------------------------------- one writer

LOCK_NAME = ".relation.lock"
"""The lock file a running command holds in the output folder it writes (filelock's FileLock: an OS lock, so a
killed run's lock is free again at once; the empty file stays)."""


def check_not_busy(folder: str | Path, what: str) -> None:
    """No other process holds ``folder``'s lock (see :func:`hold_folder`); writes nothing where no lock file is.

    Raises:
        RelationError: another process holds it (the message of :func:`hold_folder`).
    """
    if (Path(folder) / LOCK_NAME).is_file():
        hold_folder(folder, what).release()


def hold_folder(folder: str | Path, what: str):
    """Take ``folder``'s lock for this process until ``.release()`` (or exit): a second command writing the same
    output folder stops with one line instead of mixing its files with this one's. ``folder`` must exist.

    Returns:
        the held ``filelock.FileLock``.

    Raises:
        RelationError: another process holds it: ``{what} '{folder}': another relation command is writing to it
            now; ...``.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(Path(folder) / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RelationError(f"{what} '{Path(folder)}': another relation command is writing to it now; wait for it to "
                            f"finish, or choose another {what}") from None  # fmt: skip
    return lock


@contextmanager
def holding_folder(folder: str | Path, what: str) -> Iterator[None]:
    """:func:`hold_folder` for a ``with`` block (creates ``folder`` and its parents first)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    lock = hold_folder(folder, what)
    try:
        yield
    finally:
        lock.release()
