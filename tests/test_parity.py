"""The authors' output on the reference fixture, reproduced from the released formats (SPEC 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import reference_overrides
from PIL import Image

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.model import load_pipeline

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def case(reference):
    return json.loads((reference / "case.json").read_text())


@pytest.fixture(scope="module")
def pipe(reference):
    return load_pipeline(load_config(overrides=reference_overrides(reference)))


def _run(pipe, reference, case, scale):
    rgb = [Image.open(reference / case[k]).convert("RGB") for k in ("exemplar_a", "exemplar_b", "query")]
    out = pipe(
        image=rgb[2],
        exemplars=(rgb[0], rgb[1]),
        prompt=case["prompt"],
        num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"],
        relation_scale=scale,
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        max_sequence_length=case["max_sequence_length"],
        output_type="np",
    )
    return out.images[0]


@pytest.mark.parametrize("scale, expected", [(1.0, "expected.npy"), (0.0, "expected_scale0.npy")])
def test_python_api_matches_reference(pipe, reference, case, scale, expected):
    ours = _run(pipe, reference, case, scale)
    ref = np.load(reference / expected)
    assert ours.shape == ref.shape == tuple(case["output_hwc"])
    assert np.abs(ours - ref).max() <= TOLERANCE


def test_intermediates_match(pipe, reference, case):
    """Exemplar tokens, ids and the schedule agree with the recorded official tensors."""
    inter = np.load(reference / "intermediates.npz")
    rgb = [Image.open(reference / case[k]).convert("RGB") for k in ("exemplar_a", "exemplar_b")]
    tokens = pipe.encode_exemplars([(rgb[0], rgb[1])], torch.device("cpu"))
    official = inter["image_emb"]  # (2, T, C): A then A'
    assert np.abs(tokens[0].detach().numpy() - official.reshape(-1, official.shape[-1])).max() < 1e-4
    seen = {}

    def record(_module, _args, kwargs):
        seen.setdefault("ids", kwargs["img_ids"].clone())

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(pipe, reference, case, 1.0)
    finally:
        hook.remove()
    assert np.array_equal(seen["ids"].numpy(), inter["img_ids"])
    assert np.allclose(pipe.scheduler.sigmas.numpy(), inter["scheduler_sigmas"], atol=1e-6)


@pytest.mark.parametrize("scale, expected", [("1.0", "expected.npy"), ("0", "expected_scale0.npy")])
def test_cli_matches_reference(reference, case, tmp_path, scale, expected):
    out = tmp_path / "x.npy"
    code = main([
        "infer",
        "--exemplar", str(reference / case["exemplar_a"]), str(reference / case["exemplar_b"]),
        "--query", str(reference / case["query"]),
        "--prompt", case["prompt"], "--steps", str(case["num_inference_steps"]),
        "--guidance", str(case["guidance_scale"]), "--seed", str(case["seed"]), "--scale", scale,
        "--model", str(reference / "base"), "--image-encoder", str(reference / "image_encoder"),
        "--adapter", str(reference / "ip_adapter.bin"),
        "--lora", str(reference / "lora" / "pytorch_lora_weights.safetensors"),
        "--output", str(out),
    ])  # fmt: skip
    assert code == 0
    assert np.abs(np.load(out) - np.load(reference / expected)).max() <= TOLERANCE
    saved = (tmp_path / "x.npy.yaml").read_text()
    assert "steps: 4" in saved and f"{reference / 'ip_adapter.bin'}" in saved


def test_the_default_working_size_leaves_the_reference_query_as_it_is(pipe, reference, case):
    """``infer.max_area`` (about 1 MP) does not touch the small reference query: the size the model works at
    is the authors' output size, with and without the cap."""
    from relation_cli.infer import edit_sizes

    cfg = load_config(overrides=reference_overrides(reference))
    for infer in (cfg.infer, cfg.infer.model_copy(update={"max_area": None})):
        sizes = edit_sizes(infer, tuple(case["query_size_wh"]), pipe.size_multiple)
        assert sizes.working == sizes.output == (case["output_width"], case["output_height"])
