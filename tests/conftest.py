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
