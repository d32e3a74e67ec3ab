"""``relation train``: RelationAdapter + LoRA (or full) training on a frozen FLUX, through accelerate.

recipe (setup -> train -> export) runs a job (job: the RelationAdapter; vae: VAE pre-training), one
optimizer step at a time (step), with checkpoints (checkpoint) that a resume checks (resume).
"""

from .recipe import train

__all__ = ["train"]
