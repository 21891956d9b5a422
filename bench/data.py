"""Loader throughput against training throughput, in one process.

* Synthetic generation: images/s of ``SyntheticCity`` items (scene rendering, 1 process),
  with and without augmentation, interleaved.
* ``.npy`` loading: a temporary MTAN-layout folder written by
  ``xtc.data.prepare.prepare_synthetic`` (``label_7``), read as ``cityscapes`` (classes=7)
  with augmentation (scale-crop + flip), item by item and through a ``DataLoader`` (batch 8)
  with 0, 1 and 2 workers, interleaved (each full pass includes worker start-up), and as a
  ``ResidentSplit`` (``data.resident``: the split stacked on the device once, every batch an
  index gather plus one batched augmentation there; ``resident``).
* Training: images/s of OUR step at the paper configuration (bench/train_step.py's step with
  ``--train-variant``), a few steps.
* ``loader_images_per_s`` = the fastest loading setting on the ``.npy`` folder (the
  training path for real data; DataLoader or resident); ``ratio`` = loader / training images/s.
  The training steps alternate with full passes of that loader (``ratio_alternating`` uses
  those passes).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from xtc import runtime  # noqa: E402
from xtc.data import build_dataset  # noqa: E402
from xtc.data.prepare import prepare_synthetic  # noqa: E402
from xtc.data.resident import ResidentSplit  # noqa: E402
from xtc.analysis.profiling import synthetic_batch  # noqa: E402


def train_images_per_s(args, log, loader_pass) -> dict:
    """Our step at the paper configuration (or the quick one), a few steps."""
    import train_step as ts

    p = _common.parser("")
    ns = p.parse_args(["--quick"] if args.quick else [])
    ns.config, ns.set, ns.batch_size, ns.height, ns.width = None, None, None, None, None
    cfg = ts.make_config(ns)
    precision, cl, comp = ts.VARIANTS[args.train_variant]
    B, H, W = cfg.train.batch_size, cfg.data.height, cfg.data.width
    batch = synthetic_batch(B, H, W, seed=args.seed)
    from xtc.train import build_experiment

    exp = build_experiment(cfg, "cpu", optimizer=False, num_classes=7)
    model, criterion = exp.model, exp.criterion
    step = ts.Stepper(args.train_variant, model, criterion, cfg, batch, torch.device("cpu"),
                      precision, cl, comp)
    step()  # warm-up
    # alternate training steps with full passes of the loader (the caller's fastest setting)
    t = _common.interleaved({"train": step, "loader": loader_pass},
                            1 if args.quick else args.train_repeats, warmup=0)
    times = t["train"]
    s = _common.median(times)
    log(f"train step {args.train_variant}: {s * 1e3:.0f} ms ({times})")
    return {"images_per_s": B / s, "loader_pass_s": t["loader"], "ms_per_step": s * 1e3,
            "times_ms": [t * 1e3 for t in times],
            "variant": args.train_variant, "batch_size": B, "height": H, "width": W,
            "encoder": cfg.model.encoder}


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    H, W = (64, 128) if args.quick else (args.height, args.width)
    n = 8 if args.quick else args.images
    B = 2 if args.quick else args.batch_size
    repeats = 1 if args.quick else args.repeats

    # ---- synthetic generation (1 process), with and without augmentation
    gen = {aug: build_dataset("synthetic-city", "train", height=H, width=W, train_size=2 * n,
                              augment=aug, seed=args.seed) for aug in (False, True)}
    k = min(n, len(gen[False]))

    def render(aug):
        return lambda: [gen[aug][i] for i in range(k)]

    t = _common.interleaved({"plain": render(False), "augment": render(True)}, repeats, warmup=0)
    synthetic = {"images_per_s": k / _common.median(t["plain"]),
                 "augmented_images_per_s": k / _common.median(t["augment"]), "images": k}
    log(f"synthetic: {synthetic}")

    # ---- .npy folder (MTAN layout) with augmentation
    tmp = Path(tempfile.mkdtemp(prefix="xtc-bench-data-"))
    try:
        root = prepare_synthetic(tmp / "city", n, H, W, seed=args.seed)
        npy = build_dataset("cityscapes", "train", str(root), classes=7, augment=True,
                            seed=args.seed)
        npy_plain = build_dataset("cityscapes", "train", str(root), classes=7, augment=False,
                                  seed=args.seed)
        m = len(npy)

        def items(ds):
            return lambda: [ds[i] for i in range(m)]

        def loader(workers):
            dl = DataLoader(npy, batch_size=B, shuffle=False, num_workers=workers,
                            worker_init_fn=runtime.worker_init_fn)
            return lambda: [b for b in dl]

        worker_counts = [0, 1] if args.quick else [0, 1, 2]
        resident = ResidentSplit(npy, "cuda" if torch.cuda.is_available() else "cpu")
        cands = {"items_augment": items(npy), "items_plain": items(npy_plain),
                 **{f"loader_{w}_workers": loader(w) for w in worker_counts},
                 "resident": lambda: [b for b in resident.batches(range(m), B)]}
        t = _common.interleaved(cands, repeats, warmup=1)
        npy_result = {name: m / _common.median(v) for name, v in t.items()}
        npy_result["images"] = m
        log(f"npy: {npy_result}")
        loader_keys = [f"loader_{w}_workers" for w in worker_counts] + ["resident"]
        best_loader = max(loader_keys, key=lambda k_: npy_result[k_])
        train = train_images_per_s(args, log, cands[best_loader])
        # the loader rate measured alternately with the training steps
        loader_alt = m / _common.median(train["loader_pass_s"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loader_ips = npy_result[best_loader]
    info = _common.machine_info()
    return {
        "loader_images_per_s": loader_ips,
        "loader_setting": best_loader,
        "train_images_per_s": train["images_per_s"],
        "ratio": loader_ips / train["images_per_s"],
        "loader_images_per_s_alternating_with_train": loader_alt,
        "ratio_alternating": loader_alt / train["images_per_s"],
        "ratio_synthetic_augmented": synthetic["augmented_images_per_s"] / train["images_per_s"],
        "synthetic": synthetic,
        "npy": npy_result,
        "train": train,
        "device": info["device"], "threads": torch.get_num_threads(),
        "load_average": info["load_average"], "machine": info,
        "config": {"height": H, "width": W, "images": n, "batch_size": B, "repeats": repeats,
                   "quick": args.quick},
    }


def human(r: dict) -> str:
    s, n = r["synthetic"], r["npy"]
    return "\n".join([
        f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
        f"config {r['config']}",
        f"synthetic rendering: {s['images_per_s']:.1f} img/s plain, "
        f"{s['augmented_images_per_s']:.1f} img/s augmented",
        "npy folder: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in n.items() if k != "images"),
        f"training ({r['train']['variant']}): {r['train_images_per_s']:.2f} img/s",
        f"loader {r['loader_images_per_s']:.1f} img/s ({r['loader_setting']}) = "
        f"{r['ratio']:.1f}x training"])


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--images", type=int, default=64, help="images in the .npy folder")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-variant", default="bf16-cl",
                   help="variant of our step (bench/train_step.py) for the training rate")
    p.add_argument("--train-repeats", type=int, default=2)
    return _common.main(p, run, human, argv)


if __name__ == "__main__":
    main()
