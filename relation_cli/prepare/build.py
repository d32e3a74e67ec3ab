"""``prepare``: read -> check -> decode and split -> pair -> write, all into a temporary folder.

Output folder (row paths are relative to it):

    train.jsonl  test_seen.jsonl  test_unseen.jsonl    rows: cond1, cond2, source, target, text, task
                                                        (data.exemplar_pairs > 1: test rows hold exemplars)
    images/<task>/<n>_before.png, <n>_after.png         every usable pair, EXIF-upright RGB, lossless
    manifest.json                                       counts per task and split, seed, input, settings, notes;
                                                        exemplar pairs the test rows got (k > 1), warnings
    config.yaml                                         the resolved configuration
    skipped.jsonl                                       with --skip-invalid: task, file, entry, reason
    raw/                                                synthetic runs only: the generated Relation252K layout

Nothing appears at the output path until everything is written (``atomic_dir``); a failed or
interrupted run leaves no trace there.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.markup import escape

from ..config import RelationConfig, save_config
from ..errors import RelationError, counted
from ..fs import atomic_dir, check_new_dir
from ..progress import console, make_progress
from ..rows import write_jsonl
from .decode import DecodeJob, RateColumn, decode_all, default_workers
from .pairing import MIN_TRAIN_PAIRS, TaskPlan, choose_unseen, plan_task
from .sources import (
    DatasetProblems,
    Pair,
    Problem,
    Source,
    duplicate_reason,
    read_source,
)
from .families import Instance, check_families, make_families, plan_instances
from .synthetic import check_synthetic_size, make_synthetic

SPLITS = ("train", "test_seen", "test_unseen")
IMAGES_DIR = "images"
RAW_DIR = "raw"
MANIFEST_FORMAT = "relation-prepared/1"
# recorded in the manifest
SETTINGS = ("per_task_cap", "test_per_task", "max_test_fraction", "unseen_tasks", "unseen_task_names", "exemplar_pairs")


@dataclass(frozen=True)
class PrepareSummary:
    output: Path
    pairs: int  # usable pairs
    tasks: int
    unseen_tasks: list[str]
    samples: dict[str, int]  # per split
    skipped: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # a split left empty, and why; printed by prepare


def prepare(cfg: RelationConfig, input_path: str | Path | None, output: str | Path) -> PrepareSummary:
    """Turn INPUT (or, with ``data.synthetic_pairs``, a generated set) into run-ready splits in ``output``.

    A split that comes out empty although it is normally not (train, above all) is said in a ``warning:``
    line on stderr and in ``PrepareSummary.warnings``; the run still succeeds.
    """
    data, output = cfg.data, Path(output)
    if data.synthetic_pairs is not None:  # before the output is checked or created: nothing is written
        if input_path is not None:
            raise RelationError("give either INPUT or --synthetic N (data.synthetic_pairs), not both")
        check_synthetic_size(data.synthetic_size, data.max_image_pixels)
    check_new_dir(output)
    if data.synthetic_pairs is not None:
        instances = _family_instances(cfg)  # names and ranges checked before anything is created
        with atomic_dir(output) as tmp:
            roles = _generate(cfg, tmp / RAW_DIR, instances)
            info = {"synthetic": {"pairs_per_task": data.synthetic_pairs, "size": data.synthetic_size}, "path": RAW_DIR}
            summary = _build(cfg, read_source(tmp / RAW_DIR), tmp, info, label=str(output / RAW_DIR), roles=roles)
    else:
        if input_path is None:
            raise RelationError("no input: pass a Relation252K folder, a .jsonl or .json file, or --synthetic N")
        source = read_source(input_path)  # every structural check runs before anything is created
        if source.tasks:  # fail fast on names; without any usable entry, the problems say why
            choose_unseen(source.tasks, data.unseen_tasks, data.unseen_task_names, data.seed)
        with atomic_dir(output) as tmp:
            summary = _build(cfg, source, tmp, {"path": str(Path(input_path).resolve())}, label=str(input_path))
    for warning in summary.warnings:
        console.print("[yellow]warning:[/yellow]", escape(warning))
    return replace(summary, output=output)


def _family_instances(cfg: RelationConfig) -> list[Instance] | None:
    """The instances of ``data.synthetic_families`` (None without it); RelationError on bad names or ranges."""
    data = cfg.data
    if not data.synthetic_families:
        return None
    if data.unseen_tasks or data.unseen_task_names:
        raise RelationError("data.synthetic_families decides the unseen split itself (synthetic_unseen_families, "
                            "synthetic_unseen_range): leave unseen_tasks and unseen_task_names empty")  # fmt: skip
    check_families(data.synthetic_families, data.synthetic_unseen_families, data.synthetic_unseen_range)
    band = (data.synthetic_unseen_range[0], data.synthetic_unseen_range[1])
    return plan_instances(data.synthetic_families, data.synthetic_unseen_families, data.synthetic_instances,
                          data.synthetic_test_instances, band, data.seed)  # fmt: skip


def _generate(cfg: RelationConfig, root: Path, instances: list[Instance] | None) -> dict[str, str] | None:
    """The synthetic set under ``root``; with families, task -> role (train, seen, unseen), else None."""
    from .synthetic import TASKS

    data = cfg.data
    total = data.synthetic_pairs * (len(TASKS) if instances is None else len(instances))
    with make_progress(RateColumn("pairs")) as progress:
        bar = progress.add_task("generating pairs", total=total)
        advance = lambda n: progress.advance(bar, n)  # noqa: E731
        if instances is not None:
            return make_families(root, instances, data.synthetic_pairs, data.seed, data.synthetic_size, advance)
        make_synthetic(root, data.synthetic_pairs, data.seed, data.synthetic_size, advance=advance)
    return None


def _build(
    cfg: RelationConfig, source: Source, tmp: Path, info: dict[str, Any], label: str, roles: dict[str, str] | None = None
) -> PrepareSummary:
    """Decode, split and write ``source``; ``roles`` (synthetic families): task -> train, seen or unseen,
    the whole task going to train.jsonl, test_seen.jsonl or test_unseen.jsonl."""
    data = cfg.data
    names = image_names(source.pairs)
    # With problems already found and no --skip-invalid the run will fail: decode only to list them all.
    write = not source.problems or data.skip_invalid
    by_task, problems = _decode(cfg, source, tmp if write else None, names)
    if problems and not data.skip_invalid:
        raise DatasetProblems(problems, label)
    if not by_task:
        bad = counted(len(problems), "invalid entry", "invalid entries")
        why = f" ({bad}; the first: {problems[0]})" if problems else ""
        raise RelationError(f"input '{label}': no task has 2 usable pairs{why}; nothing to prepare")

    if roles is None:
        unseen = choose_unseen(sorted(by_task), data.unseen_tasks, data.unseen_task_names, data.seed)
    else:
        unseen = sorted(t for t in by_task if roles[t] == "unseen")
    role = (roles or {}).get
    plans = [
        plan_task(task, [p.index for p in pairs], data.seed, task in unseen, data.per_task_cap,
                  0 if role(task) == "train" else data.test_per_task, data.max_test_fraction, data.exemplar_pairs,
                  test_only=role(task) == "seen")  # fmt: skip
        for task, pairs in sorted(by_task.items())
    ]
    pairs_by_index = {p.index: p for pairs in by_task.values() for p in pairs}
    samples = _write_splits(tmp, plans, pairs_by_index, names, data.exemplar_pairs > 1)
    folders = {task: Path(names[pairs[0].index][0]).parent.as_posix() for task, pairs in by_task.items()}
    dropped = dropped_tasks(source, problems, set(by_task))
    for folder in _image_folders(tmp, names):
        if folder.is_dir() and not any(folder.iterdir()):  # a dropped task's: none of its pairs was written
            folder.rmdir()
    notes = [] if roles else _notes(plans, data.test_per_task, data.per_task_cap, data.max_test_fraction)
    notes += _exemplar_notes(plans, data.exemplar_pairs)
    if dropped:
        notes.append(f"{len(dropped)} task(s) dropped, none of their pairs is in the splits (manifest.json "
                     f"dropped_tasks): " + "; ".join(f"'{t}': {why}" for t, why in dropped.items()))  # fmt: skip
    warnings = _empty_splits(plans, samples, data.per_task_cap, data.test_per_task, data.max_test_fraction)
    _write_manifest(tmp, cfg, info, plans, samples, len(problems), folders, notes, dropped, warnings)
    save_config(cfg, tmp / "config.yaml")
    if data.skip_invalid:
        write_jsonl(tmp / "skipped.jsonl", (_skipped_row(p, source.root) for p in problems))
    return PrepareSummary(tmp, len(pairs_by_index), len(plans), unseen, samples, len(problems), notes, warnings)


def _image_folders(tmp: Path, names: dict[int, tuple[str, str]]) -> list[Path]:
    """The ``images/<task>`` folders the pairs' halves are written to (``names``: pair id -> before, after)."""
    return sorted({(tmp / before).parent for before, _ in names.values()})


def _decode(
    cfg: RelationConfig, source: Source, tmp: Path | None, names: dict[int, tuple[str, str]]
) -> tuple[dict[str, list[Pair]], list[Problem]]:
    """Decode every pair (writing its halves under ``tmp`` unless None): usable pairs per task, all problems."""
    data = cfg.data
    if tmp is not None:
        for folder in _image_folders(tmp, names):
            folder.mkdir(parents=True)

    def outputs(pair: Pair) -> tuple[str, str] | None:
        return None if tmp is None else (str(tmp / names[pair.index][0]), str(tmp / names[pair.index][1]))

    jobs = [
        DecodeJob(p.index, tuple(map(str, p.images)), outputs(p), data.max_image_pixels, data.png_compress_level)
        for p in source.pairs
    ]
    results = decode_all(jobs, data.workers or default_workers())

    problems = list(source.problems)
    by_task: dict[str, list[Pair]] = defaultdict(list)
    first_with: dict[str, Pair] = {}
    for pair, result in zip(source.pairs, results):
        if result.problem is not None:
            problems.append(Problem(pair.task, pair.file, pair.where, result.problem, pair.index))
        elif (first := first_with.setdefault(result.digest, pair)) is not pair:
            reason = duplicate_reason(first, "same pixels")
            problems.append(Problem(pair.task, pair.file, pair.where, reason, pair.index))
        else:
            by_task[pair.task].append(pair)
    for task, pairs in list(by_task.items()):
        if len(pairs) < 2:  # a sample needs two different pairs of one task
            reason = f"task '{task}' has only this one usable pair; an analogy sample needs 2 pairs of the same task"
            problems += [Problem(task, p.file, p.where, reason, p.index) for p in pairs]
            del by_task[task]
    problems.sort(key=lambda p: p.index)
    if tmp is not None:  # halves already written for pairs that were then left out
        usable = {p.index for pairs in by_task.values() for p in pairs}
        for pair in source.pairs:
            if pair.index not in usable:
                for name in names[pair.index]:
                    (tmp / name).unlink(missing_ok=True)
    return dict(by_task), problems


def image_names(pairs: list[Pair]) -> dict[int, tuple[str, str]]:
    """Pair index -> (before, after) paths relative to the output: ``images/<task>/<n>_before.png``."""
    folders: dict[str, str] = {}
    for task in sorted({p.task for p in pairs}):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", task).strip("._") or "task"
        folder, n = slug, 1
        while folder in folders.values():  # two task names with one slug: number the later one
            n += 1
            folder = f"{slug}-{n}"
        folders[task] = folder
    counters: dict[str, int] = defaultdict(int)
    names = {}
    for p in pairs:
        stem = f"{IMAGES_DIR}/{folders[p.task]}/{counters[p.task]:05d}"
        counters[p.task] += 1
        names[p.index] = (f"{stem}_before.png", f"{stem}_after.png")
    return names


def _write_splits(
    tmp: Path, plans: list[TaskPlan], pairs: dict[int, Pair], names: dict[int, tuple[str, str]], lists: bool = False
) -> dict[str, int]:
    """train.jsonl, test_seen.jsonl, test_unseen.jsonl; ``lists``: test rows carry an ``exemplars`` list
    of their k pairs instead of cond1/cond2."""

    def chosen(plan: TaskPlan, split: str) -> list[tuple[tuple[int, int], list[int]]]:
        if split == "train":
            return [(sample, [sample[0]]) for sample in plan.train]
        return list(zip(plan.test, plan.test_exemplars)) if plan.unseen == (split == "test_unseen") else []

    def rows(split: str) -> Iterator[dict]:
        for plan in plans:
            for (exemplar, query), exemplars in chosen(plan, split):
                if lists and split != "train":
                    pair: dict = {"exemplars": [list(names[e]) for e in exemplars]}
                else:
                    pair = {"cond1": names[exemplar][0], "cond2": names[exemplar][1]}
                yield {**pair, "source": names[query][0], "target": names[query][1], "text": pairs[query].text,
                       "task": plan.task}  # fmt: skip

    for split in SPLITS:
        write_jsonl(tmp / f"{split}.jsonl", rows(split))
    return {
        "train": sum(len(p.train) for p in plans),
        "test_seen": sum(len(p.test) for p in plans if not p.unseen),
        "test_unseen": sum(len(p.test) for p in plans if p.unseen),
    }


def dropped_tasks(source: Source, problems: list[Problem], kept: set[str]) -> dict[str, str]:
    """Every task of the input that has no pair in the splits, with why (sorted by name)."""
    named = {p.task for p in source.pairs} | {p.task for p in problems if p.task}
    dropped = {}
    for task in sorted((set(source.folders) | named) - kept):
        if task in named:  # only with --skip-invalid: invalid entries stop the run otherwise
            dropped[task] = "fewer than 2 usable pairs (its invalid entries are in skipped.jsonl)"
        else:
            dropped[task] = f"'{source.folders[task]}' holds no entries"
    return dropped


def _write_manifest(
    tmp: Path, cfg: RelationConfig, info: dict[str, Any], plans: list[TaskPlan], samples: dict[str, int],
    skipped: int, folders: dict[str, str], notes: list[str], dropped: dict[str, str], warnings: list[str],
) -> None:
    data = cfg.data
    tasks = {}
    for plan in plans:
        tasks[plan.task] = {
            "split": "unseen" if plan.unseen else "seen",
            "pairs": plan.pairs,
            "train": len(plan.train),
            "test_seen": 0 if plan.unseen else len(plan.test),
            "test_unseen": len(plan.test) if plan.unseen else 0,
            "images": folders[plan.task],
        }
    manifest = {
        "format": MANIFEST_FORMAT,
        "input": info,
        "seed": data.seed,
        "settings": {k: getattr(data, k) for k in SETTINGS},
        "counts": {"pairs": sum(p.pairs for p in plans), "tasks": len(plans), "skipped": skipped, **samples},
        "unseen_tasks": sorted(p.task for p in plans if p.unseen),
        "tasks": tasks,
        "notes": notes,
        "dropped_tasks": dropped,
    }
    if data.exemplar_pairs > 1:  # what test rows got (a small task gives fewer); settings has what was asked
        manifest["counts"]["exemplar_pairs"] = _exemplar_range(plans)
    if warnings:  # only then: the manifest of a usual run stays as it was
        manifest["warnings"] = warnings
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _skipped_row(problem: Problem, root: Path) -> dict[str, str]:
    file = problem.file.relative_to(root) if problem.file.is_relative_to(root) else problem.file
    return {"task": problem.task, "file": file.as_posix(), "entry": problem.where, "reason": problem.reason}


def _notes(plans: list[TaskPlan], test_per_task: int, cap: int, max_test_fraction: float) -> list[str]:
    """Why some seen tasks have fewer test samples than asked: their size (``count_test_queries``)."""
    wanted = min(test_per_task, cap)
    short = [p for p in plans if not p.unseen and len(p.test) < wanted]
    if not short:
        return []
    shown = _first_five([f"{p.task}: {p.pairs} pairs, {len(p.test)} test" for p in short])
    return [
        f"{len(short)} seen task(s) got fewer than {wanted} test samples: at most {max_test_fraction:g} of a task's "
        f"pairs become test queries (data.max_test_fraction) and at least {MIN_TRAIN_PAIRS} stay for training "
        f"({shown})"
    ]


def _first_five(parts: list[str]) -> str:
    """The first five of ``parts`` joined by "; ", and " ..." when there are more."""
    return "; ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")


def _exemplar_range(plans: list[TaskPlan]) -> dict[str, int]:
    """Fewest and most exemplar pairs a test row got (0 and 0 without test rows)."""
    counts = [len(pairs) for plan in plans for pairs in plan.test_exemplars]
    return {"min": min(counts, default=0), "max": max(counts, default=0)}


def _exemplar_notes(plans: list[TaskPlan], wanted: int) -> list[str]:
    """Why test rows hold fewer than ``data.exemplar_pairs`` pairs: their task has too few to give."""
    short = [p for p in plans if any(len(pairs) < wanted for pairs in p.test_exemplars)]
    if wanted < 2 or not short:
        return []
    got = _exemplar_range(plans)
    spread = f"{got['min']}" if got["min"] == got["max"] else f"{got['min']}-{got['max']}"
    shown = _first_five([f"{p.task}: at most {max(map(len, p.test_exemplars))}" for p in short])
    return [
        f"data.exemplar_pairs={wanted}: test rows got {spread} exemplar pairs, fewer than asked in "
        f"{counted(len(short), 'task')} (manifest.json counts.exemplar_pairs): a row's pairs are other pairs of its "
        f"own task, never its query, and in a seen task only its training pairs ({shown}); lower "
        f"data.exemplar_pairs or give tasks more pairs"
    ]


def _empty_splits(plans: list[TaskPlan], samples: dict[str, int], cap: int, test_per_task: int,
                 max_test_fraction: float) -> list[str]:  # fmt: skip
    """A warning for each split left empty that is normally not, with why and what to change: train, always
    (or, when only some seen tasks got no training sample, those tasks); test_seen while test_per_task asks for
    samples; test_unseen while tasks are held out."""
    seen = [p for p in plans if not p.unseen]
    warnings = []
    if not samples["train"]:  # every seen task keeps >= MIN_TRAIN_PAIRS pairs: only the cap leaves none
        most = max((len(p.test) for p in seen), default=0)
        warnings.append(
            f"train.jsonl is empty: data.per_task_cap={cap} is used up by every seen task's test_seen samples, which "
            f"are taken first (up to data.test_per_task={test_per_task} per task), so no sample is left for "
            f"training; raise --per-task-cap above {most} or lower --test-per-task"
        )
    elif untrained := [p for p in seen if not p.train and not p.test_only]:  # some seen tasks: the cap left none
        most = max(len(p.test) for p in untrained)
        warnings.append(
            f"{counted(len(untrained), 'seen task')} got no training sample ({_first_five([p.task for p in untrained])}): "
            f"data.per_task_cap={cap} is used up by their test_seen samples, taken first, so they are tested as seen "
            f"but never trained on; raise --per-task-cap above {most} or lower --test-per-task"
        )
    if not samples["test_seen"] and test_per_task and seen:  # only tasks with fewer than 3 pairs
        warnings.append(
            f"test_seen.jsonl is empty: no seen task has pairs to spare for a test query (at least {MIN_TRAIN_PAIRS} "
            f"stay for training, at most data.max_test_fraction={max_test_fraction:g} of a task's pairs are test "
            f"queries); give tasks more pairs or raise data.max_test_fraction"
        )
    unseen = [p for p in plans if p.unseen]
    if not samples["test_unseen"] and unseen:
        warnings.append(
            f"test_unseen.jsonl is empty although {counted(len(unseen), 'task is', 'tasks are')} held out as unseen: "
            f"data.test_per_task=0 gives them no samples; set --test-per-task above 0 or hold out no task"
        )
    return warnings
