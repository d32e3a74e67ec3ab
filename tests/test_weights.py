"""Released and own weight formats: safe loading, prefixes, conversion."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from relation_cli.errors import RelationError
from relation_cli.weights import convert_released, load_adapter, read_lora


def _released_state(reference):
    return torch.load(reference / "ip_adapter.bin", map_location="cpu", weights_only=True)


def test_module_prefix_is_stripped(reference, tmp_path):
    state = _released_state(reference)
    prefixed = {part: {f"module.{k}": v for k, v in sub.items()} for part, sub in state.items()}
    torch.save(prefixed, tmp_path / "prefixed.bin")
    plain = load_adapter(reference / "ip_adapter.bin", attention_head_dim=16)
    other = load_adapter(tmp_path / "prefixed.bin", attention_head_dim=16)
    for (k, a), (_, b) in zip(plain.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    assert plain.config.num_layers == 6 and plain.config.num_tokens == 128


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_with_code_is_refused(tmp_path, protocol):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": Payload(), "ip_adapter": {}}, f, protocol=protocol)
    with pytest.raises(RelationError, match="refused, (holds code|not a plain tensor)"):
        load_adapter(path, attention_head_dim=16)


def test_object_in_torch_save_is_refused(tmp_path):
    torch.save({"image_proj": Payload(), "ip_adapter": {}}, tmp_path / "evil.pt")
    with pytest.raises(RelationError, match="refused, holds code or objects other than tensors"):
        load_adapter(tmp_path / "evil.pt", attention_head_dim=16)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file \\(0 bytes\\)"), (b"garbage" * 10, "not a torch checkpoint \\(neither torch.s zip format nor a pickle\\)"), (None, "missing image_proj")],
)
def test_bad_adapter_files(tmp_path, content, message):
    path = tmp_path / "a.bin"
    if content is None:
        torch.save({"something": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(RelationError, match=message):
        load_adapter(path, attention_head_dim=16)


def test_convert_round_trip(reference, tmp_path):
    out = convert_released(reference / "ip_adapter.bin", tmp_path / "adapter", attention_head_dim=16)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    a = load_adapter(reference / "ip_adapter.bin", attention_head_dim=16)
    b = load_adapter(out, attention_head_dim=16)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    with pytest.raises(RelationError, match="already exists and is not an empty folder"):
        convert_released(reference / "ip_adapter.bin", out)  # said before the pickle is read (any head_dim)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(RelationError, match="'.*file': exists and is not a folder"):
        convert_released(reference / "ip_adapter.bin", tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("head_dim", [0, 7])
def test_a_head_dim_that_does_not_divide_the_adapter_is_refused(reference, tmp_path, head_dim):
    """``relation convert --head-dim`` must split the processors' width into heads (the reference's is 32)."""
    with pytest.raises(RelationError, match=f"attention_head_dim {head_dim} \\(--head-dim\\) does not divide the adapter's attention width 32"):
        convert_released(reference / "ip_adapter.bin", tmp_path / "adapter", attention_head_dim=head_dim)
    assert not (tmp_path / "adapter").exists()


def test_lora_reading(reference, tmp_path):
    lora = read_lora(reference / "lora")
    assert lora.layout == "diffusers" and len([k for k in lora.state if ".lora_A." in k]) == 36
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RelationError, match="not a readable safetensors"):
        read_lora(tmp_path / "x.safetensors")
    with pytest.raises(RelationError, match="not found"):
        read_lora(tmp_path / "nothing.safetensors")
