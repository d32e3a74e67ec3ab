"""The ``relation`` command line: parse a few options, resolve the config, call one core function.

Known errors become one line on stderr and exit status 1 (``RELATION_DEBUG=1`` shows the traceback).
Nothing heavy is imported at module level, so ``relation --help`` is fast, and every command runs its
cheap checks (options, files, :func:`~relation_cli.checks.check_config`) before torch is imported.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Optional

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from .config import DEMO_DEFAULTS, SEED_MAX, RelationConfig, describe_fields, dump_config, load_config, read_yaml
from .errors import RelationError, Stopped, counted, first_line
from .fs import full_disk
from .runs import refuse_run_config, run_settings

class RelationGroup(TyperGroup):
    """The ``relation`` group: its ``--help`` and ``--version`` show as flags too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "is_flag", False):
                _as_flag(param)

    def get_help_option(self, ctx: Any) -> Any:
        return _as_flag(super().get_help_option(ctx))


def _as_flag(option):
    if option is not None:
        option.metavar = ""  # Typer would show "<bool>" beside a flag that takes no value
    return option


app = typer.Typer(
    name="relation",
    cls=RelationGroup,
    help="Exemplar-based image editing with RelationAdapter on FLUX: prepare data, train, infer, evaluate.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _show_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"relation {__version__}")
        raise typer.Exit()


@app.callback()
def _group(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Show relation's version and exit.")
    ] = False,
) -> None:
    """Options of ``relation`` itself (before a command)."""


PAIRED = ("exemplar",)
"""Options that take two values each time they are given (``--exemplar A A'``)."""

MODEL_SOURCES = ("model", "image_encoder")
"""Options that name one model, a hub id or a folder (typed ``str``, not ``Path``): refused when repeated."""


class RelationCommand(TyperCommand):
    """A Typer command whose flags show as flags and whose ``PAIRED`` options take two values per use.

    Typer cannot declare ``list[tuple[Path, Path]]`` ("List types with complex sub-types are not
    currently supported"), so a paired option is declared as ``list[Path]`` and becomes click's
    ``nargs=2, multiple=True`` here: ``--exemplar A A'`` gives one pair, and a third path is an
    unexpected extra argument instead of a silent third image.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.name in PAIRED:
                param.nargs, param.__class__ = 2, PairOption
            if getattr(param, "is_flag", False):
                _as_flag(param)

    def get_help_option(self, ctx: Any) -> Any:
        return _as_flag(super().get_help_option(ctx))

    def make_parser(self, ctx: Any) -> Any:
        """Click's parser, refusing an option that names one file or folder (a ``Path``) or model
        (:data:`MODEL_SOURCES`) given twice: a second ``--query`` is not a second edit, a second ``--config``
        is not merged. Other options keep click's
        (and most tools') rule, the last value wins, so ``relation infer --steps 8 ... --steps 4`` is 4."""
        from typing import get_args, get_type_hints

        hints = get_type_hints(self.callback, include_extras=True) if self.callback else {}
        declared = {name: get_args(hint)[0] if hasattr(hint, "__metadata__") else hint for name, hint in hints.items()}
        files = {name for name, kind in declared.items() if kind is Path or Path in get_args(kind)} | set(MODEL_SOURCES)
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_once(args: list[str]) -> Any:
            opts, rest, order = parse(args=args)  # order: each option as often as it was given
            named = [p for p in order if p.name in files and p.param_type_name == "option" and not p.multiple]
            for param in dict.fromkeys(named):
                if (times := named.count(param)) > 1:
                    raise RepeatedOption(f"{max(param.opts, key=len)} was given {times} times; give it once", ctx, param)
            return opts, rest, order

        parser.parse_args = parse_once
        return parser


class RepeatedOption(typer.BadParameter):
    """A usage error whose message is said as it is (not as click's "Invalid value for ...")."""

    def format_message(self) -> str:
        return self.message


class PairOption(TyperOption):
    """``--exemplar A A'`` (repeatable): a list of ``(Path, Path)``, or None when not given."""

    def process_value(self, ctx: Any, value: Any) -> Any:
        for pair in value or ():
            if pair[0].startswith("-") and len(pair[0]) > 1 and not Path(pair[0]).exists():  # the next option taken as A
                raise typer.BadParameter(f"takes exactly 2 images (A and A'), got none before {pair[0]}", ctx, self)
            if pair[1].startswith("--"):  # click took the next option as the second image
                raise typer.BadParameter(f"takes exactly 2 images (A and A'), got 1 before {pair[1]}", ctx, self)
        pairs = [(Path(a), Path(b)) for a, b in value or ()]
        return pairs or None


def key_help(key: str, text: str) -> str:
    """Help of an option that sets config ``key``: ``text``, the key, its choices and default (the demo's too)."""
    from typing import get_args, get_origin

    section, name = key.split(".")
    field = RelationConfig.model_fields[section].annotation.model_fields[name]
    parts = [key]
    if get_origin(field.annotation) is Literal:
        parts.append("one of " + ", ".join(map(str, get_args(field.annotation))))
    default = field.get_default(call_default_factory=True)
    if not (default is None or default is False or default in ("", [])):  # 0 is a default to show (0 == False)
        parts.append(f"default {default}")
    demo = DEMO_SETTINGS.get(section, {}).get(name)
    if demo is not None:
        parts.append(f"demo model {demo}")
    return f"{text.rstrip('.')} ({'; '.join(parts)})."


DEMO_SETTINGS = read_yaml(DEMO_DEFAULTS) if DEMO_DEFAULTS.is_file() else {}

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/); options override it.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Set a config key, e.g. infer.steps=8 (repeatable; "
                 "see relation config)."),
]  # fmt: skip
ModelOpt = Annotated[
    Optional[str], typer.Option("--model", help=key_help("model.base", "FLUX base: hub id or diffusers folder."))
]
ImageEncoderOpt = Annotated[
    Optional[str], typer.Option("--image-encoder", help=key_help("model.image_encoder", "SigLIP: hub id or folder."))
]
AdapterOpt = Annotated[
    Optional[Path],
    typer.Option("--adapter", help=key_help("adapter.path", "Released ip_adapter-*.bin or relation adapter folder.")),
]
LoraOpt = Annotated[
    Optional[list[str]],
    typer.Option("--lora", metavar="PATH[:W]", help=key_help("lora.paths", "LoRA file or folder, weight W "
                 "(default 1); repeatable.")),
]
RunOpt = Annotated[
    Optional[Path],
    typer.Option("--run", metavar="DIR", help="A finished run folder: its model and infer settings."),
]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help=key_help("model.device", "auto, cpu, cuda, cuda:N or mps."))
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Never contact the model hub: local folders and cached hub ids only "
                       "(model.local_files_only)."),
]  # fmt: skip
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Check options, files and settings, then stop; nothing loads.")
]
MemoryOpt = Annotated[
    Optional[Literal["none", "model_offload", "sequential_offload", "group_offload", "fp8_storage"]],
    typer.Option(metavar="MODE", help=key_help("model.memory", "Memory mode for small GPUs.")),
]
StepsOpt = Annotated[Optional[int], typer.Option(help=key_help("infer.steps", "Denoising steps."))]


def model_flags(model: str | None, image_encoder: str | None, adapter: Path | None, lora: list[str] | None,
                device: str | None, offline: bool = False) -> dict:  # fmt: skip
    """The shared model options as config keys (None = not given)."""
    return {
        "model.base": model, "model.image_encoder": image_encoder, "adapter.path": str(adapter) if adapter else None,
        "lora.paths": list(lora) if lora else None, "model.device": device,
        "model.local_files_only": True if offline else None,
    }  # fmt: skip


def debug() -> bool:
    return os.environ.get("RELATION_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class MissingInputs(RelationError):
    """A command given none of its inputs: its usage line is shown above the error."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


def before_loading(cfg: RelationConfig, command: str, *input_checks: Callable[[], object]) -> None:
    """Everything that needs no weights, then the hub decision, then quiet libraries: just before loading.

    When the configuration has problems, ``input_checks`` (each raises RelationError; the run makes them
    again later) run too, so the message lists the inputs' problems with them, as ``--dry-run``'s does.
    """
    from .hub import settle_hub
    from .progress import quiet_libraries

    quiet_libraries()
    check_everything(cfg, command, *input_checks, inputs_too=False)
    settle_hub(cfg, command)


def check_everything(cfg: RelationConfig, command: str, *input_checks: Callable[[], object], inputs_too: bool = True) -> None:
    """The configuration's problems and the inputs' (``input_checks``, each raising RelationError) in one
    RelationError. ``inputs_too=False``: the inputs are checked only when the configuration has problems.
    An input problem about a file (``... 'PATH': why``) that a configuration problem names, or one said
    already, is said once."""
    from .checks import config_problems, raise_problems
    from .progress import quiet_libraries

    quiet_libraries()  # an input check may import torch (train's): no library warnings on the way

    problems = config_problems(cfg, command)
    ours = len(problems)
    for check in input_checks if (problems or inputs_too) else ():
        try:
            check()
        except RelationError as e:
            named = re.search(r"'(.+?)': ", str(e))  # the file it names: 'PATH': (a path may hold an apostrophe)
            if str(e) not in problems and not (named and any(f"'{named.group(1)}'" in p for p in problems[:ours])):
                problems.append(str(e))
    raise_problems(problems, "the configuration and its inputs" if len(problems) > ours else "the configuration")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn known errors into one line + exit 1; unexpected ones into one line pointing at RELATION_DEBUG."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except RelationError as e:
        if debug():
            raise
        if isinstance(e, MissingInputs):
            typer.echo(e.usage, err=True)
        raise fail(str(e)) from None
    except Stopped:
        if debug():
            raise
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        if debug():
            raise
        raise fail("interrupted", 130) from None
    except Exception as e:  # a bug, not a user mistake: still one line, with the way to see more
        if debug():
            raise
        if full_disk(e):  # a user's situation, said in one line, not an internal error
            where = f" (writing '{e.filename}')" if getattr(e, "filename", None) else ""
            raise fail(f"no space left on the disk{where}; free some space or write elsewhere, then run again") from None
        why = f"{type(e).__name__}: {first_line(e)}"
        raise fail(f"internal error: {why} (set RELATION_DEBUG=1 for the traceback)") from None


# ------------------------------------------------------------------------------------------------ infer

ExemplarOpt = Annotated[
    Optional[list[Path]],
    typer.Option(metavar="A A'", help="The images before and after the edit; repeat for k pairs."),
]


INFER_USAGE = "--exemplar A A' --query B [OPTIONS]"


@app.command(cls=RelationCommand, options_metavar=INFER_USAGE)
def infer(
    exemplar: ExemplarOpt = None,
    query: Annotated[Optional[Path], typer.Option(metavar="B", help="The image to edit the same way.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help=key_help("infer.prompt", "Text instruction for the edit."))] = None,
    output_name: Annotated[
        Optional[str],
        typer.Option("--output", "-o", metavar="PATH", help=".png, .jpg, .webp or .npy (float32 HxWx3) "
                     "(default outputs/<query>-edited.png)."),
    ] = None,
    input_file: Annotated[
        Optional[Path], typer.Option("--input", help="Batch mode: a run-ready jsonl of rows.")
    ] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Batch mode: folder for one output per row.")] = None,
    seed: Annotated[Optional[int], typer.Option(help=key_help("infer.seed", "Random seed."))] = None,
    steps: StepsOpt = None,
    guidance: Annotated[Optional[float], typer.Option(help=key_help("infer.guidance", "FLUX guidance embedding."))] = None,
    scale: Annotated[Optional[float], typer.Option(help=key_help("adapter.scale", "Adapter strength, 0 = off."))] = None,
    width: Annotated[Optional[int], typer.Option(min=8, metavar="PX", help=key_help("infer.width", "Working width; "
                     "alone, the height follows the query's aspect ratio; FLUX.2 \\[klein]: 64 or more."))] = None,
    height: Annotated[Optional[int], typer.Option(min=8, metavar="PX", help=key_help("infer.height", "Height; klein needs 64+."))] = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    memory: MemoryOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (all rows too).")] = False,
    offline: OfflineOpt = False,
    dry_run: DryRunOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Edit the query image B the way the exemplar pair A -> A' shows.

    Example: relation infer --exemplar examples/exemplar_before.png examples/exemplar_after.png --query examples/query.png
    """
    with user_errors():
        output = _output_file(output_name)
        flags = {
            "infer.prompt": prompt, "infer.seed": seed, "infer.steps": steps, "infer.guidance": guidance,
            "adapter.scale": scale, "model.memory": memory, "infer.overwrite": True if overwrite else None,
            "infer.width": width, "infer.height": height,
            **model_flags(model, image_encoder, adapter, lora, device, offline),
        }  # fmt: skip
        cfg = _config_with_run(config, overrides, flags, run)
        if input_file is not None:
            if exemplar or query or output:
                raise RelationError("--input (batch mode) cannot be combined with --exemplar, --query or --output")
            if output_dir is None:
                raise RelationError("--input needs --output-dir")
            return _infer_batch(cfg, input_file, output_dir, dry_run)
        if output_dir is not None:
            raise RelationError("--output-dir goes with --input (batch mode); one edit is written to --output FILE")
        pair = _one_pair(exemplar, query)
        from . import infer as core

        check_inputs = lambda: _check_edit_inputs(cfg, pair, query, output)  # noqa: E731
        if dry_run:
            return _dry_run(cfg, "infer", check_inputs)
        before_loading(cfg, "infer", check_inputs)
        written = core.infer_single(cfg, pair, query, output)
        typer.echo(f"wrote {written}")


def _config_with_run(config: Path | None, overrides: list[str] | None, flags: dict, run: Path | None) -> RelationConfig:
    """The resolved config over ``--run``'s settings (:func:`~relation_cli.runs.run_settings`), refused when
    ``--config`` is the run's own; a note when the user's LoRAs replace those the run's adapter trained on."""
    under = run_settings(run) if run else None
    theirs = [(f["path"], f["weight"]) for f in (under or {}).get("lora", {}).get("paths", [])]
    cfg = load_config(config, overrides, flags, under=under)  # (merges the user's settings into ``under``)
    refuse_run_config(cfg, config)
    if not theirs:
        return cfg
    listed = ", ".join(f"{path}:{weight:g}" for path, weight in theirs)
    same = sorted((_lora_file(f.path), f.weight) for f in cfg.lora.paths) == sorted((_lora_file(p), w) for p, w in theirs)
    change = (f"lora.paths replaces the LoRAs of run '{run}' ({listed})" if not same else
              f"lora.scale {cfg.lora.scale:g} scales the LoRAs of run '{run}' ({listed})" if cfg.lora.scale != 1 else None)  # fmt: skip
    if change:
        from .progress import console

        console.print(f"note: {change}; the run's adapter was trained together with them as they were", markup=False,
                      highlight=False)  # fmt: skip
    return cfg


def _lora_file(path: str) -> Path:
    """A LoRA path as one file, resolved, to compare."""
    from .checks import lora_file

    return lora_file(path).resolve()


def _output_file(value: str | None) -> Path | None:
    """``-o``'s value as a path (kept as typed: ``Path`` would drop a trailing separator).

    Raises:
        RelationError: an empty value, or one ending in a separator (it names a folder, not a file).
    """
    if value is None:
        return None
    if not value.strip():
        raise RelationError("--output is empty; give an image file name, e.g. 'edited.png'")
    if value.endswith(("/", os.sep)):
        raise RelationError(f"output '{value}': ends with '{value[-1]}', so it names a folder; give an image file name, "
                            f"e.g. '{Path(value) / 'edited.png'}'")  # fmt: skip
    return Path(value)


def _one_pair(exemplar: list[tuple[Path, Path]] | None, query: Path | None):
    """The exemplar pair, or the list of k pairs (``--exemplar`` repeated), after the usage checks."""
    if not exemplar and query is None:
        raise MissingInputs("give the exemplar pair and the query: --exemplar A A' --query B (or --input ROWS.jsonl "
                            "--output-dir DIR); relation infer --help lists every option", f"Usage: relation infer {INFER_USAGE}")  # fmt: skip
    if not exemplar:
        raise RelationError("--exemplar is required: the image before and the image after the edit (--exemplar A A')")
    if query is None:
        raise RelationError("--query is required (the image to edit)")
    return exemplar[0] if len(exemplar) == 1 else exemplar


def _check_edit_inputs(cfg: RelationConfig, pair: tuple[Path, Path], query: Path, output: Path | None) -> None:
    """What ``infer_single`` checks before it loads the model: the output path, that every image decodes, an
    explicit working size and the result's size in a JPEG or WebP output."""
    from .infer import check_edit_size, check_single_output, default_output, edit_images, open_edit_inputs

    output = check_single_output(output or default_output(query), cfg.infer.overwrite, edit_images(pair, query))
    inputs = open_edit_inputs(cfg, pair, query, cfg.infer.prompt)
    check_edit_size(cfg, inputs.query.size, output)


def _check_eval_folder(cfg: RelationConfig) -> None:
    """The eval output folder is eval's own or new (:func:`relation_cli.evaluate.plan.check_output_folder`)."""
    from .evaluate.plan import check_output_folder

    check_output_folder(Path(cfg.eval.output_dir))


def _check_eval_rows(cfg: RelationConfig) -> None:
    from .evaluate.plan import check_rows

    check_rows(cfg)


def _infer_batch(cfg: RelationConfig, input_file: Path, output_dir: Path, dry_run: bool) -> None:
    from . import infer as core

    check_inputs = lambda: core.check_row_sizes(cfg, input_file, core.plan_batch(cfg, input_file, output_dir))  # noqa: E731
    if dry_run:
        return _dry_run(cfg, "infer", check_inputs)
    before_loading(cfg, "infer", check_inputs)
    report_batch(core.infer_batch(cfg, input_file, output_dir))


def _dry_run(cfg: RelationConfig, command: str, *input_checks: Callable[[], object]) -> None:
    """``--dry-run``: every cheap check (:func:`check_everything`), then one line; nothing loads."""
    check_everything(cfg, command, *input_checks)
    typer.echo(f"dry run: the {command} configuration and its files are fine; nothing was loaded")


def report_batch(summary) -> None:
    """What batch infer wrote; rows that gave no image are listed and make the exit status 1."""
    typer.echo(f"wrote {counted(summary.written, 'image')} to {summary.output_dir} ({summary.skipped} already there)")
    for failure in summary.failed:
        typer.echo(f"  {failure}", err=True)
    if summary.failed:
        raise RelationError(f"{counted(len(summary.failed), 'row')} gave no image (listed above)")


# ------------------------------------------------------------------------------------------------ ui


@app.command(cls=RelationCommand)
def ui(
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 makes the page reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the page (1-65535).")] = 7860,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    memory: MemoryOpt = None,
    offline: OfflineOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Try edits in a local web page, and browse relation eval results (needs pip install 'relation\\[ui]').

    relation ui [--model DIR --adapter DIR | --run runs/x] [--port 7860]
    """
    from .progress import quiet_libraries

    with user_errors():
        flags = {"model.memory": memory, **model_flags(model, image_encoder, adapter, lora, device, offline)}
        cfg = _config_with_run(config, overrides, flags, run)
        before_loading(cfg, "ui")
        quiet_libraries()
        from . import ui as core

        core.serve(cfg, host, port)


# ------------------------------------------------------------------------------------------------ convert


@app.command(cls=RelationCommand)
def convert(
    source: Annotated[Path, typer.Argument(help="The authors' ip_adapter-*.bin (a torch pickle).")],
    destination: Annotated[Path, typer.Argument(help="New folder for relation's safetensors format.")],
    head_dim: Annotated[
        int, typer.Option(min=1, help="attention_head_dim of the transformer the adapter belongs to (FLUX.1-dev: 128).")
    ] = 128,
) -> None:
    """Convert the released adapter pickle to safetensors (read with weights_only=True, never executed).

    Example: relation convert ip_adapter-100000.bin weights/relation-adapter
    """
    from .checks import check_released_file
    from .fs import check_new_dir
    from .progress import quiet_libraries

    with user_errors():
        check_released_file(source)  # the file and the destination are answered before torch is imported
        check_new_dir(destination)
        quiet_libraries()
        from .progress import console
        from .weights import convert_released

        def say(line: str) -> None:
            console.print(f"{line} ...", markup=False, highlight=False)

        typer.echo(f"wrote {convert_released(source, destination, head_dim, say)}")


@app.command(name="init-model", cls=RelationCommand)
def init_model(
    destination: Annotated[Path, typer.Argument(help="New folder: base/ (FLUX layout), image_encoder/, adapter/.")],
    spec: Annotated[
        Optional[Path], typer.Option(help="YAML file of architecture sizes (see configs/arch/demo.yaml).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the random initialisation.")] = 0,
    kontext: Annotated[
        bool, typer.Option("--kontext", help="Save base/ in FLUX.1 Kontext's layout (FluxKontextPipeline; spec key kontext).")
    ] = False,
    klein: Annotated[
        bool,
        typer.Option("--klein", help="Build a FLUX.2 \\[klein] architecture (Qwen3 text encoder, Flux2KleinPipeline "
                     "layout; spec key base: flux2-klein)."),
    ] = False,
) -> None:
    """Create a small randomly initialised FLUX-architecture model, offline (for tests and the demo).

    Example: relation init-model build/demo/init --spec configs/arch/demo.yaml --seed 0
    """
    from pydantic import ValidationError

    from .arch import ArchSpec
    from .config import read_yaml
    from .fs import check_new_dir
    from .progress import quiet_libraries, working

    with user_errors():
        try:  # the spec and the destination are answered before torch and diffusers are imported
            flags = {**({"kontext": True} if kontext else {}), **({"base": "flux2-klein"} if klein else {})}
            arch = ArchSpec.model_validate({**(read_yaml(spec, "spec") if spec else {}), **flags})
        except ValidationError as e:
            raise RelationError((f"spec '{spec}': " if spec else "init-model: ") + spec_problems(e)) from None
        check_new_dir(destination)
        from huggingface_hub.errors import StrictDataclassError

        quiet_libraries()
        from .tiny import init_model as core_init

        try:
            with working(f"building and writing {destination}"):
                written = core_init(destination, arch, seed)
        except (ValueError, IndexError, StrictDataclassError) as e:  # sizes the libraries refuse, said by them
            why = first_line(e.__cause__ if isinstance(e, StrictDataclassError) and e.__cause__ else e)
            raise RelationError((f"spec '{spec}': " if spec else "init-model: ") + f"the sizes do not fit together "
                                f"({why}); nothing was written") from None  # fmt: skip
        typer.echo(f"wrote {written}")


def spec_problems(error: Any) -> str:
    """A spec's pydantic ``ValidationError`` in the config loader's words: ``key: why`` joined by "; ", an
    unknown key said so, pydantic's "Value error, " left out."""
    def one(x: dict) -> str:
        where = ".".join(map(str, x["loc"]))
        why = "unknown key" if x["type"] == "extra_forbidden" else x["msg"].removeprefix("Value error, ")
        return f"{where}: {why}" if where else why

    return "; ".join(one(x) for x in error.errors())


# ------------------------------------------------------------------------------------------------ data, train, eval


@app.command(cls=RelationCommand)
def prepare(
    input_path: Annotated[
        Optional[Path],
        typer.Argument(metavar="INPUT", help="A Relation252K folder (<task>/Group1/labels.json), or a .jsonl/.json "
                       "file of entries: edit_instruction (required), img_name (a side-by-side before|after image) or source + "
                       "target, and task (optional; default: the image's folder)."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the splits, images and manifest.")] = ...,
    synthetic: Annotated[
        Optional[int],
        typer.Option(metavar="N", help=key_help("data.synthetic_pairs", "Instead of INPUT, generate the synthetic "
                     "relation set: N pairs per task, 14 tasks.")),
    ] = None,
    per_task_cap: Annotated[Optional[int], typer.Option(help=key_help("data.per_task_cap", "Most samples per task."))] = None,
    unseen_tasks: Annotated[
        Optional[int], typer.Option(help=key_help("data.unseen_tasks", "Whole tasks held out for test_unseen."))
    ] = None,
    unseen_task: Annotated[
        Optional[list[str]],
        typer.Option(metavar="NAME", help="Hold out this task (repeatable; data.unseen_task_names)."),
    ] = None,
    test_per_task: Annotated[
        Optional[int], typer.Option(help=key_help("data.test_per_task", "test_seen samples per seen task."))
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help=key_help("data.seed", "Seed of pairing, splits and scenes."))] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Leave invalid entries out (see OUTPUT/skipped.jsonl) instead of failing.")
    ] = False,
    workers: Annotated[Optional[int], typer.Option(help=key_help("data.workers", "Decoding processes; 0 = min(4, CPUs)."))] = None,
    offline: OfflineOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Turn paired edits into validated, leak-free analogy samples: train / test_seen / test_unseen.

    Example: relation prepare --synthetic 40 --output data/synthetic --unseen-task flip_vertical
    """
    with user_errors():
        flags = {
            "data.synthetic_pairs": synthetic, "data.per_task_cap": per_task_cap, "data.unseen_tasks": unseen_tasks,
            "data.unseen_task_names": unseen_task or None, "data.test_per_task": test_per_task, "data.seed": seed,
            "data.skip_invalid": True if skip_invalid else None, "data.workers": workers,
            "model.local_files_only": True if offline else None,
        }  # fmt: skip
        cfg = load_config(config, overrides, flags)
        from .prepare import DatasetProblems
        from .prepare import prepare as core_prepare

        try:
            summary = core_prepare(cfg, input_path, output)
        except DatasetProblems as e:
            for line in e.listing():
                typer.echo(f"  {line}", err=True)
            raise
        counts = ", ".join(f"{split} {n}" for split, n in summary.samples.items())
        pairs, tasks = counted(summary.pairs, "pair"), counted(summary.tasks, "task")
        typer.echo(f"wrote {summary.output}: {pairs} in {tasks}; samples: {counts}")
        if cfg.data.skip_invalid:
            skipped = counted(summary.skipped, "invalid entry", "invalid entries")
            typer.echo(f"skipped {skipped} (listed in {summary.output / 'skipped.jsonl'})")
        for note in summary.notes:
            typer.echo(f"note: {note}")


@app.command(cls=RelationCommand)
def train(
    data: Annotated[Optional[list[Path]], typer.Option(metavar="FILE", help=key_help(
        "train.data", "Run-ready train.jsonl from prepare; repeatable: the sets are trained on together."))] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option(help=key_help("train.output_dir", "Checkpoints, weights, logs."))
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help=key_help("train.steps", "Optimizer steps."))] = None,
    mode: Annotated[
        Optional[Literal["lora", "full", "adapter", "vae"]],
        typer.Option(metavar="MODE", help=key_help("train.mode", "What is trained (relation config train explains each).")),
    ] = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest complete checkpoint; shape settings must match it, "
                                      "other changes (steps, learning rate, data, ...) apply from its step.")] = False,
    offline: OfflineOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check config, data and paths; print parameter counts and a memory estimate.")
    ] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train the RelationAdapter (+ LoRA, or the whole transformer) on a frozen FLUX; --adapter and --lora continue them.

    Runs on CPU, one GPU, or many under `accelerate launch` (see configs/accelerate/).

    Example: relation train --data data/synthetic/train.jsonl --output-dir runs/x --steps 300
    """
    with user_errors():
        flags = {
            "train.data": ([str(d) for d in data] if len(data) > 1 else str(data[0])) if data else None, "train.output_dir": str(output_dir) if output_dir else None,
            "train.steps": steps, "train.mode": mode, **model_flags(model, image_encoder, adapter, lora, device, offline),
        }  # fmt: skip
        cfg = load_config(config, overrides, flags)
        rows: list = []
        if dry_run:  # every problem of the configuration and the inputs in one message, each image decoded once
            check_everything(cfg, "train", *_train_input_checks(cfg, resume, rows))
        before_loading(cfg, "train")  # a run: its input checks import torch, so a refused configuration comes first
        if dry_run:
            from .train.estimate import estimate

            for line in estimate(cfg, resume, rows).lines():
                typer.echo(line)
            from .train.recipe import unfinished_run_files, unfinished_run_line

            out = Path(cfg.train.output_dir)
            if not resume and (files := unfinished_run_files(out)):
                typer.echo(f"note: {unfinished_run_line(out, files, done=False)}")
            return
        from .train import train as core_train

        out = core_train(cfg, resume=resume)
        typer.echo(f"wrote {out}")


RecomputeOpt = Annotated[
    Optional[Path], typer.Option(metavar="METRICS_JSON", help="Instead of evaluating: recompute the numbers of a "
                                 "finished eval (its metrics.json or folder) from the files it names; exit 1 if any differs.")
]  # fmt: skip
NoEncodersOpt = Annotated[
    bool, typer.Option("--no-encoders", help="With --recompute: pixel metrics only (no CLIP-I, DINO).")
]


def given_options(ctx: typer.Context, exclude: tuple[str, ...] = ()) -> list[str]:
    """The options of ``ctx``'s command typed on its command line (click's ``Context.get_parameter_source``),
    by their first name, in their declared order; ``exclude``: parameter names to leave out."""
    return [p.opts[0] for p in ctx.command.params
            if p.name not in exclude and getattr(ctx.get_parameter_source(p.name), "name", None) == "COMMANDLINE"]  # fmt: skip


def recompute_metrics(metrics: Path | None, no_encoders: bool) -> None:
    """``eval --recompute``: print the largest difference per metric; RelationError if any differs."""
    if metrics is None:
        raise RelationError("--no-encoders goes with --recompute METRICS_JSON")
    from .evaluate.recompute import verify
    from .progress import quiet_libraries

    quiet_libraries()
    for line in verify(metrics, encoders=not no_encoders):
        typer.echo(line)


@app.command(name="eval", cls=RelationCommand)
def evaluate(
    ctx: typer.Context,
    input_files: Annotated[
        Optional[list[Path]],
        typer.Option("--input", "-i", metavar="FILE", help="Run-ready jsonl with targets, one split each, e.g. prepare's "
                     "test_seen.jsonl (repeatable; eval.inputs)."),
    ] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option(help=key_help("eval.output_dir", "Outputs, metrics.json, per_task.csv, report.html."))
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help=key_help("eval.limit", "Only N rows of each file, spread over its tasks."))] = None,
    steps: StepsOpt = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    recompute: RecomputeOpt = None,
    no_encoders: NoEncodersOpt = False,
    offline: OfflineOpt = False,
    dry_run: DryRunOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Generate outputs for every test row, score them against the targets beside baselines, write a report.

    Resumable: outputs already there are reused. `accelerate launch -m relation_cli eval ...` shares the work.

    Example: relation eval --input data/synthetic/test_seen.jsonl --input data/synthetic/test_unseen.jsonl --limit 20

    relation eval --recompute runs/eval/metrics.json [--no-encoders] recomputes a finished eval's numbers.
    """
    with user_errors():
        if no_encoders and recompute is None:
            raise RelationError("--no-encoders goes with --recompute METRICS_JSON")
        if recompute is not None:
            if ignored := given_options(ctx, exclude=("recompute", "no_encoders")):
                raise RelationError(f"--recompute reads everything from the metrics file; it takes no {', '.join(ignored)}")
            return recompute_metrics(recompute, no_encoders)
        flags = {
            "eval.inputs": [str(p) for p in input_files] if input_files else None,
            "eval.output_dir": str(output_dir) if output_dir else None, "eval.limit": limit,
            "infer.steps": steps, **model_flags(model, image_encoder, adapter, lora, device, offline),
        }  # fmt: skip
        cfg = _config_with_run(config, overrides, flags, run)
        if dry_run:
            return _dry_run(cfg, "eval", lambda: _check_eval_folder(cfg), lambda: _check_eval_rows(cfg))
        before_loading(cfg, "eval", lambda: _check_eval_folder(cfg), lambda: _check_eval_rows(cfg))
        from .evaluate import evaluate as core_evaluate

        try:
            result = core_evaluate(cfg)
        except KeyboardInterrupt:  # Ctrl-C or a stop signal: what was written is whole, and the rerun reuses it
            if debug():
                raise
            out = Path(cfg.eval.output_dir)
            if out.is_dir() and next(out.rglob("*.png"), None) is not None:  # outputs, not just the run's records
                typer.echo(f"error: interrupted; the outputs made so far stay in {out}, and the same command "
                           "continues from them", err=True)  # fmt: skip
            else:
                typer.echo("error: interrupted before any output was written", err=True)
            raise Stopped from None
        if result is None:  # not the main process of a distributed run: it only generated
            return
        _print_eval(result)


def _train_input_checks(cfg: RelationConfig, resume: bool, rows: list) -> tuple[Callable[[], object], ...]:
    """What relation train checks of its inputs before loading: the output folder, then every data file's
    rows and images (each file's problems its own), then the validation rows; the rows read are added to
    ``rows``, in order."""

    def folder() -> None:
        from .train.recipe import check_output_dir

        check_output_dir(Path(cfg.train.output_dir), resume)

    read: dict[str, list] = {}  # a file listed again (to weight it) is read once

    def data(path: str) -> None:
        from .train.data import load_rows

        if path not in read:
            read[path] = load_rows(path, cfg.data.max_image_pixels)
        rows.extend(read[path])

    def validation() -> None:
        from .train.recipe import validation_rows

        validation_rows(cfg)

    return (folder, *((lambda f=f: data(f)) for f in cfg.train.data_files), validation)


def _print_eval(result) -> None:
    from rich.console import Console

    from .evaluate.report import by_k_table, notes_of, summary_table

    console = Console()
    console.print(summary_table(result.results))
    if (by_k := by_k_table(result.results)) is not None:
        console.print(by_k)
    for note in notes_of(result.results):
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)
    where = f" on {result.processes} processes" if result.processes > 1 else ""
    typer.echo(f"generated {result.generated} outputs{where} ({result.reused} reused) in {result.output_dir}")
    typer.echo(f"wrote {result.metrics}, {result.per_task} and {result.report}")


# ------------------------------------------------------------------------------------------------ config


@app.command(name="config", cls=RelationCommand)
def show_config(
    section: Annotated[
        Optional[str], typer.Argument(help="Only this section: model, adapter, lora, data, train, infer, eval or run.")
    ] = None,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print the resolved values as YAML instead of the reference.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Every config key with its type, choices, default and help; with --config/--set, the resolved YAML.

    Example: relation config infer;  relation config --config configs/demo-train.yaml --set train.steps=10
    """
    with user_errors():
        if not (as_yaml or config or overrides):
            typer.echo(describe_fields(section))
            return
        describe_fields(section)  # an unknown section is refused the same way
        cfg = load_config(config, overrides)
        typer.echo(dump_config(cfg) if section is None else dump_section(cfg, section), nl=False)


def dump_section(cfg: RelationConfig, section: str) -> str:
    from .config import dump_yaml

    return dump_yaml({section: cfg.model_dump(mode="json")[section]})


# ------------------------------------------------------------------------------------------------ entry point


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Usage errors are one line and exit 1, like every other bad input.

    Called with ``argv=None`` (the process's own command line, as the ``relation`` script calls it), a stop
    signal arriving after the command has finished is ignored, so the process exits with the command's status
    (:func:`finish_on_stop`)."""
    code = _run(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        finish_on_stop(code)
    return code


def _run(args: list[str]) -> int:
    """Run the command line ``args``; its exit status."""
    try:
        with stop_signals_interrupt():
            code = app(args=args, prog_name="relation", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):  # also a stop arriving once the command's own handling has ended
        typer.echo("error: interrupted", err=True)
        return 130
    except Exception as e:
        if getattr(e, "exit_code", None) != 2 or not hasattr(e, "format_message"):
            raise
        if not e.format_message():  # `relation` alone: click printed the help, which is the answer
            return 0
        typer.echo(f"error: {usage_problem(e, args)}", err=True)  # a usage error of the command line itself
        return 1
    return code if isinstance(code, int) else 0


def finish_on_stop(code: int) -> None:
    """From now on, SIGINT and :data:`STOP_SIGNALS` are ignored, so the process ends with status ``code``.

    For the time after a command has finished and said so (``wrote ...``), while Python shuts down (torch's
    teardown takes about 2 s): a stop then has nothing left to save, and would otherwise end the process with
    the signal's own status (143 for SIGTERM) or a KeyboardInterrupt traceback, as if the finished command had
    failed. The shutdown itself still runs whole (``atexit`` handlers, such as ``relation ui`` removing its
    uploads folder). SIGKILL still ends a shutdown that hangs. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGINT", *present_stop_signals()):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


STOP_SIGNALS = ("SIGTERM", "SIGHUP")
"""Signals that stop a command the way Ctrl-C does (``kill``, ``timeout``, job schedulers, a closed terminal):
temporary files are removed and ``train`` checkpoints the step under way (``train.recipe.StopRequest``)."""


def present_stop_signals() -> list[str]:
    """The names in :data:`STOP_SIGNALS` that this platform has (Windows has no SIGHUP)."""
    return [n for n in STOP_SIGNALS if hasattr(signal, n)]


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, :data:`STOP_SIGNALS` raise KeyboardInterrupt like SIGINT does (main thread only; the
    previous handlers are restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = present_stop_signals()

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {n: signal.signal(getattr(signal, n), interrupt) for n in names}
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(getattr(signal, n), handler if handler is not None else signal.SIG_DFL)


def usage_problem(err: Any, args: list[str]) -> str:
    """Click's usage message, said as what it is: a value given to a flag, an image too many for a pair."""
    ctx = getattr(err, "ctx", None)
    name = getattr(ctx, "info_name", None)
    hint = f" (see relation {name} --help)" if name and name != "relation" else ""
    message = err.format_message().replace(": Value error, ", ": ")  # typer's validation wording, left out
    extra = message.startswith("Got unexpected extra argument") and ctx is not None
    word = message[message.rfind("(") + 1 : message.rfind(")")].split()[0] if extra else None
    if word is None or word not in args:
        return f"{message}{hint}"
    at = args.index(word)
    flags = {opt for p in ctx.command.params if getattr(p, "is_flag", False) for opt in p.opts}
    if at >= 1 and args[at - 1] in flags:
        return f"{args[at - 1]} is a flag and takes no value (got '{word}'){hint}"
    if at >= 3 and args[at - 3] == "--exemplar":
        return f"--exemplar takes exactly 2 images (A and A'); '{word}' is one too many{hint}"
    return f"unexpected argument '{word}'{hint}"


if __name__ == "__main__":
    sys.exit(main())
