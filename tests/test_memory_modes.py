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


def _edit(cfg):
    from relation_cli.infer import EditInputs, edit
    from relation_cli.model import load_pipeline

    a, b, q = _images()
    pipe = load_pipeline(cfg)
    return pipe, edit(pipe, EditInputs(a, b, q, ""), cfg)


def test_fp8_storage_is_the_plain_run_on_rounded_weights(tiny_model):
    """fp8_storage = the plain run with the transformer's stored weights rounded to float8; the adapter's
    processors are never cast."""
    from conftest import tiny_overrides
    from relation_cli.config import load_config

    sets = tiny_overrides(tiny_model) + ["infer.steps=2", "model.device=cpu"]
    fp8, out = _edit(load_config(None, sets + ["model.memory=fp8_storage"]))
    plain_cfg = load_config(None, sets)
    plain, _ = _edit(plain_cfg)
    rounded = dict(plain.transformer.named_parameters())
    for name, p in fp8.transformer.named_parameters():
        if p.dtype == torch.float8_e4m3fn:
            rounded[name].data = p.data.to(torch.float32)
    assert fp8.relation_adapter.processors[0].to_k_ip.weight.dtype == torch.float32
    a, b, q = _images()
    from relation_cli.infer import EditInputs, edit

    assert np.abs(edit(plain, EditInputs(a, b, q, ""), plain_cfg) - out).max() <= 1e-5


# ------------------------------------------------------------------------------------------ on a GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_MODES = ["model_offload", "sequential_offload", "group_offload:leaf_level", "group_offload:block_level",
             "fp8_storage", "quantize:int8", "quantize:fp8"]  # fmt: skip


def _gpu_sets(mode: str) -> list[str]:
    key, _, value = mode.partition(":")
    if key == "quantize":
        return [f"model.quantize={value}"]
    return [f"model.memory={key}"] + ([f"model.offload_type={value}"] if value else [])


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("mode", GPU_MODES)
def test_memory_mode_on_gpu(tiny_model, mode, monkeypatch):
    """Each mode on a CUDA device, float32: offloading equals the plain run (1e-5); fp8_storage and
    torchao equal the plain run on the rounded/quantized transformer within their rounding, and the
    adapter is never cast or quantized.

    Both runs use true float32 convolutions with deterministic algorithms: with cuDNN's default TF32 the
    VAE's result can depend on which algorithm cuDNN picks, and that on the free memory, which offloading
    changes (the suspected cause of the 1.32e-5 of model, sequential and block offload on an H200; not yet
    rerun on a GPU)."""
    from conftest import tiny_overrides
    from relation_cli.config import load_config

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    if mode.startswith("quantize"):
        pytest.importorskip("torchao", reason="model.quantize needs torchao")
    sets = tiny_overrides(tiny_model) + ["infer.steps=2", "model.device=cuda", "model.dtype=float32"]
    plain_pipe, plain = _edit(load_config(None, sets))
    pipe, out = _edit(load_config(None, sets + _gpu_sets(mode)))
    assert type(pipe.relation_adapter.processors[0].to_k_ip.weight) is torch.nn.Parameter
    assert pipe.relation_adapter.processors[0].to_k_ip.weight.dtype == torch.float32
    exact = "offload" in mode
    assert np.abs(out - plain).max() <= (1e-5 if exact else 0.1), _where_it_differs(plain_pipe, pipe)


def _where_it_differs(plain_pipe, pipe) -> str:
    """On a failure: how far apart the two pipelines' exemplar tokens are (SigLIP + projection), and their
    outputs from the same given tokens (text, transformer, VAE), so one run tells which part differs."""
    a, b, _ = _images()
    with torch.inference_mode():
        t_plain = plain_pipe.encode_exemplars([(a, b)], plain_pipe._execution_device)
        t_mode = pipe.encode_exemplars([(a, b)], pipe._execution_device)
    same_tokens = np.abs(_run(plain_pipe, t_plain) - _run(pipe, t_plain)).max()
    return (f"exemplar tokens differ by {(t_plain - t_mode.to(t_plain.device)).abs().max().item():.3g}; "
            f"outputs from the same tokens by {same_tokens:.3g}")
