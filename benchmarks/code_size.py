"""Function and module sizes of a package: median function length, functions over 60 lines, module lengths.

    python benchmarks/code_size.py [relation_cli]
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path

from _args import Parser, run_main


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to the last line) of every function and method in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((f"{path}:{node.name}", node.end_lineno - node.lineno + 1))
    return out


def main(argv: list[str]) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("relation_cli"), help="a package folder")
    root = parser.parse_args(argv).root
    files = sorted(p for p in root.rglob("*.py"))
    if not files:
        print(f"error: '{root}': " + ("no Python files under it" if root.is_dir() else "no such folder"), file=sys.stderr)
        return 1
    sizes = [f for p in files for f in functions(p)]
    lengths = [n for _, n in sizes]
    long = sorted((n, name) for name, n in sizes if n > 60)
    modules = sorted((len(p.read_text(encoding="utf-8").splitlines()), str(p)) for p in files)
    print(f"files {len(files)}, functions {len(sizes)}, median function {statistics.median(lengths):g} lines")
    print(f"functions over 60 lines: {len(long)}" + "".join(f"\n  {n:4d} {name}" for n, name in long))
    print("largest modules:" + "".join(f"\n  {n:4d} {name}" for n, name in modules[-5:]))
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
