"""Step time of OUR training step against resolution and batch size (one process).

Resolutions 64x128, 128x256, 256x512 x batch sizes 2, 4, 8, the paper model, with the
settings of ``--variant`` from bench/train_step.py (default bf16-cl), measured by
:func:`xtc.analysis.profiling.scaling_grid` (the same code as notebooks/06_scaling.ipynb): each cell
trains a fresh copy of the same initial weights, one warm-up step, then ``--repeats`` steps
back to back; ``ms_per_step`` is the fastest (least disturbed by other processes),
``ms_per_step_median`` the median. The cells run one after the other: an earlier version
interleaved them round by round, and with 8 model copies alive and every round switching
shapes the same cell varied 8x between rounds. On a CPU the largest cells are skipped to keep
the run near 3 minutes: cells with batch x pixels above ``--max-cost`` (default 4 x 256 x 512)
are listed in ``skipped``. ``--quick`` times 2 small cells of a small model once.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402

import train_step as ts  # noqa: E402
from xtc.analysis.profiling import scaling_grid  # noqa: E402


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    ns = _common.parser("").parse_args(["--quick"] if args.quick else [])
    ns.config, ns.set, ns.batch_size, ns.height, ns.width = None, None, None, None, None
    cfg = ts.make_config(ns)
    precision, channels_last, compiled = ts.VARIANTS[args.variant]
    if compiled:
        raise SystemExit(f"--variant {args.variant}: the scaling grid times eager steps; "
                         f"choose one of fp32, fp32-cl, bf16, bf16-cl")
    cfg.train.precision, cfg.train.channels_last = precision, channels_last
    if args.quick:
        resolutions, batches, max_cost, repeats = [(64, 128)], [1, 2], None, 1
    else:
        resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",")]
        batches = [int(b) for b in args.batch_sizes.split(",")]
        max_cost = args.max_cost if not torch.cuda.is_available() else None
        repeats = args.repeats
    grid = scaling_grid(cfg, resolutions, batches, repeats, max_cost, args.seed, log)
    info = _common.machine_info()
    return {**grid,
            "skipped_reason": (f"batch x pixels > {max_cost} skipped on CPU to keep the run "
                               f"short (pass --max-cost to include them)")
                              if grid["skipped"] else None,
            "variant": args.variant, "repeats": repeats,
            "estimator": "min of the repeats (median in ms_per_step_median)",
            "device": info["device"], "threads": torch.get_num_threads(),
            "load_average": info["load_average"], "machine": info,
            "config": {"encoder": cfg.model.encoder, "decoder_width": cfg.model.decoder_width,
                       "transfer_width": cfg.model.transfer_width, "quick": args.quick}}


def human(r: dict) -> str:
    lines = [f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
             f"variant {r['variant']}, config {r['config']}",
             f"{'resolution':>10s} {'batch':>5s} {'ms/step':>9s} {'img/s':>7s} {'Mpx/s':>7s}"]
    for row in r["rows"]:
        lines.append(f"{row['height']:>4d}x{row['width']:<5d} {row['batch_size']:5d} "
                     f"{row['ms_per_step']:9.0f} {row['images_per_s']:7.2f} "
                     f"{row['megapixels_per_s']:7.3f}")
    if r["skipped"]:
        lines.append(f"skipped: {r['skipped']} ({r['skipped_reason']})")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--resolutions", default="64x128,128x256,256x512")
    p.add_argument("--batch-sizes", default="2,4,8")
    p.add_argument("--max-cost", type=int, default=4 * 256 * 512,
                   help="skip cells with batch*height*width above this on CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", default="bf16-cl", help=f"one of {list(ts.VARIANTS)}")
    return _common.main(p, run, human, argv)


if __name__ == "__main__":
    main()
