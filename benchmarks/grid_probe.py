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

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from relation_cli.errors import RelationError
from relation_cli.fs import atomic_dir
from relation_cli.progress import progress_bar
from relation_cli.rows import read_jsonl

SPLITS = ("train", "test_seen", "test_unseen")


def grid(images: list[Image.Image]) -> Image.Image:
    """Images of one size side by side, left to right: ``(n*w, h)``."""
    w, h = images[0].size
    out = Image.new("RGB", (w * len(images), h))
    for i, image in enumerate(images):
        out.paste(image.convert("RGB"), (i * w, 0))
    return out


def wrong_partner(rows: list[dict], i: int) -> dict:
    """The first row after row ``i`` (cyclically) of another task: its pair is row i's wrong pair."""
    for step in range(1, len(rows)):
        other = rows[(i + step) % len(rows)]
        if other["task"] != rows[i]["task"]:
            return other
    raise RelationError("every row is of one task: no wrong pair to take")


def make(data: Path, out: Path) -> dict[str, int]:
    """Write ``out/<split>.jsonl`` (and ``<split>_wrong.jsonl`` for test splits) with grid images under
    ``out/images``; returns the rows written per file."""
    counts = {}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for split in SPLITS:
            source = data / f"{split}.jsonl"
            if not source.is_file():
                raise RelationError(f"'{data}': no {split}.jsonl; give a folder relation prepare wrote")
            rows = read_jsonl(source)
            variants = [("", False)] + ([("_wrong", True)] if split != "train" else [])
            for suffix, wrong in variants:
                written = []
                with progress_bar(f"{split}{suffix}", len(rows)) as advance:
                    for i, row in enumerate(rows):
                        pair = wrong_partner(rows, i) if wrong else row
                        a, a2 = (Image.open(data / pair[k]) for k in ("cond1", "cond2"))
                        b, b2 = (Image.open(data / row[k]) for k in ("source", "target"))
                        stem = f"images/{split}{suffix}_{i:06d}"
                        grid([a, a2, b]).save(tmp / f"{stem}_query.png")
                        grid([a, a2, b2]).save(tmp / f"{stem}_target.png")
                        a.save(tmp / f"{stem}_cond1.png")  # rows name files inside their folder only
                        a2.save(tmp / f"{stem}_cond2.png")
                        written.append({"cond1": f"{stem}_cond1.png", "cond2": f"{stem}_cond2.png",
                                        "source": f"{stem}_query.png", "target": f"{stem}_target.png",
                                        "text": row.get("text", ""), "task": row["task"]})  # fmt: skip
                        advance()
                with open(tmp / f"{split}{suffix}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in written)
                counts[f"{split}{suffix}.jsonl"] = len(written)
    return counts


def outputs(run: Path, split: str, data: Path, rows: list[dict]) -> dict[int, Path]:
    """Row index -> output image of ``relation eval``'s ``run`` for ``split`` (e.g. "unseen", "unseen_wrong");
    RelationError when ``run`` is not such a folder or its outputs were made from other rows than ``rows``."""
    record = run / "generation.json"
    if not record.is_file():
        raise RelationError(f"'{run}': no generation.json; give the output_dir of relation eval")
    made = {int(Path(key).stem): (run / key, entry)
            for key, entry in json.loads(record.read_text(encoding="utf-8"))["rows"].items()
            if key.startswith(f"{split}/relation/")}  # fmt: skip
    for i, (_, entry) in made.items():
        if i >= len(rows) or Path(entry["source"]).resolve() != (data / rows[i]["source"]).resolve():
            raise RelationError(f"'{run}': its {split} output {i} was not made from the grid rows of '{data}'")
    return {i: path for i, (path, _) in made.items()}


def score(data: Path, run: Path, wrong_run: Path | None, split: str) -> dict[str, dict[str, float]]:
    """Per task: mean MSE (pixels in [0, 1]) of the last third of ``run``'s outputs to B' (``true pair``), of
    B to B' (``copy``) and of the last third of ``wrong_run``'s outputs to B' (``wrong pair``)."""
    rows = read_jsonl(data / f"test_{split}.jsonl")
    made = outputs(run, split, data, rows)
    wrong = outputs(wrong_run, f"{split}_wrong", data, read_jsonl(data / f"test_{split}_wrong.jsonl")) if wrong_run else {}
    if not made:
        raise RelationError(f"'{run}': no {split} outputs")

    def third(path: Path) -> np.ndarray:
        image = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
        w = image.shape[1] // 3
        return image[:, 2 * w:]

    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, path in sorted(made.items()):
        target, cell = third(data / rows[i]["target"]), sums[rows[i]["task"]]
        cell["true pair"].append(float(((third(path) - target) ** 2).mean()))
        cell["copy"].append(float(((third(data / rows[i]["source"]) - target) ** 2).mean()))
        if i in wrong:
            cell["wrong pair"].append(float(((third(wrong[i]) - target) ** 2).mean()))
    table = {task: {k: float(np.mean(v)) for k, v in cell.items()} for task, cell in sorted(sums.items())}
    every = defaultdict(list)
    for cell in sums.values():
        for k, v in cell.items():
            every[k].extend(v)
    table["mean"] = {k: float(np.mean(v)) for k, v in every.items()}
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make", help="write the grid rows of a prepared folder")
    p.add_argument("data", type=Path, help="a folder relation prepare wrote (train/test_seen/test_unseen.jsonl)")
    p.add_argument("out", type=Path, help="new folder for the grid rows and images")
    p = sub.add_parser("score", help="score relation eval's outputs of the grid rows")
    p.add_argument("data", type=Path, help="the folder make wrote")
    p.add_argument("run", type=Path, help="relation eval's output_dir for test_<split>.jsonl")
    p.add_argument("wrong_run", type=Path, nargs="?", help="relation eval's output_dir for test_<split>_wrong.jsonl")
    p.add_argument("--split", choices=("seen", "unseen"), default="unseen")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            for name, n in make(args.data, args.out).items():
                print(f"{name}: {n} rows")
        else:
            table = score(args.data, args.run, args.wrong_run, args.split)
            print("| task | true pair | copy | wrong pair |\n| --- | --- | --- | --- |")
            for task, cell in table.items():
                print(f"| {task} | " + " | ".join(f"{cell.get(k, float('nan')):.4f}" for k in ("true pair", "copy", "wrong pair")) + " |")
    except RelationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
