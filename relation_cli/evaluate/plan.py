"""What ``relation eval`` computes: the splits, the methods, and one output file per (split, method, row).

Nothing here loads a model: every row is parsed and every choice is made before generation starts, so
a bad input fails in seconds and every process of a distributed run makes the same plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..config import EVAL_BASELINES, EvalSection, RelationConfig
from ..errors import RelationError
from ..fs import check_writable
from ..images import check_images
from ..rows import Row, parse_rows, spread_by_task
from .settings import EVAL, check_own_folder

MODEL = "relation"
"""The configured model, scored against its baselines (``EVAL_BASELINES`` in the config)."""
METHOD_LABELS = {
    MODEL: "relation",
    "copy_query": "copy query (B)",
    "adapter_off": "adapter off",
    "wrong_exemplar": "wrong exemplar",
    "vae_reconstruction": "VAE reconstruction",
}


@dataclass(frozen=True)
class Split:
    """One input file: the rows scored (``eval.limit`` applied) and the wrong-exemplar donors."""

    name: str
    source: Path
    rows: list[Row]
    total: int  # rows in the file
    donors: dict[int, Row]  # row index -> the row of another task whose (cond1, cond2) it borrows
    note: str = ""  # why the wrong-exemplar baseline is skipped for this split, if it is


@dataclass(frozen=True)
class Job:
    """One image to have on disk: ``method``'s output for ``row``, made with ``exemplar``'s pair."""

    split: str
    method: str
    row: Row
    exemplar: Row
    output: Path


def split_name(path: Path) -> str:
    """``test_seen.jsonl`` -> ``seen``; any other file is named by its stem."""
    stem = path.stem
    return stem[len("test_") :] if stem.startswith("test_") and len(stem) > len("test_") else stem


def choose_donors(all_rows: list[Row], rows: list[Row], seed: int, split: str) -> dict[int, Row]:
    """For each row, a row of a *different* task, drawn from the whole file with a per-row seeded RNG.

    A string seed makes the choice independent of PYTHONHASHSEED, of ``eval.limit`` and of the order
    in which processes run: the same row always borrows the same pair.
    """
    donors = {}
    for row in rows:
        others = [r for r in all_rows if r.task != row.task]
        if others:
            donors[row.index] = random.Random(f"{seed}/{split}/{row.index}").choice(others)
    return donors


def choose_rows(rows: list[Row], limit: int | None) -> list[Row]:
    """All rows, or ``limit`` of them spread over the file's tasks (:func:`spread_by_task`: the first row of
    every task, then the second, ...), in file order. The same file and limit always give the same rows."""
    if not limit:
        return rows
    return sorted(spread_by_task(rows, lambda r: r.task)[:limit], key=lambda r: r.index)


def load_splits(inputs: list[str | Path], section: EvalSection) -> list[Split]:
    """Parse every input (targets required); all problems of a file are reported together."""
    if not inputs:
        raise RelationError(
            "no input to evaluate: pass --input FILE (e.g. prepare's test_seen.jsonl) or set eval.inputs"
        )
    splits, seen = [], {}
    for item in inputs:
        path = Path(item)
        name = split_name(path)
        if name in seen and seen[name].resolve() == path.resolve():
            raise RelationError(f"input '{path}' is given twice: give each file once")
        if name in seen:
            raise RelationError(f"inputs '{seen[name]}' and '{path}' are both split '{name}': rename one")
        seen[name] = path
        all_rows = parse_rows(path, need_target=True)
        rows = choose_rows(all_rows, section.limit)
        note = ""
        donors: dict[int, Row] = {}
        tasks = {r.task for r in all_rows}
        if "wrong_exemplar" in section.baselines and len(tasks) < 2:
            note = f"wrong exemplar skipped for '{name}': '{path}' holds one task ({tasks.pop() or 'no task field'})"
        elif "wrong_exemplar" in section.baselines:
            donors = choose_donors(all_rows, rows, section.seed, name)
        splits.append(Split(name, path, rows, len(all_rows), donors, note))
    return splits


def methods_of(section: EvalSection) -> list[str]:
    return [MODEL, *[b for b in EVAL_BASELINES if b in section.baselines]]  # a fixed order, whatever the config's


def output_path(output_dir: Path, split: str, method: str, index: int) -> Path:
    return output_dir / split / method / f"{index:06d}.png"


def plan_jobs(splits: list[Split], methods: list[str], output_dir: Path) -> list[Job]:
    """Every (split, method, row) output, in a fixed order. A split without donors has no wrong-exemplar job."""
    jobs = []
    for split in splits:
        for method in methods:
            for row in split.rows:
                exemplar = row
                if method == "wrong_exemplar":
                    if row.index not in split.donors:
                        continue
                    exemplar = split.donors[row.index]
                jobs.append(
                    Job(split.name, method, row, exemplar, output_path(output_dir, split.name, method, row.index))
                )
    return jobs


def check_rows(cfg: RelationConfig) -> tuple[list[Split], list[Job]]:
    """Every input's rows parse and every image they need decodes (also what ``relation eval --dry-run``
    checks); the splits and the jobs to run. Raises RelationError naming the file, row and image."""
    splits = load_splits(cfg.eval.inputs, cfg.eval)
    jobs = plan_jobs(splits, methods_of(cfg.eval), Path(cfg.eval.output_dir))
    check_inputs(cfg, splits, jobs)
    return splits, jobs


def check_inputs(cfg: RelationConfig, splits: list[Split], jobs: list[Job]) -> None:
    """Every target, and every image an output still to make needs, decodes: before hours of generation.

    Every process of a distributed run checks them all, so a bad row stops all of them the same way.
    """
    order = {split.name: i for i, split in enumerate(splits)}  # messages list problems split by split, row by row
    keyed = [((order[split.name], row.index, 0), row.target, f"{split.name} {row.name} target")
             for split in splits for row in split.rows]  # fmt: skip
    for job in jobs:
        if not job.output.is_file():
            where, key = f"{job.split} {job.row.name} ", (order[job.split], job.row.index, 1)
            for n, (a, b) in enumerate(job.exemplar.pairs, 1):
                label = where + "exemplar" + (f" pair {n}" if n > 1 else "")
                keyed += [(key, a, label + " A"), (key, b, label + " A'")]
            keyed.append((key, job.row.source, where + "query"))
    keyed.sort(key=lambda entry: entry[0])  # stable: within a row, the order above
    check_images([(path, label) for _, path, label in keyed], cfg.data.max_image_pixels)


def check_output_folder(out: Path) -> None:
    """The eval output folder is a folder that can be written and is new, empty or eval's own
    (:func:`~relation_cli.evaluate.settings.check_own_folder`). Raises RelationError in one line."""
    if out.exists() and not out.is_dir():
        raise RelationError(f"output dir '{out}': exists and is not a folder")
    check_writable(out, "output dir")
    check_own_folder(out, EVAL, lambda n: n in EVAL_FILES or _split_folder(out / n),
                     "use a new or empty --output-dir")  # fmt: skip


EVAL_FILES = ("config.yaml", "metrics.json", "per_task.csv", "report.html", "grids", "judge_cache")
"""What relation eval writes in its folder besides the splits' outputs."""


def _split_folder(path: Path) -> bool:
    """Whether ``path`` looks like one split's outputs (``<split>/<method>/``), or an empty folder."""
    return path.is_dir() and all(c.name.startswith(".") or (c.is_dir() and c.name in METHOD_LABELS) for c in path.iterdir())
