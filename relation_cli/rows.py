"""Run-ready analogy rows (``cond1``, ``cond2``, ``source``, ``target``, ``text``, ``task``) in JSON Lines.

Image paths in a row are relative to the file that holds it and must stay inside its folder. Instead of
``cond1``/``cond2`` a row may carry k exemplar pairs: ``"exemplars": [["a.png", "a2.png"], ["c.png", "c2.png"]]``.

A message names a row by its line in the file, ``Row.line`` (``row 3`` is line 3, as a JSON error's
``line 3``), so a blank line does not shift the numbers; ``Row.index`` counts rows (0, 1, ...) and
names outputs and records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .errors import RelationError, first_line
from .fs import not_found, real_dir, resolve_inside

T = TypeVar("T")

IMAGE_FIELDS = ("cond1", "cond2", "source", "target")
FIELDS = (*IMAGE_FIELDS, "text", "task", "exemplars")
Pair = tuple[Path, Path]


@dataclass(frozen=True)
class Row:
    """One analogy sample: exemplar pair (cond1 -> cond2), query ``source``, optional ``target``.

    A row with an ``exemplars`` list keeps all its pairs in ``exemplars``; ``cond1``/``cond2`` are its first.
    ``index``: its position among the file's rows (0-based); ``line``: its line in the file (1-based), the
    number a message gives it (``row {line}``).
    """

    index: int
    cond1: Path
    cond2: Path
    source: Path
    target: Path | None
    text: str
    task: str
    exemplars: tuple[Pair, ...] = ()
    line: int = 0  # 0: not read from a file

    @property
    def pairs(self) -> tuple[Pair, ...]:
        """Every exemplar pair (A, A') of the row, k >= 1 of them."""
        return self.exemplars or ((self.cond1, self.cond2),)

    @property
    def name(self) -> str:
        """How a message names the row: ``row {line}`` (its line in the file), ``row {index + 1}`` when it was
        not read from a file."""
        return f"row {self.line or self.index + 1}"


class DuplicateKey(ValueError):
    """A JSON object that gives one key twice: ``json.loads`` would keep the last value silently."""

    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` of :func:`loads_object`: the object as a dict, DuplicateKey on a repeated key."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def loads_object(text: str) -> Any:
    """``json.loads`` refusing a repeated key in any object (DuplicateKey, a ValueError)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def json_problem(err: Exception) -> str:
    """Why ``json.loads`` refused a text: its own message, or the limit hit (deep nesting, huge integers)."""
    if isinstance(err, json.JSONDecodeError):  # its msg alone stops short: "Unterminated string starting at"
        return f"{err.msg}, column {err.colno}"
    return "nested too deeply" if isinstance(err, RecursionError) else first_line(err)


def one_json_document(text: str) -> bool:
    """Whether ``text`` is a single JSON value, e.g. a list of rows (pretty-printed or on one line): what a
    JSON Lines reader names as such instead of listing every line as malformed."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line of a JSON Lines file as a dict; every bad line is reported together, with its number.

    Raises RelationError for a missing or unreadable file and for bad lines (up to 10 named; a line whose
    object gives a key twice is one); a file none of whose lines is a JSON object (a CSV, say) gets one short
    message naming its first line's problem, and a pretty-printed JSON document one that says so.
    """
    return [value for _, value in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` with each object's line number (1-based; blank lines are skipped, not renumbered)."""
    path = Path(path)
    if path.is_dir():
        raise RelationError(f"'{path}': is a folder; give a JSON Lines file of rows (e.g. prepare's test_seen.jsonl)")
    if not path.is_file():
        raise RelationError(f"'{path}': {not_found(path)}")
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")  # BOM allowed; not splitlines: JSON may hold U+2028
    except UnicodeDecodeError as e:
        raise RelationError(f"'{path}': not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RelationError(f"'{path}': cannot read ({e.strerror or first_line(e)})") from None
    out, problems, repeats = [], [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = loads_object(line)
        except DuplicateKey as e:  # still a JSON object: not a sign of a CSV or a pretty-printed document
            problems.append(f"line {number}: {e}: give each field once")
            repeats += 1
            continue
        except (ValueError, RecursionError) as e:
            problems.append(f"line {number}: malformed JSON ({json_problem(e)})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: expected a JSON object, found {type(value).__name__}")
            continue
        out.append((number, value))
    objects = out or repeats
    if not objects and problems and one_json_document("\n".join(lines)):  # e.g. a list of rows, pretty-printed or not
        over = f" over {len(problems)} lines" if len(problems) > 1 else ""
        raise RelationError(f"'{path}': one JSON document{over}, not JSON Lines: write one JSON object per line")
    if not objects and len(problems) > 1:  # a CSV or other text: the first line says enough
        raise RelationError(f"'{path}': not a JSON Lines file, none of its {len(problems)} non-blank lines is a "
                            f"JSON object ({problems[0]})")  # fmt: skip
    if problems:
        raise RelationError(f"'{path}': " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    return out


def parse_rows(path: str | Path, need_target: bool = False) -> list[Row]:
    """Rows of a run-ready jsonl file with their paths resolved; all problems are reported together.

    Image paths must stay inside the file's folder (see :func:`~relation_cli.fs.resolve_inside`), and
    unknown fields are refused: a misspelt ``text`` would otherwise be dropped silently. A problem names
    the row by its line in the file (``row 3``: line 3).
    """
    path = Path(path)
    root, real_root = path.parent, real_dir(path.parent)
    rows, problems = [], []
    for i, (line, raw) in enumerate(read_jsonl_numbered(path)):
        reasons, paths = _row_paths(raw, need_target, root, real_root)
        pairs, why = _exemplar_pairs(raw, root, real_root)
        reasons += why
        if reasons:
            problems.append(f"row {line}: " + "; ".join(reasons))
            continue
        first = pairs[0] if pairs else (paths["cond1"], paths["cond2"])
        rows.append(Row(i, *first, paths["source"], paths.get("target"), raw.get("text") or "", raw.get("task") or "",
                        tuple(pairs), line))  # fmt: skip
    if problems:
        raise RelationError(f"'{path}': " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    if not rows:
        raise RelationError(f"'{path}': no rows")
    return rows


def _row_paths(raw: dict, need_target: bool, root: Path, real_root: Path) -> tuple[list[str], dict[str, Path]]:
    """Problems of a row's fields other than ``exemplars``, and its resolved image paths."""
    reasons = []
    pair_keys = () if raw.get("exemplars") is not None else ("cond1", "cond2")
    needed = (*pair_keys, "source") + (("target",) if need_target else ())
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        reasons.append(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                       f"(known: {', '.join(FIELDS)})")  # fmt: skip
    missing = [k for k in needed if raw.get(k) in (None, "")]
    if missing:
        reasons.append(f"missing or empty {', '.join(missing)}")
    wrong = [k for k in FIELDS[:-1] if raw.get(k) is not None and not isinstance(raw[k], str)]
    if wrong:
        reasons.append(f"{', '.join(wrong)} must be {'strings' if len(wrong) > 1 else 'a string'}")
    paths = {}
    for key in IMAGE_FIELDS:
        if key not in missing + wrong and raw.get(key):
            try:
                paths[key] = resolve_inside(raw[key], root, root, real_root)[0]
            except RelationError as e:
                reasons.append(f"{key} {e}")
    return reasons, paths


def _exemplar_pairs(raw: dict, root: Path, real_root: Path) -> tuple[list[Pair], list[str]]:
    """The ``exemplars`` field: a non-empty list of [A, A'] path pairs, instead of cond1/cond2."""
    value = raw.get("exemplars")
    if value is None:
        return [], []
    if raw.get("cond1") is not None or raw.get("cond2") is not None:
        return [], ["give cond1/cond2 or exemplars, not both"]
    shape_ok = isinstance(value, list) and value and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in value
    )
    if not shape_ok:
        return [], ['exemplars must be a non-empty list of [A, A\'] path pairs, e.g. [["a.png", "a2.png"]]']
    pairs, reasons = [], []
    for n, pair in enumerate(value, 1):
        try:
            pairs.append(tuple(resolve_inside(x, root, root, real_root)[0] for x in pair))
        except RelationError as e:
            reasons.append(f"exemplars pair {n} {e}")
    return pairs, reasons


def spread_by_task(items: Iterable[T], task_of: Callable[[T], str]) -> list[T]:
    """``items`` in rounds over their tasks: the first item of every task (tasks in order of first
    appearance), then the second of every task, and so on; a prefix of it shows as many tasks as it can."""
    by_task: dict[str, list[T]] = {}
    for item in items:
        by_task.setdefault(task_of(item), []).append(item)
    rounds = max((len(v) for v in by_task.values()), default=0)
    return [group[i] for i in range(rounds) for group in by_task.values() if i < len(group)]


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
