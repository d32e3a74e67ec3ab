"""Shared fixtures: everything is built offline, on CPU, in seconds."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RELATION_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference-tiny"  # in the repository: parity runs in any clone
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "case.json").is_file():  # a failure, not a skip: parity is the proof the code is right
        pytest.fail(f"parity fixture not found at {REFERENCE} (it is part of the repository)")
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny model folder (base/, image_encoder/, adapter/) made by the offline builder."""
    from relation_cli.progress import quiet_libraries
    from relation_cli.tiny import init_model

    quiet_libraries()
    return init_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread: tiny models run faster so on a busy machine, and match a subprocess run with
    OMP_NUM_THREADS=1 bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def one_thread():
    with single_thread():
        yield


def tiny_overrides(model: Path) -> list[str]:
    return [
        f"model.base={model / 'base'}",
        f"model.image_encoder={model / 'image_encoder'}",
        f"adapter.path={model / 'adapter'}",
    ]


def reference_overrides(ref: Path) -> list[str]:
    return [
        f"model.base={ref / 'base'}",
        f"model.image_encoder={ref / 'image_encoder'}",
        f"adapter.path={ref / 'ip_adapter.bin'}",
        f"lora.paths=[{{path: {ref / 'lora' / 'pytorch_lora_weights.safetensors'}}}]",
    ]
