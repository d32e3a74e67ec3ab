"""Builders for the eval tests: tiny random encoders, a run-ready test file, a fake judge server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from helpers import random_image


def tiny_encoders(root: Path) -> tuple[Path, Path]:
    """A tiny random CLIP vision model (with projection) and a tiny DINOv2, saved with their processors."""
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    torch.manual_seed(0)
    sizes = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    crop = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clip, dino = root / "clip", root / "dino"
    CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=8, **sizes)).save_pretrained(clip)
    CLIPImageProcessor(**crop).save_pretrained(clip)
    Dinov2Model(Dinov2Config(**sizes)).save_pretrained(dino)
    BitImageProcessor(**crop).save_pretrained(dino)
    return clip, dino


def write_test_file(folder: Path, name: str = "test_seen.jsonl", rows: int = 4, tasks: int = 2) -> Path:
    """``rows`` analogy rows over ``tasks`` tasks, with small random images of mixed sizes (32..48)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        size = (32 + 16 * (i % 2), 48 - 16 * (i % 2))
        for role in ("a", "b", "q"):
            random_image(folder / f"{role}{i}.png", size, seed=100 * i + ord(role))
        random_image(folder / f"t{i}.png", (size[0] + 3, size[1] + 5), seed=100 * i + 7)  # resized when scored
        lines.append({"cond1": f"a{i}.png", "cond2": f"b{i}.png", "source": f"q{i}.png", "target": f"t{i}.png",
                      "text": f"edit number {i}", "task": f"task{i % tasks}"})  # fmt: skip
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def answer(content: str | None = None, refusal: str | None = None) -> dict:
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


GOOD = answer('{"consistency": 4, "accuracy": 3, "reason": "close"}')


class FakeJudge:
    """An OpenAI-compatible ``/chat/completions`` on 127.0.0.1 that plays a script of behaviours in order.

    Each behaviour is a response dict, ``("sleep", seconds)``, ``("status", code)`` or ``("raw", text)``;
    when the script runs out, every request gets ``GOOD``.
    """

    def __init__(self, script: list | None = None):
        self.script, self.requests, self.lock = list(script or []), [], threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    step = judge.script.pop(0) if judge.script else GOOD
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = GOOD
                if isinstance(step, tuple) and step[0] == "status":
                    self.send_response(step[1])
                    self.end_headers()
                    return
                data = step[1].encode() if isinstance(step, tuple) else json.dumps(step).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class ChannelMeans(torch.nn.Module):
    """A 3-feature stand-in for Inception in FID tests: the mean of each channel, in gray levels."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double().mean(dim=(2, 3))
