"""One writer per output folder: a second train, batch infer or eval into a folder another command is writing
stops with one line and writes nothing; a new run does not mix its logs with an unfinished earlier run's."""

from __future__ import annotations

import pytest
from conftest import tiny_overrides
from eval_helpers import tiny_encoders, write_test_file
from filelock import FileLock
from helpers import analogy_dataset
from test_train import train_args

from relation_cli.cli import main
from relation_cli.errors import RelationError
from relation_cli.fs import LOCK_NAME, check_not_busy, hold_folder, holding_folder


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def held(tmp_path):
    """``tmp_path/out``, locked as a running command holds it (another FileLock: another open file)."""
    out = tmp_path / "out"
    out.mkdir()
    lock = FileLock(out / LOCK_NAME, timeout=0)
    lock.acquire()
    yield out
    lock.release()


def test_the_lock_is_free_again_once_released_and_checking_writes_nothing(tmp_path):
    check_not_busy(tmp_path, "output dir")  # no lock file: nothing created
    assert list(tmp_path.iterdir()) == []
    with holding_folder(tmp_path / "new", "output dir"):
        with pytest.raises(RelationError, match="another relation command is writing to it now"):
            check_not_busy(tmp_path / "new", "output dir")
        with pytest.raises(RelationError) as e:
            hold_folder(tmp_path / "new", "--output-dir")
        assert str(e.value) == (f"--output-dir '{tmp_path / 'new'}': another relation command is writing to it now; "
                                "wait for it to finish, or choose another --output-dir")  # fmt: skip
    check_not_busy(tmp_path / "new", "output dir")
    hold_folder(tmp_path / "new", "output dir").release()


def _train(tiny_model, tmp_path, out):
    return train_args(tiny_model, analogy_dataset(tmp_path / "data"), out, 1)


def _batch(tiny_model, tmp_path, out):
    rows = write_test_file(tmp_path / "rows", "rows.jsonl", rows=1)
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    return ["infer", "--input", str(rows), "--output-dir", str(out), "--steps", "1", *sets]


def _eval(tiny_model, tmp_path, out):
    data = write_test_file(tmp_path / "data", rows=1)
    clip, dino = tiny_encoders(tmp_path / "encoders")
    sets = [*tiny_overrides(tiny_model), f"eval.clip_model={clip}", f"eval.dino_model={dino}", "eval.fid=false"]
    return ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1", *[x for o in sets for x in ("--set", o)]]


@pytest.mark.parametrize("args, what", [(_train, "train.output_dir"), (_batch, "output dir"), (_eval, "output dir")],
                         ids=["train", "batch infer", "eval"])  # fmt: skip
def test_a_second_command_into_a_folder_being_written_stops_and_writes_nothing(tiny_model, tmp_path, held, capsys,
                                                                               args, what):  # fmt: skip
    argv = args(tiny_model, tmp_path, held)
    before = snapshot(held)
    for extra in (["--dry-run"], []):
        if extra and argv[0] == "eval":
            continue  # eval has no dry run
        assert main(argv + extra) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {what} '{held}': another relation command is writing to it now; wait for it to "
                       f"finish, or choose another {what}"), err  # fmt: skip
        assert snapshot(held) == before


@pytest.mark.parametrize("args", [_train, _batch, _eval], ids=["train", "batch infer", "eval"])
def test_the_folder_is_free_after_a_command_ends(tiny_model, tmp_path, args):
    """The lock goes with the command: the same command again (a rerun, a resume) is not refused."""
    out = tmp_path / "out"
    argv = args(tiny_model, tmp_path, out)
    assert main(argv) == 0
    assert (out / LOCK_NAME).is_file()
    check_not_busy(out, "output dir")


def _unfinished_run(tiny_model, tmp_path, saved_config: bool = True):
    """A folder like a run's killed before its first checkpoint: tensorboard logs, a validation image and (the
    mark of a relation run) its saved config.yaml; and the arguments of a new run there."""
    from relation_cli.config import load_config, save_config
    from test_train import train_overrides

    out = tmp_path / "run"
    data = analogy_dataset(tmp_path / "data")
    old = out / "logs" / "relation" / "events.out.tfevents.1.old"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"earlier run")
    (out / "validation").mkdir()
    (out / "validation" / "step-00000001.png").write_bytes(b"earlier run")
    if saved_config:
        save_config(load_config(None, train_overrides(tiny_model, data, out, 1)), out / "config.yaml")
    return out, old, train_args(tiny_model, data, out, 1)


def test_a_new_run_clears_the_logs_of_a_run_that_left_no_checkpoint(tiny_model, tmp_path, capsys):
    """tensorboard reads every events file under logs: a killed run's would draw a second curve into the new
    run's; its validation images would sit among the new run's. Both go, with one line saying so; the dry
    run says it will."""
    out, old, argv = _unfinished_run(tiny_model, tmp_path)
    assert main(argv + ["--dry-run"]) == 0 and old.is_file()  # a dry run deletes nothing, and says what the run will
    said = " ".join(capsys.readouterr().out.split())
    assert (f"note: train.output_dir '{out}': the run will first remove the tensorboard logs and 1 validation image "
            "of an earlier run in this folder that left no checkpoint") in said, said  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = " ".join((captured.out + captured.err).split())
    assert "removed the tensorboard logs and 1 validation image of an earlier run in this folder that left no " \
           "checkpoint, so that they do not mix with this run's" in err, err  # fmt: skip
    assert not old.exists() and list((out / "logs").rglob("events.out.tfevents*"))  # this run's only
    assert all(p.read_bytes() != b"earlier run" for p in [*(out / "logs").rglob("*"), *(out / "validation").iterdir()]
               if p.is_file())  # fmt: skip


def test_logs_and_validation_folders_of_no_relation_run_are_never_removed(tiny_model, tmp_path, capsys):
    """Without a saved config.yaml nothing marks the folders as a run's: a user's files in them stay."""
    out, old, argv = _unfinished_run(tiny_model, tmp_path, saved_config=False)
    mine = out / "logs" / "notes.txt"
    mine.write_text("important")
    assert main(argv) == 0
    assert "removed" not in capsys.readouterr().err
    assert old.read_bytes() == b"earlier run" and mine.read_text() == "important"
    assert (out / "validation" / "step-00000001.png").is_file()


def test_a_run_that_left_checkpoints_while_this_one_loaded_is_not_overwritten(tiny_model, tmp_path, capsys,
                                                                               monkeypatch):  # fmt: skip
    """Two new runs started together into one folder both pass the first check; the one that takes the lock
    second finds the other's checkpoints and stops, deleting nothing, and frees the lock."""
    from relation_cli.train import recipe

    out, old, argv = _unfinished_run(tiny_model, tmp_path)
    real = recipe.hold_folder

    def the_other_run_finished_meanwhile(folder, what):
        (folder / "checkpoints" / "checkpoint-00000001").mkdir(parents=True)
        return real(folder, what)

    monkeypatch.setattr(recipe, "hold_folder", the_other_run_finished_meanwhile)
    assert main(argv) == 1
    assert "holds checkpoints of an earlier run; pass --resume" in capsys.readouterr().err
    assert old.is_file() and (out / "validation" / "step-00000001.png").is_file()
    check_not_busy(out, "train.output_dir")


def test_a_folder_another_command_filled_meanwhile_is_kept_and_this_result_discarded(tmp_path):
    """prepare writes a hidden folder renamed into place at the end: when a second prepare into the same output
    finished first, the later one says so in one line instead of an OSError, and leaves theirs as it was."""
    from relation_cli.fs import atomic_dir

    out = tmp_path / "data"
    with pytest.raises(RelationError) as e, atomic_dir(out) as tmp:
        (tmp / "train.jsonl").write_text("mine\n")
        out.mkdir()
        (out / "train.jsonl").write_text("theirs\n")  # the other prepare, renamed into place meanwhile
    assert str(e.value) == (f"output '{out}': another command wrote it while this one was working; this one's "
                            "result is discarded and theirs kept")  # fmt: skip
    assert (out / "train.jsonl").read_text() == "theirs\n" and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_output_leaves_no_parent_folders_it_made(tmp_path):
    """An output under folders that did not exist (``-o runs/new/data``): a failure or Ctrl+C removes the parents
    it made, while empty; ones that existed before, or that another writer put a file in, stay."""
    from relation_cli.fs import atomic_dir

    (tmp_path / "kept").mkdir()
    for error in (RelationError("bad row"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_dir(tmp_path / "kept" / "new" / "deeper" / "data") as tmp:
            (tmp / "train.jsonl").write_text("half\n")
            raise error
        assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    with pytest.raises(RelationError), atomic_dir(tmp_path / "kept" / "new" / "data"):
        (tmp_path / "kept" / "new" / "other.txt").write_text("another writer's\n")
        raise RelationError("bad row")
    assert [p.name for p in (tmp_path / "kept" / "new").iterdir()] == ["other.txt"]
    with atomic_dir(tmp_path / "made" / "data") as tmp:
        (tmp / "train.jsonl").write_text("whole\n")
    assert (tmp_path / "made" / "data" / "train.jsonl").read_text() == "whole\n"


def test_a_finished_run_without_its_checkpoints_is_not_trained_over(tiny_model, tmp_path, capsys):
    """Deleting checkpoints to keep only the exported weights is common: a new run there would replace them."""
    import shutil

    out = tmp_path / "run"
    argv = train_args(tiny_model, analogy_dataset(tmp_path / "data"), out, 1)
    assert main(argv) == 0
    shutil.rmtree(out / "checkpoints")
    before = snapshot(out)
    capsys.readouterr()
    for extra in (["--dry-run"], []):
        assert main(argv + extra) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"error: train.output_dir '{out}': holds the exported weights of a finished run (step 1; its "
                       "checkpoints are gone), which a new run would replace: use them with --run, or choose another "
                       "train.output_dir"), err  # fmt: skip
    assert snapshot(out) == before


def test_the_run_section_cannot_be_set(capsys):
    """run: records what a training produced (read by --run); a --set of it would be ignored and then misread."""
    assert main(["config", "--set", "run.base=/nowhere"]) == 1
    assert capsys.readouterr().err.strip() == ("error: override 'run.base=/nowhere': the run section is written by "
                                               "relation train and read by --run DIR; it cannot be set")  # fmt: skip


def test_the_dry_run_checks_the_validation_rows_as_the_run_does(tiny_model, tmp_path, capsys):
    """An empty test_seen.jsonl beside the data (prepare may write one, and warns) or named by
    train.validation_data is refused by the dry run as by the run, before anything is written."""
    data = analogy_dataset(tmp_path / "data")
    (data.parent / "test_seen.jsonl").write_text("")
    named = f"train.validation_data={data.parent / 'test_seen.jsonl'}"
    for argv, key in ((train_args(tiny_model, data, tmp_path / "run", 1), "validation rows (the test_seen.jsonl"),
                      (train_args(tiny_model, data, tmp_path / "run", 1, named), "train.validation_data: ")):
        for extra in (["--dry-run"], []):
            assert main(argv + extra) == 1
            err = capsys.readouterr().err
            assert key in err and "set train.validation_samples=0 to train without validation" in err, err
            assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("targets, message", [
    ("[nonsense, attn.to_z]", "lora.targets: 'nonsense', 'attn.to_z' name no linear layer of the transformer (names "
                              "end like "),
    ("[]", "lora.targets: List should have at least 1 item"),
])  # fmt: skip
def test_lora_targets_that_match_nothing_are_refused_by_the_dry_run_and_the_run(tiny_model, tmp_path, capsys,
                                                                                 targets, message):  # fmt: skip
    argv = train_args(tiny_model, analogy_dataset(tmp_path / "data"), tmp_path / "run", 1, f"lora.targets={targets}")
    for extra in (["--dry-run"], []):
        assert main(argv + extra) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "internal error" not in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


def test_a_killed_runs_temporary_folder_is_removed_and_a_running_writers_is_kept(tmp_path, caplog):
    """atomic_dir (prepare, convert, init-model, train's exports) first deletes the temporary folders of its
    destination whose writer is gone (SIGKILL, the OOM killer: no cleanup ran), with a note; a folder whose lock
    file another process holds is being written and stays, and so do other destinations' folders."""
    from relation_cli.fs import atomic_dir

    killed = tmp_path / ".model.0badc0de"
    killed.mkdir()
    (killed / "w.safetensors").write_bytes(b"x" * 2000)
    (tmp_path / ".model.0badc0de.lock").write_text("")  # a killed writer's lock file stays, and is free
    users = tmp_path / ".model.20240115"  # a user's dated folder: no lock file beside it, never atomic_dir's
    users.mkdir()
    running = tmp_path / ".model.feedf00d"
    running.mkdir()
    lock = FileLock(f"{running}.lock", timeout=0)
    lock.acquire()
    (tmp_path / ".modelx.0badc0de").mkdir()  # another destination's
    with caplog.at_level("WARNING", logger="relation_cli.fs"), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "f").write_text("1")
    lock.release()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".model.20240115", ".model.feedf00d", ".model.feedf00d.lock", ".modelx.0badc0de", "model"], names
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"note: removed '{killed}' (2.0 KB), left by a run that was killed while writing '{tmp_path / 'model'}'"]
