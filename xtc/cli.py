"""Command line: ``xtc train | evaluate | prepare | report | sweep | app`` (also ``python -m xtc``).

Errors a user can cause print one line ``xtc: error: ...`` and exit with code 2, without a
traceback: an :class:`xtc.errors.XtcError` (bad config, missing data, bad checkpoint, a
missing optional tool, ...) and an OSError whose errno is in :data:`USER_OS_ERRORS` (a full
disk, a folder that cannot be written). Any other exception is a bug and shows its
traceback; Ctrl-C exits with code 130. Bad arguments are argparse's: exit 2 too.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from xtc.errors import ConfigError, XtcError

# OS errors a user causes (where they write, how long a path is, a full disk) and their fix;
# any other OSError is a bug or a machine fault and keeps its traceback.
USER_OS_ERRORS = {
    errno.ENOSPC: "free disk space or write somewhere else (another --out)",
    errno.EDQUOT: "free space within your quota or write somewhere else (another --out)",
    errno.EACCES: "choose a folder you may write to (another --out) or fix its permissions",
    errno.EPERM: "choose a folder you may write to (another --out) or fix its permissions",
    errno.EROFS: "that file system is read-only: choose a writable folder (another --out)",
    errno.ENAMETOOLONG: "shorten the path (a file or folder name may have at most 255 bytes)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way of a folder of that name: choose another path",
    errno.EISDIR: "that path is a folder: pass a file",
    errno.ENOENT: "check the path",
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (XtcError, OSError) as exc:
        message = _user_message(exc)
        if message is None:  # an OSError that is not the user's: a bug or a machine fault
            raise
        print(f"xtc: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # TrainingInterrupted says where it stopped and how to resume
        print(f"xtc: {exc or 'interrupted'}", file=sys.stderr)
        return 130


def _user_message(exc: BaseException) -> str | None:
    """The one line ``main`` prints for ``exc``, or None for an OSError that is not the
    user's (its errno is not in USER_OS_ERRORS): ``main`` lets that propagate. ``main``
    calls this only for an XtcError or an OSError; every other exception is a bug."""
    if isinstance(exc, XtcError):  # MissingFileError too: its message says which and the fix
        return _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, OSError):
        if exc.errno not in USER_OS_ERRORS:
            return None
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or os.strerror(exc.errno)
        return _one_line(f"{where + ': ' if where else ''}{reason} "
                         f"({errno.errorcode.get(exc.errno, exc.errno)}); "
                         f"{USER_OS_ERRORS[exc.errno]}")
    if type(exc) is KeyError:  # a bare lookup: str() would print just the quoted key
        return f"missing entry {exc.args[0]!r} (KeyError)" if exc.args else "KeyError"
    return _one_line(str(exc) or type(exc).__name__)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _train(args) -> int:
    from xtc import config, train
    from xtc.config import SHORTCUTS

    given = [f"{SHORTCUTS[name].key}={getattr(args, f'shortcut_{name}')}" for name in SHORTCUTS
             if getattr(args, f"shortcut_{name}", None) is not None]
    cfg = config.load(args.config, [*(args.set or []), *given])
    resume = {None: False, "strict": True, "auto": "auto"}[args.resume]
    run = train.fit(cfg, out_dir=args.out, resume=resume, progress=not args.quiet)
    summary = {"out_dir": str(args.out), "best_epoch": run.best_epoch + 1,
               "wall_time_s": round(run.wall_time_s, 1),
               "test": {k: v for k, v in run.test_metrics.items() if not isinstance(v, list)}}
    print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args) -> int:
    """Evaluate a checkpoint's weights once on a split; writes a results.json of its own
    (never over a training run's) that records the protocol and the precision used."""
    from xtc import config, results, runtime
    from xtc.train import _loader, evaluate, load_run

    path = Path(args.checkpoint)
    run = load_run(path, overrides=args.set or [])
    out = Path(args.out) if args.out else _run_dir(path) / f"eval-{args.split}"
    results.check_evaluation_target(out, path, args.split)
    _check_writable(out)
    cfg, device, model, criterion = run.config, run.experiment.device, run.model, run.criterion
    # evaluation measures the images as they are: no scale-crop or flip, even on train
    dataset = run.dataset(args.split)
    precision = runtime.resolve_precision(cfg.train.precision, device)
    metrics = evaluate(model, _loader(dataset, cfg), criterion, device, precision,
                       progress=not args.quiet)
    results.write(out, params=config.flatten(cfg), metrics={args.split: metrics},
                  kind="evaluation", checkpoint=str(path.resolve()), split=args.split,
                  protocol=_evaluation_protocol(cfg, dataset, args.split, path),
                  provenance={**runtime.provenance(device), "precision": precision,
                              "dataset_fingerprint": dataset.fingerprint()})
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    print(f"wrote {out / results.FILENAME}", file=sys.stderr)
    return 0


def _run_dir(checkpoint_path: Path) -> Path:
    """RUN for RUN/checkpoints/X.pt; the checkpoint's own folder for a file elsewhere."""
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _evaluation_protocol(cfg, dataset, split: str, path: Path) -> dict:
    """What an evaluation's numbers mean, as training's results.json says for its own."""
    return {
        "name": "evaluate",
        "split": split,
        "weights": f"the checkpoint's weights ({path.name}), evaluated once",
        "augmentation": "none (the split's images as they are, train included)",
        "miou": "dataset-level confusion matrix over the split (miou_legacy: per-image mean, "
                "the paper code's formula)",
        "depth_units": dataset.depth_units,
        "depth_metrics": "over all valid pixels (target > 0) of the split",
        "training_protocol": cfg.train.protocol,
        "seed": cfg.train.seed,
    }


def _check_writable(folder: Path) -> None:
    """Fail now, not after the evaluation, when ``folder`` cannot be written; the folders
    this creates to find out are removed again."""
    import tempfile

    created, probe = [], folder
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".xtc-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    finally:
        for made in created:
            try:
                made.rmdir()
            except OSError:
                pass


def _prepare(args) -> int:
    from xtc.data import prepare

    if args.dataset == "synthetic":
        height, width = _size(args.size or "128x256")
        path = prepare.prepare_synthetic(args.out, n=args.n, height=height, width=width,
                                         seed=args.seed)
    elif args.dataset == "nyuv2":
        from xtc.data.prepare_nyuv2 import prepare_nyuv2

        if not args.raw:
            raise ConfigError("xtc prepare nyuv2 needs --raw FILE: nyu_depth_v2_labeled.mat from "
                              "the NYU Depth V2 page (see docs/nyuv2.md)")
        path = prepare_nyuv2(args.raw, args.out, args.splits, normals=args.normals,
                             size=_size(args.size) if args.size else (288, 384))
    else:
        if not args.raw:
            raise ConfigError("xtc prepare cityscapes needs --raw DIR (the folder holding "
                              "leftImg8bit/, gtFine/ and disparity/)")
        path = prepare.prepare_cityscapes(args.raw, args.out, classes=args.classes,
                                          size=_size(args.size or "128x256"))
    print(f"wrote {path}")
    return 0


def _report(args) -> int:
    from xtc import reports

    records = reports.run_preset(args.preset, reports_dir=args.reports_dir, workers=args.workers,
                                 executor=_executor_options(args))
    return _print_records(records, args.reports_dir)


def _sweep(args) -> int:
    from xtc import reports

    records = reports.run_sweep(args.file, workers=args.workers, reports_dir=args.reports_dir,
                                executor=_executor_options(args))
    return _print_records(records, args.reports_dir)


def _app(args) -> int:
    """Serve the explorer as a Voilà app on 127.0.0.1 behind a token (see xtc.viz.app)."""
    from xtc.viz import app

    return app.serve(args.run, port=args.port, token=args.token)


def _print_records(records: list, reports_dir: Path) -> int:
    """One line per notebook; exit 1 when any run failed (its notebook is linked)."""
    for r in records:
        failed = f"  {r['error']} -> {r['notebook']}" if r["error"] else ""
        print(f"{r['status']:8s} {r['name']}{failed}")
    print(f"index: {Path(reports_dir) / 'index.html'}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    """--executor local|slurm and the Slurm job options (each overrides the plan's
    ``executor:`` mapping; see xtc.reports.executors)."""
    group = parser.add_argument_group("executor", "where the training runs execute (default: "
                                      "the plan's 'executor:' key, else local)")
    group.add_argument("--executor", choices=["local", "slurm"], default=None,
                       help="local: processes on this machine; slurm: one task of a Slurm job "
                       "array per run, through submitit")
    group.add_argument("--partition", help="slurm: partition to submit to")
    group.add_argument("--account", help="slurm: account to charge")
    group.add_argument("--qos", help="slurm: quality of service")
    group.add_argument("--gpus-per-task", type=int, help="slurm: GPUs per run (default 0)")
    group.add_argument("--cpus-per-task", type=int, help="slurm: CPU cores per run (default 1)")
    group.add_argument("--mem-gb", type=float, help="slurm: memory per run in GB (default 4)")
    group.add_argument("--time-min", type=int, help="slurm: time limit per run in minutes "
                       "(default 60; a run past it is checkpointed and requeued)")
    group.add_argument("--max-parallel", type=int, help="slurm: runs of the array running at "
                       "once (default: all)")


def _executor_options(args) -> dict:
    """The executor options given on the command line (None: not given)."""
    keys = ("executor", "partition", "account", "qos", "gpus_per_task", "cpus_per_task",
            "mem_gb", "time_min", "max_parallel")
    given = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if "executor" in given:
        given["kind"] = given.pop("executor")
    return given


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r} must look like HEIGHTxWIDTH, e.g. 128x256") from None
    return height, width


def _parser() -> argparse.ArgumentParser:
    from xtc.config import SHORTCUTS

    parser = argparse.ArgumentParser(prog="xtc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser("train", help="train one configuration")
    train.add_argument("--config", help="YAML config (see configs/); defaults if omitted")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a config value (repeatable), e.g. loss.lambda1=0.01")
    train.add_argument("--out", required=True, type=Path, help="run folder to write")
    train.add_argument("--resume", nargs="?", const="strict", choices=["strict", "auto"],
                       help="continue from OUT/checkpoints/last.pt (bare --resume: it must "
                       "exist); --resume auto: continue it when there is one, else start fresh "
                       "(what a requeued cluster job does)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    shortcuts = train.add_argument_group(
        "shortcuts", "one config key each, applied after --set (the 02_train notebook's "
        "parameters); values are YAML, e.g. --tasks '[seg, depth, normal]'")
    for name, shortcut in SHORTCUTS.items():
        shortcuts.add_argument(f"--{name.replace('_', '-')}", dest=f"shortcut_{name}",
                               metavar="VALUE", help=f"{shortcut.key}: {shortcut.help}")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on a split")
    evaluate.add_argument("--checkpoint", required=True, type=Path)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                          help="override a config value, e.g. data.root=/data/cityscapes")
    evaluate.add_argument("--out", help="folder for results.json (default: RUN/eval-SPLIT)")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    prepare = sub.add_parser("prepare", help="write a dataset in the MTAN .npy layout")
    prepare.add_argument("dataset", choices=["synthetic", "cityscapes", "nyuv2"])
    prepare.add_argument("--out", required=True, type=Path)
    prepare.add_argument("--raw", type=Path, help="cityscapes: raw release folder; nyuv2: "
                         "nyu_depth_v2_labeled.mat")
    prepare.add_argument("--splits", type=Path, help="nyuv2: the official splits.mat (default: "
                         "next to the .mat file)")
    prepare.add_argument("--normals", default="derive", choices=["derive", "none"],
                         help="nyuv2: derive normals from depth (not MTAN's files), or none")
    prepare.add_argument("--classes", type=int, default=7, choices=[7, 19])
    prepare.add_argument("--size", default=None, help="HEIGHTxWIDTH (default 128x256; nyuv2 "
                         "288x384)")
    prepare.add_argument("--n", type=int, default=1000, help="synthetic: number of train images")
    prepare.add_argument("--seed", type=int, default=0, help="synthetic: scene seed")
    prepare.set_defaults(func=_prepare)

    report = sub.add_parser("report", help="run a report preset (configs/reports/NAME.yaml)")
    report.add_argument("--preset", required=True, help="preset name, e.g. demo or smoke")
    report.add_argument("--reports-dir", type=Path, default=Path("reports"))
    report.add_argument("--workers", type=int, default=1, help="training runs in parallel")
    _add_executor_options(report)
    report.set_defaults(func=_report)

    sweep = sub.add_parser("sweep", help="run a sweep YAML (grid: or runs:) and summarise it")
    sweep.add_argument("file", type=Path, help="e.g. configs/sweeps/lambda.yaml")
    sweep.add_argument("--workers", type=int, default=1, help="runs in parallel")
    sweep.add_argument("--reports-dir", type=Path, default=Path("reports"))
    _add_executor_options(sweep)
    sweep.set_defaults(func=_sweep)

    app = sub.add_parser("app", help="serve the prediction explorer as a Voilà app",
                         description="Serve the prediction explorer (notebooks/app.ipynb) as a "
                         "Voilà app on 127.0.0.1, code hidden, behind a token; prints its URL.")
    app.add_argument("--run", default=os.environ.get("XTC_APP_RUN") or None,
                     help="run folder shown first (relative paths resolve from the repository "
                     "root; default $XTC_APP_RUN, else the runs found under runs/ and reports/, "
                     "else configs/quickstart.yaml trained on first view)")
    app.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866)")
    app.add_argument("--token", default=None,
                     help="access token (default $JUPYTER_TOKEN, else a random one, printed); "
                     "a token given here shows in `ps`, so prefer JUPYTER_TOKEN")
    app.set_defaults(func=_app)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
