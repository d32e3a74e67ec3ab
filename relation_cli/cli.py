"""The ``relation`` command line: parse a few options, resolve the config, call one core function.

Known errors become one line on stderr and exit status 1 (``RELATION_DEBUG=1`` shows the traceback).
Nothing heavy is imported at module level, so ``relation --help`` is fast.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from .config import describe_fields, load_config
from .errors import RelationError

app = typer.Typer(
    name="relation",
    help="Exemplar-based image editing with RelationAdapter on FLUX: prepare data, train, infer, evaluate.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML config file (see configs/). Flags override it.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override one config key, e.g. --set infer.steps=8 (repeatable)."),
]
CONFIG_EPILOG = "Config keys (--set section.key=value):\n\n" + describe_fields().replace("\n", "\n\n")


def debug() -> bool:
    return os.environ.get("RELATION_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


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
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        if debug():
            raise
        raise fail("interrupted", 130) from None
    except Exception as e:  # a bug, not a user mistake: still one line, with the way to see more
        if debug():
            raise
        raise fail(f"internal error: {type(e).__name__}: {e} (set RELATION_DEBUG=1 for the traceback)") from None


# ------------------------------------------------------------------------------------------------ infer


@app.command(epilog=CONFIG_EPILOG)
def infer(
    exemplar: Annotated[
        Optional[list[Path]],
        typer.Option(metavar="A A'", help="The exemplar pair: the image before and the image after the edit."),
    ] = None,
    query: Annotated[Optional[Path], typer.Option(help="The image B to edit the same way.")] = None,
    extra: Annotated[Optional[list[Path]], typer.Argument(hidden=True)] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Text instruction to go with the pair (infer.prompt).")] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Output file: .png, .jpg, .webp or .npy (float32 HxWx3 in [0, 1]). "
                     "Default: outputs/<query>-edited.png."),
    ] = None,
    input_file: Annotated[
        Optional[Path], typer.Option("--input", help="Batch mode: a run-ready jsonl (cond1, cond2, source, text).")
    ] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Batch mode: folder for one output per row.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (infer.seed, default 1000).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (infer.steps, default 24).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance embedding (infer.guidance, default 3.5).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Adapter strength, 0 = off (adapter.scale, default 1).")] = None,
    model: Annotated[
        Optional[str], typer.Option(help="FLUX base: hub id or folder (model.base). Default: the embedded demo.")
    ] = None,
    image_encoder: Annotated[Optional[str], typer.Option(help="SigLIP: hub id or folder (model.image_encoder).")] = None,
    adapter: Annotated[
        Optional[Path], typer.Option(help="Adapter: released ip_adapter-*.bin or relation folder (adapter.path).")
    ] = None,
    lora: Annotated[Optional[Path], typer.Option(help="LoRA .safetensors file or folder (lora.path).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps (model.device).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Edit the query image the way the exemplar pair shows.

    relation infer --exemplar a.jpg a2.jpg --query b.jpg [--prompt TEXT] [-o out.png]

    relation infer --input samples.jsonl --output-dir DIR
    """
    from .progress import quiet_libraries

    with user_errors():
        flags = {
            "infer.prompt": prompt, "infer.seed": seed, "infer.steps": steps, "infer.guidance": guidance,
            "adapter.scale": scale, "model.base": model, "model.image_encoder": image_encoder,
            "adapter.path": str(adapter) if adapter else None, "lora.path": str(lora) if lora else None,
            "model.device": device, "infer.overwrite": True if overwrite else None,
        }  # fmt: skip
        cfg = load_config(config, overrides, flags)
        quiet_libraries()
        from . import infer as core

        if input_file is not None:
            if exemplar or query or extra or output:
                raise RelationError("--input (batch mode) cannot be combined with --exemplar, --query or --output")
            if output_dir is None:
                raise RelationError("--input needs --output-dir")
            summary = core.infer_batch(cfg, input_file, output_dir)
            typer.echo(f"wrote {summary.written} images to {summary.output_dir} ({summary.skipped} already there)")
            return
        pair = [*(exemplar or []), *(extra or [])]
        if len(pair) != 2:
            raise RelationError(f"--exemplar needs exactly 2 images (A and A'), got {len(pair)}")
        if query is None:
            raise RelationError("--query is required (the image to edit)")
        written = core.infer_single(cfg, (pair[0], pair[1]), query, output)
        typer.echo(f"wrote {written}")


# ------------------------------------------------------------------------------------------------ convert


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="The authors' ip_adapter-*.bin (a torch pickle).")],
    destination: Annotated[Path, typer.Argument(help="New folder for relation's safetensors format.")],
    head_dim: Annotated[
        int, typer.Option(help="attention_head_dim of the transformer the adapter belongs to (FLUX.1-dev: 128).")
    ] = 128,
) -> None:
    """Convert the released adapter pickle to safetensors (read with weights_only=True, never executed)."""
    from .progress import quiet_libraries

    with user_errors():
        quiet_libraries()
        from .weights import convert_released

        typer.echo(f"wrote {convert_released(source, destination, head_dim)}")


@app.command(name="init-model")
def init_model(
    destination: Annotated[Path, typer.Argument(help="New folder: base/ (FLUX layout), image_encoder/, adapter/.")],
    spec: Annotated[
        Optional[Path], typer.Option(help="YAML file of architecture sizes (see configs/demo-arch.yaml).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
) -> None:
    """Create a small randomly initialised FLUX-architecture model, offline (for tests and the demo)."""
    from .config import read_yaml
    from .progress import quiet_libraries

    with user_errors():
        from pydantic import ValidationError

        quiet_libraries()
        from .tiny import ArchSpec
        from .tiny import init_model as core_init

        try:
            arch = ArchSpec.model_validate(read_yaml(spec) if spec else {})
        except ValidationError as e:
            raise RelationError(f"spec '{spec}': " + "; ".join(
                f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()
            )) from None  # fmt: skip
        typer.echo(f"wrote {core_init(destination, arch, seed)}")


# ------------------------------------------------------------------------------------------------ later


def _not_yet(name: str) -> None:
    raise fail(f"`relation {name}` is not implemented yet")


@app.command(epilog=CONFIG_EPILOG)
def prepare(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Turn paired edits into run-ready analogy samples (not implemented yet)."""
    _not_yet("prepare")


@app.command(epilog=CONFIG_EPILOG)
def train(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Train the RelationAdapter and LoRA (not implemented yet)."""
    _not_yet("train")


@app.command(name="eval", epilog=CONFIG_EPILOG)
def evaluate(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Score outputs against targets per task and split (not implemented yet)."""
    _not_yet("eval")


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Usage errors are one line and exit 1, like every other bad input."""
    try:
        code = app(args=argv, prog_name="relation", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("error: interrupted", err=True)
        return 130
    except Exception as e:
        if getattr(e, "exit_code", None) != 2 or not hasattr(e, "format_message"):
            raise
        ctx = getattr(e, "ctx", None)  # a usage error of the command line itself
        name = getattr(ctx, "info_name", None)
        hint = f" (see relation {name} --help)" if name and name != "relation" else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
