"""What a folder of generated outputs was made with: ``generation.json``, read and written without the ML
stack, so ``relation infer --input --dry-run`` can check a batch folder before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import RelationConfig
from ..errors import RelationError
from ..fs import write_text_atomic

SETTINGS_FILE = "generation.json"


def generation_settings(cfg: RelationConfig, eval_keys: bool = True) -> dict:
    """The config values that change a generated image: outputs made with others must not be reused.

    ``eval_keys=False`` leaves out the eval-only ones (batch ``relation infer``).
    """
    settings = {
        "model.base": cfg.model.base,
        "model.image_encoder": cfg.model.image_encoder,
        "model.dtype": cfg.model.dtype,
        "adapter.path": cfg.adapter.path,
        "adapter.scale": cfg.adapter.scale,
        "lora.paths": [f.model_dump() for f in cfg.lora.paths],
        "lora.scale": cfg.lora.scale,
        "lora.fuse": cfg.lora.fuse,
        "lora.allow_partial": cfg.lora.allow_partial,
        "infer.steps": cfg.infer.steps,
        "infer.guidance": cfg.infer.guidance,
        "infer.seed": cfg.infer.seed,
        "infer.max_sequence_length": cfg.infer.max_sequence_length,
        "infer.size": [cfg.infer.width, cfg.infer.height, cfg.infer.max_area, cfg.infer.output_size],
    }
    if eval_keys:
        settings.update({"eval.seed": cfg.eval.seed, "eval.use_text": cfg.eval.use_text})
    return settings


EVAL_REMEDY = "use another --output-dir, or delete that folder to regenerate"


def read_settings(output_dir: Path, remedy: str | None = None) -> dict | None:
    """The ``generation.json`` of a folder of outputs; None if there is none.

    Raises:
        RelationError: not a JSON object; the message ends with ``remedy`` (by default: relation eval's,
            delete the record only if every output is current).
    """
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    remedy = remedy or f"delete it only if every output in '{output_dir}' is current"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RelationError(f"'{path}': not valid JSON: {remedy}") from None
    if not isinstance(recorded, dict):
        raise RelationError(f"'{path}': expected a JSON object: {remedy}")
    return recorded


def check_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True, remedy: str | None = None) -> dict | None:
    """Refuse to mix outputs of different settings in one folder (a reused output is trusted as is); returns
    the record read (None if there is none).

    Raises:
        RelationError: ``generation.json`` records other settings (the message names each changed key and
            ends with ``remedy``, by default relation eval's), or is unreadable.
    """
    before = read_settings(output_dir, remedy)
    if before is None:
        return None
    now = generation_settings(cfg, eval_keys)
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
    if changed:
        raise RelationError(f"outputs in '{output_dir}' were generated with other settings ({'; '.join(changed)}): "
                            f"{remedy or EVAL_REMEDY}")  # fmt: skip
    return before


def record_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True, rows: dict | None = None) -> None:
    """Write ``generation.json``: the settings, and for batch infer what each output was made from."""
    record = generation_settings(cfg, eval_keys) | ({"rows": rows} if rows is not None else {})
    write_text_atomic(output_dir / SETTINGS_FILE, json.dumps(record, indent=2) + "\n")
