"""The benchmark scripts, run by path (``python benchmarks/infer_speed.py``) or as modules (``python -m
benchmarks.infer_speed``). They import their siblings by plain name (``from _args import Parser``); run by path,
their folder is ``sys.path[0]``, and imported as this package's modules it is put there here."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
