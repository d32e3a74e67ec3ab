"""Offline builder of small FLUX-architecture components, tokenizers included, from a few sizes.

Used by the tests, by ``relation init-model`` (the starting point of the demo model) and by nothing
else: everything is created in code, nothing is downloaded. The components are the real diffusers /
transformers classes, saved in the same folder layout as FLUX.1-dev and SigLIP, so they load through
exactly the code path that loads the released models.
"""

from __future__ import annotations

import string
from contextlib import nullcontext
from pathlib import Path

import torch

from .adapter import RelationAdapter
from .arch import ArchSpec
from .errors import RelationError


# ------------------------------------------------------------------------------------------ tokenizers


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: 256 printable characters standing for the 256 bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def build_clip_tokenizer():
    """A CLIP BPE tokenizer over single bytes (no merges): every text tokenizes, offline."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_t5_tokenizer():
    """A T5 unigram tokenizer over characters (pad/eos/unk = 0/1/2, 100 extra ids)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    symbols = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [("▁" + c, -3.0) for c in symbols] + [(c, -4.0) for c in symbols]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=100, model_max_length=512)


# ------------------------------------------------------------------------------------------ models


def build_siglip(spec: ArchSpec):
    """A random SigLIP vision encoder and its image processor (the exemplar encoder of every base)."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    image_encoder = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=spec.siglip_hidden, intermediate_size=spec.siglip_intermediate or spec.siglip_hidden * 2,
            num_hidden_layers=spec.siglip_layers, num_attention_heads=spec.siglip_heads,
            image_size=spec.siglip_image_size, patch_size=spec.siglip_patch_size,
        )
    )  # fmt: skip
    feature_extractor = SiglipImageProcessor(
        size={"height": spec.siglip_image_size, "width": spec.siglip_image_size},
        image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3,
    )  # fmt: skip
    return image_encoder.eval(), feature_extractor


def build_components(spec: ArchSpec | None = None, seed: int = 0) -> dict:
    """Randomly initialised components of a :class:`~relation_cli.pipeline.RelationPipeline`, or of a
    :class:`~relation_cli.klein.RelationKleinPipeline` with ``base: flux2-klein`` (:func:`build_klein_components`)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        T5Config,
        T5EncoderModel,
    )

    spec = spec or ArchSpec()
    if spec.base == "flux2-klein":
        return build_klein_components(spec, seed)
    if sum(spec.axes_dims_rope) != spec.attention_head_dim:
        raise ValueError(f"axes_dims_rope {spec.axes_dims_rope} must sum to attention_head_dim")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * spec.vae_latent_channels,
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.joint_attention_dim,
        pooled_projection_dim=spec.text_hidden,
        guidance_embeds=True,
        axes_dims_rope=spec.axes_dims_rope,
    )
    n = len(spec.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(spec.vae_channels),
        layers_per_block=spec.vae_layers_per_block,
        latent_channels=spec.vae_latent_channels,
        norm_num_groups=spec.vae_norm_groups,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )
    clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2,
            num_hidden_layers=spec.text_layers, num_attention_heads=4, max_position_embeddings=77,
            projection_dim=spec.text_hidden, bos_token_id=len(clip_tok) - 2, eos_token_id=len(clip_tok) - 1,
            pad_token_id=len(clip_tok) - 1,
        )
    )  # fmt: skip
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok), d_model=spec.joint_attention_dim, d_kv=spec.t5_head_dim,
            d_ff=spec.t5_ff or spec.joint_attention_dim * 2, num_layers=spec.t5_layers or spec.text_layers,
            num_heads=spec.t5_heads, relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        )
    )  # fmt: skip
    image_encoder, feature_extractor = build_siglip(spec)
    adapter = RelationAdapter.for_transformer(transformer, spec.siglip_hidden, spec.num_tokens)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    for module in (transformer, vae, text_encoder, text_encoder_2, image_encoder, adapter):
        module.eval()  # as from_pretrained leaves them: no dropout
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tok,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": t5_tok,
        "transformer": transformer,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "relation_adapter": adapter,
    }


def build_qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer over single bytes (no merges), with Qwen3's chat markers and a chat
    template of Qwen3's shape (``enable_thinking=False`` writes the empty think block): offline."""
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
        "<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    return tokenizer


def build_klein_components(spec: ArchSpec, seed: int = 0) -> dict:
    """Randomly initialised components of a :class:`~relation_cli.klein.RelationKleinPipeline`: FLUX.2's
    transformer and VAE, a Qwen3 text encoder (``Qwen3ForCausalLM``) with :func:`build_qwen_tokenizer`, and
    the same SigLIP + adapter as FLUX.1 (the adapter's widths from the transformer: C = 3 x ``text_hidden``)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if sum(spec.axes_dims_rope) != spec.attention_head_dim:
        raise ValueError(f"axes_dims_rope {spec.axes_dims_rope} must sum to attention_head_dim")
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * spec.vae_latent_channels, num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers, attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads, joint_attention_dim=spec.joint_attention_dim,
        axes_dims_rope=spec.axes_dims_rope, guidance_embeds=False,
    )  # fmt: skip
    n = len(spec.vae_channels)
    vae = AutoencoderKLFlux2(
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(spec.vae_channels), layers_per_block=spec.vae_layers_per_block,
        latent_channels=spec.vae_latent_channels, norm_num_groups=spec.vae_norm_groups,
    )  # fmt: skip
    tokenizer = build_qwen_tokenizer()
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=spec.qwen_vocab or len(tokenizer), hidden_size=spec.text_hidden,
            intermediate_size=spec.qwen_intermediate or spec.text_hidden * 2, num_hidden_layers=spec.qwen_layers,
            num_attention_heads=spec.qwen_heads, num_key_value_heads=spec.qwen_kv_heads,
            head_dim=spec.qwen_head_dim or spec.text_hidden // spec.qwen_heads, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    )  # fmt: skip
    image_encoder, feature_extractor = build_siglip(spec)
    adapter = RelationAdapter.for_transformer(transformer, spec.siglip_hidden, spec.num_tokens)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    for module in (transformer, vae, text_encoder, adapter):
        module.eval()
    return {
        "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
        "transformer": transformer, "image_encoder": image_encoder,
        "feature_extractor": feature_extractor, "relation_adapter": adapter,
    }  # fmt: skip


def build_pipeline(spec: ArchSpec | None = None, seed: int = 0):
    from .pipeline import RelationPipeline

    return RelationPipeline(**build_components(spec, seed))


def save_model(components: dict, out: str | Path, kontext: bool = False) -> Path:
    """Write components as a relation model folder: ``base/`` (FLUX layout), ``image_encoder/``, ``adapter/``.

    ``kontext``: ``base/`` is saved by ``FluxKontextPipeline`` (same components, its name in model_index.json).
    FLUX.2 [klein] components (no ``text_encoder_2``) are saved by ``Flux2KleinPipeline``.
    """
    from diffusers import Flux2KleinPipeline, FluxKontextPipeline, FluxPipeline

    klein = "text_encoder_2" not in components
    layout = Flux2KleinPipeline if klein else FluxKontextPipeline if kontext else FluxPipeline
    names = ("scheduler", "vae", "text_encoder", "tokenizer") + (() if klein else ("text_encoder_2", "tokenizer_2"))

    out = Path(out)
    base = {k: components[k] for k in names}
    adapter = components["relation_adapter"]
    transformer = components["transformer"]
    with adapter.detached(transformer) if _installed(adapter, transformer) else nullcontext():
        layout(transformer=transformer, **base).save_pretrained(out / "base")
    components["image_encoder"].save_pretrained(out / "image_encoder")
    components["feature_extractor"].save_pretrained(out / "image_encoder")
    adapter.save_pretrained(out / "adapter")
    return out


def _installed(adapter: RelationAdapter, transformer) -> bool:
    return any(p is adapter.processors[0] for p in transformer.attn_processors.values())


def weight_bytes(spec: ArchSpec | None = None) -> tuple[int, int]:
    """(bytes, parameters) of every parameter and buffer :func:`build_components` makes for ``spec``, counted
    on torch's ``meta`` device, so nothing is allocated (float32: 4 bytes a parameter). Raises what
    :func:`build_components` raises for sizes the libraries refuse (ValueError, ...)."""
    with torch.device("meta"):
        parts = build_components(spec)
    tensors = [t for m in parts.values() if isinstance(m, torch.nn.Module) for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors), sum(t.numel() for t in tensors)


# What `relation init-model` holds in memory beside the weights it builds: Python, torch, diffusers and
# transformers. Measured with `/usr/bin/time -f %M relation init-model OUT --spec S` on this project's CPU
# machine (2026-12-01): peak RSS 0.40 GiB for configs/arch/demo.yaml (13 MB of weights), 1.70 GiB and
# 3.16 GiB for two larger specs (16 heads of 64, 4 double and 8 or 24 single blocks) whose safetensors take
# 1.31 and 2.77 GiB: the weights plus 0.39 GiB, never a second copy of them.
LIBRARIES_BYTES = 512 * 2**20


def check_room(spec: ArchSpec | None, out: str | Path) -> None:
    """Raises RelationError when the model of ``spec`` does not fit in the free memory (it is built there
    whole, beside :data:`LIBRARIES_BYTES` of libraries) or on the disk that will hold ``out`` (its safetensors
    files are about the size of the weights)."""
    import shutil

    import psutil

    from .fs import nearest_existing, size_text

    need, count = weight_bytes(spec)
    folder = nearest_existing(Path(out).absolute().parent)
    free_memory, free_disk = psutil.virtual_memory().available, shutil.disk_usage(folder).free
    weights = f"the spec's weights take {size_text(need)} ({count:,} parameters in float32)"
    if need + LIBRARIES_BYTES > free_memory:
        raise RelationError(f"{weights}; building them takes about {size_text(need + LIBRARIES_BYTES)} of memory, "
                            f"more than the {size_text(free_memory)} free; nothing was written")  # fmt: skip
    if need > free_disk:
        raise RelationError(f"{weights}, more than the {size_text(free_disk)} free on the disk at '{folder}'; "
                            "nothing was written")  # fmt: skip


def init_model(out: str | Path, spec: ArchSpec | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised model folder (see :func:`save_model`) atomically.

    Raises RelationError when it would not fit in memory or on disk (:func:`check_room`), before building it."""
    from .fs import atomic_dir

    check_room(spec, out)
    with atomic_dir(out) as tmp:
        save_model(build_components(spec, seed), tmp, kontext=spec is not None and spec.kontext)
    return Path(out)
