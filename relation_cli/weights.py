"""Reading adapter and LoRA weights in the released formats and in relation's own (SPEC 2.3).

Released adapter: a torch pickle ``{"image_proj": {...}, "ip_adapter": {...}}``, read only with
``torch.load(weights_only=True)``. Ours: a folder with ``config.json`` + safetensors written by
:meth:`RelationAdapter.save_pretrained`. LoRA: diffusers-format safetensors.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .adapter import RelationAdapter
from .checks import adapter_problem, check_released_file, lora_file
from .errors import RelationError, first_line
from .fs import atomic_dir, check_new_dir, size_text

_PROCESSOR_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")


def load_pickle_safely(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only; code is refused."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=_zip_file(path))
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise RelationError(f"adapter '{path}': not a torch checkpoint ({first_line(e)})") from None
        raise RelationError(f"adapter '{path}': {refusal(e)}") from None
    except (RuntimeError, EOFError, OSError) as e:
        if isinstance(e, EOFError) or any(t in str(e) for t in ("central directory", "unexpected EOF")) or _cut_zip(path):
            raise RelationError(f"adapter '{path}': cut short or damaged ({size_text(path.stat().st_size)}; the "
                                "released ip_adapter-100000.bin is 5.3 GB): download it again") from None  # fmt: skip
        if "inline_container" in str(e):  # torch's zip reader: an archive torch.save did not write
            raise RelationError(f"adapter '{path}': a zip archive, but not one torch.save wrote") from None
        raise RelationError(f"adapter '{path}': not a readable torch file ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise RelationError(f"adapter '{path}': expected a dict, found {type(data).__name__}")
    return data


def _cut_zip(path: Path) -> bool:
    """Whether ``path`` begins as a zip (a local file header) but has no end of central directory: a zip
    cut short. torch's reader fails on one cut within its first entries with a bare ``[Errno 22]``."""
    try:
        with path.open("rb") as f:
            starts_as_zip = f.read(4) == b"PK\x03\x04"
    except OSError:  # unreadable: the reader's own error says so
        return False
    return starts_as_zip and not _zip_file(path)


def _zip_file(path: Path) -> bool:
    """Whether ``path`` is torch's zip format (``torch.save`` since 1.6), which ``torch.load`` can memory-map:
    tensors are then read from the file's pages, never copied into the process's own memory."""
    import zipfile

    return zipfile.is_zipfile(path)


def refusal(err: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle (ours, or one a library loads), in one line."""
    code = re.search(r"GLOBAL ([\w.]+)", str(err))
    other = re.search(r"(Unsupported [^\n]{0,80})", str(err))
    what = (
        f"holds code or objects other than tensors (GLOBAL {code.group(1)})"
        if code
        else f"not a plain tensor checkpoint ({other.group(1).strip() if other else 'unsupported content'})"
    )
    return f"refused, {what}; relation never executes pickled code"


def _strip_module_prefix(state: dict) -> dict:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def split_released_state(data: dict, path: Path) -> tuple[dict, dict]:
    """The released dict -> (projection state, processor state), prefixes removed, structure checked.

    Raises:
        RelationError: one line naming the first part that is not the released layout: a missing
            ``image_proj``/``ip_adapter``, a key that is not a name, a value that is not a dense tensor of
            floating-point weights, NaN or infinite weights, keys or shapes of no RelationAdapter.
    """
    missing = [k for k in ("image_proj", "ip_adapter") if k not in data]
    if missing:
        lora = next((k for k in data if isinstance(k, str) and lora_layout([k]) != "unknown"), None)
        hint = f"; it holds LoRA weights ({lora}): give a LoRA with --lora, as .safetensors" if lora else ""
        raise RelationError(f"adapter '{path}': missing {', '.join(missing)} (not a RelationAdapter checkpoint){hint}")
    if extra := [k for k in data if k not in ("image_proj", "ip_adapter")]:
        shown = ", ".join(repr(k) for k in extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
        raise RelationError(f"adapter '{path}': top-level keys {shown} beside image_proj and ip_adapter (the released "
                            "layout has only those two)")  # fmt: skip
    for key in ("image_proj", "ip_adapter"):
        part = data[key]
        if not isinstance(part, dict):
            raise RelationError(f"adapter '{path}': {key} is a {type(part).__name__}, not a dict of tensors")
        for name, value in part.items():
            if problem := _weight_problem(name, value):
                raise RelationError(f"adapter '{path}': {key} {problem}")
    proj, procs = (_strip_module_prefix(data[k]) for k in ("image_proj", "ip_adapter"))
    need = {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias"}
    if set(proj) != need:
        raise RelationError(f"adapter '{path}': image_proj keys {sorted(proj)} are not {sorted(need)}")
    for key in ("proj.0.weight", "proj.2.weight", "norm.weight"):
        if proj[key].dim() != (1 if key.startswith("norm") else 2):
            raise RelationError(f"adapter '{path}': image_proj '{key}' has shape {tuple(proj[key].shape)}, not "
                                f"{'1' if key.startswith('norm') else '2'}-D")  # fmt: skip
    bad = [k for k in procs if not _PROCESSOR_KEY.match(k)]
    if bad:
        raise RelationError(f"adapter '{path}': unexpected ip_adapter keys, e.g. {bad[:3]}")
    if "0.to_k_ip.weight" not in procs or procs["0.to_k_ip.weight"].dim() != 2:
        raise RelationError(f"adapter '{path}': ip_adapter has no 2-D '0.to_k_ip.weight' (the first processor's "
                            f"key projection; {len(procs)} keys)")  # fmt: skip
    layers = 1 + max(int(_PROCESSOR_KEY.match(k).group(1)) for k in procs)
    if missing := [f"{i}.{kind}.weight" for i in range(layers) for kind in ("to_k_ip", "to_v_ip") if f"{i}.{kind}.weight" not in procs]:
        raise RelationError(f"adapter '{path}': ip_adapter has no '{missing[0]}'" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + f"; each of its {layers} processors has a to_k_ip and a to_v_ip weight")  # fmt: skip
    width, rows = proj["norm.weight"].shape[0], proj["proj.2.weight"].shape[0]
    if rows % width:
        raise RelationError(f"adapter '{path}': image_proj 'norm.weight' has {width} values, which do not divide the "
                            f"{rows} rows of 'proj.2.weight' into tokens of that width")  # fmt: skip
    return proj, procs


def _weight_problem(name: object, value: object) -> str | None:
    """Why one entry of a released part is not a named tensor of finite floating-point weights, else None.

    Finiteness is read off the tensor's sum first (0.5 s for the 2.65B bf16 weights of the released adapter
    on 2 CPU cores; ``torch.isfinite`` of every value, 16 s, only when that sum is not finite)."""
    if not isinstance(name, str):
        return f"key {name!r} ({type(name).__name__}) is not a name"
    if not isinstance(value, torch.Tensor):
        return f"'{name}' is a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided:
        return f"'{name}' is a sparse tensor ({value.layout}), not a dense one"
    dtype = str(value.dtype).removeprefix("torch.")
    if not value.is_floating_point():
        return f"'{name}' holds {dtype} values, not floating-point weights"
    if value.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"'{name}' holds {dtype} values; relation reads float16, bfloat16, float32 or float64 weights"
    if value.numel() == 0:
        return f"'{name}' is empty (shape {tuple(value.shape)})"
    if not torch.isfinite(value.sum()) and not torch.isfinite(value).all():
        return f"'{name}' holds NaN or infinite weights (a damaged file?)"
    return None


def adapter_from_state(proj: dict, procs: dict, attention_head_dim: int) -> RelationAdapter:
    """Build a :class:`RelationAdapter` whose sizes are read off the weights, and load them.

    The adapter is built on ``meta`` and takes the given tensors as its parameters (``assign=True``), in
    their dtype: no second copy of 2.65B weights (5.3 GB in bf16) is ever made.

    Raises:
        RelationError: ``attention_head_dim`` does not divide the processors' width; keys missing or unexpected.
    """
    image_embed_dim = proj["proj.0.weight"].shape[1]
    cross_attention_dim = proj["norm.weight"].shape[0]
    num_tokens = proj["proj.2.weight"].shape[0] // cross_attention_dim
    num_layers = 1 + max(int(_PROCESSOR_KEY.match(k).group(1)) for k in procs)
    hidden_size = procs["0.to_k_ip.weight"].shape[0]
    if attention_head_dim < 1 or hidden_size % attention_head_dim:
        raise RelationError(f"attention_head_dim {attention_head_dim} (--head-dim) does not divide the adapter's "
                            f"attention width {hidden_size} into heads (FLUX.1-dev: 128, 24 heads of 3072)")  # fmt: skip
    with torch.device("meta"):  # no memory, no random init: the weights below become the parameters
        adapter = RelationAdapter(
            image_embed_dim=image_embed_dim,
            cross_attention_dim=cross_attention_dim,
            num_tokens=num_tokens,
            num_layers=num_layers,
            hidden_size=hidden_size,
            attention_head_dim=attention_head_dim,
        )
    state = {f"image_proj.{k}": v for k, v in proj.items()}
    state.update({f"processors.{k}": v for k, v in procs.items()})
    storages: set[int] = set()
    for key, tensor in state.items():  # a pickle may hold one tensor under two names: safetensors writes neither
        pointer = tensor.untyped_storage().data_ptr()
        state[key] = tensor.clone() if pointer in storages else tensor
        storages.add(pointer)
    result = adapter.load_state_dict(state, strict=False, assign=True)  # the file's tensors, not copies
    missing = [k for k in result.missing_keys if not k.endswith("norm_k_ip.weight")]
    if missing or result.unexpected_keys:
        raise RelationError(
            f"adapter weights incomplete: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
        )
    return adapter


def load_adapter(path: str | Path, attention_head_dim: int) -> RelationAdapter:
    """An adapter from our folder format or from the authors' ``ip_adapter-*.bin``.

    Raises:
        RelationError: what :func:`relation_cli.checks.adapter_problem` refuses (also ``--dry-run``'s
            answer), then weights that do not load or do not form a RelationAdapter.
    """
    path = Path(path)
    problem = adapter_problem(path)
    if problem:
        raise RelationError(problem)
    if path.is_dir():
        try:
            # our format: never a pickle; in the file's dtype (from_pretrained would upcast to float32)
            return RelationAdapter.from_pretrained(path, use_safetensors=True, torch_dtype=stored_dtype(path))
        except (OSError, ValueError, SafetensorError) as e:
            raise RelationError(f"adapter '{path}': cannot load ({first_line(e)})") from None
    proj, procs = split_released_state(load_pickle_safely(path), path)
    try:
        return adapter_from_state(proj, procs, attention_head_dim)
    except RuntimeError as e:  # load_state_dict: tensors whose shapes do not fit one adapter
        raise RelationError(f"adapter '{path}': its weights do not fit together ({_size_mismatch(e)})") from None


def _size_mismatch(e: RuntimeError) -> str:
    """The first "size mismatch for <key>: ..." line of torch's load_state_dict error, else its first line."""
    line = next((x.strip() for x in str(e).splitlines() if "size mismatch" in x), first_line(e))
    return line.rstrip(".")


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of the first tensor in ``folder``'s safetensors, read from the file's header alone."""
    from safetensors import safe_open

    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
    with safe_open(sorted(folder.glob("*.safetensors"))[0], framework="pt") as f:
        return names.get(f.get_slice(next(iter(f.keys()))).get_dtype(), torch.float32)


def convert_released(src: str | Path, dst: str | Path, attention_head_dim: int = 128,
                     say: Callable[[str], None] | None = None) -> Path:  # fmt: skip
    """Released ``.bin`` -> relation's safetensors folder, so the pickle never has to be opened again.
    ``say`` gets a line as each of the two long steps starts (reading, writing: ~10 s each for 5.3 GB).

    Raises:
        RelationError: ``src`` is not a pickle file; ``dst`` exists (checked before reading); what
            :func:`load_adapter` refuses; ``attention_head_dim`` does not divide the processors' width.
    """
    src, dst, say = Path(src), Path(dst), say or (lambda line: None)
    check_released_file(src)
    check_new_dir(dst)  # before 5.3 GB are read
    say(f"reading '{src}' ({size_text(src.stat().st_size)})")
    adapter = load_adapter(src, attention_head_dim)
    count = sum(t.numel() for t in adapter.parameters())
    say(f"writing {count:,} parameters as safetensors to '{dst}'")
    save_atomic(adapter, dst)
    return dst


def save_atomic(model, dst: str | Path) -> Path:
    """``save_pretrained`` into a temporary sibling folder, then rename into place."""
    with atomic_dir(dst) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return Path(dst)


@dataclass(frozen=True)
class LoraWeights:
    """A LoRA file as read: its keys put where diffusers' FLUX loader looks, and its own alpha.

    ``state`` holds diffusers-format keys (``transformer.<module>.lora_A.weight``) or a layout that
    ``FluxLoraLoaderMixin.lora_state_dict`` converts (kohya, BFL, xlabs). ``metadata`` is diffusers'
    LoRA adapter metadata from the safetensors header (``transformer.r``, ``transformer.lora_alpha``...),
    which sets the scale alpha/rank; kohya-style files carry ``<module>.alpha`` keys instead.
    """

    path: Path
    layout: str
    state: dict[str, torch.Tensor]
    metadata: dict | None


LAYOUT_HELP = {
    "diffusers": "diffusers format (keys transformer.<module>.lora_A.weight)",
    "peft": "raw peft keys with no prefix (get_peft_model_state_dict)",
    "peft-wrapped": "peft-wrapped keys (base_model.model.<module>.lora_A.weight)",
    "kohya": "kohya/sd-scripts keys (lora_unet_*/lora_te*.lora_down.weight)",
    "bfl": "BFL/ai-toolkit keys (double_blocks.N..., single_blocks.N...)",
    "xlabs": "xlabs keys (double_blocks.N.processor.*)",
}
_BFL_BLOCKS = ("double_blocks.", "single_blocks.")


def lora_layout(keys: list[str]) -> str:
    """Which of the common FLUX LoRA layouts ``keys`` are in (see ``LAYOUT_HELP``); ``unknown`` otherwise."""
    bare = [k.removeprefix("base_model.model.").removeprefix("diffusion_model.") for k in keys]
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys):
        return "kohya"
    if any(".processor." in k and k.startswith(_BFL_BLOCKS) for k in bare):
        return "xlabs"
    if any(k.startswith(_BFL_BLOCKS) for k in bare):
        return "bfl"
    if not any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "unknown"
    if any(k.startswith(("transformer.", "text_encoder.")) for k in keys):
        return "diffusers"
    return "peft-wrapped" if any(k.startswith("base_model.model.") for k in keys) else "peft"


def to_diffusers_keys(state: dict, layout: str) -> dict:
    """peft layouts -> diffusers' ``transformer.`` keys; BFL keys -> what diffusers' converter reads; others unchanged."""
    if layout in ("peft", "peft-wrapped"):
        return {f"transformer.{k.removeprefix('base_model.model.')}": v for k, v in state.items()}
    if layout == "bfl" and not any("query_norm.scale" in k for k in state):  # the fal/ai-toolkit converter's prefix
        return {f"base_model.model.{k.removeprefix('base_model.model.').removeprefix('diffusion_model.')}": v
                for k, v in state.items()}  # fmt: skip
    return state


def read_lora(path: str | Path) -> LoraWeights:
    """A LoRA from a ``.safetensors`` file or the folder holding ``pytorch_lora_weights.safetensors``.

    Raises RelationError for a missing or unreadable file and one that holds no LoRA weights in a
    known layout; the message names the layouts that are read.
    """
    path = lora_file(path)
    if not path.is_file():
        raise RelationError(f"lora '{path}': not found")
    try:
        state = load_file(path)
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise RelationError(f"lora '{path}': not a readable safetensors file ({first_line(e)})") from None
    layout = lora_layout(list(state))
    if layout == "unknown":
        raise RelationError(
            f"lora '{path}': holds no LoRA weights in a layout relation reads (e.g. {sorted(state)[:3]}); "
            f"it reads {'; '.join(LAYOUT_HELP.values())}"
        )
    if layout in ("diffusers", "peft", "peft-wrapped"):
        state = _without_adapter_name(state, path)
    return LoraWeights(path, layout, to_diffusers_keys(state, layout), _adapter_metadata(header, path))


_NAMED_HALF = re.compile(r"^(.+\.lora_(?:A|B))\.(?!weight$|bias$)([^.]+)\.(weight|bias)$")
_NAMED_MAGNITUDE = re.compile(r"^(.+\.lora_magnitude_vector)\.([^.]+)(?:\.weight)?$")  # peft's DoRA, new and old


def _without_adapter_name(state: dict, path: Path) -> dict:
    """Keys of a peft model's own ``state_dict()`` (``<module>.lora_A.default.weight``, the adapter's name
    inside) in the saved form (``<module>.lora_A.weight``), as peft's ``get_peft_model_state_dict`` writes
    them; others unchanged. diffusers would load the named form into nothing, in silence.

    Raises:
        RelationError: the file holds the weights of more than one named adapter, or a tensor under both names.
    """
    renamed, names = {}, set()
    for key, value in state.items():
        found = _NAMED_HALF.match(key) or _NAMED_MAGNITUDE.match(key)
        if found:
            names.add(found.group(2))
            short = f"{found.group(1)}.{found.group(3)}" if found.re is _NAMED_HALF else found.group(1)
            if short in state:
                raise RelationError(f"lora '{path}': holds {short} twice, also as {key} (peft's name of adapter "
                                    f"'{found.group(2)}'); save one of them")  # fmt: skip
            key = short
        renamed[key] = value
    if len(names) > 1:
        raise RelationError(f"lora '{path}': holds {len(names)} peft adapters ({', '.join(sorted(names))}); save one, "
                            "with get_peft_model_state_dict(model, adapter_name=...)")  # fmt: skip
    return renamed


def _adapter_metadata(header: dict, path: Path) -> dict | None:
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

    raw = header.get(LORA_ADAPTER_METADATA_KEY)
    try:
        value = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        raise RelationError(f"lora '{path}': its {LORA_ADAPTER_METADATA_KEY} header is not valid JSON") from None
    if value is not None and not isinstance(value, dict):
        raise RelationError(f"lora '{path}': its {LORA_ADAPTER_METADATA_KEY} header is JSON but not an object of "
                            f"peft's LoraConfig fields (it is a {type(value).__name__})")  # fmt: skip
    return value
