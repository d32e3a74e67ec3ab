"""Every metric against a value checked by hand, on small known images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from eval_helpers import ChannelMeans, tiny_encoders
from relation_cli.evaluate.encoders import Embedder, build_fid, to_uint8_batch
from relation_cli.evaluate.metrics import aggregate, open_pair, pixel_metrics
from relation_cli.config import EvalSection


def gray(value: float, size=(24, 32)) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, dtype=np.float64)


def test_identical_images():
    image = np.random.default_rng(0).random((32, 24, 3))
    m = pixel_metrics(image, image)
    assert m["mse"] == 0.0 and m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_known_shift():
    # +0.1 everywhere: MSE = 0.1^2 = 0.01, PSNR = 10 log10(1 / 0.01) = 20 dB.
    base = np.random.default_rng(1).random((32, 32, 3)) * 0.8
    m = pixel_metrics(base + 0.1, base)
    assert m["mse"] == pytest.approx(0.01, abs=1e-15)
    assert m["psnr"] == pytest.approx(20.0, abs=1e-5)  # torchmetrics takes the log in float32


def test_ssim_of_flat_images_is_the_luminance_term():
    # Flat images have no variance, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 1)^2.
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)  # 0.983634...
    assert pixel_metrics(gray(0.5), gray(0.6))["ssim"] == pytest.approx(expected, abs=1e-9)


def test_known_noise_level():
    # Gaussian noise of sigma 0.05 on mid-gray (no clipping at 4 sigma): MSE ~ sigma^2 = 0.0025, PSNR ~ 26.02 dB.
    rng = np.random.default_rng(2)
    clean = gray(0.5, (64, 64))
    m = pixel_metrics(clean + rng.normal(0, 0.05, clean.shape), clean)
    assert m["mse"] == pytest.approx(0.0025, rel=0.05)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / 0.0025), abs=0.25)


def test_8bit_images_are_divided_by_255():
    a = Image.fromarray(np.full((16, 16, 3), 100, np.uint8))
    b = Image.fromarray(np.full((16, 16, 3), 110, np.uint8))
    assert pixel_metrics(a, b)["mse"] == pytest.approx((10 / 255) ** 2, abs=1e-15)


def test_sizes_must_match():
    with pytest.raises(ValueError, match="differ in size"):
        pixel_metrics(gray(0.5, (16, 16)), gray(0.5, (32, 16)))


def test_target_is_resized_to_the_output(tmp_path):
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "out.png")
    Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(tmp_path / "target.png")
    out, ref = open_pair(tmp_path / "out.png", tmp_path / "target.png", 10**6)
    assert out.size == ref.size == (48, 32)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    return tiny_encoders(tmp_path_factory.mktemp("encoders"))


@pytest.mark.parametrize("metric", ["clip_i", "dino"])
def test_embedding_similarity(encoders, metric):
    source = encoders[0] if metric == "clip_i" else encoders[1]
    embedder = Embedder(metric, str(source), torch.device("cpu"))
    rng = np.random.default_rng(3)
    x, y = (Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2))
    ex, ey = embedder.embed([x, x]), embedder.embed([y])
    assert torch.allclose(ex.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert float((ex[0] * ex[1]).sum()) == pytest.approx(1.0, abs=1e-6)  # identical images: cosine 1
    # By hand: the cosine of the raw model outputs (CLIP image_embeds / DINO CLS token).
    pixels = embedder.processor(images=[x, y], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = embedder.model(pixel_values=pixels)
    raw = out.image_embeds if metric == "clip_i" else out.last_hidden_state[:, 0]
    by_hand = torch.nn.functional.cosine_similarity(raw[0], raw[1], dim=0)
    assert float((ex[0] * ey[0]).sum()) == pytest.approx(float(by_hand), abs=1e-6)


def test_fid_by_hand():
    # Same spread, means 10 gray levels apart in every feature: FID = |mu1 - mu2|^2 = 3 * 10^2 = 300.
    fid = build_fid(EvalSection(), ChannelMeans())
    levels = [40, 70, 90, 130, 200]
    for v in levels:
        fid.update(to_uint8_batch(Image.new("RGB", (16, 16), (v, v, v))), real=True)
        fid.update(to_uint8_batch(Image.new("RGB", (16, 16), (v + 10,) * 3)), real=False)
    assert float(fid.compute()) == pytest.approx(300.0, rel=1e-6)
    fid.reset()  # keeps the real statistics: identical sets give 0
    for v in levels:
        fid.update(to_uint8_batch(Image.new("RGB", (16, 16), (v, v, v))), real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-6)


def test_aggregate_mean_std_n_and_infinite_psnr():
    samples = [
        {"split": "seen", "method": "relation", "mse": 0.01, "psnr": 20.0},
        {"split": "seen", "method": "relation", "mse": 0.03, "psnr": math.inf},
        {"split": "seen", "method": "copy_query", "mse": 0.04, "psnr": 14.0},
    ]
    rows = {(e["method"], e["metric"]): e for e in aggregate(samples)}
    assert rows[("relation", "mse")]["mean"] == pytest.approx(0.02)
    assert rows[("relation", "mse")]["std"] == pytest.approx(math.sqrt(2) * 0.01)  # sample std (n - 1)
    assert rows[("relation", "psnr")] | {} == {
        "split": "seen",
        "method": "relation",
        "metric": "psnr",
        "n": 1,
        "mean": 20.0,
        "std": None,
        "n_infinite": 1,
    }
    assert rows[("copy_query", "mse")]["std"] is None and rows[("copy_query", "mse")]["n"] == 1


def test_fid_without_torch_fidelity_is_unavailable(monkeypatch):
    import importlib.util

    from relation_cli.evaluate.encoders import MetricUnavailable

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else real(name, *a))
    with pytest.raises(MetricUnavailable, match="torch-fidelity is not installed"):
        build_fid(EvalSection())
    assert build_fid(EvalSection(), feature=ChannelMeans()) is not None  # a given network needs no torch-fidelity
