"""Training-step time: OUR step (xtc.train.forward_losses + xtc.train.optimizer_step, best
settings found) against the AUTHORS'-style step, interleaved in one process.

Default: the paper's Cityscapes configuration (resnet34, 128x256, batch 8, 7 classes, xtc with
consistency, uncertainty weighting, decoder width 128, transfer width 64) on a batch of the
synthetic city.

* Variants of our step (each its own copy of the same initial weights): ``fp32``,
  ``fp32-cl`` (channels_last), ``bf16`` (autocast), ``bf16-cl``, and with ``--compile`` the
  same under ``torch.compile(model)``. A variant is *sane* when its loss terms are finite,
  its first-step total loss is within 1% of the fp32 one and its first-step gradient has
  cosine > 0.9 with the fp32 gradient (same weights, same batch; float64 cosine; bf16
  autocast gives ~0.95). The fastest sane variant is "ours".
* Baseline: fp32, eager, NCHW contiguous, weighted group losses backpropagated separately,
  ``L_D.backward(retain_graph=True)`` then ``L_S.backward()``, one Adam step (docs/method.md §3.5).
* Gradient check: the fp32 single backward of ``total`` and the baseline's two backward
  passes give the same gradients (max abs diff reported).
* FLOPs of one step (forward + backward) with ``torch.utils.flop_counter.FlopCounterMode``;
  peak FLOP/s from large bf16 and fp32 matmuls, measured in the same process.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from xtc import config as xconfig  # noqa: E402
from xtc.losses import build_criterion  # noqa: E402
from xtc.losses.weighting import FixedWeighting, UncertaintyWeighting  # noqa: E402
from xtc.models import build_model_from_config  # noqa: E402
from xtc.analysis.profiling import synthetic_batch  # noqa: E402
from xtc.train import forward_losses, optimizer_step  # noqa: E402

VARIANTS = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "fp32-cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16-cl": ("bf16", True, False),
    "fp32-compile": ("fp32", False, True),
    "bf16-cl-compile": ("bf16", True, True),
}
# sanity of a variant against fp32 eager on the first step (same weights, same batch): bf16
# autocast gives a whole-gradient cosine of ~0.95 at the paper configuration (8-bit mantissa
# through a 34-layer encoder + decoders), fp32 layouts agree to ~1e-6
SANE_LOSS_REL = 0.01
SANE_GRAD_COSINE = 0.9
QUICK_OVERRIDES = ["train.batch_size=2"]  # on top of configs/tiny.yaml (--quick's config)


def make_config(args) -> xconfig.Config:
    overrides = list(QUICK_OVERRIDES if args.quick else [])
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.height:
        overrides.append(f"data.height={args.height}")
    if args.width:
        overrides.append(f"data.width={args.width}")
    overrides += args.set or []
    cfg = xconfig.load(_common.config_path(args, None), overrides)
    cfg.train.device = "cpu" if not torch.cuda.is_available() else cfg.train.device
    return cfg


def weighted_groups(criterion, terms: dict) -> dict:
    """The weighted group losses whose sum is ``terms['total']`` (what the authors
    backpropagated one by one): for uncertainty weighting 1/2 e^-s_g L_g + reg(s_g)."""
    groups = {"seg": terms["seg"], "depth": terms["depth"]}
    if "seg2depth" in terms:
        l1, l2 = criterion.lambdas["seg"], criterion.lambdas["depth"]
        groups["seg"] = (1 - l1) * terms["seg"] + l1 * terms["seg2depth"]
        groups["depth"] = (1 - l2) * terms["depth"] + l2 * terms["depth2seg"]
    w = criterion.weighting
    if isinstance(w, UncertaintyWeighting):
        out = {}
        for i, name in enumerate(w.names):
            s = w.log_vars[i]
            reg = s / 2 if w.form == "kendall" else s
            out[name] = 0.5 * torch.exp(-s) * groups[name] + reg
        return out
    if isinstance(w, FixedWeighting):
        return groups
    raise ValueError(f"the baseline step supports fixed and uncertainty weighting, not "
                     f"{type(w).__name__}")


class Stepper:
    """One model + criterion + Adam copy, stepping either our way or the authors' way."""

    def __init__(self, name, model, criterion, cfg, batch, device, precision="fp32",
                 channels_last=False, compile_model=False, baseline=False):
        self.name, self.batch, self.device, self.baseline = name, batch, device, baseline
        self.cfg = copy.deepcopy(cfg)
        self.cfg.train.precision, self.cfg.train.channels_last = precision, channels_last
        self.model = copy.deepcopy(model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = copy.deepcopy(criterion)
        self.model.train()
        self.criterion.train()
        self.optimizer = torch.optim.Adam(
            list(self.model.parameters()) + list(self.criterion.parameters()),
            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        self.forward_model = torch.compile(self.model) if compile_model else self.model
        self.first_terms = None
        self.first_grad = None

    def params(self):
        return list(self.model.parameters()) + list(self.criterion.parameters())

    def __call__(self) -> None:
        terms = forward_losses(self.forward_model, self.criterion, self.batch, self.device,
                               self.cfg)
        if self.baseline:
            parts = weighted_groups(self.criterion, terms)
            self.optimizer.zero_grad(set_to_none=True)
            parts["depth"].backward(retain_graph=True)
            parts["seg"].backward()
            self.optimizer.step()
            self.criterion.after_step()
        else:
            optimizer_step(terms, self.optimizer, self.criterion)

    def first_step(self, count_flops: bool = False) -> float | None:
        """The first step from the shared initial weights, keeping its terms and gradient
        (for the sanity and gradient checks); returns its FLOPs when ``count_flops``."""
        counter = FlopCounterMode(display=False) if count_flops else None
        if counter is not None:
            counter.__enter__()
        try:
            terms = forward_losses(self.forward_model, self.criterion, self.batch, self.device,
                                   self.cfg)
            self.optimizer.zero_grad(set_to_none=True)
            if self.baseline:
                parts = weighted_groups(self.criterion, terms)
                parts["depth"].backward(retain_graph=True)
                parts["seg"].backward()
            else:
                terms["total"].backward()
        finally:
            if counter is not None:
                counter.__exit__(None, None, None)
        self.first_terms = {k: float(v.detach()) for k, v in terms.items()}
        self.first_grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                     .detach().flatten().float() for p in self.params()])
        self.optimizer.step()
        self.criterion.after_step()
        return counter.get_total_flops() if counter is not None else None


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json and not args.verbose)  # noqa: E731
    torch.manual_seed(args.seed)
    cfg = make_config(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    B, H, W = cfg.train.batch_size, cfg.data.height, cfg.data.width
    num_classes = cfg.data.classes if cfg.data.name == "cityscapes" else 7
    batch = {k: v.to(device) for k, v in
             synthetic_batch(B, H, W, seed=args.seed).items()}
    model = build_model_from_config(cfg, num_classes).to(device)
    criterion = build_criterion(cfg, model).to(device)
    names = [v for v in args.variants.split(",") if v]
    if args.compile:
        names += [v for v in VARIANTS if VARIANTS[v][2] and v not in names]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if "fp32" not in names:
        names.insert(0, "fp32")  # the reference of the sanity checks

    log(f"config: {cfg.model.encoder} {H}x{W} batch {B}, threads {torch.get_num_threads()}")
    peak_n, peak_reps = (512, 2) if args.quick else (args.peak_size, 3)
    peaks = {"bf16": [_common.peak_matmul_flops(torch.bfloat16, peak_n, peak_reps)],
             "fp32": [_common.peak_matmul_flops(torch.float32, peak_n, peak_reps)]}
    log(f"peak matmul: bf16 {peaks['bf16'][0] / 1e9:.1f} GFLOP/s, "
        f"fp32 {peaks['fp32'][0] / 1e9:.1f} GFLOP/s")

    steppers = {}
    for name in names:
        precision, cl, comp = VARIANTS[name]
        steppers[name] = Stepper(name, model, criterion, cfg, batch, device, precision, cl, comp)
    steppers["baseline"] = Stepper("baseline", model, criterion, cfg, batch, device,
                                   baseline=True)

    # first step of every copy from identical weights: sanity + gradient checks (+ FLOPs,
    # + compile time); these steps are not timed as steps
    flops, first_s = None, {}
    for name, st in steppers.items():
        t0 = _common.now()
        f = st.first_step(count_flops=(name == "fp32"))
        first_s[name] = _common.now() - t0
        flops = f if f is not None else flops
        log(f"first step {name}: {first_s[name]:.1f}s")
    ref = steppers["fp32"]
    base = steppers["baseline"]
    diff = (ref.first_grad - base.first_grad).abs()
    grad_check = {
        "max_abs_diff": float(diff.max()),
        "max_abs_grad": float(ref.first_grad.abs().max()),
        "max_rel_diff": float(diff.max() / ref.first_grad.abs().max().clamp_min(1e-30)),
        "cosine": float(torch.dot(ref.first_grad.double(), base.first_grad.double())
                        / (ref.first_grad.double().norm() * base.first_grad.double().norm())),
        "loss_total_single": ref.first_terms["total"],
        "loss_total_two_pass": base.first_terms["total"],
        "what": "fp32 eager, same weights and batch: one backward of total vs "
                "L_D.backward(retain_graph=True) + L_S.backward()",
    }
    grad_check["equal"] = grad_check["max_rel_diff"] < 1e-4
    variants = {}
    for name in names:
        st = steppers[name]
        total, ref_total = st.first_terms["total"], ref.first_terms["total"]
        g, g_ref = st.first_grad.double(), ref.first_grad.double()
        cos = float(torch.dot(g, g_ref) / (g.norm() * g_ref.norm()).clamp_min(1e-300))
        rel_l2 = float((g - g_ref).norm() / g_ref.norm().clamp_min(1e-300))
        rel = abs(total - ref_total) / max(abs(ref_total), 1e-12)
        finite = all(math.isfinite(v) for v in st.first_terms.values()) and bool(
            torch.isfinite(st.first_grad).all())
        variants[name] = {"precision": st.cfg.train.precision,
                          "channels_last": st.cfg.train.channels_last,
                          "compile": VARIANTS[name][2],
                          "first_step_s": first_s[name],
                          "loss_total_rel_diff_vs_fp32": rel, "grad_cosine_vs_fp32": cos,
                          "grad_rel_l2_diff_vs_fp32": rel_l2,
                          "sane": finite and rel < SANE_LOSS_REL and cos > SANE_GRAD_COSINE}
    for st in steppers.values():
        st.first_grad = None  # free

    log(f"timing {args.repeats} interleaved rounds of {list(steppers)}")
    times = _common.interleaved(
        steppers, args.repeats, warmup=args.warmup,
        on_round=lambda r, t: log(f"round {r + 1}: " + ", ".join(
            f"{k} {v * 1e3:.0f}ms" for k, v in t.items())))
    peaks["bf16"].append(_common.peak_matmul_flops(torch.bfloat16, peak_n, peak_reps))
    peaks["fp32"].append(_common.peak_matmul_flops(torch.float32, peak_n, peak_reps))
    peak_bf16, peak_fp32 = max(peaks["bf16"]), max(peaks["fp32"])

    for name in names:
        ms = _common.median(times[name]) * 1e3
        variants[name].update(
            ms_per_step=ms, times_ms=[t * 1e3 for t in times[name]],
            images_per_s=B / (ms / 1e3),
            speedup_vs_baseline=_common.median_ratio(times["baseline"], times[name]),
            achieved_flops=flops / (ms / 1e3) if flops else None)
    sane = [n for n in names if variants[n]["sane"]]
    best = min(sane, key=lambda n: variants[n]["ms_per_step"])
    ms = variants[best]["ms_per_step"]
    base_ms = _common.median(times["baseline"]) * 1e3
    achieved = flops / (ms / 1e3)
    info = _common.machine_info()
    return {
        "ms_per_step": ms,
        "images_per_s": B / (ms / 1e3),
        "flops_per_step": flops,
        "achieved_flops": achieved,
        "peak_bf16_flops": peak_bf16,
        "peak_fp32_flops": peak_fp32,
        "fraction_of_bf16_peak": achieved / peak_bf16,
        "fraction_of_fp32_peak": achieved / peak_fp32,
        "baseline_ms_per_step": base_ms,
        "baseline_times_ms": [t * 1e3 for t in times["baseline"]],
        "speedup_vs_baseline": variants[best]["speedup_vs_baseline"],
        "speedup_ratio_of_medians": base_ms / ms,
        "best_variant": best,
        "best_settings": {"train.precision": variants[best]["precision"],
                          "train.channels_last": variants[best]["channels_last"],
                          "torch.compile": variants[best]["compile"]},
        "gradient_check": grad_check,
        "device": info["device"],
        "threads": torch.get_num_threads(),
        "load_average": info["load_average"],
        "machine": info,
        "variants": variants,
        "repeats": args.repeats,
        "peak_matmul": {"n": peak_n, "bf16_runs": peaks["bf16"], "fp32_runs": peaks["fp32"]},
        "config": {"encoder": cfg.model.encoder, "method": cfg.model.method,
                   "cross_task": cfg.loss.cross_task, "weighting": cfg.loss.weighting,
                   "decoder_width": cfg.model.decoder_width,
                   "transfer_width": cfg.model.transfer_width, "classes": num_classes,
                   "batch_size": B, "height": H, "width": W, "quick": args.quick},
    }


def human(r: dict) -> str:
    lines = [f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
             f"config {r['config']}",
             f"{'variant':18s} {'ms/step':>9s} {'img/s':>7s} {'speedup':>8s} {'sane':>5s}"]
    for name, v in r["variants"].items():
        lines.append(f"{name:18s} {v['ms_per_step']:9.0f} {v['images_per_s']:7.2f} "
                     f"{v['speedup_vs_baseline']:8.2f} {str(v['sane']):>5s}")
    lines += [f"{'baseline':18s} {r['baseline_ms_per_step']:9.0f}",
              f"best: {r['best_variant']} {r['ms_per_step']:.0f} ms/step, "
              f"{r['speedup_vs_baseline']:.2f}x the authors'-style step",
              f"FLOPs/step {r['flops_per_step'] / 1e9:.1f} G, achieved "
              f"{r['achieved_flops'] / 1e9:.1f} GFLOP/s = {100 * r['fraction_of_bf16_peak']:.1f}% "
              f"of bf16 peak {r['peak_bf16_flops'] / 1e9:.1f} GFLOP/s "
              f"(fp32 peak {r['peak_fp32_flops'] / 1e9:.1f})",
              f"gradient check (single vs two backward): max abs diff "
              f"{r['gradient_check']['max_abs_diff']:.2e}, equal={r['gradient_check']['equal']}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default: the paper's Cityscapes setup)")
    p.add_argument("--set", action="append", help="section.key=value override (repeatable)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds (3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds after the first step (0: the first step warms up)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--variants", default="fp32,fp32-cl,bf16,bf16-cl",
                   help=f"comma list from {list(VARIANTS)}")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile variants")
    p.add_argument("--peak-size", type=int, default=4096, help="square matmul size for the peak")
    p.add_argument("--verbose", action="store_true", help="progress on stderr even with --json")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 0
    result = run(args)
    _common.emit(result, args.json, human)
    return result


if __name__ == "__main__":
    main()
