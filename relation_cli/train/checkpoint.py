"""Resumable checkpoints without pickles: safetensors for tensors, JSON for everything else.

A checkpoint is written into a temporary folder, every file's sha256 goes into ``checksums.json``,
the ``COMPLETE`` marker is written last, and only then is the folder renamed to
``checkpoint-<step>``. On resume the newest folder whose marker and checksums are intact is used;
incomplete or corrupted ones are skipped with a warning. Every checkpoint holds the resolved config
it was trained with (``config.yaml``), which ``--resume`` compares with the current one
(:mod:`relation_cli.train.resume`), and only finite weights: a step that made them non-finite stops
the run instead of being saved.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import save_config
from ..errors import RelationError
from ..fs import give_folder_mode
from ..progress import console

if TYPE_CHECKING:
    from .recipe import Run

MARKER = "COMPLETE"
CHECKSUMS = "checksums.json"
PREFIX = "checkpoint-"
CONFIG = "config.yaml"


# ------------------------------------------------------------------------------ tensors <-> json trees


def flatten(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Replace every tensor in a nested dict/list by ``{"__tensor__": key}``, collecting it in ``tensors``."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(tree, dict):
        return {"__keys__": [[_key(k), flatten(v, tensors, f"{path}.{k}")] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(tree)], "tuple": isinstance(tree, tuple)}
    if isinstance(tree, (np.integer, np.floating)):
        return tree.item()
    if isinstance(tree, np.ndarray):
        wide = tree.dtype.kind == "u" and tree.dtype != np.uint8  # safetensors/torch: store as int64
        tensors[path] = torch.from_numpy(tree.astype(np.int64) if wide else tree.copy())
        return {"__ndarray__": path, "dtype": str(tree.dtype)}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} in a checkpoint")


def _key(k):
    if isinstance(k, (int, str)):
        return [type(k).__name__, k]
    raise TypeError(f"unsupported key type {type(k).__name__}")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy().astype(tree["dtype"])
        if "__keys__" in tree:
            return {(int(k[1]) if k[0] == "int" else k[1]): unflatten(v, tensors) for k, v in tree["__keys__"]}
        if "__list__" in tree:
            items = [unflatten(v, tensors) for v in tree["__list__"]]
            return tuple(items) if tree.get("tuple") else items
    return tree


def save_tree(tree: Any, folder: Path, name: str) -> None:
    """``name.json`` + ``name.safetensors`` (if it holds tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    doc = flatten(tree, tensors)
    (folder / f"{name}.json").write_text(json.dumps(doc))
    if tensors:
        save_file(tensors, folder / f"{name}.safetensors")


def load_tree(folder: Path, name: str) -> Any:
    doc = json.loads((folder / f"{name}.json").read_text())
    st = folder / f"{name}.safetensors"
    return unflatten(doc, load_file(st) if st.exists() else {})


# ------------------------------------------------------------------------------ random states


def rng_state(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ folders


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: Path) -> None:
    """Write checksums of every file, then the completion marker (last)."""
    sums = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    (folder / MARKER).write_text("ok\n")


def verify(folder: Path) -> str | None:
    """``None`` if the checkpoint is complete and intact, else the reason it is not."""
    if not (folder / MARKER).is_file():
        return "no completion marker (interrupted while saving)"
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, json.JSONDecodeError):
        return "checksums.json unreadable"
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def step_of(folder: Path) -> int:
    return int(folder.name[len(PREFIX) :])


def checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def latest_valid(root: Path, warn=print) -> Path | None:
    for folder in checkpoints(root):
        problem = verify(folder)
        if problem is None:
            return folder
        warn(f"skipping {folder.name}: {problem}")
    return None


def publish(tmp: Path, root: Path, step: int, keep: int) -> Path:
    """Rename a sealed temporary folder to ``checkpoint-<step>`` and prune to the newest ``keep``."""
    final = root / f"{PREFIX}{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def require_resumable(root: Path, warn=print) -> Path:
    found = latest_valid(root, warn)
    if found is None:
        raise RelationError(f"--resume: no complete checkpoint under '{root}'")
    return found


# ------------------------------------------------------------------------------ a run's checkpoints


def uses_native_state(accelerator) -> bool:
    """DeepSpeed owns its optimizer: its state is saved through accelerate's save_state."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def unwrapped(run: Run):
    """The job's trained module without accelerate's wrappers (DDP, DeepSpeed)."""
    return run.accelerator.unwrap_model(run.model)


def non_finite(run: Run, what: str) -> RelationError:
    """The error that stops a run whose loss or weights stopped being finite, naming the last good checkpoint."""
    good = latest_valid(run.out / "checkpoints", warn=lambda m: None)
    where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
    return RelationError(f"{what}; training stopped, {where}")


def save_checkpoint(run: Run) -> Path | None:
    """Atomic, checksummed, pickle-free; each process writes its own random and data-plan state.

    Raises :class:`RelationError` instead of saving weights that are not finite (a step with finite
    loss can still leave them NaN, e.g. after an infinite gradient), so "the last good checkpoint" is one.
    """
    acc, root = run.accelerator, run.out / "checkpoints"
    trained = unwrapped(run).trainable_state()
    bad = [k for k, v in trained.items() if not torch.isfinite(v).all()]
    if bad:
        raise non_finite(run, f"weights became non-finite at step {run.step} ({bad[0]})")
    tmp = root / f".tmp-{PREFIX}{run.step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    save_tree({"rng": rng_state(run.generator), "plan": run.plan.state()}, tmp, f"process_{acc.process_index}")
    if uses_native_state(acc):
        acc.save_state(str(tmp / "accelerate"))  # collective; DeepSpeed's own format
    if acc.is_main_process:
        _save_main(run, trained, tmp)
    acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        give_folder_mode(tmp)  # safetensors' save_file leaves 0600; the umask's mode, as for every other output
        seal(tmp)
        final = publish(tmp, root, run.step, run.cfg.train.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def _save_main(run: Run, trained: dict[str, torch.Tensor], tmp: Path) -> None:
    """What only the main process writes: weights, optimizer and schedule, EMA, step, config."""
    save_file({k: v.contiguous() for k, v in trained.items()}, tmp / "trainable.safetensors")
    if not uses_native_state(run.accelerator):
        save_tree(run.optimizer.state_dict(), tmp, "optimizer")
        save_tree(run.scheduler.state_dict(), tmp, "scheduler")
    if run.ema is not None:
        save_tree(run.ema.state_dict(), tmp, "ema")
    save_tree({"step": run.step, "num_processes": run.accelerator.num_processes}, tmp, "trainer")
    save_config(run.cfg, tmp / CONFIG)


def load_checkpoint(run: Run, folder: Path) -> None:
    """Restore weights, optimizer, schedule, EMA, random and data state; then apply the current settings."""
    acc = run.accelerator
    trainer = load_tree(folder, "trainer")
    if trainer["num_processes"] != acc.num_processes:
        raise RelationError(
            f"checkpoint '{folder}' was written by {trainer['num_processes']} processes; resume with the same number"
        )
    _load_weights(run, folder)
    if uses_native_state(acc):
        acc.load_state(str(folder / "accelerate"))
    else:
        run.optimizer.load_state_dict(load_tree(folder, "optimizer"))
        run.scheduler.load_state_dict(load_tree(folder, "scheduler"))
    if run.ema is not None:
        run.ema.load_state_dict(load_tree(folder, "ema"))
    mine = load_tree(folder, f"process_{acc.process_index}")
    set_rng_state(mine["rng"], run.generator)
    run.plan.load_state(mine["plan"])
    run.step = int(trainer["step"])
    apply_settings(run)
    if acc.is_main_process:
        console.print(f"resumed from {folder} at step {run.step}")


def _load_weights(run: Run, folder: Path) -> None:
    state = load_file(folder / "trainable.safetensors")
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise RelationError(f"checkpoint '{folder}' holds non-finite weights ({bad[0]}): remove it to resume from an earlier one")
    try:
        missing = unwrapped(run).load_state_dict(state, strict=False)
    except RuntimeError as e:  # a size mismatch: a checkpoint of another shape that holds no config to compare
        raise RelationError(f"checkpoint '{folder}' does not fit this model ({str(e).splitlines()[-1].strip()})") from None
    if missing.unexpected_keys:
        raise RelationError(f"checkpoint '{folder}' does not fit this model: {missing.unexpected_keys[:3]}")


def apply_settings(run: Run) -> None:
    """The current optimizer settings over the restored state, from the restored step on.

    ``load_state_dict`` brings back the learning rate, betas, weight decay and epsilon of the run that
    wrote the checkpoint, and the schedule's base rate; here the current config's values replace them,
    and the learning rate is recomputed from the current schedule at the restored step (the schedule's
    lambdas are always the current config's: ``LambdaLR`` saves no function). Unchanged settings give
    the same numbers, bit for bit.
    """
    t = run.cfg.train
    schedule = getattr(run.scheduler, "scheduler", run.scheduler)  # accelerate's AcceleratedScheduler wraps it
    for group in run.optimizer.param_groups:
        group.update(initial_lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay,
                     eps=t.adam_epsilon)  # fmt: skip
    schedule.base_lrs = [t.learning_rate] * len(schedule.base_lrs)
    rates = [base * f(schedule.last_epoch) for base, f in zip(schedule.base_lrs, schedule.lr_lambdas)]
    for group, rate in zip(run.optimizer.param_groups, rates):
        group["lr"] = rate
    schedule._last_lr = rates  # what get_last_lr() reports until the next step
    if run.ema is not None:
        run.ema.decay = t.ema_decay
