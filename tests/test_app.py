"""``xtc app`` and the explorer's run handling, without a browser (see test_app_browser.py).

The command line is built and checked without starting a server (``subprocess.call`` is
replaced); one test starts the real Voilà server to check that it refuses requests without
the token it got through the environment.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xtc import cli
from tests.conftest import free_port, wait_for_port
from xtc.runtime import repo_path
from xtc.viz import alignment_plots, app, explorer


def _fake_run(folder: Path, params: dict | None = None) -> Path:
    """A folder that looks finished to the app's path checks (a checkpoint file exists)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "best.pt").write_bytes(b"")
    if params is not None:
        (folder / "results.json").write_text(json.dumps({"params": params}))
    return folder


@pytest.fixture
def no_server(monkeypatch):
    """Replace the server start; records (command, env) of each call."""
    calls = []
    monkeypatch.setattr(app.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.delenv("JUPYTER_TOKEN", raising=False)
    monkeypatch.delenv(app.ENV_RUN, raising=False)
    return calls


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "xtc", "app", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert all(opt in out for opt in ("--run", "--port", "--token"))


def test_a_bad_run_is_one_line_with_the_resolved_path(no_server, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths resolve from the repository, not here
    assert cli.main(["app", "--run", "runs/no-such-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xtc: error: ")
    assert str(repo_path("runs", "no-such-run")) in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["app", "--run", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'empty'} holds no checkpoints" in err
    assert no_server == []  # refused before any server started


def test_a_missing_token_is_generated_and_printed_never_on_the_command_line(no_server, capsys):
    port = free_port()
    assert cli.main(["app", "--port", str(port)]) == 0
    assert cli.main(["app", "--port", str(port)]) == 0
    out = capsys.readouterr().out
    urls = [line.split()[-1] for line in out.splitlines() if "serving the explorer" in line]
    tokens = [url.split("token=")[1] for url in urls]
    assert urls[0].startswith(f"http://127.0.0.1:{port}/?token=")
    assert len(tokens) == 2 and tokens[0] != tokens[1] and len(tokens[0]) == 32
    for (command, env), token in zip(no_server, tokens):
        assert env["JUPYTER_TOKEN"] == token  # the server gets it through the environment
        assert not any(token in part for part in command)
        assert "--token" in command and "--Voila.ip=127.0.0.1" in command  # auth on, local only
        assert f"--port={port}" in command and str(app.notebook()) in command


def test_a_port_in_use_is_one_line_before_any_server(no_server, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert cli.main(["app", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is in use" in err
    assert no_server == []


def test_a_given_token_reaches_only_the_environment(no_server, monkeypatch, tmp_path):
    run = _fake_run(tmp_path / "run")
    token = secrets.token_hex(16)
    command, env, url = app.prepare(run, port=9001, token=token)
    assert token not in " ".join(command) and env["JUPYTER_TOKEN"] == token
    assert url == f"http://127.0.0.1:9001/?token={token}"
    assert env[app.ENV_RUN] == str(run.resolve())
    monkeypatch.setenv("JUPYTER_TOKEN", "from-the-environment")  # as `make app` passes it
    assert app.prepare(run)[1]["JUPYTER_TOKEN"] == "from-the-environment"
    with pytest.raises(ValueError, match="port"):
        app.prepare(run, port=70000)


def test_run_paths_resolve_from_the_repository_root(monkeypatch, tmp_path):
    run = _fake_run(tmp_path / "somewhere" / "run")
    monkeypatch.chdir(tmp_path / "somewhere")
    relative = os.path.relpath(run, repo_path())
    assert explorer.resolve_run(relative) == run.resolve()  # not relative to the cwd
    assert explorer.resolve_run(run) == run.resolve()
    with pytest.raises(FileNotFoundError, match="repository root"):
        explorer.resolve_run("run")  # exists here in the cwd, not under the repository
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "gone")):
        explorer.load_run(tmp_path / "gone")


def test_runs_are_labelled_by_method_cross_task_and_seed(tmp_path):
    a = _fake_run(tmp_path / "20260101-000000" / "a", {"model.method": "xtc",
                                                       "loss.cross_task": "consistency",
                                                       "train.seed": 0})
    b = _fake_run(tmp_path / "x" / "b", {"model.method": "mtl", "loss.cross_task": "consistency",
                                         "train.seed": 3})
    c = _fake_run(tmp_path / "y" / "c", {"model.method": "xtc", "loss.cross_task": "alignment",
                                         "train.seed": 0})
    assert explorer.run_label(a) == "xtc consistency, seed 0"
    assert explorer.run_label(b) == "mtl, seed 3"  # no cross-task term without transfer nets
    assert explorer.run_labels([a, b, c]) == ["xtc consistency, seed 0", "mtl, seed 3",
                                              "xtc alignment, seed 0"]
    twin = _fake_run(tmp_path / "z" / "twin",
                     json.loads((a / "results.json").read_text())["params"])
    assert explorer.run_labels([a, twin]) == ["xtc consistency, seed 0 (20260101-000000/a)",
                                              "xtc consistency, seed 0 (z/twin)"]


def test_the_app_lists_the_given_run_first_then_the_runs_found(monkeypatch, tmp_path):
    root = tmp_path / "runs"
    old, new, given = (_fake_run(root / name) for name in ("old", "new", "given"))
    os.utime(old / "checkpoints" / "best.pt", (1, 1))
    monkeypatch.setenv("XTC_RUNS_DIR", str(root))
    monkeypatch.setenv(app.ENV_RUN, str(given))
    runs = app.app_runs(train_if_none=False)
    assert runs[0] == given.resolve() and runs.index(new) < runs.index(old)
    assert len([r for r in runs if r.parent == root]) == 3  # the given run is not repeated
    monkeypatch.setenv(app.ENV_RUN, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        app.app_runs(train_if_none=False)


def test_units_and_the_error_colour_map_shared_with_alignment():
    assert explorer.units("depth", "metres") == "metres"
    assert explorer.units("abs_err", "inverse depth") == "|error| (inverse depth)"
    assert explorer.CMAPS["error"] == alignment_plots.ERROR_CMAP
    assert explorer.CMAPS["energy"] == alignment_plots.ENERGY_CMAP
    from matplotlib import colormaps

    scale = explorer._plotly_scale(alignment_plots.ERROR_CMAP)
    for t, colour in (scale[0], scale[-1]):  # plotly draws the colours matplotlib draws
        rgb = np.round(np.array(colormaps[alignment_plots.ERROR_CMAP](t)[:3]) * 255)
        assert colour == "rgb({:.0f},{:.0f},{:.0f})".format(*rgb)


def _status(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.getheader("Location", "")


@pytest.mark.slow  # starts the real Voilà server (no kernel: no page is rendered)
def test_the_server_refuses_requests_without_the_token(monkeypatch, tmp_path):
    pytest.importorskip("voila")
    port, token = free_port(), secrets.token_hex(16)
    command, env, _ = app.prepare(None, port=port, token=token)
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jrun"))
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(port, proc), "the server did not listen within 60 s"
        assert token not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        for path in ("/", "/?token=" + token[::-1], "/api/kernels"):
            status, where = _status(port, path)
            assert status == 403 or (status == 302 and "/login" in where), (path, status, where)
        status, where = _status(port, f"/no-such-page?token={token}")  # past the login: 404
        assert status == 404 or (status == 302 and "/login" not in where), (status, where)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
