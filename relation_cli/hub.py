"""The model hub, asked once and briefly: a machine without network is noticed in seconds.

huggingface_hub retries a request that cannot connect five times with back-off, and waits up to
``HF_HUB_ETAG_TIMEOUT`` (10 s) for each file's metadata; a FLUX pipeline has dozens of files, so an
offline load used to spend minutes before failing. Before anything loads, :func:`settle_hub` sends
one request with a short timeout for a hub id the configuration names. If the hub does not answer
(or ``model.local_files_only`` / ``HF_HUB_OFFLINE`` is on), the run sets ``model.local_files_only``
(the saved config says so), which every ``from_pretrained`` of relation passes on: cached models load
at once, and a model missing from the cache is refused here, in one line that says how to point at a
local folder. Eval's optional encoders are not refused: they fail at once and their metric is
skipped with a note. No process-wide state is changed.
"""

from __future__ import annotations

from .checks import LOADS_A_MODEL, SIGLIP_DEFAULT, looks_local
from .config import DEMO, RelationConfig
from .errors import RelationError, first_line

PROBE_TIMEOUT = 2.0
"""Seconds the one reachability request may take (huggingface_hub's own timeouts are 10 s per file)."""
REQUIRED = {"model.base": "model_index.json", "model.image_encoder": "config.json"}
"""Models a command cannot run without, and the file that shows one is in the cache."""
LOCAL_FLAGS = {
    "model.base": "--model /path/to/FLUX.1-dev (diffusers layout)",
    "model.image_encoder": "--image-encoder /path/to/siglip-so400m-patch14-384",
}


def hub_ids(cfg: RelationConfig, command: str) -> dict[str, str]:
    """``{setting: hub id}`` for every model ``command`` would fetch from the hub (folders are not listed)."""
    m, ids = cfg.model, {}
    if command not in LOADS_A_MODEL:
        return ids
    if m.base != DEMO and not looks_local(m.base):
        ids["model.base"] = m.base
    encoder = m.image_encoder or (SIGLIP_DEFAULT if m.base != DEMO else None)
    if encoder and not looks_local(encoder):
        ids["model.image_encoder"] = encoder
    if command == "eval":
        for field in ("clip_model", "dino_model"):
            name = getattr(cfg.eval, field)
            if name and not looks_local(name):
                ids[f"eval.{field}"] = name
    return ids


def unreachable(repo_id: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the hub cannot be asked about ``repo_id`` (one request, no retry), or None when it answers.

    Any HTTP answer counts as reachable (a 401 of a gated model, a 404): from_pretrained then reports it.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=timeout)
    except Exception as e:  # httpx2's connect/read timeouts and network errors; any failure means "not usable"
        return f"the model hub ({constants.ENDPOINT}) cannot be reached ({type(e).__name__}: {first_line(e, 80)})"
    return None


def cached(repo_id: str, marker: str) -> bool:
    """``repo_id`` is in the local hub cache (its ``marker`` file at least)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, marker), str)


def settle_hub(cfg: RelationConfig, command: str) -> None:
    """Decide online or offline before anything loads (sets ``cfg.model.local_files_only`` when offline);
    refuse required models the cache lacks.

    Raises :class:`RelationError` naming every required model that is neither reachable nor cached,
    and how to give a local folder instead. Optional ones (eval's encoders) are left to fail at once.
    """
    ids = hub_ids(cfg, command)
    if not ids:
        return
    reason = _offline_reason(cfg, next(iter(ids.values())))
    if reason is None:
        return
    cfg.model.local_files_only = True  # every from_pretrained of this run: cache only, no request, no retry
    missing = {key: name for key, name in ids.items() if key in REQUIRED and not cached(name, REQUIRED[key])}
    if missing:
        named = " and ".join(f"{key} '{name}'" for key, name in missing.items())
        flags = " ".join(LOCAL_FLAGS[key] for key in missing)
        raise RelationError(f"{reason}, and the local cache lacks {named}: point at local folders instead: {flags}")


def _offline_reason(cfg: RelationConfig, repo_id: str) -> str | None:
    from huggingface_hub import constants

    if cfg.model.local_files_only:
        return "model.local_files_only is on (--offline): the model hub is not asked"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set: the model hub is not asked"
    return unreachable(repo_id)
