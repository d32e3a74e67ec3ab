"""The numbers of a metrics.json, recomputed from the files it names.

    relation eval --recompute runs/eval/metrics.json [--no-encoders]

Pixel metrics (MSE, PSNR, SSIM) come back identical; CLIP-I and DINO too when the same encoders load
(same batches, same order). The aggregates are recomputed from the fresh per-sample values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import RelationError
from ..rows import json_problem

SAMPLE_KEYS = ("split", "method", "index", "task", "text", "output", "target")
RESULT_KEYS = ("samples", "aggregate", "encoders", "batch_size")
AGGREGATE_KEYS = ("split", "method", "metric", "mean")
PATHS = ("output", "target")
TOLERANCE = 1e-6  # largest difference that still counts as the same number


def _diff(a, b) -> float:
    if a is None or b is None:  # null = infinite PSNR (identical images)
        return 0.0 if (a is None or not math.isfinite(a)) and (b is None or not math.isfinite(b)) else math.inf
    return abs(a - b)


def metrics_file(path: Path) -> Path:
    """``path``, or the metrics.json inside it when it is an eval output folder."""
    return path / "metrics.json" if path.is_dir() and (path / "metrics.json").is_file() else path


def read_results(path: Path) -> dict:
    """A metrics.json written by ``relation eval``; RelationError when it is missing or not one."""
    if path.is_dir():
        raise RelationError(f"'{path}': no metrics.json in this folder (give a relation eval output folder or its "
                            "metrics.json)")  # fmt: skip
    if not path.is_file():
        raise RelationError(f"'{path}': file not found (the metrics.json of a relation eval output folder)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RelationError(f"'{path}': not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:  # a whole document: the line too (a .jsonl given by mistake: line 1, column N)
        raise RelationError(f"'{path}': malformed JSON ({e.msg}, line {e.lineno}, column {e.colno}); a metrics.json "
                            "is one JSON document") from None  # fmt: skip
    except (ValueError, RecursionError) as e:
        raise RelationError(f"'{path}': malformed JSON ({json_problem(e)})") from None
    problem = _problem(results)
    if problem:
        raise RelationError(f"'{path}': not a metrics.json of relation eval ({problem})")
    return results


def _problem(results) -> str | None:
    """What keeps ``results`` from being recomputed, or None."""
    missing = [k for k in RESULT_KEYS if not isinstance(results, dict) or k not in results]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(results["samples"], list) or not isinstance(results["aggregate"], list):
        return "samples and aggregate must be lists"
    if not isinstance(results["batch_size"], int) or results["batch_size"] < 1:
        return "batch_size must be a positive integer"
    if not results["samples"]:
        return "no samples to recompute"
    for i, s in enumerate(results["samples"]):
        if not isinstance(s, dict) or set(SAMPLE_KEYS) - s.keys() or not all(isinstance(s[k], str) for k in PATHS):
            return f"sample {i + 1} needs {', '.join(SAMPLE_KEYS)}, with output and target as strings"
        if not _is_int(s["index"]) or not all(_is_number(s[m]) for m in NUMBERS if m in s):
            return f"sample {i + 1}: index must be an integer and {', '.join(NUMBERS)} numbers"
    if not all(isinstance(e, dict) and set(AGGREGATE_KEYS) <= e.keys() and _is_number(e["mean"]) for e in results["aggregate"]):
        return f"every aggregate entry needs {', '.join(AGGREGATE_KEYS)}, with mean a number"
    return None


NUMBERS = ("mse", "psnr", "ssim", "clip_i", "dino")  # null: PSNR of identical images, a skipped metric


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _embedders(results: dict, encoders: bool) -> dict:
    """The CLIP/DINO embedders of the saved metrics that have values, on CPU (none without ``encoders``)."""
    import torch

    from .encoders import Embedder, MetricUnavailable
    from .metrics import EMBEDDING

    saved, embedders = results["samples"], {}
    for metric in EMBEDDING if encoders else ():
        if saved and metric in saved[0]:
            try:
                embedders[metric] = Embedder(metric, results["encoders"][metric], torch.device("cpu"))
            except MetricUnavailable as e:
                raise RelationError(f"{metric}: {e} (--no-encoders recomputes the pixel metrics only)") from None
    return embedders


def recompute(metrics_json: str | Path, encoders: bool = True) -> dict[str, float]:
    """Largest absolute difference per metric, over samples and aggregate means (0.0: identical).

    Raises RelationError for a missing or malformed metrics.json, an image it names that is missing,
    or (with ``encoders``) an encoder that does not load.
    """
    path = metrics_file(Path(metrics_json))
    results = read_results(path)  # before the metrics (and torch) are imported: a bad file fails fast
    from .metrics import PIXEL, aggregate, score_samples

    saved = results["samples"]
    fresh = [{k: s[k] for k in SAMPLE_KEYS} for s in saved]
    embedders = _embedders(results, encoders)
    score_samples(fresh, path.parent, embedders, results["batch_size"], max_pixels=10**9)
    metrics = [*PIXEL, *embedders]
    diffs = {m: max((_diff(s.get(m), f.get(m)) for s, f in zip(saved, fresh)), default=0.0) for m in metrics}
    means = {(e["split"], e["method"], e["metric"]): e["mean"] for e in results["aggregate"]}
    for entry in aggregate(fresh):
        key = (entry["split"], entry["method"], entry["metric"])
        if entry["metric"] in diffs:
            diffs[entry["metric"]] = max(diffs[entry["metric"]], _diff(means.get(key), entry["mean"]))
    return diffs


def verify(metrics_json: str | Path, encoders: bool = True) -> list[str]:
    """``recompute`` as lines to print, one per metric; RelationError naming every metric whose numbers
    differ by more than ``TOLERANCE``."""
    diffs = recompute(metrics_json, encoders)
    differ = {m: v for m, v in diffs.items() if not v <= TOLERANCE}
    if differ:
        listed = ", ".join(f"{m} by {v:.3g}" for m, v in differ.items())
        raise RelationError(f"'{metrics_json}': recomputed numbers differ ({listed}; tolerance {TOLERANCE:g})")
    return [f"{m}: largest difference {v:.3g}" for m, v in diffs.items()] + [
        f"every number of '{metrics_json}' recomputed within {TOLERANCE:g}"
    ]
