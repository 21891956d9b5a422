import socket
import time
from pathlib import Path

import pytest

from xtc import config

# A model and dataset small enough that a few epochs take seconds on two CPU cores.
TINY = [
    "data.height=64", "data.width=64", "data.train_size=40", "data.test_size=16",
    "data.val_fraction=0.2", "model.encoder=resnet18", "model.decoder_width=16",
    "model.transfer_width=8", "optim.lr=0.001", "train.epochs=2", "train.batch_size=8",
    "train.device=cpu",
]


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
