"""Memory guard for adapter files: converting and loading add no second copy of the weights.

A scaled-down released-format file (the full-size layout and key names, widths / 4, 0.33 GB) is converted
and loaded, each in its own subprocess, which reports how far its resident memory grew during the step (Linux's
VmHWM, reset through /proc/self/clear_refs after the imports). benchmarks/full_size_files.py gives the
full-size figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS = """
import sys
from relation_cli.weights import convert_released, load_adapter

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

def grown(step):
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
    start = status("VmRSS")
    kept = step()
    return status("VmHWM") - start

step, src, dst = sys.argv[1:4]
print(grown(lambda: convert_released(src, dst) if step == "convert" else load_adapter(dst, 128)))
"""


def _grown(step: str, src: Path, dst: Path) -> int:
    """Bytes the resident memory of a fresh process grew by during ``step`` (each step in its own process:
    memory a previous step freed would be reused unseen)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", STEPS, step, str(src), str(dst)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_convert_and_load_add_no_second_copy(tmp_path):
    from full_size_files import folder_bytes, shapes, write_released

    src, dst = tmp_path / "ip_adapter.bin", tmp_path / "out"
    size = write_released(src, shapes(scale=4))
    assert _grown("convert", src, dst) <= 1.3 * size
    assert _grown("load", src, dst) <= 1.15 * folder_bytes(dst)
