"""FLUX.2 [klein] as base: the RelationAdapter's FLUX.2 processors, the klein pipeline, and
prepare -> train -> infer -> eval through the CLI on a tiny klein model, exact resume, k = 2 pairs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_overrides
from helpers import random_image
from PIL import Image
from prepare_helpers import assert_interrupted_training_resumes_exactly, side_by_side_jsonl
from safetensors.torch import load_file

from relation_cli.cli import main
from relation_cli.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SIZE = ("infer.width=64", "infer.height=64", "infer.max_sequence_length=32")  # klein's reference images: >= 64 px


@pytest.fixture(scope="module")
def klein_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("klein") / "tiny"
    assert main(["init-model", str(out), "--klein"]) == 0
    return out


@pytest.fixture(scope="module")
def klein_pipe(klein_model):
    from relation_cli.model import load_pipeline

    return load_pipeline(load_config(None, tiny_overrides(klein_model)))


def _images(tmp_path, names="abq", size=64):
    return [str(random_image(tmp_path / f"{n}.png", (size, size), seed=i)) for i, n in enumerate(names)]


def test_init_model_writes_the_klein_layout(klein_model):
    index = json.loads((klein_model / "base" / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    assert index["text_encoder"] == ["transformers", "Qwen3ForCausalLM"] and "text_encoder_2" not in index
    adapter = json.loads((klein_model / "adapter" / "config.json").read_text())
    transformer = json.loads((klein_model / "base" / "transformer" / "config.json").read_text())
    assert adapter["cross_attention_dim"] == transformer["joint_attention_dim"] == 96  # 3 x the Qwen3 width
    assert adapter["num_layers"] == transformer["num_layers"] + transformer["num_single_layers"]
    assert adapter["flux2_double_layers"] == transformer["num_layers"]


def test_the_base_folder_loads_in_diffusers_own_klein_pipeline(klein_model):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(klein_model / "base")
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "make it blue"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)  # fmt: skip
    assert text.endswith("<think>\n\n</think>\n\n")
    embeds, ids = pipe.encode_prompt("make it blue", device=torch.device("cpu"), max_sequence_length=16)
    assert embeds.shape == (1, 16, 96) and ids.shape == (1, 16, 4)


def test_the_cli_picks_the_pipeline_by_model_index(klein_pipe, klein_model, tiny_model):
    from relation_cli.adapter import Flux2RelationAttnProcessor, Flux2RelationParallelAttnProcessor
    from relation_cli.klein import RelationKleinPipeline
    from relation_cli.model import base_pipeline_class
    from relation_cli.pipeline import RelationPipeline

    assert isinstance(klein_pipe, RelationKleinPipeline)
    assert base_pipeline_class(str(tiny_model / "base")) is RelationPipeline
    kinds = [type(p) for p in klein_pipe.transformer.attn_processors.values()]
    n = klein_pipe.transformer.config.num_layers
    assert kinds == [Flux2RelationAttnProcessor] * n + [Flux2RelationParallelAttnProcessor] * (len(kinds) - n)


def test_query_ids_other_than_auto_are_refused_on_klein(klein_model, tmp_path, capsys):
    a, b, q = _images(tmp_path)
    args = ["infer", "--exemplar", a, b, "--query", q, "-o", str(tmp_path / "o.png"),
            *(x for o in [*tiny_overrides(klein_model), "model.query_ids=clone"] for x in ("--set", o))]  # fmt: skip
    assert main(args) == 1
    assert "model.query_ids 'clone' is for FLUX.1 bases" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_a_flux1_adapter_is_refused_on_klein(klein_model, tiny_model, tmp_path, capsys):
    a, b = _images(tmp_path, "ab")
    (q,) = _images(tmp_path, "q", size=32)  # klein would work on it at 64 px: a note the refusal must not follow
    sets = [f"model.base={klein_model / 'base'}", f"model.image_encoder={klein_model / 'image_encoder'}",
            f"adapter.path={tiny_model / 'adapter'}"]  # fmt: skip
    args = ["infer", "--exemplar", a, b, "--query", q, "-o", str(tmp_path / "o.png"), *_as_args(sets)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (f"adapter '{tiny_model / 'adapter'}' does not fit this transformer: it was made for a FLUX.1 transformer "
            "and the base is FLUX.2 [klein]") in err  # fmt: skip
    assert "flux2_double_layers None (transformer needs 2)" in err
    assert "query resized" not in err  # the 32 px query would be enlarged: nothing said before the refusal
    assert not (tmp_path / "o.png").exists()


def test_a_query_under_64_px_is_enlarged_and_an_explicit_size_refused(klein_model, tmp_path, capsys, monkeypatch):
    """klein refuses reference images under 64 px: a small query is worked on at 64 px a side (said in one
    line; with output_size query the result is the query's size); an explicit smaller size is refused."""
    from relation_cli.model import size_rules

    a, b = _images(tmp_path, "ab")
    (q,) = _images(tmp_path, "q", size=32)
    sets = [x for o in tiny_overrides(klein_model) for x in ("--set", o)]
    assert size_rules(load_config(None, tiny_overrides(klein_model))) == (16, 64)
    args = ["infer", "--exemplar", a, b, "--query", q, *sets, "--steps", "1"]
    assert main([*args, "-o", str(tmp_path / "o.png"), "--set", "infer.output_size=query"]) == 0
    assert "query resized from 32x32 to 64x64 (this base works at 64 px a side or more" in capsys.readouterr().err
    assert Image.open(tmp_path / "o.png").size == (32, 32)
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("relation_cli.model.load_pipeline", refuse)  # the explicit size is refused before loading
    assert main([*args, "-o", str(tmp_path / "x.png"), "--width", "32", "--height", "32"]) == 1
    err = capsys.readouterr().err
    assert "working size 32x32 (infer.width 32, infer.height 32 (--width/--height)): this base needs at least 64 px a side\n" in err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
    wide = str(random_image(tmp_path / "w.png", (96, 32), seed=5))  # --width 100 alone: the height follows, 32
    assert main([*args[:5], wide, *args[6:], "-o", str(tmp_path / "y.png"), "--width", "100"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert ("working size 96x32 (infer.width 100, infer.height auto (--width/--height), sides floored to a multiple "
            "of 16): this base needs at least 64 px a side; a side left auto follows the query's aspect ratio, give "
            "both --width and --height") in err  # fmt: skip
    assert not (tmp_path / "y.png").exists()


def test_a_training_resolution_under_64_is_refused_before_loading(klein_model, tmp_path, capsys):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 3, "t2": 3})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    run = tmp_path / "run"
    assert main(["train", *_as_args(_sets(klein_model, data / "train.jsonl", run, "data.resolution=32"))]) == 1
    assert "data.resolution=32: a FLUX.2 [klein] base needs at least 64" in capsys.readouterr().err
    assert not run.exists()


def test_training_on_images_under_64_px_validates_at_64(klein_model, tmp_path, one_thread):
    """24 px rows train as they are; the validation edits work at klein's 64 px, so the run ends with its
    adapter and grid (it used to fail at its end-of-run validation)."""
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 3, "t2": 3})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    run = tmp_path / "run"
    sets = _sets(klein_model, data / "train.jsonl", run, "train.steps=1", "train.validation_samples=2",
                 "train.validation_steps=1")  # fmt: skip
    assert main(["train", *_as_args(sets)]) == 0
    assert (run / "adapter").is_dir() and list((run / "validation").glob("step-*.png"))


def _layer_outputs(pipe, scale: float, tokens: torch.Tensor):
    """Output of the first double-stream and the first single-stream attention at ``relation_scale``."""
    torch.manual_seed(0)
    t = pipe.transformer
    width = t.config.num_attention_heads * t.config.attention_head_dim
    x, text = torch.randn(1, 8, width), torch.randn(1, 5, width)
    double, single = t.transformer_blocks[0].attn, t.single_transformer_blocks[0].attn
    kw = {"relation_tokens": tokens, "relation_scale": scale}
    with torch.no_grad():
        return double(x, text, **kw)[0], single(torch.cat([text, x], dim=1), **kw)


def test_side_attention_is_added_linearly_in_both_kinds_of_layer(klein_pipe):
    """The side attention enters as a sum, ``out = attention + scale * ip`` (SPEC 2.1), in double- and
    single-stream layers alike: the change from scale 0 is exactly linear in the scale, and not zero."""
    tokens = torch.randn(1, 8, klein_pipe.transformer.config.joint_attention_dim)
    (d0, s0), (d1, s1), (d2, s2) = (_layer_outputs(klein_pipe, a, tokens) for a in (0.0, 1.0, 2.0))
    for base, one, two in ((d0, d1, d2), (s0, s1, s2)):
        assert (one - base).abs().max() > 1e-4
        torch.testing.assert_close(two - base, 2 * (one - base), atol=1e-5, rtol=1e-4)


def test_side_attention_is_the_formula_of_spec_2_1(klein_pipe):
    """What each FLUX.2 processor adds is ``W_out . alpha * SDPA(norm_q(W_q x), rmsnorm(W_k' e), W_v' e)`` with
    the query before RoPE (written out here by hand): ``W_q`` and ``W_out`` are ``to_q`` / ``to_out[0]`` in a
    double-stream layer, the attention rows / columns of the fused projections in a single-stream one."""
    import torch.nn.functional as F

    t, scale = klein_pipe.transformer, 0.7
    tokens = torch.randn(1, 8, t.config.joint_attention_dim)
    (d0, s0), (d1, s1) = (_layer_outputs(klein_pipe, a, tokens) for a in (0.0, scale))
    torch.manual_seed(0)
    width = t.config.num_attention_heads * t.config.attention_head_dim
    x, text = torch.randn(1, 8, width), torch.randn(1, 5, width)  # as _layer_outputs draws them
    procs = klein_pipe.relation_adapter.processors
    heads = t.config.num_attention_heads

    def added(attn, proc, hidden, w_q, w_out):
        q = attn.norm_q(F.linear(hidden, w_q).unflatten(-1, (heads, -1))).transpose(1, 2)
        k = F.rms_norm(proc.to_k_ip(tokens).unflatten(-1, (heads, -1)), (q.shape[-1],), eps=1e-5).transpose(1, 2)
        v = proc.to_v_ip(tokens).unflatten(-1, (heads, -1)).transpose(1, 2)
        ip = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return F.linear(scale * ip, w_out)

    double, single = t.transformer_blocks[0].attn, t.single_transformer_blocks[0].attn
    n_double = t.config.num_layers
    with torch.no_grad():
        want_d = added(double, procs[0], x, double.to_q.weight, double.to_out[0].weight)
        joint = torch.cat([text, x], dim=1)
        w = single.to_qkv_mlp_proj.weight
        want_s = added(single, procs[n_double], joint, w[:width], single.to_out.weight[:, :width])
    torch.testing.assert_close(d1 - d0, want_d, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s1 - s0, want_s, atol=1e-5, rtol=1e-4)


def test_scale_zero_is_diffusers_klein(klein_pipe):
    """With relation_scale 0 the FLUX.2 processors give exactly diffusers' own processors' output."""
    from relation_cli.adapter import RelationAdapter

    tokens = torch.randn(1, 8, klein_pipe.transformer.config.joint_attention_dim)
    ours = _layer_outputs(klein_pipe, 0.0, tokens)
    with klein_pipe.relation_adapter.detached(klein_pipe.transformer):
        stock = _layer_outputs(klein_pipe, 0.0, None)
    assert all(torch.equal(a, b) for a, b in zip(ours, stock))
    assert isinstance(klein_pipe.relation_adapter, RelationAdapter)


def test_relation_ids_are_klein_reference_ids(klein_pipe):
    ids = klein_pipe.relation_ids(2, 3, torch.device("cpu"), torch.float32)
    assert ids.shape == (12, 4)
    assert (ids[:6, 0] == 0).all() and (ids[6:, 0] == 10).all()  # target T=0, the query klein's first reference
    assert torch.equal(ids[:6, 1:], ids[6:, 1:])


def test_k_pairs_and_scale_change_the_klein_edit(klein_model, tmp_path, one_thread):
    a, b, c, d, q = _images(tmp_path, "abcdq")
    common = ["infer", "--query", q, "--steps", "2", *(x for o in [*tiny_overrides(klein_model), *SIZE] for x in ("--set", o))]
    assert main([*common, "--exemplar", a, b, "-o", str(tmp_path / "k1.png")]) == 0
    assert main([*common, "--exemplar", a, b, "--exemplar", c, d, "-o", str(tmp_path / "k2.png")]) == 0
    assert main([*common, "--exemplar", a, b, "--scale", "0", "-o", str(tmp_path / "s0.png")]) == 0
    k1, k2, s0 = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("k1", "k2", "s0"))
    assert k1.shape == (64, 64, 3)
    assert np.abs(k1 - k2).max() > 0 and np.abs(k1 - s0).max() > 0


def _sets(model, data, out, *extra):
    sets = [o for o in tiny_overrides(model) if not o.startswith("adapter.")]
    return sets + [f"train.data={data}", f"train.output_dir={out}", "train.steps=2", "lora.rank=4", "train.batch_size=2",
                   "train.validation_samples=0", "train.learning_rate=1e-3", "data.resolution=64",
                   "infer.max_sequence_length=32", *extra]  # fmt: skip


def _as_args(sets):
    return [x for o in sets for x in ("--set", o)]


def test_prepare_train_infer_eval_on_a_klein_base(klein_model, tmp_path, one_thread):
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 4, "t2": 4})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    run = tmp_path / "run"
    targets = yaml.safe_load((ROOT / "configs" / "train-flux2-klein.yaml").read_text())["lora"]["targets"]
    assert main(["train", *_as_args(_sets(klein_model, data / "train.jsonl", run, f"lora.targets={targets}"))]) == 0
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("transformer.transformer_blocks.") for k in lora)  # double-stream blocks only
    assert any(".ff_context.linear_in." in k for k in lora)  # the klein config's targets, FLUX.2's names
    model = ["--model", str(klein_model / "base"), "--image-encoder", str(klein_model / "image_encoder"),
             "--adapter", str(run / "adapter"), "--lora", str(run / "lora")]  # fmt: skip
    a, b, q = _images(tmp_path)
    assert main(["infer", "--exemplar", a, b, "--query", q, "--steps", "2", "-o", str(tmp_path / "o.png"), *model,
                 *_as_args(SIZE)]) == 0  # fmt: skip
    out = tmp_path / "eval"
    sets = ["eval.clip_model=", "eval.dino_model=", "eval.fid=false", "eval.baselines=[copy_query]", *SIZE]
    assert main(["eval", "--input", str(data / "test_seen.jsonl"), "--output-dir", str(out), "--steps", "2", *model,
                 *_as_args(sets)]) == 0  # fmt: skip
    results = json.loads((out / "metrics.json").read_text())
    assert {s["method"] for s in results["samples"]} == {"relation", "copy_query"}
    assert all(np.isfinite(s["mse"]) for s in results["samples"])


def test_exact_resume_on_a_klein_base_with_two_pairs(klein_model, tmp_path, monkeypatch, one_thread):
    extra = ("train.steps=4", "train.checkpoint_every=2", "train.exemplar_dropout=0.5", "train.max_exemplar_pairs=2")
    train = lambda data, out: ["train", *_as_args(_sets(klein_model, data, out, *extra))]
    assert_interrupted_training_resumes_exactly(tmp_path, monkeypatch, train)


def test_dry_run_estimates_a_klein_base(klein_model, tmp_path, capsys):
    """``relation train --dry-run`` builds klein's own classes on the meta device (Qwen3, no T5)."""
    from relation_cli.tiny import ArchSpec, build_components

    src = side_by_side_jsonl(tmp_path / "src", {"t1": 3, "t2": 3})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--dry-run", *_as_args(_sets(klein_model, data / "train.jsonl", tmp_path / "run"))]) == 0
    out = capsys.readouterr().out
    parts = build_components(ArchSpec(base="flux2-klein"))
    frozen = sum(sum(p.numel() for p in parts[k].parameters()) for k in ("transformer", "vae", "text_encoder", "image_encoder"))
    adapter = sum(p.numel() for p in parts["relation_adapter"].parameters())
    assert f"adapter {adapter / 1e6:.1f}M" in out and f"frozen parameters: {frozen / 1e6:.1f}M" in out


@pytest.mark.parametrize("extra, message", [
    ("model.query_ids=kontext", "model.query_ids 'kontext' is for FLUX.1 bases"),
    ("flux1-adapter", "does not fit this transformer: it was made for a FLUX.1 transformer and the base is "
                      "FLUX.2 [klein], cross_attention_dim"),
])  # fmt: skip
def test_dry_run_refuses_what_the_run_would(klein_model, tiny_model, tmp_path, capsys, extra, message):
    """What loading refuses on klein, ``--dry-run`` refuses too, in one line, from configs alone."""
    src = side_by_side_jsonl(tmp_path / "src", {"t1": 3, "t2": 3})
    data = tmp_path / "data"
    assert main(["prepare", str(src), "--output", str(data), "--workers", "1", "--test-per-task", "1"]) == 0
    capsys.readouterr()
    extra = f"adapter.path={tiny_model / 'adapter'}" if extra == "flux1-adapter" else extra
    assert main(["train", "--dry-run", *_as_args(_sets(klein_model, data / "train.jsonl", tmp_path / "run", extra))]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_kohya_lora_with_keys_the_flux2_converter_leaves_out(klein_model, tmp_path, caplog):
    """diffusers' FLUX.2 kohya converter leaves out keys it does not read (FLUX.1's CLIP lora_te1_*, diff_b) with a
    warning the CLI holds back: they are named, and loaded without only with lora.allow_partial."""
    from safetensors.torch import save_file

    from relation_cli.errors import RelationError
    from relation_cli.model import load_pipeline

    g = torch.Generator().manual_seed(0)
    block = "lora_unet_double_blocks_1_img_attn_proj"
    state = {f"{block}.lora_down.weight": torch.randn(4, 32, generator=g), f"{block}.lora_up.weight": torch.randn(32, 4, generator=g)}
    te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    extra = {f"{te}.lora_down.weight": torch.randn(4, 8, generator=g), f"{te}.lora_up.weight": torch.randn(8, 4, generator=g),
             f"{block}.diff_b": torch.ones(32)}  # fmt: skip
    save_file(state, tmp_path / "plain.safetensors")
    save_file(state | extra, tmp_path / "extra.safetensors")
    cfg = lambda name, *more: load_config(None, [*tiny_overrides(klein_model), "model.dtype=float32",
                                                 f"lora.paths=[{tmp_path / name}]", *more])  # fmt: skip
    load_pipeline(cfg("plain.safetensors"))
    with pytest.raises(RelationError, match=r"diffusers leaves out 2 parts of it that change the model \(keys its FLUX\.2 "
                                            rf"converter does not read: 2, e\.g\. {te}\.lora_down\.weight\); they would not be applied"):  # fmt: skip
        load_pipeline(cfg("extra.safetensors"))
    with caplog.at_level("WARNING", logger="relation_cli.lora"):
        load_pipeline(cfg("extra.safetensors", "lora.allow_partial=true"))
    assert "loading the rest (lora.allow_partial)" in caplog.messages[-1]
    from relation_cli.checks import config_problems

    assert not config_problems(cfg("plain.safetensors"), "infer")
    logging.disable(logging.WARNING)  # a program's own setting: the converter's warning is still heard
    try:
        [problem] = config_problems(cfg("extra.safetensors"), "infer")  # --dry-run's check says it too, before loading
    finally:
        logging.disable(logging.NOTSET)
    assert re.search(rf"keys its FLUX\.2 converter does not read: 2, e\.g\. {te}\.lora_down\.weight\); they would not", problem)
    assert not config_problems(cfg("extra.safetensors", "lora.allow_partial=true"), "infer")
    save_file(state | extra | {f"{block}.dora_scale": torch.ones(1, 32)}, tmp_path / "dora.safetensors")
    with pytest.raises(RelationError, match=rf"leaves out 3 parts of it that change the model \(DoRA scales \(\.dora_scale\): "
                                            rf"1, e\.g\. {block}\.dora_scale; keys its FLUX\.2 converter does not read: 2"):  # fmt: skip
        load_pipeline(cfg("dora.safetensors"))
