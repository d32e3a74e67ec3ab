"""Each output against its target at the output's size, and the means per split and method.

Every number comes from files on disk: the saved 8-bit PNG output and the target image, resized to the
output's size with Lanczos when the sizes differ. ``recompute`` repeats it from metrics.json alone.
Implementations are torchmetrics' (MSE, PSNR, SSIM, FID) and transformers' encoders (CLIP-I, DINO).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import open_image
from .encoders import Embedder, to_uint8_batch

PIXEL = ("mse", "psnr", "ssim")
EMBEDDING = ("clip_i", "dino")
JUDGE = ("judge_consistency", "judge_accuracy")
METRICS = PIXEL + EMBEDDING + JUDGE
LOWER_IS_BETTER = {"mse", "fid"}
TARGET_RESIZE = "PIL Image.resize(output size, Image.LANCZOS), only when the target's size differs from the output's"


def implementations() -> dict[str, str]:
    """What computed each metric, with versions: written into metrics.json."""
    import torchmetrics

    tm = f"torchmetrics {torchmetrics.__version__}"
    return {
        "pixels": "output: the saved 8-bit RGB PNG; target: " + TARGET_RESIZE + "; both / 255 as float64",
        "mse": f"{tm} functional.mean_squared_error over all pixels and channels, values in [0, 1]",
        "psnr": f"{tm} functional.image.peak_signal_noise_ratio(data_range=1.0) in dB; null = identical images",
        "ssim": f"{tm} functional.image.structural_similarity_index_measure(data_range=1.0), gaussian 11x11, sigma 1.5",
        "fid": f"{tm} image.fid.FrechetInceptionDistance (torch-fidelity Inception v3, 2048 features), "
        "outputs against targets of one split, uint8 input",
        "std": "sample standard deviation (n - 1); null when n < 2",
    }


def open_pair(output: Path, target: Path, max_pixels: int, where: str = "") -> tuple[Image.Image, Image.Image]:
    """The output and its target at the output's size (see ``TARGET_RESIZE``)."""
    out = open_image(output, f"{where}output", max_pixels)
    ref = open_image(target, f"{where}target", max_pixels)
    if ref.size != out.size:
        ref = ref.resize(out.size, Image.LANCZOS)
    return out, ref


def as_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """``(1, 3, H, W)`` float64 in [0, 1]; 8-bit images are divided by 255, float arrays taken as they are."""
    array = np.asarray(image)
    array = array / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float64))[None]


def pixel_metrics(output: Image.Image | np.ndarray, target: Image.Image | np.ndarray) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of two same-size RGB images (8-bit, or float HxWx3 in [0, 1])."""
    from torchmetrics.functional import mean_squared_error
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    o, t = as_tensor(output), as_tensor(target)
    if o.shape != t.shape:
        raise ValueError(f"output {tuple(o.shape)} and target {tuple(t.shape)} differ in size")
    return {
        "mse": float(mean_squared_error(o, t)),
        "psnr": float(peak_signal_noise_ratio(o, t, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(o, t, data_range=1.0)),
    }


def score_samples(
    samples: list[dict], root: Path, embedders: dict[str, Embedder], batch_size: int, max_pixels: int, advance=None
) -> None:
    """Fill each sample's metrics in place; paths are relative to ``root`` (or absolute). Batches keep memory flat."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        pairs = [open_pair(root / s["output"], root / s["target"], max_pixels, _where(s)) for s in chunk]
        for sample, (out, ref) in zip(chunk, pairs):
            sample.update(pixel_metrics(out, ref))
        for metric, embedder in embedders.items():
            cosine = (embedder.embed([o for o, _ in pairs]) * embedder.embed([r for _, r in pairs])).sum(-1)
            for sample, value in zip(chunk, cosine.tolist()):
                sample[metric] = value
        if advance is not None:
            advance(len(chunk))


def _where(sample: dict) -> str:
    return f"{sample['split']} {sample['method']} row {sample['index'] + 1} "


def fid_scores(samples: list[dict], root: Path, fid, max_pixels: int) -> list[dict]:
    """FID of each method's outputs against the split's targets; ``fid`` keeps the real statistics per split."""
    results = []
    by_split: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        by_split[sample["split"]].append(sample)
    for split, group in by_split.items():
        fid.reset_real_features = True
        fid.reset()
        fid.reset_real_features = False
        rows = {s["index"]: s for s in group}  # one target per row, whichever method's output gives its size
        for sample in rows.values():
            _, ref = open_pair(root / sample["output"], root / sample["target"], max_pixels, _where(sample))
            fid.update(to_uint8_batch(ref), real=True)
        for method in dict.fromkeys(s["method"] for s in group):
            outputs = [s for s in group if s["method"] == method]
            entry = {"split": split, "method": method, "n": len(outputs), "fid": None}
            if len(outputs) < 2 or len(rows) < 2:
                entry["note"] = "FID needs at least 2 images on each side"
            else:
                for sample in outputs:
                    fid.update(
                        to_uint8_batch(open_image(root / sample["output"], _where(sample), max_pixels)), real=False
                    )
                entry["fid"] = float(fid.compute())
            fid.reset()  # drops the outputs' statistics, keeps the targets'
            results.append(entry)
    return results


def aggregate(samples: list[dict], by: tuple[str, ...] = ("split", "method")) -> list[dict]:
    """Mean, sample std and n of every metric per group; infinite PSNRs are counted, not averaged."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for sample in samples:
        groups[tuple(sample[k] for k in by)].append(sample)
    out = []
    for key, group in groups.items():
        for metric in METRICS:
            values = [s[metric] for s in group if s.get(metric) is not None]
            if not values:
                continue
            finite = [v for v in values if math.isfinite(v)]
            entry = dict(zip(by, key), metric=metric, n=len(finite))
            entry["mean"] = statistics.fmean(finite) if finite else None
            entry["std"] = statistics.stdev(finite) if len(finite) > 1 else None
            if len(finite) < len(values):
                entry["n_infinite"] = len(values) - len(finite)
            out.append(entry)
    return out
