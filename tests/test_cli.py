"""The command line: wiring, the embedded default, batch mode, and every bad input as one line + exit 1."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, tiny_overrides
from helpers import random_image, truncated_copy
from typer.testing import CliRunner

from relation_cli.cli import app, main

COMMANDS = ["infer", "prepare", "train", "eval", "convert", "init-model"]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


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
    ("too small", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["tiny"]], "smaller than 16x16"),
    ("pixel limit", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "--set", "data.max_image_pixels=1000"], "over the limit"),
    ("existing output", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", p["existing"]], "already exists"),
    ("bad extension", lambda p: ["--exemplar", p["a"], p["b"], "--query", p["q"], "-o", "x.gif"], "unsupported extension"),
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
