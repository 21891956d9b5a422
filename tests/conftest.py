import socket
import time
from pathlib import Path

import pytest
import yaml

from xtc import config

# A model and dataset small enough that a few epochs take seconds on two CPU cores.
TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _flat(tree: dict, prefix: str = "") -> list[str]:
    return [item for key, value in tree.items()
            for item in (_flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                         else [f"{prefix}{key}={value}"])]


# configs/tiny.yaml as section.key=value overrides (tests add their own after it), on CPU
TINY = [*_flat(yaml.safe_load(TINY_CONFIG.read_text())), "train.device=cpu"]


@pytest.fixture
def tiny_config():
    def make(*overrides: str):
        return config.load(None, [*TINY, *overrides])

    return make


# Real-browser tests drive Debian's Chromium (Playwright's own browser download is not used).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc, log: Path | None = None, tries: int = 120) -> bool:
    """True once ``port`` accepts connections (polling every 0.5 s); fails if ``proc`` exits."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            assert proc.poll() is None, log.read_text()[-2000:] if log else "the server exited"
            time.sleep(0.5)
    return False
