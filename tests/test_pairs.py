"""k exemplar pairs (SPEC 6): adapter tokens, pipeline, rows, training batches and resume, prepare, eval by k."""

from __future__ import annotations

import json

import numpy as np
from pathlib import Path

import pytest
import torch
from conftest import reference_overrides, tiny_overrides
from helpers import analogy_dataset, random_image
from PIL import Image
from prepare_helpers import SPLITS, side_by_side_jsonl

from relation_cli.adapter import RelationAdapter
from relation_cli.cli import main
from relation_cli.errors import RelationError
from relation_cli.rows import parse_rows, read_jsonl

T, C, D = 3, 8, 6  # tokens per image, token width, embedding width


def small_adapter(role_embeddings: bool) -> RelationAdapter:
    torch.manual_seed(0)
    adapter = RelationAdapter(image_embed_dim=D, cross_attention_dim=C, num_tokens=T, num_layers=2, hidden_size=8,
                              attention_head_dim=4, role_embeddings=role_embeddings)  # fmt: skip
    if role_embeddings:  # as after training: a new adapter's role vectors start at zero
        adapter.role.data.normal_()
    return adapter


@pytest.mark.parametrize("role", [False, True])
def test_token_shapes_and_pair_layout(role):
    adapter = small_adapter(role)
    a, b = torch.randn(2, 3, D), torch.randn(2, 3, D)  # B = 2 queries, k = 3 pairs
    tokens = adapter.encode(a, b)
    assert tokens.shape == (2, 2 * 3 * T, C)
    for j in range(3):  # pair j: A_j's T tokens, then A'_j's, each the one-pair encoding of that pair
        assert torch.allclose(tokens[:, 2 * j * T : (2 * j + 2) * T], adapter.encode(a[:, j], b[:, j]), atol=1e-6)
    assert adapter.encode(a[:, 0], b[:, 0]).shape == (2, 2 * T, C)
    assert [kv[0].shape for kv in adapter.key_values(tokens)] == [(2, 2 * 3 * T, 2, 4)] * 2


def test_a_and_a_prime_keep_their_roles_in_every_pair():
    a, b = torch.randn(1, 2, D), torch.randn(1, 2, D)
    swapped_b, swapped_a = b.clone(), a.clone()
    swapped_a[:, 1], swapped_b[:, 1] = b[:, 1], a[:, 1]  # A and A' exchanged in the second pair only
    off, on = small_adapter(False), small_adapter(True)
    # without roles the tokens are the same set (attention over keys ignores their order)
    same = off.encode(swapped_a, swapped_b)[:, 2 * T :]
    assert torch.allclose(same.flip(1).sort(1).values, off.encode(a, b)[:, 2 * T :].flip(1).sort(1).values)
    assert not torch.allclose(on.encode(swapped_a, swapped_b)[:, 2 * T :], on.encode(a, b)[:, 2 * T :])
    assert torch.allclose(on.encode(swapped_a, swapped_b)[:, : 2 * T], on.encode(a, b)[:, : 2 * T])


def test_cli_exemplar_options_make_pairs(tmp_path, monkeypatch):
    import relation_cli.infer as core

    a, b, c, d, q = (str(tmp_path / n) for n in "abcdq")
    seen = []
    monkeypatch.setattr(core, "infer_single", lambda cfg, exemplars, query, output: seen.append(exemplars) or Path(q))
    monkeypatch.setattr("relation_cli.cli.before_loading", lambda cfg, command, *checks: None)
    assert main(["infer", "--exemplar", a, b, "--exemplar", c, d, "--query", q]) == 0  # k = 2 pairs
    assert main(["infer", "--exemplar", a, b, "--query", q]) == 0  # one pair stays a pair
    assert seen == [[(Path(a), Path(b)), (Path(c), Path(d))], (Path(a), Path(b))]
    assert main(["infer", "--exemplar", a, "--query", q]) == 1  # one image is not a pair
    assert main(["infer", "--exemplar", a, b, c, "--query", q]) == 1  # a third image is one too many
    assert len(seen) == 2


# ------------------------------------------------------------------------------------------ pipeline


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return [Image.open(random_image(root / f"{i}.png", (32, 32), seed=i)).convert("RGB") for i in range(5)]


def run_pipe(pipe, images, exemplars):
    out = pipe(image=images[4], exemplars=exemplars, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np", max_sequence_length=16)  # fmt: skip
    return out.images[0]


def test_two_pairs_differ_from_one_and_roles_order_them(tiny_model, images, one_thread):
    from relation_cli.config import load_config
    from relation_cli.model import load_pipeline

    pipe = load_pipeline(load_config(None, tiny_overrides(tiny_model)))
    first, second = (images[0], images[1]), (images[2], images[3])
    one = run_pipe(pipe, images, first)
    assert np.array_equal(one, run_pipe(pipe, images, [[first]]))  # a pair and a list of one pair: same edit
    two = run_pipe(pipe, images, [[first, second]])
    assert np.abs(two - one).max() > 1e-4
    # the released layout (no role embeddings) sees each pair as an unordered set
    swapped = [[first, (images[3], images[2])]]
    assert np.allclose(run_pipe(pipe, images, swapped), two, atol=1e-5)
    pipe.relation_adapter.role = torch.nn.Parameter(torch.randn(2, 1, pipe.relation_adapter.config.cross_attention_dim))
    assert np.abs(run_pipe(pipe, images, swapped) - run_pipe(pipe, images, [[first, second]])).max() > 1e-4
    with pytest.raises(ValueError, match="same number of exemplar pairs"):
        pipe(image=[images[4]] * 2, exemplars=[first, [first, second]], num_inference_steps=1, max_sequence_length=16)


def test_released_format_adapter_accepts_k_pairs(reference, images, one_thread):
    """The authors' pickle (one pair in training) runs with k = 2; what that does to quality needs the real
    weights and a GPU (README)."""
    from relation_cli.config import load_config
    from relation_cli.model import load_pipeline

    pipe = load_pipeline(load_config(None, [*reference_overrides(reference), "model.device=cpu"]))
    first, second = (images[0], images[1]), (images[2], images[3])
    one, two = run_pipe(pipe, images, first), run_pipe(pipe, images, [[first, second]])
    assert two.shape == one.shape and np.isfinite(two).all() and np.abs(two - one).max() > 1e-4


def test_infer_cli_with_two_pairs(tiny_model, tmp_path, one_thread):
    a, b, c, d, q = (str(random_image(tmp_path / f"{i}.png", (32, 32), seed=i)) for i in range(5))
    common = ["--query", q, "--steps", "2", *(x for o in tiny_overrides(tiny_model) for x in ("--set", o))]
    assert main(["infer", "--exemplar", a, b, "--exemplar", c, d, "-o", str(tmp_path / "two.png"), *common]) == 0
    assert main(["infer", "--exemplar", a, b, "-o", str(tmp_path / "one.png"), *common]) == 0
    one, two = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("one", "two"))
    assert np.abs(one - two).max() > 0


# ------------------------------------------------------------------------------------------ rows


def write_rows(path, *rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_with_an_exemplars_list(tmp_path):
    pair = {"source": "s.png", "target": "t.png", "task": "x"}
    rows = parse_rows(write_rows(tmp_path / "r.jsonl", {"exemplars": [["a.png", "b.png"], ["c.png", "d.png"]], **pair},
                                 {"cond1": "a.png", "cond2": "b.png", **pair}))  # fmt: skip
    assert rows[0].pairs == ((tmp_path / "a.png", tmp_path / "b.png"), (tmp_path / "c.png", tmp_path / "d.png"))
    assert (rows[0].cond1, rows[0].cond2) == (tmp_path / "a.png", tmp_path / "b.png")
    assert rows[1].pairs == ((tmp_path / "a.png", tmp_path / "b.png"),)
    bad = {
        "not both": {"exemplars": [["a.png", "b.png"]], "cond1": "a.png", "cond2": "b.png"},
        "non-empty list of": {"exemplars": []},
        "path pairs": {"exemplars": [["a.png"]]},
        "list of [A": {"exemplars": [["a.png", "b.png", "c.png"]]},
        "exemplars pair 2 '../x.png' contains '..'": {"exemplars": [["a.png", "b.png"], ["c.png", "../x.png"]]},
        "missing or empty cond1, cond2": {},
    }
    for message, fields in bad.items():
        with pytest.raises(RelationError) as e:
            parse_rows(write_rows(tmp_path / "bad.jsonl", {**fields, **pair}))
        assert "row 1:" in str(e.value) and "\n" not in str(e.value) and message in str(e.value), str(e.value)


# ------------------------------------------------------------------------------------------ training


def test_batches_draw_k_pairs_of_the_querys_task(tmp_path):
    from relation_cli.train.data import AnalogyDataset, BatchPlan, load_rows

    rows = load_rows(analogy_dataset(tmp_path, pairs=4), 10**7)
    dataset = AnalogyDataset(rows, 32, 16, 10**7, None, max_pairs=3, seed=0)
    assert dataset.pair_counts() == [3] * len(rows)
    plan = BatchPlan(dataset.sizes(), 2, 0, pair_counts=dataset.pair_counts())
    batches = [b for b, _ in zip(plan, range(40))]
    ks = {b[0][3] for b in batches}
    assert ks == {1, 2, 3} and all(len({key[3] for key in b}) == 1 for b in batches)
    for batch in batches:
        for i, epoch, position, k in batch:
            r = rows[i]
            chosen = dataset.exemplar_pairs(i, k, epoch, position)
            assert len(chosen) == k == len(set(chosen)) and chosen[0] == (r.cond1, r.cond2)
            assert (r.source, r.target) not in chosen and all(a.name.startswith(r.task) for a, _ in chosen)
            assert chosen == dataset.exemplar_pairs(i, k, epoch, position)  # a pure function of the place
    one = BatchPlan(dataset.sizes(), 2, 0)
    assert {key[3] for b, _ in zip(one, range(10)) for key in b} == {1}


def _weights(out):
    from safetensors.torch import load_file

    state = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    state.update({f"a.{k}": v for k, v in load_file(out / "adapter" / "diffusion_pytorch_model.safetensors").items()})
    return state


def test_exact_resume_with_k_pairs(tiny_model, tmp_path, monkeypatch, one_thread):
    data = analogy_dataset(tmp_path / "data", pairs=4)
    sets = [o for o in tiny_overrides(tiny_model) if not o.startswith("adapter.")] + [
        f"train.data={data}", "train.steps=4", "lora.rank=4", "train.batch_size=2", "train.validation_samples=0",
        "train.checkpoint_every=2", "train.max_exemplar_pairs=3", "train.exemplar_dropout=0.5",
        "adapter.role_embeddings=true", "train.learning_rate=1e-3",
    ]  # fmt: skip

    def args(out):
        return ["train", *(x for o in [*sets, f"train.output_dir={out}"] for x in ("--set", o))]

    import relation_cli.train.checkpoint as loop
    from relation_cli.train.model import RelationTrainModel

    seen = []
    real_tokens = RelationTrainModel.exemplar_tokens

    def spy(self, embeds, keep):
        tokens = real_tokens(self, embeds, keep)
        seen.append(tokens.shape[1] // (2 * self.adapter.config.num_tokens))
        return tokens

    monkeypatch.setattr(RelationTrainModel, "exemplar_tokens", spy)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(args(straight)) == 0
    assert max(seen) > 1, seen  # some steps trained with k > 1 pairs
    real_save = loop.save_checkpoint

    def save_then_die(run):
        real_save(run)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    assert main(args(broken)) == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main(args(broken) + ["--resume"]) == 0
    a, b = _weights(straight), _weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ prepare


def test_prepare_writes_k_pairs_without_leaks(tmp_path):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 6, "t2": 6, "t3": 5})
    out = tmp_path / "out"
    assert main(["prepare", str(src), "--output", str(out), "--workers", "1", "--test-per-task", "2",
                 "--unseen-task", "t3", "--set", "data.exemplar_pairs=3"]) == 0  # fmt: skip
    rows = {s: read_jsonl(out / f"{s}.jsonl") for s in SPLITS}
    train_pairs = {p for r in rows["train"] for p in ((r["cond1"], r["cond2"]), (r["source"], r["target"]))}
    for split in ("test_seen", "test_unseen"):
        assert rows[split]
        for r in rows[split]:
            assert "cond1" not in r and len(r["exemplars"]) == 3
            pairs = [tuple(p) for p in r["exemplars"]]
            query = (r["source"], r["target"])
            assert query not in pairs and len(set(pairs)) == 3  # no pair is both exemplar and query
            assert query not in train_pairs  # no test query leaks into train
            assert all(a.split("/")[1] == r["source"].split("/")[1] for a, _ in pairs)  # all of the query's task
            if split == "test_unseen":
                assert not set(pairs) & train_pairs
    test_queries = {(r["source"], r["target"]) for s in ("test_seen", "test_unseen") for r in rows[s]}
    assert not {tuple(p) for r in rows["test_seen"] for p in r["exemplars"]} & test_queries
    parsed = parse_rows(out / "test_seen.jsonl", need_target=True)
    assert {len(r.pairs) for r in parsed} == {3}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["exemplar_pairs"] == 3


def test_prepare_with_one_pair_writes_cond_fields(tmp_path):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 4, "t2": 4})
    assert main(["prepare", str(src), "--output", str(tmp_path / "o"), "--workers", "1", "--test-per-task", "1"]) == 0
    assert all("cond1" in r and "exemplars" not in r for r in read_jsonl(tmp_path / "o" / "test_seen.jsonl"))


# ------------------------------------------------------------------------------------------ eval by k


def test_eval_reports_metrics_by_k(tiny_model, tmp_path, one_thread):
    data = analogy_dataset(tmp_path / "data", pairs=4)
    rows = read_jsonl(data.with_name("test_seen.jsonl"))
    two = dict(rows[0])
    two["exemplars"] = [[two.pop("cond1"), two.pop("cond2")], ["img/invert0s.png", "img/invert0t.png"]]
    mixed = write_rows(data.with_name("test_mixed.jsonl"), two, *rows[1:])
    sets = [*tiny_overrides(tiny_model), "eval.clip_model=", "eval.dino_model=", "eval.fid=false",
            "eval.baselines=[copy_query]", "model.device=cpu"]  # fmt: skip
    out = tmp_path / "eval"
    assert main(["eval", "--input", str(mixed), "--output-dir", str(out), "--steps", "1",
                 *(x for o in sets for x in ("--set", o))]) == 0  # fmt: skip
    results = json.loads((out / "metrics.json").read_text())
    assert [(s["method"], s["k"]) for s in results["samples"]] == [("relation", 2), ("relation", 1),
                                                                   ("copy_query", 2), ("copy_query", 1)]
    first = results["samples"][0]  # k = 2: every pair used is named, relative to the eval folder
    assert first["exemplars"] == [[first["cond1"], first["cond2"]], ["../data/img/invert0s.png", "../data/img/invert0t.png"]]
    assert "exemplars" not in results["samples"][1]  # k = 1: cond1/cond2 say it
    by_k = {(e["method"], e["k"], e["metric"]): e["n"] for e in results["aggregate_by_k"]}
    assert by_k[("relation", 2, "mse")] == 1 and by_k[("relation", 1, "mse")] == 1
    assert "By number of exemplar pairs k" in (out / "report.html").read_text()
