"""What an evaluation evaluated, exactly: the resolved model sources and the sha256 of their weights.

``model.base: demo`` and other defaults are resolved to the real folders (``resolve_sources``), and each
local source's weight files are hashed, so a report says which files made its numbers, not only which
config keys did. The files are hashed as found when the report is written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import RelationConfig
from ..errors import RelationError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
HASH_LIMIT = 8 * 2**30  # bytes of weights per source; a larger source (a whole FLUX.1-dev) is named, not hashed
PREFIX = 12  # hex digits of a sha256 shown and stored


def sha256_file(path: Path, chunk: int = 2**22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weight_files(path: Path) -> list[Path]:
    """The file itself, or every weight file (``WEIGHT_SUFFIXES``) under a folder, sorted."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def combined_sha256(hashes: dict[str, str]) -> str:
    """One file's sha256 as it is; for several (name -> sha256, sorted by name) the sha256 of their
    ``"name sha256\\n"`` lines."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256("".join(f"{n} {h}\n" for n, h in hashes.items()).encode()).hexdigest()


def describe_source(source: str | None) -> dict | None:
    """``{"path", "bytes", "files": {name: sha256 prefix}, "sha256"}`` of a local file or folder, where
    ``sha256`` is :func:`combined_sha256` of its weight files; ``{"path", "bytes", "not_hashed"}`` past
    ``HASH_LIMIT``; ``{"hub": id}`` for a hub id; ``None`` for no source."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return {"hub": source}
    path = path.resolve()
    files = weight_files(path)
    size = sum(f.stat().st_size for f in files)
    if size > HASH_LIMIT:
        return {"path": str(path), "bytes": size, "not_hashed": f"{size / 1e9:.1f} GB of weights"}
    names = {(f.name if f == path else f.relative_to(path).as_posix()): sha256_file(f) for f in files}
    short = {n: h[:PREFIX] for n, h in names.items()}
    return {"path": str(path), "bytes": size, "files": short, "sha256": combined_sha256(names)[:PREFIX]}


def describe_model(cfg: RelationConfig) -> dict:
    """Base, image encoder, adapter and LoRA as resolved from ``cfg`` (:func:`describe_source` each), with
    the adapter scale; if they no longer resolve (every output reused), the reason and the config's values."""
    from ..model import resolve_sources

    try:
        sources = resolve_sources(cfg.model, cfg.adapter, cfg.lora)
    except RelationError as e:
        configured = {"base": cfg.model.base, "image_encoder": cfg.model.image_encoder, "adapter": cfg.adapter.path}
        return {"unresolved": str(e), **{k: {"configured": v} if v else None for k, v in configured.items()},
                "loras": [{"configured": f.path, "weight": f.weight * cfg.lora.scale} for f in cfg.lora.paths]}
    parts = {"base": sources.base, "image_encoder": sources.image_encoder, "adapter": sources.adapter}
    loras = [{**describe_source(f.path), "weight": f.weight * cfg.lora.scale} for f in sources.loras]
    return {**{name: describe_source(value) for name, value in parts.items()}, "loras": loras,
            "adapter_scale": cfg.adapter.scale}


def source_line(part: str, entry: dict | None) -> str:
    """One line of a report: ``adapter: /path (sha256 1a2b3c4d5e6f)``."""
    if entry is None:
        return f"{part}: none"
    if "configured" in entry:
        return f"{part}: {entry['configured']} (as configured; not found now)"
    if "hub" in entry:
        return f"{part}: {entry['hub']} (hub id)"
    detail = f"sha256 {entry['sha256']}" if "sha256" in entry else f"not hashed: {entry['not_hashed']}"
    return f"{part}: {entry['path']} ({detail})"


def model_lines(model: dict) -> list[str]:
    """The evaluated model in lines a person reads (console and report.html)."""
    lines = [source_line(part, model.get(part)) for part in ("base", "image_encoder", "adapter")]
    if "adapter_scale" in model and model["adapter_scale"] != 1:
        lines[2] += f", scale {model['adapter_scale']:g}"
    loras = model.get("loras") or []
    lines += [source_line("lora", entry) + f", weight {entry['weight']:g}" for entry in loras] or ["lora: none"]
    if "unresolved" in model:
        lines.append(f"(the sources do not resolve now: {model['unresolved']})")
    return lines
