"""Run the relation CLI in this process and stop at a chosen moment, so a test can SIGKILL it right there.

    python tests/interrupt_worker.py MOMENT READY_FILE relation-arguments...

MOMENT is one of
- ``write:<text>:<n>``: the n-th safetensors, jsonl or image file written to a path containing <text>
  gets only half its bytes (what a crash in the middle of the write leaves), then the process waits;
- ``publish:<n>``: the n-th sealed checkpoint waits just before it is renamed into place;
- ``none``: run normally (for random-time kills).

When it waits, it first creates READY_FILE. Nothing else about the run is changed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(moment: str, ready: Path, argv: list[str]) -> int:
    from relation_cli.cli import main as relation
    from relation_cli.fs import atomic_file

    command = argv[0]

    kind, _, rest = moment.partition(":")
    count = {"n": 0}

    def stop_here() -> None:
        ready.write_text("ready\n")
        time.sleep(600)  # the test kills the process now

    def due(path, text: str, n: int) -> bool:
        if text in str(path):
            count["n"] += 1
        return count["n"] == n and text in str(path)

    if kind == "write":
        text, _, n = rest.rpartition(":")

        def cut_and_stop(path) -> None:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            stop_here()

        if command == "prepare":  # the split files
            import relation_cli.prepare.build as build

            real_write_jsonl = build.write_jsonl

            def write_jsonl(path, rows):
                real_write_jsonl(path, rows)
                if due(path, text, int(n)):
                    cut_and_stop(path)

            build.write_jsonl = write_jsonl
        elif command == "train":  # the checkpoint's tensors
            import relation_cli.train.checkpoint as checkpoint
            import safetensors.torch

            real_save_file = safetensors.torch.save_file

            def save_file(tensors, filename, metadata=None):
                real_save_file(tensors, filename, metadata)
                if due(filename, text, int(n)):
                    cut_and_stop(filename)

            safetensors.torch.save_file = checkpoint.save_file = save_file
        elif command in ("eval", "infer"):  # eval's and batch infer's images, each written to a temporary file first
            import relation_cli.evaluate.generate as generate
            import relation_cli.infer as infer

            module = generate if command == "eval" else infer
            real_save_output = module.save_output

            def save_output(image, path):
                if not due(path, text, int(n)):
                    return real_save_output(image, path)
                with atomic_file(path) as tmp:
                    real_save_output(image, tmp)
                    cut_and_stop(tmp)

            module.save_output = save_output
    elif kind == "publish":
        import relation_cli.train.checkpoint as checkpoint

        real_publish = checkpoint.publish

        def publish(tmp, root, step, keep):
            count["n"] += 1
            if count["n"] == int(rest):
                stop_here()
            return real_publish(tmp, root, step, keep)

        checkpoint.publish = publish
    return relation(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
