"""A real browser drives the Voilà app of the explorer (``xtc app``).

Trains two tiny runs (xtc seed 0, mtl seed 1), starts the app the way ``xtc app`` does
(:func:`xtc.viz.app.prepare`: the token reaches Voilà through the environment) on a free
port with a random token, checks that the token is not on the server's command line and
that a request without it is refused, then opens the app in Debian's chromium through
Playwright: no code cell source is shown, moving the sample slider changes the figure, and
switching the run dropdown changes it again. Screenshots are saved under the test's
tmp_path. Skipped only when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, TINY, free_port, wait_for_port


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium); Playwright's own browser download is not used"),
]



def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    return conn.getresponse()


@pytest.fixture
def app(tmp_path):
    """The app over two tiny finished runs; yields (url, port, token, server process)."""
    from xtc import config, train
    from xtc.viz import app

    runs = tmp_path / "runs"
    for name, method, seed in (("a", "xtc", 0), ("b", "mtl", 1)):
        cfg = config.load(None, [*TINY, "train.epochs=1", "train.max_steps_per_epoch=2",
                                 f"train.seed={seed}"], method=method)
        train.fit(cfg, out_dir=runs / name, progress=False)
    port, token = free_port(), secrets.token_hex(16)
    command, env, url = app.prepare(runs / "a", port=port, token=token)
    env.update(XTC_RUNS_DIR=str(runs), JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jrun"), MPLBACKEND="agg")
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=open(tmp_path / "app.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not wait_for_port(port, proc, tmp_path / "app.log"):
            pytest.fail("the app did not listen within 60 s")
        yield url, port, token, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _title(page) -> str:
    return page.locator(".js-plotly-plot .gtitle").first.text_content()


def test_app_serves_the_explorer_behind_a_token(app, tmp_path):
    url, port, token, proc = app
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    assert token not in cmdline and "voila" in cmdline
    refused = _get(port, "/")
    assert (refused.status == 403
            or (refused.status in (301, 302, 303, 307)
                and "login" in refused.getheader("Location", ""))), refused.status
    assert _get(port, "/?token=wrong" + token[:4]).status in (302, 403)

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url, timeout=120_000)
            page.locator(".js-plotly-plot .gtitle").first.wait_for(timeout=120_000)
            slider = page.locator(".widget-slider").first
            assert slider.is_visible(), "the explorer rendered as text, not as a widget"
            body = page.locator("body").inner_text()
            assert "xtc.viz.app.explorer" not in body and "import xtc" not in body, body[:500]
            code = ".jp-CodeCell .jp-InputArea, .jp-InputArea-editor, .cm-editor, .CodeMirror"
            assert page.locator(code).count() == 0, "a code cell's source is shown"
            plot = page.locator(".js-plotly-plot").first
            first = _title(page)
            assert "xtc consistency, seed 0" in first and "#0" in first, first
            png_first = plot.screenshot(path=str(tmp_path / "app-0.png"))

            page.locator(".noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "t => { const e = document.querySelector('.js-plotly-plot .gtitle'); "
                "return e && e.textContent !== t; }", arg=first, timeout=60_000)
            second = _title(page)
            png_second = plot.screenshot(path=str(tmp_path / "app-1.png"))

            runs = page.locator(".widget-dropdown select").first
            # labels gain their folder when another run found (e.g. under reports/) shares one
            mtl = next(t for t in runs.locator("option").all_text_contents()  # spaces: nbsp
                       if " ".join(t.replace("\xa0", " ").split()).startswith("mtl, seed 1"))
            runs.select_option(label=mtl)
            page.wait_for_function(
                "t => { const e = document.querySelector('.js-plotly-plot .gtitle'); "
                "return e && e.textContent !== t; }", arg=second, timeout=60_000)
            third = _title(page)
            png_third = plot.screenshot(path=str(tmp_path / "app-mtl.png"))
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert "#1" in second and "xtc consistency, seed 0" in second, second
    assert "mtl, seed 1" in third, third
    assert png_first != png_second != png_third
    print(f"screenshots in {tmp_path}")
