"""Small paired-edit datasets in the input forms ``relation prepare`` reads, and readers of its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from relation_cli.rows import read_jsonl

SPLITS = ("train", "test_seen", "test_unseen")


def pair_image(pair_id: int, size: int = 24, seed: int = 0) -> np.ndarray:
    """A before|after array (size x 2*size) whose pixel (0, 0) of each half encodes ``pair_id``."""
    rng = np.random.default_rng([seed, pair_id])
    arr = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)
    arr[0, 0] = (pair_id, 0, 7)
    arr[0, size] = (pair_id, 1, 7)
    return arr


def pair_id_of(path: Path) -> int:
    return int(np.asarray(Image.open(path))[0, 0, 0])


def side_by_side_jsonl(root: Path, tasks: dict[str, int], with_task_field: bool = False) -> Path:
    """``root/pairs.jsonl`` with side-by-side PNGs in ``root/<task>/``; instruction ``"edit <task> #<id>"``."""
    lines, pair_id = [], 0
    for task, count in tasks.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            name = f"{task}/p{pair_id}.png"
            Image.fromarray(pair_image(pair_id)).save(root / name)
            entry = {"left_image_description": "l", "right_image_description": "r",
                     "edit_instruction": f"edit {task} #{pair_id}", "img_name": name}  # fmt: skip
            if with_task_field:
                entry["task"] = f"{task}-named"
            lines.append(json.dumps(entry))
            pair_id += 1
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def two_file_json(root: Path, tasks: dict[str, int]) -> Path:
    """``root/pairs.json``: a JSON list of ``{source, target, edit_instruction, task}``, files in ``root/imgs``."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    entries, pair_id = [], 0
    for task, count in tasks.items():
        for _ in range(count):
            arr = pair_image(pair_id)
            for side, half in (("s", arr[:, :24]), ("t", arr[:, 24:])):
                Image.fromarray(np.ascontiguousarray(half)).save(root / "imgs" / f"{pair_id}{side}.png")
            entries.append({"source": f"imgs/{pair_id}s.png", "target": f"imgs/{pair_id}t.png",
                            "edit_instruction": f"edit {task} #{pair_id}", "task": task})  # fmt: skip
            pair_id += 1
    (root / "pairs.json").write_text(json.dumps(entries, indent=1))
    return root / "pairs.json"


def read_splits(out: Path) -> dict[str, list[dict]]:
    return {s: read_jsonl(out / f"{s}.jsonl") if (out / f"{s}.jsonl").stat().st_size else [] for s in SPLITS}


def tree_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}  # fmt: skip


def leftovers(parent: Path, name: str) -> list[Path]:
    """What a run writing ``parent/name`` left behind: the folder itself or its hidden temporary folders."""
    return sorted(p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def assert_interrupted_training_resumes_exactly(tmp_path: Path, monkeypatch, train_args) -> None:
    """Prepare two small tasks, train 4 steps with 1-2 exemplar pairs straight, then again killed right after
    the step-2 checkpoint and resumed: the exported LoRA and adapter must be bit-identical.
    ``train_args(data, out)`` gives the ``relation train`` argv for a train.jsonl and an output folder."""
    import relation_cli.train.checkpoint as loop
    import torch
    from safetensors.torch import load_file

    from relation_cli.cli import main

    src = side_by_side_jsonl(tmp_path / "src", {"t1": 4, "t2": 4})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(train_args(data / "train.jsonl", straight)) == 0
    real_save = loop.save_checkpoint

    def save_then_die(run):
        real_save(run)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    args = train_args(data / "train.jsonl", broken)
    assert main(args) == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main([*args, "--resume"]) == 0
    for part in ("lora/pytorch_lora_weights.safetensors", "adapter/diffusion_pytorch_model.safetensors"):
        a, b = load_file(straight / part), load_file(broken / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
