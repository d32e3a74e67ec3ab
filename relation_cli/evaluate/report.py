"""What a person reads: metrics.json, per_task.csv, a rich summary table, grid PNGs and report.html.

report.html is self-contained (thumbnails are embedded as data URIs) and links only to files written
beside it: metrics.json, per_task.csv, config.yaml and the grid PNGs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

from PIL import Image

from ..fs import atomic_file, write_text_atomic
from ..grids import framed, grid_image, label_cell
from ..images import open_image
from ..rows import spread_by_task
from .metrics import LOWER_IS_BETTER, METRICS, aggregate
from .plan import METHOD_LABELS, MODEL
from .provenance import model_lines

CELL = 160  # thumbnail box, pixels
DIGITS = {"mse": 4, "psnr": 2, "ssim": 3, "clip_i": 3, "dino": 3, "judge_consistency": 2, "judge_accuracy": 2, "fid": 2}
NAMES = {
    "clip_i": "CLIP-I",
    "dino": "DINO",
    "judge_consistency": "judge consistency",
    "judge_accuracy": "judge accuracy",
}


def _finite(value):
    """JSON has no Infinity: a non-finite number is written as null (PSNR of identical images)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def notes_of(results: dict) -> list[str]:
    """What a reader must know beside the numbers: skipped baselines and metrics, with the reason."""
    return [*results["notes"], *(f"{metric} skipped: {why}" for metric, why in results["skipped"].items())]


def write_metrics(path: Path, results: dict) -> Path:
    write_text_atomic(path, json.dumps(_finite(results), indent=1, allow_nan=False) + "\n")
    return path


def per_task(samples: list[dict]) -> tuple[list[str], list[dict]]:
    """Columns and rows of per_task.csv: one per (split, task, method), n and each metric's mean."""
    rows: dict[tuple, dict] = {}
    for entry in aggregate(samples, by=("split", "task", "method")):
        key = (entry["split"], entry["task"], entry["method"])
        row = rows.setdefault(key, {"split": key[0], "task": key[1], "method": key[2], "n": entry["n"]})
        row[entry["metric"]] = entry["mean"]
    present = [m for m in METRICS if any(m in r for r in rows.values())]
    return ["split", "task", "method", "n", *present], list(rows.values())


def write_per_task(path: Path, samples: list[dict]) -> Path:
    columns, rows = per_task(samples)
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(entry: dict | None) -> str:
    if entry is None or entry.get("mean") is None:
        return "-" if entry is None else "inf"
    digits = DIGITS.get(entry["metric"], 3)
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" ± {entry['std']:.{digits}f}" if entry.get("std") is not None else "")


def summary_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: split x method, each metric as mean ± std, FID of the split."""
    table = {(e["split"], e["method"], e["metric"]): e for e in results["aggregate"]}
    for e in results.get("fid", []):
        if e.get("fid") is not None:
            table[(e["split"], e["method"], "fid")] = {"metric": "fid", "mean": e["fid"], "std": None}
    metrics = [m for m in (*METRICS, "fid") if any(k[2] == m for k in table)]
    pairs = list(dict.fromkeys((s["split"], s["method"]) for s in results["samples"]))
    header = [
        "split",
        "method",
        "n",
        *(NAMES.get(m, m.upper()) + (" ↓" if m in LOWER_IS_BETTER else " ↑") for m in metrics),
    ]
    rows = []
    for split, method in pairs:
        n = sum(1 for s in results["samples"] if s["split"] == split and s["method"] == method)
        rows.append([split, METHOD_LABELS[method], str(n), *(_cell(table.get((split, method, m))) for m in metrics)])
    return header, rows


def by_k_rows(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the metrics by number of exemplar pairs k (split x method x k); None when every
    sample had the same k."""
    entries = results.get("aggregate_by_k") or []
    ks = sorted({e["k"] for e in entries})
    if len(ks) < 2:
        return None
    table = {(e["split"], e["method"], e["k"], e["metric"]): e for e in entries}
    metrics = [m for m in METRICS if any(key[3] == m for key in table)]
    keys = sorted({(e["split"], e["method"], e["k"]) for e in entries}, key=lambda x: (x[0], x[1], x[2]))
    header = ["split", "method", "k", *(NAMES.get(m, m.upper()) + (" ↓" if m in LOWER_IS_BETTER else " ↑") for m in metrics)]
    return header, [[s, METHOD_LABELS[m], str(k), *(_cell(table.get((s, m, k, x))) for x in metrics)] for s, m, k in keys]


def summary_table(results: dict):
    """The summary as a rich Table, for the console, with the model evaluated (:func:`model_lines`) under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header, rows = summary_rows(results)
    table = Table(title="relation eval: mean ± std per split and method", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i < 3)
    for row in rows:  # the std under the mean keeps the table narrow
        table.add_row(*(cell.replace(" ± ", "\n± ") for cell in row))
    return Group(table, Text("model evaluated:\n  " + "\n  ".join(model_lines(results["model"]))))


def by_k_table(results: dict):
    """:func:`by_k_rows` as a rich Table for the console; None when every sample had the same k."""
    from rich.table import Table

    found = by_k_rows(results)
    if found is None:
        return None
    table = Table(title="by number of exemplar pairs k: mean ± std", title_justify="left")
    for i, name in enumerate(found[0]):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i < 3)
    for row in found[1]:
        table.add_row(*(cell.replace(" ± ", "\n± ") for cell in row))
    return table


# ------------------------------------------------------------------------------------------------ grids


def thumbnail(path: Path | None) -> Image.Image:
    """The image on a CELL x CELL neutral frame (:func:`~relation_cli.grids.framed`); an empty cell for ``None``."""
    return framed(open_image(path, "grid image", 10**9, min_side=1) if path is not None else None, CELL)


def grid_columns(methods: list[str]) -> list[str]:
    """A | A' | B | output | target | baselines."""
    return ["A", "A'", "B", METHOD_LABELS[MODEL], "target", *(METHOD_LABELS[m] for m in methods if m != MODEL)]


def grid_indices(samples: list[dict], grid_rows: int) -> list[int]:
    """Up to ``grid_rows`` row indices of one split, spread over its tasks (:func:`spread_by_task`)."""
    task_of = {s["index"]: s["task"] or "" for s in samples}  # every method's sample of a row has its task
    return spread_by_task(sorted(task_of), task_of.__getitem__)[:grid_rows]


def grid_images(samples: list[dict], root: Path, methods: list[str], grid_rows: int) -> list[list[Image.Image]]:
    """Thumbnails of the rows ``grid_indices`` picks from one split, one list per row in column order;
    the first cell of each row carries the row's task name."""
    by_row: dict[int, dict[str, dict]] = {}
    for s in samples:
        by_row.setdefault(s["index"], {})[s["method"]] = s
    grid = []
    for index in grid_indices(samples, grid_rows):
        row = by_row[index]
        own = row.get(MODEL) or next(iter(row.values()))  # a non-finite output has no sample: a grey cell
        paths = [root / own[k] for k in ("cond1", "cond2", "source")]
        paths += [root / own["output"] if MODEL in row else None, root / own["target"]]
        paths += [root / row[m]["output"] if m in row else None for m in methods if m != MODEL]
        cells = [thumbnail(p) for p in paths]
        if own["task"]:
            label_cell(cells[0], own["task"])
        grid.append(cells)
    return grid


def save_grid(path: Path, columns: list[str], grid: list[list[Image.Image]]) -> Path:
    """One PNG: a header of column names, then one line of thumbnails per row (:func:`grid_image`)."""
    with atomic_file(path) as tmp:
        grid_image(columns, grid, CELL).save(tmp, format="PNG")
    return path


# ------------------------------------------------------------------------------------------------ html


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.{DIGITS.get(column, 3)}f}"
    return "-" if value is None else str(value)


def _caption(samples: list[dict], index: int) -> str:
    parts = []
    for s in (s for s in samples if s["index"] == index):
        scores = ", ".join(
            f"{NAMES.get(m, m.upper())} {s[m]:.{DIGITS[m]}f}" for m in METRICS if isinstance(s.get(m), (int, float))
        )
        label = METHOD_LABELS[s["method"]]
        if s["exemplar_row"] != s["index"]:
            label += f" (pair of row {s['exemplar_row'] + 1}, task {s['exemplar_task'] or '-'})"
        parts.append(f"<b>{html.escape(label)}</b>: {html.escape(scores)}")
    own = next(s for s in samples if s["index"] == index)
    head = f"row {index + 1} · task {html.escape(own['task'] or '-')} · “{html.escape(own['text'])}”"
    return head + "<br>" + "<br>".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}th{background:#f3f3f3}
.grid td{padding:2px;text-align:center}.grid img{display:block}.cap{font-size:12px;text-align:left;max-width:260px}
.note{color:#8a4b00}"""


def _model_html(results: dict) -> str:
    """The evaluated model: resolved base, image encoder, adapter and LoRA with their weights' sha256."""
    lines = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in model_lines(results["model"]))
    return f"<h2>Model evaluated</h2><ul class='model'>{lines}</ul>"


def write_html(path: Path, results: dict, grids: dict[str, tuple[list[str], list[list[Image.Image]], Path]]) -> Path:
    """``grids``: split -> (column names, thumbnails, grid PNG path relative to the report)."""
    header, rows = summary_rows(results)
    settings = results["settings"]
    files = ", ".join(f"<a href='{name}'>{name}</a>" for name in ("metrics.json", "per_task.csv", "config.yaml"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>relation eval</title>",
        f"<style>{STYLE}</style></head><body><h1>relation eval</h1>",
        f"<p>{html.escape(results['created'])} · {settings['infer.steps']} steps · files: {files}</p>",
        _model_html(results),
        "<h2>Summary (mean ± std)</h2>",
        _table(header, rows),
    ]
    for note in notes_of(results):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    by_k = by_k_rows(results)
    if by_k is not None:
        parts += ["<h2>By number of exemplar pairs k (mean ± std)</h2>", _table(*by_k)]
    judge = results.get("judge")
    if judge:
        parts.append(
            f"<h2>Judge</h2><p>{html.escape(judge['model'])} at {html.escape(judge['endpoint'])}, "
            f"{html.escape(judge['date'])}, prompt sha256 <code>{judge['prompt_sha256'][:16]}…</code></p>"
        )
        statuses = ["ok", "refusal", "unparseable", "error", "cached"]
        parts.append(
            _table(["method", *statuses], [[m, *(c[s] for s in statuses)] for m, c in judge["counts"].items()])
        )
    columns, task_rows = per_task(results["samples"])
    parts.append(f"<details><summary>Per task ({len(task_rows)} lines, as in per_task.csv)</summary>")
    parts.append(_table(columns, [[_number(r.get(c), c) for c in columns] for r in task_rows]) + "</details>")
    parts.append("<h2>Examples</h2>")
    for split, (columns, grid, png) in grids.items():
        rel = png.as_posix()
        parts.append(f"<h3>{html.escape(split)} (<a href='{html.escape(rel)}'>{html.escape(rel)}</a>)</h3>")
        split_samples = [s for s in results["samples"] if s["split"] == split]
        indices = grid_indices(split_samples, len(grid))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>scores</th>"
        lines = []
        for index, line in zip(indices, grid):
            cells = "".join(
                f"<td><img src='{_data_url(im)}' width='{CELL}' height='{CELL}' alt=''></td>" for im in line
            )
            lines.append(f"<tr>{cells}<td class='cap'>{_caption(split_samples, index)}</td></tr>")
        parts.append(f"<table class='grid'><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>")
    parts.append("</body></html>\n")
    write_text_atomic(path, "\n".join(parts))
    return path
