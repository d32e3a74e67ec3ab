"""``benchmarks/gpu_check.py --tiny``: the GPU check's own code at tiny size on the CPU (imports,
arguments, shapes), so that the one prepared GPU run does not fail on a typo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_size(tmp_path, monkeypatch, capsys):
    import gpu_check

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny", "--out", str(out)])
    gpu_check.main()
    rows = json.loads(out.read_text())["results"]
    measured = [r for r in rows if r["kind"] != "ceiling"]
    assert [r for r in measured if "error" in r] == []
    assert {r["kind"] for r in measured} == {"inference", "training"}
    assert all(r.get("s_per_image", r.get("s_per_step", 0)) > 0 for r in measured)
    assert "| tiny | inference: default | 64 |" in capsys.readouterr().out


def test_every_base_is_a_full_size_architecture():
    import gpu_check

    spec = gpu_check.BASES["flux1-dev"].spec
    assert (spec.num_layers, spec.num_single_layers, spec.num_attention_heads * spec.attention_head_dim) == (19, 38, 3072)
    assert sum(spec.axes_dims_rope) == spec.attention_head_dim
