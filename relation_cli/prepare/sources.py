"""Reading the three input forms into one list of pairs, and every structural check that needs no pixels.

Inputs (detected from INPUT itself):
- a folder in the Relation252K layout: ``ROOT/<task>/Group1/labels.json`` (a task's other ``Group<N>`` files:
  more pairs of the same task), each a JSON list of
  ``{left_image_description, right_image_description, edit_instruction, img_name}``; the task is the
  folder name;
- a ``.jsonl`` or ``.json`` file of the same entries, with an optional ``task`` (else the image's
  parent folder name);
- the same files holding a user's own pairs as two images: ``{source, target, edit_instruction, task}``.

Image paths are relative to the file that names them and must stay inside the dataset root (the
INPUT folder, or the folder of the INPUT file): absolute paths, ``..`` and symlinks leading out are
refused. Problems are collected, never raised one at a time, so a user sees all of them at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RelationError, first_line
from ..fs import folders_hint, found_below, real_dir, resolve_inside
from ..rows import DuplicateKey, json_problem, loads_object, one_json_document

LAYOUT_GLOB = "*/Group*/labels.json"
FIELDS = ("left_image_description", "right_image_description", "edit_instruction", "img_name", "source", "target",
          "task")  # fmt: skip
"""Every field an entry may have: an unknown one is refused (a misspelt optional field would be lost silently)."""


@dataclass(frozen=True)
class Pair:
    """One before/after example: a side-by-side image (``images`` of length 1) or two files."""

    index: int  # position in the input (all files, in reading order)
    task: str
    file: Path  # the JSON file that names it
    where: str  # "entry 3" (JSON list) or "line 5" (JSON Lines)
    text: str
    images: tuple[Path, ...]


@dataclass(frozen=True)
class Problem:
    """Why one entry (or a whole file) cannot be used."""

    task: str
    file: Path
    where: str
    reason: str
    index: int  # reading order, shared with Pair.index: problems are listed in input order

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.reason}"


@dataclass
class Source:
    """What was read from INPUT: the root that paths may not leave, the pairs, the problems found so far."""

    root: Path
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # real (symlink-free) paths: the root's, and each pair's images' -> the first pair naming them
    real_root: str = ""
    seen: dict[tuple[str, ...], Pair] = field(default_factory=dict, repr=False)
    folders: dict[str, Path] = field(default_factory=dict)  # task -> its labels.json (folder layout)

    def __post_init__(self) -> None:
        self.real_root = real_dir(self.root)

    @property
    def tasks(self) -> list[str]:
        return sorted({p.task for p in self.pairs})


class DatasetProblems(RelationError):
    """Some entries are invalid; ``problems`` lists each (file, entry, reason)."""

    LISTED = 20  # problems printed above the error line; the rest are counted

    def __init__(self, problems: list[Problem], input_label: str):
        self.problems = problems
        n = len(problems)
        # A file that yields no entry at all (malformed as a whole, a pretty-printed .jsonl, not UTF-8):
        # --skip-invalid cannot help, and a single one is the whole message.
        self.one_file = n == 1 and problems[0].where == "file"
        if self.one_file:
            super().__init__(f"{problems[0]}; nothing was written")
        else:
            super().__init__(
                f"{n} invalid entr{'y' if n == 1 else 'ies'} in '{input_label}'; nothing was written "
                "(fix them, or pass --skip-invalid to leave them out)"
            )

    def listing(self) -> list[str]:
        """The lines printed above the error: the first ``LISTED`` problems, then how many more."""
        if self.one_file:
            return []
        more = len(self.problems) - self.LISTED
        return [str(p) for p in self.problems[: self.LISTED]] + (
            [f"... and {more} more (--skip-invalid writes them all to skipped.jsonl)"] if more > 0 else []
        )


def read_source(path: str | Path) -> Source:
    """Detect the input form, parse every entry and check its fields and paths (no image is opened)."""
    path = Path(path)
    if not path.exists():
        raise RelationError(f"input '{path}': not found")
    if _already_prepared(path):
        what = "a folder relation prepare wrote" if path.is_dir() else "rows relation prepare wrote (cond1, cond2, source, target)"
        raise RelationError(f"input '{path}': {what}, ready to use: pass train.jsonl to relation train (train.data) "
                            "and test_seen.jsonl / test_unseen.jsonl to relation eval (--input)")  # fmt: skip
    if path.is_dir():
        files = sorted(path.glob(LAYOUT_GLOB))
        if not files:
            raise RelationError(
                f"input '{path}': no <task>/Group1/labels.json inside (the Relation252K layout){_layout_near(path)}; "
                "pass such a folder, a .jsonl or a .json file"
            )
        source = Source(path)
        for labels in files:
            source.folders.setdefault(labels.parent.parent.name, labels)  # Group1's; other groups: same task
            _read_file(source, labels, task=labels.parent.parent.name)
    elif path.suffix.lower() in (".jsonl", ".json"):
        source = Source(path.parent)
        _read_file(source, path, task=None)
    else:
        raise RelationError(f"input '{path}': expected a Relation252K folder, a .jsonl or a .json file")
    if not source.pairs and not source.problems:
        raise RelationError(f"input '{path}': holds no entries")
    source.seen.clear()
    return source


def _already_prepared(path: Path) -> bool:
    """Whether ``path`` is relation prepare's output: a folder with its ``manifest.json`` and ``train.jsonl`` and
    not the Relation252K layout, or a rows file (``.jsonl``, or a ``.json`` list) whose first entry has the analogy
    fields ``cond1`` and ``cond2``."""
    if path.is_dir():  # a folder in the Relation252K layout is read as one, whatever else it holds
        return (path / "manifest.json").is_file() and (path / "train.jsonl").is_file() and not any(path.glob(LAYOUT_GLOB))
    try:
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8-sig") as f:
                entry = json.loads(next((line for line in f if line.strip()), ""))
        elif path.suffix.lower() == ".json":
            entries = json.loads(path.read_text(encoding="utf-8-sig"))
            entry = entries[0] if isinstance(entries, list) and entries else None
        else:
            return False
    except (OSError, ValueError, RecursionError):  # reading it for real says what is wrong
        return False
    return isinstance(entry, dict) and {"cond1", "cond2"} <= entry.keys()


def _layout_near(path: Path) -> str:
    """Where the Relation252K layout is, near a folder that lacks it, as ``; ...`` to add to the refusal (or
    ``""``): the folder given is one task (``<task>/Group1/labels.json``) or one group of it, or the layout is
    one or two levels down (the first level that has it; several such folders are listed, up to 3)."""
    path = path.resolve()  # the folders above '.' have names
    if (path / "labels.json").is_file() and path.name.startswith("Group"):
        return f"; it is one group of one task: pass the folder that holds the tasks ('{path.parent.parent}')"
    if any(path.glob("Group*/labels.json")):
        return f"; it is one task's folder: pass the folder that holds the tasks ('{path.parent}')"
    found = found_below(path, LAYOUT_GLOB, lambda labels: labels.parents[2])
    return folders_hint(found, "has that layout", "have that layout", "it")


def _read_file(source: Source, file: Path, task: str | None) -> None:
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is allowed
    except UnicodeDecodeError as e:
        _file_problem(source, file, task, "file", f"not UTF-8 text (byte {e.start})")
        return
    except OSError as e:
        _file_problem(source, file, task, "file", f"cannot read ({e.strerror or first_line(e)})")
        return
    for where, raw in _entries(source, file, text, task):
        reasons: list[str] = []
        pair, real = _parse_entry(raw, file, where, source, task, reasons)
        if not reasons and (first := source.seen.setdefault(real, pair)) is not pair:
            reasons.append(duplicate_reason(first, "same image file"))  # the first one is kept
        if reasons:
            source.problems.append(Problem(pair.task, file, where, "; ".join(reasons), pair.index))
        else:
            source.pairs.append(pair)


def _entries(source: Source, file: Path, text: str, task: str | None) -> Iterator[tuple[str, Any]]:
    """(locator, raw value) for each entry; a malformed file or line becomes a problem with its line."""
    if file.suffix.lower() == ".jsonl":
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) > 1 and one_json_document(text):
            try:
                json.loads(lines[0])
            except (ValueError, RecursionError):  # a pretty-printed .json file under a .jsonl name
                _file_problem(source, file, task, "file", f"one JSON document over {len(lines)} lines, not JSON "
                              "Lines: name it .json or write one entry per line")  # fmt: skip
                return
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
            if not line.strip():
                continue
            try:
                yield f"line {number}", loads_object(line)
            except DuplicateKey as e:
                _file_problem(source, file, task, f"line {number}", f"{e}: give each field once")
            except (ValueError, RecursionError) as e:
                _file_problem(source, file, task, f"line {number}", f"malformed JSON ({json_problem(e)})")
        return
    if not text.strip():  # an empty .json holds no entries, as an empty .jsonl does
        return
    try:
        value = loads_object(text)
    except DuplicateKey as e:
        _file_problem(source, file, task, "file", f"an entry gives {e}: give each field once")
        return
    except json.JSONDecodeError as e:
        _file_problem(source, file, task, f"line {e.lineno}", f"malformed JSON ({e.msg}, column {e.colno})")
        return
    except (ValueError, RecursionError) as e:
        _file_problem(source, file, task, "file", f"malformed JSON ({json_problem(e)})")
        return
    if not isinstance(value, list):
        _file_problem(source, file, task, "file", f"expected a JSON list of entries, found {type(value).__name__}")
        return
    for number, raw in enumerate(value, 1):
        yield f"entry {number}", raw


def _parse_entry(
    raw: Any, file: Path, where: str, source: Source, task: str | None, reasons: list[str]
) -> tuple[Pair, tuple[str, ...]]:
    """The entry as a Pair, and its images' real paths; whatever is wrong is appended to ``reasons``."""
    index = _next(source)
    if not isinstance(raw, dict):
        reasons.append(f"expected a JSON object, found {type(raw).__name__}")
        return Pair(index, task or "", file, where, "", ()), ()
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        reasons.append(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                       f"(known: {', '.join(FIELDS)})")  # fmt: skip
    text = raw.get("edit_instruction")
    if text is not None and not isinstance(text, str):
        reasons.append(f"edit_instruction must be a string, found {type(text).__name__}")
    elif not text or not text.strip():
        reasons.append("edit_instruction is missing or empty")
    side_by_side, two_files = "img_name" in raw, ("source" in raw or "target" in raw)
    keys = ("img_name",) if side_by_side else ("source", "target") if two_files else ()
    if side_by_side and two_files:
        reasons.append("has both img_name and source/target; use one form")
        keys = ()
    elif not keys:
        reasons.append("needs img_name (a before|after image) or source and target (two images)")
    checked = [p for k in keys if (p := _check_path(raw.get(k), k, file.parent, source, reasons))]
    images = tuple(full for full, _ in checked)
    if task is None and "task" in raw:  # a .jsonl/.json file: the entry's own task ...
        task = raw["task"]
        if not isinstance(task, str) or not task.strip():
            reasons.append("task is empty or not a string")
            task = ""
    elif task is None:  # ... else the image's folder name
        task = images[0].parent.name if images else ""
    text = text.strip() if isinstance(text, str) else ""
    return Pair(index, task.strip(), file, where, text, images), tuple(real for _, real in checked)


def _file_problem(source: Source, file: Path, task: str | None, where: str, reason: str) -> None:
    """A file or line that yields no entry at all."""
    source.problems.append(Problem(task or "", file, where, reason, _next(source)))


def _next(source: Source) -> int:
    """The next reading-order index: one per entry (or per file that could not be read)."""
    return len(source.pairs) + len(source.problems)


def _check_path(value: Any, key: str, base: Path, source: Source, reasons: list[str]) -> tuple[Path, str] | None:
    """(path, real path) of one image named by an entry, or None with the reason appended."""
    if not isinstance(value, (str, type(None))):
        reasons.append(f"{key} must be a string, found {type(value).__name__}")
        return None
    if not value or not value.strip():
        reasons.append(f"{key} is missing or empty")
        return None
    try:
        return resolve_inside(value, base, source.root, source.real_root)
    except RelationError as e:
        reasons.append(f"{key} {e}")
        return None


def duplicate_reason(first: Pair, how: str) -> str:
    return f"duplicate of {first.file} {first.where} ({how})"
