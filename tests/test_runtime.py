"""Inference speed/memory options: the exact ones keep the parity output, the others run and say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reference_overrides, tiny_overrides
from relation_cli.config import load_config
from relation_cli.errors import RelationError
from relation_cli.infer import EditInputs, edit
from relation_cli.model import load_pipeline


def _reference_edit(reference, overrides):
    import json

    case = json.loads((reference / "case.json").read_text())
    sets = reference_overrides(reference) + [f"infer.steps={case['num_inference_steps']}", f"infer.prompt={case['prompt']}"]
    cfg = load_config(None, sets + overrides)
    rgb = [Image.open(reference / case[k]).convert("RGB") for k in ("exemplar_a", "exemplar_b", "query")]
    return edit(load_pipeline(cfg), EditInputs(rgb[0], rgb[1], rgb[2], case["prompt"]), cfg)


@pytest.mark.parametrize("overrides", [["model.fuse_qkv=false"], ["model.fuse_qkv=true"], ["model.attention_backend=native"]])
def test_exact_options_keep_parity(reference, overrides):
    assert np.abs(_reference_edit(reference, overrides) - np.load(reference / "expected.npy")).max() <= 1e-4


def test_unfused_kv_recompute_path_matches(reference):
    """The reference-equivalent path (keys/values recomputed every step) gives the same image."""
    import json

    case = json.loads((reference / "case.json").read_text())
    pipe = load_pipeline(load_config(None, reference_overrides(reference)))
    rgb = [Image.open(reference / case[k]).convert("RGB") for k in ("exemplar_a", "exemplar_b", "query")]
    out = pipe(image=rgb[2], exemplars=(rgb[0], rgb[1]), prompt=case["prompt"], num_inference_steps=4,
               generator=torch.Generator("cpu").manual_seed(1000), output_type="np",
               precompute_relation_kv=False).images[0]  # fmt: skip
    assert np.abs(out - np.load(reference / "expected.npy")).max() <= 1e-4


@pytest.mark.parametrize("overrides", [["model.memory=fp8_storage"], ["model.cache=first_block"], ["model.cache=taylorseer"]])
def test_approximate_options_run(tiny_model, overrides):
    cfg = load_config(None, tiny_overrides(tiny_model) + ["infer.steps=4"] + overrides)
    pipe = load_pipeline(cfg)
    q = Image.new("RGB", (48, 32), (20, 200, 40))
    out = edit(pipe, EditInputs(q, q, q, ""), cfg)
    assert out.shape == (32, 48, 3) and np.isfinite(out).all()
    if overrides == ["model.memory=fp8_storage"]:
        adapter = pipe.relation_adapter
        assert adapter.processors[0].to_k_ip.weight.dtype == torch.float32  # the adapter is never cast
        assert pipe.transformer.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("mode", ["model_offload", "group_offload"])
def test_offloading_on_cpu_is_a_clear_error(tiny_model, mode):
    cfg = load_config(None, tiny_overrides(tiny_model) + [f"model.memory={mode}", "model.device=cpu"])
    with pytest.raises(RelationError, match="offloads to a GPU"):
        load_pipeline(cfg)


@pytest.mark.parametrize("value, fused", [("auto", False), ("true", True), ("false", False)])
def test_fuse_qkv_auto_is_off_on_cpu(tiny_model, value, fused):
    cfg = load_config(None, tiny_overrides(tiny_model) + [f"model.fuse_qkv={value}", "model.device=cpu"])
    attn = load_pipeline(cfg).transformer.transformer_blocks[0].attn
    assert bool(getattr(attn, "fused_projections", False)) is fused
