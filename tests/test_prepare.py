"""relation prepare: analogy pairing, leak-free splits, determinism, atomic output, all three input forms."""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
import yaml
from PIL import Image
from prepare_helpers import (
    SPLITS,
    leftovers,
    pair_id_of,
    pair_image,
    read_splits,
    side_by_side_jsonl,
    tree_bytes,
    two_file_json,
)

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.errors import RelationError
from relation_cli.prepare import make_synthetic, prepare
from relation_cli.prepare.pairing import choose_unseen, count_test_queries, plan_task, rotate
from relation_cli.rows import parse_rows

TASKS = ["blur", "frame", "invert", "mirror", "rotate90", "zoom"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A small Relation252K-layout folder (6 tasks x 6 pairs, 64x32 images) from the synthetic generator."""
    return make_synthetic(tmp_path_factory.mktemp("raw") / "raw", pairs_per_task=6, seed=3, size=32, tasks=TASKS)


def cfg(*overrides: str):
    return load_config(None, ["data.workers=1", *overrides])


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "out"
    config = cfg("data.test_per_task=2", "data.unseen_task_names=[frame]", "data.per_task_cap=10")
    summary = prepare(config, raw, out)
    return out, summary


# ------------------------------------------------------------------------------------------------ pairing


def test_rotation_visits_every_ordered_pair_once_and_never_pairs_a_pair_with_itself():
    samples = rotate(list(range(5)), limit=1000)
    assert len(samples) == 20 == len(set(samples)) and all(a != b for a, b in samples)
    first_round = samples[:5]  # k = 1: each pair is exemplar once and query once before any repeats
    assert sorted(a for a, _ in first_round) == sorted(b for _, b in first_round) == list(range(5))
    assert rotate(list(range(5)), limit=7) == samples[:7] and rotate([1], limit=5) == []


@pytest.mark.parametrize(
    "n, test_per_task, cap, fraction, expected",
    [(2, 30, 99, 0.5, 0), (3, 30, 99, 0.5, 1), (10, 3, 99, 0.5, 3), (10, 3, 12, 0.5, 3), (40, 30, 50, 0.5, 20),
     (41, 30, 50, 0.5, 20), (300, 20, 2000, 0.5, 20), (40, 30, 50, 1.0, 30), (3, 30, 99, 1.0, 1), (100, 50, 99, 0.29, 29)],
)  # fmt: skip
def test_task_plan_keeps_test_queries_out_of_train(n, test_per_task, cap, fraction, expected):
    plan = plan_task("t", list(range(100, 100 + n)), 1, False, cap, test_per_task, max_test_fraction=fraction)
    train_pairs = {p for sample in plan.train for p in sample}
    assert not plan.test_queries & train_pairs
    assert len(plan.test) == len(plan.test_queries) == expected == count_test_queries(n, test_per_task, cap, fraction)
    assert len(plan.train) + len(plan.test) <= cap and plan.train
    assert all(a != b for a, b in plan.train + plan.test)
    if fraction == 0.5:  # the default: a task never keeps fewer training pairs than it has test queries
        assert len({p for sample in plan.train for p in sample}) >= len(plan.test_queries)
    unseen = plan_task("t", list(range(n)), 1, True, cap, test_per_task, max_test_fraction=fraction)
    assert not unseen.train and len(unseen.test) == min(test_per_task, n * (n - 1), cap)


def test_unseen_choice():
    tasks = [f"t{i}" for i in range(6)]
    assert choose_unseen(tasks, 0, ["t3"], seed=0) == ["t3"]
    three = choose_unseen(tasks, 3, ["t3"], seed=0)
    assert len(three) == 3 and "t3" in three and three == choose_unseen(tasks, 3, ["t3"], seed=0)
    with pytest.raises(RelationError, match="unseen task 'nope': not among"):
        choose_unseen(tasks, 0, ["nope"], seed=0)
    with pytest.raises(RelationError, match="leaves none to train on"):
        choose_unseen(tasks, 6, [], seed=0)


# ------------------------------------------------------------------------------------------------ output


def test_output_layout_and_rows_load_everywhere(prepared):
    import datasets

    out, summary = prepared
    names = {p.name for p in out.iterdir()}
    assert {"train.jsonl", "test_seen.jsonl", "test_unseen.jsonl", "manifest.json", "config.yaml", "images"} <= names
    assert "skipped.jsonl" not in names and "raw" not in names
    for split in SPLITS:
        rows = parse_rows(out / f"{split}.jsonl", need_target=True)
        assert all(r.target.is_file() and r.cond1.is_file() for r in rows)
        loaded = datasets.load_dataset("json", data_files=str(out / f"{split}.jsonl"), split="train")
        assert loaded.column_names == ["cond1", "cond2", "source", "target", "text", "task"]
        assert len(loaded) == summary.samples[split] == len(rows)
    row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert row["cond1"].startswith("images/") and not row["cond1"].startswith("/")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["unseen_tasks"] == ["frame"]
    assert manifest["input"]["path"].endswith("raw")
    assert {k: manifest["counts"][k] for k in SPLITS} == summary.samples
    per_task = Counter(r["task"] for rows in read_splits(out).values() for r in rows)
    assert {t: sum(v[s] for s in SPLITS) for t, v in manifest["tasks"].items()} == per_task
    assert load_config(out / "config.yaml").data.unseen_task_names == ["frame"]


def test_halves_are_the_original_pixels(raw, prepared):
    out, _ = prepared
    row = json.loads((out / "test_seen.jsonl").read_text().splitlines()[0])
    before, after = (np.asarray(Image.open(out / row[k])) for k in ("source", "target"))
    originals = [np.asarray(Image.open(p)) for p in sorted((raw / row["task"] / "Group1").glob("*.png"))]
    assert any(np.array_equal(o[:, :32], before) and np.array_equal(o[:, 32:], after) for o in originals)


def test_samples_pair_two_different_pairs_of_one_task(prepared):
    out, _ = prepared
    for rows in read_splits(out).values():
        for r in rows:
            assert (r["cond1"], r["cond2"]) != (r["source"], r["target"])
            assert {r[k].split("/")[1] for k in ("cond1", "cond2", "source", "target")} == {r["task"]}
            assert r["cond1"].replace("_before", "_after") == r["cond2"]


def test_splits_are_disjoint_and_test_queries_never_reach_train(prepared):
    out, _ = prepared
    splits = read_splits(out)
    key = lambda r: (r["cond1"], r["source"])
    assert not {key(r) for r in splits["train"]} & {key(r) for r in splits["test_seen"] + splits["test_unseen"]}
    train_pairs = {r[k] for r in splits["train"] for k in ("cond1", "source")}
    assert not {r["source"] for r in splits["test_seen"]} & train_pairs
    assert {r["task"] for r in splits["test_unseen"]} == {"frame"}
    assert "frame" not in {r["task"] for r in splits["train"] + splits["test_seen"]}
    per_task = defaultdict(list)
    for r in splits["test_seen"]:
        per_task[r["task"]].append(r["source"])
    assert all(len(v) == len(set(v)) == 2 for v in per_task.values()) and len(per_task) == len(TASKS) - 1
    assert all(n == 10 - 2 for n in Counter(r["task"] for r in splits["train"]).values())  # cap over all splits


def test_small_tasks_get_fewer_test_queries_and_the_summary_and_manifest_say_why(tmp_path, capsys):
    """By default at most half of a seen task's pairs become test queries (data.max_test_fraction)."""
    source = side_by_side_jsonl(tmp_path / "src", {"big": 12, "small": 6})
    code = main(["prepare", str(source), "--output", str(tmp_path / "out"), "--test-per-task", "5", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {t: (v["pairs"], v["test_seen"]) for t, v in manifest["tasks"].items()} == {"big": (12, 5), "small": (6, 3)}
    assert manifest["settings"]["max_test_fraction"] == 0.5
    (note,) = manifest["notes"]
    assert note.startswith("1 seen task(s) got fewer than 5 test samples: at most 0.5 of a task's pairs")
    assert "(data.max_test_fraction)" in note and "small: 6 pairs, 3 test" in note and "big" not in note
    assert f"note: {note}" in out
    train_queries = {r["source"] for r in read_splits(tmp_path / "out")["train"] if r["task"] == "small"}
    assert len(train_queries) == 3  # as many training pairs as test queries, not fewer
    code = main(["prepare", str(source), "--output", str(tmp_path / "all"), "--test-per-task", "5", "--workers", "1",
                 "--set", "data.max_test_fraction=1"])  # fmt: skip
    assert code == 0 and json.loads((tmp_path / "all" / "manifest.json").read_text())["tasks"]["small"]["test_seen"] == 4


def test_same_inputs_and_seed_give_identical_bytes(raw, prepared, tmp_path):
    out, _ = prepared
    config = cfg("data.test_per_task=2", "data.unseen_task_names=[frame]", "data.per_task_cap=10")
    prepare(config, raw, tmp_path / "again")
    assert tree_bytes(tmp_path / "again") == tree_bytes(out)
    parallel = config.model_copy(deep=True)
    parallel.data.workers = 2
    prepare(parallel, raw, tmp_path / "parallel")
    assert tree_bytes(tmp_path / "parallel", skip=("config.yaml",)) == tree_bytes(out, skip=("config.yaml",))
    other = config.model_copy(deep=True)
    other.data.seed = 1
    prepare(other, raw, tmp_path / "other")
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_jsonl_of_side_by_side_pairs(tmp_path):
    src = side_by_side_jsonl(tmp_path / "in", {"a": 5, "b": 4, "c": 3})
    summary = prepare(cfg("data.test_per_task=1", "data.unseen_tasks=1", "data.seed=4"), src, tmp_path / "out")
    assert summary.tasks == 3 and summary.pairs == 12 and len(summary.unseen_tasks) == 1
    for rows in read_splits(tmp_path / "out").values():
        for r in rows:  # text is the query pair's instruction; pixels prove which pair each path holds
            query = pair_id_of(tmp_path / "out" / r["source"])
            assert r["text"] == f"edit {r['task']} #{query}" and pair_id_of(tmp_path / "out" / r["target"]) == query
            assert pair_id_of(tmp_path / "out" / r["cond1"]) != query
    named = side_by_side_jsonl(tmp_path / "in2", {"a": 3, "b": 3}, with_task_field=True)
    prepare(cfg(), named, tmp_path / "out2")
    assert set(json.loads((tmp_path / "out2" / "manifest.json").read_text())["tasks"]) == {"a-named", "b-named"}


def test_users_own_pairs_as_two_files(tmp_path):
    src = two_file_json(tmp_path / "in", {"warm": 4, "cool": 3})
    summary = prepare(cfg("data.test_per_task=1"), src, tmp_path / "out")
    assert summary.samples["test_seen"] == 2 and summary.pairs == 7
    row = read_splits(tmp_path / "out")["test_seen"][0]
    query = pair_id_of(tmp_path / "out" / row["source"])
    expected = pair_image(query)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["target"])), expected[:, 24:])


def test_exif_orientation_is_applied_before_splitting(tmp_path):
    display = [pair_image(i, size=20) for i in range(3)]
    (tmp_path / "in" / "t").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    lines = []
    for i, arr in enumerate(display):
        Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "in" / "t" / f"{i}.png", exif=exif)
        lines.append(json.dumps({"img_name": f"t/{i}.png", "edit_instruction": "x"}))
    (tmp_path / "in" / "p.jsonl").write_text("\n".join(lines))
    prepare(cfg("data.test_per_task=0"), tmp_path / "in" / "p.jsonl", tmp_path / "out")
    row = read_splits(tmp_path / "out")["train"][0]
    query = pair_id_of(tmp_path / "out" / row["source"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / row["source"])), display[query][:, :20])


# ------------------------------------------------------------------------------------------------ atomicity


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "test_seen.jsonl"),
    RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file: No space left on device"),
])  # fmt: skip
def test_a_full_disk_is_one_line_and_leaves_nothing(raw, tmp_path, monkeypatch, capsys, error):
    """ENOSPC, as the OS raises it or as a library words it, is the user's situation: one line naming the output
    folder, not an internal error, and no half-written output."""
    from relation_cli.prepare import build

    def full(path, rows):
        raise error

    monkeypatch.setattr(build, "write_jsonl", full)
    assert main(["prepare", str(raw), "--output", str(tmp_path / "out"), "--workers", "1"]) == 1
    assert capsys.readouterr().err == (f"error: no space left on the disk (writing '{tmp_path / 'out'}'); free some "
                                       "space or write elsewhere, then run again\n")  # named by the output, not a temporary file
    assert leftovers(tmp_path, "out") == []


def test_interrupted_run_leaves_nothing(raw, tmp_path, monkeypatch):
    from relation_cli.prepare import build

    calls = []

    def failing_write(path, rows):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between two split files
        return real(path, rows)

    real = build.write_jsonl
    monkeypatch.setattr(build, "write_jsonl", failing_write)
    code = main(["prepare", str(raw), "--output", str(tmp_path / "out"), "--workers", "1"])
    assert code == 130 and calls == ["train.jsonl", "test_seen.jsonl"]
    assert leftovers(tmp_path, "out") == []


def test_failure_in_a_worker_leaves_nothing(raw, tmp_path, monkeypatch):
    def broken(job):
        raise MemoryError("out of memory")

    monkeypatch.setattr("relation_cli.prepare.decode.decode_pair", broken)
    with pytest.raises(MemoryError):
        prepare(cfg(), raw, tmp_path / "out")
    assert leftovers(tmp_path, "out") == []


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "syn"
    code = main(["prepare", "--synthetic", "3", "--output", str(out), "--unseen-task", "frame", "--unseen-task",
                 "flip_vertical", "--test-per-task", "1", "--per-task-cap", "4", "--seed", "2", "--workers", "1",
                 "--set", "data.synthetic_size=16"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert f"wrote {out}: 42 pairs in 14 tasks" in stdout and "train 24, test_seen 12, test_unseen 2" in stdout
    assert (out / "raw" / "mirror" / "Group1" / "labels.json").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert saved["synthetic_pairs"] == 3 and saved["unseen_task_names"] == ["frame", "flip_vertical"]
    assert (saved["per_task_cap"], saved["test_per_task"], saved["seed"]) == (4, 1, 2)
    assert json.loads((out / "manifest.json").read_text())["input"] == {
        "synthetic": {"pairs_per_task": 3, "size": 16}, "path": "raw"
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--synthetic", "3", "{raw}"], "not both"),
        ([], "no input"),
        (["{raw}", "--unseen-task", "nope"], "unseen task 'nope': not among"),
        (["{raw}", "--unseen-tasks", "6"], "leaves none to train on"),
        (["{raw}", "--per-task-cap", "0"], "data.per_task_cap"),
        (["{tmp}/nowhere"], "input '{tmp}/nowhere': not found"),
        (["{tmp}"], "no <task>/Group1/labels.json inside"),
        (["{up}"], "no <task>/Group1/labels.json inside (the Relation252K layout); '{raw}' has that layout: pass it;"),
        (["{tmp}/deep"], "no <task>/Group1/labels.json inside (the Relation252K layout); '{tmp}/deep/x/raw' has that "
                         "layout: pass it;"),
        (["{raw}/frame"], "; it is one task's folder: pass the folder that holds the tasks ('{raw}');"),
        (["{raw}/frame/Group1"], "; it is one group of one task: pass the folder that holds the tasks ('{raw}');"),
        (["{tmp}/x.csv"], "expected a Relation252K folder"),
        (["--synthetic", "1"], "data.synthetic_pairs"),
    ],
)
def test_cli_bad_arguments_are_one_line(raw, tmp_path, capsys, args, message):
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "deep" / "x").mkdir(parents=True)
    (tmp_path / "deep" / "x" / "raw").symlink_to(raw)  # the layout two levels down
    fill = lambda s: s.format(raw=raw, tmp=tmp_path, up=raw.parent)  # up: the layout one level down
    code = main(["prepare", *map(fill, args), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err and fill(message) in err, err
    assert leftovers(tmp_path, "out") == []


def test_the_layout_hint_names_folders_given_relative(raw, tmp_path, capsys, monkeypatch):
    """'.' inside a task's folder, or '..' inside a group's: the folder that holds the tasks is named by its path
    (it was '.', the folder just given)."""
    for inside, given in ((raw / "frame", "."), (raw / "frame" / "Group1", ".."), (raw / "frame" / "Group1", ".")):
        monkeypatch.chdir(inside)
        assert main(["prepare", given, "--output", str(tmp_path / "out")]) == 1
        assert f": pass the folder that holds the tasks ('{raw.resolve()}');" in capsys.readouterr().err
    assert leftovers(tmp_path, "out") == []


def test_prepare_given_its_own_output_says_it_is_ready(prepared, tmp_path, capsys):
    """prepare's output folder, or its train.jsonl, given to prepare again: one line saying it is prepared and where
    it goes (the rows file listed cond1, cond2 as unknown fields, entry by entry)."""
    out, _ = prepared
    for given, what in ((out, "a folder relation prepare wrote"),
                        (out / "train.jsonl", "rows relation prepare wrote (cond1, cond2, source, target)")):  # fmt: skip
        assert main(["prepare", str(given), "--output", str(tmp_path / "again")]) == 1
        assert capsys.readouterr().err == (f"error: input '{given}': {what}, ready to use: pass train.jsonl to relation "
                                           "train (train.data) and test_seen.jsonl / test_unseen.jsonl to relation eval "
                                           "(--input)\n")  # fmt: skip
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    (tmp_path / "rows.json").write_text(json.dumps(rows))  # the same rows as a JSON list, which prepare also reads
    assert main(["prepare", str(tmp_path / "rows.json"), "--output", str(tmp_path / "again")]) == 1
    assert "': rows relation prepare wrote (cond1, cond2, source, target), ready to use" in capsys.readouterr().err
    assert leftovers(tmp_path, "again") == []


def test_a_raw_folder_that_holds_a_manifest_is_still_read(raw, tmp_path, capsys):
    """A Relation252K-layout folder that also has a manifest.json and a train.jsonl is read as the layout."""
    shutil.copytree(raw, tmp_path / "raw")
    (tmp_path / "raw" / "manifest.json").write_text("{}")
    (tmp_path / "raw" / "train.jsonl").write_text("")
    assert main(["prepare", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--set", "data.workers=1"]) == 0
    assert (tmp_path / "out" / "train.jsonl").is_file()


def test_several_layouts_below_are_listed(tmp_path, capsys):
    """A folder with the layout in several folders below it (two downloads, one per split): they are named, up to 3."""
    for name in ("a", "b", "c", "d"):
        (tmp_path / "in" / name / "task" / "Group1").mkdir(parents=True)
        (tmp_path / "in" / name / "task" / "Group1" / "labels.json").write_text("[]")
    (tmp_path / "in" / "link").symlink_to(tmp_path / "in" / "a")  # the same folder again: counted once
    assert main(["prepare", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    where = tmp_path / "in"
    assert f"; 4 folders in it have that layout ('{where / 'a'}', '{where / 'b'}', '{where / 'c'}' and 1 more): pass one;" in err, err
    assert leftovers(tmp_path, "out") == []


def test_cli_refuses_an_existing_output(raw, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["prepare", str(raw), "--output", str(tmp_path / "out")]) == 1
    assert "already exists and is not an empty folder (it holds 'keep.txt'); give a new folder, or remove this one first\n" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_bytes(b"")  # a file the user's file browser does not show
    assert main(["prepare", str(raw), "--output", str(tmp_path / "hidden")]) == 1
    assert "already exists and is not an empty folder (it holds '.DS_Store'); give a new folder" in capsys.readouterr().err


def test_relation_infer_batch_reads_prepared_rows(tmp_path, monkeypatch):
    """``relation infer --input test_seen.jsonl`` decodes every row of prepare's output (model faked: fast)."""
    raw = make_synthetic(tmp_path / "raw", pairs_per_task=3, size=32, tasks=["mirror", "invert"])
    prepare(cfg("data.test_per_task=1"), raw, tmp_path / "data")
    seen = []

    def fake_edit(pipe, inputs, config, on_step=None, prompts=None):
        seen.append((inputs.exemplar_a.size, inputs.query.size, inputs.prompt))
        return np.zeros((32, 32, 3), np.float32)

    monkeypatch.setattr("relation_cli.model.load_pipeline", lambda config: object())
    monkeypatch.setattr("relation_cli.infer.edit", fake_edit)
    args = ["infer", "--input", str(tmp_path / "data" / "test_seen.jsonl"), "--output-dir", str(tmp_path / "o")]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["000000.png", "000001.png"]
    assert sorted(seen) == [((32, 32), (32, 32), "Invert all the colours."),
                            ((32, 32), (32, 32), "Mirror the image from left to right.")]  # fmt: skip


def test_synthetic_swap_colours_is_decided_by_what_the_image_shows(tmp_path):
    """The new background is the colour of the shape covering most pixels (clearly the largest), so the
    target follows from the before image alone; the shapes take the old background's colour."""
    from relation_cli.prepare.synthetic import BACKGROUNDS, CLEAR_LARGEST, SHAPE_COLOURS

    raw = make_synthetic(tmp_path / "raw", pairs_per_task=12, seed=1, size=32, tasks=["swap_colours"])
    for path in sorted((raw / "swap_colours" / "Group1").glob("*.png")):
        pair = np.asarray(Image.open(path).convert("RGB"))
        before, after = pair[:, :32].reshape(-1, 3), pair[:, 32:].reshape(-1, 3)
        colours, counts = np.unique(before, axis=0, return_counts=True)
        present = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts)}
        (bg,) = [c for c in present if c in BACKGROUNDS.values()]
        shapes = sorted(((n, c) for c, n in present.items() if c in SHAPE_COLOURS.values()), reverse=True)
        assert shapes and (len(shapes) == 1 or shapes[0][0] >= CLEAR_LARGEST * shapes[1][0]), path.name
        was_bg = np.all(before == bg, axis=1)
        assert np.all(after[was_bg] == shapes[0][1]) and np.all(after[~was_bg] == bg), path.name


def test_every_group_folder_of_a_task_is_read_as_that_task(tmp_path):
    """The released layout has ``<task>/Group1/labels.json``; a task's other ``Group<N>`` folders are more pairs
    of the same task (README, Prepare), and a dropped task is named by its Group1 file."""
    from relation_cli.prepare.sources import read_source

    for group, ids in (("Group1", (0, 1)), ("Group2", (2,))):
        folder = tmp_path / "in" / "blur" / group
        folder.mkdir(parents=True)
        for i in ids:
            Image.fromarray(pair_image(i)).save(folder / f"{i}.png")
        (folder / "labels.json").write_text(json.dumps([{"left_image_description": "l", "right_image_description": "r",
                                                         "edit_instruction": "x", "img_name": f"{i}.png"} for i in ids]))  # fmt: skip
    source = read_source(tmp_path / "in")
    assert [p.task for p in source.pairs] == ["blur"] * 3
    assert source.folders == {"blur": tmp_path / "in" / "blur" / "Group1" / "labels.json"}
