"""The hardening battery: each kind of bad input, fed to each command, and what must happen.

A table per command maps an input kind to the arguments that feed it through the real CLI and the
fragments the one error line must hold (the input's name and the problem); kinds in ``WORKS`` must
run and convert instead. ``tests/test_battery.py`` runs every case; with ``RELATION_BATTERY_TABLE=1``
it also writes ``docs/hardening-table.md`` (every message) and the matrix in the README from the run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import random_image, truncated_copy

COMMANDS = ("infer", "prepare", "train", "eval")
SIZE = (32, 48)  # upright width x height of every image given to infer, train and eval
PAIR_SIZE = (64, 32)  # upright side-by-side pair given to prepare: two 32x32 halves


# ------------------------------------------------------------------------------------------ files


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds almost no data: refused before decoding, or it bombs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def upright_pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    """Random pixels whose left half is red and right half blue, so orientation can be checked."""
    w, h = size
    arr = np.random.default_rng(seed).integers(0, 64, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2, 0] += 160
    arr[:, w // 2 :, 2] += 160
    return arr


def write_image(stem: Path, kind: str, size: tuple[int, int], seed: int = 0) -> Path:
    """The file of an image input ``kind`` (a key of IMAGE_ERRORS or IMAGE_WORKS) whose upright size is ``size``."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, rgb = stem.with_suffix(".png"), Image.fromarray(upright_pixels(size, seed))
    if kind == "missing image":
        return png
    if kind == "zero-byte image":
        png.write_bytes(b"")
    elif kind == "truncated image":
        truncated_copy(random_image(stem.with_name(stem.name + "-full.png"), size, seed), png)
    elif kind == "non-image file":
        png.write_text("just text, not an image\n")
    elif kind == "folder instead of image":
        png.mkdir()
    elif kind == "1x1 image":
        rgb.resize((1, 1)).save(png)
    elif kind == "image over the pixel limit":
        png.write_bytes(png_header(9000, 9000))  # 81 MP > data.max_image_pixels (64 MP)
    elif kind == "decompression bomb":
        png.write_bytes(png_header(100_000, 100_000))  # 10 GP
    elif kind == WRONG_EXTENSION:
        rgb.save(stem.with_suffix(".jpg"), format="PNG")
        return stem.with_suffix(".jpg")
    elif kind == "CMYK JPEG":
        rgb.convert("CMYK").save(stem.with_suffix(".jpg"), quality=95)
        return stem.with_suffix(".jpg")
    elif kind == "16-bit grayscale":
        Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(png)
    elif kind == "palette with transparency":
        rgb.convert("P").save(png, transparency=0)
    elif kind == "RGBA with alpha":
        rgb.convert("RGBA").save(png)
    elif kind == "EXIF-rotated JPEG":
        exif = Image.Exif()
        exif[0x0112] = 6  # stored lying on its side: "rotate 90 degrees clockwise to display"
        rgb.transpose(Image.Transpose.ROTATE_90).save(stem.with_suffix(".jpg"), quality=95, exif=exif)
        return stem.with_suffix(".jpg")
    else:
        raise KeyError(kind)
    return png


def jsonl_bytes(lines: list) -> bytes:
    """One line each: dicts as JSON, strings and bytes as they are (malformed on purpose)."""
    raw = [json.dumps(x).encode() if isinstance(x, dict) else x.encode() if isinstance(x, str) else x for x in lines]
    return b"".join(line + b"\n" for line in raw)


IMAGE_ERRORS = {
    "missing image": "file not found",
    "zero-byte image": "empty file (0 bytes)",
    "truncated image": "cannot decode image",
    "non-image file": "not an image PIL can read",
    "folder instead of image": "not a file",
    "1x1 image": "a side under 16 pixels",
    "image over the pixel limit": "over the limit of 64,000,000 (data.max_image_pixels)",
    "decompression bomb": "(data.max_image_pixels); refused before decoding (a decompression bomb)",
}
WRONG_EXTENSION = "image with the wrong extension (PNG named .jpg)"
IMAGE_WORKS = (WRONG_EXTENSION, "CMYK JPEG", "16-bit grayscale", "palette with transparency", "RGBA with alpha",
               "EXIF-rotated JPEG")  # fmt: skip
"""Inputs that must work: converted to 8-bit RGB, upright."""


class Kit:
    """Builds one case's inputs under ``root``. Names are fixed, so the messages can be checked."""

    def __init__(self, root: Path, model: Path):
        self.root, self.model, self.data = root, model, root / "data"

    # -- images, rows, pairs

    def good(self, name: str, seed: int) -> Path:
        self.data.mkdir(parents=True, exist_ok=True)
        return random_image(self.data / f"{name}.png", SIZE, seed)

    def image(self, kind: str) -> Path:
        return write_image(self.data / "bad", kind, SIZE, seed=99)

    def row(self, i: int, **fields) -> dict:
        names = {k: self.good(f"{k}{i}", 10 * i + n).name for n, k in enumerate(("a", "b", "q", "t"))}
        row = {"cond1": names["a"], "cond2": names["b"], "source": names["q"], "target": names["t"],
               "text": f"edit {i}", "task": f"task{i % 2}"}  # fmt: skip
        row.update(fields)
        return {k: v for k, v in row.items() if v is not None}

    def rows(self, name: str, lines: list) -> Path:
        """A jsonl file in the data folder: dicts become JSON lines, strings and bytes are written as they are."""
        path = self.data / name
        self.data.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jsonl_bytes(lines))
        return path

    def bad_rows(self, name: str, kind: str) -> Path:
        """A rows file whose first row is good and whose second line has the fault ``kind`` (ROWS_ERRORS)."""
        path = self.data / name
        self.data.mkdir(parents=True, exist_ok=True)
        if kind == "missing data file":
            return path
        if kind == "zero-byte data file":
            path.write_bytes(b"")
            return path
        outside = random_image(self.root / "outside.png", SIZE, seed=5)
        (self.data / "link.png").symlink_to(outside)
        second = {
            "non-UTF-8 data file": lambda: b'{"cond1": "caf\xe9.png"}',
            "malformed JSON line": lambda: '{"cond1": "a1.png", ',
            "JSON line not an object": lambda: "[1, 2]",
            "missing field": lambda: self.row(1, source=None),
            "unknown field": lambda: self.row(1, txt="a misspelt text"),
            "wrong field type": lambda: self.row(1, text=5),
            "absolute path": lambda: self.row(1, cond1=str(outside)),
            "path with ..": lambda: self.row(1, cond1="../outside.png"),
            "symlink out of the root": lambda: self.row(1, cond1="link.png"),
        }[kind]()
        return self.rows(name, [self.row(0), second])

    def pairs(self, extra: dict | None = None, raw: str | bytes | None = None) -> Path:
        """``in/pairs.jsonl``: 2 tasks of 2 side-by-side pairs, then ``extra`` (an entry) or ``raw`` (a line)."""
        root = self.root / "in"
        lines = []
        for i in range(4):
            name = f"t{i % 2}/p{i}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(upright_pixels(PAIR_SIZE, seed=i)).save(root / name)
            lines.append({"img_name": name, "edit_instruction": f"edit {i}", "task": f"t{i % 2}"})
        lines += [extra] if extra else [raw] if raw is not None else []
        (root / "pairs.jsonl").write_bytes(jsonl_bytes(lines))
        return root / "pairs.jsonl"

    def pair_image(self, kind: str) -> str:
        """An image of ``kind`` in the prepare input; returns its name relative to the input file."""
        root = self.root / "in"
        return write_image(root / "t0" / "bad", kind, PAIR_SIZE, seed=42).relative_to(root).as_posix()

    # -- other files

    def file(self, name: str, text: str | bytes = "x") -> Path:
        path = self.root / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    def existing_dir(self, name: str, child: str = "keep.txt") -> Path:
        """A folder that holds ``child``: a file if its name has a suffix, else a folder."""
        target = self.root / name / child
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix:
            target.write_text("x")
        else:
            target.mkdir()
        return self.root / name

    def training_run(self) -> Path:
        """A folder like a training run's (checkpoints and a config.yaml): no command but train writes there."""
        path = self.root / "run"
        (path / "checkpoints" / "checkpoint-00000001").mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text("run: {adapter: adapter}\n")
        return path

    def read_only_dir(self) -> Path:
        """A folder nobody may write in (chmod, or chattr +i where the tests run as root); skips if impossible."""
        path = self.root / "ro"
        path.mkdir(exist_ok=True)
        path.chmod(0o555)
        if os.access(path, os.W_OK) and shutil.which("chattr"):  # root ignores modes, not the immutable attribute
            subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if os.access(path, os.W_OK):
            pytest.skip("cannot make a read-only folder here")
        return path

    def busy_dir(self, name: str) -> Path:
        """A folder another command is writing now: its lock (``.relation.lock``) held until :meth:`release`."""
        from filelock import FileLock

        from relation_cli.fs import LOCK_NAME

        (self.root / name).mkdir(exist_ok=True)
        self._lock = FileLock(self.root / name / LOCK_NAME, timeout=0)
        self._lock.acquire()
        return self.root / name

    def release(self) -> None:
        """Undo ``read_only_dir`` so the temporary folder can be removed, and free ``busy_dir``'s lock."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
        path = self.root / "ro"
        if path.exists() and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        if path.exists():
            path.chmod(0o755)


# ------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    kind: str  # a row of the README table
    args: Callable[[Kit], list] | None  # arguments after the command name; None: checked by the command's run
    expect: tuple[str, ...] = ()  # fragments of the one error line; () = must work

    @property
    def works(self) -> bool:
        return not self.expect


def sets(*overrides: str) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


def model_sets(kit: Kit, adapter: bool = True) -> list[str]:
    base = [f"model.base={kit.model / 'base'}", f"model.image_encoder={kit.model / 'image_encoder'}",
            "infer.max_sequence_length=16"]  # fmt: skip
    return sets(*base, *([f"adapter.path={kit.model / 'adapter'}"] if adapter else []))


def config_cases(option: tuple[str, str], out_of_range: tuple[list, str], args: Callable[[Kit], list],
                 steps: str | None = None, batch: str | None = None) -> list[Case]:
    """The config kinds every command shares. ``args(kit)`` gives the command's otherwise valid arguments;
    ``option`` is an integer (key, flag); ``out_of_range`` the arguments of another bad value and its key."""
    key, flag = option
    section = key.split(".")[0]

    def config(k: Kit, text: str | bytes) -> list:
        return [*args(k), "--config", k.file("c.yaml", text)]

    cases = [
        Case("unknown config key", lambda k: [*args(k), "--set", f"{section}.nope=1"],
             (f"{section}.nope: unknown key",)),
        Case("value of the wrong type", lambda k: [*args(k), "--set", f"{key}=abc"], (key, "valid integer")),
        Case("non-numeric option value", lambda k: [*args(k), flag, "abc"], (f"'{flag}'", "valid integer")),
        Case("out-of-range value", lambda k: [*args(k), *out_of_range[0]], (out_of_range[1], "greater than")),
        Case("malformed --set", lambda k: [*args(k), "--set", f"{section}.steps"], ("expected section.key=value",)),
        Case("unknown option", lambda k: [*args(k), "--bogus-flag"], ("No such option: --bogus-flag",)),
        Case("config file not found", lambda k: [*args(k), "--config", "nope.yaml"], ("nope.yaml", "not found")),
        Case("malformed YAML config", lambda k: config(k, f"{section}: [x\n"), ("c.yaml", "not valid YAML")),
        Case("non-UTF-8 config", lambda k: config(k, b"a: \xff\n"), ("c.yaml", "not UTF-8")),
        Case("unknown key in config file", lambda k: config(k, f"{section}:\n  colour: 1\n"),
             ("c.yaml", f"{section}.colour: unknown key")),
    ]  # fmt: skip
    if steps:
        cases.append(Case("negative steps", lambda k: [*args(k), "--steps", "-1"], (steps, "greater than or equal")))
    if batch:
        cases.append(Case("zero batch size", lambda k: [*args(k), "--set", f"{batch}=0"], (batch, "greater than")))
    return cases


def output_cases(args: Callable[[Kit, Path], list]) -> list[Case]:
    """The output kinds every command shares; ``args(kit, folder)`` makes a command write into ``folder``."""
    return [
        Case("output folder is a file", lambda k: args(k, k.file("out")), ("out'", "exists and is not a")),
        Case("output under a file", lambda k: args(k, k.file("f.txt") / "out"), ("f.txt' is not a folder",)),
        Case("read-only output folder", lambda k: args(k, k.read_only_dir() / "out"), ("ro' is not writable",)),
    ]


def busy_case(args: Callable[[Kit, Path], list], what: str) -> Case:
    """The output folder of a command running now (train, batch infer and eval hold a lock while writing)."""
    return Case("output folder in use by another command", lambda k: args(k, k.busy_dir("busy")),
                (f"{what} '", "another relation command is writing to it now"))


def model_case(args: Callable[[Kit], list]) -> Case:
    return Case("missing model folder", lambda k: [*args(k), "--model", "./nowhere"],
                ("model.base './nowhere'", "folder not found"))


def image_cases(args: Callable[[Kit, str], list], role: str, errors: dict[str, str] = IMAGE_ERRORS) -> list[Case]:
    """Each kind of ``errors`` as the image ``args(kit, kind)`` gives (named ``bad.png``), then the IMAGE_WORKS."""
    cases = [Case(kind, lambda k, kind=kind: args(k, kind), (f"{role} '", "bad.png'", why))
             for kind, why in errors.items()]  # fmt: skip
    return cases + [Case(kind, None) for kind in IMAGE_WORKS]


ROWS_ERRORS = {
    "missing data file": "not found",
    "zero-byte data file": "no rows",
    "non-UTF-8 data file": "not UTF-8 text",
    "malformed JSON line": "line 2: malformed JSON",
    "JSON line not an object": "line 2: expected a JSON object, found list",
    "missing field": "row 2: missing or empty source",
    "unknown field": "row 2: unknown field 'txt'",
    "wrong field type": "row 2: text must be a string",
    "absolute path": "is an absolute path",
    "path with ..": "contains '..'",
    "symlink out of the root": "'link.png' leads outside the dataset root",
}
CSV = "cond1,cond2,source,target\na0.png,b0.png,q0.png,t0.png\n"
PRETTY_JSON = '[\n  {\n    "source": "a0.png",\n    "target": "t0.png"\n  }\n]\n'  # json.dumps(..., indent=2)


def rows_cases(args: Callable[[Kit, Path], list], name: str) -> list[Case]:
    """Each ROWS_ERRORS kind in the rows file ``name`` that ``args(kit, path)`` reads, a CSV file and a pretty-printed JSON file."""
    cases = [Case(kind, lambda k, kind=kind: args(k, k.bad_rows(name, kind)), (name, why))
             for kind, why in ROWS_ERRORS.items()]  # fmt: skip
    csv = Case("CSV file instead of JSON Lines", lambda k: args(k, k.file("rows.csv", CSV)),
               ("rows.csv", "not a JSON Lines file, none of its 2 non-blank lines is a JSON object (line 1: malformed JSON"))
    pretty = Case("pretty-printed JSON instead of JSON Lines", lambda k: args(k, k.file(name, PRETTY_JSON)),
                  (name, "one JSON document over 6 lines, not JSON Lines"))
    return [*cases, csv, pretty]


# ---- infer: single mode for images and single outputs, batch mode (--input) for rows files and folders


def infer_args(kit: Kit, query: Path | None = None, output: Path | None = None) -> list:
    a, b = kit.good("a0", 1), kit.good("b0", 2)
    return ["--exemplar", a, b, "--query", query or kit.good("q0", 3), "-o", output or kit.root / "out.png",
            "--steps", "1", *model_sets(kit)]  # fmt: skip


def infer_batch(kit: Kit, rows: Path | None = None, out: Path | None = None) -> list:
    rows = rows or kit.rows("rows.jsonl", [kit.row(0)])
    return ["--input", rows, "--output-dir", out or kit.root / "out", "--steps", "1", *model_sets(kit)]


INFER = [
    *image_cases(lambda k, kind: infer_args(k, k.image(kind)), "query"),
    Case("missing exemplar", lambda k: ["--exemplar", k.good("a0", 1), "nope.png", "--query", k.good("q0", 3)],
         ("exemplar A' 'nope.png'", "file not found")),
    *rows_cases(lambda k, rows: infer_batch(k, rows), "rows.jsonl"),
    *config_cases(("infer.seed", "--seed"), (["--scale", "-1"], "adapter.scale"), infer_args, steps="infer.steps"),
    Case("existing output", lambda k: infer_args(k, output=random_image(k.root / "old.png")),
         ("old.png", "already exists")),
    Case("unsupported output extension", lambda k: infer_args(k, output=k.root / "out.gif"),
         ("out.gif", "unsupported extension")),
    *output_cases(lambda k, out: infer_batch(k, out=out)),
    Case("a training run as output folder", lambda k: infer_batch(k, out=k.training_run()),
         ("holds files that relation infer --input did not write (checkpoints", "use a new or empty --output-dir")),
    busy_case(lambda k, out: infer_batch(k, out=out), "output dir"),
    Case("--output-dir without --input", lambda k: [*infer_args(k), "--output-dir", k.root / "d"],
         ("--output-dir goes with --input",)),
    model_case(infer_args),
]  # fmt: skip


# ---- prepare: a jsonl of side-by-side pairs


def prepare_args(kit: Kit, source: Path | None = None, out: Path | None = None) -> list:
    return [source or kit.pairs(), "--output", out or kit.root / "out", "--workers", "1", "--test-per-task", "0"]


def entry(name, **fields) -> dict:
    return {"img_name": name, "edit_instruction": "edit", "task": "t0", **fields}


PREPARE_ENTRY_ERRORS = {
    "non-UTF-8 data file": (dict(raw=b'{"img_name": "caf\xe9.png"}'), "file: not UTF-8 text"),
    "malformed JSON line": (dict(raw='{"img_name": '), "line 5: malformed JSON"),
    "JSON line not an object": (dict(raw="[1, 2]"), "line 5: expected a JSON object, found list"),
    "missing field": (dict(extra={"img_name": "t0/p0.png", "task": "t0"}), "line 5: edit_instruction is missing"),
    "unknown field": (dict(extra=entry("t0/p0.png", instruction="x")), "line 5: unknown field 'instruction'"),
    "wrong field type": (dict(extra=entry(5)), "line 5: img_name must be a string, found int"),
    "absolute path": (dict(extra=entry("/etc/hostname")), "'/etc/hostname' is an absolute path"),
    "path with ..": (dict(extra=entry("t0/../../outside.png")), "contains '..'"),
    "symlink out of the root": (dict(extra=entry("t0/link.png")), "'t0/link.png' leads outside the dataset root"),
}


def prepare_entry(kit: Kit, fault: dict) -> list:
    source = kit.pairs(**fault)
    outside = random_image(kit.root / "outside.png", PAIR_SIZE, seed=5)
    (source.parent / "t0" / "link.png").symlink_to(outside)
    return prepare_args(kit, source)


PREPARE = [
    *image_cases(lambda k, kind: prepare_args(k, k.pairs(entry(k.pair_image(kind)))), "image",
                 {**IMAGE_ERRORS, "1x1 image": "a side-by-side pair needs an even width"}),
    Case("missing data file", lambda k: prepare_args(k, k.root / "pairs.jsonl"), ("pairs.jsonl", "not found")),
    Case("zero-byte data file", lambda k: prepare_args(k, k.file("pairs.jsonl", "")),
         ("pairs.jsonl", "holds no entries")),
    *[Case(kind, lambda k, fault=fault: prepare_entry(k, fault), ("pairs.jsonl", why))
      for kind, (fault, why) in PREPARE_ENTRY_ERRORS.items()],
    Case("CSV file instead of JSON Lines", lambda k: prepare_args(k, k.file("pairs.csv", CSV)),
         ("pairs.csv", "expected a Relation252K folder, a .jsonl or a .json file")),
    Case("pretty-printed JSON instead of JSON Lines", lambda k: prepare_args(k, k.file("pairs.jsonl", PRETTY_JSON)),
         ("pairs.jsonl", "one JSON document over 6 lines, not JSON Lines: name it .json")),
    Case("folder without the dataset layout", lambda k: prepare_args(k, k.existing_dir("raw")),
         ("raw", "no <task>/Group1/labels.json")),
    *config_cases(("data.per_task_cap", "--per-task-cap"), (["--test-per-task", "-1"], "data.test_per_task"),
                  prepare_args),
    Case("existing output", lambda k: prepare_args(k, out=k.existing_dir("old")), ("old", "already exists")),
    *output_cases(lambda k, out: prepare_args(k, out=out)),
]  # fmt: skip


# ---- train: train.jsonl


def train_args(kit: Kit, data: Path | None = None, out: Path | None = None) -> list:
    data = data or kit.rows("train.jsonl", [kit.row(0), kit.row(1)])
    overrides = [f"train.data={data}", f"train.output_dir={out or kit.root / 'run'}", "lora.rank=2",
                 "train.validation_samples=0", "train.steps=1"]  # fmt: skip
    return [*model_sets(kit, adapter=False), *sets(*overrides)]


def with_bad_source(kit: Kit, name: str, kind: str) -> Path:
    """A rows file whose second row's query (``source``) is the image ``kind``."""
    return kit.rows(name, [kit.row(0), kit.row(1, source=kit.image(kind).name)])


TRAIN = [
    *image_cases(lambda k, kind: train_args(k, with_bad_source(k, "train.jsonl", kind)), "row 2 source"),
    *rows_cases(lambda k, rows: train_args(k, rows), "train.jsonl"),
    *config_cases(("train.steps", "--steps"), (["--set", "train.learning_rate=0"], "train.learning_rate"), train_args,
                  steps="train.steps", batch="train.batch_size"),
    Case("existing output", lambda k: train_args(k, out=k.existing_dir("old", "checkpoints/checkpoint-00000001")),
         ("old", "holds checkpoints of an earlier run")),
    *output_cases(lambda k, out: train_args(k, out=out)),
    busy_case(lambda k, out: train_args(k, out=out), "train.output_dir"),
    model_case(train_args),
]  # fmt: skip


# ---- eval: test_seen.jsonl


def eval_args(kit: Kit, data: Path | None = None, out: Path | None = None) -> list:
    data = data or kit.rows("test_seen.jsonl", [kit.row(0), kit.row(1)])
    overrides = ["eval.clip_model=", "eval.dino_model=", "eval.fid=false", "eval.baselines=[copy_query]"]
    out = out or kit.root / "eval"
    return ["--input", data, "--output-dir", out, "--steps", "1", *model_sets(kit), *sets(*overrides)]


def other_settings(kit: Kit) -> Path:
    out = kit.existing_dir("eval")
    (out / "generation.json").write_text(json.dumps({"infer.steps": 99}))
    (out / "seen" / "relation").mkdir(parents=True)
    random_image(out / "seen" / "relation" / "000000.png")  # an output the record vouches for
    return out


EVAL = [
    *image_cases(lambda k, kind: eval_args(k, with_bad_source(k, "test_seen.jsonl", kind)), "seen row 2 query"),
    *rows_cases(lambda k, rows: eval_args(k, rows), "test_seen.jsonl"),
    *config_cases(("eval.limit", "--limit"), (["--limit", "0"], "eval.limit"), eval_args, steps="infer.steps",
                  batch="eval.batch_size"),
    Case("existing output", lambda k: eval_args(k, out=other_settings(k)), ("eval", "generated with other settings")),
    *output_cases(lambda k, out: eval_args(k, out=out)),
    Case("a training run as output folder", lambda k: eval_args(k, out=k.training_run()),
         ("holds files that relation eval did not write (checkpoints", "use a new or empty --output-dir")),
    busy_case(lambda k, out: eval_args(k, out=out), "output dir"),
    model_case(eval_args),
]  # fmt: skip

TABLES = {"infer": INFER, "prepare": PREPARE, "train": TRAIN, "eval": EVAL}


# ------------------------------------------------------------------------------------------ tables

START, END = "<!-- hardening-table:start -->", "<!-- hardening-table:end -->"


def kinds() -> list[str]:
    """Every input kind, in first-seen order."""
    return list(dict.fromkeys(c.kind for cases in TABLES.values() for c in cases))


def render_matrix(outcomes: dict[tuple[str, str], str]) -> str:
    """``(command, kind) -> 'exit 1' / 'works'`` as a markdown table, kinds down, commands across."""
    lines = ["| input kind | " + " | ".join(f"`{c}`" for c in COMMANDS) + " |", "| --- |" + " --- |" * len(COMMANDS)]
    for kind in kinds():
        lines.append(f"| {kind} | " + " | ".join(outcomes.get((c, kind), "n/a") for c in COMMANDS) + " |")
    return "\n".join(lines)


def expected_outcomes() -> dict[tuple[str, str], str]:
    return {(cmd, c.kind): "works" if c.works else "exit 1" for cmd, cases in TABLES.items() for c in cases}


def readme_block(text: str) -> str:
    """The generated table between the README's markers."""
    return text[text.index(START) + len(START) : text.index(END)].strip()


def write_tables(records: list[dict], readme: Path, details: Path) -> None:
    """From one run's records: the README matrix, and ``details`` with every case's actual message."""
    outcomes = {(r["command"], r["kind"]): r["outcome"] for r in records}
    text = readme.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    readme.write_text(text[:start] + "\n" + render_matrix(outcomes) + "\n" + text[end:])
    rows = ["| command | input kind | outcome | message |", "| --- | --- | --- | --- |"]
    order = {k: i for i, k in enumerate(kinds())}
    for r in sorted(records, key=lambda r: (COMMANDS.index(r["command"]), order[r["kind"]])):
        message = r["message"].replace("|", "\\|")
        rows.append(f"| `{r['command']}` | {r['kind']} | {r['outcome']} | {message} |")
    details.parent.mkdir(parents=True, exist_ok=True)
    details.write_text(
        "# Hardening battery: every case and what it printed\n\n"
        "Generated by `RELATION_BATTERY_TABLE=1 .venv/bin/python -m pytest tests/test_battery.py` "
        "(temporary paths shown as `<tmp>`); the README holds the summary.\n\n" + "\n".join(rows) + "\n"
    )
