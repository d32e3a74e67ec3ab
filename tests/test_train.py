"""relation train on tiny models: CLI end to end, what gets gradients, exact resume, checkpoints, dry run."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_overrides
from helpers import analogy_dataset, random_image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.errors import RelationError
from relation_cli.train.data import collate


def train_overrides(model, data, out, steps, *extra) -> list[str]:
    sets = [o for o in tiny_overrides(model) if not o.startswith("adapter.")]
    common = [f"train.data={data}", f"train.output_dir={out}", f"train.steps={steps}", "lora.rank=4",
              "train.batch_size=2", "train.validation_steps=2", "train.validation_samples=2",
              "train.learning_rate=1e-3"]  # fmt: skip
    return sets + common + list(extra)


def train_args(model, data, out, steps, *extra) -> list[str]:
    return ["train"] + [x for o in train_overrides(model, data, out, steps, *extra) for x in ("--set", o)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return analogy_dataset(tmp_path_factory.mktemp("data"))


def test_train_then_infer_end_to_end(tiny_model, data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 3, "train.checkpoint_every=2")) == 0
    assert (out / "adapter" / "config.json").is_file()
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "config.yaml").is_file() and list((out / "validation").glob("step-*.png"))
    assert [p.name for p in (out / "checkpoints").iterdir()] != []
    assert list((out / "logs").rglob("events.out.tfevents*"))
    # the produced files drive relation infer directly
    a, b, q = (random_image(tmp_path / f"{n}.png", (48, 32), seed=i) for i, n in enumerate("abq"))
    code = main(["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(tmp_path / "o.png"), "--steps", "2",
                 "--model", str(tiny_model / "base"), "--image-encoder", str(tiny_model / "image_encoder"),
                 "--adapter", str(out / "adapter"), "--lora", str(out / "lora")])  # fmt: skip
    assert code == 0 and (tmp_path / "o.png").is_file()
    # --run takes the same base, image encoder, adapter and LoRA from the run's config.yaml
    pair = ["--exemplar", str(a), str(b), "--query", str(q), "--steps", "2"]
    assert main(["infer", *pair, "--run", str(out), "-o", str(tmp_path / "run.npy")]) == 0
    assert main(["infer", *pair, "-o", str(tmp_path / "flags.npy"), "--model", str(tiny_model / "base"),
                 "--image-encoder", str(tiny_model / "image_encoder"), "--adapter", str(out / "adapter"),
                 "--lora", str(out / "lora")]) == 0  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "run.npy"), np.load(tmp_path / "flags.npy"))


def test_lora_file_loads_in_plain_diffusers(tiny_model, data, tmp_path):
    from diffusers import FluxPipeline

    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 1, "train.validation_samples=0")) == 0
    pipe = FluxPipeline.from_pretrained(tiny_model / "base")
    pipe.load_lora_weights(out / "lora")
    lora_modules = [n for n, _ in pipe.transformer.named_modules() if n.endswith("lora_A")]
    assert len(lora_modules) == 2 * 12 + 4 * 3  # paper targets: 12 per double block, q/k/v per single block


def test_only_adapter_and_lora_get_gradients(tiny_model, data, tmp_path):
    from relation_cli.train.recipe import loss_on, setup

    cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / "r", 1))
    run = setup(cfg, resume=False)
    batch = next(iter(DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate)))
    loss_on(run, batch).backward()
    model = run.accelerator.unwrap_model(run.model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or (".processor." in n) or n.startswith("adapter.") for n in trainable)
    assert any("to_k_ip" in n for n in trainable) and any("image_proj" in n for n in trainable)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    for module in (run.pipe.vae, run.pipe.text_encoder, run.pipe.text_encoder_2, run.pipe.image_encoder):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    nonzero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() > 0]
    assert len(nonzero) > len(trainable) // 2


def _weights(out):
    state = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    state.update({f"adapter.{k}": v for k, v in load_file(out / "adapter" / "diffusion_pytorch_model.safetensors").items()})
    return state


def test_interrupted_then_resumed_equals_straight(tiny_model, data, tmp_path, monkeypatch):
    extra = ("train.checkpoint_every=2", "train.validation_samples=0", "train.exemplar_dropout=0.5",
             "train.lr_scheduler=cosine", "train.warmup_steps=1")  # fmt: skip
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(train_args(tiny_model, data, straight, 4, *extra)) == 0

    import relation_cli.train.checkpoint as checkpoint

    real_save = checkpoint.save_checkpoint

    def save_then_die(run):
        real_save(run)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    assert main(train_args(tiny_model, data, broken, 4, *extra)) == 130
    assert not (broken / "lora").exists()
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert main(train_args(tiny_model, data, broken, 4, *extra) + ["--resume"]) == 0
    a, b = _weights(straight), _weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_ends_the_step_checkpoints_it_and_the_resume_equals_straight(tiny_model, data, tmp_path, monkeypatch, capsys,
                                                                            sig):  # fmt: skip
    """A first Ctrl-C (SIGINT) or SIGTERM (kill, timeout, a job scheduler) mid-step: the step finishes and is
    checkpointed (train.checkpoint_every is far away), the run stops with status 130, and --resume ends with the
    straight run's weights."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIGINT is ignored under nohup &

    import relation_cli.train.recipe as recipe

    extra = ("train.checkpoint_every=100", "train.validation_samples=0", "train.lr_scheduler=cosine")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(train_args(tiny_model, data, straight, 4, *extra)) == 0
    real_step = recipe.optimizer_step

    def step_then_ctrl_c(run, batches):
        if run.step == 1:
            os.kill(os.getpid(), getattr(signal, sig))  # arrives during step 2
        return real_step(run, batches)

    monkeypatch.setattr(recipe, "optimizer_step", step_then_ctrl_c)
    capsys.readouterr()
    assert main(train_args(tiny_model, data, stopped, 4, *extra)) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "interrupted after step 2: it is checkpointed; the same command with --resume continues it", err
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["checkpoint-00000002"]
    name = "Ctrl-C" if sig == "SIGINT" else sig
    assert f"{name}: stopping after this step, which is checkpointed ({name} again to stop at once)" in err, err
    assert {s: signal.getsignal(s) for s in before} == before  # put back
    monkeypatch.setattr(recipe, "optimizer_step", real_step)
    assert main(train_args(tiny_model, data, stopped, 4, *extra) + ["--resume"]) == 0
    a, b = _weights(straight), _weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_larger_than_the_data_is_said(tiny_model, data, tmp_path, capsys):
    rows = len((data).read_text().splitlines())
    assert main(train_args(tiny_model, data, tmp_path / "run", 1, "train.validation_samples=0", f"train.batch_size={rows + 5}")) == 0
    assert f"train.batch_size {rows + 5} is more than the {rows} training rows: a batch holds at most {rows}" in capsys.readouterr().err


def test_corrupted_checkpoint_is_skipped_on_resume(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 4, "train.checkpoint_every=1", "train.keep_checkpoints=3",
                           "train.validation_samples=0")) == 0  # fmt: skip
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["checkpoint-00000002", "checkpoint-00000003", "checkpoint-00000004"]
    blob = ckpts[-1] / "trainable.safetensors"
    blob.write_bytes(blob.read_bytes()[:-7] + b"corrupt")
    (ckpts[-2] / "COMPLETE").unlink()
    assert main(train_args(tiny_model, data, out, 5, "train.validation_samples=0") + ["--resume"]) == 0
    text = capsys.readouterr()
    assert "does not match its checksum" in text.err + text.out and "no completion marker" in text.err + text.out
    assert "resumed from" in text.err + text.out and "checkpoint-00000002" in text.err + text.out


def test_checkpoint_files_get_the_umask_mode(tiny_model, data, tmp_path):
    """Every file of a checkpoint (weights, optimizer, random state) is 0644 under umask 022, not the 0600 that
    safetensors' save_file leaves, like every other output (README: files get the mode the umask gives)."""
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(train_args(tiny_model, data, out, 1, "train.checkpoint_every=1", "train.validation_samples=0")) == 0
    finally:
        os.umask(old)
    (checkpoint,) = (out / "checkpoints").iterdir()
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    assert {"trainable.safetensors", "optimizer.safetensors", "process_0.safetensors"} <= {p.name for p in files}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o755


def test_non_finite_loss_stops_with_a_clear_message(tiny_model, data, tmp_path, monkeypatch, capsys):
    import relation_cli.train.step as step

    real = step.loss_on
    calls = {"n": 0}

    def poisoned(run, batch):
        calls["n"] += 1
        loss = real(run, batch)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(step, "loss_on", poisoned)
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 5, "train.checkpoint_every=2", "train.validation_samples=0")) == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err and "checkpoint-00000002" in err
    assert (out / "checkpoints" / "checkpoint-00000002" / "COMPLETE").is_file()


def test_dry_run_loads_no_weights(tiny_model, data, tmp_path, monkeypatch, capsys):
    def refuse(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("relation_cli.model.load_base", refuse)
    assert main(train_args(tiny_model, data, tmp_path / "r", 10) + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters" in out and "memory estimate" in out and "data: 6 rows" in out
    assert not (tmp_path / "r").exists()


def test_several_data_files_train_together(tiny_model, data, tmp_path, capsys):
    """train.data as a list (--data repeated): rows of every file, in order; the saved config lists them."""
    from relation_cli.train.data import load_rows

    other = analogy_dataset(tmp_path / "other", tasks=("gray",), seed=1)
    rows = load_rows([data, other], 10**8)
    assert [r.task for r in rows] == [r.task for r in load_rows(data, 10**8)] + ["gray"] * 3
    assert rows[-1].source.parent == other.parent / "img"  # paths resolve beside their own file
    sets = [o for o in train_overrides(tiny_model, data, tmp_path / "r", 2) if not o.startswith("train.data=")]
    args = ["train", "--data", str(data), "--data", str(other)] + [x for o in sets for x in ("--set", o)]
    assert main(args + ["--dry-run"]) == 0
    assert "data: 9 rows" in capsys.readouterr().out
    assert main(args) == 0
    saved = load_config(tmp_path / "r" / "config.yaml")
    assert saved.train.data == [str(data), str(other)] and (tmp_path / "r" / "adapter").is_dir()


@pytest.mark.parametrize("value, message", [
    ("[]", "train.data: an empty list"), ("missing", "not found"), ("folder", "is a folder; give the train.jsonl"),
    ("comma", "several files: --data repeated or train.data=[a.jsonl,b.jsonl]"),
    ("csv", "not a JSON Lines file, none of its 40 non-blank lines is a JSON object (line 1: malformed JSON"),
    ("json", "rows.json': one JSON document over 6 lines, not JSON Lines: write one JSON object per line"),
    ("list", "rows.json': one JSON document, not JSON Lines: write one JSON object per line"),
])  # fmt: skip
def test_bad_data_list_is_one_line_and_writes_nothing(tiny_model, data, tmp_path, capsys, value, message):
    listed = {"[]": "[]", "missing": f"[{data},{tmp_path / 'missing.jsonl'}]", "folder": str(data.parent),
              "comma": f"'{data},{data}'", "csv": tmp_path / "rows.csv", "json": tmp_path / "rows.json",
              "list": tmp_path / "rows.json"}[value]  # fmt: skip
    (tmp_path / "rows.csv").write_text("cond1,cond2,source,target\n" + "a.png,b.png,c.png,d.png\n" * 39)
    rows = [{"source": "a.png", "target": "b.png"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows) + "\n" if value == "list" else json.dumps(rows, indent=2) + "\n")
    sets = [o for o in train_overrides(tiny_model, data, tmp_path / "r", 1) if not o.startswith("train.data=")]
    args = ["train", "--set", f"train.data={listed}"] + [x for o in sets for x in ("--set", o)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1 and len(err) < 300
    assert not (tmp_path / "r").exists()


def test_bad_image_in_a_second_data_file_names_that_file(tmp_path, data):
    from relation_cli.errors import RelationError
    from relation_cli.train.data import load_rows

    other = analogy_dataset(tmp_path / "other", tasks=("gray",), seed=1)
    (other.parent / "img" / "gray1s.png").write_bytes(b"not a png")
    with pytest.raises(RelationError, match="other/train.jsonl' row"):
        load_rows([data, other], 10**8)


def test_paper_sizes_on_the_flux_dev_architecture():
    """Counted on the meta device: LoRA r128 on the paper's targets and the adapter (SPEC 2.3, 2.4)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from relation_cli.adapter import RelationAdapter
    from relation_cli.config import PAPER_LORA_TARGETS
    from relation_cli.train.estimate import count, lora_parameters

    with init_empty_weights():
        transformer = FluxTransformer2DModel(guidance_embeds=True)
    assert round(count(transformer) / 1e9, 1) == 11.9
    assert round(lora_parameters(transformer, PAPER_LORA_TARGETS, 128) / 1e6, 1) == 358.6
    with torch.device("meta"):
        adapter = RelationAdapter.for_transformer(transformer, 1152, 128)
    assert round(count(adapter) / 1e9, 2) == 2.65


def test_missing_data_is_one_line(tiny_model, tmp_path, capsys):
    assert main(train_args(tiny_model, tmp_path / "nope.jsonl", tmp_path / "r", 1)) == 1
    assert "train.data" in capsys.readouterr().err


def test_an_empty_validation_file_says_what_it_is_for(tiny_model, data, tmp_path, capsys):
    """prepare --skip-invalid can leave test_seen.jsonl empty: the error names it as the validation rows and
    says how to train without them."""
    shutil.copytree(data.parent, tmp_path / "data")
    (tmp_path / "data" / "test_seen.jsonl").write_text("")
    assert main(train_args(tiny_model, tmp_path / "data" / "train.jsonl", tmp_path / "r", 1)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validation rows (the test_seen.jsonl beside the data): " in err, err
    assert "no rows; fix the file, or set train.validation_samples=0 to train without validation" in err, err


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_model, data, tmp_path):
    out = tmp_path / "ddp"
    # accelerate's --cpu flag starts a single process; --multi_gpu on a machine without GPUs starts two
    # that form a gloo group (relation asks accelerate for cpu=True when no GPU is present).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "relation_cli", *train_args(tiny_model, data, out, 2, "train.validation_samples=0")]  # fmt: skip
    env = {**os.environ, "RELATION_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-00000002"]
    names = sorted(p.name for p in (out / "checkpoints" / "checkpoint-00000002").iterdir())
    assert "process_0.json" in names and "process_1.json" in names
    assert proc.stdout.count("wrote") == 2  # one line per process, one set of outputs


def test_encoding_cache_is_reused_by_a_second_run(tiny_model, data, tmp_path):
    from relation_cli.train.recipe import setup

    cache = tmp_path / "cache"
    extra = ("train.cache_encodings=true", f"train.cache_dir={cache}", "train.validation_samples=0")
    assert main(train_args(tiny_model, data, tmp_path / "a", 2, *extra)) == 0
    files = sorted(p.relative_to(cache) for p in cache.rglob("*.safetensors"))
    assert {p.parts[0] for p in files} == {"vae", "text", "siglip"}
    cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / "b", 2, *extra))
    run = setup(cfg, resume=False)
    from relation_cli.train.recipe import loss_on

    batch = next(iter(DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate)))
    loss_on(run, batch)
    assert run.encoders.cache.misses == 0 and run.encoders.cache.hits > 0


def _text_encoder_lora(model: Path, path: Path, with_transformer: bool = True) -> Path:
    """A LoRA file with a CLIP text-encoder part (and a transformer part unless told), random weights."""
    g = torch.Generator().manual_seed(0)
    state = {f"text_encoder.encoder.layers.0.self_attn.q_proj.lora_{h}.weight": torch.randn(*s, generator=g) * 0.1
             for h, s in (("A", (2, 32)), ("B", (32, 2)))}  # fmt: skip
    if with_transformer:
        state |= {f"transformer.transformer_blocks.0.attn.to_q.lora_{h}.weight": torch.randn(*s, generator=g) * 0.1
                  for h, s in (("A", (2, 32)), ("B", (32, 2)))}  # fmt: skip
    save_file(state, path)
    return path


def test_a_lora_fused_into_the_text_encoder_changes_the_text_cache_key(tiny_model, data, tmp_path):
    """A LoRA's text-encoder part, fused into CLIP (adapter mode), changes the pooled text embeddings: their cache
    entries are keyed by CLIP's weights then, so a cache written without it is not reused (it was, in silence)."""
    from relation_cli.train.recipe import setup

    ids = {}
    for name, extra in [("none", ()), ("text", (f"lora.paths=[{_text_encoder_lora(tiny_model, tmp_path / 'te.safetensors')}]",)),
                        ("text-again", (f"lora.paths=[{tmp_path / 'te.safetensors'}]",))]:  # fmt: skip
        cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / name, 1, "train.mode=adapter",
                                                "train.validation_samples=0", *extra))  # fmt: skip
        ids[name] = setup(cfg, resume=False).encoders.ids
    assert ids["none"]["text"] != ids["text"]["text"] == ids["text-again"]["text"]

    only = {k: v for k, v in load_file(tmp_path / "te.safetensors").items() if k.startswith("transformer.")}
    save_file(only, tmp_path / "tr.safetensors")  # lora mode continues a transformer LoRA: CLIP is the base's
    cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / "lora-mode", 1, "train.mode=lora",
                                            "train.validation_samples=0", f"lora.paths=[{tmp_path / 'tr.safetensors'}]"))  # fmt: skip
    assert setup(cfg, resume=False).encoders.ids["text"] == ids["none"]["text"]
    assert ids["none"]["vae"] == ids["text"]["vae"] and ids["none"]["image_encoder"] == ids["text"]["image_encoder"]


@pytest.mark.parametrize("with_transformer", [True, False], ids=["text-part-too", "text-part-only"])
def test_lora_mode_refuses_a_lora_with_a_text_encoder_part(tiny_model, data, tmp_path, capsys, with_transformer):
    """train.mode=lora trains the transformer's LoRA: a file with a text-encoder part is refused before training (a
    text-only one failed after training with an internal error; a mixed one lost its text part on export)."""
    lora = _text_encoder_lora(tiny_model, tmp_path / "te.safetensors", with_transformer)
    what = "a text-encoder part too" if with_transformer else "no transformer part"
    said = (f"lora '{lora}': has {what}; train.mode=lora trains the transformer's LoRA alone, and would save it "
            "without the rest: train.mode=adapter fuses the whole LoRA into the base instead")
    for dry in (["--dry-run"], []):  # the configuration's check, before the model loads
        assert main(train_args(tiny_model, data, tmp_path / "r", 1, f"lora.paths=[{lora}]", "train.validation_samples=0") + dry) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "r").exists()
    from relation_cli.lora import continue_lora
    from relation_cli.model import load_pipeline

    if with_transformer:  # an all-zero text part changes nothing: continued as a transformer LoRA
        zero = {k: (v if k.startswith("transformer.") else torch.zeros_like(v)) for k, v in load_file(lora).items()}
        save_file(zero, tmp_path / "zero-te.safetensors")
        assert main(train_args(tiny_model, data, tmp_path / "z", 1, f"lora.paths=[{tmp_path / 'zero-te.safetensors'}]",
                               "train.validation_samples=0")) == 0  # fmt: skip
        assert (tmp_path / "z" / "lora" / "pytorch_lora_weights.safetensors").is_file()

    pipe = load_pipeline(load_config(None, [*tiny_overrides(tiny_model), "model.device=cpu"]))
    with pytest.raises(RelationError, match=f"^{re.escape(said)}$"):  # and what diffusers makes of the keys, after
        continue_lora(pipe, load_config(None, [f"lora.paths=[{lora}]"]).lora.paths, "trained")


def test_lora_mode_check_reads_odd_headers_without_failing(tiny_model, data, tmp_path, capsys):
    """The configuration's look at a LoRA's keys (train.mode=lora) leaves an unreadable header to the file checks: a
    deeply nested one was an internal RecursionError."""
    from relation_cli.checks import _safetensors_keys

    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert _safetensors_keys(tmp_path / "deep.safetensors") is None
    main(train_args(tiny_model, data, tmp_path / "r", 1, f"lora.paths=[{tmp_path / 'deep.safetensors'}]") + ["--dry-run"])
    assert "internal error" not in capsys.readouterr().err


def test_an_adapter_run_names_every_lora_it_trained_on(tiny_model, data, tmp_path, capsys, monkeypatch):
    """Adapter mode over two LoRAs at weights 0.5 and 2, lora.scale 0.5: the run's config names both at the weights
    the base had (0.25, 1), and --run edits with them (the run named none unless there was exactly one, and that one
    at weight 1, so --run edited with another base than the adapter trained on)."""
    from relation_cli.runs import run_settings

    g = torch.Generator().manual_seed(1)
    for name in ("one", "two"):
        save_file({f"transformer.transformer_blocks.0.attn.to_q.lora_{h}.weight": torch.randn(*shape, generator=g)
                   for h, shape in (("A", (2, 32)), ("B", (32, 2)))}, tmp_path / f"{name}.safetensors")  # fmt: skip
    loras = f"lora.paths=[{tmp_path / 'one.safetensors'}:0.5, {tmp_path / 'two.safetensors'}:2]"
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 1, "train.mode=adapter", loras, "lora.scale=0.5",
                           "train.validation_samples=0")) == 0  # fmt: skip
    assert run_settings(out)["lora"]["paths"] == [{"path": str(tmp_path / "one.safetensors"), "weight": 0.25},
                                                  {"path": str(tmp_path / "two.safetensors"), "weight": 1.0}]  # fmt: skip
    a, b, q = (random_image(tmp_path / f"{n}.png", (32, 32), seed=i) for i, n in enumerate("abq"))
    pair = ["--exemplar", str(a), str(b), "--query", str(q), "--steps", "1"]
    assert main(["infer", *pair, "--run", str(out), "-o", str(tmp_path / "run.npy")]) == 0
    assert main(["infer", *pair, "-o", str(tmp_path / "flags.npy"), "--model", str(tiny_model / "base"),
                 "--image-encoder", str(tiny_model / "image_encoder"), "--adapter", str(out / "adapter"),
                 "--lora", f"{tmp_path / 'one.safetensors'}:0.25", "--lora", f"{tmp_path / 'two.safetensors'}:1"]) == 0  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "run.npy"), np.load(tmp_path / "flags.npy"))
    assert "replaces the LoRAs of run" not in capsys.readouterr().err
    listed = f"({tmp_path / 'one.safetensors'}:0.25, {tmp_path / 'two.safetensors'}:1)"
    assert main(["infer", *pair, "--run", str(out), "--lora", str(tmp_path / "one.safetensors"), "-o", str(tmp_path / "other.npy")]) == 0
    assert (f"note: lora.paths replaces the LoRAs of run '{out}' {listed}; the run's adapter was trained together with "
            "them as they were") in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the same LoRAs, relative and in another order: no note
    assert main(["infer", *pair, "--run", str(out), "--lora", "two.safetensors:1.0", "--lora", "./one.safetensors:.25",
                 "-o", str(tmp_path / "same.npy")]) == 0  # fmt: skip
    monkeypatch.chdir(ROOT)
    assert "note: lora" not in capsys.readouterr().err
    assert main(["infer", *pair, "--run", str(out), "--set", "lora.scale=2", "-o", str(tmp_path / "scaled.npy")]) == 0
    assert f"note: lora.scale 2 scales the LoRAs of run '{out}' {listed}; the run's" in capsys.readouterr().err
    import yaml

    tree = yaml.safe_load((out / "config.yaml").read_text())  # as a run written before run.base_loras recorded it
    del tree["run"]["base_loras"]
    (out / "config.yaml").write_text(yaml.safe_dump(tree))
    assert run_settings(out)["lora"]["paths"] == [{"path": str(tmp_path / "one.safetensors"), "weight": 0.25},
                                                  {"path": str(tmp_path / "two.safetensors"), "weight": 1.0}]  # fmt: skip


def test_full_mode_exports_a_base_that_infer_loads(tiny_model, data, tmp_path):
    out = tmp_path / "full"
    extra = ("train.mode=full", "train.train_image_encoder=true", "train.ema_decay=0.9", "train.validation_samples=0")
    assert main(train_args(tiny_model, data, out, 2, *extra)) == 0
    assert (out / "base" / "model_index.json").is_file() and (out / "image_encoder" / "config.json").is_file()
    assert not (out / "lora").exists()
    from safetensors.torch import load_file

    trained = load_file(out / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    before = load_file(tiny_model / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == before.keys()  # no adapter weights leaked into the transformer
    assert any(not torch.equal(trained[k], before[k]) for k in trained)
    a, b, q = (random_image(tmp_path / f"{n}.png", (32, 32), seed=i) for i, n in enumerate("abq"))
    assert main(["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(tmp_path / "o.png"), "--steps", "1",
                 "--model", str(out / "base"), "--image-encoder", str(out / "image_encoder"),
                 "--adapter", str(out / "adapter")]) == 0  # fmt: skip
    # --run finds the exported base and image encoder inside the run
    pair = ["--exemplar", str(a), str(b), "--query", str(q), "--steps", "1"]
    assert main(["infer", *pair, "--run", str(out), "-o", str(tmp_path / "run.npy")]) == 0
    assert main(["infer", *pair, "-o", str(tmp_path / "flags.npy"), "--model", str(out / "base"),
                 "--image-encoder", str(out / "image_encoder"), "--adapter", str(out / "adapter")]) == 0  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "run.npy"), np.load(tmp_path / "flags.npy"))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, data, tmp_path):
    from relation_cli.train.recipe import loss_on, setup

    grads = []
    for flag in ("false", "true"):
        cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / flag, 1, f"train.gradient_checkpointing={flag}"))
        run = setup(cfg, resume=False)
        batch = next(iter(DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate)))
        loss_on(run, batch).backward()
        model = run.accelerator.unwrap_model(run.model)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


def test_fp8_storage_trains_on_the_float8_rounded_transformer(tiny_model, data, tmp_path):
    """model.memory=fp8_storage: the frozen transformer is stored in float8 and computed in the run's dtype, so
    loss and gradients equal a plain run's on a transformer whose weights were rounded to float8 beforehand;
    LoRA, adapter and norms stay as they were."""
    from relation_cli.train.recipe import loss_on, setup

    runs, results = [], []
    for memory in ("fp8_storage", "none"):
        cfg = load_config(None, train_overrides(tiny_model, data, tmp_path / memory, 1, f"model.memory={memory}",
                                                "train.gradient_checkpointing=true"))  # fmt: skip
        run = setup(cfg, resume=False)
        runs.append(run)
        if memory == "none":  # round what the fp8 run stores in float8, in place
            stored = {n for n, p in runs[0].pipe.transformer.named_parameters() if p.dtype == torch.float8_e4m3fn}
            with torch.no_grad():
                for n, p in run.pipe.transformer.named_parameters():
                    if n in stored:
                        p.copy_(p.to(torch.float8_e4m3fn).to(p.dtype))
        batch = next(iter(DataLoader(run.dataset, batch_sampler=run.plan, collate_fn=collate)))
        loss = loss_on(run, batch)
        loss.backward()
        model = run.accelerator.unwrap_model(run.model)
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    transformer = runs[0].pipe.transformer
    dtypes = {n: p.dtype for n, p in transformer.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.base_layer.weight"] == torch.float8_e4m3fn
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or ".processor." in n or "norm" in n)
    assert len(stored) > len(dtypes) // 3
    (loss8, grads8), (loss, grads) = results
    assert np.isfinite(loss8) and abs(loss8 - loss) < 1e-6 and grads8.keys() == grads.keys()
    for k in grads:
        assert torch.allclose(grads8[k], grads[k], atol=1e-6), k


@pytest.mark.parametrize("sets, message", [
    (["model.memory=model_offload"], "model.memory=model_offload is for inference; relation train takes none or fp8_storage"),
    (["model.memory=fp8_storage", "train.mode=full"], "train.mode=full trains it (use lora or adapter)"),
    (["model.quantize=int8"], "model.quantize is for inference"),
    (["model.memory=fp8_storage", "train.mode=vae"], "train.mode=vae does not run it (leave model.memory=none)"),
    (["train.mode=vae", "adapter.path=."], "train.mode=vae trains the VAE alone; adapter.path '.' would not be used "
                                          "(leave it empty)"),
    (["train.mode=vae", "adapter.path=.", "lora.paths=[a.safetensors]"], "train.mode=vae trains the VAE alone; "
     "adapter.path '.' and lora.paths would not be used (leave them empty)"),
    (["lora.paths=[a.safetensors, b.safetensors]"], "train.mode=lora continues one LoRA; lora.paths has 2 (give one"),
    (["lora.paths=[a.safetensors:0.5]"], "a weight (0.5) applies when it is used, not when it trains: drop ':W'"),
    (["train.full_bf16=true", "train.mixed_precision=no"], "train.full_bf16 needs bf16 mixed precision; "
                                                             "train.mixed_precision is no (set bf16, or auto on a GPU)"),
    (["train.full_bf16=true", "train.mixed_precision=bf16", "train.ema_decay=0.99"], "train.full_bf16 cannot keep an EMA"),
    (["train.full_bf16=true"], "train.full_bf16 needs bf16 mixed precision; train.mixed_precision auto is no on cpu: "
                               "set train.mixed_precision=bf16"),  # the CPU's auto, refused before anything loads
])  # fmt: skip
def test_train_refuses_settings_it_would_ignore(tiny_model, data, tmp_path, capsys, sets, message):
    assert main(train_args(tiny_model, data, tmp_path / "run", 1, *sets)) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


BF16_RUNS = """
import sys
from relation_cli.cli import main
args = sys.argv[1:]
cut = args.index("--")
first, rest = args[:cut], args[cut + 1:]
print(main(first + ["--set", "train.steps=3"]), main(rest + ["--set", "train.steps=2"]),
      main(rest + ["--set", "train.steps=3", "--set", "train.full_bf16=false", "--resume"]),
      main(rest + ["--set", "train.steps=3", "--resume"]))
"""


def test_full_bf16_trains_in_bf16_resumes_exactly_and_is_counted_so(tiny_model, data, tmp_path):
    """``train.full_bf16``: the trainable weights (so their gradients and AdamW's moments) are bf16 in the
    checkpoint, a run resumed at step 2 ends with the straight run's weights, a resume may not switch it, and
    the estimate counts 2 + 2 + 4 bytes per trainable parameter instead of 4 + 4 + 8. (In a fresh process:
    accelerate fixes one mixed precision per process, and the other tests train in float32.)"""
    from relation_cli.train.estimate import _meta_pipeline_parts, estimate_parts

    extra = ("train.full_bf16=true", "train.mixed_precision=bf16", "train.checkpoint_every=2", "train.validation_samples=0",
             "train.lr_scheduler=constant")  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*train_args(tiny_model, data, straight, 3, *extra), "--", *train_args(tiny_model, data, resumed, 3, *extra)]
    run = subprocess.run([sys.executable, "-c", BF16_RUNS, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.stdout.split()[-4:] == ["0", "0", "1", "0"], run.stderr[-2000:]
    assert "--resume: train.full_bf16 is True in the checkpoint and False now" in run.stderr
    trained = load_file(straight / "checkpoints" / "checkpoint-00000003" / "trainable.safetensors")
    assert trained and {v.dtype for v in trained.values()} == {torch.bfloat16}
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    cfgs = [load_config(None, train_overrides(tiny_model, data, tmp_path, 1, "train.mixed_precision=bf16", f"train.full_bf16={f}"))
            for f in ("false", "true")]  # fmt: skip
    parts = _meta_pipeline_parts(cfgs[0])
    plain, bf16 = (estimate_parts(c, 0, *parts) for c in cfgs)
    n = sum(plain.trainable.values())
    assert plain.training_bytes == 16 * n and bf16.training_bytes == 8 * n and plain.weight_bytes == bf16.weight_bytes


def test_fp8_storage_estimate_counts_the_frozen_transformer_at_one_byte(tiny_model, data, tmp_path):
    from relation_cli.train.estimate import _meta_pipeline_parts, count, estimate_parts

    cfgs = [load_config(None, train_overrides(tiny_model, data, tmp_path, 1, f"model.memory={m}", f"train.mode={mode}"))
            for m, mode in (("none", "lora"), ("fp8_storage", "lora"), ("fp8_storage", "adapter"))]  # fmt: skip
    parts = _meta_pipeline_parts(cfgs[0])
    plain, fp8, adapter_mode = (estimate_parts(c, 0, *parts).weight_bytes for c in cfgs)
    assert plain - fp8 == plain - adapter_mode == 3 * count(parts[0])  # float32 on the CPU: 4 bytes -> 1
    vae_cfg = load_config(None, train_overrides(tiny_model, data, tmp_path, 1, "train.mode=vae", "train.train_image_encoder=true"))
    vae = estimate_parts(vae_cfg, 0, *parts)
    assert vae.trainable == {"vae": count(parts[1])} and vae.activation_bytes is None
    assert vae.frozen == sum(count(m) for i, m in enumerate(parts) if i != 1 and m is not None)


def test_estimate_counts_the_adapter_that_trains(tiny_model, data, tmp_path):
    """The trainable count (and so the memory estimate) is the adapter the run trains: the start adapter's own
    tokens and role embeddings (adapter.path), or a new one's from adapter.num_tokens / role_embeddings, not the
    field default of 128 tokens: both equal the parameters in the adapter file a run writes."""
    from safetensors import safe_open

    from relation_cli.train.estimate import estimate

    def saved(folder: Path) -> int:
        with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
            return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())

    new = ("adapter.path=null", "adapter.num_tokens=3", "adapter.role_embeddings=true", "train.validation_samples=0")
    out = tmp_path / "new"
    before = estimate(load_config(None, train_overrides(tiny_model, data, out, 1, *new))).trainable["adapter"]
    assert main(train_args(tiny_model, data, out, 1, *new)) == 0
    assert before == saved(out / "adapter")
    # that adapter as the start of another run whose adapter.* fields are the defaults (128 tokens, no roles)
    given = load_config(None, train_overrides(tiny_model, data, tmp_path / "next", 1, f"adapter.path={out / 'adapter'}"))
    assert given.adapter.num_tokens == 128 and estimate(given).trainable["adapter"] == saved(out / "adapter")


def test_a_released_bin_start_is_counted_at_the_released_layout(reference, tmp_path):
    """A ``.bin`` start adapter is not read by --dry-run: it is counted at the released 128 tokens without role
    embeddings, whatever the config's adapter.* fields (which are for a new adapter), and the line says so."""
    from relation_cli.adapter import RelationAdapter
    from relation_cli.train.estimate import _meta_pipeline_parts, count, estimate

    data = analogy_dataset(tmp_path / "data", size=(32, 32))
    sets = [f"model.base={reference / 'base'}", f"model.image_encoder={reference / 'image_encoder'}",
            f"adapter.path={reference / 'ip_adapter.bin'}", f"train.data={data}", f"train.output_dir={tmp_path / 'r'}",
            "train.mode=adapter", "adapter.num_tokens=8", "adapter.role_embeddings=true"]  # fmt: skip
    cfg = load_config(None, sets)
    est = estimate(cfg)
    transformer, *_, image_encoder = _meta_pipeline_parts(cfg)
    with torch.device("meta"):
        released = RelationAdapter.for_transformer(transformer, image_encoder.config.hidden_size, 128)
    assert est.trainable["adapter"] == count(released)
    assert "the .bin adapter counted at the released 128 tokens (it is read when the run loads it)" in est.lines()[1]


def test_dry_run_checks_the_output_folder_as_the_run_does(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-00000002").mkdir(parents=True)  # an earlier run's (not intact) checkpoint
    assert main(train_args(tiny_model, data, out, 1) + ["--dry-run"]) == 1
    assert "holds checkpoints of an earlier run; pass --resume" in capsys.readouterr().err
    assert main(train_args(tiny_model, data, out, 1) + ["--dry-run", "--resume"]) == 1
    assert f"error: --resume: no complete checkpoint under '{out / 'checkpoints'}'" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoint-00000002", "checkpoints"]


def test_dry_run_of_a_resume_names_the_checkpoint(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model, data, out, 2, "train.checkpoint_every=1", "train.validation_samples=0")) == 0
    capsys.readouterr()
    assert main(train_args(tiny_model, data, out, 3, "train.validation_samples=0") + ["--resume", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"resume: from {out / 'checkpoints' / 'checkpoint-00000002'} (step 2)" in said and "data: 6 rows" in said


def test_start_from_the_released_weights(reference, tmp_path):
    data = analogy_dataset(tmp_path / "data", size=(32, 32))
    sets = [f"model.base={reference / 'base'}", f"model.image_encoder={reference / 'image_encoder'}",
            f"adapter.path={reference / 'ip_adapter.bin'}", f"lora.paths=[{{path: {reference / 'lora'}}}]",
            f"train.data={data}", f"train.output_dir={tmp_path / 'run'}", "train.steps=1", "lora.rank=4",
            "train.validation_samples=0", "train.learning_rate=1e-12"]  # fmt: skip
    assert main(["train"] + [x for s in sets for x in ("--set", s)]) == 0
    started = load_file(tmp_path / "run" / "adapter" / "diffusion_pytorch_model.safetensors")
    released = torch.load(reference / "ip_adapter.bin", weights_only=True)
    assert torch.allclose(started["image_proj.proj.0.weight"], released["image_proj"]["proj.0.weight"], atol=1e-6)
    assert torch.allclose(started["processors.5.to_v_ip.weight"], released["ip_adapter"]["5.to_v_ip.weight"], atol=1e-6)
    lora = load_file(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors")
    original = load_file(reference / "lora" / "pytorch_lora_weights.safetensors")
    assert lora.keys() == original.keys()  # the released LoRA itself was trained, at its own rank
    assert all(torch.allclose(lora[k], original[k], atol=1e-6) for k in lora)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "accelerate").glob("*.yaml")))
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(ROOT / "configs" / "accelerate" / name)
    assert cfg.num_processes >= 2


def test_vae_mode_pretrains_the_vae(tiny_model, data, tmp_path, capsys):
    out = tmp_path / "vae"
    assert main(train_args(tiny_model, data, out, 2, "train.mode=vae")) == 0
    trained = load_file(out / "base" / "vae" / "diffusion_pytorch_model.safetensors")
    before = load_file(tiny_model / "base" / "vae" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == before.keys() and any(not torch.equal(trained[k], before[k]) for k in trained)
    same = load_file(out / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    orig = load_file(tiny_model / "base" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(same[k], orig[k]) for k in orig)  # only the VAE trained
    assert not (out / "adapter").exists() and list((out / "validation").glob("*.png"))
    capsys.readouterr()
    assert main(["infer", "--run", str(out), "--exemplar", "a.png", "b.png", "--query", "c.png"]) == 1
    assert capsys.readouterr().err == (f"error: run '{out}': pre-trained a VAE (train.mode vae) and has no adapter to edit "
                                       f"with; train one on its base: relation train --set model.base={out / 'base'}\n")  # fmt: skip


def test_the_demo_recipe_runs_on_a_tiny_model(tiny_model, data, tmp_path, monkeypatch):
    """configs/demo-train.yaml as `make demo-model` runs it (full mode, SigLIP trained, role embeddings,
    empty text, EMA, encodings and images cached), shrunk to 2 steps on the tiny model."""
    from relation_cli.pipeline import RelationPipeline

    prompts = []
    encode = RelationPipeline.encode_prompt
    monkeypatch.setattr(RelationPipeline, "encode_prompt",
                        lambda self, prompt, *a, **k: prompts.append(prompt) or encode(self, prompt, *a, **k))  # fmt: skip
    out, texts = tmp_path / "demo", data.parent / "train_with_text.jsonl"  # beside the images it names
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts.write_text("".join(json.dumps({**r, "text": "make it so"}) + "\n" for r in rows))
    sets = [f"model.base={tiny_model / 'base'}", f"model.image_encoder={tiny_model / 'image_encoder'}",
            f"train.data={texts}", f"train.output_dir={out}", "train.steps=2", "train.batch_size=2",
            "train.checkpoint_every=1", "train.validate_every=2", "train.validation_samples=1",
            "train.validation_steps=1", "train.warmup_steps=1", f"train.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    args = ["train", "--config", str(ROOT / "configs" / "demo-train.yaml")] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} >= {"base", "image_encoder", "adapter", "config.yaml", "checkpoints"}
    assert json.loads((out / "adapter" / "config.json").read_text())["role_embeddings"] is True
    assert prompts and all(p == "" or p == [""] * len(p) for p in prompts)  # rows have text; it is left out


def test_validation_rows_show_one_of_each_task_first(tmp_path):
    """test_seen.jsonl is sorted by task: the first rows alone would validate on one relation only."""
    from relation_cli.train.recipe import validation_rows

    for name in ("a.png", "b.png", "q.png", "t.png"):
        random_image(tmp_path / name, (16, 16))
    tasks = ["blur"] * 5 + ["mirror"] * 3 + ["invert"] * 2
    (tmp_path / "test_seen.jsonl").write_text("".join(
        json.dumps({"cond1": "a.png", "cond2": "b.png", "source": "q.png", "target": "t.png", "task": t}) + "\n"
        for t in tasks))  # fmt: skip
    cfg = load_config(None, [f"train.data={tmp_path / 'train.jsonl'}", "train.validation_samples=4"])
    assert [(r.index, r.task) for r in validation_rows(cfg)] == [(0, "blur"), (5, "mirror"), (8, "invert"), (1, "blur")]
    cfg = load_config(None, [f"train.data={tmp_path / 'train.jsonl'}", "train.validation_samples=0"])
    assert validation_rows(cfg) == []


def test_every_bad_image_of_a_data_file_in_one_message(tmp_path):
    """A data file with several unusable images names them all at once (the first 10 and a count), so that a
    user fixes them in one go instead of one per run."""
    from relation_cli.errors import RelationError
    from relation_cli.train.data import load_rows

    data = analogy_dataset(tmp_path / "d", pairs=8)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    bad = {rows[0]["cond1"]} | {r["target"] for r in rows}
    (data.parent / rows[0]["cond1"]).write_bytes(b"not a png")
    for row in rows:
        (data.parent / row["target"]).write_bytes(b"")
    with pytest.raises(RelationError) as err:
        load_rows(data, 10**8)
    message = str(err.value)
    assert len(bad) > 10 and "\n" not in message
    assert message.startswith(f"'{data}': {len(bad)} images cannot be used: row 1 cond1 '")
    assert "not an image PIL can read; row 1 target '" in message and "empty file (0 bytes); row 2 target" in message
    assert message.endswith(f"; ... and {len(bad) - 10} more")


@pytest.mark.parametrize("contents, message", [
    ({"config.yaml": "train:\n  steps: 5\n"}, "its config.yaml is not a whole configuration this relation saved, and the run would replace it"),
    ({"rows.jsonl": "{}\n", "notes.txt": "mine"}, "holds files relation train did not write (notes.txt, rows.jsonl)"),
    ({}, None), ({".DS_Store": ""}, None), ({"logs/x": "", "config.yaml": "saved"}, None),
], ids=["a user's config", "a dataset", "empty", "hidden files", "a run killed before its first checkpoint"])  # fmt: skip
def test_a_new_run_starts_only_in_a_folder_of_its_own(tiny_model, data, tmp_path, capsys, contents, message):
    """A new run (no --resume) refuses a folder holding what relation train did not write, which it would
    overwrite (a config.yaml that is not a whole saved one) or mix its files with; its own files are fine."""
    from relation_cli.config import load_config, save_config

    out = tmp_path / "run"
    out.mkdir()
    for name, text in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        if text == "saved":
            save_config(load_config(None, train_overrides(tiny_model, data, out, 1)), out / name)
        else:
            (out / name).write_text(text)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(train_args(tiny_model, data, out, 1) + ["--dry-run"]) == (1 if message else 0)
    err = capsys.readouterr().err
    if message:
        assert message in err and "choose a new or empty train.output_dir" in err and len(err.strip().splitlines()) == 1
        assert main(train_args(tiny_model, data, out, 1)) == 1
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_file_listed_several_times_is_one_problem(tiny_model, tmp_path, capsys):
    """train.data may list a file several times on purpose (configs/demo-train.yaml): missing, it is said once."""
    missing = tmp_path / "nowhere.jsonl"
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    args = ["train", "--data", str(missing), "--data", str(missing), "--data", str(missing), "--output-dir",
            str(tmp_path / "run"), "--set", "model.base=./nowhere", *sets[2:], "--dry-run"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 2 problems in the configuration: (1) model.base './nowhere'")
    assert err.count(f"train.data '{missing}': not found") == 1


def test_a_file_listed_several_times_is_read_once(tiny_model, data, tmp_path, monkeypatch, capsys):
    """configs/demo-train.yaml lists its fixed set 12 times to weight it: each listing used to parse the file and
    decode its images again (3 of the recipe's minutes). Now the config check, --dry-run and the run read each
    distinct file once, and the rows are still repeated as listed."""
    import relation_cli.rows as rows_module
    from relation_cli.train.data import load_rows

    calls, real = [], rows_module.parse_rows

    def counted(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rows_module, "parse_rows", counted)
    monkeypatch.setattr("relation_cli.train.data.parse_rows", rows_module.parse_rows)
    other = analogy_dataset(tmp_path / "other", tasks=("gray",), seed=1)
    rows = load_rows([data, other, data, data], 10**8)
    once = load_rows(data, 10**8)
    assert [r.task for r in rows] == [r.task for r in once] + ["gray"] * 3 + [r.task for r in once] * 2
    assert calls == [data.name, other.name, data.name]  # the 3 listings of `data` in one read, then `once`'s
    calls.clear()
    sets = [o for o in train_overrides(tiny_model, data, tmp_path / "r", 2) if not o.startswith("train.data=")]
    args = ["train", "--data", str(data), "--data", str(data), "--data", str(data)]
    assert main(args + [x for o in sets for x in ("--set", o)] + ["--dry-run"]) == 0
    assert "data: 18 rows" in capsys.readouterr().out
    # the configuration's checks (run twice by a dry run: its own, and before_loading's) and the dry run's read,
    # each once for the 3 listings (9 calls before)
    assert calls.count(data.name) == 3
