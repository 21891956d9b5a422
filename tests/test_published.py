"""The shipped published tables: units, flags, and Δm recomputed from the rows themselves
(the protocol traps of Nash-MTL, Aligned-MTL, FAMO and COST's tables)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from xtc.analysis import published
from xtc.metrics import delta_m

CS, NYU = "cityscapes-7", "nyuv2-3task"
NASH_SET_NYU = ("LS", "DWA", "UW", "MGDA", "PCGrad", "CAGrad", "IMTL-G", "Nash-MTL")


def test_rows_are_in_xtc_units_with_sources_and_protocols():
    stl = published.row(CS, "STL")
    # mIoU / pixel acc as fractions like results.json; rel err is MTAN's plain ratio (not x100)
    assert stl["metrics"] == {"miou": 0.7401, "pixel_acc": 0.9316, "abs_err": 0.0125,
                              "rel_err": 27.77}
    nyu = published.baseline(NYU)
    assert (nyu["normal_11"] == pytest.approx(0.3014) and nyu["normal_mean"] == 25.01
            and nyu["abs_err"] == 0.6754)
    for name in published.NAMES:
        meta = published.info(name)
        assert meta["protocol"]["name"] == "mtan" and "last 10 epochs" in meta["protocol"]["text"]
        rows = published.table(name)
        assert rows[0]["baseline"] and all(r["source"] for r in rows)
        assert len({r["method"] for r in rows}) == len(rows)
    assert published.info(CS)["dataset"] == "cityscapes" and published.info(CS)["classes"] == 7
    assert published.info(NYU)["tasks"] == ["seg", "depth", "normal"]
    with pytest.raises(ValueError, match="cityscapes-7, nyuv2-3task"):
        published.table("cityscapes-19")


def test_flags_legacy_third_party_and_two_fairgrads():
    legacy = published.row(CS, "MTAN paper")
    assert legacy["protocol"] == "legacy-per-image" and not legacy["comparable"]
    assert all(r["comparable"] for r in published.table(CS) if r["method"] != "MTAN paper")
    assert (published.row(CS, "ConsMTL")["third_party"]
            and published.row(NYU, "ConsMTL")["third_party"])
    assert "rel_err" not in published.row(CS, "ConsMTL")["metrics"]  # not printed: missing, not 0
    # trap 4: one method, two sets of numbers from two papers
    own, rerun = published.row(CS, "FairGrad"), published.row(CS, "FairGrad (SAMO re-run)")
    assert ((own["delta_m_printed"], rerun["delta_m_printed"]) == (5.18, 3.90)
            and own["source"] != rerun["source"])


def test_famo_nyuv2_row_is_famos_own_not_the_mislabelled_moco_row():
    famo, moco = published.row(NYU, "FAMO"), published.row(NYU, "MoCo")
    # trap 3: COST (2025) Table 2 prints MoCo's row (40.30 / 66.07 / 0.56 / 0.21, Δm 0.16) as "FAMO"
    assert moco["metrics"]["miou"] == pytest.approx(0.4030) and moco["delta_m_printed"] == 0.16
    assert (famo["metrics"]["miou"] == pytest.approx(0.3888)
            and famo["metrics"]["normal_mean"] == 25.06)
    assert "COST" in famo["note"] and "MoCo" in famo["note"] and famo["from_memory"]
    # with its (from memory) 4-decimal depth the row recomputes to exactly FAMO's printed -4.10
    assert published.recompute(NYU, "FAMO") == pytest.approx(-4.10, abs=0.005)


def test_cityscapes_delta_m_of_the_mean_not_the_printed_per_seed_mean():
    # trap 1: Δm of Nash-MTL's own mean row vs its STL row is 6.72, not the printed 6.82
    nash = published.row(CS, "Nash-MTL")
    by_hand = 25 * (-(75.41 - 74.01) / 74.01 - (93.66 - 93.16) / 93.16
                    + (0.0129 - 0.0125) / 0.0125 + (35.02 - 27.77) / 27.77)
    assert round(by_hand, 2) == 6.72 and nash["delta_m_printed"] == 6.82
    assert published.recompute(CS, nash) == pytest.approx(by_hand)
    assert (round(published.recompute(CS, "PCGrad"), 2) == 18.21
            != published.row(CS, "PCGrad")["delta_m_printed"])


def test_every_cityscapes_recomputed_value_comes_out_of_its_row():
    rows = [r for r in published.table(CS) if r["delta_m_recomputed"] is not None]
    assert len(rows) == 17
    for r in rows:
        # Every one is within 0.005, i.e. it rounds to the table's value: no 0.02 allowance for
        # rounded inputs is needed (Cityscapes depth is printed with 4 decimals, rel err with 2).
        assert (published.recompute(CS, r)
                == pytest.approx(r["delta_m_recomputed"], abs=0.005)), r["method"]
        # two metrics per task: the task-weighted Δm is the same number
        assert published.recompute(CS, r, "task") == pytest.approx(published.recompute(CS, r))


def test_nyuv2_nash_mtl_metric_and_task_weighted():
    nash = published.row(NYU, "Nash-MTL")
    assert (nash["delta_m_printed"], nash["delta_m_task_printed"]) == (-4.04, -7.56)
    # metric-weighted: -4.047 from the row, 0.007 from the printed -4.04 (the printed one is
    # presumably a mean of per-seed Δm, as on Cityscapes)
    assert published.recompute(NYU, nash) == pytest.approx(-4.04, abs=0.01)
    # task-weighted -7.56 only comes out with depth rounded to 2 decimals (trap 2)
    assert round(published.recompute(NYU, nash, "task", depth_digits=2), 2) == -7.56
    assert round(published.recompute(NYU, nash, "task"), 2) == -7.65


def test_nyuv2_printed_metric_weighted_values_of_the_nash_set():
    for method in NASH_SET_NYU:
        r = published.row(NYU, method)
        if method == "IMTL-G":  # Nash-MTL prints -0.76; its own row gives -0.60
            assert published.recompute(NYU, r) == pytest.approx(-0.60, abs=0.005)
            continue
        assert published.recompute(NYU, r) == pytest.approx(r["delta_m_printed"], abs=0.01), method


def test_nyuv2_later_columns_come_out_only_with_depth_rounded_to_two_decimals():
    """Trap 2: later papers' Δm columns recompute exactly with abs/rel err rounded to 2
    decimals (0.55 / 0.23 against STL 0.68 / 0.28), and not from the 4-decimal row."""
    checked = 0
    for r in published.table(NYU):
        for column, weighting in (("delta_m_later", "metric"), ("delta_m_task_printed", "task")):
            if (r[column] is None
                    or r["method"] in ("LS", "GradNorm", "Aligned-MTL", "Aligned-MTL-UB")):
                continue
            rounded = published.recompute(NYU, r, weighting, depth_digits=2)
            unrounded = published.recompute(NYU, r, weighting)
            assert rounded == pytest.approx(r[column], abs=0.005), (r["method"], column)
            assert round(unrounded, 2) != r[column], (r["method"], column)
            checked += 1
    assert checked == 13  # DWA, UW, MGDA, PCGrad, CAGrad, IMTL-G x2, Nash-MTL task-weighted
    # GradNorm (depth already 2 decimals): task-weighted 11.50 rounded, 11.74 not; printed 11.51
    gradnorm = published.row(NYU, "GradNorm")
    assert round(published.recompute(NYU, gradnorm, "task", depth_digits=2), 2) == 11.50
    assert round(published.recompute(NYU, gradnorm, "task"), 2) == 11.74
    # the LS row does not give later papers' 5.46 / -1.07 either way: 5.62 / -0.83 rounded
    ls = published.row(NYU, "LS")
    assert round(published.recompute(NYU, ls, depth_digits=2), 2) == 5.62
    assert round(published.recompute(NYU, ls, "task", depth_digits=2), 2) == -0.83
    assert (ls["delta_m_later"], ls["delta_m_task_printed"]) == (5.46, -1.07)


def test_gradnorm_and_mgda_look_fine_metric_weighted_and_bad_task_weighted():
    """Trap 5: the 5 normal metrics dominate the metric-weighted Δm; GradNorm and MGDA are
    good at normals and bad at seg/depth, so only they get worse when tasks weigh equally."""
    full = [r for r in published.table(NYU) if not r["baseline"] and len(r["metrics"]) == 9]
    worse = {r["method"] for r in full
             if published.recompute(NYU, r, "task") > published.recompute(NYU, r, "metric")}
    assert worse == {"GradNorm", "MGDA"}
    mgda, ls = published.row(NYU, "MGDA"), published.row(NYU, "LS")
    assert published.recompute(NYU, mgda) < published.recompute(NYU, ls)  # 1.38 beats 5.59 ...
    # ... 1.66 loses to -0.88
    assert published.recompute(NYU, mgda, "task") > published.recompute(NYU, ls, "task")
    # the same flip in the printed columns
    assert (mgda["delta_m_printed"] < ls["delta_m_printed"]
            and mgda["delta_m_task_printed"] > ls["delta_m_task_printed"])


def test_recompute_restricted_to_seg_and_depth_and_bad_weighting():
    nash = published.row(NYU, "Nash-MTL")
    by_hand = 25 * (-(40.13 - 38.30) / 38.30 - (65.93 - 63.76) / 63.76
                    + (0.5261 - 0.6754) / 0.6754 + (0.2171 - 0.2780) / 0.2780)
    got = published.recompute(NYU, nash, metrics=("miou", "pixel_acc", "abs_err", "rel_err"))
    assert got == pytest.approx(by_hand) and got == pytest.approx(
        delta_m({k: nash["metrics"][k] for k in ("miou", "pixel_acc", "abs_err", "rel_err")},
                published.baseline(NYU)))
    with pytest.raises(ValueError, match="'metric' or 'task'"):
        published.recompute(NYU, nash, "seed")
    with pytest.raises(KeyError, match="no row 'Nash'"):
        published.row(NYU, "Nash")


def test_tables_ship_as_package_data():
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["xtc.analysis"]
    folder = Path(published.__file__).parent / "published_tables"
    shipped = {p.name for p in folder.iterdir()}
    assert {f"{n}.csv" for n in published.NAMES} | {"tables.yaml"} <= shipped
    assert all(any(Path("published_tables", f).match(g) for g in globs) for f in shipped)
