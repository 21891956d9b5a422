"""Step time of OUR training step against resolution and batch size (one process).

Resolutions 64x128, 128x256, 256x512 x batch sizes 2, 4, 8, the paper model, the step of
bench/train_step.py with ``--variant`` (default bf16-cl). Each (resolution, batch) cell gets
a fresh copy of the same initial weights, one warm-up step, then ``--repeats`` steps back to
back; ``ms_per_step`` is the fastest (least disturbed by other processes on a shared
machine), ``ms_per_step_median`` the median. A first version interleaved all cells round by
round: with 8 model copies alive and every round switching shapes, the same cell varied 8x
between rounds, so the cells run one after the other. On a CPU the largest cells are
skipped to keep the run near 3 minutes: cells with batch x pixels above ``--max-cost``
(default 4 x 256 x 512) are listed in ``skipped``. ``--quick`` times 2 small cells of a small model once.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402

import train_step as ts  # noqa: E402


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    torch.manual_seed(args.seed)
    p = _common.parser("")
    ns = p.parse_args(["--quick"] if args.quick else [])
    ns.config, ns.set, ns.batch_size, ns.height, ns.width = None, None, None, None, None
    cfg = ts.make_config(ns)
    if args.quick:
        resolutions, batches, max_cost, repeats = [(64, 128)], [1, 2], 10 ** 9, 1
    else:
        resolutions = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",")]
        batches = [int(b) for b in args.batch_sizes.split(",")]
        max_cost, repeats = args.max_cost, args.repeats
    precision, cl, comp = ts.VARIANTS[args.variant]
    model = ts.build_model_from_config(cfg, 7)
    criterion = ts.build_criterion(cfg, model)
    device = torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda")
    skipped, rows = [], []
    data_cache = {}
    for (h, w) in resolutions:
        for b in batches:
            name = f"{h}x{w}_b{b}"
            if b * h * w > max_cost and device.type == "cpu":
                skipped.append(name)
                continue
            if (h, w) not in data_cache:
                data_cache[(h, w)] = _common.synthetic_batch(max(batches), h, w, 7, args.seed)
            batch = {k: v[:b].to(device) for k, v in data_cache[(h, w)].items()}
            # a fresh copy of the same initial weights per cell, freed after it (memory);
            # one warm-up step, then ``repeats`` steps back to back (oneDNN primitives of one
            # shape stay hot); min = least disturbed by the other processes, median reported too
            step = ts.Stepper(name, model, criterion, cfg, batch, device, precision, cl, comp)
            step()
            times = [_common.timed(step) for _ in range(repeats)]
            del step
            ms, ms_median = min(times) * 1e3, _common.median(times) * 1e3
            rows.append({"height": h, "width": w, "batch_size": b, "ms_per_step": ms,
                         "ms_per_step_median": ms_median,
                         "images_per_s": b / (ms / 1e3),
                         "megapixels_per_s": b * h * w / 1e6 / (ms / 1e3),
                         "times_ms": [t * 1e3 for t in times]})
            log(f"{name}: {[round(t * 1e3) for t in times]} ms")
    info = _common.machine_info()
    return {"rows": rows, "skipped": skipped,
            "skipped_reason": (f"batch x pixels > {max_cost} skipped on CPU to keep the run "
                               f"short (pass --max-cost to include them)") if skipped else None,
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
