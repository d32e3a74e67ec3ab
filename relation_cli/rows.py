"""Run-ready analogy rows (``cond1``, ``cond2``, ``source``, ``target``, ``text``, ``task``) in JSON Lines.

Image paths in a row are relative to the file that holds it (absolute paths are kept as they are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import RelationError

IMAGE_FIELDS = ("cond1", "cond2", "source", "target")


@dataclass(frozen=True)
class Row:
    """One analogy sample: exemplar pair (cond1 -> cond2), query ``source``, optional ``target``."""

    index: int
    cond1: Path
    cond2: Path
    source: Path
    target: Path | None
    text: str
    task: str


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line of a JSON Lines file as a dict; every bad line is reported together, with its number."""
    path = Path(path)
    if not path.is_file():
        raise RelationError(f"'{path}': file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise RelationError(f"'{path}': not UTF-8 text (byte {e.start})") from None
    out, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: malformed JSON ({e.msg})")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: expected a JSON object, found {type(value).__name__}")
            continue
        out.append(value)
    if problems:
        raise RelationError(f"'{path}': " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    return out


def parse_rows(path: str | Path, need_target: bool = False) -> list[Row]:
    """Rows of a run-ready jsonl file with their paths resolved; all problems are reported together."""
    path = Path(path)
    rows, problems = [], []
    for i, raw in enumerate(read_jsonl(path)):
        needed = ("cond1", "cond2", "source") + (("target",) if need_target else ())
        missing = [k for k in needed if not isinstance(raw.get(k), str) or not raw.get(k)]
        if missing:
            problems.append(f"row {i + 1}: missing or empty {', '.join(missing)}")
            continue
        text = raw.get("text", "")
        if not isinstance(text, str):
            problems.append(f"row {i + 1}: 'text' must be a string")
            continue
        paths = {k: _resolve(path.parent, raw[k]) for k in IMAGE_FIELDS if isinstance(raw.get(k), str) and raw[k]}
        rows.append(
            Row(i, paths["cond1"], paths["cond2"], paths["source"], paths.get("target"), text, str(raw.get("task", "")))
        )
    if problems:
        raise RelationError(f"'{path}': " + "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else ""))
    if not rows:
        raise RelationError(f"'{path}': no rows")
    return rows


def _resolve(base: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else base / p


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
