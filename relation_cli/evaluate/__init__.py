"""``relation eval``: outputs for every test row, the paper's metrics and more, baselines, a visual report.

``evaluate(cfg)`` is the whole command; the modules are its stages: ``plan`` (splits, methods, output
files), ``generate`` (resumable, distributed), ``metrics`` and ``encoders`` (MSE, PSNR, SSIM, CLIP-I,
DINO, FID), ``judge`` (an OpenAI-compatible vision model), ``report`` (metrics.json, per_task.csv,
grids, report.html) and ``recompute`` (the saved numbers, again, from the saved files).
"""

__all__ = ["EvalResult", "evaluate"]


def __getattr__(name: str):
    """``evaluate`` and ``EvalResult`` load ``run`` (and with it torch) on first use, so ``relation eval
    --recompute`` can refuse a missing file before any heavy import."""
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
