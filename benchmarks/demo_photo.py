"""The embedded demo model on photo-sized queries: wall time of whole ``relation infer`` processes.

The demo model was trained on 32x32 scenes; with its ``infer.max_area: 1024`` a photo is brought to about
that area and the result goes back to the query's size (``infer.output_size: query``). This script times
``relation infer`` (a fresh process each time, as a user runs it) on the bundled 32x32 example and on
generated photo-like queries (smooth gradients plus noise) of 600x400 and 4000x3000 (12 MP), and prints,
per query: the median and each wall time in seconds, the CPU time of the process, the result's size, and
the resize line relation printed.

    python benchmarks/demo_photo.py [--repeats 3] [--out benchmarks/results/demo_photo.json]
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from _args import Parser, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PHOTOS = {"photo 600x400": (600, 400), "photo 4000x3000 (12 MP)": (4000, 3000)}


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A photo-like JPEG: colour gradients with pixel noise (no model sees it as a flat synthetic scene)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1)
    noise = np.random.default_rng(seed).integers(-20, 20, base.shape)
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def run_infer(query: Path, out: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and stderr of one ``relation infer`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "relation_cli", "infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"),
         str(EXAMPLES / "exemplar_after.png"), "--query", str(query), "-o", str(out), "--overwrite"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "RELATION_NO_PROGRESS": "1"},
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"relation infer failed on {query}:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        queries = {"example 32x32 (make demo)": EXAMPLES / "query.png"}
        queries.update({name: photo(Path(tmp) / f"q{i}.jpg", size) for i, (name, size) in enumerate(PHOTOS.items())})
        for name, query in queries.items():
            out = Path(tmp) / "out.png"
            runs = [run_infer(query, out) for _ in range(args.repeats)]
            walls = [r[0] for r in runs]
            resized = [line for line in runs[0][2].splitlines() if line.startswith("query resized")]
            rows.append({"query": name, "median_s": statistics.median(walls), "wall_s": walls,
                         "cpu_s": statistics.median(r[1] for r in runs), "output_size": Image.open(out).size,
                         "resize_line": resized[0] if resized else ""})  # fmt: skip
            r = rows[-1]
            print(f"{name:28s} median {r['median_s']:5.1f} s  (runs {', '.join(f'{w:.1f}' for w in walls)}; "
                  f"CPU {r['cpu_s']:.1f} s)  output {r['output_size'][0]}x{r['output_size'][1]}  {r['resize_line']}")  # fmt: skip
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the end (other work on the machine inflates wall times)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count(), "load_average": load}, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
