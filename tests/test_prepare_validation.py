"""relation prepare refuses bad data before writing anything: every planted fault is listed with its file."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import random_image, truncated_copy
from PIL import Image
from prepare_helpers import leftovers, pair_image, read_splits, side_by_side_jsonl

from relation_cli.cli import main
from relation_cli.prepare import make_synthetic

GOOD = {"good": 4, "other": 3}

# (entry as written on its line of pairs.jsonl, what the report must say about it). Images are made below.
FAULTS = [
    ('{"img_name": "good/p0.png", "edit_instruction": ', "malformed JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    ({"img_name": "good/f0.png"}, "edit_instruction is missing or empty"),
    ({"img_name": "good/f1.png", "edit_instruction": "   "}, "edit_instruction is missing or empty"),
    ({"img_name": "good/f0.png", "edit_instruction": 7}, "edit_instruction must be a string, found int"),
    ({"img_name": "/etc/hostname", "edit_instruction": "x"}, "'/etc/hostname' is an absolute path"),
    ({"img_name": "good/../../outside.png", "edit_instruction": "x"}, "contains '..'"),
    ({"img_name": "good/link.png", "edit_instruction": "x"}, "'good/link.png' leads outside the dataset root"),
    ({"img_name": "good/missing.png", "edit_instruction": "x"}, "missing.png': file not found"),
    ({"img_name": "good/text.png", "edit_instruction": "x"}, "text.png': not an image PIL can read"),
    ({"img_name": "good/cut.png", "edit_instruction": "x"}, "cut.png': cannot decode image"),
    ({"img_name": "good/odd.png", "edit_instruction": "x"}, "odd.png': 49x24, a side-by-side pair needs an even width"),
    ({"img_name": "good/small.png", "edit_instruction": "x"}, "small.png': 30x24, its halves (15x24) are smaller"),
    ({"img_name": "good/p0.png", "edit_instruction": "x"}, "pairs.jsonl line 1 (same image file)"),
    ({"img_name": "good/copy.png", "edit_instruction": "x"}, "duplicate of"),
    ({"img_name": "good/f2.png", "source": "good/f2.png", "edit_instruction": "x"}, "use one form"),
    ({"edit_instruction": "x"}, "needs img_name"),
    ({"source": "good/s.png", "target": "good/t.png", "edit_instruction": "x"}, "s.png' is 24x24 but target '"),
    ({"img_name": "lonely/p.png", "edit_instruction": "x"}, "task 'lonely' has only this one usable pair"),
    ({"img_name": "good/f3.png", "edit_instruction": "x", "task": ""}, "task is empty"),
]  # fmt: skip


@pytest.fixture()
def faulty(tmp_path):
    """``in/pairs.jsonl``: 7 good pairs in 2 tasks, then one entry per fault; returns (file, first fault line)."""
    root = tmp_path / "in"
    src = side_by_side_jsonl(root, GOOD)
    lines = src.read_text().splitlines()
    for i in range(4):
        Image.fromarray(pair_image(60 + i)).save(root / "good" / f"f{i}.png")
    Image.fromarray(pair_image(70)).save(tmp_path / "outside.png")
    (root / "good" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "good" / "text.png").write_text("not an image")
    truncated_copy(random_image(root / "good" / "full.png", (64, 32)), root / "good" / "cut.png")
    random_image(root / "good" / "odd.png", (49, 24))
    random_image(root / "good" / "small.png", (30, 24))
    shutil.copy(root / "good" / "p1.png", root / "good" / "copy.png")
    random_image(root / "good" / "s.png", (24, 24))
    random_image(root / "good" / "t.png", (30, 24))
    (root / "lonely").mkdir()
    Image.fromarray(pair_image(80)).save(root / "lonely" / "p.png")
    first = len(lines) + 1
    lines += [entry if isinstance(entry, str) else json.dumps(entry) for entry, _ in FAULTS]
    src.write_text("\n".join(lines) + "\n")
    return src, first


def test_every_fault_is_listed_and_nothing_is_written(faulty, tmp_path, capsys):
    src, first = faulty
    code = main(["prepare", str(src), "--output", str(tmp_path / "out"), "--workers", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == f"error: {len(FAULTS)} invalid entries in '{src}'; nothing was written (fix them, or pass " \
                      "--skip-invalid to leave them out)"  # fmt: skip
    listed = err[:-1]
    assert len(listed) == len(FAULTS)
    for number, (_, reason) in enumerate(FAULTS, first):
        where = f"{src}: line {number}: "
        assert any(line.strip().startswith(where) and reason in line for line in listed), (where, reason, listed)
    assert leftovers(tmp_path, "out") == []


def test_an_entry_giving_a_field_twice_is_refused_with_its_line(tmp_path, capsys):
    src = side_by_side_jsonl(tmp_path / "in", GOOD)
    twice = '{"img_name": "good/p0.png", "edit_instruction": "x", "edit_instruction": "y"}'
    src.write_text(src.read_text() + twice + "\n")
    assert main(["prepare", str(src), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    number = sum(GOOD.values()) + 1
    assert err[0].strip() == f"{src}: line {number}: duplicate key 'edit_instruction': give each field once", err
    assert leftovers(tmp_path, "out") == []


def test_image_faults_alone_are_listed_too(tmp_path, capsys):
    """With no structural problem the images are decoded into the temporary folder; it is removed on failure."""
    root = make_synthetic(tmp_path / "raw", pairs_per_task=3, size=16, tasks=["mirror", "invert"])
    (root / "mirror" / "Group1" / "00001.png").write_bytes(b"junk")
    code = main(["prepare", str(root), "--output", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and f"{root / 'mirror' / 'Group1' / 'labels.json'}: entry 2: image '" in err
    assert "00001.png': not an image PIL can read" in err and "error: 1 invalid entry in" in err
    assert leftovers(tmp_path, "out") == []


def test_skip_invalid_writes_the_rest_and_says_what_was_skipped(faulty, tmp_path, capsys):
    src, first = faulty
    out = tmp_path / "out"
    code = main(["prepare", str(src), "--output", str(out), "--skip-invalid", "--test-per-task", "1", "--workers", "1"])
    assert code == 0, capsys.readouterr().err
    assert f"skipped {len(FAULTS)} invalid entries (listed in {out / 'skipped.jsonl'})" in capsys.readouterr().out
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == len(FAULTS)
    assert all(set(s) == {"task", "file", "entry", "reason"} and s["file"] == "pairs.jsonl" for s in skipped)
    assert {s["entry"] for s in skipped} == {f"line {n}" for n in range(first, first + len(FAULTS))}
    assert {s["task"] for s in skipped if s["entry"] == f"line {first + len(FAULTS) - 2}"} == {"lonely"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == len(FAULTS) and manifest["counts"]["pairs"] == 7
    assert set(manifest["tasks"]) == {"good", "other"}
    used = {r[k] for rows in read_splits(out).values() for r in rows for k in ("cond1", "source")}
    assert len(list((out / "images").rglob("*.png"))) == 2 * 7 and len(used) == 7


def test_a_file_unusable_as_a_whole_says_why_with_skip_invalid_and_empty_files_read_alike(tmp_path, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"img_name": "a.png", "edit_instruction": \n')
    assert main(["prepare", str(bad), "--output", str(tmp_path / "out"), "--skip-invalid"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: input '{bad}': no task has 2 usable pairs (1 invalid entry; the first: {bad}: line 1: " \
                  "malformed JSON (Expecting value, column 43)); nothing to prepare"  # fmt: skip
    for name in ("empty.json", "empty.jsonl"):
        (tmp_path / name).write_text("\n")
        assert main(["prepare", str(tmp_path / name), "--output", str(tmp_path / "out")]) == 1
        assert capsys.readouterr().err.strip() == f"error: input '{tmp_path / name}': holds no entries"
    assert leftovers(tmp_path, "out") == []


def test_a_long_list_of_problems_is_cut_and_one_unreadable_file_is_one_line(tmp_path, capsys):
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"img_name": f"x{i}.png"}) + "\n" for i in range(25)))
    assert main(["prepare", str(many), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 22 and err[20].strip() == "... and 5 more (--skip-invalid writes them all to skipped.jsonl)"
    assert err[-1].startswith("error: 25 invalid entries in")
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text(json.dumps([{"img_name": "a.png", "edit_instruction": "x"}], indent=2))
    assert main(["prepare", str(pretty), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {pretty}: file: one JSON document over 6 lines, not JSON Lines: name it .json or write one "
                   "entry per line; nothing was written"]  # fmt: skip
    assert leftovers(tmp_path, "out") == []


def test_malformed_labels_json_names_file_and_line(tmp_path, capsys):
    root = make_synthetic(tmp_path / "raw", pairs_per_task=2, size=16, tasks=["mirror", "invert", "blur"])
    (root / "mirror" / "Group1" / "labels.json").write_text('[\n  {"img_name": "00000.png",\n  oops\n]')
    (root / "invert" / "Group1" / "labels.json").write_text('{"img_name": "00000.png"}')
    (root / "blur" / "Group1" / "labels.json").write_text('[{"img_name": "00000.png", "img_name": "00001.png"}]')
    code = main(["prepare", str(root), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{root / 'mirror' / 'Group1' / 'labels.json'}: line 3: malformed JSON" in err
    assert f"{root / 'invert' / 'Group1' / 'labels.json'}: file: expected a JSON list of entries, found dict" in err
    assert f"{root / 'blur' / 'Group1' / 'labels.json'}: file: an entry gives duplicate key 'img_name': give each " \
           "field once" in err  # fmt: skip
    assert leftovers(tmp_path, "out") == []


def test_symlinked_task_folder_leaving_the_root_is_refused(tmp_path, capsys):
    elsewhere = make_synthetic(tmp_path / "elsewhere", pairs_per_task=2, size=16, tasks=["mirror"])
    root = make_synthetic(tmp_path / "raw", pairs_per_task=2, size=16, tasks=["invert"])
    (root / "mirror").symlink_to(elsewhere / "mirror")
    assert main(["prepare", str(root), "--output", str(tmp_path / "out")]) == 1
    assert "'00000.png' leads outside the dataset root" in capsys.readouterr().err


def test_a_task_left_with_one_usable_pair_is_dropped_with_no_folder_and_true_words(tmp_path, capsys):
    """--skip-invalid: a task whose only other entry is invalid is dropped; the note says its invalid entries are
    in skipped.jsonl, and no empty image folder of it is left in the output."""
    src = side_by_side_jsonl(tmp_path / "in", {**GOOD, "lone": 1})
    src.write_text(src.read_text() + json.dumps({"img_name": "lone/missing.png", "edit_instruction": "x"}) + "\n")
    assert main(["prepare", str(src), "--output", str(tmp_path / "out"), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    said = " ".join((captured.out + captured.err).split())
    assert "'lone': fewer than 2 usable pairs (its invalid entries are in skipped.jsonl)" in said, said
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(GOOD)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dropped_tasks"] == {"lone": "fewer than 2 usable pairs (its invalid entries are in skipped.jsonl)"}
