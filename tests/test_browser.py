"""A real browser drives the explorer notebook in JupyterLab (ipywidgets must render).

Starts JupyterLab on a free port with a random token over a temporary copy of
``notebooks/05_explorer.ipynb``, opens it in Debian's chromium through Playwright, runs all
cells, waits for the ipywidgets explorer (a real slider, not the widget's text repr), moves
the sample slider and checks that the plotly figure in the explorer changed. Screenshots
are saved under the test's tmp_path. Skipped only when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, free_port

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_explorer.ipynb"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium); Playwright's own browser download is not used"),
]



@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of the explorer notebook; yields its base URL and token."""
    import nbformat

    from xtc import config, train
    from tests.conftest import TINY

    root = tmp_path / "lab"
    root.mkdir()
    # a tiny finished run, so the notebook explores it instead of training the quickstart
    cfg = config.load(None, [*TINY, "train.epochs=1", "train.max_steps_per_epoch=2"])
    run = train.fit(cfg, out_dir=tmp_path / "tiny-xtc", progress=False).out_dir
    nb = nbformat.read(REPO / "notebooks" / NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert "run_dir = None" in params.source
    params.source = params.source.replace("run_dir = None", f"run_dir = {str(run)!r}", 1)
    nbformat.write(nb, root / NOTEBOOK)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrun"), "MPLBACKEND": "agg"}
    jupyter = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--ip", "127.0.0.1", "--port", str(port), "--no-browser",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=open(tmp_path / "lab.log", "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        yield base, token
    finally:
        try:  # a clean shutdown also stops the kernels it started
            urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/shutdown?token={token}", method="POST"), timeout=5)
            proc.wait(timeout=20)
        except Exception:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


def test_explorer_widget_updates_in_jupyterlab(lab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            for _ in range(3):  # Run > Run All Cells; retry if the kernel was not ready yet
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                try:
                    page.locator(".jp-InputPrompt", has_text="[*]").first.wait_for(timeout=10_000)
                    break
                except sync_api.TimeoutError:
                    page.keyboard.press("Escape")

            page.screenshot(path=str(tmp_path / "lab-running.png"))
            explorer = page.locator(".widget-vbox").filter(has=page.locator(".js-plotly-plot"))
            title = explorer.locator(".js-plotly-plot .gtitle").first
            title.wait_for(timeout=180_000)  # the kernel loads the run first
            slider = explorer.locator(".widget-slider").first
            assert slider.is_visible(), "the explorer rendered as text, not as a widget"
            before_title = title.text_content()
            before_png = explorer.first.screenshot(path=str(tmp_path / "explorer-before.png"))
            assert "#0" in before_title, before_title

            explorer.locator(".noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "t => { const e = [...document.querySelectorAll('.widget-vbox .js-plotly-plot "
                ".gtitle')]; return e.length && e.every(x => x.textContent !== t); }",
                arg=before_title, timeout=60_000)
            after_title = title.text_content()
            after_png = explorer.first.screenshot(path=str(tmp_path / "explorer-after.png"))
            page.screenshot(path=str(tmp_path / "lab.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert "#1" in after_title, after_title
    assert before_png != after_png
    print(f"screenshots in {tmp_path}")
