"""Every check that needs no weights, run before anything loads; ``--dry-run`` runs only these.

:func:`check_config` asks each ``_*_problems(cfg, command)`` function for the problems it sees and
reports them all in one :class:`RelationError`, as torchtune's config validation does, so a user
fixes a configuration in one round instead of one error per run. Only the standard library and
relation's config are imported here: the answer comes before torch, diffusers or transformers load
(torch alone, only to ask whether a ``model.device`` named explicitly exists).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from .config import DEMO, DEMO_DIR, AdapterSection, LoraFile, LoraSection, ModelSection, RelationConfig
from .errors import RelationError, first_line
from .fs import check_writable, folders_hint, found_below, not_found

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
"""Adapter files read as the authors' pickled checkpoint (``torch.load(weights_only=True)``, never code)."""
ADAPTER_CONFIG = "config.json"  # RelationAdapter.config_name (ConfigMixin's)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
SIGLIP_DEFAULT = "google/siglip-so400m-patch14-384"
"""``model.image_encoder`` for a hub ``model.base``: the SigLIP the paper uses (SPEC 2.1)."""
LOADS_A_MODEL = ("infer", "eval", "train", "ui")
INFERS = ("infer", "eval", "ui")
OFFLOADING = ("model_offload", "sequential_offload", "group_offload")
ATTENTION_PACKAGES = {
    "flash": "flash_attn", "flash_varlen": "flash_attn", "_flash_3": "flash_attn_interface",
    "sage": "sageattention", "sage_varlen": "sageattention", "xformers": "xformers", "aiter": "aiter",
}  # fmt: skip
"""diffusers attention backends (``model.attention_backend``) and the module each one imports."""


def check_released_file(path: Path) -> None:
    """``relation convert``'s input is an existing file of the released pickle's kind (``.bin``, ``.pt``,
    ``.pth``, ``.ckpt``); checked before torch is imported.

    Raises:
        RelationError: ``adapter 'x.bin': file not found`` (naming a file the folder holds under another
            letter case), a folder, a safetensors file or folder (already relation's format), another suffix.
    """
    where = f"adapter '{path}'"
    if path.is_dir():
        raise RelationError(f"{where}: is a folder; relation convert reads the authors' ip_adapter-*.bin file (a "
                            "folder of relation's format is used as is: --adapter FOLDER)")  # fmt: skip
    if not path.exists():
        raise RelationError(f"{where}: {not_found(path)}")
    if path.suffix.lower() == ".safetensors":
        raise RelationError(f"{where}: a safetensors file; relation convert reads the authors' pickle "
                            f"({'/'.join(PICKLE_SUFFIXES)}), and relation's own adapters are folders (--adapter FOLDER)")  # fmt: skip
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        raise RelationError(f"{where}: expected the authors' pickle, a {'/'.join(PICKLE_SUFFIXES)} file")


def check_config(cfg: RelationConfig, command: str) -> None:
    """Raise one :class:`RelationError` listing every problem of ``cfg`` for ``command`` that needs no weights.

    ``command``: ``infer``, ``eval``, ``train``, ``ui`` or ``prepare``. Looks at setting combinations,
    files and folders the config names, optional packages and output folders; reads no weights but a kohya
    LoRA's (to count the parts diffusers would leave out, :func:`_left_out_problem`).
    """
    raise_problems(config_problems(cfg, command))


def config_problems(cfg: RelationConfig, command: str) -> list[str]:
    """Every problem :func:`check_config` reports, one line each, each once (a file listed several times in
    ``train.data`` on purpose is one problem), in order (empty: none)."""
    return list(dict.fromkeys(p for find in PROBLEM_FINDERS for p in find(cfg, command)))


def raise_problems(problems: list[str], what: str = "the configuration") -> None:
    """Nothing for no problem; else one :class:`RelationError`: a lone problem as it is, several numbered
    (``3 problems in the configuration: (1) ...; (2) ...``)."""
    if len(problems) == 1:
        raise RelationError(problems[0])
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise RelationError(f"{len(problems)} problems in {what}: {listed}")


# ------------------------------------------------------------------------------------------ model sources


def looks_local(name: str) -> bool:
    """A folder, not a hub id: it exists (or is in a folder that cannot be searched), starts like a path, or is
    not of the form ``owner/name``."""
    try:
        exists = Path(name).exists()
    except OSError:
        exists = True
    return exists or name.startswith((".", "/", "~")) or name.count("/") != 1


def source_problem(key: str, name: str, marker: str) -> str | None:
    """What is wrong with a local model folder (``marker``: the file its layout must hold), or None."""
    if not looks_local(name):
        return None
    path = Path(name).expanduser()
    try:
        if not path.is_dir():
            return f"{key} '{name}': folder not found (or not a hub id of the form owner/name)"
        if not (path / marker).is_file():
            if (path / "config.yaml").is_file() and (path / "adapter").is_dir():
                return f"{key} '{name}': a training run, not a model folder; use --run {name}"
            return f"{key} '{name}': no {marker} in this folder{_marker_near(key, path, marker)}"
    except PermissionError as e:
        return f"{key} '{name}': cannot be read ({first_line(e)})"
    return None


def _marker_near(key: str, path: Path, marker: str) -> str:
    """Where ``marker`` is, near a folder that lacks it, as ``; ...`` to add to the refusal (or ``""``): a folder
    of relation's parts (``relation init-model``'s base/, image_encoder/, adapter/) given as the base, one part of
    a model (its ``transformer/``), or the file one or two levels down (a hub cache's ``snapshots/<hash>/``;
    several such folders are listed, up to 3)."""
    try:
        return _marker_near_in(key, path.resolve(), marker)  # the folders above '.' have names
    except OSError:  # a folder near it that cannot be read: no hint
        return ""


def _marker_near_in(key: str, path: Path, marker: str) -> str:
    if key == "model.base" and (path / "base" / marker).is_file() and (path / "adapter").is_dir():
        return (f"; it holds a whole relation model (base/, image_encoder/, adapter/): pass --model {path / 'base'} "
                f"--image-encoder {path / 'image_encoder'} --adapter {path / 'adapter'}")  # fmt: skip
    if (path.parent / marker).is_file():
        return f"; it is one part of '{path.parent}', which has {marker}: pass that"
    siglip = key == "model.image_encoder"  # a folder with a config.json of another model would be refused in turn
    found = found_below(path, marker, lambda f: f.parent,
                        lambda f: f.is_file() and not (siglip and image_encoder_problem(str(f.parent))))  # fmt: skip
    return folders_hint(found, "has it", "have it", "that")


IMAGE_ENCODER_TYPES = ("siglip_vision_model", "siglip")
"""``model_type`` values of a ``model.image_encoder`` config that ``SiglipVisionModel.from_pretrained`` loads: a
SigLIP vision tower, or a whole SigLIP (its vision half is taken)."""


def image_encoder_problem(name: str) -> str | None:
    """What the ``config.json`` of a local ``model.image_encoder`` folder tells is wrong: not a SigLIP (e.g. a
    base's ``text_encoder`` given by mistake), or None; hub ids and folders without the file are left to
    :func:`source_problem` and loading. No weights are read."""
    path = Path(name).expanduser() / "config.json"
    if not looks_local(name) or not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return f"model.image_encoder '{name}': config.json is not a readable JSON object"
    if kind not in IMAGE_ENCODER_TYPES:
        return (f"model.image_encoder '{name}': a SigLIP is needed (model_type {' or '.join(IMAGE_ENCODER_TYPES)}), "
                f"this folder holds {kind or 'no model_type'}")  # fmt: skip
    return None


@dataclass(frozen=True)
class ModelSources:
    """Where each part comes from, after defaults are applied: hub ids or local paths."""

    base: str
    image_encoder: str
    adapter: str | None
    loras: tuple[LoraFile, ...] = ()


def resolve_sources(
    model: ModelSection, adapter: AdapterSection, lora: LoraSection, require_adapter: bool = True
) -> ModelSources:
    """Apply the demo defaults and check local paths exist, before anything heavy is loaded.

    Training passes ``require_adapter=False``: without ``adapter.path`` it starts a new adapter.
    """
    encoder, adapter_path = chosen_parts(model, adapter)
    if model.base == DEMO:
        demo = DEMO_DIR
        if not (demo / "base" / "model_index.json").is_file():
            raise RelationError(f"the embedded demo model is missing from {demo}; run `make demo-model`")
        lora_default = demo / "lora"
        loras = tuple(lora.paths) or ((LoraFile(path=str(lora_default)),) if lora_default.is_dir() else ())
        sources = ModelSources(str(demo / "base"), encoder, adapter_path, loras)
    else:
        sources = ModelSources(model.base, encoder or SIGLIP_DEFAULT, adapter_path, tuple(lora.paths))
    _check_source("model.base", sources.base, "model_index.json")
    _check_source("model.image_encoder", sources.image_encoder, "config.json")
    if problem := image_encoder_problem(sources.image_encoder):
        raise RelationError(problem)
    if sources.adapter is None and adapter.scale != 0 and require_adapter:
        raise RelationError("adapter.path is empty: pass --adapter (the released ip_adapter-*.bin or a relation adapter)")
    for problem in [sources.adapter and adapter_problem(sources.adapter), *(lora_problem(f.path) for f in sources.loras)]:
        if problem:
            raise RelationError(problem)
    return sources


def chosen_parts(model: ModelSection, adapter: AdapterSection) -> tuple[str | None, str | None]:
    """The image encoder and adapter a command loads, as given: ``model.image_encoder`` and ``adapter.path``, else,
    with ``model.base: demo``, the embedded demo model's folders; None where neither applies (:func:`resolve_sources`
    then takes SigLIP's hub id, and training starts a new adapter)."""
    demo = model.base == DEMO
    return (model.image_encoder or (str(DEMO_DIR / "image_encoder") if demo else None),
            adapter.path or (str(DEMO_DIR / "adapter") if demo else None))  # fmt: skip


def _check_source(key: str, name: str, marker: str) -> None:
    problem = source_problem(key, name, marker)
    if problem:
        raise RelationError(problem)


def has_lora(cfg: RelationConfig) -> bool:
    """A LoRA will be loaded: ``lora.paths``, or the demo model's own LoRA."""
    return bool(cfg.lora.paths) or (cfg.model.base == DEMO and (DEMO_DIR / "lora").is_dir())


def _source_problems(cfg: RelationConfig, command: str) -> list[str]:
    if command not in LOADS_A_MODEL:
        return []
    m, demo = cfg.model, cfg.model.base == DEMO
    if demo and not (DEMO_DIR / "base" / "model_index.json").is_file():
        return [f"the embedded demo model is missing from {DEMO_DIR}; run `make demo-model`"]
    problems = [] if demo else [source_problem("model.base", m.base, "model_index.json")]
    if m.image_encoder:
        problems.append(source_problem("model.image_encoder", m.image_encoder, "config.json")
                        or image_encoder_problem(m.image_encoder))  # fmt: skip
    elif not demo and looks_local(m.base):
        problems.append(_missing_image_encoder(m.base))
    problems += _weights_problems(cfg, command, demo)
    if not any(problems):  # both folders usable: do they fit each other?
        encoder, adapter = chosen_parts(m, cfg.adapter)
        problems.append(encoder and adapter and adapter_encoder_problem(adapter, encoder))
    return [p for p in problems if p]


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when it is missing or not one (other checks say so)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def adapter_encoder_problem(adapter: str, encoder: str) -> str | None:
    """A relation adapter folder whose projection reads another width than the local image encoder gives
    (``image_embed_dim`` of the adapter's config.json against the SigLIP's ``hidden_size``), from the two
    config.json files alone, as loading would find it (:meth:`RelationAdapter.check_compatible`); None when they
    fit or either cannot be told (a released ``.bin``, a hub id)."""
    if not looks_local(encoder):
        return None
    width = _read_json(Path(adapter).expanduser() / ADAPTER_CONFIG).get("image_embed_dim")
    siglip = _read_json(Path(encoder).expanduser() / "config.json")
    vision = siglip.get("vision_config", siglip)  # a whole SigLIP's config holds its vision tower's
    given = vision.get("hidden_size") if isinstance(vision, dict) else None
    if isinstance(width, int) and isinstance(given, int) and width != given:
        return (f"adapter '{adapter}' does not fit this image encoder: image_embed_dim {width} (the image encoder "
                f"gives {given})")  # fmt: skip
    return None


def _missing_image_encoder(base: str) -> str:
    beside = Path(base).expanduser().parent / "image_encoder"
    hint = f" (e.g. --image-encoder {beside})" if (beside / "config.json").is_file() else ""
    return (f"model.image_encoder is empty: a local model.base needs a local SigLIP too: pass --image-encoder "
            f"FOLDER{hint}, or --image-encoder {SIGLIP_DEFAULT} to download it")  # fmt: skip


def _weights_problems(cfg: RelationConfig, command: str, demo: bool) -> list[str]:
    problems = []
    adapter = cfg.adapter.path
    if adapter:
        problems.append(adapter_problem(adapter))
    elif not demo and cfg.adapter.scale != 0 and command != "train":
        problems.append("adapter.path is empty: pass --adapter (the released ip_adapter-*.bin or a relation adapter)")
    for lora in cfg.lora.paths:
        problem = lora_problem(lora.path)
        problems.append(problem or (None if cfg.lora.allow_partial else _left_out_problem(lora.path, cfg)))
    return problems


def _left_out_problem(path: str, cfg: RelationConfig) -> str | None:
    """The parts of a kohya LoRA (or one with DoRA scales) that diffusers would leave out, as loading refuses them
    (:func:`relation_cli.lora.left_out_problem`, which reads the weights); None at once for other files."""
    keys = _safetensors_keys(path) or []
    if not any(k.endswith((".lora_down.weight", ".lora_up.weight", ".dora_scale")) for k in keys):
        return None
    from .lora import left_out_problem

    try:
        return left_out_problem(path, base_class(cfg))
    except RelationError as e:
        return str(e)


def adapter_problem(path: str | Path) -> str | None:
    """What the names and first bytes tell is wrong with an ``adapter.path``, or None; no weights are read.

    Accepted: a folder with ``config.json`` and ``.safetensors`` weights (relation's format), or a
    ``.bin``/``.pt``/``.pth``/``.ckpt`` file in torch's zip format or a pickle of protocol 2 or later
    (``torch.save``'s two formats; the authors' ``ip_adapter-*.bin``). :func:`relation_cli.weights.load_adapter`
    asks this first, so ``--dry-run`` and loading refuse the same files.
    """
    p = Path(path)
    if not p.exists():
        return f"adapter '{path}': not found"
    if p.is_dir():
        if (p / "config.yaml").is_file() and (p / "adapter").is_dir():
            return (f"adapter '{path}': a training run, not an adapter folder; its adapter is '{p / 'adapter'}' "
                    f"(infer, eval and ui also take --run {path})")  # fmt: skip
        if not (p / ADAPTER_CONFIG).is_file():
            lora = "; it holds a LoRA: give it with --lora" if (p / LORA_WEIGHT_NAME).is_file() else ""
            return f"adapter '{path}': folder has no {ADAPTER_CONFIG}{lora}"
        if not any(p.glob("*.safetensors")):
            return f"adapter '{path}': folder has no .safetensors weights (never read as a pickle)"
        return _adapter_config_problem(path, p / ADAPTER_CONFIG)
    if p.suffix.lower() not in PICKLE_SUFFIXES:
        lora = "; a .safetensors file is a LoRA's form: give a LoRA with --lora" if p.suffix.lower() == ".safetensors" else ""
        return f"adapter '{path}': expected a relation adapter folder or a {'/'.join(PICKLE_SUFFIXES)} file{lora}"
    head = _first_bytes(p, 4)
    if head == b"":
        return f"adapter '{path}': empty file (0 bytes)"
    if head is not None and not _torch_saved(head):
        return f"adapter '{path}': not a torch checkpoint (neither torch's zip format nor a pickle)"
    return None


def _adapter_config_problem(path: str | Path, config: Path) -> str | None:
    """An adapter folder's ``config.json`` that names another model (a SigLIP's ``model_type``, another
    diffusers class's ``_class_name``: a model folder given as ``--adapter`` by mistake), or None. A config
    naming neither is left to loading."""
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return f"adapter '{path}': {ADAPTER_CONFIG} is not readable JSON"
    if not isinstance(data, dict):
        return f"adapter '{path}': {ADAPTER_CONFIG} is not a JSON object"
    other = data.get("_class_name") if data.get("_class_name") != "RelationAdapter" else None
    other = other or (data.get("model_type") if "_class_name" not in data else None)
    if other:
        return f"adapter '{path}': a {other} folder, not a relation adapter (whose {ADAPTER_CONFIG} has _class_name RelationAdapter)"
    return None


def lora_problem(path: str) -> str | None:
    """What the names and the header tell is wrong with a ``lora.paths`` entry, or None; no weights are read.

    Accepted: a ``.safetensors`` file, or a folder holding ``pytorch_lora_weights.safetensors``. The file's
    header must be safetensors' (an 8-byte little-endian length, then that many bytes of JSON); a pickle
    (``torch.save``'s zip or a bare one) is named as such. A path
    whose ``:tail`` follows an existing file is a ``PATH[:WEIGHT]`` whose weight is not a number.
    """
    p = Path(path)
    if not p.exists():
        head, sep, tail = path.rpartition(":")
        if sep and head and Path(head).exists():
            return f"lora '{path}': weight '{tail}' is not a number (--lora PATH[:WEIGHT], e.g. {head}:0.5)"
        return f"lora '{path}': not found"
    if p.is_dir():
        if not (p / LORA_WEIGHT_NAME).is_file():
            run = " (a training run: its LoRA is in lora/)" if (p / "lora" / LORA_WEIGHT_NAME).is_file() else ""
            return f"lora '{path}': folder has no {LORA_WEIGHT_NAME}{run}"
        p = p / LORA_WEIGHT_NAME
    head = _first_bytes(p, 9)
    if head is not None:
        size = p.stat().st_size
        length = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
        if not (0 < length <= size - 8 and head[8:9] == b"{"):
            if _torch_saved(head):
                return (f"lora '{p}': a PyTorch pickle, not safetensors; relation reads LoRAs only as .safetensors "
                        "and never unpickles one (diffusers' save_lora_weights writes .safetensors by default)")  # fmt: skip
            return f"lora '{p}': not a readable safetensors file (no safetensors header)"
    return None


def _torch_saved(head: bytes) -> bool:
    """Whether a file's first bytes are ``torch.save``'s: its zip format, or a pickle of protocol 2 or later."""
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def _first_bytes(path: Path, n: int) -> bytes | None:
    """The first ``n`` bytes of a file (fewer if it is shorter); None if it cannot be read (loading says why)."""
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return None


def _device_problems(cfg: RelationConfig, command: str) -> list[str]:
    """A ``model.device`` named explicitly (cuda, cuda:N, mps) that this machine lacks. Only then is torch
    imported, to ask it (:func:`relation_cli.model.resolve_device`, the rule every command loads with)."""
    name = cfg.model.device
    if command not in LOADS_A_MODEL or name in ("auto", "cpu"):
        return []
    from .model import resolve_device

    try:
        resolve_device(name)
    except RelationError as e:
        return [str(e)]
    return []


# ------------------------------------------------------------------------------------------ settings


def _memory_problems(cfg: RelationConfig, command: str) -> list[str]:
    m, problems = cfg.model, []
    if command == "train":
        return _train_memory_problems(cfg)
    if command not in INFERS:
        return []
    if (m.memory == "fp8_storage" or m.quantize != "none") and not cfg.lora.fuse and has_lora(cfg):
        problems.append("model.memory=fp8_storage and model.quantize need the LoRA fused (lora.fuse=true)")
    if m.memory in OFFLOADING and _device_type(cfg) == "cpu":
        where = "model.device is cpu" if m.device == "cpu" else f"model.device {m.device} is the CPU on this machine"
        problems.append(f"model.memory={m.memory} offloads to a GPU; {where}")
    return problems


def _device_type(cfg: RelationConfig) -> str | None:
    """The type of ``model.device`` as the run will resolve it ("cpu", "cuda", "mps"; torch is imported
    unless it names the CPU); None when it cannot be resolved (the device check says why)."""
    if cfg.model.device == "cpu":
        return "cpu"
    from .model import resolve_device

    try:
        return resolve_device(cfg.model.device).type
    except RelationError:
        return None


def _train_memory_problems(cfg: RelationConfig) -> list[str]:
    """relation train stores the frozen transformer in float8 (model.memory=fp8_storage) or not at all; the
    inference modes would otherwise be ignored without a word. ``train.full_bf16`` needs bf16 autocast (its
    weights meet bf16 frozen ones) and no EMA; "auto" precision is resolved, and refused, when the run starts."""
    m, problems = cfg.model, []
    if m.memory in OFFLOADING:
        problems.append(f"model.memory={m.memory} is for inference; relation train takes none or fp8_storage")
    elif m.memory == "fp8_storage" and cfg.train.mode == "full":
        problems.append("model.memory=fp8_storage keeps the frozen transformer in float8; train.mode=full trains it "
                        "(use lora or adapter)")  # fmt: skip
    elif m.memory == "fp8_storage" and cfg.train.mode == "vae":
        problems.append("model.memory=fp8_storage keeps the frozen transformer in float8; train.mode=vae does not run "
                        "it (leave model.memory=none)")  # fmt: skip
    if m.quantize != "none":
        problems.append("model.quantize is for inference; relation train stores the frozen transformer in float8 with "
                        "model.memory=fp8_storage")  # fmt: skip
    t = cfg.train
    if t.full_bf16 and t.mixed_precision in ("no", "fp16"):
        problems.append(f"train.full_bf16 needs bf16 mixed precision; train.mixed_precision is {t.mixed_precision} "
                        "(set bf16, or auto on a GPU)")  # fmt: skip
    elif t.full_bf16 and t.mixed_precision == "auto" and (kind := _device_type(cfg)) not in (None, "cuda"):
        problems.append(full_bf16_refused("auto", "no", kind))  # auto is bf16 on CUDA only (model.resolve_mixed_precision)
    if t.full_bf16 and t.ema_decay > 0:
        problems.append("train.full_bf16 cannot keep an EMA (train.ema_decay): its small steps are lost in bf16")
    return problems


def full_bf16_refused(setting: str, resolved: str, device: str) -> str:
    """The one message for ``train.full_bf16`` without bf16 (``setting`` of train.mixed_precision resolving to
    ``resolved`` on ``device``)."""
    return (f"train.full_bf16 needs bf16 mixed precision; train.mixed_precision {setting} is {resolved} on {device}: "
            "set train.mixed_precision=bf16")  # fmt: skip


def _train_lora_problems(cfg: RelationConfig, command: str) -> list[str]:
    """train.mode=lora continues the one LoRA of lora.paths as it is (:func:`relation_cli.lora.continue_lora`);
    train.mode=vae uses no adapter and no LoRA, so naming one (which the saved config would record) is refused."""
    paths = cfg.lora.paths
    if command == "train" and cfg.train.mode == "vae":
        unused = [f"adapter.path '{cfg.adapter.path}'"] * bool(cfg.adapter.path) + ["lora.paths"] * bool(paths)
        return [f"train.mode=vae trains the VAE alone; {' and '.join(unused)} would not be used (leave "
                f"{'them' if len(unused) > 1 else 'it'} empty)"] if unused else []  # fmt: skip
    if command != "train" or cfg.train.mode != "lora" or not paths:
        return []
    if len(paths) > 1:
        return [f"train.mode=lora continues one LoRA; lora.paths has {len(paths)} (give one, or "
                "train.mode=adapter to train the adapter on the base with them merged)"]  # fmt: skip
    if paths[0].weight != 1:
        return [f"train.mode=lora continues the LoRA '{paths[0].path}' as it is; a weight ({paths[0].weight:g}) "
                "applies when it is used, not when it trains: drop ':W'"]  # fmt: skip
    keys = _safetensors_keys(paths[0].path)
    text = [k for k in keys or () if k.startswith(TEXT_ENCODER_KEYS)]
    if text and not all_zero(paths[0].path, text):
        return [lora_mode_refusal(paths[0].path, len(text) == len(keys))]
    return []


TEXT_ENCODER_KEYS = ("text_encoder.", "lora_te", "text_encoders.")
"""How a LoRA file's text-encoder keys begin: diffusers' ``text_encoder.``, kohya's ``lora_te*_``, ComfyUI's
``text_encoders.``."""


def lora_mode_refusal(path: str | Path, text_only: bool) -> str:
    """The one message for a LoRA with a text-encoder part given to ``train.mode=lora``."""
    what = "no transformer part" if text_only else "a text-encoder part too"
    return (f"lora '{path}': has {what}; train.mode=lora trains the transformer's LoRA alone, and would save it "
            "without the rest: train.mode=adapter fuses the whole LoRA into the base instead")


def _safetensors_keys(path: str | Path) -> list[str] | None:
    """The tensor names in a ``.safetensors`` file's header (or the folder's ``pytorch_lora_weights.safetensors``),
    no weights read; None when there is no readable header (:func:`lora_problem` says why; safetensors caps a
    header at 100 MB)."""
    p = lora_file(path)
    try:
        with p.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 0 < length <= min(p.stat().st_size - 8, 100_000_000):
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError):
        return None
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else None


def lora_file(path: str | Path) -> Path:
    """A ``lora.paths`` entry as its file: a folder's ``pytorch_lora_weights.safetensors`` (diffusers'
    ``save_lora_weights``), else the path itself."""
    path = Path(path).expanduser()
    return path / LORA_WEIGHT_NAME if path.is_dir() else path


def all_zero(path: str | Path, keys: list[str]) -> bool:
    """Whether every tensor ``keys`` names in a LoRA file, its ``.alpha`` values aside, is all zero (such parts
    change nothing; converters purge them). False when the file cannot be read (loading says why)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(lora_file(path), framework="pt") as f:
            return all(not f.get_tensor(k).count_nonzero() for k in keys if not k.endswith(".alpha"))
    except (SafetensorError, OSError):
        return False


def _package_problems(cfg: RelationConfig, command: str) -> list[str]:
    needed = []  # (setting, module, pip name)
    if command in INFERS and cfg.model.quantize != "none":
        needed.append((f"model.quantize={cfg.model.quantize}", "torchao", "torchao"))
    backend = cfg.model.attention_backend
    if command in LOADS_A_MODEL and backend in ATTENTION_PACKAGES:
        module = ATTENTION_PACKAGES[backend]
        needed.append((f"model.attention_backend={backend}", module, module.replace("_interface", "")))
    if command == "train" and cfg.train.optimizer == "adamw8bit":
        needed.append(("train.optimizer=adamw8bit", "bitsandbytes", "bitsandbytes"))
    if command == "eval" and cfg.eval.fid and cfg.eval.strict and not cfg.eval.fid_weights:
        needed.append(("eval.fid with eval.strict", "torch_fidelity", "'relation[fid]'"))
    return [f"{setting} needs {module}: pip install {pip}" for setting, module, pip in needed if find_spec(module) is None]


def _size_problems(cfg: RelationConfig, command: str) -> list[str]:
    i, limit = cfg.infer, cfg.data.max_image_pixels
    if command in INFERS and i.width and i.height and i.width * i.height > limit:
        return [f"infer.width {i.width} x infer.height {i.height} is {i.width * i.height:,} pixels, over the limit "
                f"of {limit:,} (data.max_image_pixels)"]  # fmt: skip
    if command != "train" or cfg.train.mode == "vae":
        return []
    multiple = 2 * vae_scale_factor(cfg)
    side = cfg.data.resolution
    if side % multiple:
        low = side // multiple * multiple
        return [f"data.resolution={side}: not a multiple of {multiple} (2 x the VAE's scale factor); use {low or multiple} "
                f"or {low + multiple}"]  # fmt: skip
    if side < KLEIN_MIN_SIDE and base_class(cfg) == "Flux2KleinPipeline":
        return [f"data.resolution={side}: a FLUX.2 [klein] base needs at least {KLEIN_MIN_SIDE} (its smallest reference image)"]
    return []


KLEIN_MIN_SIDE = 64  # Flux2ImageProcessor.check_image_input's min_side_length


def base_class(cfg: RelationConfig) -> str | None:
    """``_class_name`` of a local base folder's model_index.json (``None`` when unreadable, or a hub id)."""
    base = DEMO_DIR / "base" if cfg.model.base == DEMO else Path(cfg.model.base).expanduser()
    try:
        return json.loads((base / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def vae_scale_factor(cfg: RelationConfig) -> int:
    """The VAE's downsampling factor, read from a local ``vae/config.json`` (8 for FLUX when unknown)."""
    base = DEMO_DIR / "base" if cfg.model.base == DEMO else Path(cfg.model.base).expanduser()
    try:
        blocks = json.loads((base / "vae" / "config.json").read_text())["block_out_channels"]
    except (OSError, ValueError, KeyError, TypeError):
        return 8
    return 2 ** (len(blocks) - 1)


# ------------------------------------------------------------------------------------------ data and outputs


EMPTY_DATA = "train.data: an empty list; give at least one train.jsonl from relation prepare"


def missing_data(path: str | Path) -> str:
    """The one-line problem of a ``train.data`` entry that is not a file: a folder, a comma list, or absent."""
    path = Path(path)
    if path.is_dir():
        return f"train.data '{path}': is a folder; give the train.jsonl that relation prepare wrote in it"
    hint = "; several files: --data repeated or train.data=[a.jsonl,b.jsonl]" if "," in str(path) else ""
    return f"train.data '{path}': not found (run relation prepare first{hint})"


def _data_problems(cfg: RelationConfig, command: str) -> list[str]:
    problems = []
    if command == "train":
        if not cfg.train.data_files:
            problems.append(EMPTY_DATA)
        problems += [missing_data(f) if not Path(f).is_file() else _rows_problem(f, need_target=True)
                     for f in dict.fromkeys(cfg.train.data_files)]  # a file listed again is checked once; fmt: skip
        held_out = cfg.train.validation_data
        if held_out and cfg.train.validation_samples and not Path(held_out).is_file():
            problems.append(f"train.validation_data '{held_out}': not found")
    if command == "eval":
        if not cfg.eval.inputs:
            problems.append("no input to evaluate: pass --input FILE (e.g. prepare's test_seen.jsonl) or set eval.inputs")
        problems += [f"eval input '{p}': not found" if not Path(p).is_file() else _rows_problem(p, need_target=True)
                     for p in cfg.eval.inputs]  # fmt: skip
        problems += _eval_source_problems(cfg)
    return [p for p in problems if p]


def _rows_problem(path: str | Path, need_target: bool = False) -> str | None:
    """What :func:`~relation_cli.rows.parse_rows` says of a rows file (not its images), or None."""
    from .rows import parse_rows

    try:
        parse_rows(path, need_target)
    except RelationError as e:
        return str(e)
    return None


def _eval_source_problems(cfg: RelationConfig) -> list[str]:
    e, problems = cfg.eval, []
    for field in ("clip_model", "dino_model"):
        name = getattr(e, field)
        if name and looks_local(name) and not (Path(name).expanduser() / "config.json").is_file():
            problems.append(f"eval.{field} '{name}': no such model folder (config.json missing)")
    if e.fid and e.fid_weights and not Path(e.fid_weights).expanduser().is_file():
        problems.append(f"eval.fid_weights '{e.fid_weights}': file not found")
    if e.judge_model and not os.environ.get(e.judge_api_key_env):
        problems.append(f"eval.judge_model is set but ${e.judge_api_key_env} is empty: export the judge's API key "
                        "(or name another variable with eval.judge_api_key_env)")  # fmt: skip
    return problems


def _output_problems(cfg: RelationConfig, command: str) -> list[str]:
    folder = {"train": ("train.output_dir", cfg.train.output_dir), "eval": ("eval.output_dir", cfg.eval.output_dir)}
    if command not in folder:
        return []
    key, path = folder[command]
    if Path(path).exists() and not Path(path).is_dir():
        return [f"{key} '{path}': exists and is not a folder"]
    try:
        check_writable(path, key)
    except RelationError as e:
        return [str(e)]
    return []


PROBLEM_FINDERS: list[Callable[[RelationConfig, str], list[str]]] = [
    _source_problems, _device_problems, _memory_problems, _train_lora_problems, _package_problems, _size_problems, _data_problems,
    _output_problems,
]  # fmt: skip
"""Every finder ``check_config`` asks, in the order their problems are listed. Other checks go here."""
