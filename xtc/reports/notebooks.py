"""Executing one notebook: papermill into a folder, nbconvert to HTML beside it, and the
thread limit a run's kernel inherits. papermill and nbconvert load inside the functions."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from xtc import files
from xtc.errors import MissingFileError, SetupError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ExecutionFailed(RuntimeError):
    """A notebook raised; ``notebook`` and ``html`` are its executed (partial) copies."""

    def __init__(self, message: str, notebook: Path, html_path: Path | None):
        super().__init__(message)
        self.notebook, self.html = notebook, html_path


# --------------------------------------------------------------------------- one notebook
def execute(notebook: str | Path, out_dir: str | Path, parameters: dict | None = None,
            kernel_name: str = "python3", progress: bool = False) -> Path:
    """Run ``notebook`` with papermill into ``out_dir`` (+ an HTML copy); return the .ipynb.

    The kernel's working directory is the notebook's folder, so pass absolute paths in
    ``parameters``. On failure the partial notebook and its HTML are still written, then
    :class:`ExecutionFailed` is raised.
    """
    import papermill

    notebook, out_dir = Path(notebook).resolve(), Path(out_dir).resolve()
    if not notebook.is_file():
        raise MissingFileError(f"notebook {notebook} does not exist")
    check_kernel(kernel_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters or {},
                                   kernel_name=kernel_name, cwd=str(notebook.parent),
                                   progress_bar=progress)
    except Exception as exc:  # a cell raised, or the kernel died: keep what ran
        html_path = to_html(output) if output.is_file() else None
        message = str(exc).strip().splitlines()
        name = getattr(exc, "ename", type(exc).__name__)
        detail = getattr(exc, "evalue", message[-1] if message else "")
        raise ExecutionFailed(f"{name}: {detail}", output, html_path) from None
    to_html(output)
    return output


def to_html(notebook: Path) -> Path:
    """Write ``<notebook>.html`` next to it with nbconvert's HTMLExporter (atomic)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return files.atomic_write(notebook.with_suffix(".html"), lambda tmp: tmp.write_text(body))


def check_kernel(kernel_name: str = "python3") -> None:
    """Fail with the install command when no ``kernel_name`` kernelspec exists."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    fix = f"{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}"
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise SetupError(f"no Jupyter kernel named {kernel_name!r}; "
                         f"install it with: {fix}") from None
    exe = spec.argv[0] if spec.argv else ""
    # "python"/"python3" are replaced by this interpreter by jupyter_client
    if exe not in ("python", "python3") and Path(exe).resolve() != Path(sys.executable).resolve():
        import warnings
        warnings.warn(f"kernel {kernel_name!r} runs {exe}, not {sys.executable}; to use this "
                      f"environment run: {fix}", stacklevel=2)


@contextmanager
def thread_limit(n: int):
    """Set the BLAS/OpenMP thread counts the kernel inherits, restored afterwards."""
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(n) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, value in old.items():
            os.environ.pop(v) if value is None else os.environ.__setitem__(v, value)
