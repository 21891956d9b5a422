"""Subprocess worker of ``bench/tasks.py --baseline-src DIR``: the two-task xtc training step
with the ``xtc`` package of one source tree, stepped on request.

It imports ``xtc`` from ``--src`` (put first on ``sys.path``; it checks that the import came
from there) and uses only APIs that the code before the N-task change (commit 25897fe) and
the current code both have: ``xtc.config.load``, ``xtc.models.build_model_from_config(cfg,
num_classes)``, ``xtc.losses.build_criterion(cfg, model)``, ``xtc.train.build_optimizer(cfg,
params)``, ``xtc.train.forward_losses(model, criterion, batch, device, cfg)``,
``xtc.train.optimizer_step(terms, optimizer, criterion)`` and
``xtc.analysis.profiling.synthetic_batch``. The model is placed as ``xtc.train.place_model`` does
(device, then channels_last when ``train.channels_last``), and the batch keeps only the
two-task keys (the current synthetic city also renders normals; the old one does not).

Protocol (one JSON object per line): after building the step and running one untimed first
step it writes ``{"ready": true, ...}`` (its first-step loss terms, where xtc came from) on
stdout; then it reads commands on stdin: ``{"op": "steps", "n": k}`` runs k steps and answers
``{"times": [seconds, ...]}``; ``{"op": "quit"}`` ends it. Everything else it prints goes to
stderr, so stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

TWO_TASK_KEYS = ("image", "seg_target", "depth_target", "depth_mask")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="source tree whose xtc package to import")
    p.add_argument("--config", default=None, help="YAML config (read by that tree's loader)")
    p.add_argument("--set", action="append", default=[], help="section.key=value")
    p.add_argument("--num-classes", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)

    src = Path(args.src).resolve()
    sys.path.insert(0, str(src))
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol stream
    sys.stdout = sys.stderr  # anything a library prints must not reach the protocol

    def say(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    import xtc
    where = Path(xtc.__file__).resolve()
    if src not in where.parents:
        say({"error": f"xtc imported from {where}, not from {src}"})
        sys.exit(2)
    from xtc import config as xconfig
    from xtc.losses import build_criterion
    from xtc.models import build_model_from_config
    from xtc.analysis.profiling import synthetic_batch
    from xtc.train import build_optimizer, forward_losses, optimizer_step

    device = torch.device(args.device)
    cfg = xconfig.load(args.config, list(args.set))
    cfg.train.device = args.device
    torch.manual_seed(args.seed)  # the same initial weights as bench/tasks.py's own copies
    model = build_model_from_config(cfg, args.num_classes).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, model).to(device)
    optimizer = build_optimizer(cfg, list(model.parameters()) + list(criterion.parameters()))
    model.train()
    criterion.train()
    B, H, W = cfg.train.batch_size, cfg.data.height, cfg.data.width
    batch = {k: v.to(device) for k, v in synthetic_batch(B, H, W, seed=args.seed).items()
             if k in TWO_TASK_KEYS}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> dict:
        terms = forward_losses(model, criterion, batch, device, cfg)
        optimizer_step(terms, optimizer, criterion)
        return terms

    terms = step()
    sync()
    try:
        from xtc.runtime import resolve_precision
        precision = resolve_precision(cfg.train.precision, device)
    except ImportError:
        precision = cfg.train.precision
    say({"ready": True, "xtc_file": str(where), "threads": torch.get_num_threads(),
         "precision": precision, "channels_last": bool(cfg.train.channels_last),
         "method": cfg.model.method, "batch_keys": sorted(batch),
         "first_terms": {k: float(v.detach()) for k, v in terms.items()}})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        if cmd.get("op") == "steps":
            times = []
            for _ in range(int(cmd.get("n", 1))):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - start)
            say({"times": times})
        else:
            say({"error": f"unknown command {cmd}"})


if __name__ == "__main__":
    main()
