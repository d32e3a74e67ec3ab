"""Memory modes with the adapter installed: each gives the plain run's output (1e-5).

On the CPU the offloading modes run under stand-ins (tests/offload_standins.py) that make every weight
unusable outside the offloading hooks; the ``gpu`` tests run the same modes on a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from offload_standins import poison_group_offload, poison_model_offload, run_sequential_offload_on_plain_cpu
from relation_cli.runtime import enable_offload
from relation_cli.tiny import build_pipeline

MODES = [
    ("model_offload", "leaf_level"),
    ("sequential_offload", "leaf_level"),
    ("group_offload", "leaf_level"),
    ("group_offload", "block_level"),
]
IDS = ["model", "sequential", "group-leaf", "group-block"]


def _images():
    a = Image.new("RGB", (32, 32), (200, 30, 40))
    b = Image.new("RGB", (32, 32), (30, 60, 220))
    q = Image.radial_gradient("L").resize((48, 32)).convert("RGB")
    return a, b, q


def _run(pipe, relation_tokens=None) -> np.ndarray:
    a, b, q = _images()
    return pipe(
        image=q, exemplars=None if relation_tokens is not None else (a, b), relation_tokens=relation_tokens,
        num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    ).images[0]  # fmt: skip


@pytest.fixture(scope="module")
def plain() -> tuple[np.ndarray, torch.Tensor]:
    pipe = build_pipeline(seed=0)
    tokens = torch.randn(1, 2 * pipe.relation_adapter.config.num_tokens, pipe.transformer.config.joint_attention_dim)
    return _run(pipe), tokens, _run(pipe, tokens)


def _offloaded(monkeypatch, memory: str, offload_type: str):
    if memory == "model_offload":
        poison_model_offload(monkeypatch)
    elif memory == "group_offload":
        poison_group_offload(monkeypatch)
    pipe = build_pipeline(seed=0)
    enable_offload(pipe, memory, torch.device("cpu"), offload_type)
    if memory == "sequential_offload":
        run_sequential_offload_on_plain_cpu(pipe)
    return pipe


@pytest.mark.parametrize("memory, offload_type", MODES, ids=IDS)
def test_offloading_keeps_the_plain_output(monkeypatch, plain, memory, offload_type):
    """Exemplar images, then precomputed tokens (the adapter's projection skipped), then images again."""
    image_out, tokens, token_out = plain
    pipe = _offloaded(monkeypatch, memory, offload_type)
    assert np.abs(_run(pipe) - image_out).max() <= 1e-5
    assert np.abs(_run(pipe, tokens) - token_out).max() <= 1e-5
    assert np.abs(_run(pipe) - image_out).max() <= 1e-5


def _unusable(fn) -> bool:
    try:
        return not torch.isfinite(fn()).all()
    except (NotImplementedError, RuntimeError):  # meta tensors: "Cannot copy out of meta tensor", etc.
        return True


@pytest.mark.parametrize("memory, offload_type", MODES, ids=IDS)
def test_stand_ins_catch_a_use_outside_the_hooks(monkeypatch, memory, offload_type):
    """The stand-ins can fail: the adapter's weights used outside the hooks give NaN or raise."""
    pipe = _offloaded(monkeypatch, memory, offload_type)
    adapter = pipe.relation_adapter
    tokens = torch.randn(1, 4, adapter.config.cross_attention_dim)
    embeds = torch.randn(1, adapter.config.image_embed_dim)
    assert _unusable(lambda: adapter.processors[0].to_k_ip.weight * 1)
    assert _unusable(lambda: adapter.image_proj.proj[2].weight * 1)
    # model and block-level offload move the processors with the transformer (or its block) only
    leaf_hooks = memory == "sequential_offload" or offload_type == "leaf_level" and memory == "group_offload"
    assert _unusable(lambda: adapter.processors[0].key_value(tokens)[0]) is not leaf_hooks
    assert not _unusable(lambda: adapter.encode(embeds, embeds))


@pytest.mark.parametrize("memory, offload_type", [MODES[0], MODES[3]], ids=[IDS[0], IDS[3]])
def test_without_layer_key_values_offloading_breaks(monkeypatch, plain, memory, offload_type):
    """What kv_in_layers is for: keys/values precomputed outside the transformer read offloaded weights
    where whole components or blocks are moved."""
    _, tokens, token_out = plain
    pipe = _offloaded(monkeypatch, memory, offload_type)
    pipe.relation_adapter.kv_in_layers = False
    with pytest.raises((NotImplementedError, RuntimeError, AssertionError)):
        out = _run(pipe, tokens)
        assert np.abs(out - token_out).max() <= 1e-5
