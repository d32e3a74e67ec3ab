"""The attention processor, the exemplar tokens and the in-context layout, on tiny random models."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image

from relation_cli.adapter import RelationAdapter
from relation_cli.flux_private import pack_latents
from relation_cli.tiny import ArchSpec, build_components, build_pipeline

SPEC = ArchSpec(num_tokens=4)


def _transformer_inputs(transformer, batch=2, n_img=8, n_txt=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    ids = torch.stack(torch.meshgrid(torch.arange(1), torch.arange(2), torch.arange(n_img // 2), indexing="ij"), -1)
    return dict(
        hidden_states=torch.randn(batch, n_img, c.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, n_txt, c.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, c.pooled_projection_dim, generator=g),
        timestep=torch.full((batch,), 0.5),
        guidance=torch.full((batch,), 3.5),
        img_ids=ids.reshape(-1, 3).float(),
        txt_ids=torch.zeros(n_txt, 3),
        return_dict=False,
    )


@pytest.fixture()
def parts():
    comps = build_components(SPEC, seed=1)
    return comps["transformer"].eval(), comps["relation_adapter"].eval()


def _tokens(adapter, batch, seed):
    g = torch.Generator().manual_seed(seed)
    c = adapter.config
    return adapter.encode(torch.randn(batch, c.image_embed_dim, generator=g), torch.randn(batch, c.image_embed_dim, generator=g))


@torch.no_grad()
def test_scale_zero_is_the_stock_transformer_exactly(parts):
    transformer, adapter = parts
    inputs = _transformer_inputs(transformer)
    stock = transformer(**inputs)[0]
    adapter.install(transformer)
    tokens = _tokens(adapter, 2, seed=3)
    off = transformer(**inputs, joint_attention_kwargs={"relation_tokens": tokens, "relation_scale": 0.0})[0]
    absent = transformer(**inputs)[0]
    on = transformer(**inputs, joint_attention_kwargs={"relation_tokens": tokens, "relation_scale": 1.0})[0]
    assert torch.equal(stock, off) and torch.equal(stock, absent)
    assert (on - stock).abs().max() > 1e-3  # and the adapter does something when on


@torch.no_grad()
def test_batch_keeps_each_samples_exemplar_tokens(parts):
    transformer, adapter = parts
    adapter.install(transformer)
    inputs = _transformer_inputs(transformer, batch=2)
    tokens = _tokens(adapter, 2, seed=4)
    both = transformer(**inputs, joint_attention_kwargs={"relation_tokens": tokens})[0]
    for i in range(2):
        single = {k: (v[i : i + 1] if k in ("hidden_states", "encoder_hidden_states", "pooled_projections",
                                              "timestep", "guidance") else v) for k, v in inputs.items()}  # fmt: skip
        alone = transformer(**single, joint_attention_kwargs={"relation_tokens": tokens[i : i + 1]})[0]
        assert torch.allclose(both[i : i + 1], alone, atol=1e-5)
    swapped = transformer(**inputs, joint_attention_kwargs={"relation_tokens": tokens.flip(0)})[0]
    assert (swapped - both).abs().max() > 1e-4


@torch.no_grad()
def test_precomputed_key_values_equal_per_layer_recompute(parts):
    transformer, adapter = parts
    adapter.install(transformer)
    inputs = _transformer_inputs(transformer)
    tokens = _tokens(adapter, 2, seed=5)
    per_layer = transformer(**inputs, joint_attention_kwargs={"relation_tokens": tokens})[0]
    cached = transformer(**inputs, joint_attention_kwargs={"relation_kv": adapter.key_values(tokens)})[0]
    assert torch.allclose(per_layer, cached, atol=1e-6)


def test_tokens_are_a_then_a_prime(parts):
    _, adapter = parts
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, adapter.config.image_embed_dim, generator=g), torch.randn(1, adapter.config.image_embed_dim, generator=g)
    t = adapter.config.num_tokens
    tokens = adapter.encode(a, b)
    assert tokens.shape == (1, 2 * t, adapter.config.cross_attention_dim)
    assert torch.equal(tokens[:, :t], adapter.image_proj(a)) and torch.equal(tokens[:, t:], adapter.image_proj(b))


def test_adapter_refuses_a_transformer_of_another_shape(parts):
    transformer, _ = parts
    other = RelationAdapter(image_embed_dim=16, cross_attention_dim=32, num_tokens=4, num_layers=3,
                            hidden_size=32, attention_head_dim=16)  # fmt: skip
    with pytest.raises(Exception, match="num_layers 3"):
        other.install(transformer)


def _images():
    a = Image.new("RGB", (40, 30), (200, 30, 30))
    b = Image.new("RGB", (30, 40), (30, 30, 200))
    q = Image.new("RGB", (70, 50), (30, 200, 30))
    return a, b, q


@torch.no_grad()
def test_query_tokens_stay_clean_with_cloned_ids_and_mu_from_2n():
    pipe = build_pipeline(SPEC, seed=2)
    pipe.set_progress_bar_config(disable=True)
    a, b, q = _images()
    inputs = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kw: inputs.append({k: kw[k].clone() for k in ("hidden_states", "img_ids")}), with_kwargs=True
    )
    pipe(image=q, exemplars=(a, b), num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    hook.remove()
    n = inputs[0]["hidden_states"].shape[1] // 2
    assert n == (48 // 16) * (64 // 16)  # 70x50 floored to 64x48, 2x2-packed latents of a 8x VAE
    ids = inputs[0]["img_ids"]
    assert torch.equal(ids[:n], ids[n:]) and torch.all(ids[:, 0] == 0)
    for step in inputs[1:]:
        assert torch.equal(step["hidden_states"][:, n:], inputs[0]["hidden_states"][:, n:])
        assert not torch.equal(step["hidden_states"][:, :n], inputs[0]["hidden_states"][:, :n])
    expected = type(pipe.scheduler).from_config(pipe.scheduler.config)
    expected.set_timesteps(sigmas=[1.0, 2 / 3, 1 / 3], mu=calculate_shift(2 * n, 256, 4096, 0.5, 1.15))
    assert torch.allclose(pipe.scheduler.sigmas, expected.sigmas)


@torch.no_grad()
def test_pair_order_is_not_seen_by_the_adapter():
    """A documented property of the method: the exemplar tokens are a set (SPEC 2.1.6)."""
    pipe = build_pipeline(SPEC, seed=2)
    pipe.set_progress_bar_config(disable=True)
    a, b, q = _images()

    def run(pair):
        return pipe(image=q, exemplars=pair, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]  # fmt: skip

    base = run((a, b))
    swapped = abs(base - run((b, a))).max()  # floating-point summation order only
    other = abs(base - run((a, q))).max()
    assert swapped < 1e-4 < other


def test_role_embeddings_tell_before_from_after(tmp_path):
    with torch.no_grad():
        adapter = RelationAdapter(image_embed_dim=8, cross_attention_dim=16, num_tokens=2, num_layers=1,
                                  hidden_size=16, attention_head_dim=8, role_embeddings=True)  # fmt: skip
        adapter.role.normal_()
        a, b = torch.randn(1, 8), torch.randn(1, 8)
        ab, ba = adapter.encode(a, b), adapter.encode(b, a)
        assert not torch.allclose(ab[:, :2], ba[:, 2:])  # the same image in the other role differs
        adapter.save_pretrained(tmp_path / "ad")
        again = RelationAdapter.from_pretrained(tmp_path / "ad")
        assert again.config.role_embeddings and torch.equal(again.encode(a, b), ab)


# ------------------------------------------------------------------------- diffusers' pipeline conventions


@torch.no_grad()
def test_check_inputs_refuses_bad_combinations_before_any_work():
    pipe = build_pipeline(SPEC, seed=2)
    a, b, q = _images()
    embeds, pooled, _ = pipe.encode_prompt(prompt=["x"], prompt_2=None, max_sequence_length=16)
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    bad = [
        (dict(prompt="x", prompt_embeds=embeds, pooled_prompt_embeds=pooled), "Cannot forward both `prompt`"),
        (dict(prompt_embeds=embeds), "`pooled_prompt_embeds` also have to be passed"),
        (dict(prompt_embeds=torch.cat([embeds, embeds]), pooled_prompt_embeds=torch.cat([pooled, pooled])), "batch size 2"),
        (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "callback_on_step_end_tensor_inputs"),
        (dict(max_sequence_length=600), "512"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(exemplars=(a,)), "exemplar pair"),
        (dict(latents=torch.zeros(1, 5, 64)), "`latents` has 5 tokens"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            pipe(**{"image": q, "exemplars": (a, b), **kwargs})
    with pytest.raises(ValueError, match="PIL image"):
        pipe(image=np.zeros((8, 8, 3)), exemplars=(a, b))
    hook.remove()
    assert calls == []


@torch.no_grad()
def test_interrupt_skips_the_remaining_steps():
    pipe = build_pipeline(SPEC, seed=2)
    pipe.set_progress_bar_config(disable=True)
    a, b, q = _images()
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))

    def stop_after_two(p, i, t, kwargs):
        p._interrupt = i == 1
        return {}

    pipe(image=q, exemplars=(a, b), num_inference_steps=5, callback_on_step_end=stop_after_two, output_type="latent")
    hook.remove()
    assert len(calls) == 2 and pipe.interrupt


@torch.no_grad()
def test_given_latents_replace_the_drawn_noise():
    """``latents`` is the noise the generator would draw after sampling the query latents (SPEC 2.2.7)."""
    pipe = build_pipeline(SPEC, seed=2)
    pipe.set_progress_bar_config(disable=True)
    a, b, q = _images()
    generator = torch.Generator().manual_seed(0)
    pipe.encode_query(pipe.image_processor.preprocess(q, height=48, width=64), generator)  # the query first ...
    f = pipe.size_multiple
    noise = torch.randn((1, pipe.transformer.config.in_channels // 4, 2 * (48 // f), 2 * (64 // f)), generator=generator)

    def run(**kw):
        return pipe(image=q, exemplars=(a, b), num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kw).images[0]  # fmt: skip

    given = run(latents=pack_latents(noise))  # ... then the noise
    assert np.abs(given - run()).max() < 1e-6
