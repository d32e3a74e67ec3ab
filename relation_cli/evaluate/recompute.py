"""The numbers of a metrics.json, recomputed from the files it names.

    python -m relation_cli.evaluate.recompute runs/eval/metrics.json [--no-encoders]

Pixel metrics (MSE, PSNR, SSIM) come back identical; CLIP-I and DINO too when the same encoders load
(same batches, same order). The aggregates are recomputed from the fresh per-sample values.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .metrics import EMBEDDING, PIXEL, aggregate, score_samples

SAMPLE_KEYS = ("split", "method", "index", "task", "text", "output", "target")


def _diff(a, b) -> float:
    if a is None or b is None:  # null = infinite PSNR (identical images)
        return 0.0 if (a is None or not math.isfinite(a)) and (b is None or not math.isfinite(b)) else math.inf
    return abs(a - b)


def recompute(metrics_json: str | Path, encoders: bool = True) -> dict[str, float]:
    """Largest absolute difference per metric, over samples and aggregate means (0.0: identical)."""
    import torch

    from .encoders import Embedder

    path = Path(metrics_json)
    results = json.loads(path.read_text(encoding="utf-8"))
    saved = results["samples"]
    fresh = [{k: s[k] for k in SAMPLE_KEYS} for s in saved]
    embedders = {}
    for metric in EMBEDDING if encoders else ():
        if saved and metric in saved[0]:
            embedders[metric] = Embedder(metric, results["encoders"][metric], torch.device("cpu"))
    score_samples(fresh, path.parent, embedders, results["batch_size"], max_pixels=10**9)
    metrics = [*PIXEL, *embedders]
    diffs = {m: max((_diff(s.get(m), f.get(m)) for s, f in zip(saved, fresh)), default=0.0) for m in metrics}
    means = {(e["split"], e["method"], e["metric"]): e["mean"] for e in results["aggregate"]}
    for entry in aggregate(fresh):
        key = (entry["split"], entry["method"], entry["metric"])
        if entry["metric"] in diffs:
            diffs[entry["metric"]] = max(diffs[entry["metric"]], _diff(means.get(key), entry["mean"]))
    return diffs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = [a for a in args if not a.startswith("--")]
    if len(files) != 1:
        print("usage: python -m relation_cli.evaluate.recompute METRICS_JSON [--no-encoders]", file=sys.stderr)
        return 2
    from ..progress import quiet_libraries

    quiet_libraries()
    diffs = recompute(files[0], encoders="--no-encoders" not in args)
    for metric, value in diffs.items():
        print(f"{metric}: largest difference {value:.3g}")
    return 0 if all(v <= 1e-6 for v in diffs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
