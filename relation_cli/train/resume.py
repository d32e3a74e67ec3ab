"""What ``relation train --resume`` may change: the checkpoint's config against the current one.

Settings that decide which weights exist and their shapes (the mode, the LoRA's rank, alpha and targets,
the adapter's tokens and role embeddings, the base model, the image encoder and whether it trains, the
starting weights) and settings whose state the checkpoint carries on (the seed of its random streams, the
optimizer kind, EMA on or off, the trainable weights' dtype) are refused with one line naming each and both values. Everything else
(steps, learning rate, schedule, warm-up, data, batch size, ...) is honoured from the restored step and
announced; the run's config records each resume in ``train.resumes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import DEMO, RelationConfig, absolute_flat_sources, read_yaml
from ..errors import RelationError
from ..progress import console
from .checkpoint import CONFIG, load_tree

LORA_SHAPE = ("lora.rank", "lora.alpha", "lora.targets", "lora.path", "lora.paths")
ADAPTER_SHAPE = ("adapter.num_tokens", "adapter.role_embeddings", "adapter.path")
SHAPE = ("train.mode", "model.base", "model.image_encoder", "train.train_image_encoder")
STATE = ("train.seed", "train.optimizer", "train.ema", "train.full_bf16")
NOT_SETTINGS = ("train.resumes",)  # the history itself


def continue_config(cfg: RelationConfig, folder: Path, warn=console.print) -> RelationConfig:
    """``cfg`` with this resume added to ``train.resumes``, after the checks above; announces each change.

    Raises :class:`RelationError` for a refused change, and for a checkpoint past ``train.steps``. A checkpoint without ``config.yaml`` (written
    before checkpoints kept one) cannot be compared: a warning says so and ``cfg`` goes on unchanged.
    """
    if not (folder / CONFIG).is_file():
        warn(f"warning: checkpoint '{folder.name}' holds no config.yaml (an older relation wrote it): settings not compared")
        return cfg
    step = int(load_tree(folder, "trainer")["step"])
    if step > cfg.train.steps:
        raise RelationError(f"--resume: checkpoint '{folder}' is at step {step}, past train.steps {cfg.train.steps}; "
                            f"set train.steps above {step} to train on (--set train.steps=N)")  # fmt: skip
    saved_tree = read_yaml(folder / CONFIG)
    before, now = settings(saved_tree), settings(cfg.model_dump(mode="json"))
    loads_adapter = bool(cfg.adapter.path) or cfg.model.base == DEMO  # the demo base brings its adapter
    ignored = NOT_SETTINGS + (("adapter.num_tokens", "adapter.role_embeddings") if loads_adapter else ())  # its own
    changed = {k: [before.get(k), v] for k, v in now.items() if k not in ignored and before.get(k) != v}
    refused = [k for k in changed if k in fixed_settings(cfg)]
    if refused:
        what = "; ".join(f"{k} is {_show(changed[k][0])} in the checkpoint and {_show(changed[k][1])} now" for k in refused)
        raise RelationError(
            f"--resume: {what}: checkpoint '{folder}' cannot continue with another value; set it back, or "
            "start a new run in another train.output_dir"
        )
    for key, (old, new) in changed.items():
        console.print(f"{key} {_show(old)} -> {_show(new)} from step {step}")
    out = cfg.model_copy(deep=True)
    history = (saved_tree.get("train") or {}).get("resumes") or []
    out.train.resumes = [*history, {"step": step, **changed}]
    return out


def settings(tree: dict) -> dict[str, Any]:
    """A config tree as ``{"section.key": value}``, with the values that mean the same made equal: local model
    sources as absolute paths (:func:`~relation_cli.config.absolute_flat_sources`; saved configs hold them so)."""
    flat = {f"{s}.{k}": v for s, values in tree.items() if s != "run" and isinstance(values, dict) for k, v in values.items()}
    flat = absolute_flat_sources(flat)
    if flat.get("lora.alpha") is None:
        flat["lora.alpha"] = flat.get("lora.rank")  # empty alpha is alpha = rank
    flat["train.ema"] = "on" if (flat.get("train.ema_decay") or 0) > 0 else "off"
    return flat


def fixed_settings(cfg: RelationConfig) -> tuple[str, ...]:
    """The settings of this mode that a checkpoint fixes."""
    mode = cfg.train.mode
    return SHAPE + STATE + (LORA_SHAPE if mode == "lora" else ()) + (ADAPTER_SHAPE if mode != "vae" else ())


def _show(value: Any) -> str:
    return "empty" if value is None else str(value)
