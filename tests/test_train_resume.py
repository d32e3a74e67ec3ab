"""An honest resume: the checkpoint's config is compared, refused changes leave everything as it was, allowed
changes are really used and recorded, and "the last good checkpoint" after a failure is one."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from helpers import analogy_dataset
from safetensors.torch import load_file
from test_train import train_args, train_overrides
from torch.utils.data import DataLoader

from relation_cli.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return analogy_dataset(tmp_path_factory.mktemp("data"))


QUIET = ("train.validation_samples=0", "train.lr_scheduler=constant", "train.checkpoint_every=1")


def tree(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_learning_rate_is_used_announced_and_recorded(tiny_model, data, tmp_path, monkeypatch, capsys):
    import relation_cli.train.step as step

    out, start = tmp_path / "run", (f"adapter.path={tiny_model / 'adapter'}", "adapter.num_tokens=4")  # the adapter has its own
    assert main(train_args(tiny_model, data, out, 2, *QUIET, *start)) == 0
    capsys.readouterr()
    used, real = [], step.loss_on
    monkeypatch.setattr(step, "loss_on", lambda run, batch: used.append(run.optimizer.param_groups[0]["lr"]) or real(run, batch))
    assert main(train_args(tiny_model, data, out, 3, *QUIET, *start, "train.learning_rate=1e-2") + ["--resume"]) == 0
    assert used == [1e-2]  # today's value, not the 1e-3 the restored optimizer state holds
    assert "train.learning_rate 0.001 -> 0.01 from step 2" in capsys.readouterr().err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 1e-2
    assert saved["train"]["resumes"] == [{"step": 2, "train.steps": [2, 3], "train.learning_rate": [1e-3, 1e-2]}]
    # contract A: the run's config names what it made, with the adapter's real token count
    adapter = yaml.safe_load((tiny_model / "adapter" / "config.json").read_text())
    assert saved["adapter"]["num_tokens"] == adapter["num_tokens"] == 128  # not the 4 asked for
    assert saved["run"] == {"base": str((tiny_model / "base").resolve()), "image_encoder": str((tiny_model / "image_encoder").resolve()),
                            "adapter": "adapter", "lora": "lora", "base_loras": [], "step": 3}  # fmt: skip
    checkpoint = yaml.safe_load((out / "checkpoints" / "checkpoint-00000003" / "config.yaml").read_text())
    assert checkpoint["train"]["learning_rate"] == 1e-2 and checkpoint["run"] is None


def test_a_shape_change_is_refused_in_one_line_before_anything_loads(tiny_model, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 1, *QUIET)) == 0
    before = tree(out)
    capsys.readouterr()

    def refuse(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("relation_cli.model.load_base", refuse)
    assert main(train_args(tiny_model, data, out, 2, *QUIET, "lora.rank=8", "train.seed=3") + ["--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --resume:")
    assert "lora.rank is 4 in the checkpoint and 8 now" in err and "train.seed is 0 in the checkpoint and 3 now" in err
    assert tree(out) == before


def test_the_same_command_resumes_a_run_on_the_demo_model(data, tmp_path, capsys):
    """The demo base brings its adapter (8 tokens): the saved config says 8, the command leaves the default."""
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--output-dir", str(out), "--mode", "adapter",
            *(x for o in (*QUIET, "data.resolution=32", "train.batch_size=2") for x in ("--set", o))]  # fmt: skip
    assert main([*args, "--set", "train.steps=1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["adapter"]["num_tokens"] == 8
    capsys.readouterr()
    assert main([*args, "--set", "train.steps=2", "--resume"]) == 0, capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["step"] == 2


def test_resume_without_a_usable_checkpoint_changes_nothing(tiny_model, data, tmp_path, capsys):
    missing = tmp_path / "never"
    assert main(train_args(tiny_model, data, missing, 1, *QUIET) + ["--resume"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err and not missing.exists()

    out = tmp_path / "done"
    assert main(train_args(tiny_model, data, out, 1, *QUIET)) == 0
    blob = out / "checkpoints" / "checkpoint-00000001" / "trainable.safetensors"
    blob.write_bytes(blob.read_bytes()[:-7] + b"corrupt")
    before = tree(out)
    assert main(train_args(tiny_model, data, out, 2, *QUIET) + ["--resume"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    assert tree(out) == before  # no config.yaml rewritten, no log added


def test_resuming_a_finished_run_trains_nothing_and_a_run_past_its_steps_is_refused(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 2, *QUIET)) == 0
    weights = out / "lora" / "pytorch_lora_weights.safetensors"
    made = load_file(weights)
    capsys.readouterr()
    assert main(train_args(tiny_model, data, out, 2, *QUIET) + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "step 2: the run already reached train.steps (2); nothing to train" in err and "nan" not in err, err
    again = load_file(weights)  # the same checkpoint's weights, written again (the header's metadata order may differ)
    assert again.keys() == made.keys() and all(torch.equal(again[k], made[k]) for k in made)

    before = tree(out)
    for dry in (["--dry-run"], []):  # the dry run refuses what the resume would
        assert main(train_args(tiny_model, data, out, 1, *QUIET) + ["--resume", *dry]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --resume: checkpoint ") and "is at step 2, past train.steps 1" in err, err
        assert "\n" not in err and tree(out) == before
    assert main(train_args(tiny_model, data, out, 3, *QUIET, "lora.rank=8") + ["--resume", "--dry-run"]) == 1
    assert "lora.rank is 4 in the checkpoint and 8 now" in capsys.readouterr().err and tree(out) == before


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose step makes the weights NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def test_last_good_checkpoint_is_finite_and_a_lower_rate_continues(tiny_model, data, tmp_path, monkeypatch, capsys):
    """A learning rate too high for step 2 (simulated: at lr > 1e-2 its gradient is infinite) makes the weights
    NaN while the loss is finite. The run stops there; the checkpoint it names holds finite weights and a
    finite next loss, and a resume at a lower learning rate trains to the end."""
    import relation_cli.train.step as step
    from relation_cli.config import load_config
    from relation_cli.train.data import collate
    from relation_cli.train.recipe import loss_on, setup

    real = step.loss_on

    def too_fast(run, batch):
        loss = real(run, batch)
        return _InfiniteGradient.apply(loss) if run.step == 1 and run.optimizer.param_groups[0]["lr"] > 1e-2 else loss

    monkeypatch.setattr(step, "loss_on", too_fast)
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 4, *QUIET, "train.learning_rate=0.1")) == 1
    err = capsys.readouterr().err
    assert "weights became non-finite at step 2" in err and "the last good checkpoint is" in err and "checkpoint-00000001" in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-00000001"]
    good = load_file(out / "checkpoints" / "checkpoint-00000001" / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in good.values())

    cfg = load_config(None, train_overrides(tiny_model, data, out, 4, *QUIET, "train.learning_rate=0.1"))
    run = setup(cfg, resume=True)
    batch = next(iter(DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate)))
    assert run.step == 1 and torch.isfinite(loss_on(run, batch))
    run.close()

    assert main(train_args(tiny_model, data, out, 4, *QUIET, "train.learning_rate=1e-3") + ["--resume"]) == 0
    final = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())


def test_relative_model_paths_resume_by_the_files_they_name(tiny_model, data, tmp_path, monkeypatch, capsys):
    """The checkpoint's config holds the adapter's absolute path: the same relative adapter.path resumes from
    the same directory and is refused from one where it names another adapter."""
    import shutil

    for where in ("a", "b"):
        shutil.copytree(tiny_model / "adapter", tmp_path / where / "adapter")
    out, start = tmp_path / "run", ("adapter.path=adapter", "adapter.num_tokens=4")
    monkeypatch.chdir(tmp_path / "a")
    assert main(train_args(tiny_model, data, out, 1, *QUIET, *start)) == 0
    saved = yaml.safe_load((out / "checkpoints" / "checkpoint-00000001" / "config.yaml").read_text())
    assert saved["adapter"]["path"] == str((tmp_path / "a" / "adapter").resolve())
    assert main(train_args(tiny_model, data, out, 2, *QUIET, *start) + ["--resume"]) == 0  # the same files
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "b")
    assert main(train_args(tiny_model, data, out, 3, *QUIET, *start) + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert (f"adapter.path is {(tmp_path / 'a' / 'adapter').resolve()} in the checkpoint and "
            f"{(tmp_path / 'b' / 'adapter').resolve()} now") in err, err  # fmt: skip
