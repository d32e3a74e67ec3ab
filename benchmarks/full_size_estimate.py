"""``relation train --dry-run``'s memory estimate for full-size FLUX.1-dev, without its files.

The components are built on ``meta`` from the full-size architecture of ``gpu_check.BASES`` (FLUX.1-dev's
widths and depths, SigLIP so400m, the adapter with 128 tokens), then the same arithmetic as
``--dry-run`` (``relation_cli.train.estimate.estimate_parts``) runs on the paper's training config.
Usage: ``python benchmarks/full_size_estimate.py [--config configs/train-flux-dev-paper.yaml] [--set k=v ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _args import Parser, run_main

from relation_cli.progress import quiet_libraries

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train-flux-dev-paper.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    args = parser.parse_args()  # before the imports below: a usage error answers at once
    quiet_libraries()

    from gpu_check import BASES

    from relation_cli.config import load_config
    from relation_cli.errors import RelationError
    from relation_cli.tiny import build_components
    from relation_cli.train.estimate import estimate_parts

    try:
        cfg = load_config(Path(args.config), args.set)
    except RelationError as e:  # a missing config or a bad --set: one line
        raise SystemExit(f"error: {e}") from None
    with torch.device("meta"):
        c = build_components(BASES["flux1-dev"].spec)
    est = estimate_parts(cfg, 0, c["transformer"], c["vae"], c["text_encoder"], c["text_encoder_2"], c["image_encoder"])
    print("\n".join(est.lines()[1:]))


if __name__ == "__main__":
    run_main(main)
