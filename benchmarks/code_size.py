"""Function and module sizes of a package: median function length, functions over 60 lines, module lengths.

    python benchmarks/code_size.py [relation_cli]
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from ``def`` to the last line) of every function and method in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((f"{path}:{node.name}", node.end_lineno - node.lineno + 1))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "relation_cli")
    files = sorted(p for p in root.rglob("*.py"))
    sizes = [f for p in files for f in functions(p)]
    lengths = [n for _, n in sizes]
    long = sorted((n, name) for name, n in sizes if n > 60)
    modules = sorted((len(p.read_text(encoding="utf-8").splitlines()), str(p)) for p in files)
    print(f"files {len(files)}, functions {len(sizes)}, median function {statistics.median(lengths):g} lines")
    print(f"functions over 60 lines: {len(long)}" + "".join(f"\n  {n:4d} {name}" for n, name in long))
    print("largest modules:" + "".join(f"\n  {n:4d} {name}" for n, name in modules[-5:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
