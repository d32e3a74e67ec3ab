"""``relation prepare``: paired edits (Relation252K, a jsonl/json file, or a generated set) -> analogy splits.

    from relation_cli.config import load_config
    from relation_cli.prepare import make_synthetic, prepare

    make_synthetic("data/raw", pairs_per_task=50)              # Relation252K layout, 14 relation tasks
    summary = prepare(load_config(), "data/raw", "data/prepared")

Stages: ``sources`` (read and check entries) -> ``decode`` (open, check, split, write halves in worker
processes) -> ``pairing`` (analogy samples, splits) -> ``build`` (writes everything atomically).
"""

from .build import PrepareSummary, prepare
from .sources import DatasetProblems, Problem
from .synthetic import SUGGESTED_UNSEEN, TASKS, make_synthetic

__all__ = ["SUGGESTED_UNSEEN", "TASKS", "DatasetProblems", "PrepareSummary", "Problem", "make_synthetic", "prepare"]
