"""`relation eval` end to end on a tiny model: outputs, baselines, metrics files, report, resumption."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from eval_helpers import ChannelMeans, FakeJudge, tiny_encoders, write_test_file
from helpers import random_image
from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.evaluate import evaluate
from relation_cli.evaluate.recompute import recompute
from relation_cli.evaluate.report import grid_indices, summary_rows

METHODS = ["relation", "copy_query", "adapter_off", "wrong_exemplar"]


def sets(*overrides: str) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """One evaluation of 3 rows over 2 tasks, with tiny encoders and a fake judge; then a second, resumed one."""
    root = tmp_path_factory.mktemp("eval")
    data = write_test_file(root / "data", rows=3)
    clip, dino = tiny_encoders(root / "encoders")
    out = root / "out"
    with FakeJudge() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELATION_TEST_JUDGE_KEY", "k")
        overrides = [
            *tiny_overrides(tiny_model), "infer.max_sequence_length=32", f"eval.clip_model={clip}", f"eval.dino_model={dino}",
            "eval.grid_rows=3",
        ]  # fmt: skip
        judge = [f"eval.judge_base_url={server.url}", "eval.judge_api_key_env=RELATION_TEST_JUDGE_KEY",
                 "eval.judge_model=fake-4o", "eval.judge_methods=[relation, wrong_exemplar]"]  # fmt: skip
        args = ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1", *sets(*overrides, *judge)]
        first = main(args)
        requests = len(server.requests)
        stamps = {p: p.stat().st_mtime_ns for p in out.glob("seen/*/*.png")}

        def no_model(*a, **k):
            raise AssertionError("outputs exist: the model must not be loaded again")

        mp.setattr("relation_cli.model.load_pipeline", no_model)
        second = main(args)
        return {
            "codes": (first, second), "out": out, "data": data, "requests": (requests, len(server.requests)),
            "stamps": stamps, "args": args, "overrides": overrides,
        }  # fmt: skip


def test_outputs_for_every_method_and_row(run):
    assert run["codes"] == (0, 0)
    for method in METHODS:
        assert sorted(p.name for p in (run["out"] / "seen" / method).glob("*.png")) == [
            f"{i:06d}.png" for i in range(3)
        ]
    assert (run["out"] / "config.yaml").is_file()


def test_second_run_reuses_outputs_and_judge_answers(run):
    assert {p: p.stat().st_mtime_ns for p in run["out"].glob("seen/*/*.png")} == run["stamps"]
    first, second = run["requests"]
    assert first == 6 and second == first  # 3 rows x 2 judged methods, then all from the cache
    results = json.loads((run["out"] / "metrics.json").read_text())
    assert results["generation"] == {"written": 0, "reused": 12, "processes": 1}


def test_copy_query_is_b_at_the_output_size(run):
    query = Image.open(run["data"].parent / "q1.png").convert("RGB")  # 48x32: already a multiple of 16
    copy = Image.open(run["out"] / "seen" / "copy_query" / "000001.png")
    assert np.array_equal(np.asarray(copy), np.asarray(query))
    model = Image.open(run["out"] / "seen" / "relation" / "000000.png")
    assert copy.size == (48, 32) and model.size == (32, 48)


def test_metrics_json(run):
    results = json.loads((run["out"] / "metrics.json").read_text())
    samples = results["samples"]
    assert len(samples) == 12 and {s["method"] for s in samples} == set(METHODS)
    for s in samples:
        assert {"mse", "psnr", "ssim", "clip_i", "dino"} <= s.keys()
        assert (run["out"] / s["output"]).is_file() and (run["out"] / s["target"]).is_file()
    wrong = [s for s in samples if s["method"] == "wrong_exemplar"]
    assert all(s["exemplar_task"] != s["task"] and s["exemplar_row"] != s["index"] for s in wrong)
    keys = {(e["split"], e["method"], e["metric"]) for e in results["aggregate"]}
    assert {("seen", m, k) for m in METHODS for k in ("mse", "psnr", "ssim", "clip_i", "dino")} <= keys
    assert ("seen", "relation", "judge_consistency") in keys and ("seen", "copy_query", "judge_accuracy") not in keys
    judge = results["judge"]
    assert judge["model"] == "fake-4o" and re.fullmatch(r"\d{4}-\d\d-\d\d", judge["date"])
    assert len(judge["prompt_sha256"]) == 64
    assert judge["counts"]["relation"]["ok"] == 3 and judge["counts"]["wrong_exemplar"]["cached"] == 3
    assert "torchmetrics" in results["implementations"]["ssim"]
    assert "fid" in results["skipped"] or results["fid"]  # skipped with its reason unless torch-fidelity is here


def test_numbers_recompute_from_the_saved_files(run):
    diffs = recompute(run["out"] / "metrics.json")
    assert {k: diffs[k] for k in ("mse", "psnr", "ssim")} == {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    assert diffs["clip_i"] <= 1e-6 and diffs["dino"] <= 1e-6


def test_metrics_and_report_name_the_model_evaluated(run, tiny_model):
    from rich.console import Console

    from relation_cli.evaluate.provenance import sha256_file
    from relation_cli.evaluate.report import summary_table

    results = json.loads((run["out"] / "metrics.json").read_text())
    model = results["model"]
    adapter_file = tiny_model / "adapter" / "diffusion_pytorch_model.safetensors"
    assert model["adapter"]["path"] == str((tiny_model / "adapter").resolve())
    assert model["adapter"]["sha256"] == sha256_file(adapter_file)[:12]  # one weight file: its own sha256
    assert model["adapter"]["files"] == {"diffusion_pytorch_model.safetensors": sha256_file(adapter_file)[:12]}
    assert model["base"]["path"] == str((tiny_model / "base").resolve()) and len(model["base"]["files"]) >= 4
    assert model["loras"] == [] and model["adapter_scale"] == 1.0
    line = f"adapter: {(tiny_model / 'adapter').resolve()} (sha256 {model['adapter']['sha256']})"
    assert line in (run["out"] / "report.html").read_text()
    console = Console(record=True, width=400)
    console.print(summary_table(results))
    text = console.export_text()
    assert "model evaluated:" in text and line in text and "lora: none" in text
    assert results["splits"] == [{"name": "seen", "input": str(run["data"]), "rows": 3, "rows_in_file": 3,
                                  "limit": None, "indices": [0, 1, 2]}]  # fmt: skip


def test_the_demo_model_is_named_by_its_real_folders():
    from relation_cli.evaluate.provenance import describe_model, model_lines
    from relation_cli.model import demo_dir

    model = describe_model(load_config(None, []))
    assert model["base"]["path"] == str((demo_dir() / "base").resolve())
    assert model["adapter"]["path"] == str((demo_dir() / "adapter").resolve())
    assert all(len(h) == 12 for h in model["base"]["files"].values())
    assert model_lines(model)[0] == f"base: {(demo_dir() / 'base').resolve()} (sha256 {model['base']['sha256']})"
    hub = describe_model(load_config(None, ["model.base=black-forest-labs/FLUX.1-dev", "adapter.scale=0"]))
    assert model_lines(hub) == ["base: black-forest-labs/FLUX.1-dev (hub id)",
                                "image_encoder: google/siglip-so400m-patch14-384 (hub id)", "adapter: none, scale 0",
                                "lora: none"]  # fmt: skip
    gone = model_lines(describe_model(load_config(None, ["model.base=/no/such/flux"])))  # every output reused
    assert gone[0] == "base: /no/such/flux (as configured; not found now)" and "do not resolve now" in gone[-1]


def test_recompute_is_an_option_of_eval(run, tmp_path, capsys):
    metrics = run["out"] / "metrics.json"
    assert main(["eval", "--recompute", str(metrics), "--no-encoders"]) == 0
    assert main(["eval", "--recompute", str(metrics.parent), "--no-encoders"]) == 0  # the folder holding it
    out = capsys.readouterr().out
    assert "mse: largest difference 0" in out and "clip_i" not in out and "recomputed within 1e-06" in out
    copy = tmp_path / run["out"].name  # beside a copy of the data: the paths in metrics.json are relative
    shutil.copytree(run["out"], copy)
    shutil.copytree(run["data"].parent, tmp_path / run["data"].parent.name)
    results = json.loads((copy / "metrics.json").read_text())
    results["samples"][0]["mse"] += 0.01
    (copy / "metrics.json").write_text(json.dumps(results))
    assert main(["eval", "--recompute", str(copy / "metrics.json"), "--no-encoders"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recomputed numbers differ (mse by 0.01" in err


SAMPLE = '{"split": "s", "method": "relation", "index": 0, "task": "", "text": "", "output": "no.png", "target": "no.png"'


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("{not json", "malformed JSON"),
        ('{"cond1": "a.png"}\n{"cond1": "b.png"}\n', "malformed JSON (Extra data, line 2, column 1); a metrics.json is one"),
        ("[1, 2]", "not a metrics.json of relation eval (no samples, aggregate, encoders, batch_size)"),
        ('{"samples": [{"split": "seen"}], "aggregate": [], "encoders": {}, "batch_size": 1}', "sample 1 needs"),
        ('{"samples": [], "aggregate": [], "encoders": {}, "batch_size": 0}', "batch_size must be a positive"),
        ('{"samples": [], "aggregate": [], "encoders": {}, "batch_size": 1}', "(no samples to recompute)"),
        ('{"samples": [SAMPLE, "mse": "abc"}], "aggregate": [], "encoders": {}, "batch_size": 1}', "mse, psnr, ssim"),
        ('{"samples": [SAMPLE, "index": "zz"}], "aggregate": [], "encoders": {}, "batch_size": 1}',
         "sample 1: index must be an integer"),
        ('{"samples": [SAMPLE}], "aggregate": [{"split": "s", "method": "m", "metric": "mse", "mean": "x"}], '
         '"encoders": {}, "batch_size": 1}', "with mean a number"),
        ('{"samples": [{"split": "s", "method": "relation", "index": 0, "task": "", "text": "", "output": "no.png", '
         '"target": "no.png"}], "aggregate": [], "encoders": {}, "batch_size": 1}', "no.png"),
    ],
)  # fmt: skip
def test_recompute_refuses_a_bad_metrics_json_in_one_line(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content.replace("SAMPLE", SAMPLE))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "relation_cli", "eval", "--recompute", str(path)],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_no_encoders_alone_is_refused(capsys):
    assert main(["eval", "--no-encoders"]) == 1
    assert "--no-encoders goes with --recompute" in capsys.readouterr().err
    assert main(["eval", "--recompute", "m.json", "--input", "a.jsonl", "--limit", "0"]) == 1  # not silently ignored
    assert "--recompute reads everything from the metrics file; it takes no --input, --limit" in capsys.readouterr().err
    assert main(["eval", "--input", "a.jsonl", "--no-encoders"]) == 1
    assert "--no-encoders goes with --recompute" in capsys.readouterr().err


def test_fid_over_each_split_with_a_local_network(run, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(run["out"], out)
    monkeypatch.setattr("relation_cli.model.load_pipeline", None)  # every output is reused
    cfg = load_config(
        None, [*run["overrides"], f"eval.inputs=[{run['data']}]", f"eval.output_dir={out}", "infer.steps=1"]
    )
    results = evaluate(cfg, fid_feature=ChannelMeans()).results
    assert "fid" not in results["skipped"] and results["judge"] is None
    assert [(e["method"], e["n"]) for e in results["fid"]] == [(m, 3) for m in METHODS]
    assert all(e["fid"] >= 0 for e in results["fid"]) and "FID ↓" in summary_rows(results)[0]


def test_per_task_csv(run):
    with open(run["out"] / "per_task.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in ("task0", "task1") for m in METHODS}
    assert [r["n"] for r in rows if r["method"] == "relation"] == ["2", "1"] and all(float(r["mse"]) >= 0 for r in rows)


def test_report_references_only_files_that_exist(run):
    report = run["out"] / "report.html"
    text = report.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    links = re.findall(r"(?:src|href)='([^']*)'", text)
    local = [link for link in links if not link.startswith("data:")]
    assert local and all((report.parent / link).is_file() for link in local), local
    assert sum(link.startswith("data:image/") for link in links) == 3 * 8  # 3 rows x (A A' B out target + 3 baselines)
    grid = Image.open(run["out"] / "grids" / "seen.png")
    assert grid.size[0] == 8 * 160 and grid.size[1] > 3 * 160


def test_grid_rows_are_spread_over_tasks():
    samples = [{"index": i, "task": t, "method": m} for i, t in enumerate("aaabbc") for m in ("relation", "copy_query")]
    assert grid_indices(samples, 10) == [0, 3, 5, 1, 4, 2]  # every task first, then second rows, ...
    assert grid_indices(samples, 4) == [0, 3, 5, 1]
    assert grid_indices(samples, 0) == []


def test_changed_settings_are_refused(run, capsys, monkeypatch):
    monkeypatch.setenv("RELATION_TEST_JUDGE_KEY", "k")
    args = list(run["args"])
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 1
    assert "other settings (infer.steps 1 -> 3)" in capsys.readouterr().err


def test_eval_never_writes_into_a_folder_it_did_not_make(run, tmp_path, capsys, monkeypatch):
    """A training run's folder as --output-dir: refused in one line, its config.yaml untouched."""
    monkeypatch.setenv("RELATION_TEST_JUDGE_KEY", "k")
    monkeypatch.setattr("relation_cli.model.load_pipeline", None)
    folder = tmp_path / "run"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "config.json").write_text("{}")
    (folder / "config.yaml").write_text("run: {adapter: adapter}\n")
    args = list(run["args"])
    args[args.index("--output-dir") + 1] = str(folder)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"output dir '{folder}' holds files that relation eval did not write (adapter) "
                                      "and no generation.json: use a new or empty --output-dir") in err, err
    assert (folder / "config.yaml").read_text() == "run: {adapter: adapter}\n"


def test_eval_and_batch_infer_keep_out_of_each_others_folders(run, tmp_path, tiny_model, capsys, monkeypatch):
    """An eval folder given to batch infer (and the reverse) is refused: each would rewrite the other's record.
    An eval folder whose record was deleted is still eval's own (its report files), and .DS_Store is nobody's."""
    from relation_cli.evaluate.settings import weights_fingerprint

    monkeypatch.setenv("RELATION_TEST_JUDGE_KEY", "k")
    batch = ["infer", "--input", str(run["data"]), "--steps", "1", *sets(*tiny_overrides(tiny_model))]
    assert main([*batch, "--output-dir", str(run["out"]), "--dry-run"]) == 1
    assert f"output dir '{run['out']}' holds the outputs of relation eval, not relation infer --input" in capsys.readouterr().err
    made = tmp_path / "batch"
    made.mkdir()
    (made / "generation.json").write_text(json.dumps({"made_by": "relation infer --input", "rows": {}}))
    args = list(run["args"])
    args[args.index("--output-dir") + 1] = str(made)
    assert main(args) == 1
    assert "holds the outputs of relation infer --input, not relation eval" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(run["out"], copy)
    (copy / "generation.json").unlink()
    (copy / ".DS_Store").write_text("")
    (copy / "seen" / ".DS_Store").write_text("")
    from relation_cli.evaluate.settings import check_own_folder
    from relation_cli.evaluate.plan import EVAL_FILES, _split_folder

    check_own_folder(copy, "relation eval", lambda n: n in EVAL_FILES or _split_folder(copy / n), "x")  # no error
    # the weights fingerprint leaves hidden entries out: a .git index rewritten by `git status` changes nothing
    shutil.copytree(tiny_model / "adapter", tmp_path / "adapter")
    cfg = load_config(None, [*run["overrides"], f"adapter.path={tmp_path / 'adapter'}"])
    before = weights_fingerprint(cfg)
    (tmp_path / "adapter" / ".git").mkdir()
    (tmp_path / "adapter" / ".git" / "index").write_text(str(before))
    assert weights_fingerprint(cfg) == before
    (tmp_path / "adapter" / "config.json").write_text((tmp_path / "adapter" / "config.json").read_text() + " ")
    assert weights_fingerprint(cfg)["adapter"] != before["adapter"]  # a real file changed


def test_outputs_of_other_weights_under_the_same_path_are_refused(run, tmp_path, capsys, monkeypatch):
    """An adapter retrained into the same folder: the settings match, the files do not (their sizes and
    modification times, recorded in generation.json's model.weights)."""
    monkeypatch.setenv("RELATION_TEST_JUDGE_KEY", "k")
    out = tmp_path / "copy"
    shutil.copytree(run["out"], out)
    record = json.loads((out / "generation.json").read_text())
    adapter = record["model.weights"]["adapter"]
    record["model.weights"]["adapter"] = {**adapter, "files": "0" * 16}  # as made by other files at that path
    (out / "generation.json").write_text(json.dumps(record))
    args = list(run["args"])
    args[args.index("--output-dir") + 1] = str(out)
    assert main(args) == 1
    assert f"other settings (adapter '{adapter['path']}': its files changed): use another --output-dir" in capsys.readouterr().err


def test_single_task_file_skips_wrong_exemplar_with_a_note(tmp_path, capsys, monkeypatch):
    data = write_test_file(tmp_path / "data", "one.jsonl", rows=2, tasks=1)
    made = tmp_path / "out" / "one" / "relation"
    made.mkdir(parents=True)
    for i, size in enumerate([(32, 48), (48, 32)]):  # the model's outputs are there already: no model is loaded
        random_image(made / f"{i:06d}.png", size)
    monkeypatch.setattr("relation_cli.model.load_pipeline", None)
    code = main(["eval", "--input", str(data), "--output-dir", str(tmp_path / "out"), *sets(
        "eval.baselines=[copy_query, wrong_exemplar]", "eval.clip_model=", "eval.dino_model=", "eval.fid=false",
    )])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "wrong exemplar skipped for 'one'" in out.out and "holds one task" in out.out
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {s["method"] for s in results["samples"]} == {"relation", "copy_query"}
    assert results["skipped"]["clip_i"].startswith("off")


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no input to evaluate"),
        (["--input", "IN", "--set", "eval.clip_model=./no/such/folder"], "eval.clip_model './no/such/folder': no such model folder"),
        (["--input", "IN", "--set", "eval.judge_model=gpt-4o", "--set", "eval.judge_api_key_env=RELATION_NO_SUCH_KEY"],
         "$RELATION_NO_SUCH_KEY is empty"),
        (["--input", "IN", "--set", "eval.judge_methods=[nope]"], "eval.judge_methods.0"),
        (["--input", "MISSING_TARGET"], "seen row 1 target"),
    ],
)  # fmt: skip
def test_bad_setups_fail_before_generation(tmp_path, capsys, extra, message):
    data = write_test_file(tmp_path / "data", rows=2)
    if "MISSING_TARGET" in extra:
        (data.parent / "t0.png").unlink()
    extra = [str(data) if a in ("IN", "MISSING_TARGET") else a for a in extra]
    assert main(["eval", "--output-dir", str(tmp_path / "out"), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(Path(tmp_path / "out").glob("seen/*/*.png"))


@pytest.mark.slow
def test_accelerate_launch_splits_generation(tiny_model, tmp_path):
    """Two CPU processes share the outputs; only the main one scores and reports.

    The share of each process is unit-tested in test_eval_plan.py; this runs the real launcher.
    """

    data = write_test_file(tmp_path / "data", rows=2)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "-m", "relation_cli", "eval", "--input", str(data),
        "--output-dir", str(out), "--steps", "1", *sets(*tiny_overrides(tiny_model), "infer.max_sequence_length=16",
        "eval.clip_model=", "eval.dino_model=", "eval.baselines=[copy_query]", "eval.grid_rows=0"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # (accelerate's --cpu starts one process; --multi_gpu without GPUs starts a gloo group of two)
    assert done.stdout.count("wrote ") == 1 and "generated 4 outputs on 2 processes (0 reused)" in done.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("seen/*/*.png")) == [
        "seen/copy_query/000000.png", "seen/copy_query/000001.png", "seen/relation/000000.png", "seen/relation/000001.png",
    ]  # fmt: skip


def test_vae_reconstruction_baseline_is_the_target_through_the_vae(tiny_model, tmp_path):
    from relation_cli.evaluate.generate import reconstruct
    from relation_cli.infer import edit_sizes
    from relation_cli.model import load_pipeline

    data = write_test_file(tmp_path / "data", rows=2)
    out = tmp_path / "out"
    overrides = (*tiny_overrides(tiny_model), "infer.max_sequence_length=32", "eval.baselines=[vae_reconstruction]",
                 "eval.clip_model=", "eval.dino_model=", "eval.fid=false", "eval.grid_rows=1")  # fmt: skip
    assert main(["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1", *sets(*overrides)]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert {s["method"] for s in results["samples"]} == {"relation", "vae_reconstruction"}
    cfg = load_config(None, list(tiny_overrides(tiny_model)))
    pipe = load_pipeline(cfg)
    row = json.loads((data).read_text().splitlines()[0])
    target = Image.open(data.parent / row["target"]).convert("RGB")
    query = Image.open(data.parent / row["source"]).convert("RGB")
    sizes = edit_sizes(cfg.infer, query.size, pipe.size_multiple)
    expected = (np.clip(reconstruct(pipe, target, sizes), 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "seen" / "vae_reconstruction" / "000000.png")), expected)


def test_every_unusable_image_of_the_eval_inputs_in_one_message_row_by_row(tmp_path, capsys):
    """eval lists every image it cannot use (the first 10 and a count), split by split and row by row."""
    from helpers import analogy_dataset

    data = analogy_dataset(tmp_path / "d", pairs=8).with_name("test_seen.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        (data.parent / row["target"]).write_bytes(b"")
        (data.parent / row["source"]).unlink(missing_ok=True)
    assert main(["eval", "--input", str(data), "--output-dir", str(tmp_path / "e"), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 4 images cannot be used: seen row 1 target '") and "\n" not in err, err
    assert err.index("seen row 1 query") < err.index("seen row 2 target"), err


def test_outputs_made_from_rows_or_images_that_changed_are_made_again(tiny_model, tmp_path, capsys):
    """generation.json records what each output was made from (paths, sha256, text): after an image is replaced
    under the same name and a row of the file is edited, only their outputs are made again (one note says how
    many), and the scores are a fresh run's."""
    data = write_test_file(tmp_path / "data", rows=3)
    overrides = [*tiny_overrides(tiny_model), "eval.clip_model=", "eval.dino_model=", "eval.fid=false",
                 "eval.baselines=[copy_query]"]  # fmt: skip

    def run(out):
        assert main(["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1", *sets(*overrides)]) == 0
        return capsys.readouterr().err

    out = tmp_path / "out"
    run(out)
    stamps = {p.name + p.parent.name: p.stat().st_mtime_ns for p in out.glob("seen/*/*.png")}
    random_image(tmp_path / "data" / "q1.png", (48, 32), seed=999)  # row 2's query replaced under the same name
    lines = data.read_text().splitlines()
    lines[2] = lines[2].replace('"source": "q2.png"', '"source": "q0.png"')  # row 3 now edits another query
    data.write_text("\n".join(lines) + "\n")
    err = " ".join(run(out).split())
    assert f"note: 4 outputs in '{out}' were made from other rows or images than the inputs' now" in err, err
    now = {p.name + p.parent.name: p.stat().st_mtime_ns for p in out.glob("seen/*/*.png")}
    assert [k for k in sorted(now) if now[k] == stamps[k]] == ["000000.pngcopy_query", "000000.pngrelation"]
    run(tmp_path / "fresh")
    scores = lambda folder: [(s["method"], s["index"], s["mse"]) for s in  # noqa: E731
                             json.loads((folder / "metrics.json").read_text())["samples"]]  # fmt: skip
    assert scores(out) == scores(tmp_path / "fresh")
    assert "made again" not in run(out)  # recorded now: all reused


def test_a_rerun_with_fewer_inputs_drops_the_other_splits_grids_and_keeps_their_outputs(tiny_model, tmp_path):
    """The report and metrics.json describe this run's inputs; a grid of an earlier run's other split would sit
    beside them unexplained, so it goes. Its outputs stay: a later run with that input reuses them."""
    seen = write_test_file(tmp_path / "data", rows=2)
    unseen = seen.with_name("test_unseen.jsonl")
    unseen.write_text(seen.read_text())
    out = tmp_path / "out"
    common = ["--output-dir", str(out), "--steps", "1",
              *sets(*tiny_overrides(tiny_model), "infer.max_sequence_length=16", "eval.baselines=[copy_query]")]  # fmt: skip
    assert main(["eval", "--input", str(seen), "--input", str(unseen), *common]) == 0
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["seen.png", "unseen.png"]
    assert main(["eval", "--input", str(seen), *common]) == 0
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["seen.png"]
    assert len(list((out / "unseen" / "relation").glob("*.png"))) == 2
    assert "unseen" not in (out / "report.html").read_text()
