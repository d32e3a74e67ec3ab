"""A finished training run used as a model: ``--run DIR`` reads the ``run:`` section of ``DIR/config.yaml``.

``relation train`` writes that section at export (see :class:`~relation_cli.config.RunSection`). Each
value names a path inside the run when ``DIR / value`` exists, else it is used as written (``demo``, a
hub id, an absolute folder).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from .config import InferSection, LoraSection, RelationConfig, RunSection, read_yaml
from .errors import RelationError

RUN_CONFIG = "config.yaml"


def _inside(run_dir: Path, value: str) -> str:
    return str(run_dir / value) if (run_dir / value).exists() else value


def read_run(run_dir: str | Path) -> tuple[RunSection, dict]:
    """The run's ``run:`` section and its whole config tree; RelationError if it is not a finished run."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG
    if run_dir.is_file():
        raise RelationError(f"run '{run_dir}': is a file; give the train.output_dir folder of a finished run")
    if not run_dir.is_dir():
        raise RelationError(f"run '{run_dir}': folder not found")
    if not path.is_file():
        raise RelationError(f"run '{run_dir}': no {RUN_CONFIG} (a folder written by relation train)")
    tree = read_yaml(path)
    if not isinstance(tree.get("run"), dict) and (run_dir / "manifest.json").is_file():
        raise RelationError(f"run '{run_dir}': is a dataset written by relation prepare, not a training run; give "
                            "the train.output_dir of a finished relation train")  # fmt: skip
    if not isinstance(tree.get("run"), dict):
        raise RelationError(f"run '{run_dir}': its {RUN_CONFIG} has no run: section; the training has not "
                            "exported its weights yet (relation train writes it at the end)")  # fmt: skip
    try:
        return RunSection.model_validate(tree["run"]), tree
    except ValidationError as e:
        raise RelationError(f"run '{run_dir}': its run: section is invalid ({e.errors()[0]['msg']})") from None


def run_settings(run_dir: str | Path) -> dict:
    """The settings ``--run DIR`` supplies, as a config tree under the user's: the run's base, image
    encoder, adapter, its trained LoRA (weight 1) and the LoRAs fused into the base while the adapter trained
    (at their weights there), and its ``infer:`` section as infer defaults. Raises RelationError
    for what :func:`read_run` refuses and for a VAE pre-training run (no adapter)."""
    run_dir = Path(run_dir)
    run, tree = read_run(run_dir)
    if not run.adapter and (tree.get("train") or {}).get("mode") == "vae":
        raise RelationError(f"run '{run_dir}': pre-trained a VAE (train.mode vae) and has no adapter to edit with; "
                            f"train one on its base: relation train --set model.base={run_dir / run.base}")  # fmt: skip
    model = {"base": _inside(run_dir, run.base)}
    if run.image_encoder:
        model["image_encoder"] = _inside(run_dir, run.image_encoder)
    loras = [{"path": _inside(run_dir, run.lora), "weight": 1.0}] if run.lora else []
    loras += [{"path": _inside(run_dir, f.path), "weight": f.weight} for f in run.base_loras]
    if "base_loras" not in tree["run"] and (tree.get("train") or {}).get("mode") == "adapter":
        loras = _fused_before_base_loras(run_dir, run, tree) or loras
    settings: dict = {"model": model, "lora": {"paths": loras}}
    if run.adapter:
        settings["adapter"] = {"path": _inside(run_dir, run.adapter)}
    infer = tree.get("infer")
    if isinstance(infer, dict):  # overwrite is the user's choice, never a run's
        settings["infer"] = {k: v for k, v in infer.items() if k in InferSection.model_fields and k != "overwrite"}
    return settings


def _fused_before_base_loras(run_dir: Path, run: RunSection, tree: dict) -> list[dict] | None:
    """The LoRAs an adapter-mode run written before ``run.base_loras`` trained on: its config's ``lora.paths``, each
    at weight x ``lora.scale`` (its ``run.lora`` named the one LoRA alone, at weight 1, and none of several); the
    absolute path ``run.lora`` recorded for a lone one. None when that section does not read."""
    saved = tree.get("lora") if isinstance(tree.get("lora"), dict) else {}
    try:  # the two settings that matter, whatever else that section held
        section = LoraSection.model_validate({k: saved[k] for k in ("paths", "scale") if k in saved})
    except ValidationError:
        return None
    paths = [run.lora] if run.lora and len(section.paths) == 1 else [f.path for f in section.paths]
    return [{"path": _inside(run_dir, p), "weight": f.weight * section.scale} for p, f in zip(paths, section.paths)]


def refuse_run_config(cfg: RelationConfig, config: Path | None) -> None:
    """``--config DIR/config.yaml`` of a training run would silently give other weights: point to ``--run DIR``."""
    if cfg.run is not None and config is not None:
        raise RelationError(f"'{config}' is a training run's config: use --run {config.parent} to infer or "
                            "evaluate with the model it trained")  # fmt: skip
