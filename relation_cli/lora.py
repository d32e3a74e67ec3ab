"""LoRAs into the pipeline: every common FLUX layout is loaded whole, at its own alpha/rank, or refused.

diffusers does the reading: ``FluxLoraLoaderMixin.lora_state_dict`` converts the kohya, BFL and xlabs
layouts, ``load_lora_into_transformer`` builds the peft layers from the file's metadata (alpha and
rank) or its ``.alpha`` keys, ``set_adapters`` gives each LoRA its weight and ``fuse_lora`` merges them.
What relation adds: peft keys without diffusers' ``transformer.`` prefix get it, and every module a
file names is checked against the transformer first, so a LoRA is never half-applied in silence.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .config import LoraFile
from .errors import RelationError, counted, first_line
from .weights import LAYOUT_HELP, LoraWeights, read_lora

log = logging.getLogger(__name__)
CONVERT_HINT = (
    "save it in diffusers format (FluxPipeline.save_lora_weights, keys transformer.<module>.lora_A.weight) "
    "for the transformer of model.base"
)


TEXT_ENCODER_HINT = (
    "save it in diffusers format (FluxPipeline.save_lora_weights, keys text_encoder.<module>.lora_A.weight) for "
    "the CLIP text encoder of model.base"
)


def converted(lora: LoraWeights, pipe=None) -> tuple[dict[str, torch.Tensor], dict | None, list[str]]:
    """``lora.state`` in diffusers' layout, by diffusers' own converters (``Flux2LoraLoaderMixin``'s for a
    FLUX.2 ``pipe``, which bake alphas in; FLUX.1's otherwise); returns ``(state, network_alphas, unread)``:
    ``unread`` the keys FLUX.2's kohya converter names in its "Unsupported keys" warning and leaves out (FLUX.1's
    drops are found from the keys, :func:`_left_out_by_converter`)."""
    from diffusers import FluxPipeline

    _check_flux_kohya(lora)
    try:
        if _flux2(pipe):
            state, unread = _flux2_converted(lora, type(pipe))
            return state, None, unread
        state, alphas = FluxPipeline.lora_state_dict(dict(lora.state), return_alphas=True)
    except (KeyError, ValueError, AssertionError, IndexError, RuntimeError) as e:
        raise RelationError(
            f"lora '{lora.path}': {LAYOUT_HELP[lora.layout]} that diffusers' converter cannot read "
            f"({_converter_error(e)}; it expects FLUX.1's 19 double and 38 single blocks); {CONVERT_HINT}"
        ) from None
    return state, alphas or None, []


def _flux2_converted(lora: LoraWeights, pipeline_class) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``lora.state`` through a FLUX.2 pipeline class's ``lora_state_dict`` (``Flux2LoraLoaderMixin``), and the
    keys its kohya converter names in its "Unsupported keys" warning and leaves out."""
    with _diffusers_warnings() as said:
        state = pipeline_class.lora_state_dict(dict(lora.state))
    return state, [k for line in said for k in _unsupported_keys(line)]


def _check_flux_kohya(lora: LoraWeights) -> None:
    """Refuse a kohya file whose transformer keys name no FLUX block (an SDXL or SD1.5 LoRA: its ``lora_te2_`` is
    CLIP-G, not FLUX's T5), before anything is judged by FLUX's converter.

    Raises:
        RelationError: naming the first such key and FLUX's block names.
    """
    unet = sorted(k for k in lora.state if k.startswith("lora_unet_"))
    if lora.layout == "kohya" and unet and not any(k.startswith(_KOHYA_FLUX) for k in unet):
        raise RelationError(f"lora '{lora.path}': kohya keys of no FLUX transformer block (e.g. {unet[0]}; FLUX's are "
                            "lora_unet_double_blocks_N_... and lora_unet_single_blocks_N_...): a LoRA for another "
                            f"model; {CONVERT_HINT}")  # fmt: skip


@contextmanager
def _diffusers_warnings():
    """The messages of diffusers' warnings in the block, as a list, instead of printed (whatever its verbosity, its
    converters' logger's level, or a ``logging.disable`` of the program's)."""
    logger, said = logging.getLogger("diffusers"), []
    converters = logging.getLogger("diffusers.loaders.lora_conversion_utils")

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handlers, level, converters_level = logger.handlers[:], logger.level, converters.level
    disabled = logging.root.manager.disable  # a program's logging.disable(WARNING) would hide them too
    logger.handlers = [Keep(logging.WARNING)]
    logger.setLevel(logging.WARNING)  # (setLevel, not .level: it clears the children's cached levels)
    converters.setLevel(logging.NOTSET)
    logging.disable(logging.NOTSET)
    try:
        yield said
    finally:
        logging.disable(disabled)
        logger.handlers = handlers
        logger.setLevel(level)
        converters.setLevel(converters_level)


def _unsupported_keys(line: str) -> list[str]:
    """The keys of diffusers' ``Unsupported keys for Kohya Flux2 LoRA conversion: [...]`` warning, else ``[]``."""
    import ast

    head, _, listed = line.partition(": ")
    if not head.startswith("Unsupported keys for Kohya"):
        return []
    try:
        keys = ast.literal_eval(listed)
    except (ValueError, SyntaxError):
        return []
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


_KOHYA_FLUX = tuple(f"lora_unet_{name}" for name in ("double_blocks_", "single_blocks_", "img_in", "txt_in", "time_in_",
                                                      "vector_in_", "guidance_in_", "final_layer_"))  # diffusers' converter's


def _left_out_by_converter(lora: LoraWeights, unread: list[str] = ()) -> dict[str, list[str]]:
    """The parts of a kohya file that change the model and that diffusers drops with a log line only, by kind, each
    as its first key: DoRA scales (``.dora_scale``, which its FLUX loader filters out), and what its FLUX converter
    (``_convert_kohya_flux_lora_to_diffusers``) leaves out: T5 (``lora_te2_*``, ComfyUI's ``text_encoders.t5xxl.``),
    bias and norm differences (``.diff_b``, ``.norm...diff``), position embeddings, the text projection, and keys
    of no part it reads (``lora_unet_``, ``lora_te_``, ``lora_te1_`` once ComfyUI's prefixes are renamed; a file
    with ``transformer.`` keys keeps those alone). A part is a module (its ``lora_down``, ``lora_up``, ``.alpha``)
    or a lone tensor; one with an all-zero half, or all zero, changes nothing and is not counted. ``{}`` for other
    layouts and for kohya's mixture form. ``unread``: the keys FLUX.2's converter said it left out (for a FLUX.2
    base, whose converter differs); they are judged the same way."""
    keys = list(lora.state)
    scales = [k for k in keys if k.endswith(".dora_scale")]
    dora = {"DoRA scales (.dora_scale)": scales} if scales else {}
    if unread:
        unread_parts = {_KOHYA_HALF.sub("", k) for k in unread}
        return dora | _changing({name: [k for k in keys if _KOHYA_HALF.sub("", k) == name] for name in sorted(unread_parts)},
                                lora, lambda name: "keys its FLUX.2 converter does not read")  # fmt: skip
    if lora.layout != "kohya" or any(k.startswith("lora_transformer_") for k in keys):
        return {}
    peft_kept = any(k.startswith("transformer.") for k in keys)  # diffusers' branch for files with both forms
    norm_diff = any(".norm" in k and ".diff" in k for k in keys)
    parts: dict[str, list[str]] = {}
    for key in keys:
        parts.setdefault(_KOHYA_HALF.sub("", key), []).append(key)

    def kind(name: str) -> str | None:
        renamed = name.replace("diffusion_model.", "lora_unet_").replace("text_encoders.clip_l.transformer.", "lora_te_")
        return (("keys other than its transformer. ones" if not name.startswith("transformer.") else None) if peft_kept else
                "the T5 text encoder" if renamed.startswith(("lora_te2_", "text_encoders.t5xxl.")) else
                "bias differences (.diff_b)" if ".diff_b" in renamed else
                "norm differences (.diff)" if norm_diff and (".norm" in renamed or ".diff" in renamed) else
                "position embeddings" if "position_embedding" in renamed else
                "the text projection" if "text_projection" in renamed else
                "keys of no part it reads" if not renamed.startswith(("lora_unet_", "lora_te_", "lora_te1_")) else None)  # fmt: skip

    return dora | _changing(parts, lora, kind)


def _changing(parts: dict[str, list[str]], lora: LoraWeights, kind) -> dict[str, list[str]]:
    """``{kind: [first key of each part]}`` of the ``parts`` (name -> keys) that ``kind(name)`` names and that change
    the model: every weight of it (``.alpha`` and ``.dora_scale`` aside) has a non-zero value."""
    left: dict[str, list[str]] = {}
    for name, part_keys in parts.items():
        what = kind(name)
        weights = [k for k in part_keys if not k.endswith((".alpha", ".dora_scale"))]
        if what and weights and all(lora.state[k].count_nonzero() for k in weights):
            left.setdefault(what, []).append(weights[0])
    return left


_KOHYA_HALF = re.compile(r"\.(lora_down\.weight|lora_up\.weight|alpha|dora_scale)$")


def _check_converter_keeps(lora: LoraWeights, allow_partial: bool, unread: list[str] = ()) -> None:
    """Refuse a kohya file with parts diffusers would leave out (:func:`_left_out_by_converter`), or, with
    ``allow_partial``, warn and go on without them."""
    what = _left_out_message(lora, unread)
    if what is None:
        return
    if not allow_partial:
        raise RelationError(f"{what}; {NOT_APPLIED}")
    log.warning("warning: %s; loading the rest (lora.allow_partial)", what)


NOT_APPLIED = "they would not be applied: load the rest with --set lora.allow_partial=true"


def _left_out_message(lora: LoraWeights, unread: list[str] = ()) -> str | None:
    """The parts of ``lora`` diffusers would leave out, in one line (:func:`_left_out_by_converter`), or None."""
    left = _left_out_by_converter(lora, unread)
    if not left:
        return None
    count = sum(map(len, left.values()))
    kinds = "; ".join(f"{what}: {len(ks)}, e.g. {ks[0]}" for what, ks in left.items())
    change = "changes" if count == 1 else "change"
    return (f"lora '{lora.path}' ({LAYOUT_HELP[lora.layout]}): diffusers leaves out {counted(count, 'part')} of it "
            f"that {change} the model ({kinds})")  # fmt: skip


def left_out_problem(path: str, pipeline_class_name: str | None) -> str | None:
    """``--dry-run``'s form of the check :func:`load_lora` makes first: the parts of the LoRA file at ``path`` that
    diffusers would leave out on a base of ``pipeline_class_name`` (its model_index.json's ``_class_name``; FLUX.2
    [klein]'s converter is run to hear what it leaves out, FLUX.1's drops are read from the keys), as the
    refusal's one line, or None. Reads the file's weights (the check counts only parts that are not all zero)."""
    lora = read_lora(path)
    _check_flux_kohya(lora)  # first, as loading does: an SDXL file's lora_te2_ is not T5
    unread: list[str] = []
    if pipeline_class_name in _FLUX2_PIPELINES and lora.layout == "kohya":
        import diffusers

        try:
            unread = _flux2_converted(lora, getattr(diffusers, pipeline_class_name))[1]
        except (KeyError, ValueError, AssertionError, IndexError, RuntimeError):
            return None  # loading says what its converter cannot read
    what = _left_out_message(lora, unread)
    return what and f"{what}; {NOT_APPLIED}"


_FLUX2_PIPELINES = ("Flux2KleinPipeline", "Flux2Pipeline")


def _converter_error(e: BaseException) -> str:
    """What diffusers' converter said, in one line: a key it looked for and the file lacks, or the first keys it
    could not place (its message lists them after an empty line)."""
    if isinstance(e, KeyError):
        return f"it looked for {e}, which the file does not have"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        keys = lines[1].split(", ")
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return f"{lines[0]} {', '.join(keys[:3])}{more}"
    return first_line(e)


def _flux2(pipe) -> bool:
    from diffusers.loaders import Flux2LoraLoaderMixin

    return isinstance(pipe, Flux2LoraLoaderMixin)


def _misfit(module: torch.nn.Module | None, part: str, value: torch.Tensor) -> str | None:
    """Why a ``lora_A``/``lora_B`` tensor does not fit a layer, or None when it does: A is ``(r, in_features)``,
    B ``(out_features, r)``. ``"missing"``: no such linear layer; else the sizes, e.g. ``in_features 64 (the
    model's 128)``."""
    module = getattr(module, "base_layer", module)  # a layer that already holds another LoRA
    if not isinstance(module, torch.nn.Linear):
        return "missing"
    dims = 1 if part in ("B.bias", "magnitude_vector") else 2  # peft's lora_bias, DoRA's magnitude vector
    if value.ndim != dims:
        return f"lora_{part} of shape {tuple(value.shape)} (a linear layer's is {dims}-D)"
    if part == "A.weight" and value.shape[1] != module.in_features:
        return f"in_features {value.shape[1]} (the model's {module.in_features})"
    if (part.startswith("B.") or part == "magnitude_vector") and value.shape[0] != module.out_features:
        return f"out_features {value.shape[0]} (the model's {module.out_features})"
    return None


def split_by_fit(state: dict[str, torch.Tensor], pipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The keys of the modules that exist in the pipeline with matching sizes, and the modules that do not
    (sorted by name), each with why (:func:`_misfit`, its first tensor's). A module fits only whole: one
    whose ``lora_A`` fits and ``lora_B`` does not is a misfit, and neither half is loaded."""
    components = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}
    modules = {name: dict(c.named_modules()) for name, c in components.items() if c is not None}
    keys: dict[str, list[str]] = {}
    misfits: dict[str, str] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        name, part = _module_and_part(rest)
        module = f"{component}.{name}"
        keys.setdefault(module, []).append(key)
        why = _misfit(modules.get(component, {}).get(name), part, value)
        if why is not None:
            misfits.setdefault(module, why)
    fitting = {k: state[k] for module, ks in keys.items() if module not in misfits for k in ks}
    return fitting, dict(sorted(misfits.items()))


_PART = re.compile(r"\.lora_(?=[AB]\.|magnitude_vector$)|\.lora_linear_layer\.|_lora\.|\.lora\.")


def _module_and_part(key: str) -> tuple[str, str]:
    """``attn.to_q.lora_A.weight`` -> ``("attn.to_q", "A.weight")``, ``...lora_B.bias`` -> ``B.bias``, DoRA's
    ``...lora_magnitude_vector`` -> ``magnitude_vector``; also the older forms diffusers' converters leave for
    text encoders (``q_proj.lora_linear_layer.down.weight``, ``to_q_lora.down.weight``)."""
    found = _PART.search(key)
    return (key[: found.start()], key[found.end() :]) if found else (key, "")


def _examples(misfits: dict[str, str]) -> str:
    """Up to 3 misfits as ``e.g. a, b, c``: the name of a missing module, with the widths for one of other sizes."""
    shown = [name if why == "missing" else f"{name} {why}" for name, why in list(misfits.items())[:3]]
    return "e.g. " + ", ".join(shown)


def fitting_state(lora: LoraWeights, state: dict, pipe, allow_partial: bool) -> dict[str, torch.Tensor]:
    """The keys to load; refuses a LoRA that fits nothing, or only part of the model unless ``allow_partial``.
    A LoRA whose modules are all there but of other widths is said to be made for another model of the same
    layout (the format is right; converting it would not help)."""
    fitting, misfits = split_by_fit(state, pipe)
    modules = {_module_and_part(k)[0] for k in fitting}
    where = f"lora '{lora.path}' ({LAYOUT_HELP[lora.layout]})"
    sized = {name: why for name, why in misfits.items() if why != "missing"}
    if not fitting and sized and len(sized) == len(misfits):
        raise RelationError(f"{where}: its {len(misfits)} modules are in this model but of other widths "
                            f"({_examples(misfits)}): it was trained for another model of the same layout; "
                            "use it with that model.base")  # fmt: skip
    if not fitting:
        raise RelationError(f"{where}: none of its {len(misfits)} modules is in this model ({_examples(misfits)}); "
                            f"{CONVERT_HINT}")  # fmt: skip
    if misfits:
        are = "is" if len(misfits) == 1 else "are"
        what = f"{len(misfits)} of its {len(misfits) + len(modules)} modules {are} not in this model ({_examples(misfits)})"
        if not allow_partial:
            raise RelationError(f"{where}: {what}; it was made for another model or layout: {CONVERT_HINT}, "
                                "or load the rest with --set lora.allow_partial=true")  # fmt: skip
        log.warning("warning: %s: %s; loading the other %d (lora.allow_partial)", where, what, len(modules))
    return fitting


def module_ranks(state: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """``{module: {"A": r, "B": r}}`` of a diffusers-layout LoRA: the rank each half has (``lora_A`` is
    ``(r, in)``, ``lora_B`` ``(out, r)``); a module missing a half has one entry."""
    ranks: dict[str, dict[str, int]] = {}
    for key, value in state.items():
        module, part = _module_and_part(key)
        if part in ("A.weight", "B.weight") and value.ndim == 2:
            ranks.setdefault(module, {})[part[0]] = value.shape[0 if part[0] == "A" else 1]
    return ranks


def check_whole(lora: LoraWeights, state: dict[str, torch.Tensor]) -> None:
    """Refuse a LoRA whose weights or metadata peft could not build layers from (each said in one line):
    weights that are not floating point (integers would be cast in silence), a module with one half only,
    halves of different ranks, and diffusers metadata (peft's ``LoraConfig`` fields per component,
    ``transformer.r`` ...) that is missing ``r`` or ``target_modules``, has a rank the weights do not, or an
    alpha that is not a finite number. An alpha of 0 (a LoRA that changes nothing) is warned about.

    Raises:
        RelationError: naming the file and the first problem.
    """
    where = f"lora '{lora.path}'"
    if odd := next((k for k, v in state.items() if not v.is_floating_point()), None):
        raise RelationError(f"{where}: {odd} holds {str(state[odd].dtype).removeprefix('torch.')} values; LoRA weights "
                            "are floating point")  # fmt: skip
    ranks = module_ranks(state)
    half = [(m, next(iter(r))) for m, r in ranks.items() if len(r) == 1]
    if half:
        module, has = half[0]
        raise RelationError(f"{where}: {counted(len(half), 'module')} of its {len(ranks)} have lora_{has} and no "
                            f"lora_{'B' if has == 'A' else 'A'} (e.g. {module}): the file is incomplete")  # fmt: skip
    for module, r in ranks.items():
        if r["A"] != r["B"]:
            raise RelationError(f"{where}: {module}'s lora_A has rank {r['A']} and its lora_B rank {r['B']}: the halves "
                                "of a module must have one rank")  # fmt: skip
    if lora.metadata is None:
        return
    for part in sorted({m.split(".", 1)[0] for m in ranks}):
        _check_metadata(where, part, lora.metadata, {m: r["A"] for m, r in ranks.items() if m.startswith(part + ".")})


def _check_metadata(where: str, part: str, metadata: dict, ranks: dict[str, int]) -> None:
    """One component's metadata (``part.*`` keys, as diffusers' ``load_lora_adapter`` reads them) against its
    modules' ranks."""
    meta = {k.removeprefix(part + "."): v for k, v in metadata.items() if k.startswith(part + ".")}
    head = f"{where}: its lora_adapter_metadata"
    r, alpha, targets = meta.get("r"), meta.get("lora_alpha"), meta.get("target_modules")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise RelationError(f"{head} gives no positive integer {part}.r (got {r!r}); save the LoRA with diffusers' "
                            "save_lora_weights, or without metadata")  # fmt: skip
    if alpha is not None and (not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha)):
        raise RelationError(f"{head}: {part}.lora_alpha must be a finite number (got {alpha!r})")
    if not targets:
        raise RelationError(f"{head} has no {part}.target_modules (peft's LoraConfig needs them); save the LoRA with "
                            "diffusers' save_lora_weights, or without metadata")  # fmt: skip
    if not meta.get("rank_pattern"):
        other = {m: rank for m, rank in ranks.items() if rank != r}
        if other:
            module, rank = next(iter(other.items()))
            raise RelationError(f"{head} says rank {r} ({part}.r), its weights have rank {rank} (e.g. {module})")
    if alpha == 0:
        log.warning("warning: %s: its lora_adapter_metadata gives %s.lora_alpha 0: the LoRA changes nothing", where, part)


def _load_error(e: BaseException) -> str:
    """The telling line of a peft/diffusers loading error: the first ``size mismatch`` of a state-dict error."""
    lines = [line.strip() for line in str(e).splitlines()]
    return next((line for line in lines if line.startswith("size mismatch")), None) or first_line(e)


def load_lora(pipe, lora: LoraWeights, adapter_name: str, allow_partial: bool = False) -> set[str]:
    """Install ``lora`` as peft layers named ``adapter_name`` (unfused), at scale alpha/rank; returns the
    components it went into (``transformer``, ``text_encoder``).

    The alpha comes from the file's diffusers metadata, else from its ``.alpha`` keys (kohya files
    have it baked into the weights by diffusers' converter), else alpha = rank (scale 1). diffusers'
    and peft's own log lines and warnings while loading are held back: a LoRA that does not load is
    one RelationError line.
    """
    state, alphas, unread = converted(lora, pipe)  # first: a kohya LoRA of another model (SDXL's lora_te2_) says so
    _check_converter_keeps(lora, allow_partial, unread)
    state = _text_encoder_in_peft_form(state, pipe)
    _check_text_encoder_form(lora, state)
    state = fitting_state(lora, state, pipe, allow_partial)
    check_whole(lora, state)
    metadata = lora.metadata
    alphas = None if metadata is not None else alphas  # diffusers takes one or the other
    parts = {key.split(".", 1)[0] for key in state}
    with _held_back():
        _load_parts(pipe, lora, state, alphas, metadata, parts, adapter_name)
    _check_loaded(pipe, lora, state, adapter_name)
    return parts


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal element by element, NaN equal to NaN (a LoRA of NaN weights loads as given; running it says what it
    makes)."""
    return bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())


def _text_encoder_in_peft_form(state: dict[str, torch.Tensor], pipe) -> dict[str, torch.Tensor]:
    """``state`` with its ``text_encoder.`` keys in peft's form and named as the pipeline's CLIP names its modules,
    by diffusers' own conversions (``convert_state_dict_to_diffusers``, then ``convert_state_dict_to_peft``, as
    its ``_load_lora_into_text_encoder`` does; kohya's ``lora_te1_*`` keys come out of its FLUX converter in the
    older ``to_q_lora.down`` form, which that loader cannot infer alone), and transformers 4's ``text_model.``
    prefix dropped for transformers 5's flat CLIPTextModel. A form the conversions do not know is left as it is."""
    from diffusers.utils.state_dict_utils import StateDictType, convert_state_dict_to_diffusers, convert_state_dict_to_peft

    text = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    if not text:
        return state
    older = StateDictType.DIFFUSERS_OLD if any(_OLDER_TEXT.search(k) for k in text) else None
    try:
        text = convert_state_dict_to_peft(convert_state_dict_to_diffusers(text, original_type=older))
    except ValueError:
        pass
    if not hasattr(pipe.text_encoder, "text_model"):
        text = {k.removeprefix("text_model."): v for k, v in text.items()}
    return {k: v for k, v in state.items() if not k.startswith("text_encoder.")} | {f"text_encoder.{k}": v for k, v in text.items()}


_OLDER_TEXT = re.compile(r"_lora\.(down|up)\.")
_PEFT_TEXT = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)|\.alpha$")


def _check_text_encoder_form(lora: LoraWeights, state: dict[str, torch.Tensor]) -> None:
    """Refuse ``text_encoder.`` keys that diffusers' conversions left in a form peft does not read (e.g.
    ``q_proj.lora.down.weight``): diffusers' text-encoder loader then fails with "Could not automatically infer
    state dict type", which says neither which keys nor what to do.

    Raises:
        RelationError: naming the first such key and the form to save the LoRA in.
    """
    odd = sorted(k for k in state if k.startswith("text_encoder.") and not _PEFT_TEXT.search(k))
    given = sorted(k for k in lora.state if k.startswith("text_encoder.") and not _PEFT_TEXT.search(k))
    odd = given or odd  # named as the file names it where it can be (not as renamed for this CLIP)
    if odd:
        raise RelationError(f"lora '{lora.path}': {counted(len(odd), 'text-encoder key')} in a form diffusers does not "
                            f"read (e.g. {odd[0]}; peft's is <module>.lora_A.weight); {TEXT_ENCODER_HINT}")  # fmt: skip


def _check_loaded(pipe, lora: LoraWeights, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    """Every tensor of ``state`` is in the peft layer named ``adapter_name``, as given (cast to the layer's dtype).
    diffusers leaves keys of a form it does not know out with a log line only (``unexpected keys``), and so does
    transformers for the text encoder (a DoRA magnitude vector); the LoRA then changes less than it says, or
    nothing. Those log lines are held back, so this check says it instead.

    Raises:
        RelationError: naming the first tensor that is not in the model as the file gives it.
    """
    components = {"transformer": pipe.transformer, "text_encoder": getattr(pipe, "text_encoder", None)}
    modules = {name: dict(c.named_modules()) for name, c in components.items() if c is not None}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        name, part = _module_and_part(rest)
        half, _, leaf = part.partition(".")
        holder = getattr(modules.get(component, {}).get(name), f"lora_{half}", {})
        loaded = getattr(holder[adapter_name], leaf or "weight", None) if adapter_name in holder else None
        if loaded is None or loaded.shape != value.shape or not _same(loaded.detach(), value.to(loaded)):
            hint = CONVERT_HINT if component == "transformer" else TEXT_ENCODER_HINT
            raise RelationError(f"lora '{lora.path}': {key} did not load into the model (diffusers and transformers "
                                f"leave out keys of a form they do not read, with a log line only); {hint}")  # fmt: skip


@contextmanager
def _held_back():
    """diffusers' and peft's loggers at CRITICAL and their warnings ignored, for the block."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _load_parts(pipe, lora: LoraWeights, state: dict, alphas, metadata, parts: set[str], adapter_name: str) -> None:
    try:
        if "transformer" in parts:
            alpha_kw = {} if _flux2(pipe) else {"network_alphas": alphas}  # FLUX.2's loader takes metadata only
            pipe.load_lora_into_transformer(state, **alpha_kw, transformer=pipe.transformer,
                                            adapter_name=adapter_name, metadata=metadata, _pipeline=pipe)  # fmt: skip
        if "text_encoder" in parts:
            pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=pipe.text_encoder,
                                             prefix="text_encoder", adapter_name=adapter_name, metadata=metadata,
                                             _pipeline=pipe)  # fmt: skip
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise RelationError(f"lora '{lora.path}': does not fit this model ({_load_error(e)})") from None


def apply_loras(pipe, loras: Sequence[LoraFile], scale: float = 1.0, fuse: bool = True, allow_partial: bool = False) -> None:
    """Load every LoRA at ``weight x scale`` (x its alpha/rank); fuse them and drop the peft layers if ``fuse``.

    The weight is peft's adapter weight (``set_adapters``), so each LoRA's delta is
    ``weight * scale * (alpha / r) * B @ A`` (Hu et al., 2021, eq. 3 with peft's alpha/r scaling).
    """
    names = [f"lora{i}" for i in range(len(loras))]
    parts: set[str] = set()
    for name, lora in zip(names, loras):
        parts |= load_lora(pipe, read_lora(lora.path), name, allow_partial)
    if not names:
        return
    pipe.set_adapters(names, adapter_weights=[lora.weight * scale for lora in loras])
    if fuse:  # every part loaded: diffusers' FLUX fuse_lora fuses the transformer alone unless told
        pipe.fuse_lora(components=sorted(parts), adapter_names=names)
        pipe.unload_lora_weights()


def continue_lora(pipe, loras: Sequence[LoraFile], adapter_name: str, allow_partial: bool = False) -> None:
    """Training in lora mode: the one LoRA of ``lora.paths`` is trained further, at its own rank and alpha."""
    if len(loras) != 1:
        raise RelationError(f"train.mode=lora continues one LoRA; lora.paths has {len(loras)}")
    from dataclasses import replace

    from .checks import TEXT_ENCODER_KEYS, lora_mode_refusal

    lora = read_lora(loras[0].path)
    text = [k for k in lora.state if k.startswith(TEXT_ENCODER_KEYS)]
    if text and all(not lora.state[k].count_nonzero() for k in text if not k.endswith(".alpha")):
        lora = replace(lora, state={k: v for k, v in lora.state.items() if k not in text})  # changes nothing: left out
    parts = {key.split(".", 1)[0] for key in converted(lora, pipe)[0]}
    if parts != {"transformer"}:  # the configuration's check reads the keys; this, what diffusers makes of them
        raise RelationError(lora_mode_refusal(lora.path, "transformer" not in parts))
    load_lora(pipe, lora, adapter_name, allow_partial)
