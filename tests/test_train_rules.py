"""Training's shared rules: one device and precision rule, rows read once, LoRA alpha in the exported file,
and the library helpers that replaced hand-written code giving the same numbers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import analogy_dataset, random_image
from safetensors.torch import load_file
from test_train import train_args

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.errors import RelationError
from relation_cli.model import build_process_state, resolve_device, resolve_dtype, resolve_mixed_precision


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return analogy_dataset(tmp_path_factory.mktemp("data"))


def _made(cpu, **kwargs):
    """A stand-in for accelerate's Accelerator / PartialState: what it would be made with."""
    return {"cpu": cpu, "device": os.environ.get("ACCELERATE_TORCH_DEVICE"), **kwargs}


def test_one_device_and_precision_rule_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a 2-GPU machine: cuda:1 exists
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu" and resolve_dtype("auto", cpu) == torch.float32
    assert resolve_mixed_precision("auto", cpu) == "no"  # --device cpu on a GPU machine: float32, not bf16
    assert resolve_device("auto") == torch.device("cuda") and resolve_mixed_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_mixed_precision("fp16", cpu) == "fp16"
    assert build_process_state(_made, "cpu") == {"cpu": True, "device": None}
    assert build_process_state(_made, "cuda:1", mixed_precision="bf16") == {"cpu": False, "device": "cuda:1", "mixed_precision": "bf16"}
    assert "ACCELERATE_TORCH_DEVICE" not in os.environ  # set only while the state is made
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch each process takes its local GPU
    assert build_process_state(_made, "cuda") == {"cpu": False, "device": None}
    with pytest.raises(RelationError, match="each process uses its own GPU"):
        build_process_state(_made, "cuda:1")


def test_training_and_eval_take_the_device_from_the_rule(monkeypatch, tmp_path):
    import accelerate

    from relation_cli.train.recipe import build_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(accelerate, "Accelerator", _made)
    made = build_accelerator(load_config(None, ["model.device=cpu", f"train.output_dir={tmp_path}"]))
    assert made["cpu"] is True and made["mixed_precision"] == "no"
    made = build_accelerator(load_config(None, ["model.device=cuda:1", f"train.output_dir={tmp_path}"]))
    assert made["device"] == "cuda:1" and made["mixed_precision"] == "bf16"

    import relation_cli.evaluate.run as eval_run
    import relation_cli.model as model

    class Made(Exception):
        pass

    def made(factory, device_name, **kwargs):
        raise Made(factory.__name__, device_name)

    monkeypatch.setattr(eval_run, "setup", lambda cfg, out, digests: ([], [], None, set()))
    monkeypatch.setattr(model, "build_process_state", made)
    with pytest.raises(Made) as state:
        eval_run.evaluate(load_config(None, ["model.device=cuda:1", f"eval.output_dir={tmp_path}"]))
    assert state.value.args == ("PartialState", "cuda:1")


def test_cuda_refused_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RelationError, match="CUDA is not available"):
        build_process_state(_made, "cuda:0")


def test_rows_with_null_text_first_and_text_later_train(tiny_model, tmp_path):
    """12,000 rows: the first 10,000 (12 MB: more than the 10 MB block a json reader such as datasets' infers
    the column types from) with "text": null, the rest with text. Read once, no type guessed from the first rows."""
    from relation_cli.train.data import load_rows

    row = json.loads((analogy_dataset(tmp_path / "d")).read_text().splitlines()[0])
    big = tmp_path / "d" / "big.jsonl"
    with open(big, "w") as f:
        for i in range(12_000):
            f.write(json.dumps({**row, "text": None if i < 10_000 else "make it so", "task": "t" * 1100}) + "\n")
    assert big.stat().st_size > 1.1 * 12_000 * 1000
    rows = load_rows(big, 64_000_000)
    assert len(rows) == 12_000 and rows[0].text == "" and rows[-1].text == "make it so"
    out = tmp_path / "run"
    assert main(train_args(tiny_model, big, out, 1, "train.validation_samples=0")) == 0
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_lora_alpha_survives_export_into_plain_diffusers(tiny_model, data, tmp_path):
    """rank 4, alpha 16: diffusers' own loader fuses W + (16/4) B A, computed here by hand."""
    from diffusers import FluxPipeline

    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 1, "lora.alpha=16", "train.validation_samples=0")) == 0
    lora = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    pipe = FluxPipeline.from_pretrained(tiny_model / "base")
    name = "transformer_blocks.0.attn.to_q"
    w = dict(pipe.transformer.named_parameters())[f"{name}.weight"].detach().clone()
    a, b = lora[f"transformer.{name}.lora_A.weight"], lora[f"transformer.{name}.lora_B.weight"]
    assert b.abs().max() > 0  # trained: B moved from its zero start
    pipe.load_lora_weights(out / "lora")
    pipe.fuse_lora()
    fused = dict(pipe.transformer.named_parameters())[f"{name}.base_layer.weight"].detach()
    assert torch.allclose(fused, w + (16 / 4) * b @ a, atol=1e-6)
    assert not torch.allclose(fused, w + b @ a, atol=1e-6)


def test_training_pixels_and_posterior_sample_match_the_hand_written_ones(tmp_path):
    """VaeImageProcessor and DiagonalGaussianDistribution give bit for bit what relation computed by hand."""
    from PIL import Image

    from relation_cli.train.data import to_pixels
    from relation_cli.train.encode import FrozenEncoders

    image = Image.open(random_image(tmp_path / "a.png", (37, 29), seed=3)).convert("RGB")
    for size in [(32, 16), (37, 29)]:
        resized = image if image.size == size else image.resize(size, Image.LANCZOS)
        by_hand = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        assert torch.equal(to_pixels(image, size), by_hand)

    class Config:
        shift_factor, scaling_factor = 0.1, 1.3

    from relation_cli.pipeline import RelationPipeline

    pipe = type("P", (), {"vae": type("V", (), {"config": Config})(), "latent_tokens": RelationPipeline.latent_tokens})()
    enc = FrozenEncoders(pipe, None, {}, "cpu", torch.float32)
    moments = torch.randn(2, 8, 4, 6, generator=torch.Generator().manual_seed(0)) * 3
    mean, logvar = moments.chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    from relation_cli.flux_private import pack_latents

    expected = pack_latents((z - 0.1) * 1.3)
    assert torch.equal(enc.sample_latents(moments, torch.Generator().manual_seed(1)), expected)


def test_training_attention_leaves_out_cudnn(tiny_model, data, tmp_path, monkeypatch):
    """cuDNN's fused attention failed in the backward pass of a full-size training step on an H200
    (benchmarks/results/gpu_check_h200_run1.json); every attention call of a training forward runs with
    it switched off, so that torch picks flash, memory-efficient or math attention instead."""
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def recording(*args, **kwargs):
        if torch.is_grad_enabled():
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    assert main(train_args(tiny_model, data, tmp_path / "run", 1, "train.validation_samples=0")) == 0
    assert seen and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after the step
