"""What infer and eval leave behind: no non-finite image, reuse only of matching outputs, --run, file modes."""

from __future__ import annotations

import json
import re
import os
import shutil
import stat

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import tiny_overrides
from eval_helpers import write_test_file
from helpers import random_image
from relation_cli.cli import main
from relation_cli.errors import RelationError


def sets(*overrides: str) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture()
def images(tmp_path):
    return [random_image(tmp_path / f"{n}.png", (32, 32), seed=i) for i, n in enumerate(("a", "b", "q"))]


def nan_lora(path):
    """A raw peft LoRA on one module of the tiny transformer whose B holds NaN."""
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, 32),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.full((32, 2), float("nan"))}, path)  # fmt: skip
    return path


def infer_args(tiny_model, images, *extra):
    a, b, q = images
    return ["infer", "--exemplar", str(a), str(b), "--query", str(q), "--steps", "1",
            *sets(*tiny_overrides(tiny_model), "model.device=cpu", "infer.max_sequence_length=16"), *extra]  # fmt: skip


def test_non_finite_result_writes_no_image(tiny_model, images, tmp_path, capsys):
    out = tmp_path / "out.png"
    lora = nan_lora(tmp_path / "nan.safetensors")
    assert main(infer_args(tiny_model, images, "--lora", str(lora), "-o", str(out))) == 1
    err = capsys.readouterr().err
    assert "error: the result is not finite (NaN or Inf in the latents from step 1)" in err
    assert f"likely source: a LoRA ({lora})" in err and "the dtype" in err
    assert not out.exists() and not (tmp_path / "out.png.yaml").exists()


def batch_rows(folder, texts=("one", "two")):
    for i in range(3):
        random_image(folder / f"{i}.png", (32, 32), seed=i)
    rows = [{"cond1": "0.png", "cond2": "1.png", "source": "2.png", "text": t} for t in texts]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rows.jsonl"


def batch(tiny_model, rows, out, *extra):
    return main(["infer", "--input", str(rows), "--output-dir", str(out), "--steps", "1",
                 *sets(*tiny_overrides(tiny_model), "model.device=cpu", "infer.max_sequence_length=16"), *extra])  # fmt: skip


def test_batch_counts_non_finite_rows_as_failures(tiny_model, tmp_path, capsys):
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    assert batch(tiny_model, rows, out, "--lora", str(nan_lora(tmp_path / "nan.safetensors"))) == 1
    captured = capsys.readouterr()
    assert "wrote 0 images" in captured.out
    assert "row 1: the result is not finite" in captured.err and "row 2: the result is not finite" in captured.err
    assert "error: 2 rows gave no image" in captured.err
    assert not list(out.glob("*.png"))
    assert json.loads((out / "generation.json").read_text())["rows"] == {}


def test_batch_reuses_only_outputs_of_the_same_row_and_settings(tiny_model, tmp_path, capsys, monkeypatch):
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    assert batch(tiny_model, rows, out) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(stamps) == ["000000.png", "000001.png"]
    recorded = json.loads((out / "generation.json").read_text())
    assert recorded["infer.steps"] == 1 and recorded["rows"]["000001.png"]["text"] == "two"
    assert yaml.safe_load((out / "config.yaml").read_text())["infer"]["steps"] == 1
    batch_rows(tmp_path, texts=("one", "changed"))  # row 2 is another row now: only it is made again
    assert batch(tiny_model, rows, out) == 0
    assert "wrote 1 image to" in capsys.readouterr().out
    assert (out / "000000.png").stat().st_mtime_ns == stamps["000000.png"]
    assert (out / "000001.png").stat().st_mtime_ns != stamps["000001.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    random_image(tmp_path / "2.png", (32, 32), seed=9)  # both rows' query, replaced under its name
    assert batch(tiny_model, rows, out) == 0
    assert "wrote 2 images to" in capsys.readouterr().out  # made again, not reused by path
    assert all((out / name).stat().st_mtime_ns != stamp for name, stamp in stamps.items())
    assert batch(tiny_model, rows, out, "--set", "infer.guidance=2.0") == 1  # other settings: refused
    err = capsys.readouterr().err
    assert "were generated with other settings (infer.guidance" in err and "or --overwrite to make every row again" in err
    assert batch(tiny_model, rows, out, "--set", "infer.guidance=2.0", "--overwrite") == 0  # as the message says
    assert json.loads((out / "generation.json").read_text())["infer.guidance"] == 2.0
    (out / "generation.json").unlink()  # outputs nobody can vouch for: refused, or --overwrite
    assert batch(tiny_model, rows, out) == 1
    assert "that no generation.json describes" in capsys.readouterr().err
    assert batch(tiny_model, rows, out, "--overwrite") == 0
    assert "wrote 2 images" in capsys.readouterr().out


def test_a_shorter_rows_file_keeps_the_other_outputs_and_overwrite_leaves_only_its_own(tiny_model, tmp_path, capsys):
    rows, out = batch_rows(tmp_path, texts=("one", "two", "three")), tmp_path / "out"
    assert batch(tiny_model, rows, out) == 0
    batch_rows(tmp_path, texts=("one",))  # row 1 only: rows 2 and 3 stay, reused, and stay recorded
    assert batch(tiny_model, rows, out) == 0
    assert "wrote 0 images" in capsys.readouterr().out
    assert sorted(json.loads((out / "generation.json").read_text())["rows"]) == ["000000.png", "000001.png", "000002.png"]
    batch_rows(tmp_path, texts=("one", "two", "three"))
    assert batch(tiny_model, rows, out) == 0 and "wrote 0 images" in capsys.readouterr().out  # all three reused
    record = json.loads((out / "generation.json").read_text())
    record["rows"]["../rows.jsonl"] = record["rows"]["000002.png"]  # an edited record names a file not ours
    (out / "generation.json").write_text(json.dumps(record))
    batch_rows(tmp_path, texts=("one",))
    assert batch(tiny_model, rows, out, "--overwrite") == 0
    shown = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .relation.lock: the folder's lock
    assert shown == ["000000.png", "config.yaml", "generation.json"]
    assert list(json.loads((out / "generation.json").read_text())["rows"]) == ["000000.png"]
    assert (tmp_path / "rows.jsonl").is_file()


def test_batch_records_each_output_as_it_is_written_and_never_overwrites_a_stray_file(tiny_model, tmp_path, capsys,
                                                                                      monkeypatch):
    import relation_cli.infer as core
    from relation_cli.evaluate.settings import ROWS_JOURNAL, read_settings

    rows, out = batch_rows(tmp_path, texts=("one", "two", "three")), tmp_path / "out"
    recorded_before, edit, sizes = [], core.edit, []

    def edit_then_look(*args, **kwargs):  # what a run killed before this row would leave recorded
        recorded_before.append(sorted(read_settings(out)["rows"]))
        sizes.append((out / "generation.json").stat().st_size)
        return edit(*args, **kwargs)

    monkeypatch.setattr(core, "edit", edit_then_look)
    assert batch(tiny_model, rows, out) == 0
    assert recorded_before == [[], ["000000.png"], ["000000.png", "000001.png"]]
    assert len(set(sizes)) == 1  # each output appends a line; generation.json itself is written at the start and end
    assert not (out / ROWS_JOURNAL).exists()  # folded into generation.json at the end
    assert sorted(json.loads((out / "generation.json").read_text())["rows"]) == ["000000.png", "000001.png", "000002.png"]
    monkeypatch.setattr(core, "edit", edit)
    record = json.loads((out / "generation.json").read_text())
    del record["rows"]["000002.png"]  # a file the record does not know: someone else's
    (out / "generation.json").write_text(json.dumps(record))
    stray = (out / "000002.png").read_bytes()
    assert batch(tiny_model, rows, out) == 1
    assert "holds outputs (000002.png) that no generation.json describes" in capsys.readouterr().err
    assert (out / "000002.png").read_bytes() == stray


def test_an_interrupted_rerun_of_changed_rows_loses_only_the_row_it_was_making(tiny_model, tmp_path, capsys,
                                                                               monkeypatch):
    import relation_cli.infer as core

    rows, out = batch_rows(tmp_path, texts=("one", "two", "three")), tmp_path / "out"
    assert batch(tiny_model, rows, out) == 0
    batch_rows(tmp_path, texts=("1", "2", "3"))  # every row changed: all three to make again
    calls, edit = [], core.edit

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return edit(*args, **kwargs)

    monkeypatch.setattr(core, "edit", interrupted)
    assert batch(tiny_model, rows, out) == 130
    monkeypatch.setattr(core, "edit", edit)
    capsys.readouterr()
    assert batch(tiny_model, rows, out) == 0  # not refused: the old outputs stayed recorded until replaced
    said = capsys.readouterr()
    assert "wrote 2 images" in said.out
    assert (f"note: 2 outputs in '{out}' were made from other rows or images than the rows file's now (row 2, row 3; "
            "changed since): made again") in " ".join(said.err.split()), said.err  # fmt: skip
    assert [r["text"] for r in json.loads((out / "generation.json").read_text())["rows"].values()] == ["1", "2", "3"]


def test_batch_refuses_a_working_size_before_loading_the_model(tiny_model, tmp_path, capsys, monkeypatch):
    import relation_cli.model as model

    monkeypatch.setattr(model, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model"))
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    # One side given: the other follows each query's aspect ratio, so only the rows' images tell the size.
    assert batch(tiny_model, rows, out, "--width", "64", "--set", "data.max_image_pixels=2000") == 1
    err = capsys.readouterr().err
    assert f"error: '{rows}' row 1: working size 64x64 (" in err and "over the limit of 2,000" in err, err
    assert not out.exists()


def test_rows_sharing_images_hash_each_file_once(tmp_path, monkeypatch):
    import relation_cli.infer as core
    from relation_cli.rows import parse_rows

    rows = parse_rows(batch_rows(tmp_path, texts=("one", "two", "three")))  # all three share 0.png, 1.png, 2.png
    hashed, digest = [], core.file_digest
    monkeypatch.setattr(core, "file_digest", lambda path: hashed.append(path) or digest(path))
    digests = {}
    records = [core.row_record(r, digests) for r in rows]
    assert sorted(p.name for p in hashed) == ["0.png", "1.png", "2.png"]
    assert records[0]["sha256"] == records[2]["sha256"] and len(set(records[0]["sha256"])) == 3


def make_run(tiny_model, root):
    """A run folder as relation train exports it (contract A): adapter/, lora/, config.yaml with run:."""
    from diffusers import FluxPipeline

    run = root / "run"
    shutil.copytree(tiny_model / "adapter", run / "adapter")
    a, b = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), torch.randn(32, 4) * 0.1
    FluxPipeline.save_lora_weights(run / "lora", transformer_lora_layers={
        "transformer_blocks.0.attn.to_q.lora_A.weight": a, "transformer_blocks.0.attn.to_q.lora_B.weight": b})  # fmt: skip
    config = {"model": {"base": str(tiny_model / "base")}, "infer": {"steps": 2, "guidance": 1.5},
              "run": {"base": str(tiny_model / "base"), "image_encoder": str(tiny_model / "image_encoder"),
                      "adapter": "adapter", "lora": "lora", "step": 2}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_infer_with_a_run_uses_its_model_and_infer_settings(tiny_model, images, tmp_path, capsys):
    run = make_run(tiny_model, tmp_path)
    a, b, q = images
    out = tmp_path / "out.png"
    args = ["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(out), "--run", str(run)]
    assert main([*args, "--set", "model.device=cpu", "--set", "infer.max_sequence_length=16"]) == 0, capsys.readouterr().err
    used = yaml.safe_load((tmp_path / "out.png.yaml").read_text())
    assert used["model"]["base"] == str(tiny_model / "base")
    assert used["model"]["image_encoder"] == str(tiny_model / "image_encoder")
    assert used["adapter"]["path"] == str(run / "adapter")
    assert used["lora"]["paths"] == [{"path": str(run / "lora"), "weight": 1.0}]
    assert used["infer"]["steps"] == 2 and used["infer"]["guidance"] == 1.5 and used["run"] is None


def test_a_run_is_not_a_config_or_a_base(tiny_model, images, tmp_path, capsys):
    run = make_run(tiny_model, tmp_path)
    a, b, q = images
    args = ["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(tmp_path / "o.png")]
    assert main([*args, "--config", str(run / "config.yaml")]) == 1
    assert f"is a training run's config: use --run {run}" in capsys.readouterr().err
    assert main([*args, "--model", str(run)]) == 1
    assert f"a training run, not a model folder; use --run {run}" in capsys.readouterr().err
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": 2}}))
    assert main([*args, "--run", str(run)]) == 1
    assert "has no run: section" in capsys.readouterr().err


def test_eval_refused_for_an_unfit_adapter_leaves_no_record(tiny_model, tmp_path, capsys):
    data = write_test_file(tmp_path / "data", rows=2)
    bad = tmp_path / "bad.bin"
    torch.save({"image_proj": {}, "ip_adapter": {}}, bad)
    out = tmp_path / "out"
    args = ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1",
            *sets(*tiny_overrides(tiny_model), "eval.clip_model=", "eval.dino_model=", "eval.fid=false",
                  "infer.max_sequence_length=16", "model.device=cpu")]  # fmt: skip
    assert main([*args, "--adapter", str(bad)]) == 1
    assert "image_proj keys" in capsys.readouterr().err
    assert not (out / "config.yaml").exists() and not (out / "generation.json").exists()
    assert main(args) == 0, capsys.readouterr().err  # the corrected rerun is not blocked
    assert (out / "generation.json").is_file()


def test_weights_and_json_get_the_umask_mode(tmp_path):
    from relation_cli.adapter import RelationAdapter
    from relation_cli.fs import write_text_atomic
    from relation_cli.weights import save_atomic

    old = os.umask(0o022)
    try:
        adapter = RelationAdapter(image_embed_dim=8, cross_attention_dim=8, num_tokens=2, num_layers=1,
                                  hidden_size=8, attention_head_dim=4)  # fmt: skip
        save_atomic(adapter, tmp_path / "adapter")
        write_text_atomic(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "x.json", *(tmp_path / "adapter").iterdir()]}
    assert modes == {"x.json": 0o644, "config.json": 0o644, "diffusion_pytorch_model.safetensors": 0o644}
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


def test_no_global_state_changes_at_import(monkeypatch):
    import importlib
    import warnings

    import relation_cli.fs as fs
    import relation_cli.images as images

    def no_umask(*a):
        raise AssertionError("os.umask called at import")

    monkeypatch.setattr(os, "umask", no_umask)
    before = list(warnings.filters)
    importlib.reload(fs)
    importlib.reload(images)
    assert warnings.filters == before


def test_dropped_alpha_is_said_once(tmp_path, caplog):
    from relation_cli.images import _alpha_noted, open_image

    _alpha_noted.clear()
    rgba = Image.new("RGBA", (16, 16), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (200, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    with caplog.at_level("WARNING", logger="relation_cli.images"):
        first = open_image(tmp_path / "t.png", "query", 10**6)
        open_image(tmp_path / "t.png", "query", 10**6)
    assert first.getpixel((0, 0)) == (200, 0, 0)  # the authors' convert("RGB"): the hidden colour shows
    notes = [r.getMessage() for r in caplog.records if "alpha is dropped" in r.getMessage()]
    assert len(notes) == 1 and f"query '{tmp_path / 't.png'}' is transparent" in notes[0]


def test_an_animated_image_is_said_to_give_its_first_frame(tmp_path, caplog):
    from relation_cli.images import _frames_noted, open_image

    _frames_noted.clear()
    frames = [Image.new("RGB", (16, 16), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="relation_cli.images"):
        image = open_image(tmp_path / "a.gif", "query", 10**6)
        open_image(tmp_path / "a.gif", "query", 10**6)
    assert image.getpixel((0, 0))[0] > 150  # the first (red) frame
    notes = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert notes == [f"note: query '{tmp_path / 'a.gif'}' has 3 frames; the first is used"]


def test_byte_order_mark_is_read(tmp_path):
    from relation_cli.rows import parse_rows

    rows = batch_rows(tmp_path)
    rows.write_bytes(b"\xef\xbb\xbf" + rows.read_bytes())
    assert [r.text for r in parse_rows(rows)] == ["one", "two"]


def test_prepare_names_the_tasks_it_drops(tmp_path, capsys):
    from relation_cli.prepare import make_synthetic

    root = make_synthetic(tmp_path / "raw", pairs_per_task=3, size=16, tasks=["mirror", "invert", "blur"])
    (root / "blur" / "Group1" / "labels.json").write_bytes(b"\xef\xbb\xbf[]")  # with a byte-order mark, too
    out = tmp_path / "out"
    assert main(["prepare", str(root), "--output", str(out), "--workers", "1", "--test-per-task", "1"]) == 0
    said = capsys.readouterr().out
    assert "1 task(s) dropped" in said and f"'blur': '{root / 'blur' / 'Group1' / 'labels.json'}' holds no entries" in said
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["dropped_tasks"]) == {"blur"} and set(manifest["tasks"]) == {"mirror", "invert"}


def test_eval_counts_non_finite_outputs_as_failures(tiny_model, tmp_path, capsys):
    data = write_test_file(tmp_path / "data", rows=2)
    out = tmp_path / "out"
    args = ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1",
            "--lora", str(nan_lora(tmp_path / "nan.safetensors")),
            *sets(*tiny_overrides(tiny_model), "eval.clip_model=", "eval.dino_model=", "eval.fid=false",
                  "infer.max_sequence_length=16", "model.device=cpu", "eval.baselines=[copy_query, adapter_off]")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "4 outputs were not finite" in capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    failed = results["generation"]["failed"]
    assert sorted((f["method"], f["index"]) for f in failed) == [("adapter_off", 0), ("adapter_off", 1), ("relation", 0), ("relation", 1)]
    assert {s["method"] for s in results["samples"]} == {"copy_query"}
    assert not list(out.rglob("relation/*.png")) and (out / "grids" / "seen.png").is_file()


def test_several_lora_options_are_all_recorded(tiny_model, images, tmp_path, capsys):
    from diffusers import FluxPipeline

    layers = {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
              "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)}  # fmt: skip
    FluxPipeline.save_lora_weights(tmp_path / "one", transformer_lora_layers=layers)
    FluxPipeline.save_lora_weights(tmp_path / "two", transformer_lora_layers=layers)
    out = tmp_path / "o.png"
    code = main(infer_args(tiny_model, images, "--lora", str(tmp_path / "one"), "--lora", f"{tmp_path / 'two'}:0.25",
                           "-o", str(out)))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    used = yaml.safe_load((tmp_path / "o.png.yaml").read_text())["lora"]
    assert used["paths"] == [{"path": str(tmp_path / "one"), "weight": 1.0}, {"path": str(tmp_path / "two"), "weight": 0.25}]


def test_lora_text_is_read_alike_from_the_flag_yaml_and_set(tmp_path):
    """``PATH[:WEIGHT]`` is one syntax: ``--lora``, a YAML list and ``--set lora.paths=[...]`` all give {path, weight}."""
    from relation_cli.config import LoraFile, load_config

    assert LoraFile.model_validate("a/b.safetensors:0.5").model_dump() == {"path": "a/b.safetensors", "weight": 0.5}
    assert LoraFile.model_validate("a/b.safetensors").model_dump() == {"path": "a/b.safetensors", "weight": 1.0}
    assert LoraFile.model_validate("C:\\loras\\x.safetensors").path == "C:\\loras\\x.safetensors"
    assert LoraFile.model_validate("x:-1e-1").model_dump() == {"path": "x", "weight": -0.1}
    (tmp_path / "c.yaml").write_text("lora:\n  paths: [a.safetensors:0.5, {path: b.safetensors}]\n")
    want = [{"path": "a.safetensors", "weight": 0.5}, {"path": "b.safetensors", "weight": 1.0}]
    assert [f.model_dump() for f in load_config(tmp_path / "c.yaml").lora.paths] == want
    cfg = load_config(None, ["lora.paths=[a.safetensors:0.5, b.safetensors]"])
    assert [f.model_dump() for f in cfg.lora.paths] == want
    assert load_config(None, ["lora.paths=a.safetensors:0.5"]).lora.paths[0].model_dump() == want[0]  # one, no list
    for bad, message in (("[5]", "a LoRA is PATH[:WEIGHT] text or a {path, weight} mapping, not int"),
                         ("[a:inf]", "finite number"), ("[a:nan]", "finite number")):  # fmt: skip
        with pytest.raises(RelationError, match=re.escape(message)):
            load_config(None, [f"lora.paths={bad}"])


def test_a_lora_weight_that_is_not_a_number_is_named_so(images, tmp_path, capsys):
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"")
    a, b, q = images
    args = ["infer", "--exemplar", str(a), str(b), "--query", str(q), "--dry-run"]
    assert main([*args, "--lora", f"{lora}:abc"]) == 1
    assert f"lora '{lora}:abc': weight 'abc' is not a number (--lora PATH[:WEIGHT], e.g. {lora}:0.5)" in capsys.readouterr().err
    assert main([*args, "--lora", str(tmp_path / "gone.safetensors:abc")]) == 1
    assert f"lora '{tmp_path / 'gone.safetensors:abc'}': not found" in capsys.readouterr().err


def test_batch_refused_for_its_lora_leaves_no_record(tiny_model, tmp_path, capsys):
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    save_file({"transformer.nowhere.lora_A.weight": torch.zeros(2, 3), "transformer.nowhere.lora_B.weight": torch.zeros(3, 2)},
              tmp_path / "unfit.safetensors")  # fmt: skip
    assert batch(tiny_model, rows, out, "--lora", str(tmp_path / "unfit.safetensors")) == 1
    assert "none of its 1 modules is in this model" in capsys.readouterr().err
    assert not out.exists()


def test_reuse_notices_weights_that_changed_under_the_same_path(tiny_model, tmp_path, capsys, monkeypatch):
    """The same ``adapter.path`` can name other weights: a run retrained into the same folder, or a relative
    path read from another directory. Outputs are reused only from the very files that made them."""
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    for where in ("a", "b"):
        shutil.copytree(tiny_model / "adapter", tmp_path / where / "adapter")
    monkeypatch.chdir(tmp_path / "a")
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter") == 0
    recorded = json.loads((out / "generation.json").read_text())["model.weights"]
    assert recorded["adapter"]["path"] == str((tmp_path / "a" / "adapter").resolve())
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter") == 0  # nothing changed: all reused
    assert "wrote 0 images" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path / "b")  # the same text names b's copy
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter", "--dry-run") == 1
    err = capsys.readouterr().err
    assert f"adapter '{tmp_path / 'a' / 'adapter'}' -> '{tmp_path / 'b' / 'adapter'}'" in err, err
    monkeypatch.chdir(tmp_path / "a")
    weights = next((tmp_path / "a" / "adapter").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter") == 1
    err = capsys.readouterr().err
    assert f"(adapter '{tmp_path / 'a' / 'adapter'}': its files changed): use another --output-dir" in err, err
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter", "--overwrite") == 0
    assert "wrote 2 images" in capsys.readouterr().out


def test_weights_changes_name_each_part_and_skip_unknown_records():
    from relation_cli.evaluate.settings import weights_changes

    before = {"base": "owner/flux", "image_encoder": {"path": "/s", "files": "1"}, "adapter": None, "loras": []}
    assert weights_changes(None, before) == [] and weights_changes(before, None) == []
    assert weights_changes(before, dict(before)) == []
    now = {**before, "image_encoder": {"path": "/s", "files": "2"}, "adapter": {"path": "/a", "files": "3"},
           "loras": [{"path": "/l", "files": "4"}]}  # fmt: skip
    assert weights_changes(before, now) == ["image_encoder '/s': its files changed", "adapter None -> '/a'",
                                            "loras [] -> ['/l']"]  # fmt: skip
    later = {**now, "loras": [{"path": "/l", "files": "5"}]}
    assert weights_changes(now, later) == ["loras ['/l']: their files changed"]


def test_saved_config_names_local_models_by_absolute_path(tiny_model, images, tmp_path, monkeypatch):
    """A saved config is read from anywhere: a relative adapter.path or LoRA path in it would name other files
    from another directory, so local sources are saved absolute; hub ids and demo stay as written."""
    from relation_cli.config import load_config, with_absolute_sources

    shutil.copytree(tiny_model / "adapter", tmp_path / "mine" / "adapter")
    monkeypatch.chdir(tmp_path / "mine")
    out = tmp_path / "out.png"
    assert main(infer_args(tiny_model, images, "--adapter", "adapter", "-o", str(out))) == 0
    saved = yaml.safe_load((tmp_path / "out.png.yaml").read_text())
    assert saved["adapter"]["path"] == str((tmp_path / "mine" / "adapter").resolve())
    assert saved["model"]["base"] == str((tiny_model / "base").resolve())
    cfg = load_config(None, ["model.base=owner/flux", "adapter.path=gone/adapter", "lora.paths=[adapter:0.5]"])
    absolute = with_absolute_sources(cfg)
    assert (absolute.model.base, absolute.adapter.path) == ("owner/flux", "gone/adapter")  # hub id; not there
    assert absolute.lora.paths[0].path == str((tmp_path / "mine" / "adapter").resolve())
    assert absolute.lora.paths[0].weight == 0.5 and cfg.lora.paths[0].path == "adapter"  # a copy
    assert with_absolute_sources(load_config(None, [])).model.base == "demo"


def test_batch_never_writes_into_a_folder_it_did_not_make(tiny_model, tmp_path, capsys):
    """A training run, a prepared dataset or a user's own config.yaml: refused, even with --overwrite, and
    left as it was; an empty folder is fine."""
    rows = batch_rows(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {adapter: adapter}\n")
    for extra in ((), ("--overwrite",)):
        assert batch(tiny_model, rows, run, *extra) == 1
        err = capsys.readouterr().err
        assert (f"output dir '{run}' holds files that relation infer --input did not write (checkpoints) and no "
                "generation.json: use a new or empty --output-dir") in err, err  # fmt: skip
    assert (run / "config.yaml").read_text() == "run: {adapter: adapter}\n"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("infer: {steps: 3}\n")
    assert batch(tiny_model, rows, mine, "--dry-run") == 1
    assert "holds files that relation infer --input did not write (config.yaml)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert batch(tiny_model, rows, tmp_path / "empty") == 0


def test_a_run_that_made_nothing_does_not_block_the_next(tiny_model, tmp_path, capsys, monkeypatch):
    """Every row not finite (a NaN LoRA): generation.json records the settings and no output, so the corrected
    run is not refused for other settings; the same adapter spelled relatively is the same setting."""
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    assert batch(tiny_model, rows, out, "--lora", str(nan_lora(tmp_path / "nan.safetensors"))) == 1
    assert json.loads((out / "generation.json").read_text())["rows"] == {}
    capsys.readouterr()
    assert batch(tiny_model, rows, out) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    monkeypatch.chdir(tiny_model)
    assert batch(tiny_model, rows, out, "--set", "adapter.path=adapter") == 0  # tiny_overrides gave it absolute
    assert "wrote 0 images" in capsys.readouterr().out


def test_the_same_weights_named_otherwise_are_no_change(tmp_path, capsys):
    """The demo's image encoder named by its folder (as a --run gives it) or left to its default (None: the
    demo's own): the weights' fingerprint is the same, so outputs are reused, not refused as "other
    settings"; another encoder's files are still a change."""
    import shutil

    from relation_cli.config import DEMO_DIR

    rows, out = batch_rows(tmp_path), tmp_path / "out"
    demo = ["infer", "--input", str(rows), "--output-dir", str(out), "--steps", "1", "--device", "cpu"]
    assert main(demo) == 0
    capsys.readouterr()
    assert main([*demo, "--image-encoder", str(DEMO_DIR / "image_encoder")]) == 0
    assert "wrote 0 images" in capsys.readouterr().out
    shutil.copytree(DEMO_DIR / "image_encoder", tmp_path / "encoder")
    assert main([*demo, "--image-encoder", str(tmp_path / "encoder")]) == 1
    assert f"image_encoder '{DEMO_DIR.resolve() / 'image_encoder'}' -> '{tmp_path / 'encoder'}'" in capsys.readouterr().err


def test_the_rows_journal_of_a_killed_run_is_read_in_order_and_a_cut_line_skipped(tmp_path):
    """What a batch run killed mid-way leaves: generation.json from its start and one journal line per output
    since, the last one perhaps cut short by the kill. Later lines win; ``null`` removes an entry."""
    from relation_cli.config import load_config
    from relation_cli.evaluate.settings import ROWS_JOURNAL, read_settings, record_row, record_settings

    cfg = load_config(None, [])
    record_settings(tmp_path, cfg, eval_keys=False, rows={"000000.png": {"text": "old"}}, settings={"infer.steps": 3})
    record_row(tmp_path, "000001.png", {"text": "one"})
    record_row(tmp_path, "000000.png", None)  # not finite this time: its old output was deleted
    record_row(tmp_path, "000002.png", {"text": "two"})
    record_row(tmp_path, "000001.png", {"text": "one again"})
    with (tmp_path / ROWS_JOURNAL).open("ab") as f:
        f.write(b"\xff\xfe garbage\n[1, 2]\n")  # lines not of the form: skipped, the others still read
    record_row(tmp_path, "000004.png", {"text": "four"})
    record_row(tmp_path, "000004.png", None)
    with (tmp_path / ROWS_JOURNAL).open("a") as f:
        f.write('{"name": "000003.png", "row": {"te')  # the kill
    assert read_settings(tmp_path)["rows"] == {"000001.png": {"text": "one again"}, "000002.png": {"text": "two"}}
    record_settings(tmp_path, cfg, eval_keys=False, rows={"000001.png": {}}, settings={"infer.steps": 3})
    assert not (tmp_path / ROWS_JOURNAL).exists() and read_settings(tmp_path)["rows"] == {"000001.png": {}}


def test_a_row_reading_an_output_of_the_folder_is_refused_and_the_image_kept(tiny_model, tmp_path, capsys):
    """Editing an earlier result again into the same --output-dir: the row's input is a file batch infer would
    make again or delete (--overwrite); refused, with or without --overwrite, and the image stays."""
    rows, out = batch_rows(tmp_path), tmp_path / "out"
    assert batch(tiny_model, rows, out) == 0
    again = tmp_path / "again.jsonl"
    again.write_text(json.dumps({"cond1": "out/000000.png", "cond2": "out/000001.png", "source": "2.png"}) + "\n")
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert batch(tiny_model, again, out, *extra) == 1
        err = capsys.readouterr().err
        assert err == (f"error: '{again}' row 1 cond1 '{tmp_path / 'out' / '000000.png'}': is an output of this "
                       "--output-dir, which batch infer makes again or deletes; copy it elsewhere first, or use another "
                       "--output-dir\n"), err  # fmt: skip
        assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before
