"""Approximate step caching (diffusers' FirstBlockCache, TaylorSeer): speed-up against quality change.

For the first ``--rows`` rows of a run-ready jsonl (default: the demo's held-out seen relations), each
cache setting generates every row; the table gives seconds per image, the speed-up over the exact
run, and the pixel MSE of the output against the exact output and against the target.

    python benchmarks/cache_quality.py --rows 40 --steps 24
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from _args import Parser, positive_int, run_main

SETTINGS = [
    ("exact", []),
    ("first_block 0.05", ["model.cache=first_block", "model.cache_threshold=0.05"]),
    ("first_block 0.2", ["model.cache=first_block", "model.cache_threshold=0.2"]),
    ("taylorseer", ["model.cache=taylorseer"]),
]


def main() -> None:
    from relation_cli.config import load_config
    from relation_cli.infer import edit, open_edit_inputs
    from relation_cli.model import load_pipeline
    from relation_cli.progress import quiet_libraries
    from relation_cli.rows import parse_rows

    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows-file", default="build/demo/data/test_seen.jsonl")
    ap.add_argument("--rows", type=positive_int, default=40)
    ap.add_argument("--steps", type=positive_int, default=24, help="denoising steps (caches need several to act)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--out", default="benchmarks/results/cache_quality.json")
    args = ap.parse_args()
    quiet_libraries()
    rows = parse_rows(args.rows_file, need_target=True)[: args.rows]
    exact, results = None, []
    for name, extra in SETTINGS:
        cfg = load_config(None, [f"infer.steps={args.steps}", *args.overrides, *extra])
        pipe = load_pipeline(cfg)
        outputs, times = [], []
        for r in rows:
            inputs = open_edit_inputs(cfg, (r.cond1, r.cond2), r.source, "")
            start = time.perf_counter()
            outputs.append(edit(pipe, inputs, cfg))
            times.append(time.perf_counter() - start)
        targets = [np.asarray(Image.open(r.target).convert("RGB").resize(o.shape[1::-1]), np.float32) / 255 for r, o in zip(rows, outputs)]
        exact = exact or {"outputs": outputs, "s": statistics.median(times)}
        results.append({
            "setting": name,
            "s_per_image": statistics.median(times),
            "speedup": exact["s"] / statistics.median(times),
            "mse_vs_exact": float(np.mean([np.mean((o - e) ** 2) for o, e in zip(outputs, exact["outputs"])])),
            "mse_vs_target": float(np.mean([np.mean((o - t) ** 2) for o, t in zip(outputs, targets)])),
        })  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": len(rows), "steps": args.steps, "results": results}, indent=1))
    print(f"{len(rows)} rows of {args.rows_file}, {args.steps} steps")
    print(f"{'setting':>18} {'s/image':>8} {'speed-up':>9} {'MSE vs exact':>13} {'MSE vs target':>14}")
    for r in results:
        print(f"{r['setting']:>18} {r['s_per_image']:8.3f} {r['speedup']:9.2f} {r['mse_vs_exact']:13.2e} {r['mse_vs_target']:14.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
