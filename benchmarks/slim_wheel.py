"""Drop files from a wheel in place (and from its RECORD): ``make gpu-wheels`` keeps only the
bitsandbytes libraries for the GPU machines' CUDA 13, so that every carried wheel fits the device's
64 MiB working-tree limit (bitsandbytes ships one 20-26 MB library per CUDA/ROCm version: 43 MB zipped).

Usage: ``python benchmarks/slim_wheel.py WHEEL REGEX``, where REGEX matches (``re.search``) the member
names to drop. Prints the wheel's size before and after.
"""

from __future__ import annotations

import re
import sys
import zipfile
import zlib
from pathlib import Path

from _args import Parser, run_main


def slim(wheel: Path, drop: str) -> tuple[int, int]:
    """Rewrite ``wheel`` without the members whose names match ``drop``; returns (bytes before, after).
    The new wheel is written beside it and renamed over it, so a failure leaves the original."""
    pattern, before, tmp = re.compile(drop), wheel.stat().st_size, wheel.with_suffix(".partial")  # a bad regex first
    try:
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if pattern.search(info.filename):
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    rows = data.decode().splitlines()
                    data = "\n".join(r for r in rows if not pattern.search(r.split(",")[0])).encode() + b"\n"
                dst.writestr(info, data)
        tmp.replace(wheel)
    except BaseException:  # a corrupt member, a full disk, Ctrl-C: the wheel as it was, no .partial beside it
        tmp.unlink(missing_ok=True)
        raise
    return before, wheel.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the wheel to rewrite in place")
    parser.add_argument("regex", help="member names to drop (re.search)")
    args = parser.parse_args(argv)
    try:
        old, new = slim(args.wheel, args.regex)
    except re.error as e:  # compiled by slim before the wheel is opened
        parser.error(f"regex {args.regex!r}: {e}")
    except (OSError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError) as e:  # not a readable wheel
        print(f"error: '{args.wheel}': {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    print(f"{args.wheel}: {old / 1e6:.1f} MB -> {new / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    run_main(main)
