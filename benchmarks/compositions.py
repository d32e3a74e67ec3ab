"""Compositions of two of the fixed synthetic relations: held-out relations a model gets right only by
reading both edits from the exemplar pair (issue 18, docs/demo-experiments.md).

A composition ``a+b`` applies the fixed relation ``a`` (``relation_cli.prepare.synthetic.TASKS``), then
``b``. ``make`` writes every composition of two of the demo's seen relations as a Relation252K folder,
``relation prepare`` splits it with the ``HELD_OUT`` ones (both orders) as unseen tasks, ``relation eval``
generates, and ``score`` says, per held-out composition, whether the outputs are nearer the composed target
than the result of either relation alone: a model that recognises one of its training relations in the pair
and applies it is nearer that relation's result.

    python benchmarks/compositions.py make build/comp/raw --pairs 90 --avoid build/demo/data
    relation prepare build/comp/raw -o build/comp/data $(python benchmarks/compositions.py held) \\
        --test-per-task 10 --per-task-cap 340
    relation eval --config configs/demo-eval.yaml --set 'eval.inputs=[build/comp/data/test_unseen.jsonl]' \\
        --set eval.output_dir=build/comp/eval-embedded
    python benchmarks/compositions.py score build/comp/data build/comp/eval-embedded
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from relation_cli.errors import RelationError
from relation_cli.evaluate.settings import eval_outputs
from relation_cli.fs import atomic_dir
from relation_cli.images import open_image
from relation_cli.progress import progress_bar
from relation_cli.rows import parse_rows, read_jsonl
from relation_cli.prepare.synthetic import TASKS, Relation, make_synthetic
from _args import Parser, non_negative_int, positive_int, run_main

# The demo's training relations (configs/demo-data.yaml holds out flip_vertical and frame); swap_colours is left
# out because it returns the image unedited for scenes without a clearly largest shape.
PARTS = tuple(t for t in TASKS if t not in ("flip_vertical", "frame", "swap_colours"))
# Drawn again from the scene, not from the image: as the second edit they would drop the first.
REDRAWN = ("recolour", "outline")
HELD_OUT = (("invert", "channel_cycle"), ("darken", "invert"), ("invert", "mirror"), ("grayscale", "rotate90"),
            ("mirror", "rotate90"), ("shift", "zoom"), ("blur", "recolour"), ("outline", "darken"),
            ("channel_cycle", "shift"), ("grayscale", "zoom"))  # fmt: skip
SIZE = 32
LIMIT = "compositions.py's MAX_PIXELS"  # named in the message of an image over it
MAX_PIXELS = 1 << 20  # the compositions' scenes are 32x32


def compositions() -> list[tuple[str, str]]:
    """Every ordered pair (a, b) of distinct ``PARTS`` whose composition is a new relation.

    Left out: b in ``REDRAWN``, and grayscale then channel_cycle (equal to grayscale alone).
    """
    pairs = itertools.permutations(PARTS, 2)
    return [(a, b) for a, b in pairs if b not in REDRAWN and (a, b) != ("grayscale", "channel_cycle")]


def held_out(a: str, b: str) -> bool:
    """True for the compositions kept for test_unseen; a pair is held out in both orders."""
    return {a, b} in [set(p) for p in HELD_OUT]


def name(a: str, b: str) -> str:
    return f"{a}+{b}"


def compose(first: Relation, then: Relation) -> Relation:
    """``first``'s edit, then ``then``'s; their instructions and effects joined."""

    def edit(scene, image: Image.Image, size: int) -> Image.Image:
        return then.edit(scene, first.edit(scene, image, size), size)

    return Relation(f"{first.instruction} {then.instruction}", f"{first.effect}, {then.effect}", edit)


def composed_relations() -> dict[str, Relation]:
    """Every composition of ``compositions()``, by name."""
    return {name(a, b): compose(TASKS[a], TASKS[b]) for a, b in compositions()}


def pixels(path: Path) -> bytes:
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


def test_images(data: Path) -> set[bytes]:
    """The pixels of every image of ``data``'s test rows (a prepared folder's test_seen/test_unseen.jsonl).

    Raises RelationError when ``data`` lacks them (:func:`relation_cli.rows.read_jsonl`)."""
    taken = set()
    for split in ("test_seen.jsonl", "test_unseen.jsonl"):
        for row in read_jsonl(data / split):
            taken.update(pixels(data / row[k]) for k in ("cond1", "cond2", "source", "target"))
    return taken


def avoid(root: Path, taken: set[bytes]) -> int:
    """Remove from ``root`` every pair whose before or after half is one of ``taken`` (:func:`test_images`).

    Returns the number removed. The scenes of a composition are drawn by their own seeded generator, so an
    equal image is chance (a scene of one small shape drawn twice); removing it keeps the held-out scenes
    of the prepared folder unseen by any model trained on ``root``.
    """
    removed = 0
    for labels_path in sorted(root.glob("*/Group1/labels.json")):
        labels, kept = json.loads(labels_path.read_text(encoding="utf-8")), []
        for label in labels:
            pair = np.asarray(Image.open(labels_path.parent / label["img_name"]).convert("RGB"))
            halves = (pair[:, :SIZE].tobytes(), pair[:, SIZE:].tobytes())
            if taken.isdisjoint(halves):
                kept.append(label)
            else:
                (labels_path.parent / label["img_name"]).unlink()
                removed += 1
        labels_path.write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")
    return removed


class Corner:
    """Stand-in for a scene where only its background is read (``shift``): the image's top-left pixel,
    which no shape reaches (shapes lie in the central part of a synthetic scene)."""

    def __init__(self, image: Image.Image):
        self.colour = image.getpixel((0, 0))

    def bg(self) -> tuple[int, int, int]:
        return self.colour


def score(data: Path, run: Path, split: str = "unseen") -> tuple[dict[str, dict[str, float]], int, int]:
    """Per composition (task of ``data/test_<split>.jsonl``: held out for "unseen", new scenes of the trained
    ones for "seen"): mean MSE (pixels in [0, 1]) of the outputs in ``run/<split>/relation`` to the composed
    target (``composed``), of the query to it (``copy``), and of the outputs to a(B) and b(B) (``as a``,
    ``as b``; not for recolour and outline, which need the scene).

    Returns the table, the rows scored and the rows of the jsonl: a run of ``relation eval --limit N`` has
    outputs for some rows only. Raises RelationError when ``data`` or ``run`` is not such a folder, when
    ``run``'s outputs were made from other rows or from images changed since
    (:func:`~relation_cli.evaluate.settings.eval_outputs`), when an output is not its target's size, or when a
    task is not a composition.
    """
    jsonl = data / f"test_{split}.jsonl"
    if not jsonl.is_file():
        raise RelationError(f"'{data}': no test_{split}.jsonl; give the folder relation prepare wrote")
    rows = parse_rows(jsonl, need_target=True)
    made = eval_outputs(run, split, rows)
    if not made:
        raise RelationError(f"'{run}': no {split} outputs; run relation eval on '{jsonl}' into it")
    known = composed_relations()
    for i in sorted(made):
        if rows[i].task not in known:
            raise RelationError(f"'{jsonl}': task '{rows[i].task}' is not one of the compositions a+b that "
                                f"compositions.py make writes")  # fmt: skip
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def load(path: Path | Image.Image, role: str = "") -> np.ndarray:
        image = path if isinstance(path, Image.Image) else open_image(path, role, MAX_PIXELS, limit=LIMIT)
        return np.asarray(image.convert("RGB"), np.float32) / 255

    for i, output in sorted(made.items()):
        row = rows[i]
        out, query = load(output, f"output {i}"), open_image(row.source, f"{row.name} source", MAX_PIXELS, limit=LIMIT)
        target, cell = load(row.target, f"{row.name} target"), sums[row.task]
        if out.shape != target.shape:
            raise RelationError(f"output {i} '{output}' is {out.shape[1]}x{out.shape[0]}, its target "
                                f"{target.shape[1]}x{target.shape[0]} (run relation eval with infer.output_size: query)")  # fmt: skip
        cell["composed"].append(float(((out - target) ** 2).mean()))
        cell["copy"].append(float(((load(query) - target) ** 2).mean()))
        for part in row.task.split("+"):
            if part not in REDRAWN:
                alone = load(TASKS[part].edit(Corner(query), query, SIZE))  # type: ignore[arg-type]
                cell[f"as {part}"].append(float(((out - alone) ** 2).mean()))
    table = {task: {k: float(np.mean(v)) for k, v in cell.items()} for task, cell in sorted(sums.items())}
    return table, len(made), len(rows)


def make(root: Path, pairs: int, seed: int, taken: set[bytes]) -> tuple[int, int]:
    """Write every composition's ``pairs`` pairs under ``root`` (all or nothing: a temporary folder renamed at the
    end), less those equal to one of ``taken``. Returns (compositions, pairs removed).

    Raises RelationError when ``root`` is not new or empty, or when removing pairs leaves a composition fewer
    than 2 (``relation prepare`` would refuse it): choose another ``seed``."""
    relations = composed_relations()
    with atomic_dir(root) as tmp, progress_bar("drawing pairs", len(relations) * pairs) as advance:
        make_synthetic(tmp, pairs, seed=seed, size=SIZE, relations=relations, advance=advance)
        removed = avoid(tmp, taken)
        for labels_path in sorted(tmp.glob("*/Group1/labels.json")):
            left = len(json.loads(labels_path.read_text(encoding="utf-8")))
            if left < 2:
                raise RelationError(f"composition '{labels_path.parent.parent.name}' keeps {left} of {pairs} pairs "
                                    "once those equal to a test image are removed (the same --seed as that "
                                    "folder's?); choose another --seed")  # fmt: skip
    return len(relations), removed


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    write = sub.add_parser("make", help="write every composition as a Relation252K folder", formatter_class=defaults)
    write.add_argument("root", type=Path, help="a new folder for <a+b>/Group1/ (labels.json, before|after PNGs)")
    write.add_argument("--pairs", type=positive_int, default=90, help="pairs per composition")
    write.add_argument("--seed", type=non_negative_int, default=11, help="seed of the scenes (the demo's data use 0)")
    write.add_argument("--avoid", type=Path, help="a prepared folder whose test images no pair may equal")
    sub.add_parser("held", help="print relation prepare's --unseen-task flags of the held-out compositions")
    rate = sub.add_parser("score", help="per composition: composed, or one relation alone?", formatter_class=defaults)
    rate.add_argument("data", type=Path, help="the folder relation prepare wrote (its test_<split>.jsonl)")
    rate.add_argument("run", type=Path, help="relation eval's output_dir for that test_<split>.jsonl")
    rate.add_argument("--split", choices=("unseen", "seen"), default="unseen",
                      help="held-out compositions, or new scenes of the trained ones")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (RelationError, OSError, ValueError, KeyError) as e:  # a missing or foreign folder: one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # make's temporary folder is already gone
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def run(args: argparse.Namespace) -> None:
    """The subcommand of ``args`` (``make``, ``held`` or ``score``); prints its result."""
    if args.command == "make":
        taken = test_images(args.avoid) if args.avoid else set()  # read first: a bad --avoid writes nothing
        count, removed = make(args.root, args.pairs, args.seed, taken)
        held = sum(held_out(a, b) for a, b in compositions())
        avoided = f"; {removed} pairs removed as equal to a test image of {args.avoid}" if args.avoid else ""
        print(f"wrote {args.root}: {count} compositions ({held} held out), {args.pairs} pairs each{avoided}")
    elif args.command == "held":
        print(" ".join(f"--unseen-task {name(a, b)}" for a, b in compositions() if held_out(a, b)))
    else:
        (table, scored, total), nearest = score(args.data, args.run, args.split), 0
        for task, m in table.items():
            alone = [v for k, v in m.items() if k.startswith("as ")]
            composed = m["composed"] < min(alone)
            nearest += composed
            print(f"{task:24s} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()) + ("  <- composed" if composed else ""))
        what = "held-out" if args.split == "unseen" else "trained"
        rows = "" if scored == total else f" ({scored} of the {total} rows have outputs: made with --limit?)"
        print(f"{nearest} of {len(table)} {what} compositions: outputs nearer the composed target than either "
              f"relation alone{rows}")

if __name__ == "__main__":
    run_main(main)
