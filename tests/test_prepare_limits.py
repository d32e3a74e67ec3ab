"""relation prepare at the edges of its settings: a synthetic side over the pixel limit, splits left empty by the
cap or the task sizes, more exemplar pairs asked than the tasks hold."""

from __future__ import annotations

import json

import pytest
from prepare_helpers import read_splits, side_by_side_jsonl

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.errors import RelationError
from relation_cli.prepare import prepare


def cfg(*overrides: str):
    return load_config(None, ["data.workers=1", *overrides])


def synthetic(*overrides: str):
    return cfg("data.synthetic_pairs=3", "data.synthetic_size=16", *overrides)


# ------------------------------------------------------------------------------------------ synthetic size


SMALL = "46x23 = 1,058 pixels, over data.max_image_pixels (1,000); use data.synthetic_size=22 or less"


@pytest.mark.parametrize(
    "families, size, limit, message",
    [([], 23, 1000, SMALL),
     (["rotate"], 23, 1000, SMALL),
     ([], 100000, 64_000_000, "200000x100000 = 20,000,000,000 pixels, over data.max_image_pixels (64,000,000); use "
                              "data.synthetic_size=5656 or less"),
     ([], 16, 300, "32x16 = 512 pixels, over data.max_image_pixels (300); raise data.max_image_pixels")],
)  # fmt: skip
def test_a_synthetic_side_over_the_limit_is_refused_before_anything_is_written(tmp_path, monkeypatch, families, size,
                                                                               limit, message):  # fmt: skip
    def no_drawing(*args, **kwargs):  # 100000 would take tens of GB
        raise AssertionError("generation started")

    monkeypatch.setattr("relation_cli.prepare.build.make_synthetic", no_drawing)
    monkeypatch.setattr("relation_cli.prepare.build.make_families", no_drawing)
    config = synthetic(f"data.synthetic_size={size}", f"data.max_image_pixels={limit}",
                       f"data.synthetic_families={families}")  # fmt: skip
    with pytest.raises(RelationError) as e:
        prepare(config, None, tmp_path / "x" / "out")
    assert str(e.value).startswith(f"data.synthetic_size={size}: a synthetic pair image is {message}"), str(e.value)
    assert not list(tmp_path.iterdir())  # not even the output's parent folder


def test_the_largest_synthetic_side_under_the_limit_prepares(tmp_path):
    out = tmp_path / "out"
    assert main(["prepare", "--synthetic", "3", "--output", str(out), "--workers", "1", "--set",
                 "data.synthetic_size=22", "--set", "data.max_image_pixels=968"]) == 0  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["input"]["synthetic"]["size"] == 22


def test_the_cli_says_the_synthetic_side_in_one_line_and_leaves_nothing(tmp_path, capsys):
    code = main(["prepare", "--synthetic", "3", "--output", str(tmp_path / "out"), "--set", "data.synthetic_size=23",
                 "--set", "data.max_image_pixels=1000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err == ("error: data.synthetic_size=23: a synthetic pair image is 46x23 = 1,058 pixels, over "
                                 "data.max_image_pixels (1,000); use data.synthetic_size=22 or less, or raise "
                                 "data.max_image_pixels\n"), err  # fmt: skip
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ empty splits


def test_a_cap_that_leaves_no_training_sample_is_warned(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--synthetic", "6", "--output", str(out), "--workers", "1", "--per-task-cap", "1",
                 "--set", "data.synthetic_size=16"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "samples: train 0, test_seen 14, test_unseen 0" in captured.out
    warning = ("warning: train.jsonl is empty: data.per_task_cap=1 is used up by every seen task's test_seen samples, "
               "which are taken first (up to data.test_per_task=30 per task), so no sample is left for training; "
               "raise --per-task-cap above 1 or lower --test-per-task\n")  # fmt: skip
    assert warning in captured.err, captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == [warning.removeprefix("warning: ").strip()]


def test_seen_tasks_left_without_training_samples_are_warned_by_name(tmp_path):
    """A cap used up by some seen tasks' test samples (tasks big enough for a test query) leaves them tested as
    seen but never trained on, while a small task still trains: the warning names those tasks."""
    src = side_by_side_jsonl(tmp_path / "src", {"inv": 4, "mir": 3, "two": 2})
    summary = prepare(cfg("data.per_task_cap=1"), src, tmp_path / "out")
    assert summary.samples["train"] == 1 and summary.warnings == [
        "2 seen tasks got no training sample (inv; mir): data.per_task_cap=1 is used up by their test_seen samples, "
        "taken first, so they are tested as seen but never trained on; raise --per-task-cap above 1 or lower "
        "--test-per-task"
    ], summary.warnings


def test_tasks_too_small_for_a_test_query_and_unseen_tasks_without_samples_are_warned(tmp_path):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 2, "t2": 2, "t3": 2})
    summary = prepare(cfg("data.unseen_task_names=[t3]"), src, tmp_path / "small")
    assert summary.samples == {"train": 4, "test_seen": 0, "test_unseen": 2}
    assert len(summary.warnings) == 1 and summary.warnings[0].startswith(
        "test_seen.jsonl is empty: no seen task has pairs to spare for a test query (at least 2 stay for training, "
        "at most data.max_test_fraction=0.5 of a task's pairs are test queries)"
    ), summary.warnings
    summary = prepare(cfg("data.unseen_task_names=[t3]", "data.test_per_task=0"), src, tmp_path / "none")
    assert summary.warnings == [  # test_seen is empty as asked: no warning for it
        "test_unseen.jsonl is empty although 1 task is held out as unseen: data.test_per_task=0 gives them no "
        "samples; set --test-per-task above 0 or hold out no task"
    ]


def test_a_usual_run_has_no_warning(tmp_path, capsys):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 6, "t2": 6, "t3": 5})
    summary = prepare(cfg("data.test_per_task=2", "data.unseen_task_names=[t3]"), src, tmp_path / "out")
    assert all(summary.samples.values()) and summary.warnings == []
    assert "warning" not in capsys.readouterr().err
    assert "warnings" not in json.loads((tmp_path / "out" / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------ exemplar pairs


def test_more_exemplar_pairs_than_tasks_hold_are_noted_and_the_manifest_says_what_rows_got(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--synthetic", "6", "--output", str(out), "--workers", "1", "--set",
                 "data.synthetic_size=16", "--set", "data.exemplar_pairs=50"]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    notes = [line for line in stdout.splitlines() if "data.exemplar_pairs" in line]
    assert len(notes) == 1 and notes[0].startswith(
        "note: data.exemplar_pairs=50: test rows got 3 exemplar pairs, fewer than asked in 14 tasks "
        "(manifest.json counts.exemplar_pairs): a row's pairs are other pairs of its own task, never its query, "
        "and in a seen task only its training pairs (blur: at most 3;"
    ), stdout
    assert {len(r["exemplars"]) for r in read_splits(out)["test_seen"]} == {3}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["exemplar_pairs"] == 50  # what was asked
    assert manifest["counts"]["exemplar_pairs"] == {"min": 3, "max": 3}  # what the rows hold
    assert notes[0].removeprefix("note: ") in manifest["notes"]


def test_exemplar_pairs_the_tasks_can_give_get_no_note(tmp_path):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 6, "t2": 6, "t3": 5})
    summary = prepare(cfg("data.test_per_task=2", "data.unseen_task_names=[t3]", "data.exemplar_pairs=3"), src,
                      tmp_path / "out")  # fmt: skip
    assert not [n for n in summary.notes if "exemplar" in n], summary.notes
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["exemplar_pairs"] == {"min": 3, "max": 3}
    one = prepare(cfg("data.test_per_task=2"), src, tmp_path / "one")  # one pair per row: settings says it all
    assert "exemplar_pairs" not in json.loads((one.output / "manifest.json").read_text())["counts"]
