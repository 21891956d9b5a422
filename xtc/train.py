"""Training and evaluation: ``fit(config) -> Run`` and ``evaluate(model, loader)``.

The loop is the paper's step (arXiv 2111.14122, Sec. 3) with one backward of the combined
loss: forward -> criterion (direct + cross-task terms, grouped and weighted) -> backward ->
Adam step -> weighting hooks. What is evaluated each epoch and which epoch is reported
follow ``train.protocol`` (:mod:`xtc.selection`): by default the model is selected on a
``val`` split carved from the training set and the held-out ``test`` split is evaluated
once, with the selected weights.

Determinism: every epoch reseeds from ``(train.seed, epoch)`` and data augmentation draws
from ``(data.seed, epoch, index)``, so a run resumed from ``last.pt`` continues exactly as
an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from xtc import checkpoint, distributed, results, runtime, selection
from xtc.config import Config, flatten
from xtc.errors import (CheckpointError, ConfigError, DatasetError, MissingFileError,
                        OutputExistsError, TrainingError)  # TrainingError: re-exported
from xtc.data import build_dataset_from_config
from xtc.data import num_classes as dataset_classes
from xtc.data.resident import ResidentSplit
from xtc.losses import build_criterion
from xtc.losses.aggregation import check_engine, gradient_statistics, objective_jacobian
from xtc.metrics import ConsistencyMeter
from xtc.models import build_model_from_config
from xtc.tasks import TASKS, is_edge, split_edge


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after a completed step (checkpoint saved if any)."""

    def __init__(self, epoch: int, step: int, signal_name: str, saved: bool):
        self.epoch, self.step, self.signal_name, self.saved = epoch, step, signal_name, saved
        where = (f"checkpoints/last.pt holds epoch {epoch + 1}, step {step}; continue with "
                 f"the same command plus --resume" if saved else "no out_dir: nothing saved")
        super().__init__(f"{signal_name} received: training stopped after epoch {epoch + 1}, "
                         f"step {step}; {where}")


class _StopOnSignal:
    """Turn SIGINT/SIGTERM into a request to stop after the current step (main thread only)."""

    def __init__(self):
        self.requested, self.signal_name, self._previous = False, "", {}

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


STATS_EVERY_WITH_AGGREGATOR = 10  # train.grad_stats_every=None under loss.aggregator


@dataclass
class Run:
    """What :func:`fit` returns: the selected model and every number it measured."""

    config: Config
    model: torch.nn.Module
    out_dir: Optional[Path]
    history: list = field(default_factory=list)  # one dict per epoch: train losses + val metrics
    best_epoch: int = -1  # the reported epoch (selected; the last one under train.protocol=mtan)
    val_metrics: dict = field(default_factory=dict)  # of the selected checkpoint (xtc protocol)
    test_metrics: dict = field(default_factory=dict)  # the reported test metrics (see protocol)
    reported_epochs: list = field(default_factory=list)  # epochs the test metrics come from
    wall_time_s: float = 0.0


@dataclass
class TrainingState:
    """Where training stands: what a checkpoint stores beside the weights, and all a resume
    needs to continue exactly (``partial`` holds the running sums of an unfinished epoch)."""

    epoch: int = 0  # the epoch being trained (= epochs finished, between epochs)
    step: int = 0  # steps of ``epoch`` done
    partial: dict = field(default_factory=dict)  # {"sums": {...}, "cosines": {...}} of ``epoch``
    history: list = field(default_factory=list)  # one record per finished epoch
    best_epoch: int = -1  # the reported epoch so far
    best_score: Optional[float] = None  # its selection score

    def to_payload(self) -> dict:
        """The checkpoint entries, one per field (part of ``checkpoint.RESUME_ENTRIES``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, payload: dict) -> "TrainingState":
        return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls)})


@dataclass
class Experiment:
    """Everything one config needs, assembled once (:func:`build_experiment`): the model on
    its device, the criterion, the optimiser and scheduler, and the splits (built on first
    use, holding only the batch keys the model's tasks need)."""

    config: Config
    device: torch.device
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: Optional[torch.optim.Optimizer]
    scheduler: Optional[Any]
    num_classes: int
    data_config: Any  # cfg.data, with no val split under the mtan and paper protocols
    _splits: dict = field(default_factory=dict, repr=False)

    @property
    def watch_split(self) -> str:
        """The split evaluated every epoch: val (xtc protocol) or test (mtan, paper)."""
        return "val" if self.config.train.protocol == "xtc" else "test"

    def dataset(self, split: str, augment: Optional[bool] = None):
        """Split ``split`` (train | val | test); ``augment=False`` turns the train split's
        augmentation off (evaluation)."""
        key = (split, augment)
        if key not in self._splits:
            data = (self.data_config if augment is None
                    else dataclasses.replace(self.data_config, augment=augment))
            self._splits[key] = build_dataset_from_config(data, split, tasks=self.model.tasks)
        return self._splits[key]


def build_experiment(cfg: Config, device: Any = None, *, optimizer: bool = True,
                     num_classes: Optional[int] = None,
                     ctx: distributed.Context = distributed.Context()) -> Experiment:
    """Model (placed on ``device`` in the run's memory layout, SyncBatchNorm under torchrun
    when ``train.sync_batchnorm``), criterion, optimiser and StepLR scheduler for ``cfg``:
    the one place ``fit``, ``xtc evaluate``, the explorer, profiling and bench assemble an
    experiment. ``device`` None: ``train.device``. ``num_classes``: a checkpoint's (default
    the dataset's)."""
    device = runtime.choose_device(cfg.train.device) if device is None else torch.device(device)
    classes = num_classes if num_classes is not None else dataset_classes(cfg.data)
    model = place_model(build_model_from_config(cfg, num_classes=classes), cfg, device)
    if ctx.active and cfg.train.sync_batchnorm:
        model = distributed.convert_sync_batchnorm(model)
    criterion = build_criterion(cfg, model).to(device)
    opt = sched = None
    if optimizer and criterion.aggregation is not None:  # training: the Jacobian's engine
        aggregation = criterion.aggregation
        aggregation.use_engine(check_engine(
            cfg.loss.aggregator_engine, aggregation.name,
            runtime.resolve_precision(cfg.train.precision, device), ctx.active))
    if optimizer:
        opt = build_optimizer(cfg, list(model.parameters()) + criterion.optimised_parameters())
        sched = torch.optim.lr_scheduler.StepLR(opt, cfg.optim.step_size, cfg.optim.gamma)
    data = cfg.data if cfg.train.protocol == "xtc" else dataclasses.replace(cfg.data,
                                                                            val_fraction=0.0)
    return Experiment(cfg, device, model, criterion, opt, sched, classes, data)


@dataclass
class LoadedRun:
    """A trained run read back (:func:`load_run`): its config, the experiment with the
    checkpoint's weights loaded (eval mode), and results.json when the folder has one."""

    config: Config
    experiment: Experiment
    checkpoint_path: Path
    run_dir: Optional[Path]
    results: Optional[dict]
    epoch: Optional[int]

    @property
    def model(self) -> torch.nn.Module:
        return self.experiment.model

    @property
    def criterion(self) -> torch.nn.Module:
        return self.experiment.criterion

    @property
    def num_classes(self) -> int:
        return self.experiment.num_classes

    @property
    def method(self) -> str:
        return self.config.model.method

    @property
    def name(self) -> str:
        return (self.run_dir or self.checkpoint_path.parent).name

    def dataset(self, split: str):
        """Split ``split`` of the run's data, never augmented (what evaluation sees)."""
        return self.experiment.dataset(split, augment=False)


def load_run(path: str | Path, device: Any = None, overrides: list | dict | None = None,
             checkpoint_name: str = "best.pt") -> LoadedRun:
    """Read a run back from its folder (``checkpoints/best.pt``, else ``last.pt``) or from a
    checkpoint file: the one place that turns a checkpoint into a model.

    ``overrides`` change the saved config (e.g. ``data.root`` on another machine); they are
    applied by :func:`xtc.checkpoint.config_of`, which refuses a checkpoint whose config
    lacks keys instead of filling them with today's defaults. ``device`` None: the config's
    ``train.device``. Non-finite weights and weights that do not fit the config's model are
    refused with a message that says so.
    """
    path = Path(path).expanduser()
    run_dir = None
    if path.is_dir():
        run_dir = path
        folder = path / "checkpoints"
        candidates = [folder / checkpoint_name, folder / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
        if not path.is_file():
            raise MissingFileError(f"{run_dir} holds no checkpoints/best.pt or last.pt; "
                                   f"point at a run folder written by xtc train --out DIR")
    elif path.parent.name == "checkpoints":
        run_dir = path.parent.parent
    payload = checkpoint.load(path, require=checkpoint.EVAL_ENTRIES)
    checkpoint.check_finite(payload, path)
    cfg = checkpoint.config_of(payload, path, overrides)
    exp = build_experiment(cfg, device, optimizer=False, num_classes=payload["num_classes"])
    try:
        exp.model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2])[:160]
        raise CheckpointError(f"checkpoint {path} does not fit the model its config "
                              f"describes ({detail}...); was it written by another xtc version "
                              f"or edited?") from None
    if "criterion" in payload:
        try:
            exp.criterion.load_state_dict(payload["criterion"])
        except RuntimeError:
            trained = (payload["config"].get("loss", {}) if isinstance(payload["config"], dict)
                       else {})
            raise checkpoint.CheckpointError(
                f"checkpoint {path}'s loss state (trained with loss.weighting="
                f"{trained.get('weighting', '?')}, loss.single_task_weighting="
                f"{trained.get('single_task_weighting', '?')}) does not fit the criterion of "
                f"loss.weighting={cfg.loss.weighting}, loss.single_task_weighting="
                f"{cfg.loss.single_task_weighting}; drop the loss.* --set overrides, the "
                f"checkpoint's own loss settings apply") from None
    exp.model.eval()
    exp.criterion.eval()
    doc = None
    if run_dir is not None and (run_dir / results.FILENAME).is_file():
        doc = results.read(run_dir)
    return LoadedRun(cfg, exp, path, run_dir, doc, payload.get("epoch"))


def fit(config: Config, out_dir: str | Path | None = None, resume: bool | str = False,
        progress: bool = True) -> Run:
    """Train ``config`` and return the :class:`Run`; with ``out_dir``, write checkpoints
    (``checkpoints/{last,best}.pt``) and ``results.json`` there.

    ``resume``: False starts a fresh run; True (or ``"strict"``) continues
    ``out_dir/checkpoints/last.pt`` and fails without it; ``"auto"`` continues ``last.pt``
    when there is one and starts fresh when there is none (a job preempted before its first
    checkpoint; what sweeps use).

    SIGINT/SIGTERM stop the run after the current step: ``last.pt`` is saved (mid-epoch
    state included) and :class:`TrainingInterrupted` says how to resume.
    """
    session = _Session(config, Path(out_dir) if out_dir is not None else None, resume)
    with _StopOnSignal() as stop:
        for epoch in range(session.state.epoch, config.train.epochs):
            session.train_epoch(epoch, stop, progress)
    return session.finish(progress)


class _Session:
    """One call of :func:`fit`: the experiment, its splits and its :class:`TrainingState`,
    from set-up (and resume) through the epochs to the reported :class:`Run`."""

    def __init__(self, cfg: Config, out_dir: Path | None, resume: bool | str):
        self.start = time.perf_counter()
        self.cfg, self.out_dir = cfg, out_dir
        self.ctx = ctx = distributed.setup()
        _check_distributed(cfg, ctx)
        runtime.seed_everything(cfg.train.seed)
        self.device = device = distributed.device_for(ctx, runtime.choose_device(cfg.train.device))
        self.exp = exp = build_experiment(cfg, device, ctx=ctx)
        # mtan / paper: the whole training pool trains and the test split is watched every epoch
        self.train_set, self.test_set = exp.dataset("train"), exp.dataset("test")
        watch_set = exp.dataset(exp.watch_split)
        if len(self.train_set) < cfg.train.batch_size:
            raise ConfigError(f"the train split has {len(self.train_set)} images, fewer than "
                              f"train.batch_size={cfg.train.batch_size}: no full batch to train "
                              f"on; lower train.batch_size or use more data")
        self.train_data, self.watch_data, self.test_data = (
            (ResidentSplit(d, device) for d in (self.train_set, watch_set, self.test_set))
            if cfg.data.resident else (self.train_set, watch_set, self.test_set))
        self.net = exp.model if not ctx.active else torch.nn.parallel.DistributedDataParallel(
            exp.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.state = TrainingState()
        resume = _check_out_dir(out_dir, resume, cfg, ctx)  # "auto" -> True / False
        _check_eval_fits(exp.model, (watch_set, self.test_set), device, cfg)
        if resume:
            self.state = _restore(out_dir, cfg, exp.model, exp.criterion, exp.optimizer,
                                  exp.scheduler)
        self.best_in_memory = None  # selected weights when there is no out_dir to hold best.pt

    def save(self, name: str) -> None:
        exp = self.exp
        if self.out_dir is None and name == "best.pt":
            self.best_in_memory = {k: v.detach().clone()
                                   for k, v in exp.model.state_dict().items()}
        if self.out_dir is not None and self.ctx.is_main:
            payload = _payload(self.cfg, exp.model, exp.criterion, exp.optimizer, exp.scheduler,
                               self.state)
            if name == "best.pt":  # the reported weights: evaluation needs no optimiser state
                payload = {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")}
            checkpoint.save(payload, self.out_dir / "checkpoints" / name)

    def evaluate(self, data, progress: bool, desc: str) -> dict:
        exp, cfg, ctx = self.exp, self.cfg, self.ctx
        return evaluate(exp.model, _loader(data, cfg, ctx=ctx), exp.criterion, self.device,
                        cfg.train.precision, progress=progress and ctx.is_main, ctx=ctx,
                        desc=desc)

    def train_epoch(self, epoch: int, stop, progress: bool) -> None:
        """Train one epoch, watch its split, select and checkpoint."""
        cfg, ctx, exp, state = self.cfg, self.ctx, self.exp, self.state
        split = exp.watch_split
        state.epoch = epoch
        runtime.seed_everything(runtime.derive_seed(cfg.train.seed, epoch))
        self.train_data.set_epoch(epoch)
        lr = exp.optimizer.param_groups[0]["lr"]  # the rate this epoch trains with
        last = self.out_dir / "checkpoints" / "last.pt" if self.out_dir is not None else None
        losses = train_one_epoch(self.net, exp.criterion, exp.optimizer, self.train_data,
                                 self.device, cfg, state, save=lambda: self.save("last.pt"),
                                 stop=stop, progress=progress and ctx.is_main, ctx=ctx,
                                 last_path=last)
        exp.scheduler.step()
        exp.criterion.end_epoch(reduce=(lambda t: distributed.all_reduce_sum(ctx, t))
                                if ctx.active else None)
        watched = self.evaluate(self.watch_data, progress,
                                f"{split} {epoch + 1}/{cfg.train.epochs}")
        record = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in losses.items()},
                  **{f"{split}_{k}": v for k, v in watched.items() if not isinstance(v, list)},
                  "weights": exp.criterion.weighting.weights()}
        score = _selection_score(cfg, watched, state.history, exp.model.tasks)
        if score is not None:
            record["selection_score"] = score
        state.history.append(record)
        state.epoch, state.step, state.partial = epoch + 1, 0, {}
        if cfg.train.protocol == "mtan" or _improves(score, state.best_score, cfg):
            state.best_score, state.best_epoch = score, epoch
            self.save("best.pt")  # the reported weights: selected, or the latest (mtan)
        self.save("last.pt")
        if progress and ctx.is_main:
            _print_epoch(record, split)

    def finish(self, progress: bool) -> Run:
        """Load the selected weights, measure the test metrics the protocol reports, write
        results.json."""
        cfg, ctx, state, out_dir = self.cfg, self.ctx, self.state, self.out_dir
        model = self.exp.model
        distributed.barrier(ctx)  # rank 0 has written best.pt
        if out_dir is not None and state.best_epoch >= 0:
            model.load_state_dict(checkpoint.load(out_dir / "checkpoints" / "best.pt")["model"])
        elif self.best_in_memory is not None:
            model.load_state_dict(self.best_in_memory)
        best = state.history[state.best_epoch] if state.best_epoch >= 0 else {}
        reported = [state.best_epoch] if state.best_epoch >= 0 else []
        if cfg.train.protocol == "xtc":  # the held-out split, once, with the selected weights
            test_metrics = self.evaluate(self.test_data, progress, "test")
        elif cfg.train.protocol == "mtan":
            test_metrics, reported = selection.mtan_report(state.history)
        else:  # paper: the selected epoch's test metrics, measured when it was selected
            test_metrics = {k[5:]: v for k, v in best.items() if k.startswith("test_")}
        run = Run(config=cfg, model=model, out_dir=out_dir, history=state.history,
                  best_epoch=state.best_epoch,
                  val_metrics={k[4:]: v for k, v in best.items() if k.startswith("val_")},
                  test_metrics=test_metrics, reported_epochs=reported,
                  wall_time_s=time.perf_counter() - self.start)
        if out_dir is not None and ctx.is_main:
            write_results(run, self.train_set, self.device, world=ctx.world)
            finish_checkpoints(out_dir, cfg.train.keep_checkpoints)
        distributed.teardown(ctx)
        return run


def train_one_epoch(model, criterion, optimizer, dataset, device, cfg: Config,
                    state: "TrainingState",
                    save=None, stop=None, progress: bool = True,
                    ctx: distributed.Context = distributed.Context(),
                    last_path: Path | None = None) -> dict[str, float]:
    """Train on ``dataset`` for epoch ``state.epoch`` from step ``state.step``; returns
    the mean of every loss term (and gradient cosines when logged).

    ``state.step`` and ``state.partial`` (running sums) advance as steps complete, so a
    checkpoint taken mid-epoch resumes exactly. ``save()`` is called every
    ``train.checkpoint_every`` steps and when ``stop`` is set.
    """
    from tqdm.auto import tqdm

    model.train()
    criterion.train()
    epoch, first = state.epoch, state.step
    sums = state.partial.setdefault("sums", {})
    cosines = state.partial.setdefault("cosines", {})
    raw = getattr(model, "module", model)  # the network inside DistributedDataParallel
    every = cfg.train.grad_cosine_every if raw.transfer is not None else 0
    stats_every = cfg.train.grad_stats_every
    if stats_every is None:  # default: where the aggregator's step computes them anyway
        stats_every = STATS_EVERY_WITH_AGGREGATOR if criterion.aggregation is not None else 0
    recompute = criterion.weighting.recomputes_losses
    if ctx.active and criterion.aggregation is not None:
        # the aggregator averages Jacobians and task gradients itself (Aggregation.backward):
        # DDP's own all-reduce in backward would never fire and would wait for it
        model.require_backward_grad_sync = False
    loader = _loader(dataset, cfg, shuffle=True, epoch=epoch, start_step=first, ctx=ctx)
    steps = min(cfg.train.max_steps_per_epoch or len(dataset), len(dataset) // cfg.train.batch_size)
    bar = tqdm(loader, total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
               disable=not progress, leave=False)
    for step, batch in enumerate(bar, start=first):
        if step >= steps:
            break
        # a skipped step must not leave its forward's BatchNorm statistics behind
        buffers = _buffers(raw) if cfg.train.nonfinite == "skip" else None
        terms = forward_losses(model, criterion, batch, device, cfg)
        values = _host_values(terms)  # the step's one host sync (a GPU runs ahead otherwise)
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if ctx.active:  # all ranks skip (or stop) together, or DDP's all-reduce would hang
            flag = distributed.all_reduce_sum(ctx, torch.tensor([float(bool(bad))], device=device))
            if float(flag) and not bad:
                bad = ["(another rank's batch shard)"]
        kept = (f"; {last_path} holds the last saved state" if last_path is not None
                and last_path.is_file() else "; no checkpoint was saved yet")
        if bad and cfg.train.nonfinite == "skip":
            _restore_buffers(raw, buffers)
            if criterion.aggregation is not None:
                criterion.aggregation.discard_step()
            sums["skipped_fraction"] = sums.get("skipped_fraction", 0.0) + 1  # mean -> fraction
            state.step = step + 1
            # one skipped step per epoch is always allowed: a lone bad batch in a short epoch
            if sums["skipped_fraction"] > max(1, int(cfg.train.max_skipped_fraction * steps)):
                raise TrainingError(
                    f"train.nonfinite=skip skipped {int(sums['skipped_fraction'])} of the "
                    f"{steps} steps of epoch {epoch + 1} (non-finite {bad}), more than "
                    f"train.max_skipped_fraction={cfg.train.max_skipped_fraction}: the run is "
                    f"not training; lower optim.lr or check the data for NaN/inf{kept}")
            continue
        if bad:
            raise TrainingError(f"non-finite loss at epoch {epoch + 1}, step {step + 1}: "
                                f"term(s) {bad}; lower optim.lr, check the data for NaN/inf, "
                                f"or set train.nonfinite=skip{kept}")
        if every and step % every == 0:
            for name, value in gradient_cosines(terms, raw.encoder.parameters(),
                                                raw.tasks).items():
                cosines.setdefault(name, []).append(value)
        statistics = bool(stats_every) and step % stats_every == 0
        stats = optimizer_step(terms, optimizer, criterion, ctx,
                               seed=runtime.derive_seed(cfg.train.seed, epoch, step),
                               statistics=(raw.encoder.parameters(), cfg.loss.objectives)
                               if statistics else None)
        for name, value in (stats or {}).items():
            cosines.setdefault(name, []).append(value)
        if recompute:  # FAMO: the group losses after the step, on the same batch
            statistics_before = _buffers(raw)
            with torch.no_grad():
                after = criterion.groups(forward_losses(model, criterion, batch, device, cfg))
            _restore_buffers(raw, statistics_before)
            criterion.weighting.update(after)
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        state.step = step + 1
        bar.set_postfix(loss=f"{values['total']:.4f}")
        if save is not None and ((stop is not None and stop.requested) or (
                cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0)):
            save()
        if stop is not None and stop.requested:
            raise TrainingInterrupted(epoch, state.step, stop.signal_name, save is not None)
    applied = max(steps - sums.get("skipped_fraction", 0.0), 1)  # loss means: applied steps
    means = {name: total / (max(steps, 1) if name == "skipped_fraction" else applied)
             for name, total in sums.items()}
    means.update({name: sum(v) / len(v) for name, v in cosines.items()})
    if ctx.active:  # every rank saw a shard of each batch: report the mean over ranks
        names = sorted(means)
        values = distributed.all_reduce_sum(ctx, torch.tensor([means[n] for n in names],
                                                               dtype=torch.float64, device=device))
        means = {n: float(v) / ctx.world for n, v in zip(names, values)}
    return means


def _buffers(model) -> dict[str, torch.Tensor]:
    return {k: b.clone() for k, b in model.named_buffers()}


@torch.no_grad()
def _restore_buffers(model, saved: dict[str, torch.Tensor]) -> None:
    """Put back BatchNorm statistics a forward changed (a skipped step, FAMO's recompute)."""
    for name, buffer in model.named_buffers():
        buffer.copy_(saved[name])


def _host_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every scalar loss term as a Python float, in ONE device-to-host transfer (a
    ``float()`` per term would stall a GPU once per term). float64 on the way, so each value
    equals ``float(term)`` exactly."""
    values = torch.stack([v.detach().reshape(()).double() for v in terms.values()]).tolist()
    return dict(zip(terms, values))


def place_model(model, cfg: Config, device):
    """``model`` on ``device``, in the memory layout the run trains and evaluates in
    (``train.channels_last``): evaluation outside ``fit`` must use it too, because bf16
    kernels round differently per layout (``xtc evaluate`` otherwise differed in the 5th
    digit of mIoU)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def build_optimizer(cfg: Config, parameters: list) -> torch.optim.Optimizer:
    """Adam with the paper's betas (default), or plain SGD as in the authors' energy study."""
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                               weight_decay=cfg.optim.weight_decay)
    return torch.optim.Adam(parameters, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)


def forward_losses(model, criterion, batch: dict, device, cfg: Config) -> dict:
    """The forward half of a training step: batch -> predictions -> loss terms.

    Predictions are computed under bf16 autocast when ``train.precision=bf16``; losses are
    always computed in fp32. With ``train.channels_last`` the images (and the model, see
    :func:`fit`) use the NHWC layout that oneDNN and cuDNN convolutions prefer.
    """
    batch = _to_device(batch, device)
    images = batch["image"]
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with runtime.autocast(device, cfg.train.precision):
        predictions = model(images)
    return criterion({k: v.float() for k, v in predictions.items()}, batch)


def optimizer_step(terms: dict, optimizer, criterion,
                   ctx: distributed.Context = distributed.Context(), *,
                   seed: Optional[int] = None, statistics=None) -> Optional[dict[str, float]]:
    """The backward half: gradients, one optimiser step, then the weighting's hook (e.g.
    GradNorm renormalisation).

    Without an aggregator: one backward of the combined loss (the authors ran two, L_D then
    L_S with retain_graph; one pass over the sum gives the same gradients). With
    ``loss.aggregator``: Jacobian descent over the objectives (:mod:`xtc.losses.aggregation`;
    ``seed`` seeds a random aggregator's draws). ``statistics`` = (shared parameters,
    objectives mode) returns :func:`~xtc.losses.aggregation.gradient_statistics` of the
    objectives' gradients on those parameters and the applied direction.
    """
    optimizer.zero_grad(set_to_none=True)
    aggregation, stats = criterion.aggregation, None
    if aggregation is not None:
        stats = aggregation.backward(criterion.objectives(terms, aggregation.mode), ctx=ctx,
                                     seed=seed, statistics=statistics is not None)
    else:
        jacobian = shared = None
        if statistics is not None:
            shared = [p for p in statistics[0] if p.requires_grad]
            objectives = criterion.objectives(terms, statistics[1])
            jacobian = objective_jacobian(list(objectives.values()), shared, ctx)
        terms["total"].backward()
        if jacobian is not None:
            direction = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                   .flatten() for p in shared]).float()
            stats = gradient_statistics(jacobian, direction, list(objectives))
    distributed.average_gradients(ctx, criterion.parameters())  # DDP covers the model's
    optimizer.step()
    criterion.after_step()
    return stats


def gradient_cosines(terms: dict, parameters, tasks=("seg", "depth")) -> dict[str, float]:
    """Cosine between each task's direct-loss gradient and the gradient of its outgoing
    cross-task terms on ``parameters`` (the shared encoder): ``grad_cos_<a>`` =
    cos(dL_a, d mean_b L_a2b), so two tasks give ``grad_cos_seg`` = cos(dL_seg, dL_seg2depth)
    and ``grad_cos_depth`` = cos(dL_depth, dL_depth2seg). Positive means the cross-task term
    pushes the shared features the same way as the direct loss (docs/method.md §4.3)."""
    params = [p for p in parameters if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)

    out = {}
    for task in tasks:
        edges = [k for k in terms if is_edge(k) and split_edge(k)[0] == task]
        if not edges:
            continue
        cross = (terms[edges[0]] if len(edges) == 1
                 else torch.stack([terms[e] for e in edges]).mean())
        # dot products parameter by parameter, summed in float64: the cosine of the
        # concatenated gradients without concatenating them (two copies of the encoder's
        # gradients per term, and cosine_similarity's normalised copies)
        sums = torch.zeros(3, dtype=torch.float64, device=params[0].device)  # ab, aa, bb
        for ga, gb in zip(grads(terms[task]), grads(cross)):
            a = ga.flatten() if ga is not None else None
            b = gb.flatten() if gb is not None else None
            for i, (x, y) in enumerate(((a, b), (a, a), (b, b))):
                if x is not None and y is not None:
                    sums[i] += torch.dot(x, y).double()
        denominator = (sums[1].sqrt() * sums[2].sqrt()).clamp_min(1e-8)
        out[f"grad_cos_{task}"] = float(sums[0] / denominator)
    return out


@torch.no_grad()
def evaluate(model, loader, criterion=None, device: torch.device | None = None,
             precision: str = "fp32", progress: bool = False,
             ctx: distributed.Context = distributed.Context(),
             desc: str = "evaluate") -> dict[str, Any]:
    """Metrics of the direct predictions over the whole split (dataset-level), consistency
    energy for ``xtc`` models, and mean loss terms when a criterion is given.

    ``direct_loss`` is the sum of the unweighted direct losses (no learnable weighting
    terms, so it does not drift as uncertainty weights grow): ``train.select=val_loss``
    selects on it, and the ``paper`` protocol keeps the epoch where it is lowest on test.
    """
    from tqdm.auto import tqdm

    device = device or next(model.parameters()).device
    model.eval()
    if criterion is not None:
        criterion.eval()
    specs = getattr(model, "specs", None) or {t: TASKS.get(t)(model.num_classes)
                                              for t in model.tasks}
    meters = {t: spec.meter() for t, spec in specs.items()}
    edges = [name for name, _, _ in getattr(model, "edges", [])]
    consistency = ConsistencyMeter(model.num_classes, edges) if edges else None
    loss_sums: dict[str, float] = {}
    batches = 0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        batch = _to_device(batch, device)
        with runtime.autocast(device, precision):
            predictions = model(batch["image"])
        predictions = {k: v.float() for k, v in predictions.items()}
        for task, spec in specs.items():
            spec.measure(meters[task], predictions[task], batch)
        if consistency is not None:
            consistency.update(predictions, batch)
        if criterion is not None:
            for name, value in _host_values(criterion(predictions, batch)).items():
                loss_sums[name] = loss_sums.get(name, 0.0) + value
        batches += 1
    metrics: dict[str, Any] = {}
    for meter in [*meters.values(), consistency]:
        if meter is not None:
            if ctx.active:  # each rank evaluated a shard: sum the meters' states
                meter.load_state({k: distributed.all_reduce_sum(ctx, v.clone())
                                  for k, v in meter.state().items()})
            metrics.update(meter.compute())
    if ctx.active:
        names = sorted(loss_sums)
        totals = distributed.all_reduce_sum(ctx, torch.tensor(
            [loss_sums[n] for n in names] + [batches], dtype=torch.float64, device=device))
        loss_sums, batches = dict(zip(names, totals.tolist())), int(totals[-1])
    for name, total in loss_sums.items():
        metrics[f"loss_{name}"] = total / max(batches, 1)
    if criterion is not None:
        metrics["direct_loss"] = sum(metrics.get(f"loss_{t}", 0.0) for t in model.tasks)
    return metrics


def write_results(run: Run, train_set, device: torch.device, world: int = 1) -> Path:
    """results.json: config, selected val metrics, test metrics, history, provenance."""
    cfg = run.config
    return results.write(
        run.out_dir,
        params=flatten(cfg),
        metrics={"test": run.test_metrics, "val": run.val_metrics},
        protocol=protocol(cfg, train_set, run.reported_epochs),
        history=run.history,
        best_epoch=run.best_epoch,
        reported_epochs=run.reported_epochs,
        wall_time_s=run.wall_time_s,
        provenance={**runtime.provenance(device), "dataset_fingerprint": train_set.fingerprint(),
                    "world_size": world,
                    "precision": runtime.resolve_precision(cfg.train.precision, device)},
        **({"aggregation": aggregation_record(run.model, cfg)}
           if cfg.loss.aggregator != "none" else {}),
    )


def aggregation_record(model, cfg: Config) -> dict:
    """What results.json says about a run's gradient aggregation."""
    from importlib.metadata import version

    from xtc.losses.aggregation import JACOBIANS, aggregator_arguments

    names = list(model.tasks) + ([name for name, _, _ in model.edges]
                                 if cfg.loss.objectives == "terms" else [])
    return {"aggregator": cfg.loss.aggregator,
            "args": {**aggregator_arguments(cfg.loss.aggregator), **cfg.loss.aggregator_args},
            "objectives": cfg.loss.objectives, "objective_names": names,
            "engine": cfg.loss.aggregator_engine,
            "jacobian": JACOBIANS[cfg.loss.aggregator_engine], "torchjd": version("torchjd")}


def protocol(cfg: Config, dataset, reported_epochs: list[int] | None = None) -> dict:
    """The evaluation protocol every report prints next to its numbers."""
    described = selection.describe(cfg.train.protocol, cfg.train.select, cfg.data.val_fraction,
                                   cfg.data.split_seed, reported_epochs)
    single = cfg.model.method.startswith("stl-")
    return {
        **described,
        "miou": "dataset-level confusion matrix over the split (miou_legacy: per-image mean, "
                "the paper code's formula)",
        "depth_units": dataset.depth_units,
        "depth_metrics": "over all valid pixels (target > 0) of the split",
        "reported_split": "test (the dataset's held-out split)",
        "weighting": cfg.loss.single_task_weighting if single else cfg.loss.weighting,
        "seeds": "train.seed sets initialisation, batch order, augmentation and the val split "
                 "(data.split_seed follows train.seed unless pinned); data.seed fixes the "
                 "synthetic scenes, so every seed is tested on the same images",
        "seed": cfg.train.seed,
    }


# --------------------------------------------------------------------------- helpers


def _loader(dataset, cfg: Config, shuffle: bool = False, epoch: int = 0, start_step: int = 0,
            ctx: distributed.Context = distributed.Context()) -> DataLoader:
    """Training order is a permutation seeded by (train.seed, epoch); ``start_step`` skips
    the batches already trained on, without loading them (exact mid-epoch resume). With
    several ranks, rank r takes slice r of every global batch (train) or every world-th
    image (evaluation). A :class:`ResidentSplit` yields the same batches from the device."""
    batch_size = cfg.train.batch_size if shuffle else (cfg.train.eval_batch_size
                                                       or cfg.train.batch_size)
    local = batch_size // ctx.world if shuffle else batch_size
    order = None if not ctx.active else list(range(ctx.rank, len(dataset), ctx.world))
    if shuffle:
        generator = torch.Generator().manual_seed(runtime.derive_seed(cfg.train.seed, epoch, 1))
        steps = len(dataset) // batch_size
        order = torch.randperm(len(dataset), generator=generator)[:steps * batch_size]
        order = order.view(steps, ctx.world, local)[:, ctx.rank].flatten()
        order = order[start_step * local:].tolist()
    if isinstance(dataset, ResidentSplit):
        return dataset.batches(order if order is not None else range(len(dataset)), local)
    return DataLoader(dataset, batch_size=local, sampler=order, drop_last=shuffle,
                      num_workers=cfg.data.num_workers, worker_init_fn=runtime.worker_init_fn,
                      pin_memory=torch.cuda.is_available())


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _check_out_dir(out_dir: Path | None, resume: bool | str, cfg: Config,
                   ctx: distributed.Context) -> bool:
    """Before any training: the folder is writable, a fresh run does not land on another
    run's files, a finished run is not resumed, and stale temporary files are removed.
    Returns whether to resume: ``resume="auto"`` is True when ``last.pt`` exists."""
    if resume not in (False, True, None, "strict", "auto"):
        raise ValueError(f"resume={resume!r}: must be False, True ('strict': continue last.pt) "
                         f"or 'auto' (continue last.pt when there is one, else start fresh)")
    auto = resume == "auto"
    resume = bool(resume) and not auto
    if out_dir is None:
        return resume
    finished = (out_dir / results.FILENAME).exists()
    saved = sorted(p.name for p in (out_dir / "checkpoints").glob("*.pt"))
    if auto and finished:
        raise OutputExistsError(f"--resume auto: {out_dir} already holds a finished run "
                                f"(results.json); nothing to resume. Choose another --out "
                                f"folder, or pass --resume --set train.epochs=N to train it "
                                f"longer")
    if auto:
        # no last.pt: stopped before its first checkpoint; a best.pt it left is rewritten
        resume = (out_dir / "checkpoints" / "last.pt").is_file()
        saved = saved if resume else []
    if not resume and finished:
        raise OutputExistsError(f"{out_dir} already holds a finished run (results.json); "
                                f"choose another --out folder or pass --resume to continue it")
    if not resume and saved:
        raise OutputExistsError(f"{out_dir} holds checkpoints of an earlier run "
                                f"({', '.join(saved)}) and no results.json; pass --resume to "
                                f"continue it, or choose another --out folder")
    if resume and finished and (out_dir / "checkpoints" / "last.pt").is_file():
        done = checkpoint.load(out_dir / "checkpoints" / "last.pt").get("epoch")
        if done is not None and done >= cfg.train.epochs:
            raise OutputExistsError(f"--resume: {out_dir} is a finished run ({done} of "
                                    f"train.epochs={cfg.train.epochs} epochs, results.json "
                                    f"written); nothing to resume. To train longer, add --set "
                                    f"train.epochs=N")
    if not ctx.is_main:
        return resume
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out_dir} ({exc.strerror}); "
                          f"choose a writable --out folder") from None
    for stale in (out_dir / "checkpoints").glob(".*.tmp"):  # left by saves that were killed
        stale.unlink(missing_ok=True)
    return resume


def _check_eval_fits(model, datasets, device, cfg: Config) -> None:
    """One forward of the first image of every evaluated split, before training, so a split
    the model cannot take (e.g. a size not divisible by 32) fails now, not after an epoch."""
    was_training = model.training
    model.eval()
    try:
        for dataset in datasets:
            if len(dataset) == 0:
                raise DatasetError(f"the {dataset.split} split is empty; nothing to evaluate on")
            image = dataset[0]["image"][None].to(device)
            try:
                with torch.no_grad(), runtime.autocast(device, cfg.train.precision):
                    model(image)
            except (RuntimeError, ValueError) as exc:
                raise DatasetError(f"the {dataset.split} split's images "
                                   f"{tuple(image.shape[-2:])} do not fit the model: "
                                   f"{str(exc).splitlines()[0][:200]}") from None
    finally:
        model.train(was_training)


def _check_distributed(cfg: Config, ctx: distributed.Context) -> None:
    if not ctx.active:
        return
    if cfg.train.batch_size % ctx.world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch and must "
                          f"divide evenly over {ctx.world} processes")
    if cfg.loss.weighting == "gradnorm" or cfg.train.grad_cosine_every:
        raise ConfigError("loss.weighting=gradnorm and train.grad_cosine_every take extra "
                          "gradients outside DistributedDataParallel; run them in one process")
    if cfg.loss.weighting == "famo":
        raise ConfigError("loss.weighting=famo under torchrun: FAMO's update uses each rank's "
                          "own loss values, so the ranks' weights would drift apart; train FAMO "
                          "in one process")


def _selection_score(cfg: Config, watched: dict, history: list[dict], tasks) -> float | None:
    """This epoch's selection score (None under the mtan protocol, which selects nothing)."""
    if cfg.train.protocol == "mtan":
        return None
    if cfg.train.protocol == "paper":
        return watched["direct_loss"]  # the authors kept the lowest loss on the reported split
    first = ({k[4:]: v for k, v in history[0].items() if k.startswith("val_")}
             if history else watched)
    return selection.score(cfg.train.select, watched, first, tasks)


def _improves(score: float | None, best: float | None, cfg: Config) -> bool:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return False
    if best is None:
        return True
    select = "direct_loss" if cfg.train.protocol == "paper" else cfg.train.select
    return score > best if selection.higher_is_better_score(select) else score < best


def _print_epoch(record: dict, split: str) -> None:
    """One line per epoch: the train loss and the watched split's headline metrics."""
    keys = [k for k in (f"{split}_miou", f"{split}_abs_err", f"{split}_direct_loss",
                        "selection_score") if k in record]
    shown = ", ".join(f"{k} {record[k]:.4f}" for k in keys if record[k] is not None)
    total = record.get("train_total")
    print(f"epoch {record['epoch'] + 1}: train total {total:.4f}, {shown}"
          if total is not None else f"epoch {record['epoch'] + 1}: {shown}", flush=True)


def finish_checkpoints(out_dir: Path, keep: str) -> None:
    """What a finished run keeps (``train.keep_checkpoints``), once results.json is written.

    ``resumable`` keeps ``last.pt`` whole, so ``--resume --set train.epochs=N`` continues
    exactly. ``weights`` (the default) rewrites it without the optimizer and scheduler state
    (Adam's two moments: 2/3 of the file), which only a resume needs; ``best`` removes it,
    leaving ``best.pt`` (the reported weights) alone. ``make demo`` keeps ``best``: 11 runs
    in ~0.6 GB instead of 3 GB. Runs that stop early keep everything, whatever ``keep``."""
    last, best = out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt"
    if keep == "resumable" or not last.is_file():
        return
    if keep == "best" and best.is_file():
        last.unlink()
        return
    payload = checkpoint.load(last)
    checkpoint.save({k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")},
                    last)


def _payload(cfg, model, criterion, optimizer, scheduler, state: "TrainingState") -> dict:
    """Everything a resume needs; ``epoch``/``step`` say where training continues."""
    return {"model": model.state_dict(), "criterion": criterion.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "config": cfg.to_dict(), "num_classes": model.num_classes, "method": model.method,
            **state.to_payload()}


def _restore(out_dir, cfg, model, criterion, optimizer, scheduler) -> dict:
    if out_dir is None:
        raise ValueError("resume=True needs the out_dir of the run to continue")
    path = Path(out_dir) / "checkpoints" / "last.pt"
    if not path.is_file() and (Path(out_dir) / results.FILENAME).exists():
        raise OutputExistsError(f"--resume: {out_dir} is a finished run that kept only "
                                f"best.pt (train.keep_checkpoints=best); nothing to resume. "
                                f"Start a new run in another --out folder")
    if not path.is_file():
        raise MissingFileError(f"--resume: {path} does not exist; start the run without "
                               f"--resume (or point --out at the run folder to continue)")
    payload = checkpoint.load(path, require=checkpoint.EVAL_ENTRIES)
    saved, now = flatten(checkpoint.config_of(payload, path)), flatten(cfg)  # no silent defaults
    changed = sorted(k for k in now if saved[k] != now[k]
                     and k not in ("train.epochs", "train.keep_checkpoints"))
    if changed:
        raise ConfigError(f"--resume: the config differs from the one {path} was trained "
                          f"with in {changed}; only train.epochs (and train.keep_checkpoints) "
                          f"may change on resume")
    if "optimizer" not in payload and (Path(out_dir) / results.FILENAME).exists():
        raise OutputExistsError(
            f"--resume: {out_dir} is a finished run whose last.pt was kept without optimizer "
            f"state (train.keep_checkpoints=weights), so it cannot be trained longer exactly; "
            f"train it again with --set train.keep_checkpoints=resumable, or start a new run "
            f"in another --out folder")
    payload = checkpoint.load(path, require=checkpoint.RESUME_ENTRIES)  # names a missing entry
    model.load_state_dict(payload["model"])
    criterion.load_state_dict(payload["criterion"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    return TrainingState.from_payload(payload)

