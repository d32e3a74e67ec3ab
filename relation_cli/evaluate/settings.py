"""What a folder of generated outputs was made with: ``generation.json``, read and written without the ML
stack, so ``relation infer --input --dry-run`` can check a batch folder before anything loads."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from ..config import RelationConfig, absolute_flat_sources
from ..errors import RelationError
from ..fs import write_text_atomic

SETTINGS_FILE = "generation.json"
WEIGHTS = "model.weights"
"""The key of :func:`weights_fingerprint` in ``generation.json``."""
EVAL, BATCH = "relation eval", "relation infer --input"
"""The two commands that write ``generation.json`` (its ``made_by``), each in folders of its own."""
ROWS_JOURNAL = ".generation-rows.jsonl"
"""Batch infer's outputs recorded since ``generation.json`` was last written, one JSON line each
(:func:`record_row`): each output costs one short append instead of rewriting a record of every row."""


FINGERPRINTED = ("model.base", "model.image_encoder", "adapter.path")
"""Settings that name weights :func:`weights_fingerprint` resolves and compares by their files."""


def generation_settings(cfg: RelationConfig, eval_keys: bool = True) -> dict:
    """The config values that change a generated image: outputs made with others must not be reused.

    ``eval_keys=False`` leaves out the eval-only ones (batch ``relation infer``).
    """
    settings = {
        "model.base": cfg.model.base,
        "model.image_encoder": cfg.model.image_encoder,
        "model.dtype": cfg.model.dtype,
        "adapter.path": cfg.adapter.path,
        "adapter.scale": cfg.adapter.scale,
        "lora.paths": [f.model_dump() for f in cfg.lora.paths],
        "lora.scale": cfg.lora.scale,
        "lora.fuse": cfg.lora.fuse,
        "lora.allow_partial": cfg.lora.allow_partial,
        "infer.steps": cfg.infer.steps,
        "infer.guidance": cfg.infer.guidance,
        "infer.seed": cfg.infer.seed,
        "infer.max_sequence_length": cfg.infer.max_sequence_length,
        "infer.size": [cfg.infer.width, cfg.infer.height, cfg.infer.max_area, cfg.infer.output_size],
    }
    if eval_keys:
        settings.update({"eval.seed": cfg.eval.seed, "eval.use_text": cfg.eval.use_text})
    settings[WEIGHTS] = weights_fingerprint(cfg)
    return absolute_flat_sources(settings)  # `runs/a/adapter` and its absolute spelling are the same setting


def weights_fingerprint(cfg: RelationConfig) -> dict | None:
    """Which files the model parts come from, as they are now: the same config values name other weights when
    a run is retrained into the same folder or a relative path is read from another directory.

    Returns ``{"base", "image_encoder", "adapter", "loras"}`` after the demo defaults
    (:func:`relation_cli.checks.resolve_sources`): a local source is ``{"path": absolute path, "files": the
    first 16 hex digits of the sha256 of each file's relative name, size and modification time}`` (the check
    rsync and make use: cheap for a 24 GB base, and any rewrite of a file shows; hidden entries such as
    ``.git`` are left out), a hub id is kept as written, an absent part is None. None when the sources do not
    resolve (a missing folder, which loading reports).
    """
    from ..checks import resolve_sources

    try:
        sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora, require_adapter=False)
    except RelationError:
        return None

    def one(source: str | None) -> dict | str | None:
        path = Path(source).expanduser() if source else None
        if path is None or not path.exists():
            return source
        path = path.resolve()
        files = [path] if path.is_file() else sorted(
            f for f in path.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
        )  # hidden entries (.git, .cache of huggingface_hub) change without the weights changing
        lines = []
        for f in files:
            stat = f.stat()
            lines.append(f"{f.relative_to(path).as_posix() if f != path else f.name} {stat.st_size} {stat.st_mtime_ns}\n")
        return {"path": str(path), "files": hashlib.sha256("".join(lines).encode()).hexdigest()[:16]}

    parts = {"base": sources.base, "image_encoder": sources.image_encoder, "adapter": sources.adapter}
    return {**{k: one(v) for k, v in parts.items()}, "loras": [one(f.path) for f in sources.loras]}


def weights_changes(before: dict | None, now: dict | None) -> list[str]:
    """The model parts whose weights differ in two :func:`weights_fingerprint` results, each in words; none
    when either is unknown (a record from before relation kept it, or sources that do not resolve now)."""
    if not isinstance(before, dict) or now is None:
        return []

    def where(part) -> str:
        return str(part.get("path")) if isinstance(part, dict) else str(part)

    changes = []
    for key in ("base", "image_encoder", "adapter", "loras"):
        old, new = before.get(key), now[key]
        if old == new:
            continue
        if key == "loras":
            olds, news = ([where(p) for p in v] if isinstance(v, list) else [str(v)] for v in (old, new))
            changes.append(f"loras {olds} -> {news}" if olds != news else f"loras {news}: their files changed")
        elif old is not None and new is not None and where(old) == where(new):
            changes.append(f"{key} '{where(new)}': its files changed")
        else:
            changes.append(f"{key} {where(old) if old else None!r} -> {where(new) if new else None!r}")
    return changes


EVAL_REMEDY = "use another --output-dir, or delete that folder to regenerate"


def read_settings(output_dir: Path, remedy: str | None = None) -> dict | None:
    """The ``generation.json`` of a folder of outputs; None if there is none.

    Raises:
        RelationError: not a JSON object; the message ends with ``remedy`` (by default: relation eval's,
            delete the record only if every output is current).
    """
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        return None
    remedy = remedy or f"delete it only if every output in '{output_dir}' is current"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RelationError(f"'{path}': not valid JSON: {remedy}") from None
    if not isinstance(recorded, dict):
        raise RelationError(f"'{path}': expected a JSON object: {remedy}")
    if isinstance(recorded.get("rows"), dict):
        _apply_journal(output_dir / ROWS_JOURNAL, recorded["rows"])
    return recorded


def eval_outputs(run: Path, split: str, rows: list) -> dict[int, Path]:
    """Row index -> its output made with its own exemplar pairs (method ``relation``), in the folder ``run``
    that ``relation eval`` wrote for the rows of ``test_<split>.jsonl`` (e.g. split "unseen"; ``rows`` as
    :func:`~relation_cli.rows.parse_rows` read that file).

    Each output's record in ``generation.json`` (:func:`read_settings`, an interrupted run's journal included)
    must be its row's as eval writes it (:func:`~relation_cli.infer.row_record` with the target). A run of
    ``relation eval --limit N`` has outputs for some rows only.

    Raises:
        RelationError: ``run`` is not such a folder; it records an output under a name eval does not write
            (``<split>/relation/<row:06d>.png``); an output was made from another row; or the images of its row
            changed since it was made (replaced under the same name, or removed).
    """
    from ..infer import row_record

    recorded = read_settings(run, remedy="give the output_dir of relation eval")
    if recorded is None:
        raise RelationError(f"'{run}': no {SETTINGS_FILE}; give the output_dir of relation eval")
    if not isinstance(recorded.get("rows"), dict):
        raise RelationError(f"'{run / SETTINGS_FILE}': no record of its outputs; give the output_dir of relation eval")
    found, digests = {}, {}
    named = re.compile(rf"{re.escape(split)}/relation/([0-9]{{6}})\.png", re.ASCII)
    for key, entry in recorded["rows"].items():
        if not key.startswith(f"{split}/relation/"):
            continue
        if (match := named.fullmatch(key)) is None:  # eval names its outputs <split>/<method>/<row:06d>.png
            raise RelationError(f"'{run / SETTINGS_FILE}' records an output '{key}' that relation eval does not write")
        stem, index = match.group(1), int(match.group(1))
        row = rows[index] if index < len(rows) else None
        if row is None or not isinstance(entry, dict) or entry.get("source") != str(row.source.resolve()):
            raise RelationError(f"'{run}': its {split} output {stem} was not made from the rows of the test_{split}.jsonl given")
        if entry != row_record(row, digests, with_target=True):
            raise RelationError(f"'{run}': the images of its {split} output {stem} changed or were removed since it "
                                f"was made; run relation eval again")  # fmt: skip
        found[index] = run / key
    return found


def _apply_journal(journal: Path, rows: dict) -> None:
    """Bring ``rows`` (``generation.json``'s) up to date with :data:`ROWS_JOURNAL`'s lines, in order: a record
    sets its output's entry, anything else (``null``) removes it. A line a kill cut short, or any line not of that form, is
    skipped (its output then has no record, and a rerun refuses to overwrite it unasked)."""
    try:
        lines = journal.read_bytes().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and "row" in entry):
            continue
        if isinstance(entry["row"], dict):
            rows[entry["name"]] = entry["row"]
        else:
            rows.pop(entry["name"], None)


def record_row(output_dir: Path, name: str, row: dict | None) -> None:
    """Record one output of batch infer as soon as it is written (``row``: what it was made from), or that it
    is gone (None): a line appended to :data:`ROWS_JOURNAL`, which :func:`read_settings` applies and
    :func:`record_settings` folds into ``generation.json``. A run killed at any point keeps the record of
    every output it finished."""
    with (output_dir / ROWS_JOURNAL).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"name": name, "row": row}) + "\n")


def check_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True, remedy: str | None = None,
                   has_outputs: Callable[[dict], bool] | None = None) -> dict | None:  # fmt: skip
    """Refuse to mix outputs of different settings in one folder (a reused output is trusted as is); returns
    the record read (None if there is none). ``has_outputs(record)``: whether any output the record vouches
    for exists; a record without one (a run that failed before its first output) refuses nothing.

    Raises:
        RelationError: ``generation.json`` records other settings (the message names each changed key and
            ends with ``remedy``, by default relation eval's), or is unreadable.
    """
    before = read_settings(output_dir, remedy)
    if before is None:
        return None
    if has_outputs is not None and not has_outputs(before):
        return before
    before = absolute_flat_sources(before)
    now = generation_settings(cfg, eval_keys)
    # With both fingerprints, the weights' own comparison says whether the base, encoder or adapter changed: the
    # same encoder named (a run's folder) or left to its default (None) is no change.
    compared = {WEIGHTS} | (set(FINGERPRINTED) if isinstance(before.get(WEIGHTS), dict) and now[WEIGHTS] else set())
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if k not in compared and before.get(k) != v]
    changed += weights_changes(before.get(WEIGHTS), now[WEIGHTS])
    if changed:
        raise RelationError(f"outputs in '{output_dir}' were generated with other settings ({'; '.join(changed)}): "
                            f"{remedy or EVAL_REMEDY}")  # fmt: skip
    return before


def made_by(record: dict) -> str | None:
    """Which command wrote a ``generation.json``: its ``made_by``, or for a record from before that key, batch
    infer when it has ``rows`` and eval when it has ``eval.seed``."""
    if isinstance(record.get("made_by"), str):
        return record["made_by"]
    return BATCH if "rows" in record else EVAL if "eval.seed" in record else None


def check_own_folder(output_dir: Path, command: str, ours: Callable[[str], bool], remedy: str) -> None:
    """Refuse a folder this command did not make, so that nothing of it, its ``config.yaml`` first, is
    overwritten: one whose ``generation.json`` another command wrote (batch infer and eval folders differ),
    or one without ``generation.json`` holding an entry ``ours(name)`` does not accept (a training run, a
    prepared dataset, a user's files). Hidden entries (``.DS_Store``, temporary files) do not count; an empty
    folder is fine.

    Raises:
        RelationError: naming the folder, ``command``, the other command or the first three foreign entries,
            and ``remedy``.
    """
    if not output_dir.is_dir():
        return
    if (output_dir / SETTINGS_FILE).exists():
        try:
            other = made_by(read_settings(output_dir) or {})
        except RelationError:  # unreadable: the settings check says so, with its remedy
            return
        if other is not None and other != command:
            raise RelationError(f"output dir '{output_dir}' holds the outputs of {other}, not {command}: {remedy}")
        return
    names = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("."))
    foreign = [n for n in names if not ours(n)]
    if names == ["config.yaml"]:  # relation writes it together with generation.json, never alone
        foreign = names
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise RelationError(f"output dir '{output_dir}' holds files that {command} did not write "
                            f"({', '.join(foreign[:3])}{more}) and no {SETTINGS_FILE}: {remedy}")  # fmt: skip


def record_settings(output_dir: Path, cfg: RelationConfig, eval_keys: bool = True, rows: dict | None = None,
                    settings: dict | None = None) -> None:  # fmt: skip
    """Write ``generation.json``: which command made the folder (eval, or batch infer without ``eval_keys``),
    the settings (``settings``: :func:`generation_settings` as taken before the model loaded, so that the
    record describes the weights that were loaded and the folders are not walked again for every output),
    and for batch infer what each output was made from (``rows``: every output's, which replaces
    :data:`ROWS_JOURNAL`)."""
    record = {"made_by": EVAL if eval_keys else BATCH, **(settings or generation_settings(cfg, eval_keys))}
    record |= {"rows": rows} if rows is not None else {}
    write_text_atomic(output_dir / SETTINGS_FILE, json.dumps(record, indent=2) + "\n")
    (output_dir / ROWS_JOURNAL).unlink(missing_ok=True)  # folded in: ``rows`` holds every output it listed
