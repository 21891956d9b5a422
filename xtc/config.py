"""Typed configuration tree: every default is visible once, here.

A config is five sections (``data``, ``model``, ``loss``, ``optim``, ``train``) of plain
dataclasses. YAML files and ``--set section.key=value`` overrides are applied on top of the
defaults; unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the field and what would fix it.

Examples:
    >>> cfg = load(None, ["loss.lambda1=0.05", "model.method=mtl"])
    >>> cfg.loss.lambda1, cfg.model.method
    (0.05, 'mtl')
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from xtc.errors import ConfigError  # noqa: F401  (re-exported: xtc.config.ConfigError)
from xtc.tasks import DEFAULT_LAMBDA
from xtc.selection import PROTOCOLS, select_names

PRECISIONS = ("fp32", "bf16", "auto")
# train.keep_checkpoints (xtc.train.finish_checkpoints)
KEEP_CHECKPOINTS = ("weights", "resumable", "best")


@dataclass
class DataConfig:
    name: str = "synthetic-city"  # synthetic-city | cityscapes | nyuv2
    root: Optional[str] = None  # MTAN-layout folder for cityscapes / nyuv2
    classes: int = 7  # cityscapes: 7 or 19 (label_7 / label_19); nyuv2 is always 13
    height: int = 128  # synthetic-city image size (real data keep their native size)
    width: int = 256
    train_size: int = 1000  # synthetic-city: images in the train pool (train + val)
    test_size: int = 200  # synthetic-city: images in the held-out test split
    val_fraction: float = 0.1  # share of the train pool carved out for model selection
    augment: bool = True  # scale-crop (1.0/1.2/1.5) + horizontal flip on the train split
    num_workers: int = 0  # DataLoader worker processes
    # hold each split on the training device, batch + augment there (no DataLoader)
    resident: bool = False
    seed: int = 0  # synthetic-city scene stream: which city (fixed across train.seed, so
                   # every seed is tested on the same images); unused by the real datasets
    split_seed: Optional[int] = None  # val split + augmentation stream; None: train.seed


@dataclass
class ModelConfig:
    method: str = "xtc"  # stl-<task> | mtl | xtc (xtc.tasks.METHODS)
    tasks: list = field(default_factory=lambda: ["seg", "depth"])  # the paper; NYUv2's
                                     # benchmark: [seg, depth, normal] (xtc.tasks.TASKS)
    transfers: Optional[list] = None  # xtc's edges a2b (seg2depth, normal2depth, ...);
                                      # None: every ordered pair of model.tasks
    encoder: str = "resnet34"  # any timm backbone with five feature levels
    pretrained: bool = False  # ImageNet weights (needs them cached; never a silent fallback)
    decoder_width: int = 128  # mid channels of every decoder ConvBlock (paper: 128)
    transfer_width: int = 64  # first TTNet width; levels are (w, 2w, 4w) (paper: 64)
    transfer_batch_norm: bool = False  # BatchNorm inside the TTNets (paper default: off)
    transfer_detach_input: bool = False  # control: TTNets learn, no cross-task grad to the net


@dataclass
class LossConfig:
    cross_task: str = "consistency"  # consistency (vs detached direct) | alignment (vs GT) | both
    lambda1: float = DEFAULT_LAMBDA  # seg's cross-task share: L_S = (1-l1) L_seg + l1 L_seg2depth
    lambda2: float = DEFAULT_LAMBDA  # depth's: L_D = (1-l2) L_depth + l2 L_depth2seg
    lambdas: dict = field(default_factory=dict)  # per source task, e.g. {normal: 0.05}:
                                     # L_a = (1-l_a) L_a + l_a mean of a's outgoing edge terms;
                                     # seg/depth default to lambda1/lambda2, others to 0.01
    weighting: str = "uncertainty"  # fixed | uncertainty | gradnorm | dwa
    uncertainty_form: str = "kendall"  # kendall: 1/2 e^-s L + s/2 ; authors: 1/2 e^-s L + s
    gradnorm_alpha: float = 0.16  # GradNorm asymmetry (authors' value)
    dwa_temperature: float = 2.0  # DWA softmax temperature (Liu et al. 2019)
    depth_loss: str = "l1"  # direct depth loss: l1 | mse | logl1 | smoothl1
    # loss of every transfer into depth: l1 | ssim | mse | logl1 | smoothl1
    seg2depth_loss: str = "l1"
    depth2seg_loss: str = "ce"  # loss of every transfer into segmentation: ce | kl
    normal_loss: str = "cosine"  # normals, direct and transferred: cosine (1 - cos, MTAN) | l1
    label_smoothing: float = 0.0  # on the transferred segmentation loss only
    ssim_max_val: Optional[float] = None  # SSIM dynamic range (seg2depth_loss=ssim); None: the
                                          # dataset's depth range (1 m-range data get max_val=1)
    single_task_weighting: str = "fixed"  # stl-* runs: one loss, no weighting (as the authors)
    famo_lr: float = 0.025  # weighting=famo: its logits' own Adam (FAMO paper: 0.025)
    famo_weight_decay: float = 1e-3  # ... and that Adam's decay (paper's Algorithm 2, LibMTL)
    aggregator: str = "none"  # none (one backward of the weighted total) | a TorchJD aggregator
                              # over the objectives' Jacobian: upgrad, mgda, pcgrad, cagrad, ...
                              # (xtc.losses.aggregation.AGGREGATORS); replaces loss.weighting
    aggregator_args: dict = field(default_factory=dict)  # its arguments, e.g. {c: 0.4} (cagrad)
    objectives: str = "tasks"  # aggregator's objectives: tasks (one per task group L_a) |
                               # terms (each direct and each cross-task term; lambda not applied)
    aggregator_engine: str = "autojac"  # autojac (the K x P Jacobian) | autogram (only its
        # Gramian: less memory, slower on CPU; Gramian-based aggregators, fp32, one process)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam (paper) | sgd (the authors' energy comparison, const_energy.py)
    lr: float = 1e-4  # learning rate (paper: Adam 1e-4)
    momentum: float = 0.0  # sgd only
    betas: list = field(default_factory=lambda: [0.9, 0.99])  # Adam betas (paper)
    weight_decay: float = 0.0
    step_size: int = 80  # StepLR period in epochs (paper: 80 Cityscapes, 60 NYUv2)
    gamma: float = 0.5  # StepLR factor


@dataclass
class TrainConfig:
    epochs: int = 250
    batch_size: int = 8
    seed: int = 0  # python, numpy, torch and loader workers
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the device has it natively)
    channels_last: bool = False  # NHWC memory layout for the convolutions
    sync_batchnorm: bool = True  # with torchrun: BatchNorm statistics over the global batch
    protocol: str = "xtc"  # xtc (select on val, test once) | mtan (no selection, mean of the
                           # last 10 epochs' test metrics) | paper (selected on test); xtc.selection
    # xtc protocol: delta_m (task-weighted, vs first val) | val_loss | miou | ...
    select: str = "delta_m"
    max_steps_per_epoch: Optional[int] = None  # cap for smoke runs; None = full epoch
    eval_batch_size: Optional[int] = None  # None = batch_size
    nonfinite: str = "stop"  # a NaN/inf loss term: stop (naming step and term) | skip the batch
    max_skipped_fraction: float = 0.1  # nonfinite=skip: stop once more of an epoch's steps are
                                       # skipped (one per epoch is always allowed)
    checkpoint_every: int = 0  # also save last.pt every N steps (0: at epoch ends only)
    # what a finished run keeps: weights (best.pt, and last.pt without optimizer state: 1/3
    # the size) | resumable (last.pt with it: --resume can train the run longer) | best
    # (best.pt only)
    keep_checkpoints: str = "weights"
    grad_cosine_every: int = 0  # log cos(grad direct, grad cross-task) on the encoder every N steps
    grad_stats_every: Optional[int] = None  # log the objectives' gradient statistics on the
        # encoder every N steps (norms, cosines, conflicts, Gramian condition; gstat_*); 0:
        # never; None: every 10 steps with loss.aggregator (its step already holds the
        # Jacobian or Gramian), never without (there they cost K extra backward passes)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choices() -> dict[str, tuple]:
    """Every closed-choice field and its valid values, read from the registries (so a
    method, weighting or loss kind added there is valid here, and nowhere else lists them)."""
    from xtc.losses.aggregation import AGGREGATORS, ENGINES, NONE, OBJECTIVES
    from xtc.losses.cross_task import CROSS_TASK_MODES
    from xtc.losses.weighting import UNCERTAINTY_FORMS, WEIGHTINGS
    from xtc.tasks import METHODS
    from xtc.tasks.depth import DEPTH_KINDS, TRANSFER_KINDS as INTO_DEPTH
    from xtc.tasks.normal import LOSS_KINDS as NORMAL_KINDS
    from xtc.tasks.seg import TRANSFER_KINDS as INTO_SEG

    return {
        "model.method": tuple(METHODS.names()),
        "loss.cross_task": CROSS_TASK_MODES,
        "loss.weighting": tuple(WEIGHTINGS.names()),
        "loss.single_task_weighting": tuple(WEIGHTINGS.names()),
        "loss.uncertainty_form": UNCERTAINTY_FORMS,
        "loss.aggregator": (NONE, *AGGREGATORS.names()),
        "loss.objectives": OBJECTIVES,
        "loss.aggregator_engine": ENGINES,
        "loss.depth_loss": DEPTH_KINDS,
        "loss.seg2depth_loss": INTO_DEPTH,
        "loss.depth2seg_loss": INTO_SEG,
        "loss.normal_loss": NORMAL_KINDS,
        "train.precision": PRECISIONS,
        "train.nonfinite": ("stop", "skip"),
        "train.keep_checkpoints": KEEP_CHECKPOINTS,
        "train.protocol": PROTOCOLS,
        "optim.name": ("adam", "sgd"),
    }


# Every numeric field's closed range [low, high]; a float must also be finite. The upper
# bounds are far past any sensible run and catch typos (an extra zero or two) before a
# process allocates a 100k-channel layer. A test checks that every numeric field is here.
_BOUNDS = {
    "data.classes": (1, 1000), "data.height": (32, 8192), "data.width": (32, 8192),
    "data.train_size": (1, 10_000_000), "data.test_size": (1, 10_000_000),
    "data.val_fraction": (0.0, 0.9), "data.num_workers": (0, 256),
    "data.seed": (0, 2**63 - 1), "data.split_seed": (0, 2**63 - 1),
    "model.decoder_width": (1, 4096), "model.transfer_width": (1, 4096),
    "loss.lambda1": (0.0, 1.0), "loss.lambda2": (0.0, 1.0),
    "loss.gradnorm_alpha": (0.0, 10.0), "loss.dwa_temperature": (1e-3, 1e3),
    "loss.label_smoothing": (0.0, 1.0), "loss.ssim_max_val": (1e-6, 1e6),
    "optim.lr": (1e-12, 1e4), "optim.momentum": (0.0, 1.0),
    "optim.weight_decay": (0.0, 10.0), "optim.step_size": (1, 1_000_000),
    "optim.gamma": (0.0, 1.0),
    "train.epochs": (1, 1_000_000), "train.batch_size": (1, 65_536),
    "train.seed": (0, 2**63 - 1), "train.max_steps_per_epoch": (1, 10**9),
    "train.eval_batch_size": (1, 65_536), "train.max_skipped_fraction": (0.0, 1.0),
    "train.checkpoint_every": (0, 10**9), "train.grad_cosine_every": (0, 10**9),
    "train.grad_stats_every": (0, 10**9),
    "loss.famo_lr": (0.0, 10.0), "loss.famo_weight_decay": (0.0, 10.0),
}
_ALIAS_NODE_LIMIT = 10_000  # YAML nodes after alias expansion (a config has ~100)


def load(path: Union[str, Path, dict, None] = None, overrides: Union[list, dict, None] = None,
         **shortcuts: Any) -> Config:
    """Build a :class:`Config` from defaults, a YAML file (or dict), then overrides.

    ``overrides`` is a list of ``"section.key=value"`` strings (values parsed as YAML) or a
    dict ``{"section.key": value}``. ``shortcuts`` are the names of :data:`SHORTCUTS`
    (``method="mtl"``, ``epochs=2``), as notebooks pass them; they are applied last.
    """
    cfg = Config()
    if isinstance(path, dict):
        _apply_tree(cfg, path, source="the config dict")
    elif path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as "
                              f"configs/synthetic-quick.yaml")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start}); save it as UTF-8") from None
        tree = parse_yaml(text, f"config file {path}")
        if not isinstance(tree, dict) or not tree:
            what = "is empty" if tree is None or tree == {} else f"holds a {type(tree).__name__}"
            raise ConfigError(f"config file {path} {what}; it must map sections (data, model, "
                              f"loss, optim, train) to their keys, e.g. train: {{epochs: 5}}")
        _apply_tree(cfg, tree, source=str(path))
    for key, value in _normalise_overrides(overrides).items():
        set_value(cfg, key, value, source="override")
    for key, value in shortcut_overrides(shortcuts).items():
        set_value(cfg, key, value, source="argument")
    validate(cfg)
    return cfg


def save(cfg: Config, path: Union[str, Path]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def set_value(cfg: Config, dotted: str, value: Any, source: str = "override") -> None:
    """Set ``section.key`` on ``cfg`` after checking the key exists and the type fits."""
    if _set_entry(cfg, dotted, value, source):
        return
    section_name, _, key = dotted.partition(".")
    sections = {f.name for f in dataclasses.fields(Config)}
    if section_name not in sections or not key:
        raise ConfigError(f"{source}: unknown config key '{dotted}'; keys look like "
                          f"'section.key' with section one of {sorted(sections)}")
    section = getattr(cfg, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(f"{source}: unknown config key '{dotted}'; valid keys in "
                          f"'{section_name}': {sorted(fields)}")
    hint = typing.get_type_hints(type(section))[key]
    setattr(section, key, _coerce(value, hint, dotted, source))


def _set_entry(cfg: Config, dotted: str, value: Any, source: str) -> bool:
    """``section.field.entry=value`` for a dict field (``loss.lambdas.normal=0.05``); False
    when ``dotted`` is not such a key."""
    parts = dotted.split(".")
    if len(parts) != 3 or parts[0] not in _section_types():
        return False
    hints = typing.get_type_hints(_section_types()[parts[0]])
    if hints.get(parts[1]) is not dict:
        return False
    current = dict(getattr(getattr(cfg, parts[0]), parts[1]))
    current[parts[2]] = value
    setattr(getattr(cfg, parts[0]), parts[1], current)
    return True


def validate(cfg: Config) -> None:
    """Check choices and ranges; raise :class:`ConfigError` naming the first bad field."""
    flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}
    for key, choices in _choices().items():
        if flat[key] not in choices:
            raise ConfigError(f"{key}={flat[key]!r} is not valid; choose one of {list(choices)}")
    for key, (low, high) in _BOUNDS.items():
        value = flat[key]
        if value is None:  # the Optional fields: None is their "off"/"default" value
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number in [{low}, {high}]")
        if not low <= value <= high:
            raise ConfigError(f"{key}={value} is out of range; use a value in [{low}, {high}]")
    if cfg.data.height % 32 or cfg.data.width % 32:
        raise ConfigError(f"data.height={cfg.data.height}, data.width={cfg.data.width}: both must "
                          f"be divisible by 32 (the encoder downsamples 5 times)")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas={cfg.optim.betas} must be two numbers in [0, 1)")
    if cfg.data.name == "cityscapes" and cfg.data.classes not in (7, 19):
        raise ConfigError(f"data.classes={cfg.data.classes}: cityscapes has label_7 and "
                          f"label_19; set data.classes=7 or 19")
    if not (cfg.train.device in ("auto", "cpu", "cuda") or cfg.train.device.startswith("cuda:")):
        raise ConfigError(f"train.device={cfg.train.device!r}; use auto, cpu, cuda or cuda:N")
    tasks = _validate_tasks(cfg)
    _validate_aggregation(cfg)
    from xtc.tasks import METHODS, transfers_of

    valid = select_names(tasks, cross_task=METHODS.get(cfg.model.method).transfers,
                         edges=transfers_of(cfg))
    if cfg.train.select not in valid:
        raise ConfigError(f"train.select={cfg.train.select!r} is not a val metric of "
                          f"{cfg.model.method}; choose one of {valid}")
    if cfg.loss.ssim_max_val is not None and not cfg.loss.ssim_max_val > 0:
        raise ConfigError(f"loss.ssim_max_val={cfg.loss.ssim_max_val} must be positive (the "
                          f"depth range), or null to take the dataset's")
    if cfg.train.protocol == "xtc" and cfg.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction=0 leaves no val split to select on under "
                          "train.protocol=xtc; use a fraction such as 0.1, or "
                          "train.protocol=mtan (no selection)")
    if cfg.data.split_seed is None:  # the rule: the val split and augmentation follow train.seed
        cfg.data.split_seed = cfg.train.seed


def _validate_aggregation(cfg: Config) -> None:
    """``loss.aggregator_args`` against the aggregator's arguments; an aggregator replaces
    the loss weighting, which is then recorded as ``fixed`` (what ran), with a warning when
    another weighting was asked for."""
    from xtc.losses.aggregation import NONE, check_arguments, check_engine

    loss = cfg.loss
    if loss.aggregator == NONE:
        if loss.aggregator_args:
            raise ConfigError(f"loss.aggregator_args={loss.aggregator_args} without an "
                              f"aggregator; set loss.aggregator (e.g. upgrad) or drop the args")
        if loss.aggregator_engine != "autojac":
            raise ConfigError(f"loss.aggregator_engine={loss.aggregator_engine} without an "
                              f"aggregator; set loss.aggregator (e.g. upgrad) or drop it")
        return
    try:
        check_arguments(loss.aggregator, loss.aggregator_args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # what the config alone decides (the aggregator); precision and torchrun are checked
    # again by build_experiment, where they are known
    check_engine(loss.aggregator_engine, loss.aggregator, precision="fp32", distributed=False)
    if loss.weighting != "fixed":
        warnings.warn(f"loss.aggregator={loss.aggregator} balances the objectives itself: "
                      f"loss.weighting={loss.weighting} is not applied (recorded as fixed)",
                      stacklevel=3)
        loss.weighting = "fixed"


def _validate_tasks(cfg: Config) -> tuple[str, ...]:
    """``model.tasks``, ``model.transfers`` and ``loss.lambdas`` against the task registry
    and the dataset; returns the tasks the method builds a decoder for."""
    from xtc.data import DATASETS
    from xtc.tasks import METHODS, TASKS, split_edge

    tasks = cfg.model.tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"model.tasks={tasks}: list distinct tasks of {TASKS.names()}, e.g. "
                          f"[seg, depth] (the paper) or [seg, depth, normal] (NYUv2's benchmark)")
    method = METHODS.get(cfg.model.method)
    if not method.single_task and len(tasks) < 2:
        raise ConfigError(f"model.method={cfg.model.method} needs two or more model.tasks; got "
                          f"{tasks}: use model.method=stl-{tasks[0]} for one task")
    for name in cfg.model.transfers or []:
        try:
            source, target = split_edge(str(name))
        except ValueError:
            source = target = None
        if source not in tasks or target not in tasks or source == target:
            raise ConfigError(f"model.transfers: {name!r} is not an edge <a>2<b> between two "
                              f"of model.tasks={tasks}; e.g. "
                              f"{[f'{a}2{b}' for a in tasks[:1] for b in tasks[1:2]]}")
    if cfg.model.transfers is not None:
        if len(set(cfg.model.transfers)) != len(cfg.model.transfers):
            raise ConfigError(f"model.transfers={cfg.model.transfers} lists an edge twice")
        if method.transfers and not cfg.model.transfers:
            raise ConfigError("model.transfers=[] gives xtc no transfer nets; list edges such "
                              "as [seg2depth], or use model.method=mtl")
    for task, value in cfg.loss.lambdas.items():
        if task not in TASKS:
            raise ConfigError(f"loss.lambdas: {task!r} is not a task; keys are source tasks of "
                              f"{TASKS.names()}, e.g. {{normal: 0.01}}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise ConfigError(f"loss.lambdas.{task}={value!r} must be a number in [0, 1]")
    for task, key in (("seg", "lambda1"), ("depth", "lambda2")):
        legacy = getattr(cfg.loss, key)
        if task in cfg.loss.lambdas and legacy != DEFAULT_LAMBDA \
                and legacy != cfg.loss.lambdas[task]:
            raise ConfigError(f"loss.{key}={legacy} and loss.lambdas.{task}="
                              f"{cfg.loss.lambdas[task]} both set {task}'s lambda; keep one")
    built = method.tasks_for(tasks)
    dataset = DATASETS.get(cfg.data.name)
    provides = set(getattr(dataset, "batch_keys", ()))
    for task in built:
        missing = [k for k in TASKS.get(task).batch_keys if k not in provides]
        if missing:
            raise ConfigError(f"data.name={cfg.data.name} has no {missing} for task '{task}' "
                              f"(it provides {sorted(provides)}); drop '{task}' from model.tasks "
                              f"or use a dataset with {TASKS.get(task).title}")
    return built




def flatten(cfg: Config) -> dict:
    """``{"section.key": value}`` for every field (what results.json and reports show)."""
    return {f"{s}.{k}": v for s, sec in cfg.to_dict().items() for k, v in sec.items()}


def changes(cfg: Config, base: Optional[Config] = None) -> list[dict]:
    """Rows ``{"key", "value", "default"}`` for every field where ``cfg`` differs from
    ``base`` (default: the validated defaults, ``load(None)``): the short form of a config a
    report shows, with the full :func:`flatten` folded away.

    >>> [(r["key"], r["value"]) for r in changes(load(None, {"train.epochs": 2}))]
    [('train.epochs', 2)]
    """
    mine, theirs = flatten(cfg), flatten(base if base is not None else load(None))
    return [{"key": k, "value": v, "default": theirs.get(k)} for k, v in mine.items()
            if theirs.get(k) != v]


def from_dict(tree: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    return load(tree)


# --------------------------------------------------------------------------- helpers


def _apply_tree(cfg: Config, tree: dict, source: str) -> None:
    for section, values in tree.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value, source=source)


def _normalise_overrides(overrides: Union[list, dict, None]) -> dict:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' must look like section.key=value, "
                              f"e.g. loss.lambda1=0.01")
        out[key.strip()] = parse_yaml(raw, f"override '{item}'") if raw.strip() else None
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with three fixes for configs: YAML 1.2 floats (``1e-4`` is a
    float, not the string YAML 1.1 makes of it), duplicate keys are errors, and alias
    expansion is bounded (a few hundred bytes of nested aliases can expand to gigabytes)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(  # YAML 1.2's float syntax: 1e-4, 1E5, .5, 3. (as well as 1.0e-4)
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with :class:`_Loader`; errors are :class:`ConfigError` naming
    ``source``. Used for config files, ``--set`` values and sweep files."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            size = _expanded_size(node, {})
            if size > _ALIAS_NODE_LIMIT:
                raise ConfigError(f"{source}: its aliases expand to {size} YAML nodes (more "
                                  f"than {_ALIAS_NODE_LIMIT}); write the values out instead of "
                                  f"nesting anchors")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{source} is not valid YAML: {detail}") from None


def _expanded_size(node, memo: dict) -> int:
    """Nodes in ``node`` with every alias expanded, counted in linear time (memo by id)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive alias counts once (PyYAML then rejects or builds it)
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            for part in (child if isinstance(child, tuple) else (child,)):
                total += _expanded_size(part, memo)
                if total > _ALIAS_NODE_LIMIT:
                    break
        memo[key] = total
    return memo[key]


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """A parameter name that stands for one config key: the names 02_train takes, the CLI's
    ``xtc train`` flags, a plan's run parameters, the summary's row fields."""

    key: str  # section.key it sets
    help: str
    label: str = ""  # run-name prefix when a sweep varies it ("": the key's last part)
    keep_if_none: bool = False  # None keeps the config's value instead of setting None


SHORTCUTS: dict[str, Shortcut] = {
    "method": Shortcut("model.method", "stl-<task> | mtl | xtc"),
    "tasks": Shortcut("model.tasks", "the tasks, e.g. [seg, depth, normal]; None: the config's",
                      keep_if_none=True),
    "dataset": Shortcut("data.name", "synthetic-city | cityscapes | nyuv2"),
    "data_root": Shortcut("data.root", "MTAN-layout folder; None: the config's",
                          keep_if_none=True),
    "epochs": Shortcut("train.epochs", "training epochs"),
    "seed": Shortcut("train.seed", "training seed", label="s"),
    "cross_task": Shortcut("loss.cross_task", "consistency | alignment | both"),
    "lambda1": Shortcut("loss.lambda1", "seg's cross-task share", label="l1"),
    "lambda2": Shortcut("loss.lambda2", "depth's cross-task share", label="l2"),
    "weighting": Shortcut("loss.weighting", "task weighting (xtc.losses.weighting.WEIGHTINGS)"),
    "aggregator": Shortcut("loss.aggregator",
                           "none | a gradient aggregator (xtc.losses.aggregation.AGGREGATORS)"),
    "objectives": Shortcut("loss.objectives", "the aggregator's objectives: tasks | terms"),
    "max_steps_per_epoch": Shortcut("train.max_steps_per_epoch",
                                    "cap on optimiser steps per epoch; None: full epochs"),
    "device": Shortcut("train.device", "auto | cpu | cuda | cuda:N"),
}


def shortcut_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """``{shortcut: value}`` -> ``{section.key: value}``; a None for a ``keep_if_none``
    shortcut is dropped (the config keeps its value).

    >>> shortcut_overrides({"method": "mtl", "seed": 1, "tasks": None})
    {'model.method': 'mtl', 'train.seed': 1}
    """
    return {_shortcut_key(name): value for name, value in values.items()
            if not (value is None and SHORTCUTS[_known_shortcut(name)].keep_if_none)}


def _known_shortcut(name: str) -> str:
    if name not in SHORTCUTS:
        close = difflib.get_close_matches(name, list(SHORTCUTS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"'{name}' is not a shortcut; {hint}shortcuts: {', '.join(SHORTCUTS)}"
                          f"; any other key goes in the overrides as section.key")
    return name


def _shortcut_key(name: str) -> str:
    """The config key of a shortcut (a dotted key passes through)."""
    return name if "." in name else SHORTCUTS[_known_shortcut(name)].key


def _section_types() -> dict:
    return {"data": DataConfig, "model": ModelConfig, "loss": LossConfig,
            "optim": OptimConfig, "train": TrainConfig}


def _coerce(value: Any, hint: Any, dotted: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is list or typing.get_origin(hint) is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif hint is dict or typing.get_origin(hint) is dict:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    else:  # pragma: no cover - every field has one of the types above
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{source}: {dotted}={value!r} has type {type(value).__name__}; "
                      f"expected {name}")
