"""In-context grids: the exemplar pair shown to the transformer itself, not only through the adapter (issue 18,
docs/demo-experiments.md, tenth experiment).

The RelationAdapter gives the transformer the pair only as two pooled SigLIP vectors, so nothing in it says
*where* A' differs from A. Here each prepared row (A, A', B -> B') becomes one image-to-image row whose query
is the grid ``[A | A' | B]`` and whose target is ``[A | A' | B']`` (96x32 for the demo's 32x32 scenes): the
transformer sees A, A' and B as tokens with positions (the query's cloned ids), so "paint where A' differs
from A" and "move what moved from A to A'" become attention over aligned positions. The adapter still gets
(A, A') as before. ``make`` writes the grid rows of a prepared folder (and, for its test splits, the same rows
with a wrong pair in the grid and as exemplars), ``relation train``/``relation eval`` run on them as on any
prepared rows, and ``score`` reads the last third of every output: MSE to B', of B (copying the query) and of
the wrong-pair run's output.

    python benchmarks/grid_probe.py make build/demo/data build/grid/data
    relation train --config configs/demo-train.yaml --set data.resolution=96 \\
        --set 'train.data=[build/grid/data/train.jsonl]' --set train.output_dir=build/grid/main ...
    relation eval --config configs/demo-eval.yaml --set 'eval.inputs=[build/grid/data/test_unseen.jsonl]' ...
    python benchmarks/grid_probe.py score build/grid/data build/grid/eval build/grid/eval-wrong --split unseen
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from relation_cli.errors import RelationError
from relation_cli.fs import atomic_dir
from relation_cli.images import open_image
from relation_cli.evaluate.settings import eval_outputs
from relation_cli.progress import progress_bar
from relation_cli.rows import Row, parse_rows
from _args import Parser, run_main

SPLITS = ("train", "test_seen", "test_unseen")
LIMIT = "grid_probe.py's MAX_PIXELS"  # named in the message of an image over it
MAX_PIXELS = 1 << 20  # the demo's scenes are 32x32; a grid cell of a million pixels is not one of them


def grid(images: list[Image.Image], row: Row, file: Path) -> Image.Image:
    """Images of one size side by side, left to right: ``(n*w, h)``; RelationError when the sizes differ."""
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        said = ", ".join(f"{w}x{h}" for w, h in (image.size for image in images))
        raise RelationError(f"'{file}': {row.name}: images of sizes {said}; a row's images must be one size")
    w, h = images[0].size
    out = Image.new("RGB", (w * len(images), h))
    for i, image in enumerate(images):
        out.paste(image, (i * w, 0))
    return out


def wrong_partner(rows: list[Row], i: int) -> Row:
    """The first row after row ``i`` (cyclically) of another task: its pair is row i's wrong pair."""
    for step in range(1, len(rows)):
        other = rows[(i + step) % len(rows)]
        if other.task != rows[i].task:
            return other
    raise AssertionError("checked by read_splits")


def read_splits(data: Path) -> dict[str, list[Row]]:
    """Every split's rows (their first exemplar pair), all checked before anything is written: each file's rows
    (``parse_rows``: paths inside ``data``, known fields, a target), and a second task in every test split."""
    if not data.is_dir():
        raise RelationError(f"'{data}': " + ("is a file" if data.exists() else "no such folder")
                            + "; give a folder relation prepare wrote")  # fmt: skip
    splits = {}
    for split in SPLITS:
        source = data / f"{split}.jsonl"
        if not source.is_file():
            raise RelationError(f"'{data}': no {split}.jsonl; give a folder relation prepare wrote")
        rows = parse_rows(source, need_target=True)
        if split != "train" and len({r.task for r in rows}) < 2:
            raise RelationError(f"'{source}': every row is of one task, so no row has a wrong pair to take")
        splits[split] = rows
    return splits


def make(data: Path, out: Path) -> dict[str, int]:
    """Write ``out/<split>.jsonl`` (and ``<split>_wrong.jsonl`` for test splits) with grid images under
    ``out/images``; returns the rows written per file. The grid's pair (and the adapter's) is the row's first
    exemplar pair. RelationError for a bad folder, row or image, before or while writing; ``out`` is written
    whole or not at all."""
    splits = read_splits(data)
    counts = {}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for split, rows in splits.items():
            file = data / f"{split}.jsonl"
            variants = [("", False)] + ([("_wrong", True)] if split != "train" else [])
            for suffix, wrong in variants:
                written = []
                with progress_bar(f"{split}{suffix}", len(rows)) as advance:
                    for i, row in enumerate(rows):
                        pair = wrong_partner(rows, i) if wrong else row
                        opened = {}
                        for key, owner in (("cond1", pair), ("cond2", pair), ("source", row), ("target", row)):
                            role = f"'{file}' {owner.name} {key}"
                            opened[key] = open_image(getattr(owner, key), role, MAX_PIXELS, limit=LIMIT)
                        a, a2, b, b2 = opened.values()
                        stem = f"images/{split}{suffix}_{i:06d}"
                        grid([a, a2, b], row, file).save(tmp / f"{stem}_query.png")
                        grid([a, a2, b2], row, file).save(tmp / f"{stem}_target.png")
                        a.save(tmp / f"{stem}_cond1.png")  # rows name files inside their folder only
                        a2.save(tmp / f"{stem}_cond2.png")
                        written.append({"cond1": f"{stem}_cond1.png", "cond2": f"{stem}_cond2.png",
                                        "source": f"{stem}_query.png", "target": f"{stem}_target.png",
                                        "text": row.text, "task": row.task})  # fmt: skip
                        advance()
                with open(tmp / f"{split}{suffix}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in written)
                counts[f"{split}{suffix}.jsonl"] = len(written)
    return counts


def score(data: Path, run: Path, wrong_run: Path | None, split: str) -> dict[str, dict[str, float]]:
    """Per task and for all rows (``mean``): mean MSE (pixels in [0, 1]) of the last third of ``run``'s outputs
    to B' (``true pair``), of B to B' (``copy``), of the last third of ``wrong_run``'s outputs to B' (``wrong
    pair``; only the rows both runs have are scored then) and the rows scored (``n``). RelationError for a bad
    folder or output, an output of another size than its row's target, and a ``wrong_run`` without outputs."""
    rows = parse_rows(data / f"test_{split}.jsonl", need_target=True)
    made = eval_outputs(run, split, rows)
    if not made:
        raise RelationError(f"'{run}': no {split} outputs")
    if wrong_run is not None:
        wrong = eval_outputs(wrong_run, f"{split}_wrong", parse_rows(data / f"test_{split}_wrong.jsonl", need_target=True))
        if not wrong:
            raise RelationError(f"'{wrong_run}': no {split}_wrong outputs; run relation eval on test_{split}_wrong.jsonl")
        made = {i: path for i, path in made.items() if i in wrong}
        if not made:
            raise RelationError(f"'{run}' and '{wrong_run}' have no row in common")

    def pixels(path: Path, role: str, like: np.ndarray | None = None) -> np.ndarray:
        """An image as pixels in [0, 1]; RelationError when it is not the size of ``like`` (when given)."""
        image = open_image(path, role, MAX_PIXELS * 3, limit=f"3 x {LIMIT}: a grid row of three cells")
        if like is not None and image.size != (like.shape[1], like.shape[0]):
            raise RelationError(f"{role} '{path}' is {image.width}x{image.height}, the grid rows are "
                                f"{like.shape[1]}x{like.shape[0]} (run relation eval with infer.output_size: query)")  # fmt: skip
        return np.asarray(image, np.float32) / 255

    def mse_of_thirds(a: np.ndarray, b: np.ndarray) -> float:
        w = a.shape[1] // 3
        return float(((a[:, 2 * w :] - b[:, 2 * w :]) ** 2).mean())

    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, path in sorted(made.items()):
        row = rows[i]
        target, cell = pixels(row.target, f"{row.name} target"), sums[row.task]
        cell["true pair"].append(mse_of_thirds(pixels(path, f"output {i}", target), target))
        cell["copy"].append(mse_of_thirds(pixels(row.source, f"{row.name} source", target), target))
        if wrong_run is not None:
            cell["wrong pair"].append(mse_of_thirds(pixels(wrong[i], f"wrong-pair output {i}", target), target))
    table = {task: {k: float(np.mean(v)) for k, v in cell.items()} | {"n": len(cell["copy"])}
             for task, cell in sorted(sums.items())}  # fmt: skip
    every = defaultdict(list)
    for cell in sums.values():
        for k, v in cell.items():
            every[k].extend(v)
    table["mean"] = {k: float(np.mean(v)) for k, v in every.items()} | {"n": len(every["copy"])}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write the grid rows of a prepared folder")
    p.add_argument("data", type=Path, help="a folder relation prepare wrote (train/test_seen/test_unseen.jsonl)")
    p.add_argument("out", type=Path, help="new folder for the grid rows and images")
    p = sub.add_parser("score", help="score relation eval's outputs of the grid rows")
    p.add_argument("data", type=Path, help="the folder make wrote")
    p.add_argument("run", type=Path, help="relation eval's output_dir for test_<split>.jsonl")
    p.add_argument("wrong_run", type=Path, nargs="?", help="relation eval's output_dir for test_<split>_wrong.jsonl")
    p.add_argument("--split", choices=("seen", "unseen"), default="unseen",
                   help="which test split: test_<split>.jsonl and, in WRONG_RUN, test_<split>_wrong.jsonl's outputs")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            for name, n in make(args.data, args.out).items():
                print(f"{name}: {n} rows")
        else:
            table = score(args.data, args.run, args.wrong_run, args.split)
            keys = ("true pair", "copy", "wrong pair") if args.wrong_run else ("true pair", "copy")
            print("| task | rows | " + " | ".join(keys) + " |\n|" + " --- |" * (len(keys) + 2))
            for task, cell in table.items():
                print(f"| {task} | {cell['n']} | " + " | ".join(f"{cell[k]:.4f}" for k in keys) + " |")
    except RelationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_main(main)
