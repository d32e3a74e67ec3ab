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
    # every training entry trains what relation train does: the whole adapter (its per-layer processors too,
    # which sit inside the frozen transformer) and the LoRA
    from peft import LoraConfig

    from relation_cli.config import PAPER_LORA_TARGETS

    pipe = gpu_check.build_pipeline(gpu_check.TINY, gpu_check.torch.device("cpu"), gpu_check.torch.float32)
    adapter = sum(p.numel() for p in pipe.relation_adapter.parameters())
    pipe.transformer.add_adapter(LoraConfig(r=128, lora_alpha=128, target_modules=list(PAPER_LORA_TARGETS)))
    lora = sum(p.numel() for n, p in pipe.transformer.named_parameters() if "lora_" in n)
    trained = [r["trainable_m"] for r in measured if r["kind"] == "training" and r["base"] == "tiny"]
    assert trained and trained == [pytest.approx((adapter + lora) / 1e6)] * len(trained)
    dtypes = {r["trainable_dtype"] for r in measured if r["kind"] == "training"}
    assert dtypes == {"torch.float32"}  # --tiny runs in float32; the full bf16 entry in bf16 is the next test
    out = capsys.readouterr().out
    assert "| tiny | inference: default | 64 |" in out
    assert "| tiny klein | inference: default | 64 |" in out and "| tiny klein | training: checkpointing | 64 |" in out


def test_the_full_bf16_training_entry_trains_in_bf16():
    """On a GPU run (bf16) the full bf16 entry's trainable weights are bf16, as ``train.full_bf16`` makes them;
    the others' stay float32. A CPU step in bf16 (no autocast there) at tiny size shows it."""
    import gpu_check

    run = gpu_check.Run(gpu_check.torch.device("cpu"), gpu_check.torch.bfloat16, 100.0)
    row = gpu_check.time_training(run, gpu_check.TINY, "checkpointing + 8-bit Adam + fp8 storage + full bf16", size=64)
    assert row["trainable_dtype"] == "torch.bfloat16" and row["s_per_step"] > 0


@pytest.mark.slow
def test_each_entry_runs_in_its_own_process(tmp_path, monkeypatch, capsys):
    """The GPU run's default: each entry in a child process whose last line is its row, so that a CUDA
    fault in one entry (as the H200's first training entry had) cannot end the others; a child that dies
    becomes that row's error, with its stderr's tail."""
    import gpu_check

    out = tmp_path / "gpu.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--tiny", "--bases", "tiny", "--labels", "default", "--out", str(out)])
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
    pipe = gpu_check.build_pipeline(tiny, torch.device("cpu"), torch.float32)
    assert pipe.query_ids == "kontext"
    ids = gpu_check._batch(pipe, tiny.spec, 64, torch.device("cpu"), torch.float32)["img_ids"]
    target, query = ids.chunk(2)
    assert (target[:, 0] == 0).all() and (query[:, 0] == 1).all() and (query[:, 1:] == target[:, 1:]).all()


def test_the_klein_entry_is_flux2_klein_4b():
    """Built on the meta device (no memory): klein 4B's transformer has 3.9 B parameters, its Qwen3-4B text
    encoder 4.0 B, and the adapter takes klein's widths."""
    import gpu_check
    import torch

    from relation_cli.tiny import build_components

    base = gpu_check.BASES["flux2-klein-4b"]
    assert base.sizes == (512, 1024) and base.steps == 4 and base.call == {"guidance_scale": 1.0}
    with torch.device("meta"):
        parts = build_components(base.spec)
    count = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("transformer", "text_encoder")}
    assert 3.8e9 < count["transformer"] < 4.0e9 and 3.9e9 < count["text_encoder"] < 4.1e9
    c = parts["transformer"].config
    assert (c.num_layers, c.num_single_layers, c.num_attention_heads * c.attention_head_dim, c.joint_attention_dim) == (5, 20, 3072, 7680)
    assert parts["relation_adapter"].config.cross_attention_dim == 7680 and parts["relation_adapter"].config.num_layers == 25


def test_the_goal_entries_then_every_bases_default_path_run_first():
    """One budget for all bases: the first base's entries that the issue's goals are read from run first (speed
    ratios, the lowest-memory inference and training candidates), then each base's default path at every
    size, then the other entries base by base, so a budget that runs out skips neither a goal nor a base."""
    import gpu_check

    args = gpu_check.argparse.Namespace(tiny=False, labels=None, sizes=None)
    order = [(key, gpu_check.entries(base, False)[i][1:3]) for key, base, i in gpu_check.plan(gpu_check.BASES, args)]
    goals = len(gpu_check.GOAL_ENTRIES)
    assert order[:goals] == [("flux1-dev", entry) for entry in gpu_check.GOAL_ENTRIES]
    assert ("flux1-dev", ("checkpointing + 8-bit Adam + fp8 storage", 512)) in order[:goals]
    n = 2 * len(gpu_check.BASES) - 1  # flux1-dev's default at 512 ran among the goals
    assert [label for _, (label, _) in order[goals:goals + n]] == ["default"] * n
    assert {key for key, _ in order[goals:goals + n]} == set(gpu_check.BASES)
    assert "default" not in [label for _, (label, _) in order[goals + n:]]
    assert len(order) == len(set(order))


def test_plan_filters_by_label_and_size():
    """``--labels`` and ``--sizes`` choose the entries a later run measures (the ones an earlier budget
    skipped); the others are not planned at all, not reported as skipped."""
    import gpu_check

    bases = {"tiny": gpu_check.TINY}
    every = gpu_check.plan(bases, gpu_check.argparse.Namespace(tiny=True, labels=None, sizes=None))
    chosen = gpu_check.plan(bases, gpu_check.argparse.Namespace(tiny=True, labels=["default"], sizes=[64]))
    assert len(every) > len(chosen) == 1
    assert gpu_check.plan(bases, gpu_check.argparse.Namespace(tiny=True, labels=None, sizes=[1024])) == []
