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
from .errors import RelationError, first_line
from .runs import refuse_run_config, run_settings

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
ModelOpt = Annotated[
    Optional[str], typer.Option("--model", help="FLUX base: hub id or folder (model.base). Default: the embedded demo.")
]
ImageEncoderOpt = Annotated[
    Optional[str], typer.Option("--image-encoder", help="SigLIP: hub id or folder (model.image_encoder).")
]
AdapterOpt = Annotated[
    Optional[Path],
    typer.Option("--adapter", help="Adapter: released ip_adapter-*.bin or relation folder (adapter.path); "
                 "train starts from it."),
]  # fmt: skip
LoraOpt = Annotated[
    Optional[list[str]],
    typer.Option("--lora", metavar="PATH[:WEIGHT]", help="LoRA .safetensors file or folder, with its weight "
                 "(default 1); repeatable (lora.paths); train continues it."),
]
RunOpt = Annotated[
    Optional[Path],
    typer.Option("--run", help="A finished training run folder: its base, image encoder, adapter, LoRA and "
                 "infer settings (flags and --set override them)."),
]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps (model.device).")
]


def model_flags(model: str | None, image_encoder: str | None, adapter: Path | None, lora: list[str] | None,
                device: str | None) -> dict:  # fmt: skip
    """The shared model options as config keys (None = not given)."""
    return {
        "model.base": model, "model.image_encoder": image_encoder, "adapter.path": str(adapter) if adapter else None,
        "lora.paths": [lora_option(text) for text in lora] if lora else None, "model.device": device,
    }  # fmt: skip


def lora_option(text: str) -> dict:
    """``PATH[:WEIGHT]`` -> ``{"path": PATH, "weight": WEIGHT}``; a tail that is not a number stays in the path."""
    path, sep, weight = text.rpartition(":")
    try:
        return {"path": path, "weight": float(weight)} if sep and path else {"path": text}
    except ValueError:
        return {"path": text}


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
        why = f"{type(e).__name__}: {first_line(e)}"
        raise fail(f"internal error: {why} (set RELATION_DEBUG=1 for the traceback)") from None


# ------------------------------------------------------------------------------------------------ infer


@app.command(epilog=CONFIG_EPILOG)
def infer(
    exemplar: Annotated[
        Optional[list[Path]],
        typer.Option(metavar="A A'", help="An exemplar pair: the image before and the image after the edit. "
                     "Repeat for k pairs of the same edit: --exemplar A A' --exemplar C C'."),
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
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (infer.steps; default 24, 8 for the demo model).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance embedding (infer.guidance; default 3.5, 1.0 for the demo model).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Adapter strength, 0 = off (adapter.scale, default 1).")] = None,
    width: Annotated[Optional[int], typer.Option(min=8, help="Working width in pixels (infer.width). Default: the "
                     "query's, shrunk to infer.max_area; alone, the height keeps the query's aspect ratio.")] = None,
    height: Annotated[Optional[int], typer.Option(min=8, help="Working height in pixels (infer.height); see --width.")] = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    memory: Annotated[
        Optional[str],
        typer.Option(help="none, model_offload, sequential_offload, group_offload or fp8_storage (model.memory)."),
    ] = None,
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
            "adapter.scale": scale, "model.memory": memory, "infer.overwrite": True if overwrite else None,
            "infer.width": width, "infer.height": height,
            **model_flags(model, image_encoder, adapter, lora, device),
        }  # fmt: skip
        cfg = load_config(config, overrides, flags, under=run_settings(run) if run else None)
        refuse_run_config(cfg, config)
        quiet_libraries()
        from . import infer as core

        if input_file is not None:
            if exemplar or query or extra or output:
                raise RelationError("--input (batch mode) cannot be combined with --exemplar, --query or --output")
            if output_dir is None:
                raise RelationError("--input needs --output-dir")
            return report_batch(core.infer_batch(cfg, input_file, output_dir))
        pairs = pairs_from_options(exemplar or [], extra or [])
        if query is None:
            raise RelationError("--query is required (the image to edit)")
        written = core.infer_single(cfg, pairs[0] if len(pairs) == 1 else pairs, query, output)
        typer.echo(f"wrote {written}")


def pairs_from_options(options: list[Path], extra: list[Path]) -> list[tuple[Path, Path]]:
    """``--exemplar A A' --exemplar C C'`` -> [(A, A'), (C, C')]. Each --exemplar takes its A, and the image
    after it (its A') arrives as an extra argument; ``--exemplar A --exemplar A'`` is one pair too."""
    if not extra and len(options) == 2:
        return [(options[0], options[1])]
    if not options or len(extra) != len(options):
        given = len(options) + len(extra)
        raise RelationError(f"--exemplar needs exactly 2 images (A and A') each time, got {given} image(s) for "
                            f"{len(options)} --exemplar option(s)")  # fmt: skip
    return list(zip(options, extra))


def report_batch(summary) -> None:
    """What batch infer wrote; rows that gave no image are listed and make the exit status 1."""
    typer.echo(f"wrote {summary.written} images to {summary.output_dir} ({summary.skipped} already there)")
    for failure in summary.failed:
        typer.echo(f"  {failure}", err=True)
    if summary.failed:
        raise RelationError(f"{len(summary.failed)} rows gave no image (listed above)")


# ------------------------------------------------------------------------------------------------ ui


@app.command(epilog=CONFIG_EPILOG)
def ui(
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 makes the page reachable by others.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    memory: Annotated[
        Optional[str],
        typer.Option(help="none, model_offload, sequential_offload, group_offload or fp8_storage (model.memory)."),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Try edits in a local web page, and browse relation eval results (needs pip install 'relation\\[ui]').

    relation ui [--model DIR --adapter DIR | --run runs/x] [--port 7860]
    """
    from .progress import quiet_libraries

    with user_errors():
        flags = {"model.memory": memory, **model_flags(model, image_encoder, adapter, lora, device)}
        cfg = load_config(config, overrides, flags, under=run_settings(run) if run else None)
        refuse_run_config(cfg, config)
        quiet_libraries()
        from . import ui as core

        if (warning := core.host_warning(host)) is not None:
            typer.echo(warning, err=True)
        core.serve(cfg, host, port)


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
        Optional[Path], typer.Option(help="YAML file of architecture sizes (see configs/arch/demo.yaml).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
    kontext: Annotated[
        bool, typer.Option("--kontext", help="Save base/ in FLUX.1 Kontext's layout (FluxKontextPipeline; spec key kontext).")
    ] = False,
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
            arch = ArchSpec.model_validate({**(read_yaml(spec) if spec else {}), **({"kontext": True} if kontext else {})})
        except ValidationError as e:
            raise RelationError(f"spec '{spec}': " + "; ".join(
                f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()
            )) from None  # fmt: skip
        typer.echo(f"wrote {core_init(destination, arch, seed)}")


# ------------------------------------------------------------------------------------------------ data, train, eval


@app.command(epilog=CONFIG_EPILOG)
def prepare(
    input_path: Annotated[
        Optional[Path],
        typer.Argument(metavar="INPUT", help="A Relation252K folder (<task>/Group1/labels.json), or a .jsonl/.json "
                       "file of entries (img_name side-by-side pairs, or source + target)."),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the splits, images and manifest.")] = ...,
    synthetic: Annotated[
        Optional[int],
        typer.Option(metavar="N", help="Instead of INPUT, generate the synthetic relation set: N pairs per task, "
                     "14 tasks, written to OUTPUT/raw and prepared like real data (data.synthetic_pairs)."),
    ] = None,
    per_task_cap: Annotated[Optional[int], typer.Option(help="Most samples per task (data.per_task_cap, default 2000).")] = None,
    unseen_tasks: Annotated[
        Optional[int], typer.Option(help="Whole tasks held out for test_unseen, named ones first (data.unseen_tasks).")
    ] = None,
    unseen_task: Annotated[
        Optional[list[str]], typer.Option(metavar="NAME", help="Hold out this task (repeatable; data.unseen_task_names).")
    ] = None,
    test_per_task: Annotated[
        Optional[int], typer.Option(help="test_seen samples per seen task (data.test_per_task, default 30).")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of pairing, splits and synthetic scenes (data.seed).")] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Leave invalid entries out (see OUTPUT/skipped.jsonl) instead of failing.")
    ] = False,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes; 0 = min(4, CPUs) (data.workers).")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Turn paired edits into validated, leak-free analogy samples: train / test_seen / test_unseen.

    relation prepare data/Relation252K --output data/prepared --unseen-tasks 10

    relation prepare --synthetic 200 --output data/synthetic --unseen-task flip_vertical --unseen-task frame
    """
    with user_errors():
        flags = {
            "data.synthetic_pairs": synthetic, "data.per_task_cap": per_task_cap, "data.unseen_tasks": unseen_tasks,
            "data.unseen_task_names": unseen_task or None, "data.test_per_task": test_per_task, "data.seed": seed,
            "data.skip_invalid": True if skip_invalid else None, "data.workers": workers,
        }  # fmt: skip
        cfg = load_config(config, overrides, flags)
        from .prepare import DatasetProblems
        from .prepare import prepare as core_prepare

        try:
            summary = core_prepare(cfg, input_path, output)
        except DatasetProblems as e:
            for problem in e.problems:
                typer.echo(f"  {problem}", err=True)
            raise
        counts = ", ".join(f"{split} {n}" for split, n in summary.samples.items())
        typer.echo(f"wrote {summary.output}: {summary.pairs} pairs in {summary.tasks} tasks; samples: {counts}")
        if cfg.data.skip_invalid:
            typer.echo(f"skipped {summary.skipped} invalid entries (listed in {summary.output / 'skipped.jsonl'})")
        for note in summary.notes:
            typer.echo(f"note: {note}")


@app.command(epilog=CONFIG_EPILOG)
def train(
    data: Annotated[Optional[Path], typer.Option(help="Run-ready train.jsonl from relation prepare (train.data).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Checkpoints, weights, logs (train.output_dir).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (train.steps).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="lora, full, adapter or vae (train.mode).")] = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    device: DeviceOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest complete checkpoint; shape settings must match it, "
                                      "other changes (steps, learning rate, data, ...) apply from its step.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check config, data and paths; print parameter counts and a memory estimate.")
    ] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train the RelationAdapter (+ LoRA, or the whole transformer) on a frozen FLUX.

    Runs on CPU, one GPU, or many under `accelerate launch` (see configs/accelerate/).
    """
    from .progress import quiet_libraries

    with user_errors():
        flags = {
            "train.data": str(data) if data else None, "train.output_dir": str(output_dir) if output_dir else None,
            "train.steps": steps, "train.mode": mode, **model_flags(model, image_encoder, adapter, lora, device),
        }  # fmt: skip
        cfg = load_config(config, overrides, flags)
        quiet_libraries()
        if dry_run:
            from .train.estimate import estimate

            for line in estimate(cfg).lines():
                typer.echo(line)
            return
        from .train import train as core_train

        out = core_train(cfg, resume=resume)
        typer.echo(f"wrote {out}")


RecomputeOpt = Annotated[
    Optional[Path], typer.Option(metavar="METRICS_JSON", help="Instead of evaluating: recompute the numbers of a "
                                 "finished eval from the files it names; exit 1 if any differs.")
]  # fmt: skip
NoEncodersOpt = Annotated[
    bool, typer.Option("--no-encoders", help="With --recompute: pixel metrics only (no CLIP-I, DINO).")
]


def recompute_metrics(metrics: Path | None, no_encoders: bool) -> None:
    """``eval --recompute``: print the largest difference per metric; RelationError if any differs."""
    if metrics is None:
        raise RelationError("--no-encoders goes with --recompute METRICS_JSON")
    from .evaluate.recompute import verify
    from .progress import quiet_libraries

    quiet_libraries()
    for line in verify(metrics, encoders=not no_encoders):
        typer.echo(line)


@app.command(name="eval", epilog=CONFIG_EPILOG)
def evaluate(
    input_files: Annotated[
        Optional[list[Path]],
        typer.Option("--input", "-i", help="Run-ready jsonl with targets, one split each, e.g. prepare's "
                     "test_seen.jsonl and test_unseen.jsonl (repeatable; eval.inputs)."),
    ] = None,
    output_dir: Annotated[
        Optional[Path], typer.Option(help="Outputs, metrics.json, per_task.csv, report.html (eval.output_dir).")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only N rows of each file, spread over its tasks (eval.limit).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (infer.steps; default 24, 8 for the demo model).")] = None,
    model: ModelOpt = None,
    image_encoder: ImageEncoderOpt = None,
    adapter: AdapterOpt = None,
    lora: LoraOpt = None,
    run: RunOpt = None,
    device: DeviceOpt = None,
    recompute: RecomputeOpt = None,
    no_encoders: NoEncodersOpt = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Generate outputs for every test row, score them against the targets with baselines, write a report.

    relation eval --input data/test_seen.jsonl --input data/test_unseen.jsonl [--limit 20]

    Resumable: outputs already there are reused.

    accelerate launch -m relation_cli eval ... shares the generation between processes (no GPU: --multi_gpu).

    relation eval --recompute runs/eval/metrics.json [--no-encoders]
    """
    from .progress import quiet_libraries

    with user_errors():
        if recompute is not None or no_encoders:
            return recompute_metrics(recompute, no_encoders)
        flags = {
            "eval.inputs": [str(p) for p in input_files] if input_files else None,
            "eval.output_dir": str(output_dir) if output_dir else None, "eval.limit": limit,
            "infer.steps": steps, **model_flags(model, image_encoder, adapter, lora, device),
        }  # fmt: skip
        cfg = load_config(config, overrides, flags, under=run_settings(run) if run else None)
        refuse_run_config(cfg, config)
        quiet_libraries()
        from .evaluate import evaluate as core_evaluate

        result = core_evaluate(cfg)
        if result is None:  # not the main process of a distributed run: it only generated
            return
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
