"""Evaluation throughput of ``xtc.train.evaluate`` and the cost of its metric updates.

* Evaluation: images/s of ``xtc.train.evaluate(model, loader, criterion)`` on the synthetic
  city test split (128x256 by default, the paper model by default), with the scenes
  rendered once beforehand so the time is the model + metrics + losses, not scene rendering
  (bench/data.py measures the loader).
* Metric update: ``SegmentationMeter.update`` + ``DepthMeter.update`` on one batch of real
  model outputs, against the authors'-style loop on the same tensors, computing the same
  quantities (for each image, for each class: intersection and union from boolean masks;
  pixel accuracy; per image the depth sums behind abs/rel/rmse/log-rmse/delta),
  interleaved, median of the rounds. The two are checked to agree (IoU sums, abs error).
  A second baseline copies the MTAN/authors' code literally (``torch.eq`` against freshly
  allocated class-id tensors, float masks): ``baseline_mtan_update_ms``.
* ``labels_ms``: ``seg_logits.max(1).indices`` alone, the step every mIoU starts with (our
  meters and both baselines): a floor under any eager metric update on this device.
* ``metric_fraction_of_eval`` = (metric update time per batch x batches) / evaluation time.
* ``--compile``: also times :func:`fused_update_terms` under ``torch.compile`` (inductor), the
  same per-batch work as the two meters in one graph (labels, confusion bin indices, the depth
  sums) followed by one eager bincount. xtc does not ship it: it is the ceiling of what fusing
  gives on this device, to compare the eager meters and the 50x target of issue #4 with.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from xtc import config as xconfig  # noqa: E402
from xtc.data import build_dataset  # noqa: E402
from xtc.metrics import (DEPTH_EPS, ConsistencyMeter, DepthMeter, SegmentationMeter,  # noqa: E402
                         depth_error_sums)
from xtc.train import build_experiment  # noqa: E402
from xtc.train import evaluate  # noqa: E402


def loop_baseline(seg_logits, seg_target, depth_pred, depth_target, num_classes,
                  ignore_index=-1, eps=1e-6) -> dict:
    """The authors' style, computing what our two meters compute: per image, per class,
    boolean masks for intersection and union (dataset and legacy per-image mIoU), pixel
    accuracy, and per image the depth sums (abs, rel, squared, squared log, delta < 1.25^k).
    Labels via ``torch.max(dim=1)`` as in the MTAN code (``argmax`` is ~8x slower on CPU)."""
    pred = torch.max(seg_logits, dim=1).indices
    inter_sum, union_sum, correct, total = 0.0, 0.0, 0.0, 0.0
    ious = []
    depth = dict.fromkeys(("count", "abs", "rel", "sq", "log_sq", "d1", "d2", "d3"), 0.0)
    for b in range(pred.shape[0]):
        valid = seg_target[b] != ignore_index
        p, t = pred[b], seg_target[b]
        image_iou = []
        for c in range(num_classes):
            pc = (p == c) & valid
            tc = (t == c) & valid
            inter = float((pc & tc).sum())
            union = float((pc | tc).sum())
            inter_sum += inter
            union_sum += union
            if union > 0:
                image_iou.append(inter / union)
        correct += float(((p == t) & valid).sum())
        total += float(valid.sum())
        ious.append(sum(image_iou) / len(image_iou) if image_iou else float("nan"))
        dmask = depth_target[b] > 0
        dp, dt = depth_pred[b][dmask].double(), depth_target[b][dmask].double()
        d, pc = dp - dt, dp.clamp_min(eps)
        ratio = torch.maximum(pc / dt, dt / pc)
        depth["count"] += float(dmask.sum())
        depth["abs"] += float(d.abs().sum())
        depth["rel"] += float((d.abs() / dt).sum())
        depth["sq"] += float((d * d).sum())
        depth["log_sq"] += float(((pc.log() - dt.log()) ** 2).sum())
        for k in (1, 2, 3):
            depth[f"d{k}"] += float((ratio < 1.25 ** k).sum())
    n = depth["count"]
    return {"inter_sum": inter_sum, "union_sum": union_sum, "pixel_acc": correct / total,
            "miou_per_image": ious, "abs_err": depth["abs"] / n, "rel_err": depth["rel"] / n,
            "rmse": (depth["sq"] / n) ** 0.5, "log_rmse": (depth["log_sq"] / n) ** 0.5,
            "delta1": depth["d1"] / n, "delta3": depth["d3"] / n}


def mtan_style_baseline(seg_logits, seg_target, depth_pred, depth_target, num_classes) -> dict:
    """The MTAN/authors' code literally: ``torch.eq`` against a freshly allocated tensor of
    class ids, float masks added and thresholded, per image and class; depth per image."""
    _, pred = torch.max(seg_logits, dim=1)
    ious = []
    for i in range(pred.shape[0]):
        iou, classes = 0.0, 0
        for j in range(num_classes):
            pred_mask = torch.eq(pred[i], j * torch.ones(pred[i].shape).type(torch.LongTensor))
            true_mask = torch.eq(seg_target[i], j * torch.ones(seg_target[i].shape)
                                 .type(torch.LongTensor))
            valid = (seg_target[i] != -1).type(torch.FloatTensor)
            comb = (pred_mask.type(torch.FloatTensor) + true_mask.type(torch.FloatTensor)) * valid
            union = torch.sum((comb > 0).type(torch.FloatTensor))
            inter = torch.sum((comb > 1).type(torch.FloatTensor))
            if union == 0:
                continue
            iou += inter / union
            classes += 1
        ious.append(float(iou) / max(classes, 1))
    abs_err, rel_err = [], []
    for i in range(depth_pred.shape[0]):
        binary = (torch.sum(depth_target[i], dim=0) > 0).unsqueeze(0)
        p, t = depth_pred[i].masked_select(binary), depth_target[i].masked_select(binary)
        abs_err.append(float(torch.sum(torch.abs(p - t)) / t.numel()))
        rel_err.append(float(torch.sum(torch.abs(p - t) / t) / t.numel()))
    return {"miou_per_image": ious, "abs_err": abs_err, "rel_err": rel_err}


def fused_update_terms(seg_logits, seg_target, depth_pred, depth_target, depth_mask,
                       ignore_index=-1, eps=DEPTH_EPS):
    """What one ``SegmentationMeter.update`` + ``DepthMeter.update`` computes, as one graph
    for ``torch.compile``: the per-image confusion bin of every pixel (int32, B*K*K for ignored
    pixels; labels by a running first maximum over the K channels, the rule of
    ``max(1).indices``) and :func:`xtc.metrics.depth_error_sums`. No range checks and no
    bincount: those are data-dependent and break the graph."""
    b, k = seg_logits.shape[:2]
    best, labels = seg_logits[:, 0], torch.zeros_like(seg_target)
    for c in range(1, k):
        x = seg_logits[:, c]
        higher = x > best
        best, labels = torch.where(higher, x, best), torch.where(higher, c, labels)
    image = torch.arange(b, device=seg_target.device).view(-1, 1, 1) * (k * k)
    bins = torch.where(seg_target != ignore_index, image + seg_target * k + labels, b * k * k)
    return bins.to(torch.int32), depth_error_sums(depth_pred, depth_target, depth_mask, eps)


def compiled_update(seg_logits, seg_target, depth_pred, depth_target, depth_mask):
    """``torch.compile(fused_update_terms)`` + the bincount: returns a function of no
    arguments (the timed candidate) giving the (B,K,K) confusion and the depth sums."""
    fused = torch.compile(fused_update_terms, dynamic=False)
    b, k = seg_logits.shape[:2]

    def update():
        bins, sums = fused(seg_logits, seg_target, depth_pred, depth_target, depth_mask)
        counts = torch.bincount(bins.reshape(-1), minlength=b * k * k + 1)[:b * k * k]
        return counts.view(b, k, k), sums
    return update


class Rendered(torch.utils.data.Dataset):
    """A dataset rendered once into memory (so evaluation time excludes scene rendering)."""

    def __init__(self, ds):
        self.items = [ds[i] for i in range(len(ds))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def run(args) -> dict:
    log = lambda m: _common.log(m, args.json)  # noqa: E731
    torch.manual_seed(args.seed)
    overrides = []
    if args.small and not args.quick:
        overrides = ["model.encoder=resnet18", "model.decoder_width=64", "model.transfer_width=32"]
    cfg = xconfig.load(_common.TINY_CONFIG if args.quick else None, overrides)
    H, W = (64, 128) if args.quick else (args.height, args.width)
    n_images = 4 if args.quick else args.images
    B = 2 if args.quick else args.batch_size
    ds = Rendered(build_dataset("synthetic-city", "test", height=H, width=W,
                                test_size=n_images, seed=args.seed))
    loader = DataLoader(ds, batch_size=B)
    exp = build_experiment(cfg, "cpu", optimizer=False, num_classes=7)
    model, criterion = exp.model, exp.criterion
    device = torch.device("cpu")
    log(f"evaluate: {cfg.model.encoder} {H}x{W}, {n_images} images, batch {B}")

    eval_times = []
    for r in range(1 if args.quick else args.eval_repeats + 1):  # round 0 warms up
        t = _common.timed(lambda: evaluate(model, loader, criterion, device))
        if r > 0 or args.quick:
            eval_times.append(t)
        log(f"evaluate round {r}: {t:.2f}s")
    eval_s = _common.median(eval_times)
    batches = len(loader)

    # one batch of real predictions for the metric comparison
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        pred = {k: v.float() for k, v in model(batch["image"]).items()}
    seg, st = pred["seg"], batch["seg_target"]
    dp, dt, dm = pred["depth"], batch["depth_target"], batch["depth_mask"]

    def ours():
        SegmentationMeter(7).update(seg, st)
        DepthMeter().update(dp, dt, dm)

    def consistency():
        ConsistencyMeter(7).update(pred, depth_mask=dm, seg_valid=st >= 0)

    def labels():  # the first thing any mIoU needs: class labels from the logits
        seg.max(1).indices

    def baseline():
        loop_baseline(seg, st, dp, dt, 7)

    def baseline_mtan():
        mtan_style_baseline(seg, st, dp, dt, 7)

    candidates = {"ours": ours, "baseline": baseline, "baseline_mtan": baseline_mtan,
                  "consistency": consistency, "labels": labels}
    compiled = None
    if args.compile:
        log("compiling the fused metric update (inductor)")
        fused = compiled_update(seg, st, dp, dt, dm)
        first_s = _common.timed(fused)  # compilation included
        conf, sums = fused()
        per_image = []  # the meters' confusion of each image, to compare with the fused bins
        for i in range(seg.shape[0]):
            meter = SegmentationMeter(7)
            meter.update(seg[i:i + 1], st[i:i + 1])
            per_image.append(meter.confusion)
        ref_depth = DepthMeter()
        ref_depth.update(dp, dt, dm)
        # float32 depth sums: inductor reduces in another order than eager
        compiled = {"first_call_s": first_s,
                    "agrees": bool(torch.equal(conf, torch.stack(per_image))
                                   and torch.allclose(sums, ref_depth.sums, rtol=1e-5))}
        candidates["compiled"] = fused

    repeats = 2 if args.quick else args.repeats
    times = _common.interleaved(candidates, repeats, warmup=1)
    ours_ms = _common.median(times["ours"]) * 1e3
    base_ms = _common.median(times["baseline"]) * 1e3
    cons_ms = _common.median(times["consistency"]) * 1e3
    mtan_ms = _common.median(times["baseline_mtan"]) * 1e3
    if compiled is not None:
        compiled_ms = _common.median(times["compiled"]) * 1e3
        compiled.update(update_ms=compiled_ms, speedup=base_ms / compiled_ms,
                        speedup_paired_median=_common.median_ratio(times["baseline"],
                                                                   times["compiled"]))

    # agreement of the two on the same inputs
    sm, dmtr = SegmentationMeter(7), DepthMeter()
    sm.update(seg, st)
    dmtr.update(dp, dt, dm)
    conf = sm.confusion.double()
    inter = float(conf.diagonal().sum())
    union = float((conf.sum(0) + conf.sum(1) - conf.diagonal()).sum())
    ref = loop_baseline(seg, st, dp, dt, 7)
    seg_m, depth_m = sm.compute(), dmtr.compute()
    agree = {"inter_sum": [inter, ref["inter_sum"]], "union_sum": [union, ref["union_sum"]],
             "pixel_acc": [seg_m["pixel_acc"], ref["pixel_acc"]],
             "miou_legacy": [seg_m["miou_legacy"],
                             sum(ref["miou_per_image"]) / len(ref["miou_per_image"])],
             **{k: [depth_m[k], ref[k]]
                for k in ("abs_err", "rel_err", "rmse", "log_rmse", "delta1", "delta3")}}
    # the meters compute depth terms in float32 per pixel (float64 sums), the loop in float64
    agree_ok = all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in agree.values())

    info = _common.machine_info()
    metric_total_s = ours_ms / 1e3 * batches
    return {
        "eval_images_per_s": n_images / eval_s,
        "eval_s": eval_s,
        "eval_times_s": eval_times,
        "eval_images": n_images,
        "eval_batches": batches,
        "metric_update_ms": ours_ms,
        "baseline_update_ms": base_ms,
        "speedup": base_ms / ours_ms,
        "speedup_paired_median": _common.median_ratio(times["baseline"], times["ours"]),
        "baseline_mtan_update_ms": mtan_ms,
        "speedup_vs_mtan_style": mtan_ms / ours_ms,
        "metric_fraction_of_eval": metric_total_s / eval_s,
        "consistency_update_ms": cons_ms,
        "labels_ms": _common.median(times["labels"]) * 1e3,
        "metric_plus_consistency_fraction_of_eval": (ours_ms + cons_ms) / 1e3 * batches / eval_s,
        "agreement": agree, "agreement_ok": agree_ok,
        "compiled": compiled,
        "metric_times_ms": {k: [t * 1e3 for t in v] for k, v in times.items()},
        "device": info["device"], "threads": torch.get_num_threads(),
        "load_average": info["load_average"], "machine": info,
        "config": {"encoder": cfg.model.encoder, "decoder_width": cfg.model.decoder_width,
                   "transfer_width": cfg.model.transfer_width, "height": H, "width": W,
                   "batch_size": B, "classes": 7, "quick": args.quick},
    }


def human(r: dict) -> str:
    return "\n".join([
        f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
        f"config {r['config']}",
        f"evaluate: {r['eval_images_per_s']:.2f} images/s ({r['eval_s']:.2f}s for "
        f"{r['eval_images']} images)",
        f"metric update (seg+depth meters) {r['metric_update_ms']:.2f} ms/batch vs loop "
        f"baseline {r['baseline_update_ms']:.2f} ms: {r['speedup']:.1f}x (MTAN-code style "
        f"{r['baseline_mtan_update_ms']:.2f} ms: {r['speedup_vs_mtan_style']:.1f}x)",
        f"metric share of evaluation: {100 * r['metric_fraction_of_eval']:.2f}% "
        f"(with the consistency meter {100 * r['metric_plus_consistency_fraction_of_eval']:.2f}%)",
        f"agreement with the loop: {r['agreement_ok']}"]
        + ([f"compiled (fused, inductor) update {c['update_ms']:.2f} ms: "
            f"{c['speedup']:.1f}x the loop, "
            f"first call {c['first_call_s']:.1f}s, agrees with the meters: {c['agrees']}"]
           if (c := r.get("compiled")) else []))


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="resnet18, widths 64/32 instead of the "
                   "paper model")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-repeats", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="interleaved metric-update rounds")
    p.add_argument("--compile", action="store_true", help="also time the meters' work fused "
                   "by torch.compile (the ceiling of fusion on this device; not shipped)")
    return _common.main(p, run, human, argv)


if __name__ == "__main__":
    main()
