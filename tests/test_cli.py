"""The command line: wiring, the embedded default, batch mode, and every bad input as one line + exit 1."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EXAMPLES, ROOT, tiny_overrides
from helpers import random_image, truncated_copy
from typer.testing import CliRunner

from relation_cli.cli import app, main

COMMANDS = ["infer", "prepare", "train", "eval", "convert", "init-model"]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out
    assert "<list[" not in out  # a repeatable option shows a plain metavar (FILE), not its type
    if command == ["init-model"]:  # square brackets are rich markup unless escaped
        assert "FLUX.2 [klein]" in out


def test_help_does_not_import_the_ml_stack():
    code = "import sys; from relation_cli.cli import main; main(['--help']); print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip().endswith("[]")


def test_flags_map_to_config_keys(monkeypatch, tmp_path):
    seen = {}

    def fake_infer_single(cfg, exemplars, query, output):
        seen.update(cfg=cfg, exemplars=exemplars, query=query, output=output)
        return tmp_path / "o.png"

    monkeypatch.setattr("relation_cli.infer.infer_single", fake_infer_single)
    result = CliRunner().invoke(app, [
        "infer", "--exemplar", "a.png", "b.png", "--query", "q.png", "--steps", "7", "--seed", "3",
        "--guidance", "2.5", "--scale", "0.5", "--prompt", "make it blue", "--device", "cpu",
        "--set", "infer.max_sequence_length=128", "--overwrite",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.infer.steps, cfg.infer.seed, cfg.infer.guidance, cfg.adapter.scale) == (7, 3, 2.5, 0.5)
    assert cfg.infer.prompt == "make it blue" and cfg.infer.max_sequence_length == 128 and cfg.infer.overwrite
    assert [p.name for p in seen["exemplars"]] == ["a.png", "b.png"] and seen["query"].name == "q.png"


def test_embedded_default_runs(tmp_path, capsys):
    out = tmp_path / "edited.png"
    code = main([
        "infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
        "--query", str(EXAMPLES / "query.png"), "--output", str(out), "--steps", "2",
    ])  # fmt: skip
    assert code == 0
    assert out.is_file() and (tmp_path / "edited.png.yaml").is_file()
    assert f"wrote {out}" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "edited.png.yaml").read_text())
    assert saved["adapter"] | {"path": None} == {"path": None, "scale": 1.0, "num_tokens": 8, "role_embeddings": True}, saved


def test_batch_mode_is_resumable(tiny_model, tmp_path):
    for name in ("a", "b", "q"):
        random_image(tmp_path / f"{name}.png", (48, 32), seed=ord(name))
    rows = [{"cond1": "a.png", "cond2": "b.png", "source": "q.png", "text": f"edit {i}"} for i in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["infer", "--input", str(tmp_path / "rows.jsonl"), "--output-dir", str(tmp_path / "out"), "--steps", "2"]
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    assert main(args + sets) == 0
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == ["000000.png", "000001.png", "000002.png"]
    (tmp_path / "out" / "000001.png").unlink()
    stamp = (tmp_path / "out" / "000000.png").stat().st_mtime_ns
    assert main(args + sets) == 0
    assert (tmp_path / "out" / "000001.png").is_file()
    assert (tmp_path / "out" / "000000.png").stat().st_mtime_ns == stamp


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    paths = {n: random_image(d / f"{n}.png", (48, 40), seed=i) for i, n in enumerate(["a", "b", "q"])}
    paths["tiny"] = random_image(d / "tiny.png", (12, 40))
    paths["text"] = d / "text.png"
    paths["text"].write_text("not an image")
    paths["cut"] = truncated_copy(random_image(d / "full.png", (64, 64), seed=9), d / "cut.png")
    paths["existing"] = random_image(tmp_path / "existing.png", (20, 20))
    return paths


BAD = [
    ("missing exemplar", lambda p: ["--exemplar", "nope.png", p["b"], "--query", p["q"]], "exemplar A 'nope.png': file not found"),
    ("not an image", lambda p: ["--exemplar", p["a"], p["text"], "--query", p["q"]], "not an image"),
    ("truncated", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["cut"]], "truncated"),
    ("one exemplar", lambda p: ["--exemplar", p["a"], "--query", p["q"]], "exactly 2 images"),
    ("three exemplars", lambda p: ["--exemplar", p["a"], p["b"], p["q"], "--query", p["q"]], "exactly 2 images"),
    ("no query", lambda p: ["--exemplar", p["a"], p["b"]], "--query is required"),
    ("too small", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["tiny"]], "a side under 16 pixels"),
    ("pixel limit", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--set", "data.max_image_pixels=1000"], "over the limit"),
    ("existing output", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", p["existing"]], "already exists"),
    ("bad extension", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", "x.gif"], "unsupported extension"),
    ("extension alone", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", "o/.png"],
     "output 'o/.png': a name is needed before the extension, e.g. 'o/edited.png'"),
    ("negative steps", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--steps", "-2"], "infer.steps"),
    ("unknown key", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--set", "infer.nope=1"], "infer.nope: unknown key"),
    ("unknown option", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--stepz", "2"], "No such option"),
    ("bad model folder", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--model", "./nowhere"], "folder not found"),
]  # fmt: skip


@pytest.mark.parametrize("name, make_args, message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_exit_1(images, tmp_path, monkeypatch, capsys, name, make_args, message):
    monkeypatch.chdir(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    code = main(["infer", *map(str, make_args(images))])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing created, nothing half-written


def test_debug_env_shows_the_traceback(images, monkeypatch):
    monkeypatch.setenv("RELATION_DEBUG", "1")
    from relation_cli.errors import RelationError

    with pytest.raises(RelationError):
        main(["infer", "--exemplar", str(images["a"]), "nope.png", "--query", str(images["q"])])


def test_npy_output_is_float(tiny_model, images, tmp_path):
    out = tmp_path / "o.npy"
    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    assert main(["infer", "--exemplar", str(images["a"]), str(images["b"]), "--query", str(images["q"]),
                 "-o", str(out), "--steps", "1", *sets]) == 0  # fmt: skip
    arr = np.load(out)
    assert arr.dtype == np.float32 and arr.shape == (32, 48, 3) and 0 <= arr.min() and arr.max() <= 1


# ------------------------------------------------------------------------------------------ precise usage errors


USAGE = [
    ("stray word", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "stray"], "unexpected argument 'stray'"),
    ("value given to a flag", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--overwrite", "true"],
     "--overwrite is a flag and takes no value (got 'true')"),
    ("one image before an option", lambda p: ["--exemplar", p["a"], "--query", p["q"]],
     "takes exactly 2 images (A and A'), got 1 before --query"),
    ("no image before an option", lambda p: ["--exemplar", "--query", p["q"], "-o", p["a"]],
     "takes exactly 2 images (A and A'), got none before --query"),
    ("no image before a short option", lambda p: ["--query", p["q"], "--exemplar", "-o", p["a"]],
     "'--exemplar': takes exactly 2 images (A and A'), got none before -o"),
    ("third exemplar image", lambda p: ["--exemplar", p["a"], p["b"], p["q"], "--query", p["q"]],
     "--exemplar takes exactly 2 images (A and A'); "),
    ("bad choice", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--memory", "lots"], "'lots' is not one of"),
    ("query given twice", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--query", p["a"]],
     "--query was given 2 times; give it once (see relation infer --help)"),
    ("config given three times", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-c", "a.yaml",
                                            "--config=b.yaml", "-c", "c.yaml"], "--config was given 3 times"),
    ("model given twice", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--model", "x", "--model", "y"],
     "--model was given 2 times; give it once"),
]  # fmt: skip


def test_repeatable_options_flags_and_settings_may_repeat(images, capsys, monkeypatch):
    """``--exemplar`` and ``--set`` are lists; a flag given twice says the same thing twice; a setting given
    twice takes the last value (as in most tools: an alias with defaults, then an override)."""
    import relation_cli.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_dry_run", lambda cfg, command, *checks: seen.append(cfg.infer))
    code = main(["infer", "--exemplar", str(images["a"]), str(images["b"]), "--exemplar", str(images["a"]),
                 str(images["b"]), "--query", str(images["q"]), "--overwrite", "--overwrite", "--set", "infer.steps=2",
                 "--set", "infer.seed=3", "--steps", "5", "--steps", "4", "--dry-run"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert seen[0].steps == 4 and seen[0].seed == 3 and seen[0].overwrite


@pytest.mark.parametrize("make_args, message", [u[1:] for u in USAGE], ids=[u[0] for u in USAGE])
def test_usage_errors_say_what_they_are(images, capsys, make_args, message):
    code = main(["infer", *map(str, make_args(images))])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: ") and "\n" not in err and message in err, err
    assert "exactly 2 images" not in err or "exemplar" in message or "--query" in message, err


def test_infer_without_arguments_shows_the_usage_line(capsys):
    assert main(["infer"]) == 1
    usage, error = capsys.readouterr().err.strip().splitlines()
    assert usage == "Usage: relation infer --exemplar A A' --query B [OPTIONS]"
    assert error.startswith("error: give the exemplar pair and the query")


# Each runs in a fresh interpreter, which then says which of the ML libraries were imported.
EARLY = """
import sys
from relation_cli.cli import main
code = main(sys.argv[1:])
print(code, sorted({"torch", "diffusers", "transformers"} & set(sys.modules)))
"""


def early(args: list[str], cwd) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", EARLY, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    return proc.stdout.strip().splitlines()[-1], proc.stderr.strip()


def _early_cases(p, tmp):
    edit = ["--exemplar", p["a"], p["b"], "--query", p["q"]]
    (tmp / "rows.csv").write_text("cond1,cond2,source,target\na.png,b.png,q.png,t.png\n")
    return [
        (["train", "--data", tmp / "rows.csv"], "rows.csv': not a JSON Lines file"),
        (["eval", "--input", tmp / "rows.csv"], "rows.csv': not a JSON Lines file"),
        (["infer", "--exemplar", "nope.png", p["b"], "--query", p["q"]], "exemplar A 'nope.png': file not found"),
        (["infer", *edit, "-o", "/proc/relation/out.png"], "is not writable"),
        (["infer", *edit, "--model", tmp / "nowhere"], "model.base"),
        (["infer", *edit, "--steps", "0"], "infer.steps"),
        (["train", "--data", tmp / "none.jsonl"], "train.data"),
        (["eval", "--input", tmp / "none.jsonl"], "eval input"),
        (["prepare", tmp / "none", "--output", tmp / "out"], "none"),
        (["convert", tmp / "none.bin", tmp / "adapter"], "adapter '" + str(tmp / "none.bin") + "': file not found"),
        (["convert", p["a"], tmp / "adapter"], "expected the authors' pickle, a .bin/.pt/.pth/.ckpt file"),
        (["init-model", "/proc/relation/model"], "is not writable"),
        (["init-model", tmp / "m", "--spec", tmp / "none.yaml"], f"spec '{tmp / 'none.yaml'}': not found"),
        (["init-model", tmp / "m", "--klein", "--kontext"], "kontext is a FLUX.1 layout"),
    ]


def test_file_path_and_option_errors_come_before_the_ml_stack(images, tmp_path):
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc (an existing folder nobody can write in)")
    for args, message in _early_cases(images, tmp_path):
        result, err = early(args, tmp_path)
        assert result == "1 []", (args, result, err)
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, (args, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


# ------------------------------------------------------------------------------------------ check_config


def test_every_config_problem_is_reported_before_any_model_file_is_opened(tiny_model, tmp_path):
    """Six problems, one message, and not one weights file of the model folder opened (an audit hook watches;
    a folder's config.json may be read: it tells a SigLIP or a transformer given as --adapter from an adapter)."""
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")
    script = (
        "import sys\n"
        f"model = {str(tiny_model)!r}\n"
        "def watch(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and args[0].startswith(model) and not args[0].endswith('/config.json'):\n"
        "        raise RuntimeError('model file opened: ' + args[0])\n"
        "sys.addaudithook(watch)\n" + EARLY
    )
    args = ["eval", "--input", tmp_path / "missing.jsonl", "--output-dir", tmp_path / "eval", "--model",
            tiny_model / "base", "--adapter", tiny_model / "adapter", "--lora", lora, "--device", "cpu",
            "--set", "lora.fuse=false", "--set", "model.quantize=int8", "--set", "model.memory=model_offload"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    err = proc.stderr.strip()
    assert proc.stdout.strip().splitlines()[-1] == "1 []", err
    assert err.startswith("error: 6 problems in the configuration: (1) ") and len(err.splitlines()) == 1, err
    for fragment in ("model.image_encoder is empty", "need the LoRA fused", "offloads to a GPU", "not a readable safetensors file",
                     "model.quantize=int8 needs torchao", "eval input"):  # fmt: skip
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "eval").exists()


def test_check_config_gathers_training_problems(tmp_path):
    from relation_cli.checks import check_config
    from relation_cli.config import load_config
    from relation_cli.errors import RelationError

    (tmp_path / "train.jsonl").write_text("")
    cfg = load_config(None, [f"train.data={tmp_path / 'train.jsonl'}", "train.optimizer=adamw8bit",
                             f"train.validation_data={tmp_path / 'held_out.jsonl'}", "data.resolution=100",
                             f"train.output_dir={tmp_path / 'train.jsonl'}"])  # fmt: skip
    with pytest.raises(RelationError) as caught:
        check_config(cfg, "train")
    message = str(caught.value)
    assert message.startswith("5 problems") or message.startswith("4 problems"), message
    assert "train.jsonl': no rows" in message and "train.validation_data" in message and "data.resolution=100: not a multiple of 8" in message
    assert "train.output_dir" in message and "exists and is not a folder" in message
    assert ("bitsandbytes" in message) == (importlib.util.find_spec("bitsandbytes") is None)


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_dry_run_checks_and_loads_nothing(images, tmp_path, command):
    if command == "infer":
        args = ["infer", "--exemplar", images["a"], images["b"], "--query", images["q"], "-o", tmp_path / "o.png"]
    else:
        from eval_helpers import write_test_file

        args = ["eval", "--input", write_test_file(tmp_path / "data"), "--output-dir", tmp_path / "eval"]
    result, err = early([*args, "--dry-run"], tmp_path)
    assert result == "0 []", err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "eval").exists()
    bad, err = early([*args, "--dry-run", "--set", "model.memory=group_offload", "--device", "cpu"], tmp_path)
    assert bad == "1 []" and "offloads to a GPU" in err


def test_a_dry_run_refuses_what_the_run_would_refuse_before_loading(tiny_model, images, tmp_path, capsys):
    """A working size from --width alone over the pixel limit (one edit and batch mode), and offloading where
    the default device is the CPU: refused by the dry run too, not only by the run after loading."""
    import torch

    sets = [x for o in tiny_overrides(tiny_model) for x in ("--set", o)]
    one = ["infer", "--exemplar", images["a"], images["b"], "--query", images["q"], "-o", tmp_path / "o.png", *sets]
    rows = images["a"].parent / "rows.jsonl"  # paths in a rows file are relative to it
    rows.write_text(json.dumps({"cond1": images["a"].name, "cond2": images["b"].name, "source": images["q"].name}) + "\n")
    batch = ["infer", "--input", rows, "--output-dir", tmp_path / "out", *sets]
    for args in (one, batch):
        assert main([*map(str, args), "--width", "100000", "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert "working size 100000x" in err and "over the limit of 64,000,000 (data.max_image_pixels)" in err, err
    if not torch.cuda.is_available():
        assert main([*map(str, one), "--memory", "model_offload", "--dry-run"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == "error: model.memory=model_offload offloads to a GPU; model.device auto is the CPU on this machine"
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "out").exists()


def test_a_dry_run_gives_the_configuration_and_input_problems_in_one_message(images, tmp_path):
    """One round of fixes: a refused setting and a missing image together; an eval input the configuration
    check already names missing is said once."""
    args = ["infer", "--exemplar", tmp_path / "none.png", images["b"], "--query", images["q"], "--dry-run",
            "--set", "model.memory=group_offload", "--device", "cpu"]  # fmt: skip
    result, dry = early(args, tmp_path)
    assert result == "1 []" and dry.startswith("error: 2 problems in the configuration and its inputs: (1) "), dry
    assert "offloads to a GPU" in dry and "(2) exemplar A '" in dry and "none.png': file not found" in dry
    result, run = early([a for a in args if a != "--dry-run"], tmp_path)
    assert result == "1 []" and run == dry  # the run, refused before loading, says all of it too
    result, err = early(["eval", "--input", tmp_path / "none.jsonl", "--output-dir", tmp_path / "e", "--dry-run"], tmp_path)
    assert result == "1 []" and err == f"error: eval input '{tmp_path / 'none.jsonl'}': not found", err


def test_dry_runs_of_train_and_eval_check_their_output_folders_and_every_input(tmp_path, capsys):
    """eval's folder rule (a folder it did not make) and train's (files it did not write) in the dry run, as
    in the run; train lists the problems of every data file with the configuration's."""
    from helpers import analogy_dataset

    data = analogy_dataset(tmp_path / "d")
    other = analogy_dataset(tmp_path / "o", seed=1)
    (other.parent / "img" / "invert0s.png").write_bytes(b"")
    (data.parent / "img" / "mirror1t.png").write_bytes(b"not a png")
    for command in (["eval", "--input", str(data.with_name("test_seen.jsonl")), "--output-dir", str(data.parent)],
                    ["train", "--data", str(data), "--output-dir", str(data.parent), "--steps", "1"]):  # fmt: skip
        assert main([*command, "--dry-run"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "did not write (img, test_seen.jsonl, train.jsonl)" in err, err
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--data", str(other), "--output-dir", str(out), "--device", "cuda:7",
                 "--dry-run"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 3 problems in the configuration and its inputs: (1) model.device 'cuda:7'"), err
    assert f"(2) '{data}' row " in err and "not an image PIL can read" in err
    assert f"(3) '{other}' row " in err and "empty file (0 bytes)" in err and not out.exists()


def _weights_cases(t: Path, model: Path) -> dict[str, tuple[list, str]]:
    (t / "notes.bin").write_text("an adapter? no")
    (t / "run").mkdir()
    (t / "run" / "config.yaml").write_text("{}\n")
    (t / "run" / "adapter").mkdir()
    (t / "lora.safetensors").write_text("not a header")
    (t / "empty").mkdir()
    (t / "a_lora").mkdir()
    (t / "a_lora" / "pytorch_lora_weights.safetensors").write_text("")
    return {
        "adapter a LoRA file": (["--adapter", t / "lora.safetensors"], ".bin/.pt/.pth/.ckpt file; a .safetensors file is "
                                "a LoRA's form: give a LoRA with --lora"),
        "adapter a LoRA folder": (["--adapter", t / "a_lora"], "a_lora': folder has no config.json; it holds a LoRA: "
                                  "give it with --lora"),
        "adapter text as .bin": (["--adapter", t / "notes.bin"], "notes.bin': not a torch checkpoint"),
        "adapter image": (["--adapter", t / "in" / "a.png"], "expected a relation adapter folder or a .bin/.pt"),
        "adapter folder without config": (["--adapter", t / "empty"], "empty': folder has no config.json"),
        "adapter a run": (["--adapter", t / "run"], "a training run, not an adapter folder; its adapter is '"),
        "adapter a SigLIP": (["--adapter", model / "image_encoder"], "image_encoder': a siglip_vision_model folder, "
                             "not a relation adapter (whose config.json has _class_name RelationAdapter)"),
        "adapter a transformer": (["--adapter", model / "base" / "transformer"], "transformer': a FluxTransformer2DModel "
                                  "folder, not a relation adapter"),
        "lora not safetensors": (["--lora", t / "lora.safetensors"], "lora.safetensors': not a readable safetensors file"),
        "lora folder without weights": (["--lora", t / "empty"], "folder has no pytorch_lora_weights.safetensors"),
        "model LoRA folder": (["--lora", model / "base"], "folder has no pytorch_lora_weights.safetensors"),
        "device cuda": (["--device", "cuda:7"], "model.device 'cuda:7': CUDA is not available"),
    }


@pytest.mark.parametrize("case", [
    "adapter text as .bin", "adapter image", "adapter folder without config", "adapter a run", "adapter a SigLIP",
    "adapter a LoRA file", "adapter a LoRA folder",
    "adapter a transformer", "lora not safetensors",
    "lora folder without weights", "model LoRA folder", "device cuda"])  # fmt: skip
def test_dry_run_refuses_weights_and_devices_it_can_tell_are_wrong(images, tiny_model, tmp_path, capsys, case):
    """What a look at names, first bytes and torch's device list tells: refused by ``--dry-run`` as by the run,
    before the base loads (the run would otherwise fail minutes later, after loading FLUX)."""
    import torch

    if case == "device cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    extra, message = _weights_cases(tmp_path, tiny_model)[case]
    out = tmp_path / "o.png"
    args = ["infer", "--exemplar", images["a"], images["b"], "--query", images["q"], "-o", out, "--model",
            tiny_model / "base", "--image-encoder", tiny_model / "image_encoder",
            *(() if "--adapter" in extra else ("--adapter", tiny_model / "adapter")), *extra]  # fmt: skip
    for dry in (["--dry-run"], []):
        assert main([*map(str, args), *dry]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (case, dry, err)
    assert not out.exists()


@pytest.mark.parametrize("make_args, message", [
    (lambda p, t: ["--input", t, "--output-dir", t / "out"], "is a folder; give a JSON Lines file of rows"),
    (lambda p, t: ["-c", t, "--exemplar", p["a"], p["b"], "--query", p["q"]], "is a folder; give a .yaml file"),
    (lambda p, t: ["--run", p["a"], "--exemplar", p["a"], p["b"], "--query", p["q"]], "is a file; give the train.output_dir"),
    (lambda p, t: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", t], "is a directory; give an image file name"),
], ids=["rows folder", "config folder", "run file", "output folder"])  # fmt: skip
def test_a_folder_for_a_file_and_a_file_for_a_folder_are_named_so(images, tmp_path, capsys, make_args, message):
    assert main(["infer", *map(str, make_args(images, tmp_path))]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


@pytest.mark.parametrize("command", ["infer", "eval"])
@pytest.mark.parametrize("fault", ["missing image", "not an image", "pretty-printed JSON"])
def test_dry_run_reads_every_row_and_image(tmp_path, command, fault):
    """``infer --input`` and ``eval`` dry runs check what their real runs check before loading: every row
    parses and every image it names decodes, without importing the ML stack."""
    from eval_helpers import write_test_file

    rows = write_test_file(tmp_path / "data")
    if fault == "missing image":
        (tmp_path / "data" / "q1.png").unlink()
    elif fault == "not an image":
        (tmp_path / "data" / "q1.png").write_text("not a png")
    else:
        rows.write_text(json.dumps([json.loads(line) for line in rows.read_text().splitlines()], indent=2))
    args = {"infer": ["infer", "--input", rows, "--output-dir", tmp_path / "out"],
            "eval": ["eval", "--input", rows, "--output-dir", tmp_path / "out"]}[command]  # fmt: skip
    result, err = early([*args, "--dry-run"], tmp_path)
    assert result == "1 []" and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert ("row 2" in err and "q1.png" in err) if fault != "pretty-printed JSON" else "one JSON document" in err, err
    if command == "infer" and fault != "pretty-printed JSON":  # batch rows name the field as the row spells it
        assert err.startswith(f"error: '{rows}' row 2 source '{tmp_path / 'data' / 'q1.png'}'"), err
    assert not (tmp_path / "out").exists()


def test_a_batch_row_of_several_pairs_names_the_pair_at_fault(tmp_path):
    for name in ("a", "b", "c", "q"):
        random_image(tmp_path / f"{name}.png", (32, 32))
    row = {"exemplars": [["a.png", "b.png"], ["c.png", "gone.png"]], "source": "q.png"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    result, err = early(["infer", "--input", tmp_path / "rows.jsonl", "--output-dir", tmp_path / "out", "--dry-run"],
                        tmp_path)  # fmt: skip
    assert result == "1 []" and err == (f"error: '{tmp_path / 'rows.jsonl'}' row 1 exemplars pair 2 A' "
                                        f"'{tmp_path / 'gone.png'}': file not found")


def test_a_dry_run_names_every_bad_row_in_one_line(tmp_path):
    for name in ("a", "b", "q"):
        random_image(tmp_path / f"{name}.png", (32, 32))
    (tmp_path / "bad.png").write_text("not a png")
    rows = [{"cond1": "a.png", "cond2": "b.png", "source": "q.png"}] * 2 + [
        {"cond1": "a.png", "cond2": "gone.png", "source": "q.png"}, {"cond1": "a.png", "cond2": "b.png", "source": "bad.png"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    result, err = early(["infer", "--input", tmp_path / "rows.jsonl", "--output-dir", tmp_path / "out", "--dry-run"],
                        tmp_path)  # fmt: skip
    assert result == "1 []" and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: '{tmp_path / 'rows.jsonl'}': 8 rows cannot be used: row 3 cond2 "
                          f"'{tmp_path / 'gone.png'}': file not found; row 4 source '{tmp_path / 'bad.png'}'"), err
    assert err.count("; row ") == 7 and "row 16 source" in err and not (tmp_path / "out").exists()


def test_a_batch_dry_run_checks_the_output_folder_as_the_run_does(tmp_path):
    for name in ("a", "b", "q"):
        random_image(tmp_path / f"{name}.png", (32, 32))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"cond1": "a.png", "cond2": "b.png", "source": "q.png"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    random_image(out / "000000.png", (32, 32))
    (out / "generation.json").write_text(json.dumps({"infer.steps": 3, "rows": {"000000.png": {}}}))
    args = ["infer", "--input", tmp_path / "rows.jsonl", "--output-dir", out, "--dry-run"]
    result, err = early(args, tmp_path)
    assert result == "1 []" and "were generated with other settings (" in err and "infer.steps 3 -> 8" in err, err
    (out / "generation.json").unlink()
    result, err = early(args, tmp_path)
    assert result == "1 []" and "holds outputs (000000.png) that no generation.json describes" in err, err
    result, err = early([*args, "--overwrite"], tmp_path)
    assert result == "0 []", err  # --overwrite regenerates all: nothing to refuse, and nothing touched
    assert (out / "000000.png").is_file() and sorted(p.name for p in out.iterdir()) == ["000000.png"]


# ------------------------------------------------------------------------------------------ --offline and the hub


@pytest.mark.parametrize("command", ["infer", "train", "eval", "prepare"])
def test_every_command_takes_offline(monkeypatch, tmp_path, command):
    seen = {}
    target = {"infer": "relation_cli.infer.infer_single", "train": "relation_cli.train.train",
              "eval": "relation_cli.evaluate.evaluate", "prepare": "relation_cli.prepare.prepare"}[command]  # fmt: skip
    monkeypatch.setattr(target, lambda cfg, *a, **k: seen.setdefault("cfg", cfg) and None)
    monkeypatch.setattr("relation_cli.cli.before_loading", lambda cfg, command, *checks: None)
    args = {"infer": ["--exemplar", "a.png", "b.png", "--query", "q.png"], "train": [], "eval": [],
            "prepare": ["--output", str(tmp_path / "p")]}[command]  # fmt: skip
    CliRunner().invoke(app, [command, *args, "--offline"])
    assert seen["cfg"].model.local_files_only is True


class BlackHole:
    """A hub endpoint that accepts connections and never answers (a firewall that drops packets)."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"


def offline_run(args: list[str], tmp_path, endpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "relation_cli", *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)  # fmt: skip


def test_an_unreachable_hub_is_refused_in_one_line_that_says_how_to_use_folders(images, tiny_model, tmp_path):
    hole = BlackHole()
    args = ["infer", "--exemplar", images["a"], images["b"], "--query", images["q"], "-o", tmp_path / "o.png",
            "--model", "acme/flux", "--adapter", tiny_model / "adapter"]  # fmt: skip
    for endpoint in (hole.url, "http://127.0.0.1:9"):  # packets dropped; connection refused
        proc = offline_run(args, tmp_path, endpoint)
        err = proc.stderr.strip()
        assert proc.returncode == 1 and len(err.splitlines()) == 1, err
        assert "cannot be reached" in err and "model.base 'acme/flux'" in err and "model.image_encoder" in err
        assert "--model /path/to/FLUX.1-dev" in err and "--image-encoder /path/to/" in err
    assert not (tmp_path / "o.png").exists()


def test_a_local_model_without_image_encoder_names_the_setting(tiny_model, tmp_path):
    proc = offline_run(["train", "--model", tiny_model / "base", "--dry-run"], tmp_path, "http://127.0.0.1:9")
    assert proc.returncode == 1 and "model.image_encoder is empty" in proc.stderr
    assert f"--image-encoder {tiny_model / 'image_encoder'}" in proc.stderr


def test_eval_skips_unreachable_encoders_with_a_note_on_how_to_enable_them(tiny_model, tmp_path):
    from eval_helpers import write_test_file

    data = write_test_file(tmp_path / "data", rows=2)
    args = ["eval", "--input", data, "--output-dir", tmp_path / "eval", "--limit", "1", "--steps", "1",
            "--model", tiny_model / "base", "--image-encoder", tiny_model / "image_encoder",
            "--adapter", tiny_model / "adapter", "--set", "eval.baselines=[]", "--set", "eval.fid=false",
            "--set", "infer.max_sequence_length=16"]  # fmt: skip
    proc = offline_run(args, tmp_path, BlackHole().url)
    assert proc.returncode == 0, proc.stderr
    assert "Retry" not in proc.stderr + proc.stdout  # huggingface_hub's retry lines
    notes = " ".join(proc.stdout.split())  # rich wraps long notes at the terminal's width
    for metric, field in (("clip_i", "clip_model"), ("dino", "dino_model")):
        assert f"note: {metric} skipped:" in notes and f"set eval.{field} to a local folder" in notes


# ------------------------------------------------------------------------------------------ help and relation config


def test_relation_alone_shows_its_help_and_version_says_which(capsys):
    from relation_cli import __version__

    assert main([]) == 0
    captured = capsys.readouterr()
    assert "Usage: relation [OPTIONS] COMMAND" in captured.out and "error" not in captured.err
    assert "--version" in captured.out and "<bool>" not in captured.out
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"relation {__version__}\n"


def test_init_model_says_its_problems_in_the_config_loaders_words(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("infer: 3\nnum_layers: x\n")
    for args, message in [
        (["--kontext", "--klein"], "error: init-model: kontext is a FLUX.1 layout; base flux2-klein has its own"),
        (["--spec", spec], f"error: spec '{spec}': num_layers: Input should be a valid integer, unable to parse string "
                           "as an integer; infer: unknown key"),
        (["--seed", "-5"], "error: Invalid value for '--seed': Input should be greater than or equal to 0"),
        (["--seed", str(2**64)], "error: Invalid value for '--seed': Input should be less than or equal to"),
    ]:  # fmt: skip
        assert main(["init-model", str(tmp_path / "m"), *map(str, args)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("spec, message", [
    ("attention_head_dim: 30", "attention_head_dim 30 must equal the sum of axes_dims_rope (4, 6, 6) (16)"),
    ("vae_channels: []", "vae_channels () must be one or more widths, each a multiple of vae_norm_groups (4)"),
    ("vae_norm_groups: 5", "vae_channels (8, 16, 16, 16) must be one or more widths, each a multiple of vae_norm_groups (5)"),
    ("siglip_heads: 3", "siglip_hidden 16 must be a multiple of siglip_heads 3"),
    ("num_layers: true", "num_layers: a number, not true"),
    ("text_hidden: 9", "the sizes do not fit together (The hidden size (9) is not a multiple of the number of attention "
                       "heads (4).); nothing was written"),
])  # fmt: skip
def test_init_model_refuses_sizes_that_do_not_fit_together_in_one_line(tmp_path, capsys, spec, message):
    """Sizes the libraries would refuse with their own exception (an internal error) are named by their keys; any
    the checks miss are still one line that says the sizes do not fit, and nothing is written."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec + "\n")
    assert main(["init-model", str(tmp_path / "m"), "--spec", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: spec '{path}': ") and message in err and err.count("\n") == 1, err
    assert "internal error" not in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("klein", [False, True])
def test_init_model_counts_its_weights_without_building_them_and_refuses_what_would_not_fit(
    tmp_path, capsys, monkeypatch, klein
):
    """A spec too large for the free memory is one line before anything is allocated or written; the count
    (on torch's meta device) is the built model's to the byte."""
    import types

    import psutil
    import torch

    from relation_cli.fs import size_text
    from relation_cli.tiny import LIBRARIES_BYTES, ArchSpec, build_components, weight_bytes

    spec = ArchSpec(base="flux2-klein" if klein else "flux1")
    built = [t for m in build_components(spec).values() if isinstance(m, torch.nn.Module)
             for t in (*m.parameters(), *m.buffers())]  # fmt: skip
    need, count = weight_bytes(spec)
    assert (need, count) == (sum(t.nbytes for t in built), sum(t.numel() for t in built))
    room = need + LIBRARIES_BYTES  # the weights beside the libraries' own memory
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=room - 1))
    args = ["init-model", str(tmp_path / "m"), *(["--klein"] if klein else [])]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (f"error: the spec's weights take {size_text(need)} ({count:,} parameters in float32); building "
                   f"them takes about {size_text(room)} of memory, more than the {size_text(room - 1)} "
                   "free; nothing was written\n")  # fmt: skip
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []
    import shutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=room))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=need - 1))
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"error: the spec's weights take {size_text(need)} ({count:,} parameters in float32), more than the "
        f"{size_text(need - 1)} free on the disk at '{tmp_path}'; nothing was written\n")
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert main(args) == 0 and (tmp_path / "m" / "base" / "model_index.json").is_file()


def test_eval_without_input_says_so_once(capsys):
    for dry in (["--dry-run"], []):
        assert main(["eval", *dry]) == 1
        assert capsys.readouterr().err == ("error: no input to evaluate: pass --input FILE (e.g. prepare's test_seen.jsonl) "
                                           "or set eval.inputs\n")  # fmt: skip


@pytest.mark.parametrize("command", ["infer", "train", "eval", "prepare", "config", "convert", "init-model"])
def test_help_is_short_and_shows_defaults_choices_and_flags(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.replace("│", " ").split())
    assert len(text.rstrip().splitlines()) <= 60, len(text.splitlines())
    assert "<bool>" not in text  # flags show as flags
    assert "Config keys" not in text and "train.kl_weight" not in text  # the full reference is relation config
    if command in ("infer", "train", "eval", "prepare"):
        assert "Example: relation " + command in flat
    if command in ("infer", "eval"):
        assert "(infer.steps; default 24; demo model 8)" in flat
        assert "train" not in text  # no help text that speaks of another command
    if command == "infer":
        assert "one of none, model_offload, sequential_offload, group_offload, fp8_storage" in flat
        assert "the height follows the query's aspect ratio; FLUX.2 [klein]: 64 or more" in flat and "Height; klein needs 64+" in flat


def test_config_reference_lists_every_key_with_type_default_and_help(capsys):
    from relation_cli.config import RelationConfig

    assert main(["config", "infer"]) == 0
    text = capsys.readouterr().out
    for key in RelationConfig.model_fields["infer"].annotation.model_fields:
        assert f"infer.{key}: " in text
    assert "infer.steps: int = 24 (demo model: 8)\n    Denoising steps." in text
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "model.memory: none | model_offload | sequential_offload | group_offload | fp8_storage = \"none\"" in text
    assert "train.kl_weight: float = 1e-06" in text
    assert main(["config", "nonsense"]) == 1
    assert "no config section 'nonsense'" in capsys.readouterr().err


def test_config_prints_the_resolved_yaml(capsys):
    import yaml

    assert main(["config", "--config", str(ROOT / "configs" / "demo-train.yaml"), "--set", "train.steps=7"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["steps"] == 7 and resolved["data"]["resolution"] == 32
    assert main(["config", "train", "--set", "train.steps=9"]) == 0
    only = yaml.safe_load(capsys.readouterr().out)
    assert list(only) == ["train"] and only["train"]["steps"] == 9


def test_a_batch_rerun_that_makes_nothing_keeps_the_true_config(tmp_path, capsys):
    """The demo adapter has 8 tokens and role embeddings: the saved config says so, also after a rerun that
    reused every output and loaded no model."""
    for name in ("exemplar_before", "exemplar_after", "query"):
        shutil.copy(EXAMPLES / f"{name}.png", tmp_path)
    row = {"cond1": "exemplar_before.png", "cond2": "exemplar_after.png", "source": "query.png"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    args = ["infer", "--input", str(tmp_path / "rows.jsonl"), "--output-dir", str(tmp_path / "out"), "--steps", "1"]
    for written in ("wrote 1 image", "wrote 0 images"):
        assert main(args) == 0
        assert written in capsys.readouterr().out
        saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["adapter"]
        assert (saved["num_tokens"], saved["role_embeddings"]) == (8, True)


def test_one_edit_names_every_image_it_cannot_use(images, tmp_path, capsys):
    args = ["infer", "--exemplar", str(tmp_path / "m1.png"), str(images["text"]), "--query", str(images["tiny"]),
            "-o", str(tmp_path / "o.png")]  # fmt: skip
    for dry in (["--dry-run"], []):
        assert main(args + dry) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: exemplar A '") and "\n" not in err, err
        assert "m1.png': file not found; exemplar A' '" in err and "not an image PIL can read; query '" in err
        assert err.endswith("a side under 16 pixels (the least is 16x16)")
    assert not (tmp_path / "o.png").exists()


def test_an_input_problem_is_dropped_only_when_a_configuration_problem_names_the_same_file(tmp_path, monkeypatch):
    """The combined message says a file's problem once; a path holding an apostrophe is no reason to drop one."""
    from relation_cli import cli
    from relation_cli.config import load_config
    from relation_cli.errors import RelationError

    home = tmp_path / "o'brien"
    monkeypatch.setattr("relation_cli.checks.config_problems", lambda cfg, command: [f"adapter '{home}/a.bin': not found"])
    cfg = load_config(None, [])

    def image_problem():
        raise RelationError(f"exemplar A '{home}/x.png': file not found")

    def same_file():
        raise RelationError(f"'{home}/a.bin': file not found")

    with pytest.raises(RelationError) as err:
        cli.check_everything(cfg, "infer", image_problem, same_file)
    assert str(err.value) == (f"2 problems in the configuration and its inputs: (1) adapter '{home}/a.bin': not found; "
                              f"(2) exemplar A '{home}/x.png': file not found")  # fmt: skip


def test_a_cuda_index_the_machine_lacks_is_refused(monkeypatch):
    """``cuda:N`` past the last GPU (torch's answers stood in for a 1-GPU machine)."""
    import torch

    from relation_cli.errors import RelationError
    from relation_cli.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(RelationError, match=r"model.device 'cuda:3': this machine has 1 CUDA device \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:3")


def test_wording_for_a_dataset_as_run_a_folder_to_recompute_and_an_input_given_twice(tmp_path, capsys):
    from eval_helpers import write_test_file

    data = tmp_path / "data"
    assert main(["prepare", "--synthetic", "2", "--output", str(data), "--set", "data.synthetic_size=16"]) == 0
    capsys.readouterr()
    args = ["infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
            "--query", str(EXAMPLES / "query.png"), "--dry-run"]  # fmt: skip
    for command, message in [
        (args + ["--run", str(data)], f"error: run '{data}': is a dataset written by relation prepare, not a training "
                                      "run; give the train.output_dir of a finished relation train"),
        (["eval", "--recompute", str(data)], f"error: '{data}': no metrics.json in this folder (give a relation eval "
                                             "output folder or its metrics.json)"),
    ]:  # fmt: skip
        assert main(command) == 1
        assert capsys.readouterr().err.strip() == message
    rows = write_test_file(tmp_path / "rows")
    assert main(["eval", "--input", str(rows), "--input", str(rows), "--output-dir", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.strip() == f"error: input '{rows}' is given twice: give each file once"


def test_the_demo_photo_note_is_for_a_query_the_model_shrinks_itself(tmp_path, capsys):
    """A 32x32 scene worked on at 24x24 on request is not a photo: no note about what the demo was trained on."""
    args = ["infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
            "--query", str(EXAMPLES / "query.png"), "-o", str(tmp_path / "o.png"), "--steps", "1",
            "--width", "24", "--height", "24"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "query resized from 32x32 to 24x24" in err and "embedded demo model" not in err, err


@pytest.mark.parametrize("port, message", [("99999", "less than or equal to 65535"), ("0", "greater than or equal to 1"),
                                           ("-1", "greater than or equal to 1")])  # fmt: skip
def test_ui_refuses_a_port_out_of_range_as_a_usage_error(capsys, port, message):
    assert main(["ui", "--port", port, "--offline"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Invalid value for '--port': ") and message in err and "internal" not in err, err


def test_a_stop_after_a_commands_own_handling_is_one_line_not_a_traceback(monkeypatch, capsys):
    """SIGTERM turns into KeyboardInterrupt anywhere; one arriving after a command's own handling has ended (it
    has printed ``wrote ...``) still gives exit status 130 and one line."""
    import relation_cli.cli as cli

    def finished_then_stopped(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", finished_then_stopped)
    assert main(["infer", "--help"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


@pytest.mark.parametrize("value, message", [
    ("", "--output is empty; give an image file name, e.g. 'edited.png'"),
    ("out/x.png/", "output 'out/x.png/': ends with '/', so it names a folder; give an image file name, e.g. 'out/x.png/edited.png'"),
])  # fmt: skip
def test_an_output_that_names_no_file_is_refused_as_typed(tmp_path, monkeypatch, capsys, value, message):
    """``-o ''`` and ``-o out/x.png/``: ``Path`` would make them '.' (a folder) and 'out/x.png' (a file written where
    a folder was meant); the value is read as typed."""
    monkeypatch.chdir(tmp_path)
    args = ["infer", "--exemplar", str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png"),
            "--query", str(EXAMPLES / "query.png"), "-o", value]  # fmt: skip
    for extra in (["--dry-run"], []):
        assert main(args + extra) == 1
        assert capsys.readouterr().err == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_model_folder_that_cannot_be_read_is_one_line(tiny_model, tmp_path, capsys, monkeypatch):
    """A --model folder (or one the hint looks into) without permission: one line, not an internal error."""
    from pathlib import Path as P

    real = P.is_file
    for blocked in (tmp_path / "m" / "model_index.json", tmp_path / "m" / "base" / "model_index.json"):
        (tmp_path / "m" / "adapter").mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(P, "is_file", lambda self, b=blocked: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(b)))
                            if self == b else real(self))  # fmt: skip
        args = ["--model", str(tmp_path / "m"), "--image-encoder", str(tiny_model / "image_encoder"), "--adapter", str(tiny_model / "adapter")]
        assert main(["infer", *args, "--exemplar", *(str(ROOT / "examples" / n) for n in ("exemplar_before.png", "exemplar_after.png")),
                     "--query", str(ROOT / "examples" / "query.png"), "--output", str(tmp_path / "o.png")]) == 1  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "internal error" not in err, err
        assert f"model.base '{tmp_path / 'm'}': " in err, err
    monkeypatch.setattr(P, "is_file", real)
    real_exists = P.exists  # the folder above cannot be searched: even exists() raises
    monkeypatch.setattr(P, "exists", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(self)))
                        if str(self).startswith(str(tmp_path / "closed")) else real_exists(self))  # fmt: skip
    args = ["--model", str(tmp_path / "closed" / "m"), "--image-encoder", str(tiny_model / "image_encoder"), "--adapter", str(tiny_model / "adapter")]
    assert main(["infer", *args, "--exemplar", *(str(ROOT / "examples" / n) for n in ("exemplar_before.png", "exemplar_after.png")),
                 "--query", str(ROOT / "examples" / "query.png"), "--output", str(tmp_path / "o.png")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err and f"model.base '{tmp_path / 'closed' / 'm'}': " in err, err


def test_a_base_folder_without_model_index_says_where_one_is(tiny_model, tmp_path, capsys, monkeypatch):
    """--model given the folder init-model wrote (base/, image_encoder/, adapter/), one part of a base, or a hub
    cache's model folder (the base under snapshots/<hash>/): the refusal says what to pass instead."""
    query = str(ROOT / "examples" / "query.png")
    pair = [str(ROOT / "examples" / n) for n in ("exemplar_before.png", "exemplar_after.png")]
    cache = tmp_path / "models--owner--name"
    (cache / "snapshots").mkdir(parents=True)
    (cache / "snapshots" / "abc123").symlink_to(tiny_model / "base")
    cases = {
        str(tiny_model): f"no model_index.json in this folder; it holds a whole relation model (base/, image_encoder/, "
                         f"adapter/): pass --model {tiny_model / 'base'} --image-encoder {tiny_model / 'image_encoder'} "
                         f"--adapter {tiny_model / 'adapter'};",
        str(tiny_model / "base" / "transformer"): f"no model_index.json in this folder; it is one part of "
                                                  f"'{tiny_model / 'base'}', which has model_index.json: pass that",
        str(cache): f"no model_index.json in this folder; '{cache / 'snapshots' / 'abc123'}' has it: pass that",
    }
    for base, said in cases.items():
        assert main(["infer", "--model", base, "--exemplar", *pair, "--query", query, "--output", str(tmp_path / "o.png")]) == 1
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models--owner--name"]
    hints = {tiny_model: f"no config.json in this folder; '{tiny_model / 'image_encoder'}' has it: pass that",  # not adapter/
             tiny_model / "base": "no config.json in this folder\n"}  # no SigLIP among its parts: no hint
    for encoder, said in hints.items():
        args = ["--model", str(tiny_model / "base"), "--image-encoder", str(encoder), "--adapter", str(tiny_model / "adapter")]
        assert main(["infer", *args, "--exemplar", *pair, "--query", query, "--output", str(tmp_path / "o.png")]) == 1
        err = capsys.readouterr().err
        assert said in err, err
    monkeypatch.chdir(tiny_model / "base" / "transformer")  # '.': the folder above is named by its path
    assert main(["infer", "--model", ".", "--exemplar", *pair, "--query", query, "--output", str(tmp_path / "o.png")]) == 1
    assert f"it is one part of '{(tiny_model / 'base').resolve()}', which has model_index.json" in capsys.readouterr().err
