"""FLUX.1-dev's real widths on CPU (1 double + 1 single block, 1-layer encoders): infer, train, memory estimate.

The model has the released widths: 3072 hidden, 24 heads of 128 (rope axes 16, 56, 56), joint 4096, pooled
768 (CLIP 768), T5 4096 (64 heads of 64, feed-forward 10240), SigLIP 1152 (MLP 4304). The adapter keeps 4
exemplar tokens instead of the released 128: the released 128 x 4096 projection alone is 1.2B parameters,
too much for a test on a shared 24 GB machine. Everything else of the adapter has the released widths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from helpers import analogy_dataset, random_image
from PIL import Image

from relation_cli.cli import main

pytestmark = pytest.mark.slow

TEXT = "infer.max_sequence_length=32"  # T5 tokens: the width is what this file tests, not the prompt length


def full_width_spec():
    """FLUX.1-dev's widths at 1 + 1 blocks and 1-layer encoders, a small VAE, 4 exemplar tokens."""
    from relation_cli.tiny import ArchSpec

    return ArchSpec(
        num_layers=1, num_single_layers=1, num_attention_heads=24, attention_head_dim=128,
        joint_attention_dim=4096, axes_dims_rope=(16, 56, 56), text_hidden=768, text_layers=1, t5_layers=1,
        t5_heads=64, t5_head_dim=64, t5_ff=10240, siglip_hidden=1152, siglip_layers=1, siglip_heads=16,
        siglip_image_size=64, siglip_patch_size=16, siglip_intermediate=4304, num_tokens=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """The model's folder (3.3 GB on disk), deleted when this file's tests end."""
    from relation_cli.tiny import init_model

    folder = tmp_path_factory.mktemp("wide")
    yield init_model(folder / "model", full_width_spec())
    shutil.rmtree(folder, ignore_errors=True)


def model_args(model) -> list[str]:
    return ["--model", str(model / "base"), "--image-encoder", str(model / "image_encoder")]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_infer_at_full_widths(wide_model, dtype, tmp_path):
    a, b, q = (random_image(tmp_path / f"{n}.png", (256, 256), seed=i) for i, n in enumerate("abq"))
    out = tmp_path / "out.png"
    args = ["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(out), "--steps", "1",
            "--width", "256", "--height", "256", "--adapter", str(wide_model / "adapter"),
            "--set", f"model.dtype={dtype}", "--set", TEXT] + model_args(wide_model)  # fmt: skip
    assert main(args) == 0
    pixels = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (256, 256, 3) and np.isfinite(pixels).all() and pixels.std() > 0


def train_args(model, data, out) -> list[str]:
    """One LoRA step at rank 128 on the paper's targets (the config default) + a new adapter, 256x256."""
    sets = [f"model.base={model / 'base'}", f"model.image_encoder={model / 'image_encoder'}", f"train.data={data}",
            f"train.output_dir={out}", "train.steps=1", "train.mode=lora", "lora.rank=128", "train.validation_samples=0",
            "data.resolution=256", "adapter.num_tokens=4", TEXT]  # fmt: skip
    return ["train"] + [x for s in sets for x in ("--set", s)]


def fresh_process(code: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RELATION_NO_PROGRESS="1")
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


TRAIN_THEN_PEAK = """
import sys
from relation_cli.cli import main
code = main(sys.argv[1:])
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


def test_training_step_peak_matches_the_dry_run_estimate(wide_model, tmp_path):
    """``relation train --dry-run``'s estimate vs the peak RSS (VmHWM) of the step it estimates: within 20%."""
    data = analogy_dataset(tmp_path / "data", pairs=2, size=(256, 256))
    args = train_args(wide_model, data, tmp_path / "run")
    dry = fresh_process("import sys; from relation_cli.cli import main; sys.exit(main(sys.argv[1:]))", *args, "--dry-run")
    estimate = float(re.search(r"memory estimate per process: ([\d.]+) GiB", dry).group(1)) * 1024**3
    assert "lora 16.5M" in dry  # rank 128 on the 12 paper targets of 1 + 1 blocks at width 3072
    out = fresh_process(TRAIN_THEN_PEAK, *args)
    peak = int(out.strip().splitlines()[-1]) * 1024
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "run" / "adapter" / "config.json").is_file()
    print(f"estimate {estimate / 1024**3:.2f} GiB, measured peak RSS {peak / 1024**3:.2f} GiB")
    assert abs(estimate - peak) <= 0.2 * peak
