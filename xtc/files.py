"""Small file I/O shared by results, checkpoints, reports and the summary: atomic writes
(readers never see half a file) and JSON reads that say why a file is unusable instead of
raising, so an index or a table can list the file and go on.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "status.json"
    >>> _ = write_json(path, {"status": "ok"})
    >>> read_json(path)
    ({'status': 'ok'}, None)
    >>> _ = path.write_text("[1, 2]")
    >>> read_json(path)
    (None, 'holds a JSON array, not an object')
    >>> read_json(path.with_name("missing.json"))
    (None, None)
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask. Linux shows it in /proc without changing it; elsewhere it is read
    by setting and restoring it (under a lock, with 077 meanwhile: the safe side)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file.

    A failure before the rename leaves the previous version of ``path`` intact. The file
    gets the mode a plain ``open()`` would (``0o666`` less the umask), not mkstemp's 0600,
    so collaborators can read results. An OSError about the temporary file (disk full) is
    raised naming ``path``, the file the user asked for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno is not None and (exc.filename is None or str(exc.filename) == tmp):
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """``value`` as indented JSON with a final newline, written atomically."""
    text = json.dumps(value, indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path, kind: type = dict) -> tuple[Any, str | None]:
    """``(value, None)``; ``(None, None)`` when the file is missing; ``(None, why)`` when it
    cannot be read, is not JSON or is not a ``kind`` (a JSON object, or a list)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({type(exc).__name__})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (f"is not valid JSON ({exc.msg} at line {exc.lineno}): truncated or edited"
                      if text.strip() else "is empty (truncated)")
    if not isinstance(value, kind):
        want = "an object" if kind is dict else "a list"
        return None, f"holds a JSON {json_type(value)}, not {want}"
    return value, None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string, ...)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
