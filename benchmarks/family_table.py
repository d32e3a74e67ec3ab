"""Per-family MSE from ``relation eval``'s per_task.csv files of a relation-families run (issue 18).

Task names of ``data.synthetic_families`` start with their family (``<family>-<role>-<n>``); each cell is
the mean MSE over a family's rows of one split and method (per-task means weighted by their n).

    python benchmarks/family_table.py LABEL=build/families/eval/per_task.csv [LABEL=...]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

from _args import Parser, run_main

Key = tuple[str, str, str]  # split, family, method


def family_means(path: Path) -> dict[Key, float]:
    """(split, family, method) -> n-weighted mean MSE of the per_task.csv at ``path``.

    Raises ValueError naming ``path`` when it cannot be read or is not a per_task.csv (columns split, task,
    method, n, mse)."""
    sums: dict[Key, list[float]] = defaultdict(lambda: [0.0, 0.0])
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["split"], row["task"].split("-")[0], row["method"])
                mse, n = float(row["mse"]), int(row["n"])
                if n < 1 or not math.isfinite(mse):
                    raise ValueError
                sums[key][0] += mse * n
                sums[key][1] += n
    except OSError as e:
        raise ValueError(f"'{path}': {e.strerror or e}; give the per_task.csv that relation eval wrote") from None
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error):
        raise ValueError(f"'{path}': not a per_task.csv of relation eval (columns split, task, method, n >= 1, "
                         "a finite mse)") from None  # fmt: skip
    if not sums:
        raise ValueError(f"'{path}': no rows; give the per_task.csv of a relation eval that scored outputs")
    return {k: total / n for k, (total, n) in sums.items()}


def table(runs: dict[str, dict[Key, float]]) -> list[str]:
    """Markdown lines: one row per (split, family), one column per (label, method); blank where absent."""
    columns = [(label, m) for label, means in runs.items() for m in sorted({k[2] for k in means})]
    rows = sorted({k[:2] for means in runs.values() for k in means})
    lines = ["| split | family | " + " | ".join(f"{label} {m}" for label, m in columns) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(columns))
    for split, family in rows:
        cells = [runs[label].get((split, family, m)) for label, m in columns]
        lines.append(f"| {split} | {family} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return lines


def labelled(text: str) -> tuple[str, Path]:
    """``LABEL=per_task.csv`` -> (label, path); argparse's type (its error is a usage error)."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"'{text}' is not LABEL=per_task.csv (a label, '=', a path)")
    return label, Path(path)


def main(argv: list[str]) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=labelled, metavar="LABEL=per_task.csv",
                        help="a column label and the per_task.csv of relation eval (each label once)")  # fmt: skip
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.runs]
    if len(set(labels)) < len(labels):
        parser.error(f"label '{next(x for x in labels if labels.count(x) > 1)}' given twice; each LABEL once")
    try:
        runs = {label: family_means(path) for label, path in args.runs}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(table(runs)))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
