"""``relation eval``: outputs for every test row, the paper's metrics and more, baselines, a visual report.

``evaluate(cfg)`` is the whole command; the modules are its stages: ``plan`` (splits, methods, output
files), ``generate`` (resumable, distributed), ``metrics`` and ``encoders`` (MSE, PSNR, SSIM, CLIP-I,
DINO, FID), ``judge`` (an OpenAI-compatible vision model), ``report`` (metrics.json, per_task.csv,
grids, report.html) and ``recompute`` (the saved numbers, again, from the saved files).
"""

from .run import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
