import json
import math

import pytest
import torch

from xtc import checkpoint, train
from xtc.train import TrainingError


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_writes_results_and_loadable_checkpoints(tiny_config, tmp_path):
    run = train.fit(tiny_config(), out_dir=tmp_path, progress=False)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["params"]["model.method"] == "xtc" and len(doc["history"]) == 2
    for key in ("miou", "pixel_acc", "abs_err", "rel_err", "energy"):
        assert key in doc["metrics"]["test"] and key in doc["metrics"]["val"]
    assert doc["protocol"]["depth_units"] == "inverse depth"
    assert doc["provenance"]["dataset_fingerprint"] and doc["provenance"]["packages"]["torch"]
    for name in ("last.pt", "best.pt"):
        payload = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
        assert set(payload["model"]) == set(run.model.state_dict())
        # a finished run keeps no optimizer state by default (train.keep_checkpoints=weights)
        assert "optimizer" not in payload and "scheduler" not in payload
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        train.fit(tiny_config(), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("method", ["stl-seg", "stl-depth", "mtl", "xtc"])
def test_every_method_trains_and_evaluates(tiny_config, method):
    run = train.fit(tiny_config(f"model.method={method}", "train.epochs=1",
                                "train.max_steps_per_epoch=2"), progress=False)
    assert ("miou" in run.test_metrics) == (method != "stl-depth")
    assert ("abs_err" in run.test_metrics) == (method != "stl-seg")
    assert ("energy" in run.test_metrics) == (method == "xtc")


def test_same_seed_same_weights_and_resume_is_exact(tiny_config, tmp_path):
    cfg = tiny_config("train.max_steps_per_epoch=2")
    full = train.fit(cfg, out_dir=tmp_path / "full", progress=False)
    again = train.fit(cfg, progress=False)
    assert _same(_weights(full.model), _weights(again.model))

    half = tiny_config("train.max_steps_per_epoch=2", "train.epochs=1",
                       "train.keep_checkpoints=resumable")  # a finished run trained longer
    train.fit(half, out_dir=tmp_path / "resumed", progress=False)
    (tmp_path / "resumed" / "results.json").unlink()
    train.fit(cfg, out_dir=tmp_path / "resumed", resume=True, progress=False)
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert _same(a["model"], b["model"]) and a["epoch"] == b["epoch"] == 2


def test_resume_refuses_a_changed_config(tiny_config, tmp_path):
    train.fit(tiny_config("train.epochs=1", "train.max_steps_per_epoch=1"), out_dir=tmp_path,
              progress=False)
    with pytest.raises(ValueError, match=r"differs .* in \['loss.lambda1'\]"):
        train.fit(tiny_config("loss.lambda1=0.5", "train.max_steps_per_epoch=1"),
                  out_dir=tmp_path, resume=True, progress=False)


@pytest.mark.slow
def test_a_short_run_lowers_the_loss(tiny_config):
    run = train.fit(tiny_config("train.epochs=4", "loss.weighting=fixed"), progress=False)
    first, last = run.history[0], run.history[-1]
    assert last["train_seg"] < first["train_seg"]
    assert last["train_depth"] < first["train_depth"]


def test_non_finite_loss_stops_with_step_and_term(tiny_config, monkeypatch):
    from xtc import losses

    real = losses.build_criterion

    def poisoned(cfg, model=None):
        criterion = real(cfg, model)
        forward = criterion.forward

        def bad(predictions, batch):
            terms = forward(predictions, batch)
            terms["depth"] = terms["depth"] * float("nan")
            terms["total"] = terms["total"] + terms["depth"]
            return terms

        criterion.forward = bad
        return criterion

    monkeypatch.setattr(train, "build_criterion", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: term\(s\) \['depth', 'total'\]"):
        train.fit(tiny_config(), progress=False)
    # every step is bad: skipping all of them is not training, and stops (max_skipped_fraction)
    with pytest.raises(TrainingError, match="max_skipped_fraction"):
        train.fit(tiny_config("train.nonfinite=skip", "train.epochs=1"), progress=False)
    run = train.fit(tiny_config("train.nonfinite=skip", "train.epochs=1",
                                "train.max_skipped_fraction=1.0"), progress=False)
    assert run.history[0]["train_skipped_fraction"] == 1.0


def test_gradient_cosines_are_logged_per_epoch(tiny_config):
    run = train.fit(tiny_config("train.epochs=1", "train.max_steps_per_epoch=2",
                                "train.grad_cosine_every=1"), progress=False)
    for key in ("train_grad_cos_seg", "train_grad_cos_depth"):
        assert -1.0 <= run.history[0][key] <= 1.0


def test_gradient_cosine_of_a_term_with_itself_is_one():
    w = torch.randn(5, requires_grad=True)
    terms = {"seg": (w ** 2).sum(), "seg2depth": 3 * (w ** 2).sum(),
             "depth": w.sum(), "depth2seg": -w.sum()}
    cos = train.gradient_cosines(terms, [w])
    assert (cos["grad_cos_seg"] == pytest.approx(1.0)
            and cos["grad_cos_depth"] == pytest.approx(-1.0))


def test_detached_transfer_input_keeps_cross_task_gradient_out_of_the_network(tiny_config):
    from xtc.losses import build_criterion
    from xtc.models import build_model_from_config

    cfg = tiny_config("model.transfer_detach_input=true")
    model = build_model_from_config(cfg, 7)
    batch = {"image": torch.rand(2, 3, 64, 64), "seg_target": torch.randint(0, 7, (2, 64, 64)),
             "depth_target": torch.rand(2, 1, 64, 64) + 0.1}
    batch["depth_mask"] = batch["depth_target"] > 0
    terms = build_criterion(cfg, model)(model(batch["image"]), batch)
    (terms["seg2depth"] + terms["depth2seg"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.transfer.parameters())


def test_mid_epoch_checkpoint_resumes_exactly(tiny_config, tmp_path):
    cfg = tiny_config("train.max_steps_per_epoch=3")
    full = train.fit(cfg, progress=False)
    # Stop after step 2 of epoch 1 by raising from the second save of last.pt.
    calls = {"n": 0}
    real_save = checkpoint.save

    def crash_after_two(payload, path):
        real_save(payload, path)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")

    stepwise = tiny_config("train.max_steps_per_epoch=3", "train.checkpoint_every=1")
    import xtc.checkpoint
    xtc.checkpoint.save = crash_after_two
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.fit(stepwise, out_dir=tmp_path, progress=False)
    finally:
        xtc.checkpoint.save = real_save
    payload = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert (payload["epoch"], payload["step"]) == (0, 2)
    resumed = train.fit(stepwise, out_dir=tmp_path, resume=True, progress=False)
    assert _same(_weights(full.model), _weights(resumed.model))
    assert resumed.history[0]["train_total"] == pytest.approx(full.history[0]["train_total"])


def test_sigterm_saves_and_says_how_to_resume(tiny_config, tmp_path, monkeypatch):
    """SIGTERM sent from inside training, in the 2nd optimiser step (epoch 1, step 2 of 4):
    a deterministic point, and no timer that could fire after fit() returned."""
    import os
    import signal

    cfg = tiny_config()  # 2 epochs of 4 steps: a lost signal lets the run finish
    calls, real_step = [], train.optimizer_step

    def step_then_sigterm(*args, **kwargs):
        stats = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled (a stop request) before it returns
        return stats

    monkeypatch.setattr(train, "optimizer_step", step_then_sigterm)
    with pytest.raises(train.TrainingInterrupted, match="SIGTERM received.*--resume") as info:
        train.fit(cfg, out_dir=tmp_path, progress=False)
    assert len(calls) == 2  # stopped after the step in which the signal came
    assert (info.value.epoch, info.value.step, info.value.signal_name) == (0, 2, "SIGTERM")
    assert info.value.saved and not (tmp_path / "results.json").exists()
    payload = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert (payload["epoch"], payload["step"]) == (info.value.epoch, info.value.step)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_without_out_dir_the_returned_model_is_the_selected_one(tiny_config, tmp_path):
    # lr 0.01 makes val mIoU peak at epoch 2 of 3, so "selected" and "last" differ
    cfg = tiny_config("train.epochs=3", "train.max_steps_per_epoch=2", "optim.lr=0.01",
                      "train.select=miou")
    on_disk = train.fit(cfg, out_dir=tmp_path, progress=False)
    in_memory = train.fit(cfg, progress=False)
    assert in_memory.best_epoch == on_disk.best_epoch == 1
    assert _same(_weights(in_memory.model), _weights(on_disk.model))
    assert in_memory.test_metrics == on_disk.test_metrics


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    from xtc import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == expected
    assert runtime.resolve_precision("fp32", cpu) == "fp32"  # explicit choices are kept
    assert runtime.resolve_precision("bf16", cpu) == "bf16"


def test_bf16_channels_last_run_trains_and_records_the_precision_used(tiny_config, tmp_path):
    cfg = tiny_config("train.precision=bf16", "train.channels_last=true", "train.epochs=1",
                      "train.max_steps_per_epoch=2")
    run = train.fit(cfg, out_dir=tmp_path, progress=False)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["provenance"]["precision"] == "bf16" and doc["params"]["train.precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(v)) for k, v in run.test_metrics.items()
               if k in ("miou", "abs_err", "loss_seg", "loss_depth"))
    # the weights stay fp32 (autocast computes in bf16, the optimiser updates fp32 masters)
    assert all(p.dtype == torch.float32 for p in run.model.parameters())


def _host_reads_outside_the_optimizer(profiler) -> int:
    """Scalar reads (``item``/``float``/``bool`` of a tensor) and boolean-mask indexing
    (``nonzero``): on a GPU each one blocks the host until the device catches up. Adam's own
    reads of its CPU step counters are left out: they do not touch the device."""
    def under_optimizer(event):
        while event is not None:
            if event.name.startswith("Optimizer.step"):
                return True
            event = event.cpu_parent
        return False
    return sum(1 for e in profiler.events()
               if e.name in ("aten::_local_scalar_dense", "aten::nonzero")
               and not under_optimizer(e))


def test_a_training_step_reads_nothing_back_but_its_loss_values(tiny_config):
    """On the device path (a resident split), an epoch reads back only each step's loss terms,
    in one stacked transfer (non-finite check, running means, progress bar): no per-term
    float(), no F.one_hot range check. The test split is used as the data because it is not
    augmented: augmentation parameters are drawn on the CPU, where reading them is free."""
    from xtc.data.resident import ResidentSplit

    cfg = tiny_config("train.epochs=1")
    model = train.build_model_from_config(cfg, num_classes=7)
    criterion = train.build_criterion(cfg, model)
    optimizer = train.build_optimizer(cfg, list(model.parameters()) + list(criterion.parameters()))
    data = ResidentSplit(train.build_dataset_from_config(cfg.data, "test"), "cpu")
    state = train.TrainingState()
    with torch.profiler.profile() as prof:
        means = train.train_one_epoch(model, criterion, optimizer, data, torch.device("cpu"),
                                      cfg, state, progress=False)
    assert state.step == 2 and all(map(math.isfinite, means.values()))
    assert _host_reads_outside_the_optimizer(prof) == 0
