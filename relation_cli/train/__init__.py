"""``relation train``: RelationAdapter + LoRA (or full) training on a frozen FLUX, through accelerate."""

from .loop import train

__all__ = ["train"]
