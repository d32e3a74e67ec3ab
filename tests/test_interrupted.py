"""Killed with SIGKILL at random points, then run again: prepare, train and eval leave valid outputs.

Each test kills a real ``relation`` process (tests/interrupt_worker.py runs the CLI and, for the chosen
moment, stops in the middle of writing a file so the kill lands there), then checks that nothing
truncated sits where a later run looks, and that the rerun finishes with the same results as a run
that was never interrupted. The moment is drawn at random: ``RELATION_KILL_SEED`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_overrides
from helpers import analogy_dataset, random_image
from prepare_helpers import tree_bytes
from safetensors.torch import load_file

from relation_cli.cli import main
from relation_cli.train import checkpoint as ckpt

WORKER = Path(__file__).with_name("interrupt_worker.py")
pytestmark = pytest.mark.usefixtures("one_thread")  # as the killed process (OMP_NUM_THREADS=1): bit-equal weights
SEED = int(os.environ.get("RELATION_KILL_SEED", random.randrange(10**6)))


@pytest.fixture()
def rng() -> random.Random:
    print(f"RELATION_KILL_SEED={SEED}")  # shown with a failure: rerun with it to replay the same kill
    return random.Random(SEED)


def start(moment: str, args: list, tmp: Path) -> tuple[subprocess.Popen, Path]:
    ready = tmp / "ready"
    env = {**os.environ, "RELATION_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(WORKER), moment, str(ready), *map(str, args)]
    # A session of its own: the kill takes the process group, decoding workers included.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    return proc, ready


def kill_when_ready(proc: subprocess.Popen, ready: Path, timeout: float = 240, sig: int = signal.SIGKILL) -> None:
    """SIGKILL (or ``sig``) the process group once the worker reached its moment."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            output = proc.stdout.read().decode()[-3000:]
            pytest.fail(f"the run ended (exit {proc.returncode}) before the kill:\n{output}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail("the run never reached the moment of the kill")
        time.sleep(0.02)
    kill(proc, sig)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)
    proc.wait()
    proc.stdout.close()


# ------------------------------------------------------------------------------------------ prepare

PREPARE = ["--synthetic", "12", "--test-per-task", "2", "--unseen-task", "frame", "--set", "data.synthetic_size=16"]


def test_prepare_killed_anywhere_leaves_nothing_trusted(tmp_path, rng, caplog):
    reference = tmp_path / "reference"
    assert main(["prepare", *PREPARE, "--output", str(reference), "--workers", "1"]) == 0
    expected = tree_bytes(reference, skip=("config.yaml",))  # which records --workers
    # In the middle of writing train.jsonl, or at a random time (as likely in start-up as in decoding).
    for moment in ("write:train.jsonl:1", "none"):
        out = tmp_path / moment.split(":")[0]
        proc, ready = start(moment, ["prepare", *PREPARE, "--output", out, "--workers", "2"], tmp_path)
        if moment == "none":
            time.sleep(rng.uniform(0.0, 2.0))
            kill(proc)
        else:
            kill_when_ready(proc, ready)
            half = [p for p in tmp_path.glob(".write.*/train.jsonl")]
            assert half and half[0].read_bytes() and half[0].read_bytes() != (reference / "train.jsonl").read_bytes()
        if out.exists():  # killed after the folder was renamed into place: it is complete
            assert tree_bytes(out, skip=("config.yaml",)) == expected
            continue
        # At most a hidden temporary folder is left beside it, which no run reads: the rerun starts afresh,
        # and deletes it (its writer's lock is free), saying so.
        left = [p for p in tmp_path.glob(f".{out.name}.*") if p.is_dir()]
        caplog.clear()
        assert main(["prepare", *PREPARE, "--output", str(out), "--workers", "1"]) == 0
        assert tree_bytes(out, skip=("config.yaml",)) == expected
        assert list(tmp_path.glob(f".{out.name}.*")) == []  # the folders and their lock files
        err = caplog.text
        assert all(f"note: removed '{p}' (" in err and f"left by a run that was killed while writing '{out}'" in err
                   for p in left), err  # fmt: skip
        assert moment == "none" or left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_prepare_stopped_by_sigterm_or_sighup_cleans_up_like_ctrl_c(tmp_path, sig):
    """kill, timeout, a job scheduler (SIGTERM) or a closed terminal (SIGHUP) in the middle of writing: exit 130,
    one line, and the temporary folder is gone (as after Ctrl-C), so nothing is left for the next run to clear."""
    out = tmp_path / "write"
    proc, ready = start("write:train.jsonl:1", ["prepare", *PREPARE, "--output", out, "--workers", "1"], tmp_path)
    deadline = time.monotonic() + 240
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, sig)  # the CLI process only, as a scheduler or a closing terminal signals it
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130 and output.strip().splitlines()[-1] == "error: interrupted", output
    assert not out.exists() and list(tmp_path.glob(".write*")) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
@pytest.mark.parametrize("args, status", [(["--help"], 0), (["infer", "--bogus"], 1)])
def test_a_stop_after_the_command_has_finished_exits_with_its_status(sig, args, status, tmp_path):
    """A stop arriving after the command has said what it did (right after, and during Python's shutdown, from an
    atexit handler) leaves the process to end with the command's own status: not 143 (SIGTERM's), nor a
    KeyboardInterrupt traceback; the shutdown's own work (the atexit handler's) still runs to its end."""
    done = tmp_path / "atexit-done"
    code = (f"import atexit, os, signal, sys, time\nfrom relation_cli.cli import main\n"
            f"def late():\n    os.kill(os.getpid(), {int(sig)}); time.sleep(0.2); open({str(done)!r}, 'w').close()\n"
            f"atexit.register(late)\nsys.argv = ['relation', *{args!r}]\n"
            f"code = main()\nos.kill(os.getpid(), {int(sig)})\ntime.sleep(0.2)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    assert done.is_file()


def test_main_called_with_arguments_leaves_the_signal_handlers_alone(capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert main(["--help"]) == 0
    assert {s: signal.getsignal(s) for s in before} == before  # in-process callers (tests, the page) keep theirs


# ------------------------------------------------------------------------------------------ train


def train_args(model: Path, data: Path, out: Path) -> list[str]:
    sets = [f"model.base={model / 'base'}", f"model.image_encoder={model / 'image_encoder'}", f"train.data={data}",
            f"train.output_dir={out}", "train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=3",
            "lora.rank=4", "train.batch_size=2", "train.validation_samples=0", "train.learning_rate=1e-3",
            "train.exemplar_dropout=0.5", "infer.max_sequence_length=16"]  # fmt: skip
    return ["train"] + [x for s in sets for x in ("--set", s)]


def weights(out: Path) -> dict[str, torch.Tensor]:
    state = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    adapter = load_file(out / "adapter" / "diffusion_pytorch_model.safetensors")
    state.update({f"adapter.{k}": v for k, v in adapter.items()})
    return state


def test_train_killed_while_saving_a_checkpoint_resumes_to_identical_weights(tiny_model, tmp_path, rng, capsys):
    data = analogy_dataset(tmp_path / "data", size=(32, 32))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(train_args(tiny_model, data, straight)) == 0
    # Killed while checkpoint 2 is being written: in the middle of one of its three tensor files, or once
    # it is sealed but not yet renamed into place. Checkpoint 1 is complete.
    moment = rng.choice([f"write:.tmp-checkpoint-00000002:{n}" for n in (1, 2, 3)] + ["publish:2"])
    proc, ready = start(moment, train_args(tiny_model, data, killed), tmp_path)
    kill_when_ready(proc, ready)
    root = killed / "checkpoints"
    assert [p.name for p in ckpt.checkpoints(root)] == ["checkpoint-00000001"], moment
    assert ckpt.verify(root / "checkpoint-00000001") is None
    assert (root / ".tmp-checkpoint-00000002").is_dir() and not (killed / "lora").exists()
    if moment.startswith("write"):  # a truncated safetensors file, never under a name resume trusts
        assert ckpt.verify(root / ".tmp-checkpoint-00000002") is not None

    assert main(train_args(tiny_model, data, killed) + ["--resume"]) == 0
    printed = capsys.readouterr()
    assert "resumed from" in printed.out + printed.err
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after a kill at {moment}"
    assert all(ckpt.verify(p) is None for p in ckpt.checkpoints(root))
    assert not (root / ".tmp-checkpoint-00000002").exists()


# ------------------------------------------------------------------------------------------ eval


def eval_args(model: Path, data: Path, out: Path) -> list[str]:
    sets = [f"model.base={model / 'base'}", f"model.image_encoder={model / 'image_encoder'}",
            f"adapter.path={model / 'adapter'}", "infer.max_sequence_length=16", "eval.clip_model=", "eval.dino_model=",
            "eval.fid=false", "eval.baselines=[copy_query]"]  # fmt: skip
    args = ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1"]
    return args + [x for s in sets for x in ("--set", s)]


def outputs(out: Path) -> list[Path]:
    """The outputs a run trusts (not the hidden temporary file a kill can leave beside them)."""
    return sorted(p for p in out.glob("seen/*/*.png") if not p.name.startswith("."))


def temps(out: Path) -> list[Path]:
    """The hidden temporary image files under ``out`` (``.000001.png.<8 hex>.png``)."""
    return sorted(p for p in out.rglob(".*.png") if re.fullmatch(r"\.\d{6}\.png\.[0-9a-f]{8}\.png", p.name))


def test_eval_killed_while_writing_an_output_resumes_with_the_same_outputs(tiny_model, tmp_path, rng):
    from eval_helpers import write_test_file

    data = write_test_file(tmp_path / "data", rows=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(eval_args(tiny_model, data, straight)) == 0
    n = rng.randint(1, 4)  # 2 rows x (relation, copy_query)
    proc, ready = start(f"write:{killed}:{n}", eval_args(tiny_model, data, killed), tmp_path)
    kill_when_ready(proc, ready)
    done = outputs(killed)
    assert len(done) == n - 1, f"kill at output {n}"
    assert len(temps(killed)) == 1  # the n-th, half-written under its temporary name
    for path in done:  # every output under its real name is complete
        assert path.read_bytes() == (straight / path.relative_to(killed)).read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in done}
    json.loads((killed / "generation.json").read_text())

    assert main(eval_args(tiny_model, data, killed)) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # reused, not made again
    assert temps(killed) == []  # the rerun deleted the kill's temporary file before making that output again
    ours = {p.relative_to(killed) for p in outputs(killed)}
    assert ours == {p.relative_to(straight) for p in outputs(straight)}
    for rel in ours:
        assert (killed / rel).read_bytes() == (straight / rel).read_bytes(), rel
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["generation"] == {"written": 4 - (n - 1), "reused": n - 1, "processes": 1}


def test_batch_infer_killed_while_writing_an_output_resumes_with_the_same_outputs(tiny_model, tmp_path, rng):
    """Killed while writing the n-th output, batch infer's folder holds the n - 1 before it, each recorded
    (generation.json and its journal of rows); the rerun reuses them and makes the rest, as a straight run."""
    from relation_cli.evaluate.settings import ROWS_JOURNAL, read_settings

    for i in range(3):
        random_image(tmp_path / f"{i}.png", (32, 32), seed=i)
    rows = [{"cond1": "0.png", "cond2": "1.png", "source": "2.png", "text": t} for t in ("one", "two", "three", "four")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [*tiny_overrides(tiny_model), "model.device=cpu", "infer.max_sequence_length=16"]

    def args(out: Path) -> list[str]:
        return ["infer", "--input", str(tmp_path / "rows.jsonl"), "--output-dir", str(out), "--steps", "1",
                *(x for s in sets for x in ("--set", s))]  # fmt: skip

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(args(straight)) == 0
    n = rng.randint(1, 4)
    proc, ready = start(f"write:{killed}:{n}", args(killed), tmp_path)
    kill_when_ready(proc, ready)
    done = sorted(p for p in killed.glob("*.png") if not p.name.startswith("."))
    assert [p.name for p in done] == [f"{i:06d}.png" for i in range(n - 1)], f"kill at output {n}"
    assert sorted(read_settings(killed)["rows"]) == [p.name for p in done]
    assert (killed / ROWS_JOURNAL).exists() == (n > 1)
    assert [p.name[:11] for p in temps(killed)] == [f".{n - 1:06d}.png"]  # the n-th, half-written
    stamps = {p: p.stat().st_mtime_ns for p in done}

    assert main(args(killed)) == 0
    assert {p: p.stat().st_mtime_ns for p in done} == stamps  # reused, not made again
    listed = lambda folder: sorted(p.name for p in folder.iterdir())  # noqa: E731 (hidden entries too)
    assert listed(killed) == listed(straight) and not (killed / ROWS_JOURNAL).exists() and temps(killed) == []
    for path in straight.glob("*.png"):
        assert (killed / path.name).read_bytes() == path.read_bytes(), path.name
    assert read_settings(killed)["rows"] == read_settings(straight)["rows"]


def test_only_the_temporary_files_of_outputs_made_again_are_deleted(tmp_path):
    from relation_cli.fs import atomic_file, remove_stale_temps

    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "000001.png") as tmp:
        raise KeyboardInterrupt  # an interrupted write deletes its own temporary file; a SIGKILLed one cannot:
    assert not tmp.exists()
    left = tmp_path / ".000001.png.0123abcd.png"  # what a SIGKILL leaves, in atomic_file's naming
    left.write_bytes(b"half")
    others = [tmp_path / n for n in (".000002.png.0123abcd.png", ".000001.png.0123abcd.jpg", ".000001.png.notes",
                                     ".000001.png.0123abcd.png-kept", "000001.png")]  # fmt: skip
    for path in others:
        path.write_bytes(b"keep")
    assert remove_stale_temps([tmp_path / "000001.png", tmp_path / "missing" / "000003.png"]) == 1
    assert not left.exists() and all(p.read_bytes() == b"keep" for p in others)


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    from relation_cli.fs import atomic_dir, atomic_file

    umask = os.umask(0)
    os.umask(umask)
    with atomic_file(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    # as open()/mkdir() would make them (temporary files start private: 0600 / 0700)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_full_disk_when_the_temporary_file_is_made_names_the_output_and_leaves_no_folder(tmp_path, monkeypatch):
    """Out of inodes (ENOSPC on creating the temporary file): the error names the file being written, not the
    hidden temporary name, and the folders made for it are gone."""
    import errno

    from relation_cli import fs
    from relation_cli.fs import atomic_file

    def no_inodes(parent, name, suffix="", folder=False):
        raise OSError(errno.ENOSPC, "No space left on device", str(parent / f".{name}.0123abcd{suffix}"))

    monkeypatch.setattr(fs, "_new_temp", no_inodes)
    target = tmp_path / "a" / "b" / "x.png"
    with pytest.raises(OSError) as e, atomic_file(target):
        pass
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("written", [True, False])
def test_eval_interrupted_says_its_outputs_are_kept_for_the_rerun(tiny_model, tmp_path, monkeypatch, capsys, written):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) during generation: exit 130 and one line saying the
    outputs made so far stay and the same command continues from them (they are reused: the test above); stopped
    before the first output (while the model loads), it says so instead of pointing at a folder not made."""
    from eval_helpers import write_test_file

    import relation_cli.evaluate as evaluate

    data, out = write_test_file(tmp_path / "data", rows=2), tmp_path / "eval"

    def stopped(cfg):
        (out / "seen").mkdir(parents=True)
        (out / "config.yaml").write_text("")  # the run's records come first: not outputs
        if written:
            (out / "seen" / "0.png").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate", stopped)
    assert main(eval_args(tiny_model, data, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    if written:
        assert err[-1] == f"error: interrupted; the outputs made so far stay in {out}, and the same command continues from them"
    else:
        assert err[-1] == "error: interrupted before any output was written"
    assert not any(line == "error: interrupted" for line in err)
