"""One training epoch through ``xtc.train.train_one_epoch``, timed end to end.

Issue #4's GPU goal: a full paper-configuration Cityscapes epoch (2975 train images,
resnet34, 128x256, batch 8, ``xtc`` with consistency) in under 10 s on one H100, with the
data held on the GPU and augmented there with kornia (``data.resident``).

* Config: ``--config`` (default ``configs/cityscapes-paper.yaml``) plus ``--set`` overrides,
  on top of ``train.precision=auto``, ``train.channels_last=true``, ``data.resident=true``
  and ``data.val_fraction=0`` (every image of the pool is trained on, as in one paper epoch).
* Data: ``--data-root`` = a Cityscapes folder in the MTAN layout (its train split); without
  it, ``--images`` synthetic-city scenes at 128x256 (default 2975 on a GPU; 32 on a CPU,
  where an epoch of 2975 takes most of an hour: ``projected_epoch_s`` scales the measured
  rate to 2975 images).
* Timing: ``--warmup-steps`` untimed steps first (cuDNN algorithm choice, allocator,
  ``--compile``'s compilation), then one whole epoch, GPU work included
  (``epoch_s``). Rendering the scenes and stacking them on the device is not timed
  (``prepare_s`` reports it).
* Keys: ``epoch_s``, ``images``, ``steps``, ``images_per_s``, ``ms_per_step``,
  ``projected_epoch_s`` (2975 images at ``images_per_s``), ``target_s`` (10),
  ``meets_target`` (only on a GPU: the target is an H100's), ``precision``, ``device``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402
from train_step import QUICK_OVERRIDES  # noqa: E402  (the same tiny model as every --quick)

from xtc import config as xconfig  # noqa: E402
from xtc import runtime  # noqa: E402
from xtc.data import build_dataset_from_config  # noqa: E402
from xtc.data.resident import ResidentSplit  # noqa: E402
from xtc.train import TrainingState, build_experiment, train_one_epoch  # noqa: E402

CITYSCAPES_TRAIN_IMAGES = 2975
TARGET_S = 10.0
PAPER_CONFIG = _common.ROOT / "configs" / "cityscapes-paper.yaml"


def make_config(args, device: torch.device) -> xconfig.Config:
    overrides = ["train.precision=auto", "train.channels_last=true", "data.resident=true",
                 "data.val_fraction=0", "train.protocol=mtan", f"train.device={device}"]
    if args.data_root:
        overrides += ["data.name=cityscapes", f"data.root={args.data_root}"]
    else:
        images = args.images or (CITYSCAPES_TRAIN_IMAGES if device.type == "cuda" else 32)
        overrides += ["data.name=synthetic-city", f"data.train_size={8 if args.quick else images}"]
        overrides += [] if args.quick else ["data.height=128", "data.width=256"]
    overrides += QUICK_OVERRIDES if args.quick else []
    return xconfig.load(_common.config_path(args, PAPER_CONFIG), overrides + (args.set or []))


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = make_config(args, device)
    runtime.seed_everything(args.seed)

    log(f"rendering / reading the {cfg.data.name} train split and stacking it on {device}")
    start = _common.now()
    dataset = build_dataset_from_config(cfg.data, "train")
    data = ResidentSplit(dataset, device)
    prepare_s = _common.now() - start
    B = cfg.train.batch_size
    if len(data) < B:
        raise SystemExit(f"{len(data)} train images, fewer than one batch of {B}: raise --images")

    exp = build_experiment(cfg, device, num_classes=dataset.num_classes)
    model, criterion, optimizer = exp.model, exp.criterion, exp.optimizer
    net = torch.compile(model) if args.compile else model

    def epoch(index: int, max_steps: int = 0) -> None:
        cfg.train.max_steps_per_epoch = max_steps
        data.set_epoch(index)
        train_one_epoch(net, criterion, optimizer, data, device, cfg,
                        TrainingState(epoch=index), progress=False)

    warmup = 1 if args.quick else args.warmup_steps or (10 if device.type == "cuda" else 1)
    log(f"warm-up: {warmup} steps")
    warmup_s = _common.timed(lambda: epoch(0, warmup))
    steps = len(data) // B
    log(f"timing one epoch: {len(data)} images, {steps} steps of {B}")
    epoch_s = _common.timed(lambda: epoch(1))

    images = steps * B  # train_one_epoch drops the last partial batch, as the authors' loader did
    images_per_s = images / epoch_s
    projected = CITYSCAPES_TRAIN_IMAGES / images_per_s
    info = _common.machine_info()
    return {
        "epoch_s": epoch_s,
        "images": images,
        "steps": steps,
        "images_per_s": images_per_s,
        "ms_per_step": epoch_s / steps * 1e3,
        "projected_epoch_s": projected,
        "target_s": TARGET_S,
        "meets_target": projected < TARGET_S if device.type == "cuda" else None,
        "warmup_s": warmup_s,
        "warmup_steps": warmup,
        "prepare_s": prepare_s,
        "precision": runtime.resolve_precision(cfg.train.precision, device),
        "compile": args.compile,
        "device": info["device"], "threads": torch.get_num_threads(),
        "load_average": info["load_average"], "machine": info,
        "config": {"data": cfg.data.name, "encoder": cfg.model.encoder,
                   "decoder_width": cfg.model.decoder_width,
                   "transfer_width": cfg.model.transfer_width, "height": data.height,
                   "width": data.width, "batch_size": B, "method": cfg.model.method,
                   "cross_task": cfg.loss.cross_task, "channels_last": cfg.train.channels_last,
                   "quick": args.quick},
    }


def human(r: dict) -> str:
    verdict = {True: "meets", False: "misses", None: "(target is for a GPU)"}[r["meets_target"]]
    return "\n".join([
        f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
        f"config {r['config']}, precision {r['precision']}, compile {r['compile']}",
        f"one epoch: {r['images']} images in {r['epoch_s']:.2f} s ({r['images_per_s']:.1f} "
        f"images/s, {r['ms_per_step']:.1f} ms/step)",
        f"projected Cityscapes epoch ({CITYSCAPES_TRAIN_IMAGES} images): "
        f"{r['projected_epoch_s']:.1f} s; target < {r['target_s']:.0f} s: {verdict}"])


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default cityscapes-paper; --quick: tiny)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="config override (repeatable)")
    p.add_argument("--data-root", help="Cityscapes in the MTAN layout (default: synthetic city)")
    p.add_argument("--images", type=int, default=0,
                   help="synthetic-city train images (default 2975 on a GPU, 32 on a CPU)")
    p.add_argument("--warmup-steps", type=int, default=0, help="untimed steps first "
                   "(default 10 on a GPU, 1 on a CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    return _common.main(p, run, human, argv)


if __name__ == "__main__":
    main()
