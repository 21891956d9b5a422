"""reports/index.html per plan folder: every run with its status and links, then per protocol
the mean ± std table (units and ↑/↓ in the headers) and the trade-off figure as an inline PNG."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from xtc import results
from xtc.analysis import summary
from xtc import reports as report
from tests.test_report import _fake_runs


def _ok(run: Path) -> None:
    sha = report.runs.sha256(run / "results.json")
    (run / "status.json").write_text(json.dumps({"status": "ok", "kind": "train",
                                                 "results_sha256": sha}))


def _plan(reports: Path) -> Path:
    plan = reports / "plan"
    _fake_runs(plan)
    for run in plan.iterdir():
        if run.name != "90_summary":
            _ok(run)
            (run / "02_train.ipynb").write_text("{}")
            (run / "02_train.html").write_text("<html></html>")
    boom = plan / "boom-s0"
    boom.mkdir()
    (boom / "status.json").write_text(json.dumps({"status": "failed", "kind": "train",
                                                  "error": "RuntimeError: boom",
                                                  "notebook": str(boom / "02_train.ipynb")}))
    return plan


def _section(page: str, name: str) -> str:
    return re.search(rf"<h2>{name}</h2>.*?(?=<h2>|<p><small>generated)", page).group(0)


def _mean_rows(section: str) -> dict[str, list[str]]:
    """The comparison table's rows by their first cell (the group in words)."""
    table = re.search(r"<h3>Mean ± sample std.*?(<table>.*?</table>)", section).group(1)
    rows = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", table)]
    heads = re.findall(r"<th>(.*?)</th>", table)
    return {"heads": heads, **{r[0]: r for r in rows if r}}


def test_index_shows_runs_with_status_and_links_then_mean_std_table_and_figure(tmp_path):
    reports = tmp_path / "reports"
    _plan(reports)
    page = report.build_index(reports).read_text()
    section = _section(page, "plan")
    # every run: its status (as row class and cell) and its pages
    for name in ("stl-seg-s0", "stl-depth-s1", "mtl-s0", "xtc-s1"):
        assert re.search(rf'<tr class="ok"><td>{name}</td>.*?<td>ok</td>', section), name
        for f in ("02_train.html", "02_train.ipynb", "results.json"):
            assert f'href="plan/{name}/{f}"' in section
    assert '<tr class="failed"><td>boom-s0</td>' in section and "RuntimeError: boom" in page
    assert "<td>xtc-s0</td><td>xtc</td><td>consistency</td><td>0</td><td>0.5000</td>" in section
    # the mean ± std table over the 8 readable runs, with units and better directions
    mean = _mean_rows(section)
    assert "8 readable run(s)" in section
    units = "units differ: inverse depth (7 runs), metres (1 run)"  # _fake_runs: mtl-s1 in metres
    assert mean["heads"] == ["runs", "n", "seeds", "mIoU (fraction) ↑", "pixel acc (fraction) ↑",
                             f"abs err ({units}) ↓", "rel err (ratio) ↓",
                             "Δm% metric-wt (vs STL) ↓", "Δm% task-wt (vs STL) ↓"]
    xtc = mean["xtc consistency"]
    assert xtc[1:4] == ["2", "0, 1", "0.5500 ± 0.0707"] and xtc[7].startswith("-17.03 ± ")
    assert mean["mtl"][3] == "0.5400 ± 0.0141" and mean["stl-seg"][5] == ""
    # the trade-off figure: a PNG inside the page (works offline), with words in its alt text
    img = re.search(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', section)
    assert img and "mean ± std" in img.group(1)
    png = base64.b64decode(img.group(2))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert page.count("<img ") == 1


def test_index_mean_table_leaves_out_changed_and_failed_runs(tmp_path):
    reports = tmp_path / "reports"
    plan = _plan(reports)
    path = plan / "xtc-s1" / "results.json"
    path.write_text(path.read_text().replace("0.6", "0.9"))  # edited after the run: sha differs
    section = _section(report.build_index(reports).read_text(), "plan")
    assert '<tr class="changed"><td>xtc-s1</td>' in section
    assert "7 readable run(s); 3 listed above left out" in section  # xtc-s1, boom-s0, 90_summary
    xtc = _mean_rows(section)["xtc consistency"]
    assert xtc[1:4] == ["1", "0", "0.5000"]  # xtc-s0 alone: no spread shown


def test_index_gives_one_table_and_figure_per_protocol(tmp_path):
    reports = tmp_path / "reports"
    for proto, scale in (("xtc", 1.0), ("mtan", 2.0)):
        for method, metrics in (("stl-seg", {"miou": 0.4, "pixel_acc": 0.8}),
                                ("stl-depth", {"abs_err": 0.2, "rel_err": 0.4}),
                                ("mtl", {"miou": 0.44, "pixel_acc": 0.8,
                                         "abs_err": 0.2, "rel_err": 0.4})):
            for seed in (0, 1):
                run = reports / "mixed" / f"{proto}-{method}-s{seed}"
                results.write(run, params={"model.method": method, "train.seed": seed},
                              metrics={"test": {k: v * scale * (1 + 0.01 * seed)
                                                for k, v in metrics.items()}},
                              protocol={"name": proto, "depth_units": "metres"})
    section = _section(report.build_index(reports).read_text(), "mixed")
    assert re.findall(r"<h4>Protocol (\w+)</h4>", section) == ["mtan", "xtc"]
    tables = re.findall(r"<h4>Protocol \w+</h4><table>(.*?)</table>", section)
    mtl = [re.findall(r"<td>(.*?)</td>", re.search(r"<tr><td>mtl</td>.*?</tr>", t).group(0))
           for t in tables]
    # each protocol's own group (n=2, not 4) and Δm% against its own STL runs: +10% on mIoU
    assert [m[1] for m in mtl] == ["2", "2"]
    assert [m[3] for m in mtl] == ["0.8844 ± 0.0062", "0.4422 ± 0.0031"]
    assert [m[7].split(" ± ")[0] for m in mtl] == ["-2.50", "-2.50"]
    assert "abs err (metres) ↓" in html.unescape(section)
    assert section.count('src="data:image/png;base64,') == 2


def test_index_without_readable_runs_has_no_comparison(tmp_path):
    reports = tmp_path / "reports"
    run = reports / "p" / "boom-s0"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"status": "failed", "kind": "train",
                                                 "error": "x"}))
    page = report.build_index(reports).read_text()
    assert "<td>boom-s0</td>" in page and "Mean ± sample std" not in page and "<img" not in page
    assert summary.to_html([]) == "<p>no runs</p>"
