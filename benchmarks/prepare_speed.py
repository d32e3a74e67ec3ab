"""Benchmark (not a test): ``relation prepare`` on a 5,000-pair synthetic set against PIL alone.

The reference is the time PIL needs to decode every side-by-side image once and re-encode it as PNG
at the same zlib level, in one process: the work prepare cannot avoid. prepare is timed with one
worker (the like-for-like figure; target: within 2x of PIL) and with the default worker count.

    .venv/bin/python benchmarks/prepare_speed.py [--pairs 5000] [--size 64] [--workdir outputs] [--json FILE]

Everything is written under a temporary folder in ``--workdir``: PIL and prepare then write to the
same file system (file creation speed differs a lot between file systems; on some machines ``/tmp``
is many times slower than the disk the data will live on).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RELATION_NO_PROGRESS", "1")  # timings, not bars

from PIL import Image

from relation_cli.config import load_config
from relation_cli.prepare import TASKS, make_synthetic, prepare
from relation_cli.prepare.decode import default_workers
from _args import Parser, positive_int, run_main


def pil_decode_encode(images: list[Path], out: Path, compress_level: int) -> float:
    out.mkdir()
    start = time.perf_counter()
    for i, path in enumerate(images):
        with Image.open(path) as im:
            im.load()
            im.save(out / f"{i}.png", format="PNG", compress_level=compress_level)
    return time.perf_counter() - start


def time_prepare(raw: Path, out: Path, workers: int) -> float:
    cfg = load_config(None, [f"data.workers={workers}"])
    start = time.perf_counter()
    prepare(cfg, raw, out)
    return time.perf_counter() - start


def main() -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=positive_int, default=5000, help="pairs in all (rounded up to whole tasks)")
    parser.add_argument("--size", type=positive_int, default=64, help="side of each half-image in pixels")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs of each measurement; the fastest counts")
    parser.add_argument("--workdir", type=Path, default=Path("outputs"), help="folder for the temporary files")
    parser.add_argument("--json", type=Path, default=Path("outputs/prepare_speed.json"), help="figures, as JSON")
    args = parser.parse_args()

    per_task = math.ceil(args.pairs / len(TASKS))
    level = load_config().data.png_compress_level
    args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prepare-bench-", dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        raw = make_synthetic(tmp / "raw", per_task, seed=0, size=args.size)
        generate_s = time.perf_counter() - start
        images = sorted(raw.glob("*/Group1/*.png"))
        n = len(images)
        workers = default_workers()
        runs: dict[str, list[float]] = {"pil": [], "one": [], "many": []}
        for r in range(args.repeats):  # interleaved, so a busy moment of the machine hits all three alike
            runs["pil"].append(pil_decode_encode(images, tmp / f"pil{r}", level))
            runs["one"].append(time_prepare(raw, tmp / f"one{r}", workers=1))
            runs["many"].append(time_prepare(raw, tmp / f"many{r}", workers=workers))
        pil_s, one_s, many_s = (min(runs[k]) for k in ("pil", "one", "many"))

    result = {
        "pairs": n,
        "image": f"{2 * args.size}x{args.size}",
        "png_compress_level": level,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "workdir": str(args.workdir),
        "repeats": args.repeats,
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "generate_s": round(generate_s, 3),
        "pil_decode_encode_s": round(pil_s, 3),
        "pil_pairs_per_s": round(n / pil_s, 1),
        "prepare_1_worker_s": round(one_s, 3),
        "prepare_1_worker_pairs_per_s": round(n / one_s, 1),
        "prepare_1_worker_vs_pil": round(one_s / pil_s, 2),
        "default_workers": workers,
        "prepare_default_workers_s": round(many_s, 3),
        "prepare_default_workers_pairs_per_s": round(n / many_s, 1),
        "prepare_default_workers_vs_pil": round(many_s / pil_s, 2),
    }
    print(f"{n} pairs, {result['image']} side-by-side PNGs, zlib level {level}, {os.cpu_count()} CPUs, "
          f"fastest of {args.repeats} runs")  # fmt: skip
    print(f"  PIL decode + re-encode once (1 process): {pil_s:7.2f} s  {n / pil_s:8.1f} pairs/s")
    print(f"  relation prepare, 1 worker:               {one_s:7.2f} s  {n / one_s:8.1f} pairs/s  "
          f"{one_s / pil_s:.2f}x PIL (target <= 2x)")  # fmt: skip
    print(f"  relation prepare, {workers} workers:              {many_s:7.2f} s  {n / many_s:8.1f} pairs/s  "
          f"{many_s / pil_s:.2f}x PIL")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
