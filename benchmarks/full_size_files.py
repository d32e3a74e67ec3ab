"""Full-size adapter files on the CPU: ``relation convert`` and loading the converted weights.

Writes a released-format adapter with the exact full-size shapes of RelationAdapter on FLUX.1-dev, in the
authors' pickle layout (``{"image_proj": {"module.proj.0.weight", ...}, "ip_adapter": {"module.0.to_k_ip.weight",
...}}``; 57 processors for 3072-wide attention from 4096-wide tokens; a 1152 -> 2304 -> 128 x 4096 projection;
random bf16, 5.3 GB), then measures, each in its own subprocess: wall time and peak RSS (the process's
``VmHWM`` read at exit, file-backed pages of memory-mapped files included; ``ru_maxrss`` would also
count the parent's memory copied at fork) of

- ``relation convert`` (pickle -> safetensors folder),
- loading the converted folder (``relation_cli.weights.load_adapter``),
- the interpreter with the same libraries imported and nothing loaded (the baseline).

Goals (issue 16): convert peak RSS <= 1.3x the pickle's size; loading <= 1.15x the safetensors' size.
Usage: ``python benchmarks/full_size_files.py --dir /tmp/fullsize [--out results.json]``; the files are
deleted afterwards unless ``--keep``. ``--scale N`` divides the widths by N (tests use it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _args import Parser, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
# RelationAdapter on FLUX.1-dev: SigLIP so400m width, T5/joint width, tokens per image, 19 + 38 layers, 24 x 128
FULL = {"image_embed_dim": 1152, "cross_attention_dim": 4096, "num_tokens": 128, "num_layers": 57, "hidden_size": 3072}
CONVERT = "from relation_cli.cli import main; sys.argv = ['relation', 'convert', *args, '--head-dim', '128']; main()"
LOAD = "from relation_cli.weights import load_adapter; load_adapter(args[0], 128)"
BASELINE = "import relation_cli.cli, relation_cli.weights"
# Runs one of the above as the whole process; at exit writes the process's peak RSS (KiB) to argv[1].
WRAP = """
import atexit, sys
def report():
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
    open(out, "w").write(hwm)
out, code, args = sys.argv[1], sys.argv[2], sys.argv[3:]
atexit.register(report)
exec(code)
"""


def shapes(scale: int = 1) -> dict[str, int]:
    """The full-size widths divided by ``scale`` (tokens and layers kept)."""
    s = dict(FULL)
    for k in ("image_embed_dim", "cross_attention_dim", "hidden_size"):
        s[k] //= scale
    return s


def released_state(s: dict[str, int], seed: int = 0) -> dict:
    """Random bf16 weights in the authors' layout and key names (``module.`` prefixes included)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):  # random bits with the top exponent bit cleared: finite bf16 values in (-2, 2)
        bits = torch.randint(-(2**15), 2**15, shape, generator=g, dtype=torch.int16)
        return (bits & 0x3FFF | bits & -(2**15)).view(torch.bfloat16)

    d, c, t, h = s["image_embed_dim"], s["cross_attention_dim"], s["num_tokens"], s["hidden_size"]
    proj = {
        "module.proj.0.weight": rand(2 * d, d), "module.proj.0.bias": rand(2 * d),
        "module.proj.2.weight": rand(t * c, 2 * d), "module.proj.2.bias": rand(t * c),
        "module.norm.weight": rand(c), "module.norm.bias": rand(c),
    }  # fmt: skip
    procs = {f"module.{i}.{n}.weight": rand(h, c) for i in range(s["num_layers"]) for n in ("to_k_ip", "to_v_ip")}
    return {"image_proj": proj, "ip_adapter": procs}


def write_released(path: Path, s: dict[str, int]) -> int:
    """Write the pickle with ``torch.save``; returns its size in bytes."""
    torch.save(released_state(s), path)
    return path.stat().st_size


def measure(code: str, *args: str) -> tuple[float, int]:
    """Run ``code`` as a whole Python process in the repository; (wall seconds, its peak RSS in bytes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    report = Path(tempfile.mkstemp(suffix=".hwm")[1])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAP, str(report), code, *args], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {code} {' '.join(args)}")
    peak = int(report.read_text()) * 1024  # KiB
    report.unlink()
    return wall, peak


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def run(work: Path, scale: int = 1) -> dict:
    """Write, convert, load; every figure of the README's table."""
    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / "ip_adapter-full.bin", work / "converted"
    shutil.rmtree(dst, ignore_errors=True)
    s = shapes(scale)
    t0 = time.perf_counter()
    pickle_bytes = write_released(src, s)
    write_s = time.perf_counter() - t0
    base_s, base_rss = measure(BASELINE)
    conv_s, conv_rss = measure(CONVERT, str(src), str(dst))
    st_bytes = folder_bytes(dst)
    load_s, load_rss = measure(LOAD, str(dst))
    return {
        "shapes": s, "pickle_bytes": pickle_bytes, "safetensors_bytes": st_bytes, "write_s": write_s,
        "baseline": {"s": base_s, "peak_rss": base_rss},
        "convert": {"s": conv_s, "peak_rss": conv_rss, "ratio": conv_rss / pickle_bytes,
                    "ratio_above_baseline": (conv_rss - base_rss) / pickle_bytes},
        "load": {"s": load_s, "peak_rss": load_rss, "ratio": load_rss / st_bytes,
                 "ratio_above_baseline": (load_rss - base_rss) / st_bytes},
    }  # fmt: skip


def table(r: dict) -> str:
    rows = [
        "| step | wall | peak RSS | / file size | above the baseline / file size | goal |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| interpreter + libraries (baseline) | {r['baseline']['s']:.1f} s | {r['baseline']['peak_rss'] / GB:.2f} GB | | | |",
    ]
    for step, goal, size in (("convert", 1.3, "pickle"), ("load", 1.15, "safetensors")):
        m = r[step]
        rows.append(
            f"| {step} ({size} {r[size + '_bytes'] / GB:.2f} GB) | {m['s']:.1f} s | {m['peak_rss'] / GB:.2f} GB"
            f" | {m['ratio']:.2f} | {m['ratio_above_baseline']:.2f} | <= {goal} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/relation-fullsize"), help="work folder (5.3 GB + 5.3 GB)")
    parser.add_argument("--scale", type=positive_int, default=1, help="divide the widths by this (1: full size)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    args = parser.parse_args()
    try:
        result = run(args.dir, args.scale)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
