"""``relation ui``: a local web page (gradio) to try edits and browse ``relation eval`` results.

gradio is imported here only, when the page is built: ``relation --help`` stays fast and relation works
without the ``ui`` extra. The model is loaded once, before the page starts serving. Edits go through
gradio's queue one at a time; each request validates its own copy of the config, so one request's
settings never reach another's. Every check on the inputs is relation's own (``open_image`` through
:func:`relation_cli.infer.open_edit_inputs`, the config's validation, ``edit``'s non-finite check); a
failed check becomes a message in the page (``gr.Error``), never a traceback, and the server goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .config import RelationConfig, _format_errors, dump_config, save_config, with_absolute_sources
from .errors import RelationError, first_line

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
"""The repository's example images; absent from a wheel install, then the page has no examples."""
EXAMPLE_FILES = ("exemplar_before.png", "exemplar_after.png", "query.png")
SOURCES = ("upload", "clipboard")
IMAGE_BOX = {"height": 240, "elem_classes": "relation-image"}
CSS = ".relation-image img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}"
"""Small images (the demo works at 32x32) are enlarged to the box, every pixel a visible square."""
GRID_MAX_PIXELS = 10**9  # grids are relation eval's own PNGs, not user input


def require_gradio():
    """The gradio module. Raises RelationError naming the extra to install when it is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local tool
    try:
        import gradio
    except ImportError:
        raise RelationError("relation ui needs gradio: pip install 'relation[ui]'") from None
    return gradio


def host_warning(host: str) -> str | None:
    """The warning printed when the page listens on more than this machine's loopback interface."""
    if host in LOOPBACK_HOSTS:
        return None
    return (
        f"warning: --host {host}: the page is reachable by others on the network; anyone who reaches it can "
        "run edits on this machine and open eval folders on its disk"
    )


def check_port(host: str, port: int) -> None:
    """Refuse a host or port the page cannot listen on, before the model is loaded: an IPv6 address (gradio's
    launch cannot take one), a host name that does not resolve or an address this machine does not have
    (``--host``), a port taken or reserved (``--port``).

    Raises:
        RelationError: naming the option at fault and why.
    """
    if ":" in host or host.startswith("["):  # gradio's launch builds http://{host}:{port} unbracketed and fails
        raise RelationError(f"--host {host}: an IPv6 address, which the page's server (gradio) cannot be given; use "
                            "127.0.0.1 for this machine alone, 0.0.0.0 for every interface")  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except socket.gaierror as e:
            raise RelationError(f"--host {host}: not a host name or address this machine can resolve ({first_line(e)}); "
                                "127.0.0.1 serves this machine alone, 0.0.0.0 every interface") from None  # fmt: skip
        except OSError as e:
            why = first_line(e)
            if e.errno == errno.EADDRNOTAVAIL:
                raise RelationError(f"--host {host}: not an address of this machine ({why}); 127.0.0.1 serves this "
                                    "machine alone, 0.0.0.0 every interface") from None  # fmt: skip
            if e.errno == errno.EACCES:
                raise RelationError(f"--port {port} on {host}: not allowed ({why}); ports under 1024 need root, pick "
                                    "another --port") from None  # fmt: skip
            raise RelationError(f"--port {port} on {host}: cannot listen there ({why}); pick another --port") from None


# ------------------------------------------------------------------------------------------------ edits


@dataclass(frozen=True)
class Settings:
    """What the edit tab lets a person change for one request (config keys in brackets)."""

    prompt: str  # infer.prompt
    steps: int  # infer.steps
    guidance: float  # infer.guidance
    scale: float  # adapter.scale
    seed: int  # infer.seed
    max_area: int | None = None  # infer.max_area, the working size's pixel cap (None: the config's)


def request_config(cfg: RelationConfig, settings: Settings) -> RelationConfig:
    """A validated copy of ``cfg`` with one request's settings; ``cfg`` itself is never changed.

    Raises RelationError listing every setting the config refuses (e.g. steps 0).
    """
    from pydantic import ValidationError

    tree = cfg.model_dump()
    tree["infer"].update(prompt=settings.prompt, steps=settings.steps, guidance=settings.guidance, seed=settings.seed)
    tree["adapter"]["scale"] = settings.scale
    if settings.max_area is not None:
        tree["infer"]["max_area"] = settings.max_area
    try:
        return RelationConfig.model_validate(tree)
    except ValidationError as e:
        raise RelationError(_format_errors(e, "page settings")) from None


@dataclass(frozen=True)
class EditResult:
    image: np.ndarray  # float32 HxWx3 in [0, 1], at the working size
    config: RelationConfig  # the resolved config of this request, as infer would save it
    seconds: float  # wall time of the denoising, image decoding excluded


class Editor:
    """The pipeline ``cfg`` describes, loaded once and shared by every request of the page."""

    def __init__(self, cfg: RelationConfig, pipe=None):
        from .model import load_pipeline

        self.cfg = cfg
        self.pipe = pipe if pipe is not None else load_pipeline(cfg)
        self._lock = threading.Lock()  # the queue runs one edit at a time; this keeps it so for any caller

    def run(
        self, exemplar: tuple[str | None, str | None], query: str | None, settings: Settings, on_step=None
    ) -> EditResult:
        """One edit of the image files at ``exemplar`` (A, A') and ``query``.

        Raises RelationError for a missing or bad image, a refused setting or a non-finite result.
        """
        from .infer import edit, open_edit_inputs
        from .model import truthful_config

        cfg = request_config(self.cfg, settings)
        paths = [_given(p, role) for p, role in zip((*exemplar, query), ("exemplar A", "exemplar A'", "query"))]
        inputs = open_edit_inputs(cfg, (paths[0], paths[1]), paths[2], cfg.infer.prompt)
        with self._lock:
            start = time.perf_counter()
            image = edit(self.pipe, inputs, cfg, on_step=on_step)
            seconds = time.perf_counter() - start
        return EditResult(image, truthful_config(cfg, self.pipe), seconds)


def _given(path: str | None, role: str) -> Path:
    if not path:
        raise RelationError(f"{role}: no image given (upload one)")
    return Path(path)


def describe(result: EditResult) -> str:
    """One status line: time taken, working size and the settings that made the image."""
    h, w = result.image.shape[:2]
    c = result.config
    return (
        f"done in {result.seconds:.1f} s · {w}x{h} · {c.infer.steps} steps · guidance {c.infer.guidance:g} · "
        f"adapter scale {c.adapter.scale:g} · seed {c.infer.seed}"
    )


def save_request(result: EditResult, folder: Path) -> tuple[Path, Path]:
    """The output and its resolved config exactly as ``relation infer`` writes them: ``edited.png`` and
    ``edited.png.yaml``, in a new subfolder of ``folder``."""
    from .images import save_output
    from .infer import config_path_for

    image = save_output(result.image, Path(tempfile.mkdtemp(dir=folder)) / "edited.png")
    return image, save_config(result.config, config_path_for(image))


# ------------------------------------------------------------------------------------------------ eval results


@dataclass(frozen=True)
class EvalResults:
    """An eval output folder as the results tab shows it."""

    summary: tuple[list[str], list[list[str]]]  # header, rows (mean ± std per split and method)
    per_task: tuple[list[str], list[list[str]]]  # header, rows (as in per_task.csv)
    grids: list[tuple[Image.Image, str]]  # (grid image, split name)
    notes: list[str]


def read_eval(folder: str | Path) -> EvalResults:
    """Read ``relation eval``'s ``--output-dir``: metrics.json and grids/*.png. Raises RelationError."""
    from .evaluate.report import _number, notes_of, per_task, summary_rows
    from .images import open_image

    out = Path(folder).expanduser()
    metrics = out / "metrics.json"
    if not metrics.is_file():
        raise RelationError(f"eval folder '{out}': no metrics.json here (give the --output-dir of relation eval)")
    try:
        results = json.loads(metrics.read_text(encoding="utf-8"))
        summary = summary_rows(results)
        columns, rows = per_task(results["samples"])
        notes = notes_of(results)
    except (ValueError, KeyError, TypeError) as e:
        raise RelationError(f"eval folder '{out}': metrics.json is not relation eval's ({first_line(e)})") from None
    table = [[_number(r.get(c), c) for c in columns] for r in rows]
    grids = [(open_image(p, "grid", GRID_MAX_PIXELS, min_side=1), p.stem) for p in sorted(out.glob("grids/*.png"))]
    return EvalResults(summary, (columns, table), grids, notes)


# ------------------------------------------------------------------------------------------------ the page


def _in_page(fn):
    """Run ``fn``; a RelationError becomes the page's message, an unexpected error one line too (as the CLI's)."""
    gr = require_gradio()

    @functools.wraps(fn)  # gradio reads fn's signature (its gr.Progress argument) through the wrapper
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RelationError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug, not the user's input: still a message, and the server goes on
            debug = os.environ.get("RELATION_DEBUG", "") not in ("", "0")  # the traceback in the server's log
            why = f"{type(e).__name__}: {first_line(e)}"
            message = f"internal error: {why} (set RELATION_DEBUG=1 for the traceback)"
            raise gr.Error(message, print_exception=debug) from e

    return wrapped


def _file_path(payload) -> str | None:
    """The uploaded file's path from gradio's raw image payload (events run with ``preprocess=False``, so
    gradio never decodes the file and relation's own checks see it first)."""
    return payload.get("path") if isinstance(payload, dict) else payload


@contextlib.contextmanager
def _upload_names(*payloads) -> Iterator[None]:
    """Messages name an upload by its own file name, not by the path of gradio's copy on the server."""
    try:
        yield
    except RelationError as e:
        message = str(e)
        for p in payloads:
            if isinstance(p, dict) and p.get("path") and p.get("orig_name"):
                message = message.replace(f"'{p['path']}'", f"'{p['orig_name']}'")
        raise RelationError(message) from None


CACHE_LIFETIME = (3600, 86400)
"""gradio's ``delete_cache`` of the page (seconds): every hour, the uploads and results older than a day."""


def build_page(editor: Editor, files: Path):
    """The gradio Blocks: an edit tab and a results tab. ``files``: folder for the per-request YAML."""
    gr = require_gradio()
    cfg = editor.cfg
    # gradio keeps every uploaded image and shown result in its cache folder: older than a day, they go
    # (checked hourly; gradio's delete_cache), and all of them when the server stops
    with gr.Blocks(title="relation", delete_cache=CACHE_LIFETIME) as page:
        gr.Markdown(f"## relation · `{cfg.model.base}`  \nEdit the query B the way the exemplar pair A → A' shows.")
        with gr.Tab("Edit"):
            _edit_tab(gr, editor, files)
        with gr.Tab("Results"):
            _results_tab(gr, cfg)
    return page


def _edit_tab(gr, editor: Editor, files: Path) -> None:
    infer, adapter = editor.cfg.infer, editor.cfg.adapter
    with gr.Row():
        a = gr.Image(type="filepath", label="exemplar A (before)", elem_id="exemplar_a", sources=SOURCES, **IMAGE_BOX)
        b = gr.Image(type="filepath", label="exemplar A' (after)", elem_id="exemplar_b", sources=SOURCES, **IMAGE_BOX)
        q = gr.Image(type="filepath", label="query B", elem_id="query", sources=SOURCES, **IMAGE_BOX)
        out = gr.Image(label="B' (output)", format="png", interactive=False, elem_id="output", **IMAGE_BOX)
    prompt = gr.Textbox(infer.prompt, label="prompt (optional)")
    with gr.Row():
        steps = gr.Slider(1, max(50, infer.steps), infer.steps, step=1, label="steps (infer.steps)")
        guidance = gr.Slider(0, max(10.0, infer.guidance), infer.guidance, step=0.1, label="guidance (infer.guidance)")
        scale = gr.Slider(0, max(2.0, adapter.scale), adapter.scale, step=0.05, label="adapter scale (adapter.scale)")
        seed = gr.Number(infer.seed, precision=0, minimum=0, label="seed (infer.seed)")
        max_area = gr.Number(infer.max_area, precision=0, label="working size: most pixels (infer.max_area)")
    run = gr.Button("Run", variant="primary", elem_id="run")
    status = gr.Textbox(label="status", interactive=False, elem_id="status")
    with gr.Accordion("resolved settings (the YAML relation infer writes beside its output)", open=False):
        settings_yaml = gr.Code(language="yaml", interactive=False)
        settings_file = gr.File(label="download", interactive=False)
    if all((EXAMPLES_DIR / name).is_file() for name in EXAMPLE_FILES):
        example = [str(EXAMPLES_DIR / name) for name in EXAMPLE_FILES]
        gr.Examples([example], inputs=[a, b, q], label="examples", elem_id="examples")

    def on_run(a, b, q, prompt, steps, guidance, scale, seed, max_area, progress=gr.Progress()):
        seed = int(seed) if seed is not None else -1  # an empty seed box: refused by the config's check
        area = int(max_area) if max_area is not None else None
        settings = Settings(prompt or "", int(steps), float(guidance), float(scale), seed, area)
        progress(0, desc="denoising")
        done = iter(range(1, settings.steps + 1))
        with _upload_names(a, b, q):
            result = editor.run(
                (_file_path(a), _file_path(b)), _file_path(q), settings,
                on_step=lambda: progress(next(done, settings.steps) / settings.steps, desc="denoising"),
            )  # fmt: skip
        image, settings_file = save_request(result, files)
        return str(image), describe(result), dump_config(with_absolute_sources(result.config)), str(settings_file)

    run.click(
        _in_page(on_run), [a, b, q, prompt, steps, guidance, scale, seed, max_area], [out, status, settings_yaml, settings_file],
        preprocess=False, api_name="edit",
    )  # fmt: skip


def _results_tab(gr, cfg: RelationConfig) -> None:
    with gr.Row():
        folder = gr.Textbox(cfg.eval.output_dir, label="eval output folder (relation eval --output-dir)", scale=4)
        open_button = gr.Button("Open", scale=1)
    notes = gr.Markdown()
    summary = gr.Dataframe(label="summary: mean ± std per split and method", interactive=False)
    per_task = gr.Dataframe(label="per task (per_task.csv)", interactive=False)
    grids = gr.Gallery(label="grids", columns=1, object_fit="contain", height="auto", format="png")

    def on_open(folder):
        results = read_eval(folder)
        tables = [{"headers": header, "data": rows} for header, rows in (results.summary, results.per_task)]
        return *tables, results.grids, "\n".join(f"note: {n}  " for n in results.notes)

    open_button.click(_in_page(on_open), [folder], [summary, per_task, grids, notes], api_name="results")


def serve(cfg: RelationConfig, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Load the model once and serve the page at ``http://host:port`` until Ctrl+C; a host other than this
    machine's loopback is warned about (:func:`host_warning`) once the port is known to be free.

    ``block=False`` returns the running gradio Blocks at once (tests; ``.close()`` stops it). Raises RelationError
    when gradio is missing or the port is taken, before the model is loaded.
    """
    require_gradio()
    check_port(host, port)  # a host or port it cannot listen on is refused before the warning about exposure
    if (warning := host_warning(host)) is not None:
        print(warning, file=sys.stderr)
    editor = Editor(cfg)
    files = Path(tempfile.mkdtemp(prefix="relation-ui-"))
    page = build_page(editor, files).queue(default_concurrency_limit=1)
    atexit.register(shutil.rmtree, files, ignore_errors=True)  # the per-request files go with the process
    examples = [str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else []
    page.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, allowed_paths=examples, quiet=True, css=CSS
    )
    if block:
        print(f"relation ui: serving http://{host}:{port} (Ctrl+C stops it)", flush=True)
        page.block_thread()
    return page
