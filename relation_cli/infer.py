"""``relation infer``: one edit, or one edit per row of a run-ready jsonl file.

Everything cheap is checked (images decode, sizes, output paths) before the model is loaded.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .config import DEMO, InferSection, RelationConfig, config_text, read_yaml, save_config
from .errors import RelationError, several
from .fs import check_not_busy, check_writable, holding_folder, remove_stale_temps, staged_text
from .images import MAX_SIDE, check_output_path, check_output_size, open_image, resize_result, save_output, working_size
from .rows import Row, parse_rows

DEFAULT_OUTPUT_DIR = Path("outputs")


@dataclass(frozen=True)
class EditInputs:
    """The images of one edit: the first exemplar pair, the query, the prompt, and any further pairs."""

    exemplar_a: Image.Image
    exemplar_b: Image.Image
    query: Image.Image
    prompt: str
    more_exemplars: tuple[tuple[Image.Image, Image.Image], ...] = ()

    @property
    def pairs(self) -> list[tuple[Image.Image, Image.Image]]:
        """All k exemplar pairs (A, A'), the first one first."""
        return [(self.exemplar_a, self.exemplar_b), *self.more_exemplars]

    def shape_note(self) -> str | None:
        """The line that says an exemplar pair's A and A' differ in aspect ratio (by more than 1%) or are the same
        image (the pair shows no edit), or None.

        Each exemplar image is padded to its own regular aspect ratio and squashed to the image encoder's
        square input (:func:`~relation_cli.images.pad_exemplar`, SPEC 2.1), so a pair of two shapes also
        shows a change of shape that the query's edit then copies.
        """
        for n, (a, b) in enumerate(self.pairs, 1):
            (wa, ha), (wb, hb) = a.size, b.size
            pair = f"exemplar pair {n}" if len(self.pairs) > 1 else "exemplar"
            if abs(wa * hb - wb * ha) > 0.01 * wa * hb:
                return (f"note: {pair} A is {wa}x{ha} and A' {wb}x{hb}, another shape: the image encoder sees each "
                        "padded and squashed on its own, so the pair also shows that change of shape; give A' the "
                        "shape of A unless it is part of the edit")  # fmt: skip
            if a.size == b.size and a.tobytes() == b.tobytes():
                return (f"note: {pair} A and A' have the same pixels: the pair shows no edit, so the result follows "
                        "no relation; give the image after the edit as A'")  # fmt: skip
        return None


PathPair = tuple[Path, Path]


def pair_list(exemplars: PathPair | Sequence[PathPair]) -> list[PathPair]:
    """One (A, A') pair of paths, or a list of pairs, as a list of pairs."""
    return [exemplars] if isinstance(exemplars[0], (str, Path)) else list(exemplars)


def pair_labels(k: int) -> list[tuple[str, str]]:
    """How messages name the images of k exemplar pairs: ``exemplar A``/``A'``, or ``exemplar pair n A``/``A'``."""
    names = ["exemplar" + (f" pair {n}" if k > 1 else "") for n in range(1, k + 1)]
    return [(f"{name} A", f"{name} A'") for name in names]


def open_edit_inputs(
    cfg: RelationConfig, exemplars: PathPair | Sequence[PathPair], query: Path, prompt: str, where: str = "",
    labels: Sequence[tuple[str, str]] | None = None, query_label: str = "query",
) -> EditInputs:
    """Open and check every image of one edit; ``exemplars`` is one (A, A') pair of paths or a list of pairs.

    Messages name an image ``where`` + its label: ``labels`` per pair (default ``exemplar [pair n] A``/``A'``),
    ``query_label`` for the query.

    Raises:
        RelationError: every image that cannot be used, in one line (``exemplar A 'a.png': file not found;
            query 'q.png': ...``).
    """
    limit = cfg.data.max_image_pixels
    pairs = pair_list(exemplars)
    labels = pair_labels(len(pairs)) if labels is None else labels
    wanted = [(p, where + label) for (a, b), (la, lb) in zip(pairs, labels) for p, label in ((a, la), (b, lb))]
    images, problems = [], []
    for path, label in [*wanted, (query, where + query_label)]:
        try:
            images.append(open_image(path, label, limit))
        except RelationError as e:
            problems.append(str(e))
    if problems:
        raise RelationError("; ".join(problems))
    opened = list(zip(images[0:-1:2], images[1:-1:2]))
    return EditInputs(*opened[0], images[-1], prompt, tuple(opened[1:]))


@dataclass(frozen=True)
class EditSizes:
    """``(width, height)`` in pixels of the query as given, of the image the model works at, and of the
    result; ``multiple`` is the model's size step (``2 * vae_scale_factor``)."""

    query: tuple[int, int]
    working: tuple[int, int]
    output: tuple[int, int]
    multiple: int
    min_side: int = 0

    @property
    def shrunk(self) -> bool:
        """Whether the model works on fewer pixels than the query has (a photo on a small model)."""
        return self.working[0] * self.working[1] < self.query[0] * self.query[1]

    def check(self, infer: InferSection, max_pixels: int) -> None:
        """RelationError when the working size is under the base's smallest side or over ``max_pixels``
        (``data.max_image_pixels``; only an explicit ``infer.width``/``height`` can make either so); the
        message says how that size was reached."""
        (w, h), auto = self.working, not (infer.width and infer.height)
        if w * h > max_pixels:
            raise RelationError(f"working size {w}x{h} ({self._reason(infer)}) is {w * h:,} pixels, over the limit "
                                f"of {max_pixels:,} (data.max_image_pixels)")  # fmt: skip
        if min(self.working) < self.min_side:
            raise RelationError(f"working size {w}x{h} ({self._reason(infer)}): this base needs at least "
                                f"{self.min_side} px a side" + ("; a side left auto follows the query's aspect "
                                "ratio, give both --width and --height" if auto else ""))  # fmt: skip

    def note(self, infer: InferSection) -> str | None:
        """The line that says the query was resized, from and to what (or that an explicit size was floored
        back to the query's own), and that an explicit size over ``LARGE`` x ``infer.max_area`` will be slow;
        None when it keeps its size and is not that large."""
        q, w = (f"{a}x{b}" for a, b in (self.query, self.working))
        if self.working == self.query:
            line = f"query kept at {q} ({self._reason(infer)})" if self._floored_explicit(infer) else None
        else:
            back = f"; the result goes back to {q} (infer.output_size: query)" if self.output == self.query else ""
            line = f"query resized from {q} to {w} ({self._reason(infer)}){back}"
        times = self.working[0] * self.working[1] / infer.max_area if infer.max_area else 0
        if (infer.width or infer.height) and times > self.LARGE:
            slow = (f"the working size {w} is {times:.1f}x infer.max_area ({infer.max_area:,} pixels): each denoising "
                    f"step works on {times:.1f}x the image tokens and its attention on {times * times:.0f}x the pairs "
                    "of them; expect it to be slow and to need more memory")  # fmt: skip
            line = f"{line}; {slow}" if line else slow
        return line

    LARGE = 4  # an explicit working size over this many times infer.max_area is said to be slow

    def _floored_explicit(self, infer: InferSection) -> bool:
        """Whether an explicit ``infer.width``/``height`` (a missing side from the query's aspect ratio) was
        floored to the size multiple."""
        if not (infer.width or infer.height):
            return False
        qw, qh = self.query
        return self.working != (round(infer.width or infer.height * qw / qh), round(infer.height or infer.width * qh / qw))

    def _reason(self, infer: InferSection) -> str:
        if infer.width or infer.height:
            floored = f", sides floored to a multiple of {self.multiple}" if self._floored_explicit(infer) else ""
            aspect = "" if self._aspect_kept() or (infer.width and infer.height) else f", {self._aspect()}"
            return f"infer.width {infer.width or 'auto'}, infer.height {infer.height or 'auto'} (--width/--height){floored}{aspect}"
        if min(self.working) > min(self.query) and min(self.query) < self.min_side:
            return f"this base works at {self.min_side} px a side or more, {self._aspect()}"
        if infer.max_area is not None and self.query[0] * self.query[1] > infer.max_area:
            return f"infer.max_area {infer.max_area:,} pixels, {self._aspect()}"
        return f"sides floored to a multiple of {self.multiple}"

    def _aspect_kept(self) -> bool:
        """Whether width/height of the working size is within 5% of the query's."""
        (qw, qh), (w, h) = self.query, self.working
        return abs(math.log((w / h) / (qw / qh))) < math.log(1.05)

    def _aspect(self) -> str:
        """``aspect ratio kept``, or from and to what it went (width / height)."""
        if self._aspect_kept():
            return "aspect ratio kept"
        (qw, qh), (w, h) = self.query, self.working
        return f"aspect ratio {qw / qh:.3g} -> {w / h:.3g}"


def edit_sizes(infer: InferSection, query_size: tuple[int, int], multiple: int, min_side: int = 0) -> EditSizes:
    """Sizes of one edit: the working size from :func:`~relation_cli.images.working_size` with the infer
    settings, ``multiple`` and ``min_side`` (``pipe.size_multiple`` and ``pipe.min_working_side``;
    ``model.size_rules(cfg)`` before loading), the result's from ``infer.output_size``."""
    working = working_size(*query_size, multiple, infer.max_area, infer.width, infer.height, min_side)
    return EditSizes(query_size, working, query_size if infer.output_size == "query" else working, multiple, min_side)


DEMO_NOTE = (
    "note: the embedded demo model was trained on 32x32 synthetic scenes of flat shapes, not on photos. For "
    "photos use FLUX weights: --model black-forest-labs/FLUX.1-dev --adapter ip_adapter-100000.bin --lora "
    "pytorch_lora_weights.safetensors (the released RelationAdapter; README: With the released weights)"
)


def _looks_like_a_photo(cfg: RelationConfig, sizes: "EditSizes") -> bool:
    """The demo model shrinks this query to its working area by itself (``infer.max_area``): a photo, not one of
    the 32x32 scenes it was trained on (an explicit --width/--height that shrinks a scene is the user's choice)."""
    return cfg.model.base == DEMO and sizes.shrunk and not (cfg.infer.width or cfg.infer.height)


def print_note(line: str | None) -> None:
    """One line on stderr beside the progress bar; nothing for None."""
    from .progress import console

    if line:
        console.print(line, markup=False, highlight=False)


class PromptCache:
    """Text encodings by prompt: a batch of rows sharing an instruction encodes it once."""

    def __init__(self, pipe, max_sequence_length: int, size: int = 256):
        self.pipe, self.max_sequence_length, self.size, self.store = pipe, max_sequence_length, size, {}

    def __call__(self, prompt: str):
        if prompt not in self.store:
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            self.store[prompt] = self.pipe.encode_instruction(
                prompt, self.pipe._execution_device, self.max_sequence_length
            )  # the pipeline's text inputs: prompt_embeds (and pooled_prompt_embeds on FLUX.1)
        return self.store[prompt]


class NonFiniteResult(RelationError):
    """The pipeline produced NaN or Inf; raised by :func:`edit` before anything is saved."""


def likely_sources(cfg: RelationConfig) -> str:
    """Where a NaN or Inf most likely came from, for the message of :class:`NonFiniteResult`."""
    causes = [f"a LoRA ({', '.join(f.path for f in cfg.lora.paths)})"] if cfg.lora.paths else []
    if cfg.adapter.scale:
        causes.append(f"the adapter ({cfg.adapter.path or 'the demo adapter'})")
    dtype = cfg.model.dtype
    causes.append("the float16 dtype, which overflows (try --set model.dtype=bfloat16)" if dtype == "float16"
                  else f"the dtype (model.dtype={dtype}; try float32)")  # fmt: skip
    return ", ".join(causes)


def edit(pipe, inputs: EditInputs, cfg: RelationConfig, on_step=None, prompts: PromptCache | None = None) -> np.ndarray:
    """Run the pipeline once; returns float32 ``HxWx3`` in [0, 1] at ``edit_sizes(...).output`` (the working
    size, or the query's own with ``infer.output_size: query``).

    Raises :class:`NonFiniteResult` when the latents of a step or the decoded image hold NaN or Inf.
    """
    import torch

    sizes = edit_sizes(cfg.infer, inputs.query.size, pipe.size_multiple, pipe.min_working_side)
    sizes.check(cfg.infer, cfg.data.max_image_pixels)
    width, height = sizes.working
    bad_steps: list[int] = []

    def callback(_pipe, i, _t, kwargs):
        if not bad_steps and not torch.isfinite(kwargs["latents"]).all():
            bad_steps.append(i)
        if on_step is not None:
            on_step()
        return {}

    text = {"prompt": inputs.prompt}
    with torch.inference_mode():
        if prompts is not None:
            text = prompts(inputs.prompt)
        result = pipe(
            image=inputs.query,
            exemplars=[inputs.pairs],
            **text,
            height=height,
            width=width,
            num_inference_steps=cfg.infer.steps,
            guidance_scale=cfg.infer.guidance,
            relation_scale=cfg.adapter.scale,
            generator=torch.Generator("cpu").manual_seed(cfg.infer.seed),
            max_sequence_length=cfg.infer.max_sequence_length,
            output_type="np",
            callback_on_step_end=callback,
        )
    image = result.images[0].astype(np.float32)
    if bad_steps or not np.isfinite(image).all():
        where = f"in the latents from step {bad_steps[0] + 1}" if bad_steps else "in the decoded image"
        raise NonFiniteResult(f"the result is not finite (NaN or Inf {where}); likely source: {likely_sources(cfg)}")
    return resize_result(image, sizes.output)


def default_output(query: Path) -> Path:
    """``outputs/<query>-edited.png``, numbered so an earlier result is never replaced."""
    candidate = DEFAULT_OUTPUT_DIR / f"{query.stem}-edited.png"
    n = 1
    while candidate.exists():
        candidate = DEFAULT_OUTPUT_DIR / f"{query.stem}-edited-{n}.png"
        n += 1
    return candidate


def config_path_for(output: Path) -> Path:
    """Where the resolved config of one output goes: ``edited.png`` -> ``edited.png.yaml``."""
    return output.with_name(output.name + ".yaml")


def _a_saved_config(path: Path) -> bool:
    """Whether ``path`` reads as a configuration relation saved (its sections, ``model`` and ``infer`` among
    them; an older version's keys allowed), not a user's own file."""
    try:
        tree = read_yaml(path)
    except RelationError:
        return False
    return {"model", "infer"} <= set(tree) <= set(RelationConfig.model_fields)


def check_single_output(output: Path, overwrite: bool, images: Sequence[Path] = ()) -> Path:
    """The output path of one edit (:func:`~relation_cli.images.check_output_path`) and the place of its saved
    config beside it (:func:`config_path_for`): a folder there, or a file relation did not save, is refused
    before any work (with ``--overwrite`` too), so a run never ends in a failed write or replaces a user's file;
    so is an output that is one of the edit's input ``images`` (the same file, by any path).

    Raises:
        RelationError: one line naming the path and what to do.
    """
    for image in images:
        if output.exists() and Path(image).exists() and os.path.samefile(output, image):
            raise RelationError(f"output '{output}': is an input of this edit ('{image}'); choose another output "
                                "name (--overwrite never replaces an input)")  # fmt: skip
    output = check_output_path(output, overwrite)
    beside = config_path_for(output)
    if beside.is_dir():
        raise RelationError(f"output '{output}': its settings go to '{beside}', which is a folder; move it or "
                            "choose another output name")  # fmt: skip
    if beside.exists() and not _a_saved_config(beside):
        raise RelationError(f"output '{output}': its settings go to '{beside}', a file relation did not write, "
                            "which the run would replace; move it or choose another output name")  # fmt: skip
    return output


def infer_single(cfg: RelationConfig, exemplars: PathPair | Sequence[PathPair], query: Path, output: Path | None) -> Path:
    """One edit of ``query`` with one exemplar pair or a list of k pairs; returns the output path.

    The output is never one of the inputs (``--overwrite`` or not) and, without ``infer.overwrite``, never replaces
    a file another command wrote at its name while this one worked: the result then takes the next free numbered
    name, with a note."""
    output = check_single_output(output or default_output(query), cfg.infer.overwrite, edit_images(exemplars, query))
    inputs = open_edit_inputs(cfg, exemplars, query, cfg.infer.prompt)
    from .model import load_pipeline, size_rules, truthful_config  # torch and diffusers load after the cheap checks
    from .progress import progress_bar

    sizes = edit_sizes(cfg.infer, inputs.query.size, *size_rules(cfg))
    sizes.check(cfg.infer, cfg.data.max_image_pixels)
    check_output_size(output, sizes.output)
    pipe = load_pipeline(cfg)  # an unfit model or adapter is refused before any note about the query
    print_note(DEMO_NOTE if _looks_like_a_photo(cfg, sizes) else None)
    print_note(sizes.note(cfg.infer))
    print_note(inputs.shape_note())
    with progress_bar("denoising", cfg.infer.steps) as advance:
        image = edit(pipe, inputs, cfg, on_step=advance)
    settings = config_text(truthful_config(cfg, pipe), made_from(exemplars, query))
    with staged_text(settings, config_path_for(output)) as place_settings:  # on disk before the image is written
        output = _save_unclobbered(image, output, cfg.infer.overwrite)
        place_settings(config_path_for(output))
    return output


def made_from(exemplars: PathPair | Sequence[PathPair], query: Path) -> list[str]:
    """The lines an output's saved config starts with: each input image, its absolute path and sha256."""
    images = edit_images(exemplars, query)
    labels = [label for pair in pair_labels(len(pair_list(exemplars))) for label in pair] + ["query"]
    return ["relation infer made this output from:"] + [
        f"  {label}: {path.resolve()} (sha256 {file_digest(path)})" for label, path in zip(labels, images)
    ]


def edit_images(exemplars: PathPair | Sequence[PathPair], query: Path) -> list[Path]:
    """The image paths of one edit: every exemplar pair's A and A', then the query."""
    return [Path(p) for pair in pair_list(exemplars) for p in pair] + [Path(query)]


def _save_unclobbered(image, output: Path, overwrite: bool) -> Path:
    """Save ``image`` at ``output``; without ``overwrite``, at the next free ``<stem>-<n><suffix>`` when another
    command wrote ``output`` since the start, with a note. Returns the path written."""
    if overwrite:
        return save_output(image, output)
    wanted, n = output, 1
    while True:
        try:
            if output == wanted or not config_path_for(output).exists():  # a numbered name's .yaml may be a user's
                save_output(image, output, exclusive=True)
                break
        except FileExistsError:
            pass
        output, n = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}"), n + 1
    if output != wanted:
        print_note(f"note: '{wanted}' was written by another command while this one worked; this result is '{output}'")
    return output


@dataclass
class BatchSummary:
    written: int
    skipped: int
    output_dir: Path
    failed: list[str] = field(default_factory=list)  # "row N: why", for rows that gave no image


def row_record(row: Row, digests: dict[Path, str | None], with_target: bool = False) -> dict:
    """What an output of batch infer was made from, as ``generation.json`` records it: the images' paths and,
    so that an image replaced under the same name is noticed, the sha256 of each one's bytes. ``digests``
    remembers each file's sha256 across the rows of one run (rows often share an exemplar pair).
    ``with_target`` adds the row's target and its sha256 (``target``, ``target_sha256``), as relation eval
    records its outputs; nothing for a row without one."""

    def digest(path: Path) -> str | None:
        if path not in digests:
            digests[path] = file_digest(path)
        return digests[path]

    images = [p.resolve() for pair in row.pairs for p in pair] + [row.source.resolve()]
    record = {"exemplars": [[str(a.resolve()), str(b.resolve())] for a, b in row.pairs],
              "source": str(row.source.resolve()), "text": row.text, "sha256": [digest(p) for p in images]}  # fmt: skip
    if with_target and row.target is not None:
        target = row.target.resolve()
        record |= {"target": str(target), "target_sha256": digest(target)}
    return record


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (:func:`relation_cli.evaluate.provenance.sha256_file`); None if it cannot be read."""
    from .evaluate.provenance import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


BATCH_REMEDY = "use another --output-dir, or --overwrite to make every row again (and delete the outputs of rows not in the file)"


def recorded_rows(cfg: RelationConfig, output_dir: Path) -> dict[str, dict] | None:
    """What ``generation.json`` records per output (None: no record, or one without rows), read once.

    Without infer.overwrite the recorded settings must be these (RelationError otherwise, and for an
    unreadable record); with it, an unreadable record counts as none, since every row is made again.
    """
    from .evaluate.settings import check_settings, read_settings

    if cfg.infer.overwrite:
        try:
            record = read_settings(output_dir)
        except RelationError:
            return None
    else:
        record = check_settings(output_dir, cfg, eval_keys=False, remedy=BATCH_REMEDY,
                                has_outputs=lambda r: bool(recorded_outputs(output_dir, _rows_of(r))))  # fmt: skip
    return _rows_of(record)


def _rows_of(record: dict | None) -> dict[str, dict] | None:
    rows = (record or {}).get("rows")
    return rows if isinstance(rows, dict) else None


def reusable_rows(cfg: RelationConfig, rows: list[Row], output_dir: Path, names: dict[int, str],
                  recorded: dict[str, dict] | None, digests: dict[Path, str | None]) -> dict[str, dict]:  # fmt: skip
    """The outputs already in ``output_dir`` made from the same row (``recorded``, from :func:`recorded_rows`);
    none with infer.overwrite.

    Refuses a folder holding a file under a row's output name that ``recorded`` does not hold (a file put
    there by hand is never overwritten unasked).
    """
    from .evaluate.settings import SETTINGS_FILE

    if cfg.infer.overwrite:
        return {}
    present = [names[r.index] for r in rows if (output_dir / names[r.index]).exists()]
    unrecorded = [name for name in present if recorded is None or name not in recorded]
    if unrecorded:  # not ours, or their record is gone: never overwritten unasked
        more = f" and {len(unrecorded) - 3} more" if len(unrecorded) > 3 else ""
        raise RelationError(f"output dir '{output_dir}' holds outputs ({', '.join(unrecorded[:3])}{more}) that no "
                            f"{SETTINGS_FILE} describes: delete them, {BATCH_REMEDY}")  # fmt: skip
    current = {names[r.index]: row_record(r, digests) for r in rows if names[r.index] in present}
    return {name: record for name, record in current.items() if recorded.get(name) == record}


_OUTPUT_NAME = re.compile(r"[0-9]{6}\.(png|jpg|webp|npy)")


def recorded_outputs(output_dir: Path, recorded: dict[str, dict] | None) -> dict[str, dict]:
    """The outputs of ``recorded`` that still exist. Only names batch infer writes (``000012.png``) count, so an
    edited record cannot name another file."""
    return {name: record for name, record in (recorded or {}).items()
            if _OUTPUT_NAME.fullmatch(name) and (output_dir / name).is_file()}  # fmt: skip


@dataclass
class BatchPlan:
    """What batch infer will do in ``output_dir``, from :func:`plan_batch`."""

    rows: list[Row]
    names: dict[int, str]  # row index -> output file name
    made: dict[str, dict]  # reused output name -> row_record
    others: dict[str, dict]  # recorded outputs not reused: rows beyond this file, old outputs of rows to make again
    todo: list[Row]
    query_sizes: dict[int, tuple[int, int]]  # row index -> (width, height) of each row to make
    digests: dict[Path, str | None]  # sha256 of every image hashed so far


def plan_batch(cfg: RelationConfig, input_file: Path, output_dir: Path, suffix: str = ".png") -> BatchPlan:
    """Every check batch infer makes before it loads a model (also ``relation infer --input --dry-run``):
    the rows parse, the folder takes outputs made with these settings, and the images of every row still
    to make decode. Reads and hashes files; writes nothing and imports no ML library.

    Raises:
        RelationError: a bad format, rows file, folder, recorded settings or image, in one line.
    """
    if suffix not in (".png", ".jpg", ".webp", ".npy"):
        raise RelationError(f"batch output format '{suffix}': use .png, .jpg, .webp or .npy")
    rows = parse_rows(input_file)
    if output_dir.exists() and not output_dir.is_dir():
        raise RelationError(f"output dir '{output_dir}': exists and is not a folder")
    check_not_busy(output_dir, "output dir")
    from .evaluate.settings import BATCH, check_own_folder

    check_writable(output_dir, "output dir")
    check_own_folder(output_dir, BATCH, lambda n: n == "config.yaml" or bool(_OUTPUT_NAME.fullmatch(n)),
                     "use a new or empty --output-dir")  # fmt: skip
    names = {r.index: f"{r.index:06d}{suffix}" for r in rows}
    _check_inputs_outside_outputs(rows, output_dir, input_file)
    digests: dict[Path, str | None] = {}
    recorded = recorded_rows(cfg, output_dir)
    made = reusable_rows(cfg, rows, output_dir, names, recorded, digests)
    todo = [r for r in rows if names[r.index] not in made]
    sizes = check_rows(cfg, input_file, todo)  # decode everything once before loading the model
    others = {name: record for name, record in recorded_outputs(output_dir, recorded).items() if name not in made}
    return BatchPlan(rows, names, made, others, todo, sizes, digests)


def _check_inputs_outside_outputs(rows: list[Row], output_dir: Path, input_file: Path) -> None:
    """RelationError when a row reads an image in ``output_dir`` under a batch output's name (``000012.png``):
    batch infer makes or deletes such files (``--overwrite``), so the row would lose its own input."""
    if not output_dir.is_dir():
        return
    folder = output_dir.resolve()
    for r in rows:
        named = [(label, p) for pair, labels in zip(r.pairs, row_labels(r)) for label, p in zip(labels, pair)]
        for label, path in [*named, ("source", r.source)]:
            if _OUTPUT_NAME.fullmatch(path.name) and path.resolve().parent == folder:
                raise RelationError(f"'{input_file}' {r.name} {label} '{path}': is an output of this --output-dir, "
                                    "which batch infer makes again or deletes; copy it elsewhere first, or use "
                                    "another --output-dir")  # fmt: skip


def infer_batch(cfg: RelationConfig, input_file: Path, output_dir: Path, suffix: str = ".png") -> BatchSummary:
    """One output per row, named by row number; an output made from the same row and settings is reused.

    ``generation.json`` in the folder records the settings and the row behind each output, each as soon as
    it is written (one line of ``.generation-rows.jsonl``, folded into ``generation.json`` when the run
    ends; a killed run's rerun keeps them); a row whose result is not finite is reported in ``failed`` and
    leaves no image. Outputs of rows beyond this file (an earlier, longer rows file) are
    kept and stay recorded; ``infer.overwrite`` deletes them and every current row's old output once the
    model has loaded, so the folder then holds this file's outputs only.

    Raises:
        RelationError: what :func:`plan_batch` refuses; a working size the base cannot take (explicit
            ``--width``/``--height``), before the model loads; a model the loader refuses; another command
            writing to the folder (checked before the model loads and again when writing starts).
    """
    from .evaluate.settings import generation_settings
    from .model import load_pipeline

    plan = plan_batch(cfg, input_file, output_dir, suffix)
    check_row_sizes(cfg, input_file, plan)
    if changed := [] if cfg.infer.overwrite else [r.name for r in plan.todo if plan.names[r.index] in plan.others]:
        print_note(f"note: {len(changed)} outputs in '{output_dir}' were made from other rows or images than the "
                   f"rows file's now ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}; changed since): "
                   "made again")  # fmt: skip
    settings = generation_settings(cfg, eval_keys=False)  # the weights as found before they load
    pipe = load_pipeline(cfg) if plan.todo else None  # a refused model or LoRA leaves the folder as it was
    with holding_folder(output_dir, "output dir"):  # a second batch into this folder stops before writing
        return _write_batch(cfg, pipe, plan, input_file, output_dir, settings)


def _write_batch(cfg: RelationConfig, pipe, plan: BatchPlan, input_file: Path, output_dir: Path,
                 settings: dict) -> BatchSummary:  # fmt: skip
    """The writing half of :func:`infer_batch`, with the folder's lock held."""
    from .evaluate.settings import record_settings
    from .model import truthful_config

    remove_stale_temps(output_dir / plan.names[r.index] for r in plan.todo)  # a killed run's, of outputs made now
    if cfg.infer.overwrite:
        for name in [*plan.others, *(plan.names[r.index] for r in plan.todo)]:
            (output_dir / name).unlink(missing_ok=True)
        made = {}
    else:  # the old outputs of rows made again stay recorded until replaced: an interrupted run loses nothing
        made = plan.made | plan.others
    if pipe is not None or not (output_dir / "config.yaml").is_file():  # nothing loaded: the saved one stays true
        save_config(truthful_config(cfg, pipe), output_dir / "config.yaml")
    record_settings(output_dir, cfg, eval_keys=False, rows=made, settings=settings)
    failed: list[str] = []
    try:
        _generate_rows(pipe, cfg, plan, input_file, output_dir, made, failed)
    finally:
        record_settings(output_dir, cfg, eval_keys=False, rows=made, settings=settings)
    return BatchSummary(len(plan.todo) - len(failed), len(plan.rows) - len(plan.todo), output_dir, failed)


def check_row_sizes(cfg: RelationConfig, input_file: Path, plan: BatchPlan) -> None:
    """Every row to make gets a working size the base takes (reads the base's configs, not its weights, and
    only for an explicit ``infer.width``/``infer.height``: an automatic size is always taken).

    Raises:
        RelationError: naming the rows file, the first row whose size is refused, and why.
    """
    if not (plan.todo and (cfg.infer.width or cfg.infer.height)):
        return  # an automatic size is always taken (EditSizes.check)
    from .model import size_rules

    rules = size_rules(cfg)
    for r in plan.todo:
        try:
            edit_sizes(cfg.infer, plan.query_sizes[r.index], *rules).check(cfg.infer, cfg.data.max_image_pixels)
        except RelationError as e:
            raise RelationError(f"'{input_file}' {r.name}: {e}") from None


def check_edit_size(cfg: RelationConfig, query_size: tuple[int, int], output: Path | None = None) -> None:
    """The working size of one edit of a ``query_size`` (width, height) query, and the size of its result in
    ``output``'s format, checked as :func:`infer_single` checks them before loading: only an explicit
    ``infer.width``/``infer.height`` can be refused, and a result over a JPEG or WebP side limit (both read the
    base's configs, not its weights)."""
    i = cfg.infer
    if i.width and i.height and i.width * i.height > cfg.data.max_image_pixels:
        return  # the configuration check says it (checks._size_problems)
    limited = output is not None and output.suffix.lower() in MAX_SIDE
    if i.width or i.height or limited:
        from .model import size_rules

        sizes = edit_sizes(cfg.infer, query_size, *size_rules(cfg))
        sizes.check(cfg.infer, cfg.data.max_image_pixels)
        if limited:
            check_output_size(output, sizes.output)


def check_rows(cfg: RelationConfig, input_file: Path, rows: list[Row]) -> dict[int, tuple[int, int]]:
    """Every image that ``rows`` of ``input_file`` name decodes; returns each row's query size (width, height).

    Raises:
        RelationError: one line naming the file and, for each bad row (the first 10), the row, the field and
            the image: ``'rows.jsonl': 2 rows cannot be used: row 2 source 'q.png': file not found; row 5 ...``.
    """
    problems, sizes = [], {}
    for r in rows:
        try:
            sizes[r.index] = _row_inputs(cfg, r, input_file, where="").query.size
        except RelationError as e:
            problems.append(str(e))
    if problems:
        raise several(problems, "row", head=f"'{input_file}'")
    return sizes


def _row_inputs(cfg: RelationConfig, r: Row, input_file: Path, where: str | None = None) -> EditInputs:
    """Open one row's images; a message names the rows file (or ``where``), the row and the field as the row
    spells it (``cond1``, ``cond2``, ``exemplars pair n A``/``A'``, ``source``)."""
    where = f"'{input_file}' " if where is None else where
    return open_edit_inputs(cfg, r.pairs, r.source, r.text, f"{where}{r.name} ", row_labels(r), "source")


def row_labels(r: Row) -> list[tuple[str, str]]:
    """A row's exemplar images as the row spells them: ``cond1``/``cond2`` or ``exemplars pair n A``/``A'``."""
    if r.exemplars:
        return [(f"exemplars pair {n} A", f"exemplars pair {n} A'") for n in range(1, len(r.exemplars) + 1)]
    return [("cond1", "cond2")]


def _generate_rows(pipe, cfg, plan: BatchPlan, input_file: Path, output_dir: Path, made: dict,
                   failed: list[str]) -> None:  # fmt: skip
    """Generate ``plan.todo``; each written output is recorded in ``made`` and at once on disk
    (:func:`~relation_cli.evaluate.settings.record_row`), each non-finite row goes to ``failed`` and leaves
    no output or record."""
    from .evaluate.settings import record_row
    from .model import size_rules
    from .progress import progress_bar

    if not plan.todo:
        return
    rules, demo_noted = size_rules(cfg), False
    prompts = PromptCache(pipe, cfg.infer.max_sequence_length)
    with progress_bar("rows", len(plan.todo)) as advance:
        for r in plan.todo:
            name = plan.names[r.index]
            inputs = _row_inputs(cfg, r, input_file)
            record = row_record(r, plan.digests)  # the inputs as read now, before anything is written
            sizes = edit_sizes(cfg.infer, inputs.query.size, *rules)
            note = sizes.note(cfg.infer)
            if _looks_like_a_photo(cfg, sizes) and not demo_noted:  # say what the model is
                print_note(DEMO_NOTE)
                demo_noted = True
            print_note(note and f"note: {r.name}: {note}")
            print_note((shape := inputs.shape_note()) and f"note: {r.name}: {shape.removeprefix('note: ')}")
            try:
                save_output(edit(pipe, inputs, cfg, prompts=prompts), output_dir / name)
                made[name] = record
            except NonFiniteResult as e:
                (output_dir / name).unlink(missing_ok=True)  # an older output of this row no longer describes it
                made.pop(name, None)
                failed.append(f"{r.name}: {e}")
            record_row(output_dir, name, made.get(name))  # a killed run keeps what it made
            advance()
