"""FLUX.1 Kontext as base (SPEC 6): query position ids, auto detection, and prepare -> train -> infer -> eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from helpers import random_image
from PIL import Image
from prepare_helpers import assert_interrupted_training_resumes_exactly, side_by_side_jsonl

from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.pipeline import relation_latent_ids


@pytest.fixture(scope="module")
def kontext_model(tmp_path_factory):
    """A tiny model whose base/ is saved by FluxKontextPipeline (same weights as ``tiny_model``: seed 0)."""
    out = tmp_path_factory.mktemp("kontext") / "tiny"
    assert main(["init-model", str(out), "--kontext"]) == 0
    return out


def test_init_model_writes_the_kontext_layout(kontext_model, tiny_model):
    assert json.loads((kontext_model / "base" / "model_index.json").read_text())["_class_name"] == "FluxKontextPipeline"
    assert json.loads((tiny_model / "base" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"


def test_query_ids_first_axis():
    clone, kontext = (relation_latent_ids(2, 3, torch.device("cpu"), torch.float32, q) for q in ("clone", "kontext"))
    assert clone.shape == kontext.shape == (12, 3)
    assert torch.equal(clone[:6], kontext[:6]) and torch.equal(clone[:6], clone[6:])  # the paper: cloned ids
    assert (kontext[6:, 0] == 1).all() and torch.equal(kontext[6:, 1:], clone[:6, 1:])  # Kontext: first axis 1


def test_auto_picks_by_base(kontext_model, tiny_model):
    from relation_cli.model import auto_query_ids, load_pipeline

    assert auto_query_ids(str(kontext_model / "base")) == "kontext"
    assert auto_query_ids(str(tiny_model / "base")) == "clone"
    pipe = load_pipeline(load_config(None, tiny_overrides(kontext_model)))
    assert pipe.query_ids == "kontext"
    assert load_pipeline(load_config(None, [*tiny_overrides(kontext_model), "model.query_ids=clone"])).query_ids == "clone"
    assert load_pipeline(load_config(None, tiny_overrides(tiny_model))).query_ids == "clone"


def test_kontext_ids_change_the_edit(kontext_model, tmp_path, one_thread):
    a, b, q = (str(random_image(tmp_path / f"{n}.png", (32, 32), seed=i)) for i, n in enumerate("abq"))
    common = ["infer", "--exemplar", a, b, "--query", q, "--steps", "2",
              *(x for o in tiny_overrides(kontext_model) for x in ("--set", o))]  # fmt: skip
    assert main([*common, "-o", str(tmp_path / "auto.png")]) == 0
    assert main([*common, "-o", str(tmp_path / "clone.png"), "--set", "model.query_ids=clone"]) == 0
    auto, clone = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("auto", "clone"))
    assert np.abs(auto - clone).max() > 0


def _sets(model, data, out, *extra):
    sets = [o for o in tiny_overrides(model) if not o.startswith("adapter.")]
    return sets + [f"train.data={data}", f"train.output_dir={out}", "train.steps=2", "lora.rank=4", "train.batch_size=2",
                   "train.validation_samples=0", "train.learning_rate=1e-3", "data.resolution=32", *extra]  # fmt: skip


def _as_args(sets):
    return [x for o in sets for x in ("--set", o)]


def test_prepare_train_infer_eval_on_a_kontext_base(kontext_model, tmp_path, monkeypatch, one_thread):
    import relation_cli.pipeline as pipeline

    src = side_by_side_jsonl(tmp_path / "src", {"t1": 4, "t2": 4})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    used = []
    real_ids = pipeline.relation_latent_ids
    monkeypatch.setattr(pipeline, "relation_latent_ids", lambda *a: used.append(a[-1]) or real_ids(*a))
    run = tmp_path / "run"
    assert main(["train", *_as_args(_sets(kontext_model, data / "train.jsonl", run))]) == 0
    assert used and set(used) == {"kontext"}  # training fed the query tokens Kontext's ids
    model = ["--model", str(kontext_model / "base"), "--image-encoder", str(kontext_model / "image_encoder"),
             "--adapter", str(run / "adapter"), "--lora", str(run / "lora")]  # fmt: skip
    q = str(random_image(tmp_path / "q.png", (32, 32), seed=3))
    a, b = (str(random_image(tmp_path / f"{n}.png", (32, 32), seed=i)) for i, n in enumerate("ab"))
    assert main(["infer", "--exemplar", a, b, "--query", q, "--steps", "2", "-o", str(tmp_path / "o.png"), *model]) == 0
    out = tmp_path / "eval"
    sets = ["eval.clip_model=", "eval.dino_model=", "eval.fid=false", "eval.baselines=[copy_query]"]
    assert main(["eval", "--input", str(data / "test_seen.jsonl"), "--output-dir", str(out), "--steps", "2", *model,
                 *_as_args(sets)]) == 0  # fmt: skip
    results = json.loads((out / "metrics.json").read_text())
    assert {s["method"] for s in results["samples"]} == {"relation", "copy_query"}
    assert all(np.isfinite(s["mse"]) for s in results["samples"])


def test_full_mode_exports_a_kontext_base(kontext_model, tmp_path, one_thread):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 3, "t2": 3})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    run = tmp_path / "run"
    assert main(["train", *_as_args(_sets(kontext_model, data / "train.jsonl", run, "train.steps=1",
                                          "train.mode=full"))]) == 0  # fmt: skip
    assert json.loads((run / "base" / "model_index.json").read_text())["_class_name"] == "FluxKontextPipeline"


def test_exact_resume_on_a_kontext_base(kontext_model, tmp_path, monkeypatch, one_thread):
    extra = ("train.steps=4", "train.checkpoint_every=2", "train.exemplar_dropout=0.5", "train.max_exemplar_pairs=2")
    train = lambda data, out: ["train", *_as_args(_sets(kontext_model, data, out, *extra))]
    assert_interrupted_training_resumes_exactly(tmp_path, monkeypatch, train)
