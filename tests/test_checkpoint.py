import pickle

import pytest
import torch

from xtc import checkpoint, results
from xtc.checkpoint import CheckpointError


def test_save_load_round_trip_with_weights_only(tmp_path):
    payload = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "history": [{"a": 1.0}]}
    path = checkpoint.save(payload, tmp_path / "ckpt" / "last.pt")
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(3.0))
    assert checkpoint.load(path)["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_failed_write_keeps_the_previous_version(tmp_path):
    path = checkpoint.save({"model": {"w": torch.zeros(1)}}, tmp_path / "last.pt")

    def explode(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.atomic_write(path, explode)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:  # a bare pickle
        pickle.dump({"model": _Payload(marker)}, handle)
    zipped = tmp_path / "evil.zip.pt"  # torch's own zip format with a hostile pickle inside
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, zipped)
    for candidate in (path, zipped):
        with pytest.raises(CheckpointError, match="refused"):
            checkpoint.load(candidate)
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    good = checkpoint.save({"model": {"w": torch.randn(100)}}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(truncated)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        checkpoint.load(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_results_are_strict_json(tmp_path):
    results.write(tmp_path, params={"m": "xtc"}, metrics={"iou": [0.5, float("nan")]},
                  history=[{"epoch": 0, "loss": float("inf")}])
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = results.read(tmp_path)
    assert doc["metrics"]["iou"] == [0.5, None] and doc["history"][0]["loss"] is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        results.read(tmp_path / "nowhere")


# The config keys of the oldest checkpoints (schema 1, before the schema stamp), frozen: a
# key added to xtc.config since must have an ADDED_KEYS entry, or checkpoints written before
# it could not be evaluated, and checkpoint.config_of would not know to refuse or fill it.
SCHEMA_1_KEYS = {
    "data.name", "data.root", "data.classes", "data.height", "data.width", "data.train_size",
    "data.test_size", "data.val_fraction", "data.augment", "data.num_workers", "data.seed",
    "model.method", "model.encoder", "model.pretrained", "model.decoder_width",
    "model.transfer_width", "model.transfer_batch_norm", "loss.cross_task", "loss.lambda1",
    "loss.lambda2", "loss.weighting", "loss.uncertainty_form", "loss.gradnorm_alpha",
    "loss.dwa_temperature", "loss.depth_loss", "loss.seg2depth_loss", "loss.depth2seg_loss",
    "loss.label_smoothing", "optim.lr", "optim.betas", "optim.weight_decay", "optim.step_size",
    "optim.gamma", "train.epochs", "train.batch_size", "train.seed", "train.device",
    "train.precision", "train.select", "train.max_steps_per_epoch", "train.eval_batch_size",
}


def test_every_config_key_added_since_schema_1_is_listed():
    from xtc import config

    keys = set(config.flatten(config.Config()))
    assert keys - SCHEMA_1_KEYS == set(checkpoint.ADDED_KEYS)  # bump SCHEMA with a new entry
    assert max(first for first, _ in checkpoint.ADDED_KEYS.values()) == checkpoint.SCHEMA


def test_training_state_round_trips_through_a_payload() -> None:
    from xtc import checkpoint, train

    state = train.TrainingState(epoch=3, step=5, partial={"sums": {"seg": 1.5}},
                                history=[{"epoch": 0}], best_epoch=2, best_score=-1.25)
    payload = state.to_payload()
    assert set(payload) <= set(checkpoint.RESUME_ENTRIES)
    assert train.TrainingState.from_payload({**payload, "model": {}}) == state
