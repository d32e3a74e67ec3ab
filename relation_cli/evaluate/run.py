"""``relation eval``: plan, generate (resumable, split across processes), score, judge, report.

Setup checks everything cheap first (rows, images, encoder folders, the judge's key, settings of the
outputs already there); generation runs on every process; scoring and the report on the main one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..config import RelationConfig, save_config
from ..errors import RelationError
from ..fs import check_not_busy, hold_folder
from ..infer import print_note
from ..model import resolve_sources
from ..progress import progress_bar
from .encoders import MetricUnavailable, build_fid, check_sources, load_embedders
from .generate import Generated, changed_outputs, generate, job_record
from .settings import check_settings, generation_settings, record_row, record_settings
from .judge import Judge, describe, judge_samples
from .metrics import aggregate, fid_scores, implementations, score_samples
from .plan import METHOD_LABELS, Job, Split, check_output_folder, check_rows, methods_of
from .provenance import describe_model
from .report import grid_columns, grid_images, save_grid, write_html, write_metrics, write_per_task


@dataclass(frozen=True)
class EvalResult:
    output_dir: Path
    metrics: Path
    per_task: Path
    report: Path
    grids: list[Path]
    generated: int
    reused: int
    processes: int
    results: dict  # the content of metrics.json


def evaluate(cfg: RelationConfig, fid_feature=None) -> EvalResult | None:
    """Evaluate ``cfg.eval.inputs`` into ``cfg.eval.output_dir``; ``None`` on non-main processes.

    ``fid_feature``: a feature network for FID in place of torch-fidelity's Inception v3 (tests).
    """
    from accelerate import PartialState

    from ..model import build_process_state, truthful_config

    out = Path(cfg.eval.output_dir)
    digests: dict = {}  # sha256 per image file, shared by every job's record
    splits, jobs, judge, redo = setup(cfg, out, digests)
    state = build_process_state(PartialState, cfg.model.device)  # the device rule of infer and train
    if state.is_main_process:  # the main process alone: another rank's probe would collide with its lock
        check_not_busy(out, "output dir")

    settings = generation_settings(cfg)  # the weights as found before they load
    held = []  # the folder's lock, taken by the main process when it first writes (fs.hold_folder)
    if redo and state.is_main_process:
        print_note(f"note: {len(redo)} outputs in '{out}' were made from other rows or images than the inputs' now "
                   "(changed since): made again")  # fmt: skip

    def made_rows() -> dict:  # what each output on disk was made from (generation.json's rows)
        return dict(job_record(j, out, digests) for j in jobs if j.output.is_file() and id(j) not in redo)

    def record(pipe=None) -> None:  # once the model loaded: a refused adapter or LoRA leaves the folder as it was
        if state.is_main_process and not held:  # a second eval into this folder stops before writing
            out.mkdir(parents=True, exist_ok=True)
            held.append(hold_folder(out, "output dir"))
        if pipe is not None or not (out / "config.yaml").is_file():  # nothing loaded: the saved one stays true
            save_config(truthful_config(cfg, pipe), out / "config.yaml")
        record_settings(out, cfg, rows=made_rows(), settings=settings)

    try:
        saved = lambda job: record_row(out, *job_record(job, out, digests))  # noqa: E731 (a killed run keeps it)
        made = generate(cfg, jobs, state, record, redo, saved)
        redo = set()  # made again (or failed, and gone): every output on disk is now this run's
        if not state.is_main_process:
            return None
        record()
        return _score_and_report(cfg, splits, jobs, judge, made, state, fid_feature)
    finally:
        for lock in held:
            lock.release()


def _score_and_report(cfg: RelationConfig, splits: list[Split], jobs: list[Job], judge: Judge | None, made: Generated,
                      state, fid_feature) -> EvalResult:  # fmt: skip
    """The main process's half of :func:`evaluate`: scores, metrics.json, per_task.csv, grids, report."""
    out = Path(cfg.eval.output_dir)
    failed = {id(job) for job in made.failed}
    results = score_all(cfg, splits, [sample_of(job, out) for job in jobs if id(job) not in failed], judge, fid_feature)
    results["generation"] = {"written": made.written, "reused": made.reused, "processes": state.num_processes}
    if made.failed:
        results["generation"]["failed"] = [failure_of(job) for job in made.failed]
        results["notes"].append(f"{len(made.failed)} outputs were not finite (NaN or Inf) and are left out of the "
                                "scores: see generation.failed in metrics.json")  # fmt: skip
    return write_all(cfg, splits, results, made, state.num_processes)


def setup(cfg: RelationConfig, out: Path, digests: dict) -> tuple[list[Split], list[Job], Judge | None, set[int]]:
    """Everything cheap, before anything is generated: rows, images, encoders, judge key, settings, and the
    outputs on disk made from other inputs than their jobs' now (``id``s, :func:`changed_outputs`; ``digests``:
    the sha256 per image file, kept for the records)."""
    check_output_folder(out)
    splits, jobs = check_rows(cfg)
    check_sources(cfg.eval)
    judge = build_judge(cfg, out) if cfg.eval.judge_model else None
    before = check_settings(out, cfg, has_outputs=lambda _: any(out.glob("*/*/[0-9][0-9][0-9][0-9][0-9][0-9].*")))
    rows = (before or {}).get("rows")
    redo = changed_outputs(jobs, out, rows if isinstance(rows, dict) else None, digests)
    if any(j.method != "copy_query" and (not j.output.is_file() or id(j) in redo) for j in jobs):
        resolve_sources(cfg.model, cfg.adapter, cfg.lora)  # model paths exist, before any image is made
    return splits, jobs, judge, redo


def score_all(cfg: RelationConfig, splits: list[Split], samples: list[dict], judge: Judge | None, fid_feature) -> dict:
    """Metrics, FID and the judge's scores; returns the content of metrics.json."""
    section, out = cfg.eval, Path(cfg.eval.output_dir)
    methods = methods_of(section)
    notes = [s.note for s in splits if s.note] + [limit_note(s, section.limit) for s in splits if s.total > len(s.rows)]
    if cfg.adapter.scale == 0 and "adapter_off" in methods:
        notes.append("adapter.scale is 0: the model and the adapter-off baseline are the same run")
    skipped = score(cfg, samples, out)
    fid = score_fid(cfg, samples, out, fid_feature, skipped)
    judged = None
    if judge is not None:
        chosen = [s for s in samples if s["method"] in section.judge_methods]
        judged = {**describe(judge), "methods": section.judge_methods}
        with progress_bar("judging", len(chosen)) as advance:
            judged["counts"] = judge_samples(judge, chosen, out, section.judge_workers, advance)
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": "config.yaml",
        "settings": generation_settings(cfg),
        "model": describe_model(cfg),
        "splits": [split_record(s, section.limit) for s in splits],
        "methods": {m: METHOD_LABELS[m] for m in methods},
        "implementations": implementations(),
        "encoders": {"clip_i": section.clip_model, "dino": section.dino_model},
        "batch_size": section.batch_size,  # CLIP/DINO batches: recompute uses the same ones
        "skipped": skipped,
        "notes": notes,
        "judge": judged,
        "aggregate": aggregate(samples),
        "aggregate_by_k": aggregate(samples, by=("split", "method", "k")),
        "fid": fid,
        "samples": samples,
    }


def split_record(split: Split, limit: int | None) -> dict:
    """A split in metrics.json: its file, the rows scored of the rows in it, and which (0-based, as each
    sample's ``index``)."""
    return {"name": split.name, "input": str(split.source), "rows": len(split.rows), "rows_in_file": split.total,
            "limit": limit, "indices": [r.index for r in split.rows]}  # fmt: skip


def limit_note(split: Split, limit: int | None) -> str:
    tasks = len({r.task for r in split.rows})
    return (f"{split.name}: {len(split.rows)} of {split.total} rows (eval.limit {limit}), spread over {tasks} "
            f"task{'s' if tasks != 1 else ''}: the first row of every task, then the second, ...")  # fmt: skip


def write_all(cfg: RelationConfig, splits: list[Split], results: dict, made: Generated, processes: int) -> EvalResult:
    """metrics.json, per_task.csv, one grid PNG per split and report.html."""
    out, methods = Path(cfg.eval.output_dir), methods_of(cfg.eval)
    grids = {}
    for split in splits if cfg.eval.grid_rows else []:
        own = [s for s in results["samples"] if s["split"] == split.name]
        images, columns = grid_images(own, out, methods, cfg.eval.grid_rows), grid_columns(methods)
        png = save_grid(out / "grids" / f"{split.name}.png", columns, images)
        grids[split.name] = (columns, images, png.relative_to(out))
    for stale in sorted((out / "grids").glob("*.png")):  # an earlier run's split into this folder: not in the report
        if stale.stem not in grids:
            stale.unlink()
    return EvalResult(
        output_dir=out,
        metrics=write_metrics(out / "metrics.json", results),
        per_task=write_per_task(out / "per_task.csv", results["samples"]),
        report=write_html(out / "report.html", results, grids),
        grids=[out / g[2] for g in grids.values()],
        generated=made.written,
        reused=made.reused,
        processes=processes,
        results=results,
    )


def build_judge(cfg: RelationConfig, out: Path) -> Judge:
    section = cfg.eval
    key = os.environ.get(section.judge_api_key_env, "")
    if not key:
        raise RelationError(
            f"eval.judge_model is set but ${section.judge_api_key_env} is empty: export the judge's API key "
            "(or name another variable with eval.judge_api_key_env)"
        )
    return Judge(section.judge_base_url, section.judge_model, key, out / "judge_cache", section.judge_timeout,
                 section.judge_retries)  # fmt: skip


def _relative(path: Path, root: Path) -> str:
    """Paths in metrics.json are relative to its folder, so the whole tree can move together."""
    try:
        return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(path.resolve())


def failure_of(job: Job) -> dict:
    """A job that gave no output, as metrics.json lists it."""
    return {"split": job.split, "method": job.method, "index": job.row.index, "task": job.row.task,
            "reason": "the result is not finite"}  # fmt: skip


def sample_of(job: Job, out: Path) -> dict:
    """One sample of ``metrics.json``: its row, output, target and the exemplar pairs used (paths relative to
    ``out``): ``cond1``/``cond2`` the first pair, and with k > 1 every pair in ``exemplars``."""
    sample = {
        "split": job.split,
        "method": job.method,
        "index": job.row.index,
        "task": job.row.task,
        "text": job.row.text,
        "output": _relative(job.output, out),
        "target": _relative(job.row.target, out),
        "cond1": _relative(job.exemplar.cond1, out),
        "cond2": _relative(job.exemplar.cond2, out),
        "source": _relative(job.row.source, out),
        "exemplar_row": job.exemplar.index,
        "exemplar_task": job.exemplar.task,
        "k": len(job.exemplar.pairs),  # exemplar pairs given (cond1/cond2 above are the first)
    }
    if len(job.exemplar.pairs) > 1:
        sample["exemplars"] = [[_relative(a, out), _relative(b, out)] for a, b in job.exemplar.pairs]
    return sample


def score(cfg: RelationConfig, samples: list[dict], out: Path) -> dict[str, str]:
    """Pixel and embedding metrics of every sample, in place; returns the metrics skipped, with why."""
    from ..model import resolve_device

    embedders, skipped = load_embedders(cfg.eval, resolve_device(cfg.model.device), cfg.model.local_files_only)
    with progress_bar("scoring", len(samples)) as advance:
        score_samples(samples, out, embedders, cfg.eval.batch_size, cfg.data.max_image_pixels, advance)
    return skipped


def score_fid(cfg: RelationConfig, samples: list[dict], out: Path, feature, skipped: dict[str, str]) -> list[dict]:
    if not cfg.eval.fid:
        skipped["fid"] = "off (eval.fid is false)"
        return []
    try:
        fid = build_fid(cfg.eval, feature)
    except MetricUnavailable as e:
        if cfg.eval.strict:
            raise RelationError(f"eval.fid: {e} (eval.strict is on)") from None
        skipped["fid"] = str(e)
        return []
    return fid_scores(samples, out, fid, cfg.data.max_image_pixels)
