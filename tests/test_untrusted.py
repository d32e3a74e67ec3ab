"""Untrusted files: weights are read only as safetensors or with torch.load(weights_only=True), a pickle that
carries code is refused with one clear line and never runs, no code is trusted from a model repository,
and the hub is only ever asked for the ids the configuration names.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import random_image

from relation_cli.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
PACKAGE = ROOT / "relation_cli"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def calls(name: str):
    """Every call ``<anything>.name(...)`` or ``name(...)`` in the package: (file, node)."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield path.relative_to(ROOT), node


def test_torch_load_only_with_weights_only():
    found = list(calls("load"))
    torch_loads = [(p, n) for p, n in found if ast.unparse(n.func) == "torch.load"]
    assert torch_loads, "the released adapter is read with torch.load"
    for path, node in torch_loads:
        keywords = {k.arg: k.value for k in node.keywords}
        assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True, (
            f"{path}:{node.lineno}: torch.load without weights_only=True"
        )


UNSAFE = {"pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.load", "marshal.loads", "dill.load",
          "joblib.load", "yaml.load", "yaml.unsafe_load", "np.load", "numpy.load", "eval", "exec"}  # fmt: skip


def test_no_other_way_to_unpickle_or_run_code():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                assert ast.unparse(node.func) not in UNSAFE, f"{path}:{node.lineno}: {ast.unparse(node.func)}"


def test_no_trust_remote_code_and_hub_ids_only_from_the_config():
    for path in PACKAGE.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".md", ".txt"):
            assert "trust_remote_code" not in path.read_text(errors="replace"), path
    pretrained = list(calls("from_pretrained"))
    assert len(pretrained) >= 4
    for path, node in pretrained:
        assert "trust_remote_code" not in {k.arg for k in node.keywords}, f"{path}:{node.lineno}"
        first = node.args[0] if node.args else None
        # A literal would be a repository nobody configured; sources come from the config (model.base,
        # model.image_encoder, eval.clip_model, eval.dino_model) or folders relation wrote itself.
        assert not isinstance(first, ast.Constant), f"{path}:{node.lineno}: from_pretrained({ast.unparse(first)})"


# ------------------------------------------------------------------------------------------ pickles with code


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil(path: Path, marker: Path, as_torch: bool = True) -> Path:
    payload = Payload()
    payload.marker = marker
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_torch:
        torch.save({"image_proj": payload, "ip_adapter": {}}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"image_proj": payload, "ip_adapter": {}}, f)
    return path


def pickled(folder: Path, weights: tuple[str, str], root: Path, marker: Path) -> Path:
    """A copy of a model folder whose safetensors weights (``weights[0]``) became a pickle that carries code."""
    copy = root / folder.name
    shutil.copytree(folder, copy)
    (copy / weights[0]).unlink()
    evil(copy / weights[1], marker)
    return copy


ADAPTER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # diffusers' names
ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers' names: read with weights_only=True


def infer_with(model: Path, root: Path, *flags) -> list[str]:
    """The tiny model's infer command, with ``flags`` (an ``--adapter`` or ``--image-encoder`` in place of its own)."""
    a, b, q = (random_image(root / f"{n}.png", (32, 32), seed=i) for i, n in enumerate("abq"))
    parts = {"--model": model / "base", "--image-encoder": model / "image_encoder", "--adapter": model / "adapter"}
    parts |= dict(zip(flags[::2], flags[1::2]))
    return ["infer", "--exemplar", str(a), str(b), "--query", str(q), "-o", str(root / "o.png"), "--steps", "1",
            *(str(x) for flag, path in parts.items() for x in (flag, path))]  # fmt: skip


EVIL = [
    ("convert a released .bin", lambda m, r, x: ["convert", evil(r / "ip.bin", x), r / "converted"],
     "refused, holds code"),
    ("convert a plain pickle", lambda m, r, x: ["convert", evil(r / "ip.bin", x, False), r / "converted"], "refused"),
    ("infer --adapter .bin", lambda m, r, x: infer_with(m, r, "--adapter", evil(r / "ip.pt", x)),
     "refused, holds code"),
    ("adapter folder holding a pickle",
     lambda m, r, x: infer_with(m, r, "--adapter", pickled(m / "adapter", ADAPTER_WEIGHTS, r, x)),
     "no .safetensors weights"),
    ("image encoder holding a pickle",
     lambda m, r, x: infer_with(m, r, "--image-encoder", pickled(m / "image_encoder", ENCODER_WEIGHTS, r, x)),
     "a weights file was refused, holds code"),
    ("LoRA that is a pickle", lambda m, r, x: infer_with(m, r, "--lora", evil(r / "lora.safetensors", x)),
     "a PyTorch pickle, not safetensors; relation reads LoRAs only as .safetensors and never unpickles one"),
    ("LoRA that is a plain pickle", lambda m, r, x: infer_with(m, r, "--lora", evil(r / "lora.bin", x, False)),
     "a PyTorch pickle, not safetensors"),
]  # fmt: skip


@pytest.mark.parametrize("make_args, message", [e[1:] for e in EVIL], ids=[e[0] for e in EVIL])
def test_pickle_with_code_is_refused_and_never_runs(tiny_model, tmp_path, capsys, make_args, message):
    marker = tmp_path / "pwned"
    code = main([str(a) for a in make_args(tiny_model, tmp_path / "in", marker)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # convert says "reading '...' (size) ..." first: a long step starts
    assert code == 1 and lines[-1].startswith("error: ") and len(lines) == 1 + lines[0].startswith("reading "), err
    err = lines[-1]
    assert message in err, err
    if "refused" in message:
        assert "relation never executes pickled code" in err
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "in" / "converted").exists() and not (tmp_path / "in" / "o.png").exists()


# ------------------------------------------------------------------------------------------ hub ids


class FakeHub:
    """Stands in for the hub (HF_ENDPOINT): records every request, answers 404."""

    def __init__(self):
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                hub.requests.append(self.path)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def repositories(self) -> set[str]:
        """Repository ids named by the requests: /api/models/<id>/... and /<id>/resolve/..."""
        ids = set()
        for path in self.requests:
            if m := re.match(r"/api/models/([^/?]+/[^/?]+)", path) or re.match(r"/([^/]+/[^/]+)/resolve/", path):
                ids.add(m.group(1))
            else:  # huggingface_hub's own agent registry names no repository; anything else is a surprise
                assert path.startswith("/api/agent-harnesses"), path
        return ids


HUB_SCRIPT = """
import json, sys
from relation_cli.cli import main
model, data, tmp = sys.argv[1:4]
local = ["--model", model + "/base", "--image-encoder", model + "/image_encoder"]
edit = ["--exemplar", data + "/a0.png", data + "/b0.png", "--query", data + "/q0.png", "--steps", "1",
        "--adapter", model + "/adapter"]
codes = {
    "infer image encoder": main(["infer", *edit, "-o", tmp + "/1.png", *local[:2], "--image-encoder", "acme/siglip"]),
    "infer base": main(["infer", *edit, "-o", tmp + "/2.png", "--model", "acme/flux", *local[2:]]),
    "offline": main(["infer", *edit, "-o", tmp + "/3.png", "--model", "acme/never", *local[2:],
                     "--set", "model.local_files_only=true"]),
    "eval encoders": main(["eval", "--input", data + "/test_seen.jsonl", "--output-dir", tmp + "/eval", "--limit", "1",
                           *local, "--adapter", model + "/adapter", "--steps", "1",
                           "--set", "eval.clip_model=acme/clip", "--set", "eval.dino_model=acme/dino",
                           "--set", "eval.fid=false", "--set", "eval.baselines=[]",
                           "--set", "infer.max_sequence_length=16"]),
}
print(json.dumps(codes))
"""


def test_the_hub_is_asked_only_for_configured_ids(tiny_model, tmp_path):
    from eval_helpers import write_test_file

    data = write_test_file(tmp_path / "data", rows=2).parent
    hub = FakeHub()
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf"), "RELATION_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tiny_model), str(data), str(tmp_path)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    # Hub ids that are not there fail as one line (exit 1); eval skips metrics whose encoder cannot load.
    expected = {"infer image encoder": 1, "infer base": 1, "offline": 1, "eval encoders": 0}
    assert codes == expected, proc.stderr
    assert "model.image_encoder 'acme/siglip': cannot load" in proc.stderr
    # (train loads its models through the same load_base as infer)
    assert hub.repositories() == {"acme/siglip", "acme/flux", "acme/clip", "acme/dino"}
    assert not any("acme/never" in path for path in hub.requests)  # model.local_files_only: no request at all
    skipped = json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped"]
    assert "acme/clip" in skipped["clip_i"] and "acme/dino" in skipped["dino"]
