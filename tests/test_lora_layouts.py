"""LoRA files in every common layout: loaded at weight x scale x alpha/rank, or refused whole (SPEC 6)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from relation_cli.config import load_config
from relation_cli.errors import RelationError
from tests.conftest import tiny_overrides

RANK, ALPHA = 4, 16.0
MODULES = ("transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_out.0", "single_transformer_blocks.0.attn.to_k")


def _base_weights(tiny_model) -> dict[str, torch.Tensor]:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(tiny_model / "base" / "transformer")
    modules = dict(transformer.named_modules())
    return {name: modules[name].weight.detach().clone() for name in MODULES}


def _factors(weights: dict, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per module: A is (r, in_features), B is (out_features, r)."""
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(RANK, w.shape[1], generator=g) * 0.1, torch.randn(w.shape[0], RANK, generator=g) * 0.1)
            for n, w in weights.items()}  # fmt: skip


def _peft_state(factors: dict, prefix: str = "") -> dict:
    """What ``get_peft_model_state_dict(transformer)`` gives (prefix ''), or its wrapped / diffusers forms."""
    state = {}
    for name, (a, b) in factors.items():
        state[f"{prefix}{name}.lora_A.weight"] = a.contiguous()
        state[f"{prefix}{name}.lora_B.weight"] = b.contiguous()
    return state


def _load(tiny_model, *overrides: str):
    from relation_cli.model import load_pipeline

    cfg = load_config(None, [*tiny_overrides(tiny_model), "model.device=cpu", "model.dtype=float32", *overrides])
    return load_pipeline(cfg)


def _fused(pipe) -> dict[str, torch.Tensor]:
    modules = dict(pipe.transformer.named_modules())
    return {name: modules[name].weight.detach() for name in MODULES}


def _expected(base: dict, *loras: tuple[dict, float]) -> dict:
    """W + sum of factor * B @ A, computed by hand."""
    out = {n: w.clone() for n, w in base.items()}
    for factors, factor in loras:
        for n, (a, b) in factors.items():
            out[n] += factor * (b @ a)
    return out


def _assert_close(got: dict, want: dict) -> None:
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)


def test_diffusers_file_with_alpha_metadata_loads_at_alpha_over_rank(tiny_model, tmp_path):
    """save_lora_weights(..., transformer_lora_adapter_metadata) with rank 4, alpha 16: scale 4."""
    from diffusers import FluxPipeline

    base = _base_weights(tiny_model)
    factors = _factors(base, 0)
    metadata = {"r": RANK, "lora_alpha": ALPHA, "target_modules": list(MODULES)}
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_peft_state(factors),
                                   transformer_lora_adapter_metadata=metadata)  # fmt: skip
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'lora'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, ALPHA / RANK)))


@pytest.mark.parametrize("prefix", ["", "base_model.model.", "transformer."])
def test_peft_layouts_load(tiny_model, tmp_path, prefix):
    """Raw peft keys (no prefix), peft-wrapped and diffusers keys all load, at scale 1 without an alpha."""
    base = _base_weights(tiny_model)
    factors = _factors(base, 1)
    save_file(_peft_state(factors, prefix), tmp_path / "l.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'l.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))


@pytest.mark.parametrize("prefix", ["", "base_model.model.", "transformer."])
def test_keys_with_the_peft_adapter_name_load(tiny_model, tmp_path, prefix):
    """A peft model's own state_dict() keys (``<module>.lora_A.default.weight``) load as the saved form does: diffusers
    left them out with a log line (held back), and the LoRA changed nothing, in silence."""
    base = _base_weights(tiny_model)
    factors = _factors(base, 11)
    named = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
             for k, v in _peft_state(factors, prefix).items()}  # fmt: skip
    save_file(named, tmp_path / "named.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'named.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))


def test_a_file_of_two_peft_adapters_is_refused(tiny_model, tmp_path):
    factors = _factors(_base_weights(tiny_model), 12)
    state = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
             for k, v in _peft_state(factors).items()}  # fmt: skip
    state |= {k.replace(".default.", ".style."): v.clone() for k, v in state.items()}
    save_file(state, tmp_path / "two.safetensors")
    with pytest.raises(RelationError, match=r"holds 2 peft adapters \(default, style\); save one"):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'two.safetensors'}}}]")


def test_a_key_diffusers_leaves_out_is_refused(tiny_model, tmp_path, monkeypatch):
    """diffusers leaves keys of a form it does not know out with a log line only; relation checks the model holds
    every tensor of the file and refuses the LoRA otherwise (the named form above, read without renaming)."""
    from relation_cli import weights

    monkeypatch.setattr(weights, "_without_adapter_name", lambda state, path: state)
    factors = _factors(_base_weights(tiny_model), 13)
    save_file({k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
               for k, v in _peft_state(factors, "transformer.").items()}, tmp_path / "named.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=r"transformer\.\S+\.lora_[AB]\.default\.weight did not load into the "
                                            r"model \(diffusers and transformers leave out keys"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'named.safetensors'}}}]")


def test_dora_and_lora_bias_load(tiny_model, tmp_path):
    """peft's DoRA (``lora_magnitude_vector``) and ``lora_bias`` (``lora_B.bias``), which diffusers reads, fuse to
    their formulas: DoRA W' = m * (W + BA) / ||W + BA|| per output row (Liu et al., 2024, eq. 5; peft's
    ``DoraLinearLayer``), the bias b + b_B. Both were refused, as modules missing from the model or of other widths."""
    from diffusers import FluxTransformer2DModel

    base = _base_weights(tiny_model)
    factors = _factors(base, 14)
    g = torch.Generator().manual_seed(15)
    magnitude = {n: torch.rand(w.shape[0], generator=g) + 0.5 for n, w in base.items()}
    merged = _expected(base, (factors, 1.0))
    for suffix in ("", ".default.weight", ".default"):  # saved by peft; a peft model's state_dict(), now and before
        save_file(_peft_state(factors, "transformer.") | {f"transformer.{n}.lora_magnitude_vector{suffix}": m
                  for n, m in magnitude.items()}, tmp_path / "dora.safetensors")  # fmt: skip
        pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'dora.safetensors'}}}]")
        _assert_close(_fused(pipe), {n: (magnitude[n] / w.norm(dim=1)).unsqueeze(1) * w for n, w in merged.items()})

    biases = {n: torch.randn(w.shape[0], generator=g) * 0.1 for n, w in base.items()}
    save_file(_peft_state(factors, "transformer.") | {f"transformer.{n}.lora_B.bias": b for n, b in biases.items()},
              tmp_path / "bias.safetensors")  # fmt: skip
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'bias.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))
    modules = dict(FluxTransformer2DModel.from_pretrained(tiny_model / "base" / "transformer").named_modules())
    fused = dict(pipe.transformer.named_modules())
    for name, b in biases.items():
        torch.testing.assert_close(fused[name].bias.detach(), modules[name].bias.detach() + b, atol=1e-5, rtol=1e-5)


def test_alpha_keys_set_the_scale(tiny_model, tmp_path):
    base = _base_weights(tiny_model)
    factors = _factors(base, 2)
    state = _peft_state(factors, "transformer.")
    state.update({f"transformer.{n}.alpha": torch.tensor(8.0) for n in MODULES})
    save_file(state, tmp_path / "l.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'l.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 8.0 / RANK)))


def test_kohya_layout_is_converted_by_diffusers(tiny_model, tmp_path):
    """kohya keys (lora_unet_*, lora_down/lora_up, .alpha) for the double blocks' image attention output."""
    base = _base_weights(tiny_model)
    factors = {n: f for n, f in _factors(base, 3).items() if n.endswith("to_out.0")}
    down, up = factors["transformer_blocks.1.attn.to_out.0"]
    key = "lora_unet_double_blocks_1_img_attn_proj"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)},
              tmp_path / "kohya.safetensors")  # fmt: skip
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'kohya.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 2.0 / RANK)))


def test_xlabs_layout_is_converted_by_diffusers(tiny_model, tmp_path):
    base = _base_weights(tiny_model)
    factors = {n: f for n, f in _factors(base, 4).items() if n.endswith("to_out.0")}
    down, up = factors["transformer_blocks.1.attn.to_out.0"]
    key = "double_blocks.1.processor.proj_lora1"
    save_file({f"{key}.down.weight": down, f"{key}.up.weight": up}, tmp_path / "xlabs.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'xlabs.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))


def test_bfl_layout_for_another_transformer_is_refused_with_its_name(tiny_model, tmp_path):
    a, b = torch.zeros(RANK, 32), torch.zeros(32, RANK)
    save_file({"diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": a,
               "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": b}, tmp_path / "bfl.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=r"BFL/ai-toolkit keys .* cannot read \(it looked for '\S+', which the file "
                                            r"does not have; .* diffusers format"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'bfl.safetensors'}}}]")


def test_kohya_keys_of_another_model_are_named_so(tiny_model, tmp_path):
    """A kohya file with no FLUX block (an SD1.5 LoRA, or kohya keys spelt with diffusers' module names) is said to
    be for another model, with a key of it; one with a key diffusers' converter cannot place lists it (the
    message showed "Incompatible keys detected: " and nothing after it)."""
    a, b = torch.zeros(RANK, 32), torch.zeros(32, RANK)
    for name, key in [("sd15", "lora_unet_down_blocks_0_attentions_0_proj_in"),
                      ("diffusers-names", "lora_unet_single_transformer_blocks_0_attn_to_k")]:  # fmt: skip
        save_file({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b}, tmp_path / f"{name}.safetensors")
        with pytest.raises(RelationError, match=rf"kohya keys of no FLUX transformer block \(e\.g\. {key}\.lora_down"
                                                r"\.weight; .*\): a LoRA for another model"):  # fmt: skip
            _load(tiny_model, f"lora.paths=[{{path: {tmp_path / f'{name}.safetensors'}}}]")
    sdxl = {f"lora_{part}.lora_{half}.weight": t.clone() for part in ("unet_down_blocks_1_attentions_0_proj_in",
            "te2_text_model_encoder_layers_0_self_attn_q_proj") for half, t in (("down", a + 1), ("up", b + 1))}  # fmt: skip
    save_file(sdxl, tmp_path / "sdxl.safetensors")  # its lora_te2_ is CLIP-G, not FLUX's T5: named as another model's
    with pytest.raises(RelationError, match=r"kohya keys of no FLUX transformer block .*: a LoRA for another model"):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'sdxl.safetensors'}}}]")
    for key in ("lora_unet_img_in", "lora_unet_final_layer_linear"):  # FLUX's own, outside the blocks: not refused so
        save_file({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b}, tmp_path / "flux-io.safetensors")
        with pytest.raises(RelationError) as e:  # (its widths are FLUX.1-dev's, not the tiny model's)
            _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'flux-io.safetensors'}}}]")
        assert "a LoRA for another model" not in str(e.value)
    flux, odd = "lora_unet_double_blocks_1_img_attn_proj", "lora_unet_nowhere_layer"
    save_file({f"{k}.{half}.weight": t.clone() for k in (flux, odd) for half, t in (("lora_down", a), ("lora_up", b))},
              tmp_path / "odd.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=rf"cannot read \(Incompatible keys detected: {odd}\.lora_down\.weight, "):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'odd.safetensors'}}}]")


def test_partly_fitting_lora_is_refused_unless_allowed(tiny_model, tmp_path, caplog):
    base = _base_weights(tiny_model)
    factors = _factors(base, 5)
    state = _peft_state(factors, "transformer.")
    state["transformer.transformer_blocks.7.attn.to_q.lora_A.weight"] = torch.zeros(RANK, 32)
    state["transformer.transformer_blocks.7.attn.to_q.lora_B.weight"] = torch.zeros(32, RANK)
    save_file(state, tmp_path / "part.safetensors")
    path = f"lora.paths=[{{path: {tmp_path / 'part.safetensors'}}}]"
    with pytest.raises(RelationError, match=r"1 of its 4 modules is not in this model .*transformer_blocks\.7\.attn\.to_q.*allow_partial"):
        _load(tiny_model, path)
    with caplog.at_level("WARNING", logger="relation_cli.lora"):
        pipe = _load(tiny_model, path, "lora.allow_partial=true")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))
    assert caplog.messages[-1].startswith(f"warning: lora '{tmp_path / 'part.safetensors'}'")  # said as the CLI's warnings are


def test_lora_that_fits_nothing_is_refused(tiny_model, tmp_path):
    save_file({"transformer.nowhere.lora_A.weight": torch.zeros(2, 3), "transformer.nowhere.lora_B.weight": torch.zeros(3, 2)},
              tmp_path / "none.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match="none of its 1 modules is in this model"):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'none.safetensors'}}}]")


def test_wrong_sizes_do_not_fit(tiny_model, tmp_path):
    save_file({f"{n}.lora_A.weight": torch.zeros(RANK, 5) for n in MODULES} | {f"{n}.lora_B.weight": torch.zeros(5, RANK) for n in MODULES},
              tmp_path / "sizes.safetensors")  # fmt: skip
    said = (r"raw peft keys .*: its 3 modules are in this model but of other widths \(e\.g\. "
            r"transformer\.single_transformer_blocks\.0\.attn\.to_k in_features 5 \(the model's 32\), .*\): it was "
            r"trained for another model of the same layout; use it with that model\.base$")
    with pytest.raises(RelationError, match=said):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'sizes.safetensors'}}}]")


def test_a_module_fits_only_whole(tiny_model, tmp_path):
    """lora_A of the right width and lora_B of another: the module is a misfit, counted once, and no half of it
    is loaded (with allow_partial the A halves alone would otherwise be)."""
    state = {f"{n}.lora_A.weight": torch.zeros(RANK, 32) for n in MODULES} | {f"{n}.lora_B.weight": torch.zeros(5, RANK) for n in MODULES}
    save_file(state, tmp_path / "half.safetensors")  # fmt: skip
    for partial in ("false", "true"):
        with pytest.raises(RelationError, match=r"its 3 modules are in this model but of other widths \(e\.g\. "
                                                 r"transformer\.single_transformer_blocks\.0\.attn\.to_k out_features 5"):
            _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'half.safetensors'}}}]", f"lora.allow_partial={partial}")


def test_several_loras_each_at_its_weight_times_scale(tiny_model, tmp_path):
    from diffusers import FluxPipeline

    base = _base_weights(tiny_model)
    first, second = _factors(base, 6), _factors(base, 7)
    FluxPipeline.save_lora_weights(tmp_path / "one", transformer_lora_layers=_peft_state(first),
                                   transformer_lora_adapter_metadata={"r": RANK, "lora_alpha": ALPHA, "target_modules": list(MODULES)})  # fmt: skip
    save_file(_peft_state(second), tmp_path / "two.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'one'}, weight: 0.5}}, {{path: {tmp_path / 'two.safetensors'}, weight: -2}}]",
                 "lora.scale=0.5")  # fmt: skip
    _assert_close(_fused(pipe), _expected(base, (first, 0.5 * 0.5 * ALPHA / RANK), (second, -2 * 0.5)))


def _metadata_file(path, state: dict, metadata) -> str:
    """``state`` saved with diffusers' metadata header (``transformer.*`` keys, JSON) as given."""
    import json

    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    save_file(state, path, metadata={"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(metadata)})
    return f"lora.paths=[{{path: {path}}}]"


def _metadata(**fields) -> dict:
    return {f"transformer.{k}": v for k, v in ({"r": RANK, "lora_alpha": ALPHA, "target_modules": ["to_q", "to_out.0", "to_k"]} | fields).items()}


@pytest.mark.parametrize(
    "case, said",
    [
        ("integers", r"transformer\.\S+ holds int32 values; LoRA weights are floating point$"),
        ("a_only", r"3 modules of its 3 have lora_A and no lora_B \(e\.g\. transformer\.\S+\): the file is incomplete$"),
        ("ranks", r"transformer\.transformer_blocks\.0\.attn\.to_q's lora_A has rank 4 and its lora_B rank 3"),
        ("not_object", r"its lora_adapter_metadata header is JSON but not an object of peft's LoraConfig fields \(it is a list\)$"),
        ("no_rank", r"gives no positive integer transformer\.r \(got None\)"),
        ("other_rank", r"its lora_adapter_metadata says rank 16 \(transformer\.r\), its weights have rank 4 \(e\.g\. "
                       r"transformer\.\S+\)$"),
        ("alpha_text", r"transformer\.lora_alpha must be a finite number \(got 'abc'\)$"),
        ("alpha_nan", r"transformer\.lora_alpha must be a finite number \(got nan\)$"),
        ("no_targets", r"has no transformer\.target_modules \(peft's LoraConfig needs them\)"),
    ],
)
def test_a_lora_peft_cannot_build_is_refused_in_one_line(tiny_model, tmp_path, case, said):
    """A half LoRA, halves of two ranks, and metadata that is not peft's LoraConfig fields, or disagrees with the
    weights, were an internal error (IndexError, AttributeError) or diffusers' log of 50 size mismatches ending
    in "does not fit this model (Error(s) in loading state_dict ...)"; each is now one line naming the problem."""
    factors = _factors(_base_weights(tiny_model), 0)
    state = _peft_state(factors, "transformer.")
    path = tmp_path / f"{case}.safetensors"
    if case == "integers":
        save_file({k: v.to(torch.int32) for k, v in state.items()}, path)
        sets = f"lora.paths=[{{path: {path}}}]"
    elif case == "a_only":
        save_file({k: v for k, v in state.items() if ".lora_A." in k}, path)
        sets = f"lora.paths=[{{path: {path}}}]"
    elif case == "ranks":
        save_file(state | {f"transformer.{MODULES[0]}.lora_B.weight": factors[MODULES[0]][1][:, :3].contiguous()}, path)
        sets = f"lora.paths=[{{path: {path}}}]"
    else:
        metadata = {
            "not_object": [1, 2], "no_rank": {k: v for k, v in _metadata().items() if k != "transformer.r"},
            "other_rank": _metadata(r=16), "alpha_text": _metadata(lora_alpha="abc"),
            "no_targets": {"transformer.r": RANK, "transformer.lora_alpha": ALPHA},
            "alpha_nan": _metadata(lora_alpha=float("nan")),
        }[case]
        sets = _metadata_file(path, state, metadata)
    with pytest.raises(RelationError, match=f"^lora '{path}': .*{said}"):
        _load(tiny_model, sets)


def test_metadata_of_the_weights_loads_and_alpha_0_is_warned(tiny_model, tmp_path, caplog):
    """The same checks pass a LoRA whose metadata fits it (target modules named by their last parts, as peft matches
    them); a lora_alpha of 0, which makes the LoRA change nothing, loads with a warning."""
    base = _base_weights(tiny_model)
    factors = _factors(base, 0)
    state = _peft_state(factors, "transformer.")
    _assert_close(_fused(_load(tiny_model, _metadata_file(tmp_path / "fits.safetensors", state, _metadata()))),
                  _expected(base, (factors, ALPHA / RANK)))  # fmt: skip
    # target modules that name fewer than the weights: diffusers takes the modules from the weights, all load
    short = _metadata_file(tmp_path / "short.safetensors", state, _metadata(target_modules=["to_q"]))
    _assert_close(_fused(_load(tiny_model, short)), _expected(base, (factors, ALPHA / RANK)))
    with caplog.at_level("WARNING", logger="relation_cli.lora"):
        _assert_close(_fused(_load(tiny_model, _metadata_file(tmp_path / "zero.safetensors", state, _metadata(lora_alpha=0)))), base)
    assert caplog.messages[-1].startswith("warning: lora '") and caplog.messages[-1].endswith(
        "gives transformer.lora_alpha 0: the LoRA changes nothing")


def test_a_safetensors_header_whose_length_starts_with_0x80_is_not_taken_for_a_pickle(tiny_model, tmp_path):
    """A pickle starts with byte 0x80; so does a safetensors file whose header length's low byte is 0x80 (about 1 in
    32, the header being padded to 8 bytes). Such a file was refused as a pickle; it loads."""
    base = _base_weights(tiny_model)
    factors = _factors(base, 0)
    state = _peft_state(factors, "transformer.")
    path = tmp_path / "pad.safetensors"
    for pad in range(512):  # metadata of growing length until the header length's low byte is 0x80
        save_file(state, path, metadata={"format": "pt", "note": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    head = path.read_bytes()[:9]
    assert head[0] == 0x80 and head[8:9] == b"{"  # a real safetensors header, starting with a pickle's first byte
    _assert_close(_fused(_load(tiny_model, f"lora.paths=[{{path: {path}}}]")), _expected(base, (factors, 1.0)))


@pytest.mark.parametrize("prefix", ["text_model.", ""], ids=["older-transformers-names", "flat-names"])
def test_a_text_encoder_lora_is_fused_too(tiny_model, tmp_path, prefix):
    """FluxPipeline.save_lora_weights(text_encoder_lora_layers=...) with the transformer's: the CLIP text encoder gets
    its part. Its keys name CLIP's modules under ``text_model.`` as transformers 4 did (transformers 5's CLIPTextModel
    is flat; diffusers' loader drops the prefix): relation refused the file as modules missing from the model, and
    fused only the transformer's part (diffusers' fuse_lora fuses the transformer unless told otherwise), dropping
    the text encoder's."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(tiny_model / "base" / "text_encoder")
    clip_modules = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.0.mlp.fc1")
    clip_base = {n: dict(text_encoder.named_modules())[n].weight.detach().clone() for n in clip_modules}
    base = _base_weights(tiny_model)
    factors, clip_factors = _factors(base, 16), _factors(clip_base, 17)
    text_state = {k.replace("encoder.", f"{prefix}encoder.", 1): v for k, v in _peft_state(clip_factors).items()}
    FluxPipeline.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_peft_state(factors),
                                   text_encoder_lora_layers=text_state)  # fmt: skip
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'lora'}, weight: 0.5}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 0.5)))
    fused = dict(pipe.text_encoder.named_modules())
    _assert_close({n: fused[n].weight.detach() for n in clip_modules}, _expected(clip_base, (clip_factors, 0.5)))


def test_a_text_encoder_dora_is_refused(tiny_model, tmp_path):
    """A DoRA magnitude vector on the text encoder: transformers' loading leaves it out (a log line only), and the
    fused CLIP then matched neither formula; the check after loading covers the text encoder too."""
    from transformers import CLIPTextModel

    name = "encoder.layers.0.self_attn.q_proj"
    weight = dict(CLIPTextModel.from_pretrained(tiny_model / "base" / "text_encoder").named_modules())[name].weight
    (a, b), = _factors({name: weight}, 18).values()
    save_file({f"text_encoder.{name}.lora_A.weight": a, f"text_encoder.{name}.lora_B.weight": b,
               f"text_encoder.{name}.lora_magnitude_vector": weight.detach().norm(dim=1) * 2}, tmp_path / "te-dora.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=rf"text_encoder\.{name}\.lora_magnitude_vector did not load into the model .*"
                                            r"keys text_encoder\.<module>\.lora_A\.weight\) for the CLIP text encoder"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'te-dora.safetensors'}}}]")


def test_text_encoder_keys_of_a_form_diffusers_does_not_read_are_named(tiny_model, tmp_path):
    """Text-encoder halves named ``.lora.down``/``.lora.up`` beside diffusers-form transformer keys: diffusers'
    text-encoder loader failed with "Could not automatically infer state dict type"; the keys are named instead."""
    from transformers import CLIPTextModel

    name = "encoder.layers.0.self_attn.q_proj"
    weight = dict(CLIPTextModel.from_pretrained(tiny_model / "base" / "text_encoder").named_modules())[name].weight
    (a, b), = _factors({name: weight}, 19).values()
    transformer = _peft_state(_factors(_base_weights(tiny_model), 20), "transformer.")
    save_file(transformer | {f"text_encoder.{name}.lora.down.weight": a, f"text_encoder.{name}.lora.up.weight": b},
              tmp_path / "te-odd.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=rf"te-odd\.safetensors': 2 text-encoder keys in a form diffusers does not "
                                            rf"read \(e\.g\. text_encoder\.{name}\.lora\.down\.weight; peft's is "
                                            r"<module>\.lora_A\.weight\); save it in diffusers format"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'te-odd.safetensors'}}}]")


def test_kohya_text_encoder_keys_are_fused(tiny_model, tmp_path):
    """kohya's lora_te1_* keys (CLIP-L, as sd-scripts trains it for FLUX): diffusers' FLUX converter gives them in the
    older to_q_lora.down form, which its text-encoder loader cannot read alone; relation converts them as that
    loader would (and they were refused as modules not in the model)."""
    from transformers import CLIPTextModel

    clip = dict(CLIPTextModel.from_pretrained(tiny_model / "base" / "text_encoder").named_modules())
    names = {"q_proj": "encoder.layers.0.self_attn.q_proj", "out_proj": "encoder.layers.0.self_attn.out_proj"}
    clip_base = {n: clip[n].weight.detach().clone() for n in names.values()}
    base = _base_weights(tiny_model)
    factors = {n: f for n, f in _factors(base, 19).items() if n.endswith("to_out.0")}
    clip_factors = _factors(clip_base, 20)
    down, up = factors["transformer_blocks.1.attn.to_out.0"]
    state = {"lora_unet_double_blocks_1_img_attn_proj.lora_down.weight": down,
             "lora_unet_double_blocks_1_img_attn_proj.lora_up.weight": up,
             "lora_unet_double_blocks_1_img_attn_proj.alpha": torch.tensor(2.0)}  # fmt: skip
    for short, name in names.items():
        key = f"lora_te1_text_model_encoder_layers_0_self_attn_{short}"
        state |= {f"{key}.lora_down.weight": clip_factors[name][0], f"{key}.lora_up.weight": clip_factors[name][1],
                  f"{key}.alpha": torch.tensor(2.0)}  # fmt: skip
    save_file(state, tmp_path / "kohya-te.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'kohya-te.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 2.0 / RANK)))
    fused = dict(pipe.text_encoder.named_modules())
    _assert_close({n: fused[n].weight.detach() for n in names.values()}, _expected(clip_base, (clip_factors, 2.0 / RANK)))


def test_a_tensor_under_both_names_is_refused(tiny_model, tmp_path):
    """``lora_A.weight`` and ``lora_A.default.weight`` of one module: one would overwrite the other, in silence."""
    factors = _factors(_base_weights(tiny_model), 21)
    state = _peft_state(factors)
    name = MODULES[0]
    state[f"{name}.lora_A.default.weight"] = state[f"{name}.lora_A.weight"] * 2
    save_file(state, tmp_path / "both.safetensors")
    with pytest.raises(RelationError, match=rf"holds {name}\.lora_A\.weight twice, also as {name}\.lora_A\.default\.weight "
                                            r"\(peft's name of adapter 'default'\); save one of them$"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'both.safetensors'}}}]")


def test_kohya_tensors_the_converter_leaves_out_are_refused_unless_allowed(tiny_model, tmp_path, caplog):
    """diffusers' FLUX kohya converter drops T5 (lora_te2_*) and bias-difference (diff_b) tensors with an info log
    line: the LoRA loaded in part, in silence. They are named, and loaded without only with lora.allow_partial;
    all-zero ones (which change nothing) are not counted."""
    base = _base_weights(tiny_model)
    factors = {n: f for n, f in _factors(base, 22).items() if n.endswith("to_out.0")}
    down, up = factors["transformer_blocks.1.attn.to_out.0"]
    key = "lora_unet_double_blocks_1_img_attn_proj"
    state = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(4.0)}
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    zero_t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_k"  # an all-zero half: changes nothing, not counted
    save_file(state | {f"{t5}.lora_down.weight": torch.ones(RANK, 8), f"{t5}.lora_up.weight": torch.ones(8, RANK),
                       f"{t5}.alpha": torch.tensor(4.0), f"{zero_t5}.lora_down.weight": torch.ones(RANK, 8),
                       f"{zero_t5}.lora_up.weight": torch.zeros(8, RANK), f"{zero_t5}.alpha": torch.tensor(4.0),
                       f"{key}.diff_b": torch.ones(32), "lora_unet_final_layer_linear.diff_b": torch.zeros(32)},
              tmp_path / "dropped.safetensors")  # fmt: skip
    path = f"lora.paths=[{{path: {tmp_path / 'dropped.safetensors'}}}]"
    said = (r"diffusers leaves out 2 parts of it that change the model \(the T5 text encoder: 1, e\.g\. "
            rf"{t5}\.lora_down\.weight; bias differences \(\.diff_b\): 1, e\.g\. {key}\.diff_b\)")
    with pytest.raises(RelationError, match=said + "; they would not be applied: load the rest with --set lora.allow_partial=true$"):
        _load(tiny_model, path)
    with caplog.at_level("WARNING", logger="relation_cli.lora"):
        pipe = _load(tiny_model, path, "lora.allow_partial=true")
    _assert_close(_fused(pipe), _expected(base, (factors, 4.0 / RANK)))
    assert re.search(said + "; loading the rest", caplog.messages[-1]), caplog.messages
    zeros = {f"{zero_t5}.lora_down.weight": torch.ones(RANK, 8), f"{zero_t5}.lora_up.weight": torch.zeros(8, RANK),
             f"{zero_t5}.alpha": torch.tensor(4.0)}  # fmt: skip
    save_file(state | zeros, tmp_path / "zero-t5.safetensors")  # all it would leave out changes nothing: loads
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'zero-t5.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 4.0 / RANK)))


def test_dry_run_names_what_the_converter_would_leave_out(tmp_path, capsys):
    """``--dry-run`` refuses what loading would (above), in the same words, before any model loads."""
    from PIL import Image

    from relation_cli.cli import main

    for i, name in enumerate("abq"):
        Image.new("RGB", (32, 32), (60 * i, 80, 120)).save(tmp_path / f"{name}.png")
    key, t5 = "lora_unet_double_blocks_1_img_attn_proj", "lora_te2_encoder_block_0_layer_0_SelfAttention_q"
    state = {f"{key}.lora_down.weight": torch.ones(RANK, 32), f"{key}.lora_up.weight": torch.ones(32, RANK)}
    save_file(state | {f"{t5}.lora_down.weight": torch.ones(RANK, 8), f"{t5}.lora_up.weight": torch.ones(8, RANK)},
              tmp_path / "t5.safetensors")  # fmt: skip
    save_file(state | {f"{t5}.lora_down.weight": torch.ones(RANK, 8), f"{t5}.lora_up.weight": torch.zeros(8, RANK)},
              tmp_path / "zero-t5.safetensors")  # fmt: skip
    args = ["infer", "--exemplar", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--query", str(tmp_path / "q.png"),
            "--dry-run", "--lora"]  # fmt: skip
    assert main([*args, str(tmp_path / "t5.safetensors")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"diffusers leaves out 1 part of it that changes the model \(the T5 text encoder: 1, e\.g\. "
                     rf"{t5}\.lora_down\.weight\); they would not be applied: load the rest with --set "
                     r"lora\.allow_partial=true", err), err  # fmt: skip
    assert "Traceback" not in err
    assert main([*args, str(tmp_path / "t5.safetensors"), "--set", "lora.allow_partial=true"]) == 0
    assert main([*args, str(tmp_path / "zero-t5.safetensors")]) == 0  # all it would leave out changes nothing
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(RANK, 8),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, RANK),
            f"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(RANK, 8),
            f"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(8, RANK)}  # fmt: skip
    save_file(sdxl, tmp_path / "sdxl.safetensors")  # its lora_te2_ is CLIP-G: called another model's, not T5 left out
    assert main([*args, str(tmp_path / "sdxl.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "kohya keys of no FLUX transformer block" in err and "a LoRA for another model" in err and "T5" not in err


def test_kohya_form_keys_with_diffusers_names_load(tiny_model, tmp_path):
    """transformer.<module>.lora_down/lora_up keys (kohya's halves, diffusers' names): diffusers keeps the transformer.
    keys of such a file, so nothing is said to be left out; a kohya key beside them is (diffusers drops it)."""
    base = _base_weights(tiny_model)
    factors = _factors(base, 23)
    state = {k.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up."): v
             for k, v in _peft_state(factors, "transformer.").items()}  # fmt: skip
    save_file(state, tmp_path / "named.safetensors")
    pipe = _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'named.safetensors'}}}]")
    _assert_close(_fused(pipe), _expected(base, (factors, 1.0)))
    extra = "lora_unet_double_blocks_1_img_attn_proj"
    save_file(state | {f"{extra}.lora_down.weight": torch.ones(RANK, 32), f"{extra}.lora_up.weight": torch.ones(32, RANK)},
              tmp_path / "mixed.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=rf"leaves out 1 part of it that changes the model \(keys other than its "
                                            rf"transformer\. ones: 1, e\.g\. {extra}\.lora_down\.weight\)"):  # fmt: skip
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'mixed.safetensors'}}}]")


def test_kohya_dora_scales_are_named(tiny_model, tmp_path):
    """diffusers filters kohya DoRA scales out with a warning (held back): the LoRA would load as a plain one."""
    factors = {n: f for n, f in _factors(_base_weights(tiny_model), 24).items() if n.endswith("to_out.0")}
    down, up = factors["transformer_blocks.1.attn.to_out.0"]
    key = "lora_unet_double_blocks_1_img_attn_proj"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.dora_scale": torch.ones(1, 32)},
              tmp_path / "dora.safetensors")  # fmt: skip
    with pytest.raises(RelationError, match=rf"\(DoRA scales \(\.dora_scale\): 1, e\.g\. {key}\.dora_scale\)"):
        _load(tiny_model, f"lora.paths=[{{path: {tmp_path / 'dora.safetensors'}}}]")
