"""`relation ui`: the page served on a free localhost port with the embedded demo model, driven through
gradio_client (API) and a real headless chromium (playwright).

The page needs the ``ui`` extra; ``make test`` (and so CI) installs it, and with RELATION_REQUIRE_UI=1
(set by .ci/run) a missing extra fails these tests instead of skipping them.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES
from eval_helpers import write_test_file
from helpers import random_image
from relation_cli.cli import main
from relation_cli.config import load_config
from relation_cli.errors import RelationError

# What the server caches and the client downloads goes to this run's own folder, removed at its end
_SCRATCH = tempfile.mkdtemp(prefix="relation-test-ui-")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_SCRATCH, "gradio")

if os.environ.get("RELATION_REQUIRE_UI", "") in ("", "0"):
    pytest.importorskip("gradio", reason="the ui extra is not installed: pip install -e '.[ui]'")
import gradio_client  # noqa: E402  (fails here, not skips, when RELATION_REQUIRE_UI=1)

from relation_cli import ui  # noqa: E402

@pytest.fixture(scope="module", autouse=True)
def scratch_tempdir():
    """gradio_client makes a folder in the system's temp folder for every file it downloads and leaves it
    there, empty (Client's download); during these tests that folder is this run's scratch one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", _SCRATCH)
        yield


MAX_PIXELS = 64 * 64  # the page's data.max_image_pixels: the 32x32 examples pass, an 80x80 image does not
PAIR = [EXAMPLES / "exemplar_before.png", EXAMPLES / "exemplar_after.png"]
QUERY = EXAMPLES / "query.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The page of `relation ui` (demo model) on a free port; records the thread of every model load (the
    page's requests run in gradio's worker threads, `relation infer` in these tests in the main one)."""
    import relation_cli.model
    from relation_cli.progress import quiet_libraries

    quiet_libraries()
    loads = []
    real = relation_cli.model.load_pipeline

    def counting(cfg, *a, **k):
        loads.append(threading.current_thread().name)
        return real(cfg, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(relation_cli.model, "load_pipeline", counting)
        cfg = load_config(None, [f"data.max_image_pixels={MAX_PIXELS}"])
        port = free_port()
        page = ui.serve(cfg, "127.0.0.1", port, block=False)
        assert loads == [threading.main_thread().name]
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "loads": loads, "cfg": cfg, "page": page}
        finally:
            page.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server["url"], verbose=False, download_files=os.path.join(_SCRATCH, "downloads"))


def edit_args(steps=2, guidance=1.0, scale=1.0, seed=7, query=QUERY, prompt="", max_area=1024):
    files = [gradio_client.handle_file(str(p)) if p is not None else None for p in (*PAIR, query)]
    return (*files, prompt, steps, guidance, scale, seed, max_area)


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def infer_cli(tmp_path: Path, steps=2, guidance=1.0, scale=1.0, seed=7, config: str | None = None) -> Path:
    out = tmp_path / f"infer-{steps}-{seed}{'-config' if config else ''}.png"
    args = ["infer", "--exemplar", *map(str, PAIR), "--query", str(QUERY), "-o", str(out)]
    if config:
        args += ["--config", config]
    else:
        args += ["--steps", str(steps), "--guidance", str(guidance), "--scale", str(scale), "--seed", str(seed),
                 "--set", f"data.max_image_pixels={MAX_PIXELS}"]  # fmt: skip
    assert main(args) == 0
    return out


def test_page_result_equals_relation_infer(server, client, tmp_path):
    image, status, settings, settings_file = client.predict(*edit_args(), api_name="/edit")
    expected = infer_cli(tmp_path)
    assert np.array_equal(read_png(image), read_png(expected))
    saved_by_infer = expected.with_name(expected.name + ".yaml").read_text(encoding="utf-8")
    # infer's file starts with comments naming its input files; the page's inputs are uploads, not named
    saved_by_infer = "".join(x for x in saved_by_infer.splitlines(keepends=True) if not x.startswith("# "))
    assert Path(settings_file).read_text() == saved_by_infer and Path(settings_file).name == "edited.png.yaml"
    assert settings == saved_by_infer.rstrip("\n")  # the page's code box drops the final newline
    assert status.startswith("done in ") and "32x32 · 2 steps · guidance 1 · adapter scale 1 · seed 7" in status
    again = infer_cli(tmp_path, config=settings_file)  # the downloaded YAML reproduces the image
    assert np.array_equal(read_png(again), read_png(image))


def test_concurrent_requests_queue_and_keep_their_own_settings(server, client, tmp_path):
    jobs = [client.submit(*edit_args(steps=s, seed=seed), api_name="/edit") for s, seed in ((1, 3), (3, 11))]
    results = [job.result(timeout=300) for job in jobs]
    for (s, seed), (image, status, settings, _) in zip(((1, 3), (3, 11)), results):
        assert np.array_equal(read_png(image), read_png(infer_cli(tmp_path, steps=s, seed=seed)))
        assert f"{s} steps" in status and f"seed {seed}" in status
    assert server["cfg"].infer.steps == 8 and server["cfg"].infer.seed == 1000  # the page's config is untouched
    assert set(server["loads"]) == {threading.main_thread().name}  # loaded once at start, never by a request


def test_concurrent_calls_of_the_editor_do_not_share_settings(server):
    """Without the queue too: threads calling Editor.run at once each get their own settings' image."""
    editor = ui.Editor(server["cfg"], pipe=_FakePipe())
    results = {}

    def run(seed):
        settings = ui.Settings("", 1, 1.0, 0.5, seed)
        results[seed] = editor.run((str(PAIR[0]), str(PAIR[1])), str(QUERY), settings).config

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {seed: c.infer.seed for seed, c in results.items()} == {s: s for s in range(6)}
    assert server["cfg"].adapter.scale == 1.0


class _FakePipe:
    vae_scale_factor = 4
    size_multiple = 8  # RelationPipeline.size_multiple: 2 x vae_scale_factor
    min_working_side = 0  # RelationPipeline.min_working_side (klein: 64)

    def __call__(self, generator, **kwargs):
        import types

        return types.SimpleNamespace(images=[np.zeros((32, 32, 3), np.float32)])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "query: no image given"),
        ("unreadable", "query 'notes.png': not an image PIL can read"),
        ("too_large", "query 'big.png': 80x80 is 6,400 pixels, over the limit of 4,096 (data.max_image_pixels)"),
        ("bad_setting", "infer.steps: Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_is_a_message_and_the_server_goes_on(server, client, tmp_path, case, message):
    bad = {"missing": None, "unreadable": tmp_path / "notes.png", "too_large": tmp_path / "big.png"}
    (tmp_path / "notes.png").write_text("not an image")
    random_image(tmp_path / "big.png", (80, 80), seed=1)
    args = edit_args(query=bad.get(case, QUERY), steps=0 if case == "bad_setting" else 1)
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict(*args, api_name="/edit")
    assert message in str(e.value) and "Traceback" not in str(e.value)
    assert client.predict(*edit_args(steps=1), api_name="/edit")[1].startswith("done in ")


def test_errors_of_the_run_itself_are_messages(server, client, monkeypatch):
    """A non-finite result (relation's check raises it in infer.edit) and an unexpected bug: one line each."""

    def not_finite(*a, **k):
        raise RelationError("the result is not finite (NaN)")

    monkeypatch.setattr("relation_cli.infer.edit", not_finite)
    with pytest.raises(gradio_client.exceptions.AppError, match=r"the result is not finite \(NaN\)"):
        client.predict(*edit_args(steps=1), api_name="/edit")
    monkeypatch.setattr("relation_cli.infer.edit", lambda *a, **k: 1 / 0)
    with pytest.raises(gradio_client.exceptions.AppError, match="internal error: ZeroDivisionError: division by zero"):
        client.predict(*edit_args(steps=1), api_name="/edit")
    monkeypatch.undo()
    assert client.predict(*edit_args(steps=1), api_name="/edit")[1].startswith("done in ")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A real `relation eval` output folder (demo model, 3 rows, 1 step, pixel metrics only)."""
    root = tmp_path_factory.mktemp("ui-eval")
    data = write_test_file(root / "data", rows=3)
    out = root / "out"
    sets = ["eval.clip_model=", "eval.dino_model=", "eval.fid=false", "eval.grid_rows=3"]
    args = ["eval", "--input", str(data), "--output-dir", str(out), "--steps", "1"]
    args += [x for s in sets for x in ("--set", s)]
    assert main(args) == 0
    return out


def test_results_tab_shows_summary_per_task_and_grids(server, client, eval_dir):
    from relation_cli.evaluate.report import summary_rows

    summary, per_task, grids, notes = client.predict(str(eval_dir), api_name="/results")
    header, rows = summary_rows(json.loads((eval_dir / "metrics.json").read_text()))
    assert summary["headers"] == header and summary["data"] == rows
    assert per_task["headers"][:4] == ["split", "task", "method", "n"] and len(per_task["data"]) == 2 * 4
    assert [g["caption"] for g in grids] == ["seen"]
    assert np.array_equal(read_png(grids[0]["image"]), read_png(eval_dir / "grids" / "seen.png"))
    assert "fid skipped: off (eval.fid is false)" in notes
    with pytest.raises(gradio_client.exceptions.AppError, match="no metrics.json here"):
        client.predict(str(eval_dir / "nothing"), api_name="/results")


def test_host_and_port_checks():
    assert ui.host_warning("127.0.0.1") is None
    assert "reachable by others" in ui.host_warning("0.0.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RelationError, match="cannot listen there"):
            ui.check_port("127.0.0.1", taken.getsockname()[1])
    # a host at fault is named as such (both said "pick another --port")
    with pytest.raises(RelationError, match=r"^--host nonexistent\.invalid: not a host name or address this machine can resolve"):
        ui.check_port("nonexistent.invalid", 7861)
    with pytest.raises(RelationError, match=r"^--host 203\.0\.113\.7: not an address of this machine \("):
        ui.check_port("203.0.113.7", 7861)  # TEST-NET-3: never this machine's
    for host in ("::1", "::", "[::1]"):  # gradio's launch failed on them after the model had loaded (internal error)
        with pytest.raises(RelationError, match=rf"^--host {re.escape(host)}: an IPv6 address, which the page's server"):
            ui.check_port(host, 7861)


def test_cli_refuses_a_taken_port_before_loading(capsys, monkeypatch):
    monkeypatch.setattr("relation_cli.model.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["ui", "--host", "0.0.0.0", "--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --port") and len(err.splitlines()) == 1, err  # no exposure warning: nothing listens
    assert main(["ui", "--host", "nonexistent.invalid", "--port", "7861"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --host nonexistent.invalid: not a host name") and len(err.splitlines()) == 1, err


# ------------------------------------------------------------------------------------------------ browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_in_a_headless_browser(server, tmp_path):
    """Upload the examples, run, see B'; run without a query and see the message; click the example row
    and the query is back. Screenshot:
    RELATION_UI_SCREENSHOT=docs/ui-edit.png saves it there (the README's picture)."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM and os.environ.get("RELATION_REQUIRE_UI", "") in ("", "0"):  # make test on a bare machine
        pytest.skip("Debian's chromium is not installed: apt-get install chromium (.ci/run installs it)")
    assert CHROMIUM, "Debian's chromium is needed: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server["url"])
        for elem, path in zip(("exemplar_a", "exemplar_b", "query"), (*PAIR, QUERY)):
            page.locator(f"#{elem} input[type=file]").set_input_files(str(path))
            expect(page.locator(f"#{elem} img")).to_be_visible(timeout=30_000)
        page.locator("#run").click()
        expect(page.locator("#output img")).to_be_visible(timeout=120_000)
        expect(page.locator("#status textarea")).to_have_value(re.compile("^done in "), timeout=30_000)
        page.screenshot(path=os.environ.get("RELATION_UI_SCREENSHOT") or str(tmp_path / "ui.png"), full_page=True)
        page.locator("#query button[aria-label='Remove Image']").first.click()
        page.locator("#run").click()
        expect(page.get_by_text("query: no image given").first).to_be_visible(timeout=30_000)
        page.locator("#examples tbody tr").first.click()  # the bundled example is one click away
        expect(page.locator("#query img")).to_be_visible(timeout=30_000)
        browser.close()


def test_ui_help_imports_neither_gradio_nor_torch():
    import subprocess

    code = "import sys; from relation_cli.cli import main; main(['ui', '--help']); "
    code += "print('gradio' in sys.modules, 'torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert "--memory" in out and out.strip().endswith("False False")


def test_cli_flags_reach_the_page_config(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(ui, "serve", lambda cfg, host, port: seen.update(cfg=cfg, host=host, port=port))
    monkeypatch.setattr("relation_cli.cli.before_loading", lambda cfg, command, *checks: None)  # the paths below are made up
    adapter = tmp_path / "adapter"
    args = ["ui", "--port", "8123", "--model", "some/flux", "--adapter", str(adapter), "--memory", "model_offload",
            "--device", "cpu", "--set", "infer.steps=3"]  # fmt: skip
    assert main(args) == 0
    cfg = seen["cfg"]
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert (cfg.model.base, cfg.adapter.path, cfg.model.memory, cfg.model.device) == (
        "some/flux", str(adapter), "model_offload", "cpu")  # fmt: skip
    assert cfg.infer.steps == 3


def test_without_gradio_the_command_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    monkeypatch.setattr("relation_cli.model.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["ui", "--port", str(free_port())]) == 1
    assert "error: relation ui needs gradio: pip install 'relation[ui]'" in capsys.readouterr().err


def test_the_page_deletes_what_gradio_caches_after_a_day(server, client):
    """Uploaded photos and results do not pile up in gradio's cache folder: the page is built with
    gradio's delete_cache (every hour, files older than a day), and the cache is where GRADIO_TEMP_DIR says."""
    assert server["page"].delete_cache == ui.CACHE_LIFETIME == (3600, 86400)
    client.predict(*edit_args(steps=1), api_name="/edit")
    assert any(Path(os.environ["GRADIO_TEMP_DIR"]).rglob("*.png"))
