"""The time budgets of a new user's first hour, measured as whole ``relation`` processes (wall time to exit).

- error latency: bad input (a missing file, a stray word, a value given to a flag, an unwritable output,
  a missing training file, an option error) until the one-line error and exit 1;
- offline: a hub id refused when the hub endpoint drops packets or refuses connections, or under --offline;
- the demo: ``make demo``'s command, the embedded model on the bundled examples;
- photos: a 600x400 and a 12 MP synthetic photo through the embedded default (``--timeout`` caps each run).

Each figure is the median of ``--repeats`` runs; the machine's load average is printed beside them,
since these are wall times. Prints a Markdown table; ``--out`` also writes JSON.

    python benchmarks/first_hour.py [--repeats 3] [--timeout 300] [--out benchmarks/results/first_hour.json]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from _args import Parser, positive_float, positive_int, run_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EDIT = ["--exemplar", EXAMPLES / "exemplar_before.png", EXAMPLES / "exemplar_after.png", "--query", EXAMPLES / "query.png"]


def run(args: list, env: dict | None = None, timeout: float = 600) -> tuple[float, int, str]:
    """Seconds until ``relation ARGS`` exits, its exit status and the last line it printed on stderr."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "relation_cli", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "RELATION_NO_PROGRESS": "1", **(env or {})}, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, -1, f"still running after {timeout:.0f} s (stopped)"
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return time.perf_counter() - start, proc.returncode, lines[-1] if lines else ""


def measure(name: str, args: list, repeats: int, env: dict | None = None, timeout: float = 600) -> dict:
    runs = [run(args, env, timeout) for _ in range(repeats)]
    seconds = statistics.median(r[0] for r in runs)
    row = {"case": name, "seconds": round(seconds, 2), "exit": runs[-1][1], "last_line": runs[-1][2][:140]}
    print(f"  {name}: {seconds:.2f} s (exit {row['exit']}): {row['last_line']}", flush=True)
    return row


def black_hole() -> tuple[socket.socket, str]:
    """An endpoint that accepts connections and never answers (a firewall that drops packets)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A synthetic 'photo': smooth colour gradients plus sensor-like noise, saved as JPEG."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 37.0 + y / 53.0)], axis=-1) * 200 + 30
    rgb += np.random.default_rng(seed).normal(0, 8, rgb.shape)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def error_cases(tmp: Path) -> list[tuple[str, list]]:
    return [
        ("infer: missing exemplar file", ["infer", "--exemplar", tmp / "nope.png", *EDIT[2:]]),
        ("infer: stray word", ["infer", *EDIT, "stray"]),
        ("infer: --overwrite true", ["infer", *EDIT, "--overwrite", "true"]),
        ("infer: output under /proc", ["infer", *EDIT, "-o", "/proc/relation/out.png"]),
        ("infer: --steps 0", ["infer", *EDIT, "--steps", "0"]),
        ("train: missing train.data", ["train", "--data", tmp / "none.jsonl"]),
        ("eval: missing input", ["eval", "--input", tmp / "none.jsonl"]),
    ]


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--timeout", type=positive_float, default=300, help="seconds before a photo run is stopped")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        print("startup:")
        rows["startup"] = [measure("relation --help", ["--help"], args.repeats)]
        print("error latency (time to exit 1):")
        rows["errors"] = [measure(name, case, args.repeats) for name, case in error_cases(tmp)]
        print("offline (a hub id that cannot be reached):")
        hole, url = black_hole()
        hub = ["infer", *EDIT, "-o", tmp / "hub.png", "--model", "acme/flux", "--adapter", ROOT / "relation_cli" / "demo" / "adapter"]
        offline_env = {"HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "0"}
        rows["offline"] = [
            measure("hub drops packets", hub, args.repeats, {**offline_env, "HF_ENDPOINT": url}),
            measure("hub refuses connections", hub, args.repeats, {**offline_env, "HF_ENDPOINT": "http://127.0.0.1:9"}),
            measure("--offline", [*hub, "--offline"], args.repeats, offline_env),
        ]
        hole.close()
        print("the embedded demo model:")
        demo = ["infer", *EDIT, "-o", tmp / "demo.png", "--overwrite"]
        rows["demo"] = [measure("make demo (relation infer on examples/)", demo, args.repeats)]
        for name, size in (("600x400 photo", (600, 400)), ("12 MP photo (4000x3000)", (4000, 3000))):
            query = photo(tmp / f"{size[0]}x{size[1]}.jpg", size)
            case = ["infer", *EDIT[:3], "--query", query, "-o", tmp / f"out-{size[0]}.png", "--overwrite"]
            rows["demo"].append(measure(name, case, 1, timeout=args.timeout))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\n| case | seconds | exit |\n| --- | ---: | ---: |")
    for group in rows.values():
        for row in group:
            print(f"| {row['case']} | {row['seconds']:.2f} | {row['exit']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    run_main(main)
