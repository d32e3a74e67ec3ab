"""The hardening battery (tests/battery.py) through the real CLI: bad input is exit 1, one line naming the
input and the problem, no traceback, no model loaded and nothing written; odd but valid images work.

``RELATION_BATTERY_TABLE=1`` also writes the README's table and docs/hardening-table.md from this run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from battery import (
    IMAGE_WORKS,
    PAIR_SIZE,
    SIZE,
    TABLES,
    Case,
    Kit,
    eval_args,
    expected_outcomes,
    infer_batch,
    prepare_args,
    readme_block,
    render_matrix,
    train_args,
    write_image,
    write_tables,
)
from conftest import ROOT, single_thread
from PIL import Image

from relation_cli.cli import main

RECORDS: list[dict] = []
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def table_writer():
    yield
    if os.environ.get("RELATION_BATTERY_TABLE") == "1":
        write_tables(RECORDS, ROOT / "README.md", ROOT / "docs" / "hardening-table.md")


def record(command: str, case: Case, outcome: str, message: str, tmp: Path) -> None:
    message = re.sub(r"/pytest-\d+/", "/pytest-N/", message.replace(str(tmp), "<tmp>"))  # the same table every run
    RECORDS.append({"command": command, "kind": case.kind, "outcome": outcome, "message": message})


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (symlinks not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            out[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def no_model(*args, **kwargs):
    raise AssertionError("a model was loaded although the input was bad")


BAD = [(command, case) for command, cases in TABLES.items() for case in cases if not case.works]


@pytest.mark.parametrize("command, case", BAD, ids=[f"{command}: {case.kind}" for command, case in BAD])
def test_bad_input(command, case, tiny_model, tmp_path, monkeypatch, capsys):
    kit = Kit(tmp_path, tiny_model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("relation_cli.model.load_base", no_model)  # every check runs before any model loads
    try:
        args = [str(a) for a in case.args(kit)]
        before = tree(tmp_path)
        code = main([command, *args])
        after = tree(tmp_path)
    finally:
        kit.release()
    err = capsys.readouterr().err
    lines = err.rstrip().splitlines()
    message = " / ".join(line.strip() for line in lines)
    record(command, case, "exit 1" if code == 1 else f"exit {code}", message, tmp_path)
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert lines[-1].startswith("error: "), err
    # One line; prepare lists each invalid entry (file: entry: reason) above it, indented.
    assert len(lines) == 1 or (command == "prepare" and all(line.startswith("  ") for line in lines[:-1])), err
    for fragment in case.expect:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert after == before, "files were created or changed"


# ---------------------------------------------------------------------------------- inputs that work


@pytest.fixture(scope="module")
def works(tiny_model, tmp_path_factory):
    """One run of infer (batch), train and eval over rows whose query is each IMAGE_WORKS kind in turn."""
    root = tmp_path_factory.mktemp("works")
    kit = Kit(root, tiny_model)
    rows = [kit.row(i, source=write_image(kit.data / f"w{i}", kind, SIZE, seed=50 + i).name)
            for i, kind in enumerate(IMAGE_WORKS)]  # fmt: skip
    runs = {}
    with single_thread():
        for command, args in (
            ("infer", infer_batch(kit, kit.rows("rows.jsonl", rows))),
            ("train", [*train_args(kit, kit.rows("train.jsonl", rows)), "--set", f"train.batch_size={len(rows)}"]),
            ("eval", eval_args(kit, kit.rows("test_seen.jsonl", rows))),
        ):
            runs[command] = main([command, *map(str, args)])
    return {"root": root, "codes": runs}


def red_left_blue_right(image: Image.Image) -> bool:
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    w = arr.shape[1]
    left, right = arr[:, : w // 2].mean((0, 1)), arr[:, w // 2 :].mean((0, 1))
    return left[0] > left[2] + 60 and right[2] > right[0] + 60


@pytest.mark.parametrize("index, kind", list(enumerate(IMAGE_WORKS)), ids=IMAGE_WORKS)
@pytest.mark.parametrize("command", ["infer", "train", "eval"])
def test_valid_images_work(works, command, index, kind):
    root = works["root"]
    assert works["codes"][command] == 0
    if command == "infer":
        outputs = [root / "out" / f"{index:06d}.png"]
    elif command == "eval":
        outputs = [root / "eval" / "seen" / method / f"{index:06d}.png" for method in ("relation", "copy_query")]
        samples = json.loads((root / "eval" / "metrics.json").read_text())["samples"]
        assert {s["method"] for s in samples if s["index"] == index} == {"relation", "copy_query"}
    else:
        outputs = []
        assert (root / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    for path in outputs:
        image = Image.open(path)
        assert image.mode == "RGB" and image.size == SIZE, (path, image.mode, image.size)  # upright, 16-multiples
    if command == "eval" and kind != "16-bit grayscale":
        assert red_left_blue_right(Image.open(outputs[1]))  # the query itself, upright
    RECORDS.append({"command": command, "kind": kind, "outcome": "works",
                    "message": f"exit 0; converted to 8-bit RGB, {SIZE[0]}x{SIZE[1]} upright"})  # fmt: skip


@pytest.mark.parametrize("kind", IMAGE_WORKS)
def test_valid_images_work_in_prepare(kind, tiny_model, tmp_path):
    kit = Kit(tmp_path, tiny_model)
    source = kit.pairs({"img_name": kit.pair_image(kind), "edit_instruction": "odd file", "task": "t0"})
    assert main(["prepare", *map(str, prepare_args(kit, source))]) == 0
    folder = tmp_path / "out" / "images" / "t0"  # the third pair of task t0
    before, after = (Image.open(folder / f"00002_{side}.png") for side in ("before", "after"))
    half = (PAIR_SIZE[0] // 2, PAIR_SIZE[1])
    assert before.mode == after.mode == "RGB" and before.size == after.size == half
    if kind != "16-bit grayscale":  # split after the EXIF rotation: the left half is the red one
        both = Image.new("RGB", PAIR_SIZE)
        both.paste(before, (0, 0))
        both.paste(after, (half[0], 0))
        assert red_left_blue_right(both)
    RECORDS.append({"command": "prepare", "kind": kind, "outcome": "works",
                    "message": "exit 0; halves written as 8-bit RGB PNG, split after the EXIF rotation"})  # fmt: skip


def test_readme_table_matches_the_battery():
    """The README's table is the battery's: regenerate it with RELATION_BATTERY_TABLE=1 when cases change."""
    assert readme_block((ROOT / "README.md").read_text()) == render_matrix(expected_outcomes())


def test_every_command_has_a_table_row_for_the_common_kinds():
    for kind in ["missing data file", "malformed JSON line", "unknown config key", "negative steps", "existing output",
                 "read-only output folder", "truncated image", "EXIF-rotated JPEG"]:  # fmt: skip
        covered = {command for (command, k) in expected_outcomes() if k == kind}
        assert covered >= ({"infer", "prepare", "train", "eval"} - ({"prepare"} if kind == "negative steps" else set()))
