"""Step time and peak memory of gradient aggregation (TorchJD) against the scalarised step.

For K = 2, 4, 8 (and 9) objectives, the training step ``fit`` runs
(``xtc.train.forward_losses`` + ``xtc.train.optimizer_step``) with ``loss.aggregator=none``
(one backward of the weighted total: today's step) and with every aggregator of
``xtc.losses.aggregation.AGGREGATORS`` (``--aggregators``, default all registered), each its
own ``build_experiment`` from the same seed:

* ``K2-tasks``: tasks [seg, depth], ``loss.objectives=tasks`` (the two task groups L_a);
* ``K4-terms``: [seg, depth], ``terms`` (seg, depth, seg2depth, depth2seg);
* ``K8-terms-5edges``: [seg, depth, normal] with the five edges of ``--edges8`` (default every
  ordered pair but normal2seg), ``terms``: 3 direct + 5 cross-task terms = 8;
* ``K9-terms-6edges``: [seg, depth, normal], all six edges, ``terms``: 3 + 6 = 9.

Every configuration uses ``loss.weighting=fixed`` (an aggregator replaces the weighting and
validation records it as fixed, so ``none`` is stepped with the same weighting) and
``train.grad_stats_every=0``. Default size: configs/synthetic-quick.yaml (resnet18, 64x128,
batch 8, decoder width 32, transfer width 16, its ``precision: auto`` and channels_last) on one
synthetic-city batch (``xtc.analysis.profiling.synthetic_batch``) holding the keys of the
configuration's tasks.

**Time.** Per setup, one untimed first step of every candidate (the agreement check below),
``--warmup`` untimed rounds, then ``--repeats`` round-robin rounds (order rotated each round,
``_common.interleaved``): ``ms_per_step`` (median), ``ratio_to_none`` (median over rounds of
the paired ratio, so machine load cancels), ``ratio_of_medians_to_none``, and the same in
process CPU time (``cpu_ms_per_step``, ``cpu_ratio_to_none``: steadier when other processes
share the cores). **Target**: an aggregator step costs at most (K + 1)x the scalarised step for
K objectives (``target``).

**Gramian engine.** Every aggregator runs with ``loss.aggregator_engine=autojac`` (the K x P
Jacobian); UPGrad also as ``upgrad-autogram``, xtc's ``loss.aggregator_engine=autogram``
(TorchJD's ``autogram.Engine`` on the encoder, ``batch_dim=None`` because of its BatchNorm:
the Gramian J J^T, UPGrad's weights w from it, J^T w on the encoder and the summed objective
gradients on the decoders and transfer nets, the autojac step's update).
``gramian_engine`` says per setup which engine is faster, and the cosine between the two
engines' first-step encoder gradients (same weights and batch; 1 when they agree).

**Memory** (``--no-memory`` skips it). On a CPU, the step's resident-memory high-water mark, in a
subprocess (this script with ``--memory-worker``) started with ``MALLOC_MMAP_THRESHOLD_=65536``
(so glibc returns every freed tensor of 64 KiB or more to the OS instead of keeping it in its
heap, and resident memory follows live tensors), one configuration after the other: build it,
run one step (gradients and Adam state now exist), ``gc.collect()``, read ``VmRSS`` from
/proc/self/status (``resident_mb``: model, gradients, optimiser state, the process), reset the
high-water mark (``5`` into /proc/self/clear_refs), run ``--memory-steps`` steps and read
``VmHWM`` (``peak_mb``). ``step_mb`` = peak - resident: what one step adds at its peak
(activations, the Jacobian's K rows, the aggregator's work). It counts every page the process
touches (allocator slack, oneDNN scratch buffers) and is rounded to whole pages; it is not
``torch.profiler``'s count of tensor bytes. On a GPU: ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``, minus what is allocated before the steps. Ratios are to
``none`` of the same setup.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (puts the repo root on sys.path)
import torch  # noqa: E402

from xtc import config as xconfig  # noqa: E402
from xtc.distributed import Context  # noqa: E402
from xtc.analysis.profiling import synthetic_batch  # noqa: E402
from xtc.runtime import git_commit, resolve_precision  # noqa: E402
from xtc.tasks import TASKS, transfers_of  # noqa: E402
from xtc.train import build_experiment, forward_losses, optimizer_step  # noqa: E402

DEFAULT_CONFIG = _common.ROOT / "configs" / "synthetic-quick.yaml"
NONE = "none"
AUTOGRAM = "upgrad-autogram"
TWO, THREE = ["seg", "depth"], ["seg", "depth", "normal"]
DEFAULT_EDGES8 = "seg2depth,seg2normal,depth2seg,depth2normal,normal2depth"
# fp32 on every machine: the ratios then do not depend on whether the CPU has native bf16
# (precision=auto picks bf16 on avx512_bf16 CPUs), and TorchJD 0.18's Gramian engine fails
# under bf16 autocast ("expected scalar type BFloat16 but found Float" in its vmapped
# backward), so upgrad-autogram is measured only in fp32 (--set train.precision=bf16 skips it).
COMMON_OVERRIDES = ["model.method=xtc", "loss.weighting=fixed", "train.grad_stats_every=0",
                    "train.precision=fp32"]
QUICK_OVERRIDES = ["data.height=32", "data.width=64", "model.decoder_width=8",
                   "train.batch_size=2"]  # on top of configs/tiny.yaml (--quick's config)
MMAP_THRESHOLD = "65536"  # bytes; fixed, so glibc does not raise it and keep freed tensors


def setups(edges8: str) -> dict[str, dict]:
    """name -> tasks, transfers (None: every ordered pair) and loss.objectives."""
    five = [e for e in edges8.split(",") if e]
    return {"K2-tasks": {"tasks": TWO, "transfers": None, "objectives": "tasks"},
            "K4-terms": {"tasks": TWO, "transfers": None, "objectives": "terms"},
            f"K{3 + len(five)}-terms-{len(five)}edges": {"tasks": THREE, "transfers": five,
                                                         "objectives": "terms"},
            "K9-terms-6edges": {"tasks": THREE, "transfers": None, "objectives": "terms"}}


AUTOGRAM_BF16 = ("TorchJD 0.18's Gramian engine fails under bf16 autocast; measured in fp32 "
                 "only")


def candidate_names(aggregators: list[str], probe: xconfig.Config, device) -> list[str]:
    """none, the aggregators, and the Gramian-engine path where it runs (fp32)."""
    fp32 = resolve_precision(probe.train.precision, device) == "fp32"
    return [NONE, *aggregators, *([AUTOGRAM] if fp32 else [])]


def chosen_setups(args) -> dict[str, dict]:
    """The setups of ``--setups`` (a comma-separated list of names or K values; default all)."""
    specs = setups(args.edges8)
    if not args.setups:
        return specs
    wanted = [w for w in args.setups.split(",") if w]
    out = {n: s for n, s in specs.items()
           if n in wanted or n.split("-")[0].lstrip("K") in wanted}
    if not out:
        raise SystemExit(f"--setups {args.setups}: none of {list(specs)}")
    return out


def aggregator_names(arg: str | None) -> list[str]:
    from xtc.losses.aggregation import AGGREGATORS

    names = AGGREGATORS.names() if not arg else [a for a in arg.split(",") if a]
    unknown = sorted(set(names) - set(AGGREGATORS.names()))
    if unknown:
        raise SystemExit(f"--aggregators: unknown {unknown}; registered: {AGGREGATORS.names()}")
    return list(names)


def base_overrides(args) -> list[str]:
    overrides = list(COMMON_OVERRIDES) + (QUICK_OVERRIDES if args.quick else [])
    for key, value in (("train.batch_size", args.batch), ("data.height", args.height),
                       ("data.width", args.width)):
        if value:
            overrides.append(f"{key}={value}")
    return overrides + list(args.set or [])


def make_config(args, setup: dict, candidate: str, device: torch.device) -> xconfig.Config:
    aggregator = "upgrad" if candidate == AUTOGRAM else candidate
    overrides = base_overrides(args) + [
        f"model.tasks=[{', '.join(setup['tasks'])}]",
        f"loss.objectives={setup['objectives']}", f"loss.aggregator={aggregator}"]
    if aggregator != NONE:  # each engine on its own
        overrides.append("loss.aggregator_engine="
                         f"{'autogram' if candidate == AUTOGRAM else 'autojac'}")
    if setup["transfers"] is not None:
        overrides.append(f"model.transfers=[{', '.join(setup['transfers'])}]")
    cfg = xconfig.load(args.config, overrides)
    cfg.train.device = device.type
    return cfg


def objective_names(criterion, mode: str) -> list[str]:
    from xtc.losses import aggregation

    if hasattr(aggregation, "objective_names"):
        return list(aggregation.objective_names(criterion, mode))
    return list(criterion.objective_names(mode))


class Candidate:
    """One experiment (setup x aggregator) and its batch, stepping as fit does."""

    def __init__(self, setup_name: str, setup: dict, candidate: str, args, batch: dict,
                 device: torch.device):
        self.setup, self.name, self.device = setup_name, candidate, device
        self.mode = setup["objectives"]
        self.cfg = make_config(args, setup, candidate, device)
        torch.manual_seed(args.seed)  # every candidate starts from the same weights
        self.exp = build_experiment(self.cfg, device)
        self.model, self.criterion = self.exp.model, self.exp.criterion
        keys = {"image"} | {k for t in self.model.tasks for k in TASKS.get(t).batch_keys}
        self.batch = {k: v for k, v in batch.items() if k in keys}
        self.edges = transfers_of(self.cfg)
        self.objectives = objective_names(self.criterion, self.mode)
        self.ctx = Context()
        self.first_grad = None  # the encoder gradient of the first step (agreement check)

    def step(self) -> None:
        optimizer = self.exp.optimizer
        terms = forward_losses(self.model, self.criterion, self.batch, self.device, self.cfg)
        if self.first_grad is None:
            optimizer_step(terms, _Recorder(optimizer, self), self.criterion, self.ctx)
        else:
            optimizer_step(terms, optimizer, self.criterion, self.ctx)

    __call__ = step

    def record(self) -> None:
        self.first_grad = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().double()
            for p in self.model.encoder.parameters()]).cpu()


class _Recorder:
    """The optimiser, recording the encoder gradient just before its first ``step()``."""

    def __init__(self, optimizer, candidate: Candidate):
        self._opt, self._c = optimizer, candidate

    def step(self, *a, **k):
        self._c.record()
        return self._opt.step(*a, **k)

    def __getattr__(self, name):
        return getattr(self._opt, name)


def interleaved(candidates: dict, repeats: int, warmup: int = 0, on_round=None
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``_common.interleaved`` (``warmup`` untimed rounds, then ``repeats`` rounds in an order
    rotated by the round), timing each call in wall seconds and in this process's CPU
    seconds (``time.process_time``: all its threads, user + system). Other processes on a
    shared machine stretch the wall time of whatever runs beside them; they barely change
    the CPU time a step needs, so the CPU ratio is the steadier one on a loaded machine."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        this_round = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            _common.synchronize()
            w0, c0 = _common.now(), time.process_time()
            candidates[name]()
            _common.synchronize()
            this_round[name] = _common.now() - w0
            wall[name].append(this_round[name])
            cpu[name].append(time.process_time() - c0)
        if on_round is not None:
            on_round(r, this_round)
    return wall, cpu


def _cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _finite(x) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


# ------------------------------------------------------------------------------- memory
def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_of(c: Candidate, steps: int) -> dict:
    """Resident and peak memory of ``steps`` steps of ``c`` (module docstring)."""
    c.step()
    gc.collect()
    if c.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            c.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"resident_mb": before / 2**20, "peak_mb": peak / 2**20,
                "step_mb": (peak - before) / 2**20, "measure": "cuda_max_memory_allocated"}
    resident = _status_mb("VmRSS")
    reset = _reset_hwm()
    for _ in range(steps):
        c.step()
    peak = _status_mb("VmHWM")
    return {"resident_mb": resident, "peak_mb": peak, "step_mb": peak - resident,
            "measure": "VmHWM-VmRSS" if reset else "VmHWM (not reset: includes setup)",
            "hwm_reset": reset}


def memory_worker(args) -> None:
    """``--memory-worker``: every configuration one after the other in this process; one
    JSON object on stdout."""
    device = torch.device(args.device)
    specs = chosen_setups(args)
    probe = make_config(args, next(iter(specs.values())), NONE, device)
    names = candidate_names(aggregator_names(args.aggregators), probe, device)
    B, H, W = probe.train.batch_size, probe.data.height, probe.data.width
    batch = {k: v.to(device) for k, v in synthetic_batch(B, H, W, seed=args.seed).items()}
    out: dict = {}
    for setup_name, spec in specs.items():
        out[setup_name] = {}
        for name in names:
            c = Candidate(setup_name, spec, name, args, batch, device)
            try:
                out[setup_name][name] = memory_of(c, args.memory_steps)
            except Exception as exc:  # reported, never stops the others
                out[setup_name][name] = {"error": f"{type(exc).__name__}: {exc}"}
            del c
            gc.collect()
            _common.log(f"memory {setup_name} {name}: {out[setup_name][name]}",
                        args.json and not args.verbose)
    print(json.dumps({"memory": out, "malloc_mmap_threshold": os.environ.get(
        "MALLOC_MMAP_THRESHOLD_")}))


def run_memory(args, device: torch.device, log) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", "--json",
           "--device", device.type, "--seed", str(args.seed), "--config", str(args.config),
           "--edges8", args.edges8, "--memory-steps", str(args.memory_steps)]
    for flag, value in (("--aggregators", args.aggregators), ("--setups", args.setups),
                        ("--batch", args.batch),
                        ("--height", args.height), ("--width", args.width),
                        ("--threads", args.threads)):
        if value:
            cmd += [flag, str(value)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--verbose"] if args.verbose else []
    for o in args.set or []:
        cmd += ["--set", o]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    log(f"memory: one subprocess, every configuration in turn ({args.memory_steps} steps each)")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=str(_common.ROOT))
    if proc.returncode != 0:
        raise SystemExit(f"memory worker exited with {proc.returncode} (its stderr is above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- main
def run(args) -> dict:
    t0 = _common.now()
    log = lambda m: _common.log(f"[{_common.now() - t0:6.1f}s] {m}",  # noqa: E731
                                args.json and not args.verbose)
    info = _common.machine_info()
    device = torch.device(args.device if args.device != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
    specs = chosen_setups(args)
    aggs = aggregator_names(args.aggregators)
    probe = make_config(args, next(iter(specs.values())), NONE, device)
    names = candidate_names(aggs, probe, device)
    skipped = [] if AUTOGRAM in names else [{"candidate": AUTOGRAM, "why": AUTOGRAM_BF16}]
    B, H, W = probe.train.batch_size, probe.data.height, probe.data.width
    batch = {k: v.to(device) for k, v in synthetic_batch(B, H, W, seed=args.seed).items()}
    log(f"{probe.model.encoder} {H}x{W} batch {B}, widths {probe.model.decoder_width}/"
        f"{probe.model.transfer_width}, precision "
        f"{resolve_precision(probe.train.precision, device)}, {torch.get_num_threads()} threads; "
        f"{len(names)} candidates x {len(specs)} setups")
    wall, results, failures = {}, {}, []
    for setup_name, spec in specs.items():
        t1 = _common.now()
        cands = {}
        for name in names:
            try:
                c = Candidate(setup_name, spec, name, args, batch, device)
                c.step()  # the first step: records the encoder gradient, warms the shapes up
                cands[name] = c
            except Exception as exc:  # one broken aggregator does not stop the bench
                failures.append({"setup": setup_name, "candidate": name,
                                 "error": f"{type(exc).__name__}: {exc}"})
                log(f"{setup_name} {name}: FAILED {type(exc).__name__}: {exc}")
                if args.verbose:
                    traceback.print_exc()
        if NONE not in cands:
            raise SystemExit(f"{setup_name}: the scalarised step failed: {failures[-1]}")
        K = len(cands[NONE].objectives)
        log(f"{setup_name}: K={K} objectives {cands[NONE].objectives}; timing {args.repeats} "
            f"rounds of {len(cands)} candidates after {args.warmup} warm-up")
        times, cpu = interleaved(
            cands, args.repeats, warmup=args.warmup,
            on_round=lambda r, t: log(f"  round {r + 1}: none {t[NONE] * 1e3:.0f}ms, slowest "
                                      f"{max(t, key=t.get)} {max(t.values()) * 1e3:.0f}ms"))
        ref = times[NONE]
        rows = {}
        for name, c in cands.items():
            ratio = _common.median_ratio(times[name], ref)
            cpu_ratio = _common.median_ratio(cpu[name], cpu[NONE])
            rows[name] = {
                "ms_per_step": _common.median(times[name]) * 1e3,
                "ms_per_step_min": min(times[name]) * 1e3,
                "times_ms": [t * 1e3 for t in times[name]],
                "ratio_to_none": ratio,
                "ratio_of_medians_to_none": _common.median(times[name]) / _common.median(ref),
                "cpu_ms_per_step": _common.median(cpu[name]) * 1e3,
                "cpu_ratio_to_none": cpu_ratio,
                "within_target": (None if name == NONE else bool(ratio <= K + 1)),
                "within_target_cpu": (None if name == NONE else bool(cpu_ratio <= K + 1)),
            }
        auto, gram = cands.get("upgrad"), cands.get(AUTOGRAM)
        engine = None
        if auto is not None and gram is not None:
            ta, tg = rows["upgrad"]["ms_per_step"], rows[AUTOGRAM]["ms_per_step"]
            engine = {"autojac_ms_per_step": ta, "autogram_ms_per_step": tg,
                      "autogram_over_autojac": _common.median_ratio(times[AUTOGRAM],
                                                                    times["upgrad"]),
                      "faster": "autojac" if ta <= tg else "autogram",
                      "first_step_encoder_grad_cosine": _cosine(auto.first_grad, gram.first_grad)}
        results[setup_name] = {
            "tasks": spec["tasks"], "transfers": cands[NONE].edges,
            "objectives_mode": spec["objectives"], "objectives": cands[NONE].objectives,
            "K": K, "target_ratio": K + 1, "candidates": rows, "gramian_engine": engine}
        cands.clear()
        gc.collect()
        wall[f"{setup_name}_s"] = _common.now() - t1
    memory = None
    if not args.no_memory:
        t1 = _common.now()
        memory = run_memory(args, device, log)
        wall["memory_s"] = _common.now() - t1
        for setup_name, per in memory["memory"].items():
            base = per.get(NONE, {})
            for name, m in per.items():
                if name in results[setup_name]["candidates"] and "error" not in m:
                    row = results[setup_name]["candidates"][name]
                    row["memory"] = m
                    row["step_mb_ratio_to_none"] = (m["step_mb"] / base["step_mb"]
                                                    if base.get("step_mb") else None)
                    row["peak_mb_ratio_to_none"] = (m["peak_mb"] / base["peak_mb"]
                                                    if base.get("peak_mb") else None)
    over = [{"setup": s, "aggregator": n, "K": r["K"], "ratio_to_none": v["ratio_to_none"],
             "cpu_ratio_to_none": v["cpu_ratio_to_none"]}
            for s, r in results.items() for n, v in r["candidates"].items()
            if n not in (NONE, AUTOGRAM) and not v["within_target"]]
    faster = {s: (r["gramian_engine"] or {}).get("faster") for s, r in results.items()}
    return {
        "setups": results, "failures": failures, "skipped": skipped,
        "target": {"rule": "aggregator step <= (K + 1) x the scalarised (none) step, K objectives "
                           "(paired median ratio)",
                   "met": not over and not failures, "over": over,
                   "met_in_cpu_time": not failures and all(
                       v["within_target_cpu"] is not False for r in results.values()
                       for n, v in r["candidates"].items() if n != AUTOGRAM)},
        "gramian_engine": {"faster_per_setup": faster,
                           "what": "loss.aggregator=upgrad with loss.aggregator_engine="
                                   "autogram (torchjd.autogram.Engine(model.encoder, "
                                   "batch_dim=None), UPGrad's weights from the Gramian) against "
                                   "=autojac (torchjd.autojac.jac, the K x P Jacobian)"},
        "memory_measure": (None if memory is None else
                           {"what": ("cuda max_memory_allocated - memory_allocated before the "
                                     "steps" if device.type == "cuda" else
                                     "VmHWM - VmRSS around the steps, in a subprocess with "
                                     f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"),
                            "steps": args.memory_steps}),
        "aggregators": aggs, "commit": git_commit(),
        "device": info["device"] if device.type == "cuda" else f"cpu: {_common.cpu_model()}",
        "threads": torch.get_num_threads(), "load_average": info["load_average"],
        "machine": info, "wall_s": {**wall, "total_s": _common.now() - t0},
        "repeats": args.repeats, "warmup": args.warmup,
        "config": {"file": str(args.config), "overrides": base_overrides(args),
                   "encoder": probe.model.encoder, "decoder_width": probe.model.decoder_width,
                   "transfer_width": probe.model.transfer_width,
                   "precision": resolve_precision(probe.train.precision, device),
                   "channels_last": probe.train.channels_last, "batch_size": B, "height": H,
                   "width": W, "cross_task": probe.loss.cross_task, "weighting": "fixed",
                   "quick": args.quick},
    }


def human(r: dict) -> str:
    c = r["config"]
    lines = [f"device {r['device']}, {r['threads']} threads, load {r['load_average']}",
             f"{c['encoder']} {c['height']}x{c['width']} batch {c['batch_size']}, widths "
             f"{c['decoder_width']}/{c['transfer_width']}, {c['precision']}; {r['repeats']} "
             f"rounds; commit {r['commit']}"]
    setups_ = list(r["setups"])
    head = f"{'x none wall/cpu (ms)':22s}" + "".join(f"{s:>23s}" for s in setups_)
    lines += ["", head]
    names = list(dict.fromkeys(n for s in r["setups"].values() for n in s["candidates"]))
    for n in names:
        cells = []
        for s in setups_:
            v = r["setups"][s]["candidates"].get(n)
            if v is None:
                cells.append(f"{'failed':>23s}")
                continue
            mark = "" if v["within_target"] in (None, True) else "!"
            cells.append(f"{v['ratio_to_none']:6.2f}/{v['cpu_ratio_to_none']:5.2f}{mark:1s} "
                         f"({v['ms_per_step']:6.0f})  ")
        lines.append(f"{n:22s}" + "".join(cells))
    lines.append(f"{'target (K+1)':22s}" + "".join(
        f"{r['setups'][s]['target_ratio']:6d}                 " for s in setups_))
    if any("memory" in v for s in r["setups"].values() for v in s["candidates"].values()):
        lines += ["", f"{'step MB (x none)':22s}" + "".join(f"{s:>23s}" for s in setups_)]
        for n in names:
            cells = []
            for s in setups_:
                v = r["setups"][s]["candidates"].get(n) or {}
                m, q = v.get("memory"), v.get("step_mb_ratio_to_none")
                cells.append(f"{'-':>23s}" if m is None else
                             f"{m['step_mb']:13.0f} ({q if q is None else round(q, 2)!s:>5s})  ")
            lines.append(f"{n:22s}" + "".join(cells))
    over = [(o["setup"], o["aggregator"], round(o["ratio_to_none"], 1))
            for o in r["target"]["over"]]
    lines += ["", f"target met (wall): {r['target']['met']}, in CPU time: "
                  f"{r['target']['met_in_cpu_time']}; over (wall): "
                  f"{over}",
              f"Gramian engine vs autojac (UPGrad): {r['gramian_engine']['faster_per_setup']}"]
    for f in r["failures"]:
        lines.append(f"FAILED {f['setup']} {f['candidate']}: {f['error']}")
    return "\n".join(lines)


def main(argv=None) -> dict | None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default synthetic-quick; --quick: tiny)")
    p.add_argument("--set", action="append", help="section.key=value override (repeatable)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--aggregators", default=None,
                   help="comma-separated aggregator names (default: every registered one)")
    p.add_argument("--setups", default=None,
                   help="comma-separated setups by name or K (2,4,8,9; default all)")
    p.add_argument("--edges8", default=DEFAULT_EDGES8,
                   help="the five edges of the 8-objective setup (3 tasks, objectives=terms)")
    p.add_argument("--repeats", type=int, default=None, help="round-robin timed rounds (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first step")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocess")
    p.add_argument("--memory-steps", type=int, default=2, help="steps measured per config")
    p.add_argument("--memory-worker", action="store_true", help=argparse_suppress())
    p.add_argument("--verbose", action="store_true", help="progress on stderr even with --json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return None
    args.config = str(_common.config_path(args, DEFAULT_CONFIG))
    args.repeats = args.repeats or (1 if args.quick else 5)
    if args.quick:
        args.warmup = 0  # the first step has warmed the shapes up; numbers mean nothing
    result = run(args)
    _common.emit(result, args.json, human)
    return result


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
