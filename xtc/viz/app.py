"""The explorer as a Voilà app: ``xtc app`` / ``make app`` serve ``notebooks/app.ipynb``.

The app notebook is one call, :func:`explorer`, on the same :class:`xtc.viz.explorer.Explorer`
that ``05_explorer`` shows; Voilà runs it in a kernel per page view and strips the code
cells. Voilà has no papermill parameters, so the app gets its run from the environment:

* ``XTC_APP_RUN`` (``xtc app --run DIR`` sets it): the run shown first; the run dropdown also
  lists every other run found.
* Without it: the runs under ``runs/`` (or ``XTC_RUNS_DIR``) and ``reports/``, newest first;
  when there are none, ``configs/quickstart.yaml`` is trained first (about a minute on a
  2-core CPU, bench/RESULTS.md section 9; :func:`xtc.viz.default_run.first_run`) so the app
  always opens on a run that shows the method working.

The server listens on 127.0.0.1 behind a token that never reaches a command line (``ps``
shows command lines): :func:`serve` passes it to Voilà as ``JUPYTER_TOKEN`` in the
environment, which Jupyter Server's identity provider reads once Voilà's ``--token`` flag
turns token authentication on.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

from xtc.errors import ConfigError, SetupError

ENV_RUN = "XTC_APP_RUN"
DEFAULT_PORT = 8866


def notebook() -> Path:
    """The app notebook, ``notebooks/app.ipynb`` in the repository."""
    from xtc.runtime import repo_path

    return repo_path("notebooks", "app.ipynb")


def check_run(run: str | Path) -> Path:
    """The resolved run folder (see :func:`xtc.viz.explorer.resolve_run`) if it holds a
    checkpoint; FileNotFoundError naming the resolved path otherwise."""
    from xtc.viz.explorer import _checkpoint_path, resolve_run

    path = resolve_run(run)
    _checkpoint_path(path, "best")
    return path


def found_runs() -> list[Path]:
    """Finished runs under :func:`xtc.runtime.runs_root` and the repository's ``reports/``,
    newest checkpoint first."""
    from xtc.runtime import repo_path, runs_root
    from xtc.viz.explorer import find_runs

    runs = [r for root in (runs_root(), repo_path("reports")) if root.is_dir()
            for r in find_runs(root)]
    return sorted(dict.fromkeys(runs), key=_age)


def app_runs(run: str | Path | None = None, train_if_none: bool = True) -> list[Path]:
    """The runs the app offers, the one shown first first: ``run`` (default: ``$XTC_APP_RUN``)
    and then every other run :func:`found_runs` finds; with neither, the quickstart config
    trained now into ``<runs_root>/app/<timestamp>/quickstart`` (unless ``train_if_none`` is
    False)."""
    run = run if run is not None else (os.environ.get(ENV_RUN) or None)
    first = [check_run(run)] if run is not None else []
    runs = list(dict.fromkeys([*first, *found_runs()]))
    if not runs and train_if_none:
        from xtc.viz.default_run import first_run

        runs = [first_run("app")]
    return runs


def explorer(run: str | Path | None = None, split: str = "test", index: int = 0):
    """The app itself: an :class:`~xtc.viz.explorer.Explorer` over :func:`app_runs`."""
    from xtc.viz.explorer import Explorer

    return Explorer(app_runs(run), split=split, index=index)


def voila_command(port: int = DEFAULT_PORT, path: Optional[Path] = None) -> list[str]:
    """The Voilà command line :func:`serve` runs. It carries no token: ``--token`` only turns
    token authentication on, the token itself comes from ``JUPYTER_TOKEN``."""
    return [sys.executable, "-m", "voila", str(path or notebook()), "--no-browser", "--token",
            "--Voila.ip=127.0.0.1", f"--port={int(port)}", "--Voila.port_retries=0"]


def voila_env(token: str, run: Optional[Path] = None,
              base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment of the Voilà server (and so of its kernels): ``base`` (default: this
    process's) with the token and, when given, the run to show."""
    env = {**(os.environ if base is None else base), "JUPYTER_TOKEN": token}
    env.pop("JUPYTER_TOKEN_FILE", None)
    if run is not None:
        env[ENV_RUN] = str(run)
    else:
        env.pop(ENV_RUN, None)
    return env


def new_token() -> str:
    return secrets.token_hex(16)


def prepare(run: str | Path | None = None, port: int = DEFAULT_PORT,
            token: Optional[str] = None) -> tuple[list[str], dict[str, str], str]:
    """Everything :func:`serve` needs, without starting anything: ``(command, env, url)``.
    ``token`` defaults to ``$JUPYTER_TOKEN``, else a fresh random one; ``run`` is checked
    here, so a bad path fails before a server starts."""
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--port {port} is not a TCP port (1-65535)")
    run_dir = check_run(run) if run is not None else None
    token = token or os.environ.get("JUPYTER_TOKEN") or new_token()
    url = f"http://127.0.0.1:{int(port)}/?token={token}"
    return voila_command(port), voila_env(token, run_dir), url


def serve(run: str | Path | None = None, port: int = DEFAULT_PORT,
          token: Optional[str] = None) -> int:
    """Run the app until interrupted; prints its URL (with the token) once."""
    command, env, url = prepare(run, port, token)
    _check_can_serve(int(port))
    if run is None and not found_runs():
        print("xtc app: no runs found under runs/ or reports/: the app trains "
              "configs/quickstart.yaml on its first page view (~1 min on a 2-core CPU)", flush=True)
    print(f"xtc app: serving the explorer on {url}", flush=True)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


def _check_can_serve(port: int) -> None:
    """Voilà installed and ``port`` free on 127.0.0.1, else an XtcError (one line for the
    CLI): SetupError without voila, ConfigError for a port in use."""
    import errno
    import importlib.util
    import socket

    if importlib.util.find_spec("voila") is None:
        raise SetupError("voila is not installed in this environment: run `make setup` "
                         "(or pip install voila)")
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(f"port {port} on 127.0.0.1 is in use: pick another with "
                              f"--port N") from None


def _age(run: Path) -> float:
    stamps = [p.stat().st_mtime for p in (run / "checkpoints").glob("*.pt")]
    return -max(stamps, default=0.0)
