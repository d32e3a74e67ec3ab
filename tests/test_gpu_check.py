"""``benchmarks/gpu_check.py --tiny``: the GPU check's own code at tiny size on the CPU (imports,
arguments, shapes), so that the one prepared GPU run does not fail on a typo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_size(tmp_path, monkeypatch, capsys):
    import gpu_check

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny", "--in-process", "--out", str(out)])
    gpu_check.main()
    rows = json.loads(out.read_text())["results"]
    measured = [r for r in rows if r["kind"] != "ceiling"]
    assert [r for r in measured if "error" in r] == []
    assert {r["kind"] for r in measured} == {"inference", "training"}
    assert all(r.get("s_per_image", r.get("s_per_step", 0)) > 0 for r in measured)
    assert "| tiny | inference: default | 64 |" in capsys.readouterr().out


@pytest.mark.slow
def test_each_entry_runs_in_its_own_process(tmp_path, monkeypatch, capsys):
    """The GPU run's default: each entry in a child process whose last line is its row, so that a CUDA
    fault in one entry (as the H200's first training entry had) cannot end the others; a child that dies
    becomes that row's error, with its stderr's tail."""
    import gpu_check

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny", "--labels", "default", "--out", str(out)])
    gpu_check.main()
    (row,) = [r for r in json.loads(out.read_text())["results"] if r["kind"] != "ceiling"]
    assert row["label"] == "default" and row["s_per_image"] > 0 and row["wall_s"] >= row["s_per_image"]
    args = gpu_check.argparse.Namespace(tiny=True)
    died = gpu_check.measure_isolated(args, "tiny", 999, timeout=120)  # no entry 999: the child raises
    assert died["error"].startswith("child died: IndexError") and died["trace"]


def test_every_base_is_a_full_size_architecture():
    import gpu_check

    spec = gpu_check.BASES["flux1-dev"].spec
    assert (spec.num_layers, spec.num_single_layers, spec.num_attention_heads * spec.attention_head_dim) == (19, 38, 3072)
    assert sum(spec.axes_dims_rope) == spec.attention_head_dim


def test_kontext_entry_measures_with_kontext_query_ids():
    """FLUX.1 Kontext joins the check as FLUX.1-dev's architecture whose query tokens carry first id axis 1,
    in the pipeline and in the training step alike."""
    import gpu_check

    base = gpu_check.BASES["flux1-kontext"]
    assert base.spec == gpu_check.BASES["flux1-dev"].spec and base.query_ids == "kontext"
    tiny = gpu_check.Base("tiny kontext", gpu_check.TINY.spec, sizes=(64,), query_ids="kontext")
    ids = gpu_check._batch(tiny, 64, torch.device("cpu"), torch.float32)["img_ids"]
    target, query = ids.chunk(2)
    assert (target[:, 0] == 0).all() and (query[:, 0] == 1).all() and (query[:, 1:] == target[:, 1:]).all()
    assert gpu_check.build_pipeline(tiny, torch.device("cpu"), torch.float32).query_ids == "kontext"
