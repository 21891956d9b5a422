"""What a finished run keeps on disk (train.keep_checkpoints): no optimizer state it no longer
needs by default, everything when it is to be trained longer, best.pt alone for the demo; and
a resume that cannot be exact says so instead of starting from fresh Adam moments."""

from __future__ import annotations

import pytest
import torch

from xtc import checkpoint, train


def _kept(out):
    return {p.name: torch.load(p, weights_only=True) for p in (out / "checkpoints").glob("*.pt")}


def _quick(tiny_config, *extra):
    return tiny_config("train.epochs=1", "train.max_steps_per_epoch=1", *extra)


def test_weights_drop_the_optimizer_state_and_keep_the_weights(tiny_config, tmp_path):
    full = train.fit(_quick(tiny_config, "train.keep_checkpoints=resumable"),
                     out_dir=tmp_path / "full", progress=False)
    slim = train.fit(_quick(tiny_config), out_dir=tmp_path / "slim", progress=False)
    a, b = _kept(tmp_path / "full"), _kept(tmp_path / "slim")
    assert "optimizer" in a["last.pt"] and "scheduler" in a["last.pt"]
    assert "optimizer" not in b["last.pt"] and "scheduler" not in b["last.pt"]
    for key in ("model", "criterion", "history", "epoch", "config"):  # all but the resume state
        assert key in b["last.pt"]
    assert all(torch.equal(a["last.pt"]["model"][k], v) for k, v in b["last.pt"]["model"].items())
    assert full.test_metrics == slim.test_metrics
    size = {name: (tmp_path / name / "checkpoints" / "last.pt").stat().st_size
            for name in ("full", "slim")}
    assert size["slim"] < 0.5 * size["full"]  # Adam keeps two moments per weight


def test_best_keeps_only_the_reported_weights(tiny_config, tmp_path):
    run = train.fit(_quick(tiny_config, "train.keep_checkpoints=best"), out_dir=tmp_path,
                    progress=False)
    kept = _kept(tmp_path)
    assert list(kept) == ["best.pt"]
    assert all(torch.equal(run.model.state_dict()[k], v)
               for k, v in kept["best.pt"]["model"].items())
    with pytest.raises(FileExistsError, match="kept only best.pt"):
        train.fit(_quick(tiny_config, "train.epochs=2"), out_dir=tmp_path, resume=True,
                  progress=False)


def test_training_longer_needs_the_optimizer_state(tiny_config, tmp_path):
    train.fit(_quick(tiny_config), out_dir=tmp_path / "slim", progress=False)
    before = (tmp_path / "slim" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="keep_checkpoints=resumable"):
        train.fit(tiny_config("train.epochs=2", "train.max_steps_per_epoch=1"),
                  out_dir=tmp_path / "slim", resume=True, progress=False)
    assert (tmp_path / "slim" / "checkpoints" / "last.pt").read_bytes() == before  # untouched

    once = train.fit(_quick(tiny_config, "train.keep_checkpoints=resumable"),
                     out_dir=tmp_path / "kept", progress=False)
    longer = train.fit(tiny_config("train.epochs=2", "train.max_steps_per_epoch=1"),
                       out_dir=tmp_path / "kept", resume=True, progress=False)
    straight = train.fit(tiny_config("train.epochs=2", "train.max_steps_per_epoch=1"),
                         progress=False)
    assert len(longer.history) == 2 and once.history[0] == longer.history[0]
    assert all(torch.equal(straight.model.state_dict()[k], v)
               for k, v in longer.model.state_dict().items())


def test_checkpoints_older_than_the_key_kept_everything(tiny_config, tmp_path):
    train.fit(_quick(tiny_config, "train.keep_checkpoints=resumable"), out_dir=tmp_path,
              progress=False)
    payload = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    del payload["config"]["train"]["keep_checkpoints"]
    payload["schema"] = 2
    cfg = checkpoint.config_of(payload, tmp_path / "old.pt")
    assert cfg.train.keep_checkpoints == "resumable"
