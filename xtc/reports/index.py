"""``reports/index.html``: every plan folder's runs with their state and links, its
mean ± std tables (through :mod:`xtc.analysis.summary`'s table helpers, the one HTML table
writer) and trade-off figure, and every file it could not read, with the reason, instead of
crashing or silently dropping a row."""

from __future__ import annotations

import html
import time
from pathlib import Path

from xtc import files
from xtc.reports.runs import ATTEMPTS, STATUS, sha256

# --------------------------------------------------------------------------- index
def build_index(reports_dir: str | Path = "reports") -> Path:
    """Write ``<reports_dir>/index.html`` (atomic). Per plan folder: every run with its status
    and links (executed .ipynb, .html, results.json) and its test metrics; then, per protocol,
    the mean ± std comparison table over the plan's readable runs
    (:func:`xtc.analysis.summary.report_table`: units and ↑/↓ in the headers, Δm% vs STL) and
    the seg-vs-depth trade-off figure as an inline PNG (works offline). Also failures, and every
    plan.json / status.json / results.json it could not read, with the reason."""
    from xtc.analysis import summary
    from xtc.analysis.summary import METRICS, collect

    root = Path(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    sections, failures, problems = [], [], []

    def problem(path: Path, reason: str) -> None:
        problems.append(f"<li><b>{html.escape(_rel(path, root))}</b>: {html.escape(reason)}</li>")

    for plan_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rows, readable, job_cells, pending = [], [], {}, 0
        plan_records, why = files.read_json(plan_dir / "plan.json", list)
        if why:
            problem(plan_dir / "plan.json", f"{why}; runs are listed by name instead "
                                            f"(rerun the sweep to rewrite it)")
        order = {r["name"]: i for i, r in enumerate(plan_records or [])
                 if isinstance(r, dict) and isinstance(r.get("name"), str)}
        for run in sorted((p for p in plan_dir.iterdir()
                           if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: (order.get(p.name, len(order)), p.name)):
            status, why = files.read_json(run / STATUS)
            if why:
                problem(run / STATUS, f"{why}; rerun the sweep to redo this run")
            status = status or {}
            has_results = (run / "results.json").exists()
            if not status and not has_results and not why:
                continue
            state = status.get("status") if isinstance(status.get("status"), str) else "unknown"
            found: list = []
            got = collect([run], problems=found) if has_results else []
            row = got[0] if got else {"metrics": {}}
            for p in found:
                problem(Path(p["path"]), f"{p['reason']}; its metrics are left out of this table")
                state = "unreadable"
            if state == "ok" and status.get("kind") == "train" and not has_results:
                problem(run / "results.json", "missing although status.json says ok; rerun the "
                                              "sweep to redo this run")
                state = "unreadable"
            elif (state == "ok" and has_results and isinstance(status.get("results_sha256"), str)
                  and not found and status["results_sha256"] != sha256(run / "results.json")):
                problem(run / "results.json", "changed after the run finished (sha256 differs "
                                              "from status.json); rerun the sweep to redo it")
                state = "changed"
            if got and state not in ("changed", "failed", "unreadable"):
                readable.append(got[0])
            links = " ".join(f'<a href="{html.escape(str(f.relative_to(root)))}">{f.suffix[1:]}</a>'
                             for f in sorted(run.glob("*")) if f.suffix in (".html", ".ipynb")
                             or f.name == "results.json")
            job = status.get("job_id")
            if job:  # a Slurm task: its job id, linked to its log (<run>/slurm.log)
                log = run / "slurm.log"
                restarts = status.get("slurm_restarts") or 0
                label = html.escape(str(job)) + (f" ({restarts} requeue(s))" if restarts else "")
                job_cells[run.name] = (f'<a href="{html.escape(str(log.relative_to(root)))}">'
                                       f'{label}</a>' if log.exists() else label)
            cells = {"run": run.name, "method": row.get("method") or "",
                     "cross-task": row.get("cross_task") or "",
                     "seed": "" if row.get("seed") is None else row["seed"]}
            cells.update({summary.LABELS[m]: (f"{row['metrics'][m]:.4f}"
                                              if m in row["metrics"] else "")
                          for m in METRICS})
            rows.append({**cells, "status": state, "files": links})
            if state in ("queued", "running", "requeued", "interrupted"):
                pending += 1
            if state == "failed":
                nb = Path(str(status.get("notebook") or run))
                failures.append(
                    f'<li><b>{html.escape(plan_dir.name)}/{html.escape(run.name)}</b>: '
                    f'{html.escape(str(status.get("error")))} (executed notebook: '
                    f'<a href="{html.escape(_rel(nb, root))}">{html.escape(nb.name)}</a>, '
                    f'<a href="{html.escape(_rel(nb.with_suffix(".html"), root))}">html</a>)</li>')
        attempts = plan_dir / ATTEMPTS
        moved = sum(1 for p in attempts.iterdir() if p.is_dir()) if attempts.is_dir() else 0
        note = (f"<p>{moved} earlier attempt(s) moved aside in {html.escape(plan_dir.name)}/"
                f"{ATTEMPTS}/ (each MOVED_ASIDE.json says why); they are not in this table.</p>"
                if moved else "")
        if job_cells:  # Slurm runs: a column with each run's job id (and its log)
            for row in rows:
                row["slurm job"] = job_cells.get(row["run"], "")
            note += (f"<p>{pending} run(s) still queued, running or requeued on Slurm; rerun "
                     f"the sweep to wait for them.</p>" if pending else "")
        if rows:
            table = summary.to_html(rows, raw=("files", "slurm job"), row_class="status")
            sections.append(f"<h2>{html.escape(plan_dir.name)}</h2>"
                            f"{table}{note}"
                            f"{_index_comparison(readable, len(rows))}")
    fail_html = (f"<h2>Failures</h2><ul>{''.join(failures)}</ul>" if failures
                 else "<p>No failed runs.</p>")
    prob_html = (f"<h2>Problems ({len(problems)})</h2><p>Files that could not be read or do "
                 f"not match their status.json: what they would show is left out of the "
                 f"tables below.</p><ul>{''.join(problems)}</ul>"
                 if problems else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>xtc reports</title><style>"
            f"body{{font-family:sans-serif}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}"
            f"tr.failed,tr.unreadable,tr.changed{{background:#fdd}}"
            f"tr.queued,tr.running,tr.requeued,tr.interrupted{{background:#ffd}}</style></head><body>"
            f"<h1>xtc reports</h1>"
            f"<p>Metrics are test-split values from each run's results.json (its protocol "
            f"section states the mIoU formula, depth units and model selection); "
            f"each plan's comparison table aggregates them over seeds (mean ± sample std, n), "
            f"one table per protocol; 90_summary adds the significance tests.</p>"
            f"{fail_html}{prob_html}{''.join(sections)}"
            f"<p><small>generated {time.strftime('%Y-%m-%d %H:%M:%S')}</small></p></body></html>")
    return files.atomic_write(root / "index.html", lambda tmp: tmp.write_text(page))


def _index_comparison(rows: list[dict], listed: int) -> str:
    """The plan's mean ± std table and trade-off figure, one per protocol ('' without rows)."""
    from xtc.analysis import summary

    if not rows:
        return ""
    parts = summary.by_protocol(rows)
    left = listed - len(rows)
    out = [f"<h3>Mean ± sample std over seeds ({len(rows)} readable run(s)"
           + (f"; {left} listed above left out: failed, unreadable, changed or not a training run"
              if left else "") + ")</h3>"
           "<p>mIoU and pixel acc are fractions (0-1), rel err a ratio, abs err in the runs' "
           "depth units, normal angles in degrees and within-t° shares as fractions; ↑ higher "
           "is better, ↓ lower is better; Δm% is against the stl-&lt;task&gt; runs of the same "
           "protocol (negative is an improvement). Protocols are never ranked together.</p>"]
    for proto, proto_rows in parts.items():
        group_by = summary.grouping(proto_rows)
        groups = summary.aggregate(proto_rows, group_by)
        units = summary.depth_units(proto_rows)
        out.append(f"<h4>Protocol {html.escape(proto)}</h4>" if len(parts) > 1 else "")
        out.append(summary.to_html(summary.report_table(
            groups, group_by, metrics=summary.table_metrics(proto_rows), depth_units=units)))
        if any("miou" in g["mean"] and "abs_err" in g["mean"] for g in groups):
            fig = summary.plot_tradeoff(groups, group_by=group_by, depth_units=units)
            out.append(f'<p><img alt="mIoU vs abs err per method, mean ± std over seeds '
                       f'({html.escape(proto)} protocol)" src="{_png_data_uri(fig)}"></p>')
    return "".join(out)


def _png_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (closed afterwards)."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
