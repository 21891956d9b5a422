"""Training-step cost against the number of tasks and transfer edges, in one process.

Configurations (each its own experiment from ``xtc.train.build_experiment``, the same seed):

* ``mtl-2task``: mtl, tasks [seg, depth]
* ``xtc-2task``: xtc, [seg, depth], 2 edges (seg2depth, depth2seg: the paper) - the reference
* ``mtl-3task``: mtl, [seg, depth, normal]
* ``xtc-3task``: xtc, [seg, depth, normal], every ordered pair: 6 edges
* ``xtc-3task-4edges``: xtc, [seg, depth, normal], ``--subset`` edges (default seg2depth,
  depth2seg, depth2normal, normal2depth; ``--subset ''`` leaves it out)

Each step is the one ``fit`` runs: ``forward_losses`` + ``optimizer_step`` with the config's
``train.precision`` and ``train.channels_last`` (default config configs/synthetic-quick.yaml:
resnet18, 64x128, batch 8, decoder width 32, transfer width 16), on one synthetic-city batch
(``xtc.analysis.profiling.synthetic_batch``, normals included) holding only the keys the
configuration's tasks need, as fit's datasets do. After ``--warmup`` untimed rounds the
configurations are timed round-robin for ``--repeats`` rounds (order rotated each round), so
machine load affects all alike; medians and minima are reported, and ratios to ``xtc-2task``
(median over rounds of the paired ratio, and the ratio of medians).

Per configuration also: parameter counts (encoder, each decoder, each transfer net, the
criterion) and FLOPs by ``torch.utils.flop_counter.FlopCounterMode``: one forward of the
whole model, of the direct part (encoder + decoders), of each transfer net on the direct
predictions, and one step's forward + backward.

``--baseline-src DIR`` (e.g. a worktree of 25897fe, the commit before the N-task change)
adds the before/after check: the two-task xtc step with the code in DIR and with this tree's
code, each in a subprocess worker (``bench/_tasks_worker.py``, the same harness and the APIs
both versions have), alternated for ``--baseline-rounds`` rounds in the same run: both
medians, the paired ratio new/old, and whether the first-step losses agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from xtc import config as xconfig  # noqa: E402
from xtc.analysis.profiling import synthetic_batch  # noqa: E402
from xtc.runtime import git_commit, resolve_precision  # noqa: E402
from xtc.tasks import TASKS, split_edge, transfers_of  # noqa: E402
from xtc.train import build_experiment, forward_losses, optimizer_step  # noqa: E402

DEFAULT_CONFIG = _common.ROOT / "configs" / "synthetic-quick.yaml"
WORKER = Path(__file__).resolve().parent / "_tasks_worker.py"
REFERENCE = "xtc-2task"
TWO, THREE = ["seg", "depth"], ["seg", "depth", "normal"]
DEFAULT_SUBSET = "seg2depth,depth2seg,depth2normal,normal2depth"
QUICK_OVERRIDES = ["data.height=32", "data.width=64", "model.decoder_width=8",
                   "train.batch_size=2"]  # on top of configs/tiny.yaml (--quick's config)
PAPER_OVERRIDES = ["model.encoder=resnet34", "model.decoder_width=128",
                   "model.transfer_width=64", "data.height=128", "data.width=256",
                   "train.batch_size=8"]


def configurations(subset: str) -> dict[str, dict]:
    """name -> method, tasks and transfers (None: every ordered pair) of each configuration."""
    out = {"mtl-2task": {"method": "mtl", "tasks": TWO, "transfers": None},
           REFERENCE: {"method": "xtc", "tasks": TWO, "transfers": None},
           "mtl-3task": {"method": "mtl", "tasks": THREE, "transfers": None},
           "xtc-3task": {"method": "xtc", "tasks": THREE, "transfers": None}}
    edges = [e for e in subset.split(",") if e]
    if edges:
        out[f"xtc-3task-{len(edges)}edges"] = {"method": "xtc", "tasks": THREE,
                                               "transfers": edges}
    return out


def base_overrides(args) -> list[str]:
    """The size and --set overrides every configuration (and the baseline worker) shares."""
    overrides = list(QUICK_OVERRIDES if args.quick else [])
    overrides += PAPER_OVERRIDES if args.paper else []
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.height:
        overrides.append(f"data.height={args.height}")
    if args.width:
        overrides.append(f"data.width={args.width}")
    return overrides + list(args.set or [])


def make_config(args, spec: dict, device: torch.device) -> xconfig.Config:
    overrides = base_overrides(args) + [f"model.method={spec['method']}",
                                        f"model.tasks=[{', '.join(spec['tasks'])}]"]
    if spec["transfers"] is not None:
        overrides.append(f"model.transfers=[{', '.join(spec['transfers'])}]")
    cfg = xconfig.load(args.config, overrides)
    cfg.train.device = device.type
    return cfg


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Configuration:
    """One experiment and its batch, stepping as fit does."""

    def __init__(self, name: str, spec: dict, args, batch: dict, device: torch.device):
        self.name, self.spec, self.device = name, spec, device
        self.cfg = make_config(args, spec, device)
        torch.manual_seed(args.seed)  # every configuration starts from the same seed
        self.exp = build_experiment(self.cfg, device)
        self.model, self.criterion = self.exp.model, self.exp.criterion
        keys = {"image"} | {k for t in self.model.tasks for k in TASKS.get(t).batch_keys}
        self.batch = {k: v for k, v in batch.items() if k in keys}
        self.edges = transfers_of(self.cfg)

    def __call__(self) -> None:
        optimizer_step(forward_losses(self.model, self.criterion, self.batch, self.device,
                                      self.cfg), self.exp.optimizer, self.criterion)

    def params(self) -> dict:
        m = self.model
        decoders = {t: numel(d) for t, d in m.decoders.items()}
        transfer = {e: numel(m.transfer[e]) for e in self.edges} if m.transfer is not None else {}
        return {"encoder": numel(m.encoder), "decoders": decoders,
                "decoders_total": sum(decoders.values()), "transfer": transfer,
                "transfer_total": sum(transfer.values()), "criterion": numel(self.criterion),
                "model_total": numel(m)}

    def flops(self) -> dict:
        """FLOPs of one forward (whole model, direct part, each transfer net on the direct
        predictions) in eval mode, and of one training step's forward + backward (no
        optimiser step; gradients dropped). Returns the first step's loss terms too."""
        m = self.model
        images = self.batch["image"].to(self.device)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        m.eval()
        with torch.no_grad():
            model_forward = count_flops(lambda: m(images))
            direct_forward = count_flops(lambda: m(images, direct_only=True))
            outs = m(images, direct_only=True)
            per_edge = {e: count_flops(lambda e=e: m.transfer_from(e, outs[split_edge(e)[0]]))
                        for e in self.edges}
        m.train()
        terms = {}

        def fwd_bwd():
            terms.update(forward_losses(m, self.criterion, self.batch, self.device, self.cfg))
            terms["total"].backward()

        step = count_flops(fwd_bwd)
        self.exp.optimizer.zero_grad(set_to_none=True)
        first = {k: float(v.detach()) for k, v in terms.items()}
        return {"model_forward": model_forward, "direct_forward": direct_forward,
                "transfer_forward": sum(per_edge.values()),
                "transfer_forward_per_edge": per_edge, "step_forward_backward": step}, first


class Worker:
    """A ``bench/_tasks_worker.py`` subprocess stepping the two-task xtc step of one tree."""

    def __init__(self, label: str, src: Path, args, device: torch.device, num_classes: int):
        self.label, self.src = label, src
        cmd = [sys.executable, str(WORKER), "--src", str(src), "--seed", str(args.seed),
               "--device", device.type, "--num-classes", str(num_classes),
               "--config", str(Path(args.config).resolve())]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        for o in base_overrides(args) + ["model.method=xtc"]:
            cmd += ["--set", o]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, cwd=str(src), env=env)
        self.ready = None

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(f"baseline worker '{self.label}' ({self.src}) exited with "
                             f"{self.proc.returncode} (its stderr is above)")
        msg = json.loads(line)
        if "error" in msg:
            raise SystemExit(f"baseline worker '{self.label}': {msg['error']}")
        return msg

    def wait_ready(self) -> dict:
        self.ready = self.read()
        return self.ready

    def steps(self, n: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"op": "steps", "n": n}) + "\n")
        self.proc.stdin.flush()
        return self.read()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def baseline_check(args, device: torch.device, num_classes: int, log) -> dict:
    old_src = Path(args.baseline_src).resolve()
    if not (old_src / "xtc" / "train.py").is_file():
        raise SystemExit(f"--baseline-src {old_src}: no xtc/train.py there; pass a source "
                         f"tree, e.g. `git worktree add /tmp/xtc-base 25897fe`")
    log(f"baseline: starting workers old={old_src} new={_common.ROOT}")
    workers = {"old": Worker("old", old_src, args, device, num_classes),
               "new": Worker("new", _common.ROOT, args, device, num_classes)}
    try:
        for w in workers.values():
            w.wait_ready()
        for _ in range(args.warmup):
            for w in workers.values():
                w.steps(1)
        times = {k: [] for k in workers}
        names = list(workers)
        for r in range(args.baseline_rounds):
            order = names[r % 2:] + names[:r % 2]
            for k in order:
                times[k] += workers[k].steps(args.baseline_steps)
            log(f"baseline round {r + 1}: " + ", ".join(
                f"{k} {times[k][-1] * 1e3:.0f}ms" for k in order))
    finally:
        for w in workers.values():
            w.close()
    old_terms, new_terms = workers["old"].ready["first_terms"], workers["new"].ready["first_terms"]
    common = sorted(set(old_terms) & set(new_terms))
    rel = max((abs(new_terms[k] - old_terms[k]) / max(abs(old_terms[k]), 1e-12)
               for k in common), default=float("nan"))
    n = args.baseline_steps

    def per_round(k: str) -> list[float]:  # the mean step of each round, paired old/new
        return [sum(times[k][i:i + n]) / n for i in range(0, len(times[k]), n)]

    med = {k: _common.median(v) * 1e3 for k, v in times.items()}
    return {
        "old_src": str(old_src), "old_commit": git_commit(old_src),
        "new_src": str(_common.ROOT), "new_commit": git_commit(_common.ROOT),
        "rounds": args.baseline_rounds, "steps_per_round": args.baseline_steps,
        "old_ms_per_step": med["old"], "new_ms_per_step": med["new"],
        "old_ms_per_step_min": min(times["old"]) * 1e3,
        "new_ms_per_step_min": min(times["new"]) * 1e3,
        "old_times_ms": [t * 1e3 for t in times["old"]],
        "new_times_ms": [t * 1e3 for t in times["new"]],
        "ratio_new_over_old": _common.median_ratio(per_round("new"), per_round("old")),
        "ratio_of_medians": med["new"] / med["old"],
        "ratio_of_mins": min(times["new"]) / min(times["old"]),
        "first_terms_old": old_terms, "first_terms_new": new_terms,
        "first_terms_common": common,
        "first_terms_max_rel_diff": rel,
        "same_first_losses": bool(common) and rel < 1e-6,
        "workers": {k: {x: w.ready[x] for x in ("xtc_file", "threads", "precision",
                                                 "channels_last", "batch_keys")}
                    for k, w in workers.items()},
        "what": "two-task xtc step (forward_losses + optimizer_step) with the code of old_src "
                "and of new_src, each in a bench/_tasks_worker.py subprocess, alternated "
                "round by round; ratio_new_over_old < 1 means the new code is faster",
    }


def run(args) -> dict:
    t0 = _common.now()
    log = lambda m: _common.log(f"[{_common.now() - t0:6.1f}s] {m}",  # noqa: E731
                                args.json and not args.verbose)
    info = _common.machine_info()
    wall = {}
    device = torch.device(args.device if args.device != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    specs = configurations(args.subset)
    probe = make_config(args, specs[REFERENCE], device)
    B, H, W = probe.train.batch_size, probe.data.height, probe.data.width
    batch = {k: v.to(device) for k, v in synthetic_batch(B, H, W, seed=args.seed).items()}
    log(f"{probe.model.encoder} {H}x{W} batch {B}, widths {probe.model.decoder_width}/"
        f"{probe.model.transfer_width}, "
        f"precision {resolve_precision(probe.train.precision, device)}"
        f", channels_last {probe.train.channels_last}, {torch.get_num_threads()} threads")

    confs = {name: Configuration(name, spec, args, batch, device) for name, spec in specs.items()}
    wall["setup_s"] = _common.now() - t0
    flops, first_terms, params = {}, {}, {}
    for name, c in confs.items():
        flops[name], first_terms[name] = c.flops()
        params[name] = c.params()
        log(f"{name}: {len(c.edges)} edges, "
            f"transfer forward {flops[name]['transfer_forward'] / 1e9:.3f}"
            f" GFLOP, model forward {flops[name]['model_forward'] / 1e9:.2f} GFLOP")
    wall["flops_s"] = _common.now() - t0 - wall["setup_s"]
    log(f"timing {args.repeats} round-robin rounds of {list(confs)} after {args.warmup} warm-up")
    times = _common.interleaved(
        confs, args.repeats, warmup=args.warmup,
        on_round=lambda r, t: log(f"round {r + 1}: " + ", ".join(
            f"{k} {v * 1e3:.0f}ms" for k, v in t.items())))

    wall["timing_s"] = _common.now() - t0 - wall["setup_s"] - wall["flops_s"]
    ref_t, ref_f = times[REFERENCE], flops[REFERENCE]
    out = {}
    for name, c in confs.items():
        ms = _common.median(times[name]) * 1e3
        f = flops[name]
        out[name] = {
            "method": c.spec["method"], "tasks": list(c.model.tasks), "transfers": c.edges,
            "edges": len(c.edges),
            "ms_per_step": ms, "ms_per_step_min": min(times[name]) * 1e3,
            "times_ms": [t * 1e3 for t in times[name]], "images_per_s": B / (ms / 1e3),
            "ratio_to_xtc_2task": _common.median_ratio(times[name], ref_t),
            "ratio_of_medians_to_xtc_2task": ms / (_common.median(ref_t) * 1e3),
            "ratio_of_mins_to_xtc_2task": min(times[name]) / min(ref_t),
            "params": params[name], "flops": f,
            "flops_ratio_to_xtc_2task": {
                "model_forward": f["model_forward"] / ref_f["model_forward"],
                "transfer_forward": (f["transfer_forward"] / ref_f["transfer_forward"]
                                     if ref_f["transfer_forward"] else None),
                "step_forward_backward": (f["step_forward_backward"]
                                          / ref_f["step_forward_backward"])},
            "first_step_terms": first_terms[name],
        }
    num_classes = confs[REFERENCE].exp.num_classes
    confs.clear()  # free the copies before the baseline workers start
    baseline = None
    if args.baseline_src:
        t1 = _common.now()
        baseline = baseline_check(args, device, num_classes, log)
        wall["baseline_s"] = _common.now() - t1
        baseline["in_process_new_ms_per_step"] = out[REFERENCE]["ms_per_step"]
        baseline["in_process_first_terms"] = out[REFERENCE]["first_step_terms"]
    return {
        "configurations": out, "reference": REFERENCE, "baseline": baseline,
        "device": info["device"] if device.type == "cuda" else f"cpu: {_common.cpu_model()}",
        "threads": torch.get_num_threads(), "load_average": info["load_average"],
        "machine": info, "wall_s": {**wall, "total_s": _common.now() - t0},
        "repeats": args.repeats, "warmup": args.warmup,
        "config": {"file": str(args.config), "overrides": base_overrides(args),
                   "encoder": probe.model.encoder, "decoder_width": probe.model.decoder_width,
                   "transfer_width": probe.model.transfer_width,
                   "precision": resolve_precision(probe.train.precision, device),
                   "channels_last": probe.train.channels_last, "batch_size": B, "height": H,
                   "width": W, "cross_task": probe.loss.cross_task,
                   "weighting": probe.loss.weighting, "quick": args.quick, "paper": args.paper},
    }


def human(r: dict) -> str:
    c = r["config"]
    lines = [f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
             (f"{c['encoder']} {c['height']}x{c['width']} batch {c['batch_size']}, widths "
              f"{c['decoder_width']}/{c['transfer_width']}, {c['precision']}, channels_last "
              f"{c['channels_last']}; {r['repeats']} rounds"),
             (f"{'configuration':18s} {'edges':>5s} {'ms/step':>8s} {'min':>8s} {'x xtc-2':>8s} "
              f"{'fwd GFLOP':>9s} {'T GFLOP':>8s} {'T x':>5s} {'params M':>8s}")]
    for name, v in r["configurations"].items():
        tr = v["flops_ratio_to_xtc_2task"]["transfer_forward"]
        lines.append(f"{name:18s} {v['edges']:5d} {v['ms_per_step']:8.0f} "
                     f"{v['ms_per_step_min']:8.0f} {v['ratio_to_xtc_2task']:8.2f} "
                     f"{v['flops']['model_forward'] / 1e9:9.2f} "
                     f"{v['flops']['transfer_forward'] / 1e9:8.3f} "
                     f"{tr if tr is None else round(tr, 2)!s:>5s} "
                     f"{v['params']['model_total'] / 1e6:8.2f}")
    b = r["baseline"]
    if b:
        lines.append(f"before/after (two-task xtc step, {b['rounds']} alternated rounds): old "
                     f"{b['old_ms_per_step']:.0f} ms ({b['old_commit']}), new "
                     f"{b['new_ms_per_step']:.0f} ms ({b['new_commit']}), new/old "
                     f"{b['ratio_new_over_old']:.3f}; same first-step losses: "
                     f"{b['same_first_losses']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default synthetic-quick; --quick: tiny)")
    p.add_argument("--set", action="append", help="section.key=value override (repeatable)")
    p.add_argument("--paper", action="store_true",
                   help="the paper's size: resnet34, 128x256, batch 8, widths 128/64")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--repeats", type=int, default=None, help="round-robin timed rounds (10)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds first (1; 0 under --quick)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads here and in the baseline workers (default: "
                        "torch's, one per core, as fit runs)")
    p.add_argument("--subset", default=DEFAULT_SUBSET,
                   help="edges of the 3-task xtc subset configuration ('' leaves it out)")
    p.add_argument("--baseline-src", help="source tree of the old code (before/after check)")
    p.add_argument("--baseline-rounds", type=int, default=None,
                   help="alternated old/new rounds (default --repeats)")
    p.add_argument("--baseline-steps", type=int, default=1, help="steps per worker per round")
    p.add_argument("--verbose", action="store_true", help="progress on stderr even with --json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = str(_common.config_path(args, DEFAULT_CONFIG))
    args.repeats = args.repeats or (2 if args.quick else 10)
    args.baseline_rounds = args.baseline_rounds or args.repeats
    if args.quick:  # the FLOP-counting step has warmed the shapes up; numbers mean nothing
        args.warmup = 0
    result = run(args)
    _common.emit(result, args.json, human)
    return result


if __name__ == "__main__":
    main()
