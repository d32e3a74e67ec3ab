"""Released and own weight formats: safe loading, prefixes, conversion."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

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


@pytest.mark.parametrize("kept", [0.01, 0.5], ids=["early", "half"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_file_cut_short_says_so(reference, tmp_path, legacy, kept):
    """A download that stopped early (torch's zip format, or the legacy pickle format): one line saying so, not the
    reader's cut-off sentence. A zip cut within its first entries fails in torch's reader with ``[Errno 22]``, later
    with "failed finding central directory"; both are the same fault."""
    state = _released_state(reference)
    torch.save(state, tmp_path / "whole.bin", _use_new_zipfile_serialization=not legacy)
    whole = (tmp_path / "whole.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(whole[: max(200, int(len(whole) * kept))])
    with pytest.raises(RelationError) as e:
        load_adapter(tmp_path / "cut.bin", attention_head_dim=16)
    assert str(e.value).startswith(f"adapter '{tmp_path / 'cut.bin'}': cut short or damaged ("), str(e.value)
    assert str(e.value).endswith("the released ip_adapter-100000.bin is 5.3 GB): download it again")


def test_a_file_that_cannot_be_opened_says_so(tmp_path, monkeypatch):
    """torch.load's OSError (here: no permission) is said as it is; the check for a zip cut short, which opens the
    file again, does not turn it into an internal error."""
    from relation_cli.weights import load_pickle_safely

    path = tmp_path / "a.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if self == path else real_open(self, *a, **k))  # fmt: skip
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(RelationError, match=r"not a readable torch file \(\[Errno 13\] Permission denied\)$"):
        load_pickle_safely(path)


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


def test_a_foreign_zip_and_a_lora_given_as_the_adapter_are_named(tmp_path):
    """A zip torch.save did not write gave torch's "[enforce fail at inline_container.cc:180] ..."; a LoRA .bin given
    as the adapter said only "missing image_proj, ip_adapter"."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.bin", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(RelationError, match=r"a zip archive, but not one torch\.save wrote$"):
        load_adapter(tmp_path / "z.bin", attention_head_dim=16)
    torch.save({"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 4)}, tmp_path / "lora.bin")
    with pytest.raises(RelationError, match=r"missing image_proj, ip_adapter \(not a RelationAdapter checkpoint\); it "
                                            r"holds LoRA weights \(transformer\.blocks\.0\.attn\.to_q\.lora_A\.weight\): "
                                            r"give a LoRA with --lora, as \.safetensors$"):  # fmt: skip
        load_adapter(tmp_path / "lora.bin", attention_head_dim=16)


def _break(state: dict, how: str) -> dict:
    """The reference's released dict, broken the way ``how`` names."""
    proj, procs = dict(state["image_proj"]), dict(state["ip_adapter"])
    if how == "no processors":
        procs = {}
    elif how == "a string for image_proj":
        return {"image_proj": "weights", "ip_adapter": procs}
    elif how == "a list value":
        procs["0.to_k_ip.weight"] = [1.0, 2.0]
    elif how == "1-D projection":
        proj["proj.0.weight"] = proj["proj.0.weight"].flatten()
    elif how == "widths that differ":
        procs["0.to_v_ip.weight"] = torch.zeros(procs["0.to_v_ip.weight"].shape[0] + 3, procs["0.to_v_ip.weight"].shape[1])
    elif how == "an int key":
        procs[0] = torch.zeros(2)
    elif how == "a sparse tensor":
        procs["0.to_v_ip.weight"] = procs["0.to_v_ip.weight"].to_sparse()
    elif how == "complex weights":
        procs["0.to_v_ip.weight"] = procs["0.to_v_ip.weight"].to(torch.complex64)
    elif how == "integer weights":
        proj["norm.bias"] = proj["norm.bias"].to(torch.int64)
    elif how in ("a NaN", "an infinity"):
        procs["1.to_k_ip.weight"] = procs["1.to_k_ip.weight"].clone()
        procs["1.to_k_ip.weight"][3, 4] = float("nan") if how == "a NaN" else float("-inf")
    elif how == "float8 weights":
        proj["proj.0.weight"] = proj["proj.0.weight"].to(torch.float8_e4m3fn)
    elif how == "an empty key projection":
        procs["0.to_k_ip.weight"] = torch.zeros(0, procs["0.to_k_ip.weight"].shape[1])
    elif how == "a norm of another width":
        proj["norm.weight"] = torch.ones(31)
    elif how == "a missing value projection":
        del procs["3.to_v_ip.weight"]
    elif how == "a top-level step":
        return {"image_proj": proj, "ip_adapter": procs, "step": torch.tensor(3)}
    return {"image_proj": proj, "ip_adapter": procs}


@pytest.mark.parametrize("how, message", [
    ("no processors", "ip_adapter has no 2-D '0.to_k_ip.weight' (the first processor's key projection; 0 keys)"),
    ("a string for image_proj", "image_proj is a str, not a dict of tensors"),
    ("a list value", "ip_adapter '0.to_k_ip.weight' is a list, not a tensor"),
    ("1-D projection", "image_proj 'proj.0.weight' has shape (512,), not 2-D"),
    ("widths that differ", "its weights do not fit together (size mismatch for processors.0.to_v_ip.weight: copying a "
                           "param with shape torch.Size([35, 32]) from checkpoint, the shape in current model is "
                           "torch.Size([32, 32]))"),
    ("an int key", "ip_adapter key 0 (int) is not a name"),
    ("a sparse tensor", "ip_adapter '0.to_v_ip.weight' is a sparse tensor (torch.sparse_coo), not a dense one"),
    ("complex weights", "ip_adapter '0.to_v_ip.weight' holds complex64 values, not floating-point weights"),
    ("integer weights", "image_proj 'norm.bias' holds int64 values, not floating-point weights"),
    ("a NaN", "ip_adapter '1.to_k_ip.weight' holds NaN or infinite weights (a damaged file?)"),
    ("an infinity", "ip_adapter '1.to_k_ip.weight' holds NaN or infinite weights (a damaged file?)"),
    ("float8 weights", "image_proj 'proj.0.weight' holds float8_e4m3fn values; relation reads float16, bfloat16, float32 or "
                       "float64 weights"),
    ("an empty key projection", "ip_adapter '0.to_k_ip.weight' is empty (shape (0, 32))"),
    ("a norm of another width", "image_proj 'norm.weight' has 31 values, which do not divide the 4096 rows of 'proj.2.weight' "
                                "into tokens of that width"),
    ("a missing value projection", "ip_adapter has no '3.to_v_ip.weight'; each of its 6 processors has a to_k_ip and a "
                                   "to_v_ip weight"),
    ("a top-level step", "top-level keys 'step' beside image_proj and ip_adapter (the released layout has only those two)"),
])  # fmt: skip
def test_a_malformed_released_dict_is_named_not_an_internal_error(reference, tmp_path, capsys, how, message):
    """A pickle of the released layout whose parts are not tensors, not 2-D, or not of one adapter's sizes: the
    part is named in one line (were ValueError / AttributeError / IndexError / RuntimeError, internal errors)."""
    from relation_cli.cli import main

    torch.save(_break(_released_state(reference), how), tmp_path / "bad.bin")
    assert main(["convert", str(tmp_path / "bad.bin"), str(tmp_path / "out"), "--head-dim", "16"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"reading '{tmp_path / 'bad.bin'}' ({err[0].split('(')[-1]}", f"error: adapter '{tmp_path / 'bad.bin'}': {message}"]
    assert not (tmp_path / "out").exists()


def test_one_tensor_under_two_names_converts(reference, tmp_path):
    """A pickle holding one tensor under two keys (torch.save keeps the sharing) converts: safetensors refuses
    shared memory, so the second name gets its own copy (was an internal error)."""
    state = _released_state(reference)
    state["ip_adapter"]["0.to_v_ip.weight"] = state["ip_adapter"]["0.to_k_ip.weight"]
    torch.save(state, tmp_path / "shared.bin")
    out = convert_released(tmp_path / "shared.bin", tmp_path / "adapter", attention_head_dim=16)
    converted = load_adapter(out, attention_head_dim=16).state_dict()
    assert torch.equal(converted["processors.0.to_v_ip.weight"], state["ip_adapter"]["0.to_k_ip.weight"])
    assert torch.equal(converted["processors.0.to_k_ip.weight"], state["ip_adapter"]["0.to_k_ip.weight"])


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


def test_convert_says_each_long_step_as_it_starts(reference, tmp_path, capsys):
    """Reading a 5.3 GB pickle and writing it take ~10 s each: one line as each starts (then 'wrote')."""
    from relation_cli.cli import main

    assert main(["convert", str(reference / "ip_adapter.bin"), str(tmp_path / "out"), "--head-dim", "16"]) == 0
    said = capsys.readouterr()
    size = (reference / "ip_adapter.bin").stat().st_size
    assert said.err.splitlines() == [f"reading '{reference / 'ip_adapter.bin'}' ({size / 1e3:.1f} KB) ...",
                                     f"writing 148,064 parameters as safetensors to '{tmp_path / 'out'}' ..."]
    assert said.out == f"wrote {tmp_path / 'out'}\n"
